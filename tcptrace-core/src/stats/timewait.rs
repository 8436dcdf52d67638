//! TIME_WAIT grouped by the side that matters. TIME_WAIT belongs to whoever
//! closes first, and the two cases need different rows:
//! - on connections this host **accepted** (the server closed first: nginx
//!   to a backend without keep-alive, an HTTP/1.0 server), every socket has
//!   a different remote ephemeral port: one row per local **service**
//!   (namespace, ip:port), with its owner, rate and who closes first;
//! - on connections this host **opened**, one row per **destination**
//!   (ip:port), and the ephemeral port budget each (namespace, local
//!   address, destination) has: what runs out first, judged with that
//!   namespace's `ip_local_port_range`, reserved ports and `tcp_tw_reuse`
//!   ([`crate::netfacts`]).
//!
//! Built at each snapshot from the table's timewait sockets and, for the
//! port budgets, the full sockets that may hold an ephemeral port (the
//! table's list of them: none of a million accepted connections is read).

use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::{
    conn::{Closer, Conn, ConnTable, Opened, TupleKey, TwConn},
    model::{Comm, Owner, TcpState},
    netfacts::{NetFacts, Reuse, Sysctls},
};

/// TIME_WAIT begun within this window sets a group's rate.
pub const RATE_WINDOW_NS: u64 = 10_000_000_000;

/// Connections that ended since tracing began, by who closed first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClosedFirst {
    /// This host closed first (it got the TIME_WAIT).
    pub local: u64,
    /// The peer closed first (this host went through CLOSE_WAIT).
    pub remote: u64,
    /// Both at once.
    pub both: u64,
}

