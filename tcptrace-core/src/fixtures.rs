//! Events and sockets built by hand, for tests (this crate's, the binary's
//! scripted-source tests, the benchmarks): one place that knows how a
//! connection's transitions look, instead of a builder per test file.

use std::net::{IpAddr, Ipv4Addr};

use crate::{
    alerts::{Alert, AlertState},
    model::{Comm, Event, EventKind, Family, Owner, SeenOwner, SeenSocket, TcpState},
};

/// Nanoseconds per second.
pub const SEC: u64 = 1_000_000_000;

/// `10.0.0.last`.
pub fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// A process `pid` named `comm`.
pub fn owner(pid: u32, comm: &str) -> Owner {
    Owner {
        pid,
        tid: pid,
        comm: Comm::from_name(comm),
        cgroup: 1,
        from_listener: false,
    }
}

/// One socket's endpoints and owner; its events come from [`Conn::at`].
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    /// Kernel socket address (a kernel-looking one: seeded sockets have small
    /// synthetic keys).
    pub sk: u64,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub owner: Option<Owner>,
    pub netns: u32,
}

impl Conn {
    /// Socket number `n` from `saddr:sport` to `daddr:dport`, owned by `owner`.
    pub fn new(n: u64, local: (IpAddr, u16), remote: (IpAddr, u16), owner: Option<Owner>) -> Self {
        Self {
            sk: 0xffff_8880_0000_0000 + n,
            saddr: local.0,
            sport: local.1,
            daddr: remote.0,
            dport: remote.1,
            owner,
            netns: 1,
        }
    }

    /// The transition `old -> new` at `ts_ns`.
    pub fn at(&self, ts_ns: u64, old: TcpState, new: TcpState) -> Event {
        Event {
            ts_ns,
            kind: EventKind::Transition,
            sk: self.sk,
            link: None,
            owner: self.owner,
            netns: Some(self.netns),
            family: Family::V4,
            saddr: self.saddr,
            sport: self.sport,
            daddr: self.daddr,
            dport: self.dport,
            old: Some(old),
            new,
            prev_ns: None,
            reason: None,
            stack: None,
        }
    }

    /// A client connection that the peer closed and this side never does:
    /// connect at `ts_ns`, the peer's FIN 1 ms later (ends in CLOSE_WAIT).
    pub fn leaked(&self, ts_ns: u64) -> [Event; 3] {
        use TcpState::*;
        [
            self.at(ts_ns, Close, SynSent),
            self.at(ts_ns + 100_000, SynSent, Established),
            self.at(ts_ns + 1_000_000, Established, CloseWait),
        ]
    }

    /// The timewait socket that takes over from this one.
    pub fn tw_sk(&self) -> u64 {
        self.sk.wrapping_add(1 << 40)
    }

    /// The timewait socket's begin (linked to this socket) at `ts_ns`.
    pub fn tw_begin(&self, ts_ns: u64, substate: TcpState) -> Event {
        Event {
            kind: EventKind::TwBegin,
            sk: self.tw_sk(),
            link: Some(self.sk),
            old: Some(TcpState::FinWait2),
            ..self.at(ts_ns, TcpState::FinWait2, substate)
        }
    }

    /// This side closes first once established: FIN_WAIT1, FIN_WAIT2, then
    /// a timewait socket in TIME_WAIT (the full socket goes to CLOSE).
    fn closes_first(&self, ts_ns: u64) -> [Event; 4] {
        use TcpState::*;
        [
            self.at(ts_ns + 200_000, Established, FinWait1),
            self.at(ts_ns + 300_000, FinWait1, FinWait2),
            self.tw_begin(ts_ns + 400_000, TimeWait),
            self.at(ts_ns + 400_000, FinWait2, Close),
        ]
    }

    /// A connection this side opened (connect() at `ts_ns`) and closed
    /// first: it ends in TIME_WAIT here, holding an ephemeral port.
    pub fn client_closes_first(&self, ts_ns: u64) -> Vec<Event> {
        use TcpState::*;
        let mut out = vec![
            self.at(ts_ns, Close, SynSent),
            self.at(ts_ns + 100_000, SynSent, Established),
        ];
        out.extend(self.closes_first(ts_ns));
        out
    }

    /// A connection a listener here accepted at `ts_ns` and the server
    /// closed first: TIME_WAIT on the service's side.
    pub fn server_closes_first(&self, ts_ns: u64) -> Vec<Event> {
        use TcpState::*;
        let mut out = vec![
            self.at(ts_ns, Listen, SynRecv),
            self.at(ts_ns + 100_000, SynRecv, Established),
        ];
        out.extend(self.closes_first(ts_ns));
        out
    }

    /// The socket as sock_diag would report it, in `state`.
    pub fn seen(&self, state: TcpState, inode: u64) -> SeenSocket {
        SeenSocket {
            netns: Some(self.netns),
            family: Family::V4,
            saddr: self.saddr,
            sport: self.sport,
            daddr: self.daddr,
            dport: self.dport,
            state,
            inode,
            owner: self.owner.map(|o| SeenOwner {
                pid: o.pid,
                comm: o.comm,
            }),
            timer_left_ms: None,
            cookie: inode,
            cgroup: None,
        }
    }
}

/// The `i`th connection of [`leak`].
fn leaked_conn(owner: Owner, i: u64) -> Conn {
    Conn::new(i, (ip(2), 40_000 + i as u16), (ip(5), 5432), Some(owner))
}

/// `n` client connections of `owner` to `10.0.0.5:5432` leaked one every
/// `every_ns` from `start_ns`: their events, in order.
pub fn leak(owner: Owner, n: u64, start_ns: u64, every_ns: u64) -> Vec<Event> {
    (0..n)
        .flat_map(|i| leaked_conn(owner, i).leaked(start_ns + i * every_ns))
        .collect()
}

/// The sockets of [`leak`] as sock_diag shows them once leaked.
pub fn leak_sockets(owner: Owner, n: u64) -> Vec<SeenSocket> {
    (0..n)
        .map(|i| leaked_conn(owner, i).seen(TcpState::CloseWait, 100 + i))
        .collect()
}

/// A firing `close_wait_count` alert about pid 1 (`init`, `/init.scope`).
pub fn alert() -> Alert {
    Alert {
        rule: "close_wait_count",
        state: AlertState::Firing,
        ts_ns: 0,
        pid: Some(1),
        comm: Some("init".into()),
        cgroup: Some("/init.scope".into()),
        workload: None,
        workload_kind: None,
        unit: None,
        container: None,
        pod: None,
        namespace: None,
        count: 1,
        growth_per_min: None,
        oldest_age_ms: None,
        peers: vec![],
        opened_at: None,
        opened_at_path: None,
        opened_at_count: None,
        listener: None,
        netns: None,
        reason: None,
        value: 1.0,
        threshold: 1.0,
        message: "m".into(),
    }
}
