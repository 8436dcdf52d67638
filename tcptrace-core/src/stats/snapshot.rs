//! A point-in-time summary of the engine: what `stats` prints (and what the
//! TUI will draw). Built by walking the live table once, so its cost is
//! O(live sockets) per interval, never per event.
//!
//! # `tcptrace stats --json` schema
//!
//! One object per interval; field names are a stable contract:
//! - `ts_ns`: wall clock, Unix epoch ns.
//! - `states`: state name -> live count (TIME_WAIT counts timewait sockets).
//! - `close_wait`: every CLOSE_WAIT socket, oldest first: `pid`, `comm`,
//!   `saddr`, `sport`, `daddr`, `dport`, `age_ms`, `age_is_lower_bound`.
//! - `close_wait_by_process`: `pid`, `comm`, `count`, `growth_per_min` (1 min
//!   window), `growth_per_min_5m`, `growth_per_min_15m`, `oldest_age_ms`,
//!   and what each rate was measured on: `growth_delta` and
//!   `growth_span_ms` (and `_5m`, `_15m`): the change in sockets over the
//!   span actually available (shorter than the window early on).
//! - `time_wait_by_peer` (connections opened here, by destination):
//!   `daddr`, `dport`, `count`, `port_range_ratio` (the fullest port
//!   budget's TIME_WAIT share: per namespace and local address, over the
//!   ports connect() may pick there), `ports` (that budget's), `sources`
//!   (budgets to this destination), `rate_per_sec`, `pid`, `comm`,
//!   `closed_first`.
//! - `time_wait_by_service` (connections accepted here: the server closed
//!   first): `netns`, `saddr`, `sport`, `count`, `rate_per_sec`, `pid`,
//!   `comm` (the listener's owner), `clients`, `closed_first`.
//! - `time_wait_by_local`: `saddr`, `sport`, `count`, `netns`: the services
//!   of `time_wait_by_service` in the older shape.
//! - `port_budgets`: per (netns, local address, destination): `netns`,
//!   `saddr`, `daddr`, `dport`, `time_wait`, `reusable`, `open`, `ports`,
//!   `port_range`, `port_range_ratio`, `in_use_ratio`, `tw_reuse`,
//!   `facts_known`, `pid`, `comm`.
//! - `by_process`, `by_local_port`, `by_remote`: live counts per state
//!   (the JSON printers cap every list: [`super::cap_lists`]).
//! - `histograms`: name -> `count`, `p50_ms`, `p90_ms`, `p99_ms`, `max_ms`.
//! - `histograms_by` (only with `--histograms-by process|peer`): list of
//!   `pid`+`comm` or `daddr`+`dport` with their own `histograms`.
//! - `lost`: source -> count (`ring_full`, `recursion_misses`, `map_full`,
//!   `probe_failed`, `evictions`, `decode_errors`).
//! - `transitions_total`, `transitions_per_sec`, `closers`, `ended`,
//!   `tw_overflow`, `port_range`, `tracked`, `corrections`, `unknown_sockets`.
//! - `silent_rearms`: timewait sockets reconciliation found in TIME_WAIT
//!   while events left them in FIN_WAIT2 (the kernel re-armed the timer in
//!   the same timer-wheel bucket: no tracepoint fires); `owners_found`:
//!   sockets whose owner only the `/proc` scan of reconciliation found.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use rustc_hash::FxHashMap;

use serde::Serialize;

use super::{
    Aggregates, Growth, HistKind, HistSummary, PortBudget, TimeWaitByLocal, TimeWaitByPeer,
    TimeWaitByService,
    timewait::{GroupInput, group},
};
use crate::{
    conn::{Closer, ConnTable, EndReason},
    model::{Comm, Lost, TcpState},
};

const MIN: u64 = 60 * 1_000_000_000;