impl ClosedFirst {
    pub fn add(&mut self, closer: Closer) {
        match closer {
            Closer::Active => self.local += 1,
            Closer::Passive => self.remote += 1,
            Closer::Simultaneous => self.both += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.local + self.remote + self.both
    }
}

/// TIME_WAIT on outgoing connections to one destination.
#[derive(Clone, Debug, Serialize)]
pub struct TimeWaitByPeer {
    pub daddr: IpAddr,
    pub dport: u16,
    /// Sockets in TIME_WAIT (as `ss` counts them).
    pub count: u64,
    /// The fullest port budget to this destination: timewait sockets over
    /// the ports connect() may pick, for the (namespace, local address)
    /// with the most (each has its own budget).
    pub port_range_ratio: f64,
    /// The ports of that budget (`ip_local_port_range` minus reserved ports).
    pub ports: u32,
    /// (namespace, local address) pairs with TIME_WAIT to this destination.
    pub sources: u64,
    /// TIME_WAIT begun per second, over the last 10 s (or since tracing
    /// began, when shorter).
    pub rate_per_sec: f64,
    /// The process behind most of them.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub closed_first: ClosedFirst,
}

/// TIME_WAIT on connections one local service accepted: the server closes
/// first.
#[derive(Clone, Debug, Serialize)]
pub struct TimeWaitByService {
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub count: u64,
    pub rate_per_sec: f64,
    /// The listener's owner (or, with no listener seen, the process behind
    /// most of these sockets).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Distinct client addresses among them.
    pub clients: u64,
    pub closed_first: ClosedFirst,
}

/// The old per-local-endpoint rows (`time_wait_by_local`): services only.
#[derive(Clone, Debug, Serialize)]
pub struct TimeWaitByLocal {
    pub saddr: IpAddr,
    pub sport: u16,
    pub count: u64,
    /// The service's network namespace (the same ip:port in two
    /// namespaces is two rows).
    pub netns: u32,
}

/// The ephemeral ports one (namespace, local address, destination) can use,
/// and what holds them.
#[derive(Clone, Debug, Serialize)]
pub struct PortBudget {
    pub netns: u32,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Timewait sockets (TIME_WAIT, and orphaned FIN_WAIT2: both hold the
    /// port) from an ephemeral port.
    pub time_wait: u64,
    /// Of those, the ones connect() may take over now (`tcp_tw_reuse`
    /// applies and they are older than `tcp_tw_reuse_delay`).
    pub reusable: u64,
    /// Other sockets of this budget holding a port (open connections).
    pub open: u64,
    /// Ports connect() may pick: `ip_local_port_range` minus reserved ports.
    pub ports: u32,
    pub port_range: (u16, u16),
    /// `time_wait / ports`.
    pub port_range_ratio: f64,
    /// `(open + time_wait - reusable) / ports`: the share connect() cannot
    /// pick now; at 1.0 it fails with EADDRNOTAVAIL.
    pub in_use_ratio: f64,
    /// What `tcp_tw_reuse` does here.
    pub tw_reuse: Reuse,
    /// Whether the namespace's sysctls were read (else the host's range and
    /// no reuse are assumed).
    pub facts_known: bool,
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// The three groupings.
#[derive(Debug, Default)]
pub struct Grouped {
    pub by_peer: Vec<TimeWaitByPeer>,
    pub by_service: Vec<TimeWaitByService>,
    pub budgets: Vec<PortBudget>,
    /// TIME_WAIT sockets by owner cgroup (folded into workloads at the edge).
    pub by_cgroup: Vec<(super::workloads::WorkloadKey, u64)>,
}

/// What the groupings need besides the table.
pub struct GroupInput<'a> {
    pub now_ns: u64,
    /// When observation began (bounds the rate window).
    pub since_ns: u64,
    pub facts: &'a NetFacts,
    /// The host's `ip_local_port_range`, for namespaces without facts.
    pub host_port_range: (u16, u16),
    pub closed_by_service: &'a FxHashMap<ServiceKey, ClosedFirst>,
    pub closed_by_peer: &'a FxHashMap<(IpAddr, u16), ClosedFirst>,
}

/// A local service: (namespace, local address, port).
pub type ServiceKey = (u32, IpAddr, u16);

/// Which side opened a socket, when it was not seen: accepted when its
/// local port is listening in its namespace (`listening`), or (the
/// listener gone) when only the remote port is an ephemeral one there;
/// else opened here. The one rule `stats` and `report` group by.
pub fn side_of(opened: Option<Opened>, key: &TupleKey, listening: bool, sys: &Sysctls) -> Opened {
    opened.unwrap_or_else(|| {
        let accepted = listening || (!sys.is_ephemeral(key.sport) && sys.is_ephemeral(key.dport));
        if accepted {
            Opened::Accepted
        } else {
            Opened::Connected
        }
    })
}

/// Counts per owner, to name the process behind most sockets of a group.
#[derive(Default)]
struct Owners(FxHashMap<u32, (u64, Comm)>);

impl Owners {
    fn add(&mut self, owner: Option<Owner>) {
        if let Some(o) = owner {
            self.0.entry(o.pid).or_insert((0, o.comm)).0 += 1;
        }
    }

