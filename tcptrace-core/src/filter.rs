//! The userspace twin of the in-kernel filter, for what never passes through
//! the kernel program: sockets found by sock_diag snapshots, and events
//! userspace makes itself (a timewait socket found in a new substate).

use tcptrace_common::Filter;

use crate::model::{Event, Family, SeenSocket, TcpState};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserFilter(pub Filter);

fn in_list(list: &[u16], n: u32, a: u16, b: Option<u16>) -> bool {
    list[..(n as usize).min(list.len())]
        .iter()
        .any(|&p| p == a || Some(p) == b)
}

impl UserFilter {
    /// The filter to load in the kernel: the user's, except that asking for
    /// TIME_WAIT also lets FIN_WAIT2 through. An orphaned socket's timewait
    /// socket begins in FIN_WAIT2 and moves to TIME_WAIT with no hook: the
    /// live source must see its begin to follow it (and report the move);
    /// what the user did not ask for is dropped in userspace
    /// ([`Self::narrows`]).
    pub fn kernel_filter(&self) -> Filter {
        let mut f = self.0;
        let tw = 1u32 << TcpState::TimeWait as u32;
        if f.state_mask & tw != 0 {
            f.state_mask |= 1 << TcpState::FinWait2 as u32;
        }
        f
    }

    /// Whether the kernel's filter lets through more than this one (its
    /// events must go through [`Self::matches_event`] in userspace).
    pub fn narrows(&self) -> bool {
        self.kernel_filter() != self.0
    }

    /// The kernel filter's rule for an event: the family, the old or the
    /// new state, the owner (pid, command), the ports.
    pub fn matches_event(&self, e: &Event) -> bool {
        let f = &self.0;
        if f.state_mask != 0
            && e.old.is_none_or(|s| f.state_mask & (1 << s as u32) == 0)
            && f.state_mask & (1 << e.new as u32) == 0
        {
            return false;
        }
        self.matches_rest(
            e.family,
            e.owner.map(|o| (o.pid, o.comm.0)),
            e.sport,
            e.dport,
        )
    }

    pub fn matches_seen(&self, s: &SeenSocket) -> bool {
        let f = &self.0;
        if f.state_mask != 0 && f.state_mask & (1 << s.state as u32) == 0 {
            return false;
        }
        self.matches_rest(
            s.family,
            s.owner.map(|o| (o.pid, o.comm.0)),
            s.sport,
            s.dport,
        )
    }