/// Facts from outside the engine that a snapshot reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostFacts {
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: (u16, u16),
    /// TcpExt TCPTimeWaitOverflow since boot.
    pub tw_overflow: u64,
    /// Kernel-side losses since start.
    pub lost: Lost,
    pub decode_errors: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CloseWaitSocket {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub age_ms: u64,
    pub age_is_lower_bound: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CloseWaitByProcess {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub count: u64,
    /// Per minute over the last minute, 5 and 15 minutes, or over the
    /// history available when shorter (see the matching `growth_span*`).
    pub growth_per_min: f64,
    pub growth_per_min_5m: f64,
    pub growth_per_min_15m: f64,
    /// What was measured for each window: the change in sockets and the
    /// span it was measured over (shorter than the window early on).
    pub growth_delta: i64,
    pub growth_span_ms: u64,
    pub growth_delta_5m: i64,
    pub growth_span_5m_ms: u64,
    pub growth_delta_15m: i64,
    pub growth_span_15m_ms: u64,
    pub oldest_age_ms: u64,
    pub oldest_age_is_lower_bound: bool,
    /// Remote endpoints of these sockets, most frequent first (at most 5).
    pub peers: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StateCounts {
    pub total: u64,
    pub states: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ByProcess {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    #[serde(flatten)]
    pub counts: StateCounts,
}

#[derive(Clone, Debug, Serialize)]
pub struct ByLocalPort {
    pub port: u16,
    #[serde(flatten)]
    pub counts: StateCounts,
}

#[derive(Clone, Debug, Serialize)]
pub struct ByRemote {
    pub daddr: IpAddr,
    #[serde(flatten)]
    pub counts: StateCounts,
}

/// Histograms of one owner or one peer (`stats --histograms-by`).
#[derive(Clone, Debug, Serialize)]
pub struct KeyedHistograms {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daddr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    pub histograms: BTreeMap<&'static str, HistSummary>,
}

/// Which keyed histograms a snapshot carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HistogramsBy {
    #[default]
    None,
    Process,
    Peer,
}

fn summaries(h: &super::Histos) -> BTreeMap<&'static str, HistSummary> {
    HistKind::ALL
        .iter()
        .map(|&k| (k.name(), h.summary(k)))
        .filter(|(_, s)| s.count > 0)
        .collect()
}

/// Per-owner or per-peer histograms, most samples first.
pub fn keyed_histograms(aggs: &Aggregates, by: HistogramsBy) -> Vec<KeyedHistograms> {
    let total = |m: &BTreeMap<&'static str, HistSummary>| m.values().map(|s| s.count).sum::<u64>();
    let mut out: Vec<KeyedHistograms> = match by {
        HistogramsBy::None => Vec::new(),
        HistogramsBy::Process => aggs
            .by_owner
            .iter()
            .map(|(&pid, (comm, h))| KeyedHistograms {
                pid: Some(pid),
                comm: Some(comm_string(*comm)),
                daddr: None,
                dport: None,
                histograms: summaries(h),
            })
            .collect(),
        HistogramsBy::Peer => aggs
            .by_peer
            .iter()
            .map(|(&(daddr, dport), h)| KeyedHistograms {
                pid: None,
                comm: None,
                daddr: Some(daddr),
                dport: Some(dport),
                histograms: summaries(h),
            })
            .collect(),
    };
    out.sort_by_key(|k| {
        (
            std::cmp::Reverse(total(&k.histograms)),
            k.pid,
            k.daddr,
            k.dport,
        )
    });
    out
}

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub ts_ns: u64,
    pub states: BTreeMap<&'static str, u64>,
    pub close_wait: Vec<CloseWaitSocket>,
    pub close_wait_by_process: Vec<CloseWaitByProcess>,
    pub time_wait_by_peer: Vec<TimeWaitByPeer>,
    pub time_wait_by_service: Vec<TimeWaitByService>,
    pub time_wait_by_local: Vec<TimeWaitByLocal>,
    pub port_budgets: Vec<PortBudget>,
    pub by_process: Vec<ByProcess>,
    pub by_local_port: Vec<ByLocalPort>,
    pub by_remote: Vec<ByRemote>,
    pub histograms: BTreeMap<&'static str, HistSummary>,
    /// Only with `--histograms-by process|peer`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub histograms_by: Vec<KeyedHistograms>,
    pub lost: BTreeMap<&'static str, u64>,
    pub transitions_total: u64,
    pub transitions_per_sec: f64,
    pub closers: BTreeMap<&'static str, u64>,
    pub ended: BTreeMap<&'static str, u64>,
    pub tw_overflow: u64,
    pub port_range: (u16, u16),
    pub tracked: u64,
    pub corrections: u64,
    pub unknown_sockets: u64,
    pub silent_rearms: u64,
    pub owners_found: u64,
}