    fn top(&self) -> (Option<u32>, Option<String>) {
        self.0
            .iter()
            .max_by_key(|(pid, (n, _))| (*n, std::cmp::Reverse(**pid)))
            .map_or((None, None), |(pid, (_, comm))| {
                (Some(*pid), Some(comm.to_str_lossy().into_owned()))
            })
    }
}

#[derive(Default)]
struct Group {
    count: u64,
    recent: u64,
    owners: Owners,
    clients: FxHashSet<IpAddr>,
}

#[derive(Default)]
struct BudgetAcc {
    time_wait: u64,
    reusable: u64,
    open: u64,
    owners: Owners,
}

/// The sysctls of `netns` from `facts`: its own, else the host's range
/// (and reserved ports) with nothing else assumed.
pub fn netns_sysctls(facts: &NetFacts, netns: u32, host_port_range: (u16, u16)) -> Sysctls {
    if let Some(f) = facts.namespaces.get(&netns) {
        return f.sysctls.clone();
    }
    match facts.host() {
        Some(h) => Sysctls {
            port_range: h.sysctls.port_range,
            reserved_ports: h.sysctls.reserved_ports.clone(),
            ..Sysctls::default()
        },
        None => Sysctls {
            port_range: host_port_range,
            ..Sysctls::default()
        },
    }
}

/// The sysctls budgets of `netns` are judged by: its own, else the host
/// range with nothing else assumed.
fn sysctls_of<'a>(
    input: &'a GroupInput<'_>,
    netns: u32,
    fallback: &'a Sysctls,
) -> (&'a Sysctls, bool) {
    match input.facts.namespaces.get(&netns) {
        Some(f) => (&f.sysctls, true),
        None => (fallback, false),
    }
}

/// Groups the table's timewait sockets (and the open connections sharing a
/// port budget with them: the table's list of full sockets that may hold
/// an ephemeral port, so a million accepted connections cost nothing here).
pub fn group(table: &ConnTable, input: &GroupInput<'_>) -> Grouped {
    let listeners = &table.live().listeners;
    let listening = |port: &(u32, u16)| listeners.contains_key(port);
    let fallback = match input.facts.host() {
        Some(h) => Sysctls {
            port_range: h.sysctls.port_range,
            reserved_ports: h.sysctls.reserved_ports.clone(),
            ..Sysctls::default()
        },
        None => Sysctls {
            port_range: input.host_port_range,
            ..Sysctls::default()
        },
    };
    let window = RATE_WINDOW_NS
        .min(input.now_ns.saturating_sub(input.since_ns))
        .max(1);
    let recent_since = input.now_ns.saturating_sub(window);

    let mut services: FxHashMap<ServiceKey, Group> = FxHashMap::default();
    let mut peers: FxHashMap<(IpAddr, u16), Group> = FxHashMap::default();
    let mut budgets: FxHashMap<(u32, IpAddr, IpAddr, u16), BudgetAcc> = FxHashMap::default();

    // TIME_WAIT by owner cgroup: a run of sockets with one key is counted
    // before it is hashed.
    let mut by_cgroup: FxHashMap<super::workloads::WorkloadKey, u64> = FxHashMap::default();
    let mut run: Option<(super::workloads::WorkloadKey, u64)> = None;
    for t in table.timewaits() {
        if t.substate == TcpState::TimeWait {
            let key = super::workloads::WorkloadKey::of(t.owner);
            match &mut run {
                Some((k, n)) if *k == key => *n += 1,
                _ => {
                    if let Some((k, n)) = run.replace((key, 1)) {
                        *by_cgroup.entry(k).or_default() += n;
                    }
                }
            }
        }
        let recent = !t.start_estimated && t.start_ns >= recent_since;
        let (sys, _) = sysctls_of(input, t.key.netns, &fallback);
        let listens = listening(&(t.key.netns, t.key.sport));
        match side_of(t.opened, &t.key, listens, sys) {
            Opened::Accepted => {
                if t.substate == TcpState::TimeWait {
                    let g = services
                        .entry((t.key.netns, t.key.saddr, t.key.sport))
                        .or_default();
                    g.count += 1;
                    g.recent += u64::from(recent);
                    g.owners.add(t.owner);
                    g.clients.insert(t.key.daddr);
                }
            }
            Opened::Connected => {
                if t.substate == TcpState::TimeWait {
                    let g = peers.entry((t.key.daddr, t.key.dport)).or_default();
                    g.count += 1;
                    g.recent += u64::from(recent);
                    g.owners.add(t.owner);
                }
                budget_tw(t, input, &fallback, &mut budgets);
            }
        }
    }
    // Open connections count against the budgets that have TIME_WAIT (and
    // make their own when they fill one by themselves).
    let mut open_only: FxHashMap<(u32, IpAddr, IpAddr, u16), BudgetAcc> = FxHashMap::default();
    let candidates = table.live().candidates.iter();
    for c in candidates.filter_map(|&slot| table.conn_at(slot)) {
        let (sys, _) = sysctls_of(input, c.key.netns, &fallback);
        if matches!(c.state, TcpState::Listen | TcpState::Close)
            || side_of(
                c.opened,
                &c.key,
                listening(&(c.key.netns, c.key.sport)),
                sys,
            ) != Opened::Connected
        {
            continue;
        }
        if !sys.is_ephemeral(c.key.sport) {
            continue;
        }
        let key = (c.key.netns, c.key.saddr, c.key.daddr, c.key.dport);
        let acc = match budgets.get_mut(&key) {
            Some(acc) => acc,
            None => open_only.entry(key).or_default(),
        };
        acc.open += 1;
        acc.owners.add(c.owner);
    }
    for (key, acc) in open_only {
        let (sys, _) = sysctls_of(input, key.0, &fallback);
        // Only budgets open connections fill by a twentieth or more.
        if acc.open * 20 >= u64::from(sys.usable_ports()) {
            budgets.insert(key, acc);
        }
    }

    let mut budgets: Vec<PortBudget> = budgets
        .into_iter()
        .map(|((netns, saddr, daddr, dport), acc)| {
            let (sys, facts_known) = sysctls_of(input, netns, &fallback);
            let ports = sys.usable_ports();
            let held = (acc.open + acc.time_wait).saturating_sub(acc.reusable);
            let (pid, comm) = acc.owners.top();
            PortBudget {
                netns,
                saddr,
                daddr,
                dport,
                time_wait: acc.time_wait,
                reusable: acc.reusable,
                open: acc.open,
                ports,
                port_range: sys.port_range,
                port_range_ratio: acc.time_wait as f64 / f64::from(ports),
                in_use_ratio: held as f64 / f64::from(ports),
                tw_reuse: sys.reuse(saddr, daddr),
                facts_known,
                pid,
                comm,
            }
        })
        .collect();
    budgets.sort_by(|a, b| {
        b.in_use_ratio
            .total_cmp(&a.in_use_ratio)
            .then(b.port_range_ratio.total_cmp(&a.port_range_ratio))
            .then((a.netns, a.saddr, a.daddr, a.dport).cmp(&(b.netns, b.saddr, b.daddr, b.dport)))
    });

    let rate = |recent: u64| recent as f64 * 1e9 / window as f64;
    // Each destination's budgets: how many, and the fullest (one pass).
    let mut per_dest: FxHashMap<(IpAddr, u16), (u64, &PortBudget)> = FxHashMap::default();
    for b in &budgets {
        per_dest
            .entry((b.daddr, b.dport))
            .and_modify(|(n, worst)| {
                *n += 1;
                if b.port_range_ratio > worst.port_range_ratio {
                    *worst = b;
                }
            })
            .or_insert((1, b));
    }
    let mut by_peer: Vec<TimeWaitByPeer> = peers
        .into_iter()
        .map(|((daddr, dport), g)| {
            let (sources, worst) = match per_dest.get(&(daddr, dport)) {
                Some(&(n, worst)) => (n, Some(worst)),
                None => (0, None),
            };
            let (pid, comm) = g.owners.top();
            TimeWaitByPeer {
                daddr,
                dport,
                count: g.count,
                port_range_ratio: worst.map_or(0.0, |b| b.port_range_ratio),
                ports: worst.map_or_else(|| fallback.usable_ports(), |b| b.ports),
                sources,
                rate_per_sec: rate(g.recent),
                pid,
                comm,
                closed_first: input
                    .closed_by_peer
                    .get(&(daddr, dport))
                    .copied()
                    .unwrap_or_default(),
            }
        })
        .collect();
    by_peer.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.daddr.cmp(&b.daddr))
            .then(a.dport.cmp(&b.dport))
    });

    let mut by_service: Vec<TimeWaitByService> = services
        .into_iter()
        .map(|((netns, saddr, sport), g)| {
            let (pid, comm) = match listeners.get(&(netns, sport)).and_then(|l| l.owner()) {
                Some(o) => (Some(o.pid), Some(o.comm.to_str_lossy().into_owned())),
                None => g.owners.top(),
            };
            TimeWaitByService {
                netns,
                saddr,
                sport,
                count: g.count,
                rate_per_sec: rate(g.recent),
                pid,
                comm,
                clients: g.clients.len() as u64,
                closed_first: input
                    .closed_by_service
                    .get(&(netns, saddr, sport))
                    .copied()
                    .unwrap_or_default(),
            }
        })
        .collect();
    by_service.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then((a.netns, a.saddr, a.sport).cmp(&(b.netns, b.saddr, b.sport)))
    });
    if let Some((k, n)) = run {
        *by_cgroup.entry(k).or_default() += n;
    }
    let mut by_cgroup: Vec<_> = by_cgroup.into_iter().collect();
    by_cgroup.sort_unstable();
    Grouped {
        by_peer,
        by_service,
        budgets,
        by_cgroup,
    }
}

