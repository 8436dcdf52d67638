//! The userspace twin of the in-kernel filter, for what never passes through
//! the kernel program: sockets found by sock_diag snapshots.

use tcptrace_common::Filter;

use crate::model::{Family, SeenSocket};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserFilter(pub Filter);

fn in_list(list: &[u16], n: u32, a: u16, b: Option<u16>) -> bool {
    list[..(n as usize).min(list.len())]
        .iter()
        .any(|&p| p == a || Some(p) == b)
}

impl UserFilter {
    pub fn matches_seen(&self, s: &SeenSocket) -> bool {
        let f = &self.0;
        if f.family_mask != 0 {
            let bit = match s.family {
                Family::V4 => Filter::FAMILY_INET,
                Family::V6 => Filter::FAMILY_INET6,
            };
            if f.family_mask & bit == 0 {
                return false;
            }
        }
        if f.state_mask != 0 && f.state_mask & (1 << s.state as u32) == 0 {
            return false;
        }
        if f.tgid != 0 && s.owner.is_none_or(|o| o.pid != f.tgid) {
            return false;
        }
        if f.comm_set != 0 && s.owner.is_none_or(|o| o.comm.0 != f.comm) {
            return false;
        }
        if f.n_ports != 0 && !in_list(&f.ports, f.n_ports, s.sport, Some(s.dport)) {
            return false;
        }
        if f.n_lports != 0 && !in_list(&f.lports, f.n_lports, s.sport, None) {
            return false;
        }
        if f.n_rports != 0 && !in_list(&f.rports, f.n_rports, s.dport, None) {
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
        }
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
}