/// States always listed in `states` (others only when non-zero).
const MAIN_STATES: [TcpState; 10] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::TimeWait,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Listen,
    TcpState::Closing,
];

fn empty_states() -> BTreeMap<&'static str, u64> {
    MAIN_STATES.iter().map(|s| (s.name(), 0)).collect()
}

/// Live counts per state while walking the table: an array indexed by the
/// state number (the walk runs per socket; maps are built once per group).
#[derive(Clone, Copy, Default)]
struct CountAcc([u64; 13]);

impl CountAcc {
    fn finish(&self) -> StateCounts {
        StateCounts {
            total: self.0.iter().sum(),
            states: TcpState::ALL
                .iter()
                .filter(|&&s| self.0[s as usize] > 0)
                .map(|&s| (s.name(), self.0[s as usize]))
                .collect(),
        }
    }
}

fn add(counts: &mut CountAcc, state: TcpState) {
    counts.0[state as usize] += 1;
}

fn new_counts() -> CountAcc {
    CountAcc::default()
}

fn comm_string(c: Comm) -> String {
    c.to_str_lossy().into_owned()
}

pub fn end_reason_name(r: EndReason) -> &'static str {
    match r {
        EndReason::Normal => "normal",
        EndReason::TimeWait => "time_wait",
        EndReason::Reset => "reset",
        EndReason::Refused => "refused",
        EndReason::NoPort => "no_port",
        EndReason::Timeout => "timeout",
        EndReason::ListenerClosed => "listener_closed",
        EndReason::TimeWaitExpired => "time_wait_expired",
        EndReason::TimeWaitKilled => "time_wait_killed",
        EndReason::TimeWaitReused => "time_wait_reused",
        EndReason::TimeWaitPurged => "time_wait_purged",
        EndReason::TimeWaitOverflow => "time_wait_overflow",
        EndReason::Dropped => "dropped",
    }
}

pub fn closer_name(c: Closer) -> &'static str {
    match c {
        Closer::Active => "active",
        Closer::Passive => "passive",
        Closer::Simultaneous => "simultaneous",
    }
}

/// Per-process CLOSE_WAIT accumulator: comm, count, oldest age (ms), whether
/// that age is a lower bound, and counts per peer.
type CloseWaitAcc = (Option<Comm>, u64, u64, bool, FxHashMap<SocketAddr, u64>);

/// Inputs for [`build`] besides the table and aggregates.
pub struct SnapshotInput<'a> {
    /// Monotonic now, the base of every age.
    pub now_ns: u64,
    /// Wall clock of `now_ns`.
    pub wall_ns: u64,
    pub host: HostFacts,
    pub transitions_per_sec: f64,
    pub histograms_by: HistogramsBy,
    /// Each namespace's TCP sysctls (port budgets).
    pub facts: &'a crate::netfacts::NetFacts,
    /// When observation began (rates over a shorter span than their window).
    pub since_ns: u64,
}