fn budget_tw(
    t: &TwConn,
    input: &GroupInput<'_>,
    fallback: &Sysctls,
    budgets: &mut FxHashMap<(u32, IpAddr, IpAddr, u16), BudgetAcc>,
) {
    let (sys, _) = sysctls_of(input, t.key.netns, fallback);
    if !sys.is_ephemeral(t.key.sport) {
        return;
    }
    let acc = budgets
        .entry((t.key.netns, t.key.saddr, t.key.daddr, t.key.dport))
        .or_default();
    acc.time_wait += 1;
    acc.owners.add(t.owner);
    let old_enough = input.now_ns.saturating_sub(t.start_ns) >= sys.reuse_delay_ns();
    if t.substate == TcpState::TimeWait
        && old_enough
        && sys.reuse(t.key.saddr, t.key.daddr).applies()
    {
        acc.reusable += 1;
    }
}

/// Which group a finished connection's close counts for: its service when
/// accepted here, its destination when opened here (unknown when neither
/// was seen).
pub fn close_group(c: &Conn) -> Option<CloseGroup> {
    match c.opened? {
        Opened::Accepted => Some(CloseGroup::Service((c.key.netns, c.key.saddr, c.key.sport))),
        Opened::Connected => Some(CloseGroup::Peer((c.key.daddr, c.key.dport))),
    }
}

