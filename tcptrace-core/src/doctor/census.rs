//! Counts over the connection table that `doctor` needs and the snapshot
//! does not keep: TIME_WAIT on a listening port (the server closed first)
//! versus TIME_WAIT to one destination (a client burning ephemeral ports),
//! per network namespace, each with the process behind it.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use crate::{
    conn::ConnTable,
    model::{Owner, TcpState},
};

/// Timewait sockets (TIME_WAIT, or an orphan's FIN_WAIT2) whose local port is
/// a listening port in their namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTimeWait {
    pub netns: u32,
    pub port: u16,
    pub count: u64,
    /// Distinct remote addresses among them.
    pub peers: u64,
    /// The listener's owner.
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// Timewait sockets to one destination from ephemeral ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestTimeWait {
    pub netns: u32,
    pub daddr: IpAddr,
    pub dport: u16,
    pub count: u64,
    /// The owner of most of them.
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// See the module doc. Lists are largest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub time_wait_on_listener: Vec<ListenerTimeWait>,
    pub time_wait_to: Vec<DestTimeWait>,
    /// Of all timewait sockets, those still in FIN_WAIT2 (closed by the
    /// application, the peer's FIN not seen).
    pub fin_wait2_orphans: u64,
}

fn names(owner: Option<&Owner>) -> (Option<u32>, Option<String>) {
    (
        owner.map(|o| o.pid),
        owner.map(|o| o.comm.to_str_lossy().into_owned()),
    )
}

/// How many sockets each owner (by pid) has, with the owner.
type OwnerCounts = FxHashMap<u32, (u64, Owner)>;

/// Walks the table once.
pub fn census(table: &ConnTable) -> Census {
    let mut listeners: FxHashMap<(u32, u16), Option<Owner>> = FxHashMap::default();
    // Full-socket entries in TIME_WAIT: none from the usual events (the
    // kernel hands over to a timewait socket), kept should a transition
    // report one.
    let mut full_in_time_wait = Vec::new();
    for c in table.conns() {
        match c.state {
            TcpState::Listen => {
                listeners.insert((c.key.netns, c.key.sport), c.owner);
            }
            TcpState::TimeWait => full_in_time_wait.push(c),
            _ => {}
        }
    }
    let mut on_listener: FxHashMap<(u32, u16), (u64, rustc_hash::FxHashSet<IpAddr>)> =
        FxHashMap::default();
    let mut to_dest: FxHashMap<(u32, IpAddr, u16), (u64, OwnerCounts)> = FxHashMap::default();
    let mut orphans = 0;
    // Timewait sockets (from events, or seeded / reconciled from sock_diag),
    // then any full socket in TIME_WAIT.
    let timewaits = table
        .timewaits()
        .map(|tw| (&tw.key, tw.substate, tw.owner))
        .chain(full_in_time_wait.iter().map(|c| (&c.key, c.state, c.owner)));
    for (k, substate, owner) in timewaits {
        // Orphaned FIN_WAIT2 timewait sockets count too: they come from the
        // same side closing first, hold the port the same way, and become
        // TIME_WAIT on the peer's FIN (often silently: a re-arm within the
        // same timer-wheel bucket fires no tracepoint).
        if substate == TcpState::FinWait2 {
            orphans += 1;
        }
        if listeners.contains_key(&(k.netns, k.sport)) {
            let e = on_listener.entry((k.netns, k.sport)).or_default();
            e.0 += 1;
            e.1.insert(k.daddr);
        } else {
            let e = to_dest.entry((k.netns, k.daddr, k.dport)).or_default();
            e.0 += 1;
            if let Some(o) = owner {
                e.1.entry(o.pid).or_insert((0, o)).0 += 1;
            }
        }
    }
    let mut time_wait_on_listener: Vec<ListenerTimeWait> = on_listener
        .into_iter()
        .map(|((netns, port), (count, peers))| {
            let (pid, comm) = names(listeners.get(&(netns, port)).and_then(|o| o.as_ref()));
            ListenerTimeWait {
                netns,
                port,
                count,
                peers: peers.len() as u64,
                pid,
                comm,
            }
        })
        .collect();
    time_wait_on_listener.sort_by(|a, b| b.count.cmp(&a.count).then(a.port.cmp(&b.port)));
    let mut time_wait_to: Vec<DestTimeWait> = to_dest
        .into_iter()
        .map(|((netns, daddr, dport), (count, owners))| {
            let top = owners
                .values()
                .max_by_key(|(n, o)| (*n, std::cmp::Reverse(o.pid)))
                .map(|(_, o)| o);
            let (pid, comm) = names(top);
            DestTimeWait {
                netns,
                daddr,
                dport,
                count,
                pid,
                comm,
            }
        })
        .collect();
    time_wait_to.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.daddr.cmp(&b.daddr))
            .then(a.dport.cmp(&b.dport))
    });
    Census {
        time_wait_on_listener,
        time_wait_to,
        fin_wait2_orphans: orphans,
    }
}