/// Builds a snapshot and samples CLOSE_WAIT counts for the growth rates.
pub fn build(table: &ConnTable, aggs: &mut Aggregates, input: &SnapshotInput<'_>) -> Snapshot {
    let now = input.now_ns;
    let mut states = empty_states();
    let mut close_wait = Vec::new();
    let mut all = CountAcc::default();
    let mut by_process: FxHashMap<Option<u32>, (Option<Comm>, CountAcc)> = FxHashMap::default();
    let mut by_port: FxHashMap<u16, CountAcc> = FxHashMap::default();
    let mut by_remote: FxHashMap<IpAddr, CountAcc> = FxHashMap::default();
    let mut cw_by_pid: FxHashMap<Option<u32>, CloseWaitAcc> = FxHashMap::default();

    for c in table.conns() {
        add(&mut all, c.state);
        let pid = c.owner.map(|o| o.pid);
        let entry = by_process
            .entry(pid)
            .or_insert_with(|| (c.owner.map(|o| o.comm), new_counts()));
        add(&mut entry.1, c.state);
        add(
            by_port.entry(c.key.sport).or_insert_with(new_counts),
            c.state,
        );
        if c.state != TcpState::Listen {
            add(
                by_remote.entry(c.key.daddr).or_insert_with(new_counts),
                c.state,
            );
        }
        if c.state == TcpState::CloseWait {
            let age = now.saturating_sub(c.state_since_ns) / 1_000_000;
            let lower = c.state_age_is_lower_bound();
            close_wait.push(CloseWaitSocket {
                pid,
                comm: c.owner.map(|o| comm_string(o.comm)),
                saddr: c.key.saddr,
                sport: c.key.sport,
                daddr: c.key.daddr,
                dport: c.key.dport,
                age_ms: age,
                age_is_lower_bound: lower,
            });
            let e = cw_by_pid
                .entry(pid)
                .or_insert_with(|| (c.owner.map(|o| o.comm), 0, 0, false, FxHashMap::default()));
            e.1 += 1;
            if age >= e.2 {
                e.2 = age;
                e.3 = lower;
            }
            *e.4.entry(SocketAddr::new(c.key.daddr, c.key.dport))
                .or_default() += 1;
        }
    }

    for t in table.timewaits() {
        // Counted by substate, as `ss` does: an orphaned FIN_WAIT2 handled by
        // a timewait socket is FIN_WAIT2.
        add(&mut all, t.substate);
        let pid = t.owner.map(|o| o.pid);
        let entry = by_process
            .entry(pid)
            .or_insert_with(|| (t.owner.map(|o| o.comm), new_counts()));
        add(&mut entry.1, t.substate);
        add(
            by_port.entry(t.key.sport).or_insert_with(new_counts),
            t.substate,
        );
        add(
            by_remote.entry(t.key.daddr).or_insert_with(new_counts),
            t.substate,
        );
    }
    let grouped = group(
        table,
        &GroupInput {
            now_ns: now,
            since_ns: input.since_ns,
            facts: input.facts,
            host_port_range: input.host.port_range,
            closed_by_service: &aggs.closed_by_service,
            closed_by_peer: &aggs.closed_by_peer,
        },
    );

    for s in TcpState::ALL {
        if all.0[s as usize] > 0 {
            states.insert(s.name(), all.0[s as usize]);
        }
    }
    close_wait.sort_by(|a, b| {
        b.age_ms
            .cmp(&a.age_ms)
            .then((a.saddr, a.sport, a.daddr, a.dport).cmp(&(b.saddr, b.sport, b.daddr, b.dport)))
    });

    let counts: HashMap<u32, u64> = cw_by_pid
        .iter()
        .filter_map(|(pid, v)| pid.map(|p| (p, v.1)))
        .collect();
    aggs.sample_close_wait(now, &counts);
    let mut close_wait_by_process: Vec<CloseWaitByProcess> = cw_by_pid
        .into_iter()
        .map(|(pid, (comm, count, oldest, lower, peers))| {
            let growth =
                |w| pid.map_or_else(Growth::default, |p| aggs.close_wait_growth(p, now, w));
            let [g1, g5, g15] = [MIN, 5 * MIN, 15 * MIN].map(growth);
            let mut peers: Vec<(SocketAddr, u64)> = peers.into_iter().collect();
            peers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            CloseWaitByProcess {
                pid,
                comm: comm.map(comm_string),
                count,
                growth_per_min: g1.per_min,
                growth_per_min_5m: g5.per_min,
                growth_per_min_15m: g15.per_min,
                growth_delta: g1.delta,
                growth_span_ms: g1.span_ns / 1_000_000,
                growth_delta_5m: g5.delta,
                growth_span_5m_ms: g5.span_ns / 1_000_000,
                growth_delta_15m: g15.delta,
                growth_span_15m_ms: g15.span_ns / 1_000_000,
                oldest_age_ms: oldest,
                oldest_age_is_lower_bound: lower,
                peers: peers.into_iter().take(5).map(|p| p.0.to_string()).collect(),
            }
        })
        .collect();
    close_wait_by_process.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));

    let time_wait_by_local = grouped
        .by_service
        .iter()
        .map(|s| TimeWaitByLocal {
            saddr: s.saddr,
            sport: s.sport,
            count: s.count,
            netns: s.netns,
        })
        .collect();

    let mut by_process: Vec<ByProcess> = by_process
        .into_iter()
        .map(|(pid, (comm, counts))| ByProcess {
            pid,
            comm: comm.map(comm_string),
            counts: counts.finish(),
        })
        .collect();
    by_process.sort_by(|a, b| b.counts.total.cmp(&a.counts.total).then(a.pid.cmp(&b.pid)));
    let mut by_local_port: Vec<ByLocalPort> = by_port
        .into_iter()
        .map(|(port, counts)| ByLocalPort {
            port,
            counts: counts.finish(),
        })
        .collect();
    by_local_port.sort_by(|a, b| {
        b.counts
            .total
            .cmp(&a.counts.total)
            .then(a.port.cmp(&b.port))
    });
    let mut by_remote: Vec<ByRemote> = by_remote
        .into_iter()
        .map(|(daddr, counts)| ByRemote {
            daddr,
            counts: counts.finish(),
        })
        .collect();
    by_remote.sort_by(|a, b| {
        b.counts
            .total
            .cmp(&a.counts.total)
            .then(a.daddr.cmp(&b.daddr))
    });

    let histograms = HistKind::ALL
        .iter()
        .map(|&k| (k.name(), aggs.all.summary(k)))
        .collect();
    let counters = table.counters;
    let lost = BTreeMap::from([
        ("ring_full", input.host.lost.ring_full),
        ("recursion_misses", input.host.lost.recursion_misses),
        ("map_full", input.host.lost.map_full),
        ("probe_failed", input.host.lost.probe_failed),
        ("evictions", counters.evictions),
        ("decode_errors", input.host.decode_errors),
    ]);

    Snapshot {
        ts_ns: input.wall_ns,
        states,
        close_wait,
        close_wait_by_process,
        time_wait_by_peer: grouped.by_peer,
        time_wait_by_service: grouped.by_service,
        time_wait_by_local,
        port_budgets: grouped.budgets,
        by_process,
        by_local_port,
        by_remote,
        histograms,
        histograms_by: keyed_histograms(aggs, input.histograms_by),
        lost,
        transitions_total: aggs.transitions_total,
        transitions_per_sec: input.transitions_per_sec,
        closers: aggs
            .closers
            .iter()
            .map(|(&c, &n)| (closer_name(c), n))
            .collect(),
        ended: aggs
            .ended
            .iter()
            .map(|(&r, &n)| (end_reason_name(r), n))
            .collect(),
        tw_overflow: input.host.tw_overflow,
        port_range: input.host.port_range,
        tracked: table.len() as u64,
        corrections: counters.corrections,
        unknown_sockets: counters.unknown_sockets,
        silent_rearms: counters.silent_rearms,
        owners_found: counters.owners_found,
    }
}