/// See [`close_group`].
pub enum CloseGroup {
    Service(ServiceKey),
    Peer((IpAddr, u16)),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ip;

    fn key(sport: u16, dport: u16) -> TupleKey {
        TupleKey {
            netns: 1,
            saddr: ip(1),
            daddr: ip(2),
            sport,
            dport,
        }
    }

    #[test]
    fn an_unseen_socket_is_accepted_when_listening_or_only_its_peer_port_is_ephemeral() {
        let sys = Sysctls::defaults();
        // Seen: that side, whatever the ports.
        assert_eq!(
            side_of(Some(Opened::Connected), &key(80, 40_000), true, &sys),
            Opened::Connected
        );
        // A listener on its local port.
        assert_eq!(
            side_of(None, &key(40_000, 41_000), true, &sys),
            Opened::Accepted
        );
        // The listener gone: a service port here, an ephemeral one there.
        assert_eq!(
            side_of(None, &key(8080, 45_000), false, &sys),
            Opened::Accepted
        );
        // An ephemeral port here: opened here.
        assert_eq!(
            side_of(None, &key(45_000, 8080), false, &sys),
            Opened::Connected
        );
        assert_eq!(
            side_of(None, &key(45_000, 46_000), false, &sys),
            Opened::Connected
        );
    }
}