    /// Everything but the states: the family, the owner (pid, command),
    /// the ports.
    fn matches_rest(
        &self,
        family: Family,
        owner: Option<(u32, [u8; 16])>,
        sport: u16,
        dport: u16,
    ) -> bool {
        let f = &self.0;
        if f.family_mask != 0 {
            let bit = match family {
                Family::V4 => Filter::FAMILY_INET,
                Family::V6 => Filter::FAMILY_INET6,
            };
            if f.family_mask & bit == 0 {
                return false;
            }
        }
        if f.tgid != 0 && owner.is_none_or(|(pid, _)| pid != f.tgid) {
            return false;
        }
        if f.comm_set != 0 && owner.is_none_or(|(_, comm)| comm != f.comm) {
            return false;
        }
        if f.n_ports != 0 && !in_list(&f.ports, f.n_ports, sport, Some(dport)) {
            return false;
        }
        if f.n_lports != 0 && !in_list(&f.lports, f.n_lports, sport, None) {
            return false;
        }
        if f.n_rports != 0 && !in_list(&f.rports, f.n_rports, dport, None) {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::model::{Comm, SeenOwner, TcpState};

    fn sock(sport: u16, dport: u16, state: TcpState, pid: Option<u32>) -> SeenSocket {
        SeenSocket {
            netns: None,
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport,
            state,
            inode: 1,
            owner: pid.map(|pid| SeenOwner {
                pid,
                comm: Comm::from_name("app"),
            }),
            timer_left_ms: None,
            cookie: 0,
            cgroup: None,
        }
    }

    #[test]
    fn asking_for_time_wait_lets_fin_wait2_through_the_kernel_only() {
        let mut f = Filter {
            state_mask: 1 << TcpState::TimeWait as u32,
            ..Filter::default()
        };
        let user = UserFilter(f);
        assert!(user.narrows());
        let k = user.kernel_filter();
        assert_ne!(k.state_mask & (1 << TcpState::FinWait2 as u32), 0);
        f.state_mask = 1 << TcpState::CloseWait as u32;
        assert!(!UserFilter(f).narrows());
        assert!(!UserFilter::default().narrows());
    }

    #[test]
    fn mirrors_the_kernel_filter() {
        let mut f = Filter::default();
        assert!(UserFilter(f).matches_seen(&sock(1, 2, TcpState::Established, None)));
        f.ports[0] = 80;
        f.n_ports = 1;
        let uf = UserFilter(f);
        assert!(uf.matches_seen(&sock(80, 2, TcpState::Established, None)));
        assert!(uf.matches_seen(&sock(3, 80, TcpState::Established, None)));
        assert!(!uf.matches_seen(&sock(3, 4, TcpState::Established, None)));
        f.state_mask = 1 << TcpState::CloseWait as u32;
        assert!(!UserFilter(f).matches_seen(&sock(80, 2, TcpState::Established, None)));
        assert!(UserFilter(f).matches_seen(&sock(80, 2, TcpState::CloseWait, None)));
        f.tgid = 7;
        assert!(!UserFilter(f).matches_seen(&sock(80, 2, TcpState::CloseWait, None)));
        assert!(UserFilter(f).matches_seen(&sock(80, 2, TcpState::CloseWait, Some(7))));
        f.family_mask = Filter::FAMILY_INET6;
        assert!(!UserFilter(f).matches_seen(&sock(80, 2, TcpState::CloseWait, Some(7))));
    }

    fn found(sport: u16, dport: u16, pid: Option<u32>) -> Event {
        Event {
            ts_ns: 1,
            kind: crate::model::EventKind::TwSubstate,
            sk: 0x10,
            link: None,
            owner: pid.map(|pid| crate::model::Owner {
                pid,
                tid: pid,
                comm: Comm::from_name("app"),
                cgroup: 0,
                from_listener: false,
            }),
            netns: None,
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport,
            old: Some(TcpState::FinWait2),
            new: TcpState::TimeWait,
            prev_ns: Some(5),
            reason: None,
            stack: None,
        }
    }

    /// Events userspace makes (a timewait socket found in TIME_WAIT) pass
    /// the same filter the kernel applies to its own.
    #[test]
    fn events_pass_the_kernel_filter_rule() {
        let e = found(40_000, 80, Some(7));
        assert!(UserFilter::default().matches_event(&e));
        let mut f = Filter::default();
        f.ports[0] = 80;
        f.n_ports = 1;
        assert!(UserFilter(f).matches_event(&e));
        f.ports[0] = 81;
        assert!(!UserFilter(f).matches_event(&e));
        let mut f = Filter::default();
        f.lports[0] = 80;
        f.n_lports = 1;
        assert!(!UserFilter(f).matches_event(&e), "80 is the remote port");
        let mut f = Filter::default();
        f.rports[0] = 80;
        f.n_rports = 1;
        assert!(UserFilter(f).matches_event(&e));
        // Old or new state.
        for (state, keep) in [
            (TcpState::TimeWait, true),
            (TcpState::FinWait2, true),
            (TcpState::CloseWait, false),
        ] {
            let f = Filter {
                state_mask: 1 << state as u32,
                ..Filter::default()
            };
            assert_eq!(UserFilter(f).matches_event(&e), keep, "{state}");
        }
        // Owner.
        let f = Filter {
            tgid: 7,
            ..Filter::default()
        };
        assert!(UserFilter(f).matches_event(&e));
        assert!(!UserFilter(f).matches_event(&found(40_000, 80, Some(8))));
        assert!(!UserFilter(f).matches_event(&found(40_000, 80, None)));
        let mut f = Filter {
            comm_set: 1,
            ..Filter::default()
        };
        f.comm = Comm::from_name("app").0;
        assert!(UserFilter(f).matches_event(&e));
        f.comm = Comm::from_name("other").0;
        assert!(!UserFilter(f).matches_event(&e));
        // Family.
        let f = Filter {
            family_mask: Filter::FAMILY_INET6,
            ..Filter::default()
        };
        assert!(!UserFilter(f).matches_event(&e));
    }
}
