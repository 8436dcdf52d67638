//! A point-in-time summary of the engine: what `stats` prints (and what the
//! TUI will draw). Built from the counts the table keeps as sockets come,
//! change and go ([`crate::conn::Live`]), so its cost is O(processes,
//! ports, peers and CLOSE_WAIT sockets) plus the timewait sockets for their
//! groups, never O(live sockets): 1.5 ms at a million accepted sockets.
//!
//! # `tcptrace stats --json` schema
//!
//! One object per interval; field names are a stable contract:
//! - `ts_ns`: wall clock, Unix epoch ns.
//! - `states`: state name -> live count (TIME_WAIT counts timewait sockets).
//! - `close_wait`: the CLOSE_WAIT sockets, oldest first: `pid`, `comm`,
//!   `saddr`, `sport`, `daddr`, `dport`, `age_ms`, `age_is_lower_bound`
//!   (a snapshot lists the oldest [`CLOSE_WAIT_LISTED`]; those beyond the
//!   JSON rows count in its `other` row as ever).
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
//! - `close_wait_by_stack` (only with stacks on: `--stacks`, or a recording
//!   made with it; the key is absent otherwise): CLOSE_WAIT sockets per
//!   process and stack, most first, then by `pid`, then by `stack_id`
//!   (null last): `pid`, `comm`, `stack_id` (null: no stack), `count`,
//!   `process_count`, `oldest_age_ms`, `oldest_age_is_lower_bound`,
//!   `peers`, `code_path`, `top_frame`, `stack_quality` (a
//!   [`crate::stacks::StackQuality`] name, `pending` or `none`), `frames`
//!   (`addr`, `function`, `function_offset`, `module`, `module_offset`,
//!   `build_id`, `file`, `line`). O(CLOSE_WAIT sockets) at snapshot time.
//! - `stacks` (only with stacks on): `kernel_misses`, `requested`, `named`,
//!   `failed`, `pending`, `dropped`, `max_depth`, `known`,
//!   `sockets_with_stack`, `close_wait_without_stack`.
//! - The workload fields (`close_wait_by_workload`, `time_wait_by_workload`,
//!   `by_workload`, `workloads`, and those of process rows): see
//!   [`super::workloads`].
//! - `histograms`: name -> `count`, `p50_ms`, `p90_ms`, `p99_ms`, `max_ms`.
//! - `histograms_by` (only with `--histograms-by process|peer`): list of
//!   `pid`+`comm` or `daddr`+`dport` with their own `histograms`.
//! - `lost`: source -> count (`ring_full`, `recursion_misses`, `map_full`,
//!   `probe_failed`, `evictions`, `decode_errors`).
//! - `transitions_total`, `transitions_per_sec`, `closers`, `ended`,
//!   `tw_overflow`, `port_range`, `tracked`, `corrections`, `unknown_sockets`.
//! - `listeners` and `listen_drops` (only when listener data came: the
//!   live commands' sampler or kernel drop reports, or a recording of
//!   them; both keys absent otherwise): see [`ListenDrops`].
//! - `silent_rearms`: timewait sockets reconciliation found in TIME_WAIT
//!   while events left them in FIN_WAIT2 (the kernel re-armed the timer in
//!   the same timer-wheel bucket: no tracepoint fires); `owners_found`:
//!   sockets whose owner only the `/proc` scan of reconciliation found.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use super::{
    Aggregates, Growth, HistKind, HistSummary, PortBudget, TimeWaitByLocal, TimeWaitByPeer,
    TimeWaitByService,
    timewait::{GroupInput, group},
    workloads::{
        ByWorkload, CloseWaitByWorkload, KeyCloseWait, TimeWaitByWorkload, WorkloadKey,
        WorkloadRef, WorkloadStatus,
    },
};
use crate::{
    conn::{CloseWaitItem, Closer, ConnTable, EndReason},
    listeners::{DropCounters, ListenerRow, ListenerTable, ReasonCounts, UnmatchedRow},
    model::{Comm, Lost, TcpState},
    stacks::{Frame, StackCounts, StackKey, StackTable},
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
    /// What the live source's stack namer did (`--stacks`; zero otherwise).
    pub stacks: StackCounts,
}

/// CLOSE_WAIT sockets of one process opened by one code path (`--stacks`):
/// a row of `close_wait_by_stack`.
#[derive(Clone, Debug, Serialize)]
pub struct CloseWaitByStack {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The kernel's stack id; null: this process's CLOSE_WAIT sockets with no
    /// stack (opened before tracing, or the kernel missed it).
    pub stack_id: Option<u32>,
    pub count: u64,
    /// The process's CLOSE_WAIT sockets in all ("412 of 460").
    pub process_count: u64,
    pub oldest_age_ms: u64,
    pub oldest_age_is_lower_bound: bool,
    /// Remote endpoints of these sockets, most frequent first (at most 5).
    pub peers: Vec<String>,
    /// [`crate::stacks::Stack::code_path`] of 3 frames; "(not named yet)";
    /// "(no stack)".
    pub code_path: String,
    pub top_frame: Option<String>,
    /// [`crate::stacks::StackQuality`] names, plus "pending" (not named
    /// yet) and "none" (no stack).
    pub stack_quality: &'static str,
    /// The full stack, innermost first; empty when pending or none.
    pub frames: Vec<Frame>,
}

/// How stacks are doing (`--stacks`): the `stacks` object.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StacksStatus {
    #[serde(flatten)]
    pub counts: StackCounts,
    /// Stacks with names in this engine.
    pub known: u64,
    /// Live full sockets with a stack.
    pub sockets_with_stack: u64,
    /// CLOSE_WAIT sockets with no stack (the null rows).
    pub close_wait_without_stack: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    /// Whose cgroup the row is counted under (the owner's at its first
    /// CLOSE_WAIT socket), for [`super::workloads::fold`].
    #[serde(skip)]
    pub key: WorkloadKey,
    /// The owner's workload, once folded.
    #[serde(flatten)]
    pub workload: WorkloadRef,
}

#[derive(Clone, Debug, Serialize)]
pub struct StateCounts {
    pub total: u64,
    pub states: StateMap,
}

/// Counts by state number, serialized as a map from state name to count
/// (the states with sockets, by name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateMap(pub [u64; 13]);

impl StateMap {
    fn of(counts: &[u32; 13]) -> Self {
        Self(counts.map(u64::from))
    }

    /// The count of the state named `name` (0 when none).
    pub fn get(&self, name: &str) -> u64 {
        TcpState::ALL
            .iter()
            .find(|s| s.name() == name)
            .map_or(0, |&s| self.0[s as usize])
    }

    /// (name, count) of the states with sockets, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        let mut v: Vec<(&'static str, u64)> = TcpState::ALL
            .iter()
            .filter(|&&s| self.0[s as usize] > 0)
            .map(|&s| (s.name(), self.0[s as usize]))
            .collect();
        v.sort_unstable_by_key(|p| p.0);
        v.into_iter()
    }
}

impl Serialize for StateMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ByProcess {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    #[serde(flatten)]
    pub counts: StateCounts,
    #[serde(skip)]
    pub key: WorkloadKey,
    #[serde(flatten)]
    pub workload: WorkloadRef,
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
    /// The oldest [`CLOSE_WAIT_LISTED`] CLOSE_WAIT sockets, oldest first.
    pub close_wait: Vec<CloseWaitSocket>,
    /// CLOSE_WAIT sockets beyond those listed: the JSON printers fold them
    /// into the list's `other` row ([`super::cap_lists`] takes the field
    /// out).
    #[serde(skip_serializing_if = "is_zero")]
    pub close_wait_unlisted: u64,
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
    /// CLOSE_WAIT by workload (filled by [`super::workloads::fold`]).
    pub close_wait_by_workload: Vec<CloseWaitByWorkload>,
    /// TIME_WAIT by workload (filled by [`super::workloads::fold`]).
    pub time_wait_by_workload: Vec<TimeWaitByWorkload>,
    /// Live sockets per state by workload, most first (filled by
    /// [`super::workloads::fold`]).
    pub by_workload: Vec<ByWorkload>,
    /// How workloads are attributed here (the live commands).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workloads: Option<WorkloadStatus>,
    /// CLOSE_WAIT sockets by process and the code that opened them, most
    /// first (only with stacks on: the key is absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_wait_by_stack: Option<Vec<CloseWaitByStack>>,
    /// How stacks are doing (only with stacks on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacks: Option<StacksStatus>,
    /// Every listener (queue, limit, drops by reason and per second), most
    /// drops first ([`crate::listeners::ListenerRow`]; the JSON printers
    /// cap it like every list). Absent when no listener data came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Vec<crate::listeners::ListenerRow>>,
    /// Dropped connection attempts in all (absent like `listeners`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_drops: Option<ListenDrops>,
    /// CLOSE_WAIT counts by owner cgroup, before names.
    #[serde(skip)]
    pub close_wait_keys: Vec<KeyCloseWait>,
    /// TIME_WAIT counts by owner cgroup, before names.
    #[serde(skip)]
    pub time_wait_keys: Vec<(WorkloadKey, u64)>,
    /// Monotonic time of the snapshot (growth samples by workload).
    #[serde(skip)]
    pub mono_ns: u64,
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

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Peers named per process holding CLOSE_WAIT.
const PEERS_SHOWN: usize = 5;

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
    /// The engine's stack names: `Some` iff stacks are on.
    pub stacks: Option<&'a StackTable>,
    /// The engine's listeners (the `listeners` and `listen_drops`
    /// sections, when [`ListenerTable::is_active`]).
    pub listeners: Option<&'a ListenerTable>,
}

/// `listen_drops`: connection attempts dropped, in all.
///
/// - `total`: drops at listeners since tracing began (the sum of the
///   `listeners[]` rows' `drops_total`, closed listeners still kept
///   included); `by_reason`: name -> count ([`crate::listeners::DropReason`]
///   names); `per_sec`: over the last 10 s, all listeners.
/// - `kernel_reported`: drops the kernel reported one by one
///   (`skb:kfree_skb`), at listeners or not; `kernel_suppressed`: those it
///   counted without reporting (its rate limit); `samples`: listener
///   samples taken (sock_diag, about 1/s).
/// - `namespaces[]` (at most [`LISTED_NAMESPACES`], the most listen drops
///   first): `netns`, the namespace's TcpExt counters since the first
///   sample (`listen_overflows`, `listen_drops`, `req_qfull_drop`,
///   `req_qfull_cookies`, `paws_passive`, `paws_active`, `paws_estab`,
///   `syncookies_sent`, `syncookies_failed`, `paws_timewait`,
///   `tsecr_rejected`, `paws_old_ack`; null: not on this kernel) and
///   `unattributed` (ListenDrops no listener's own count shows).
/// - `unmatched[]`: destinations with drops and no listener (SYNs to a
///   closed port...): `destination`, `netns`, `drops_total`,
///   `drops_by_reason`, most first (at most 256 kept).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenDrops {
    pub total: u64,
    pub by_reason: BTreeMap<&'static str, u64>,
    pub per_sec: f64,
    pub kernel_reported: u64,
    pub kernel_suppressed: u64,
    pub samples: u64,
    pub namespaces: Vec<NetnsListenDrops>,
    pub unmatched: Vec<UnmatchedRow>,
    /// Typed copy of `by_reason`.
    #[serde(skip)]
    pub counts: ReasonCounts,
}

/// One namespace's counters in `listen_drops.namespaces[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetnsListenDrops {
    pub netns: u32,
    #[serde(flatten)]
    pub counters: DropCounters,
    pub unattributed: u64,
}

/// The `listeners` rows and the `listen_drops` summary of `table`, `None`
/// when it never had data.
pub fn listener_sections(
    table: &ListenerTable,
    now_ns: u64,
) -> Option<(Vec<ListenerRow>, ListenDrops)> {
    if !table.is_active() {
        return None;
    }
    let rows = table.rows(now_ns);
    let counts = table.total();
    let drops = ListenDrops {
        total: counts.total(),
        by_reason: counts.by_name(),
        per_sec: rows.iter().map(|r| r.drops_per_sec).sum(),
        kernel_reported: table.kernel_drops.total(),
        kernel_suppressed: table.kernel_suppressed,
        samples: table.samples,
        namespaces: busiest_namespaces(table),
        unmatched: table.unmatched_rows(),
        counts,
    };
    Some((rows, drops))
}

/// Namespaces `listen_drops.namespaces[]` lists at most (pods come and go:
/// a host may have sampled thousands).
pub const LISTED_NAMESPACES: usize = 64;

/// The namespaces with the most listen drops since the first sample (then
/// unattributed ones, then by inode), at most [`LISTED_NAMESPACES`].
fn busiest_namespaces(table: &crate::listeners::ListenerTable) -> Vec<NetnsListenDrops> {
    let mut all: Vec<NetnsListenDrops> = table
        .namespaces
        .iter()
        .map(|(&netns, n)| NetnsListenDrops {
            netns,
            counters: n.since_start,
            unattributed: n.unattributed,
        })
        .collect();
    all.sort_by(|a, b| {
        let drops = |n: &NetnsListenDrops| n.counters.listen_drops.unwrap_or(0);
        drops(b)
            .cmp(&drops(a))
            .then(b.unattributed.cmp(&a.unattributed))
            .then(a.netns.cmp(&b.netns))
    });
    all.truncate(LISTED_NAMESPACES);
    all
}

/// CLOSE_WAIT sockets a snapshot lists, oldest first: those the JSON
/// printers show and the first of the rest (the age of their `other` row).
pub const CLOSE_WAIT_LISTED: usize = super::JSON_CLOSE_WAIT_SOCKETS + 1;

/// The order of CLOSE_WAIT lists: oldest first (by whole milliseconds, as
/// shown), then by 4-tuple, namespace and owner (the same tuple can be held
/// twice, e.g. a seeded socket and a traced one: the order never depends on
/// where the table keeps them).
fn older_first(
    table: &ConnTable,
    now: u64,
) -> impl Fn(&CloseWaitItem, &CloseWaitItem) -> std::cmp::Ordering + '_ {
    move |a, b| {
        let age = |i: &CloseWaitItem| now.saturating_sub(i.since_ns) / 1_000_000;
        let pid = |i: &CloseWaitItem| table.conn_at(i.slot).and_then(|c| c.owner).map(|o| o.pid);
        age(b)
            .cmp(&age(a))
            .then_with(|| {
                (
                    a.key.saddr,
                    a.key.sport,
                    a.key.daddr,
                    a.key.dport,
                    a.key.netns,
                )
                    .cmp(&(
                        b.key.saddr,
                        b.key.sport,
                        b.key.daddr,
                        b.key.dport,
                        b.key.netns,
                    ))
            })
            .then_with(|| pid(a).cmp(&pid(b)))
    }
}

/// The oldest `limit` CLOSE_WAIT sockets of `items`, oldest first: a
/// selection, then a sort of those only.
fn oldest(
    table: &ConnTable,
    mut items: Vec<&CloseWaitItem>,
    now: u64,
    limit: usize,
) -> Vec<CloseWaitSocket> {
    let order = older_first(table, now);
    if items.len() > limit && limit > 0 {
        items.select_nth_unstable_by(limit - 1, |a, b| order(a, b));
    }
    items.truncate(limit);
    items.sort_unstable_by(|a, b| order(a, b));
    items
        .into_iter()
        .map(|i| {
            let owner = table.conn_at(i.slot).and_then(|c| c.owner);
            CloseWaitSocket {
                pid: owner.map(|o| o.pid),
                comm: owner.map(|o| comm_string(o.comm)),
                saddr: i.key.saddr,
                sport: i.key.sport,
                daddr: i.key.daddr,
                dport: i.key.dport,
                age_ms: now.saturating_sub(i.since_ns) / 1_000_000,
                age_is_lower_bound: i.lower,
            }
        })
        .collect()
}

/// The oldest `limit` CLOSE_WAIT sockets of process `pid` (`None`: owner
/// unknown), oldest first: what `top` lists for one process.
pub fn close_wait_sockets_of(
    table: &ConnTable,
    pid: Option<u32>,
    now_ns: u64,
    limit: usize,
) -> Vec<CloseWaitSocket> {
    let live = table.live();
    let Some(group) = live.by_pid.index_of(&pid) else {
        return Vec::new();
    };
    let items = live
        .close_wait
        .iter()
        .filter(|i| i.pid_group == group)
        .collect();
    oldest(table, items, now_ns, limit)
}

/// One (process, stack) group of CLOSE_WAIT sockets being counted.
#[derive(Default)]
struct StackGroup {
    count: u64,
    oldest_age_ms: u64,
    lower: bool,
    peers: rustc_hash::FxHashMap<SocketAddr, u32>,
}

/// CLOSE_WAIT sockets by process and the stack that opened them (stacks
/// on only): O(CLOSE_WAIT sockets), at snapshot time, like the groups by
/// cgroup; names from `names` (pending until the namer answers). Most
/// first, then by pid, then by stack id (no stack last).
fn close_wait_by_stack(
    table: &ConnTable,
    names: &StackTable,
    oldest_of: &[Option<(u64, u64, bool)>],
    now: u64,
) -> Vec<CloseWaitByStack> {
    let live = table.live();
    let mut groups: rustc_hash::FxHashMap<(u32, Option<StackKey>), StackGroup> = Default::default();
    for i in &live.close_wait {
        let key = table.conn_at(i.slot).and_then(|c| table.stack_of(c));
        let g = groups.entry((i.pid_group, key)).or_default();
        let age = now.saturating_sub(i.since_ns) / 1_000_000;
        g.count += 1;
        if g.count == 1 || age > g.oldest_age_ms {
            g.oldest_age_ms = age;
            g.lower = i.lower;
        } else if age == g.oldest_age_ms {
            g.lower |= i.lower;
        }
        *g.peers
            .entry(SocketAddr::new(i.key.daddr, i.key.dport))
            .or_insert(0) += 1;
    }
    let mut rows: Vec<CloseWaitByStack> = groups
        .into_iter()
        .map(|((group, key), g)| {
            let r = live.by_pid.at(group);
            let pid = r.key;
            let (code_path, top_frame, stack_quality, frames) =
                match (key, key.and_then(|k| names.get(&k))) {
                    (None, _) => ("(no stack)".to_string(), None, "none", Vec::new()),
                    (Some(_), None) => ("(not named yet)".to_string(), None, "pending", Vec::new()),
                    (Some(_), Some(s)) => (
                        s.code_path(3),
                        s.top_frame(),
                        s.quality.name(),
                        s.frames.clone(),
                    ),
                };
            let mut peers: Vec<(u32, SocketAddr)> =
                g.peers.into_iter().map(|(p, n)| (n, p)).collect();
            peers.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            peers.truncate(PEERS_SHOWN);
            CloseWaitByStack {
                pid,
                comm: pid.and(r.comm()).map(comm_string),
                stack_id: key.map(|k| k.id),
                count: g.count,
                process_count: oldest_of
                    .get(group as usize)
                    .copied()
                    .flatten()
                    .map_or(g.count, |o| o.0),
                oldest_age_ms: g.oldest_age_ms,
                oldest_age_is_lower_bound: g.lower,
                peers: peers.into_iter().map(|p| p.1.to_string()).collect(),
                code_path,
                top_frame,
                stack_quality,
                frames,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.pid.cmp(&b.pid))
            .then((a.stack_id.is_none(), a.stack_id).cmp(&(b.stack_id.is_none(), b.stack_id)))
    });
    rows
}

/// Builds a snapshot and samples CLOSE_WAIT counts for the growth rates.
/// Reads the counts the table keeps ([`crate::conn::Live`]): O(groups and
/// CLOSE_WAIT sockets, plus timewait sockets for their groups), not
/// O(live sockets).
pub fn build(table: &ConnTable, aggs: &mut Aggregates, input: &SnapshotInput<'_>) -> Snapshot {
    let now = input.now_ns;
    let live = table.live();
    let mut states = empty_states();
    for s in TcpState::ALL {
        if live.states[s as usize] > 0 {
            states.insert(s.name(), live.states[s as usize]);
        }
    }
    let close_wait = oldest(
        table,
        live.close_wait.iter().collect(),
        now,
        CLOSE_WAIT_LISTED,
    );
    let close_wait_unlisted = (live.close_wait.len() - close_wait.len()) as u64;

    // Per process: its CLOSE_WAIT sockets, the oldest (and whether its age
    // is a lower bound), the peers most held.
    let mut oldest_of: Vec<Option<(u64, u64, bool)>> = vec![None; live.by_pid.bound()];
    for i in &live.close_wait {
        let age = now.saturating_sub(i.since_ns) / 1_000_000;
        let o = &mut oldest_of[i.pid_group as usize];
        *o = Some(match *o {
            Some((n, a, lower)) if a > age => (n + 1, a, lower),
            Some((n, a, lower)) if a == age => (n + 1, a, lower || i.lower),
            Some((n, ..)) => (n + 1, age, i.lower),
            None => (1, age, i.lower),
        });
    }
    let (close_wait_by_stack, stacks) = match input.stacks {
        Some(names) => {
            let rows = close_wait_by_stack(table, names, &oldest_of, now);
            let without = rows
                .iter()
                .filter(|r| r.stack_id.is_none())
                .map(|r| r.count)
                .sum();
            let status = StacksStatus {
                counts: input.host.stacks,
                known: names.len() as u64,
                sockets_with_stack: table.sockets_with_stacks() as u64,
                close_wait_without_stack: without,
            };
            (Some(rows), Some(status))
        }
        None => (None, None),
    };
    // By owner cgroup (O(CLOSE_WAIT sockets), at snapshot time: the
    // per-event path keeps no count by cgroup), and each process's key.
    // Consecutive sockets mostly share a key: the last one is remembered,
    // so most sockets cost no hashing. Pids and peers come per process
    // group afterwards (O(groups), not O(sockets)).
    let mut key_of_group: Vec<Option<WorkloadKey>> = vec![None; live.by_pid.bound()];
    let mut keys: Vec<KeyCloseWait> = Vec::new();
    let mut key_index: rustc_hash::FxHashMap<WorkloadKey, usize> = Default::default();
    let mut last: Option<(WorkloadKey, usize)> = None;
    for i in &live.close_wait {
        let conn = table.conn_at(i.slot);
        let owner = conn.and_then(|c| c.owner);
        // No owner: a seeded socket counts under the cgroup sock_diag
        // reported for it (the process row of unknown owners keeps none).
        let key = match conn {
            Some(c) if owner.is_none() => match table.cgroup_of(c) {
                0 => WorkloadKey::Unknown,
                id => WorkloadKey::Cgroup(id),
            },
            _ => WorkloadKey::of(owner),
        };
        if owner.is_some() {
            key_of_group[i.pid_group as usize].get_or_insert(key);
        }
        let at = match last {
            Some((k, at)) if k == key => at,
            _ => {
                let at = *key_index.entry(key).or_insert_with(|| {
                    keys.push(KeyCloseWait {
                        key,
                        ..KeyCloseWait::default()
                    });
                    keys.len() - 1
                });
                last = Some((key, at));
                at
            }
        };
        let k = &mut keys[at];
        let age = now.saturating_sub(i.since_ns) / 1_000_000;
        k.count += 1;
        if age > k.oldest_age_ms || k.count == 1 {
            k.oldest_age_ms = age;
            k.oldest_age_is_lower_bound = i.lower;
        } else if age == k.oldest_age_ms {
            k.oldest_age_is_lower_bound |= i.lower;
        }
    }
    let mut close_wait_keys = keys;
    close_wait_keys.sort_by_key(|k| k.key);
    let mut peers_of: Vec<Vec<(u32, SocketAddr)>> = vec![Vec::new(); live.by_pid.bound()];
    for (&(g, peer), &n) in &live.close_wait_peers {
        let top = &mut peers_of[g as usize];
        let better = |a: &(u32, SocketAddr)| (std::cmp::Reverse(a.0), a.1);
        if top.len() < PEERS_SHOWN || top.last().is_some_and(|l| better(&(n, peer)) < better(l)) {
            let at = top.partition_point(|x| better(x) < better(&(n, peer)));
            top.insert(at, (n, peer));
            top.truncate(PEERS_SHOWN);
        }
    }
    // (group, its row, (sockets, oldest age, lower bound)).
    type Held<'a> = (u32, &'a crate::conn::Group<Option<u32>>, (u64, u64, bool));
    let held: Vec<Held<'_>> = oldest_of
        .iter()
        .enumerate()
        .filter_map(|(g, o)| Some((g as u32, live.by_pid.at(g as u32), (*o)?)))
        .collect();

    // Each process's sockets and top peers, under its key (the key of its
    // first CLOSE_WAIT socket).
    for &(g, r, (n, ..)) in &held {
        let Some(key) = key_of_group[g as usize] else {
            continue;
        };
        let Ok(at) = close_wait_keys.binary_search_by_key(&key, |k| k.key) else {
            continue;
        };
        let k = &mut close_wait_keys[at];
        if let Some(pid) = r.key {
            k.pids.push((pid, n));
        }
        for (count, peer) in &peers_of[g as usize] {
            k.peers.push((peer.to_string(), u64::from(*count)));
        }
    }
    let counts: HashMap<u32, u64> = held
        .iter()
        .filter_map(|(_, r, (n, ..))| r.key.map(|p| (p, *n)))
        .collect();
    aggs.sample_close_wait(now, &counts);
    let mut close_wait_by_process: Vec<CloseWaitByProcess> = held
        .iter()
        .map(|&(g, r, (count, oldest, lower))| {
            let pid = r.key;
            let growth =
                |w| pid.map_or_else(Growth::default, |p| aggs.close_wait_growth(p, now, w));
            let [g1, g5, g15] = [MIN, 5 * MIN, 15 * MIN].map(growth);
            CloseWaitByProcess {
                pid,
                comm: pid.and(r.comm()).map(comm_string),
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
                peers: peers_of[g as usize]
                    .iter()
                    .map(|p| p.1.to_string())
                    .collect(),
                key: key_of_group[g as usize]
                    .unwrap_or_else(|| pid.map_or(WorkloadKey::Unknown, WorkloadKey::Pid)),
                workload: WorkloadRef::default(),
            }
        })
        .collect();
    close_wait_by_process.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));

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

    fn counts_of<K>(r: &crate::conn::Group<K>) -> StateCounts {
        StateCounts {
            total: u64::from(r.total),
            states: StateMap::of(&r.counts),
        }
    }
    let mut by_process: Vec<ByProcess> = live
        .by_pid
        .iter()
        .map(|r| ByProcess {
            pid: r.key,
            comm: r.key.and(r.comm()).map(comm_string),
            counts: counts_of(r),
            key: live
                .by_pid
                .index_of(&r.key)
                .and_then(|g| key_of_group.get(g as usize).copied().flatten())
                .unwrap_or_else(|| r.key.map_or(WorkloadKey::Unknown, WorkloadKey::Pid)),
            workload: WorkloadRef::default(),
        })
        .collect();
    by_process.sort_by(|a, b| b.counts.total.cmp(&a.counts.total).then(a.pid.cmp(&b.pid)));
    let mut by_local_port: Vec<ByLocalPort> = live
        .by_port
        .iter()
        .map(|r| ByLocalPort {
            port: r.key,
            counts: counts_of(r),
        })
        .collect();
    by_local_port.sort_by(|a, b| {
        b.counts
            .total
            .cmp(&a.counts.total)
            .then(a.port.cmp(&b.port))
    });
    let mut by_remote: Vec<ByRemote> = live
        .by_remote
        .iter()
        .map(|r| ByRemote {
            daddr: r.key,
            counts: counts_of(r),
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
    let (listeners, listen_drops) = input
        .listeners
        .and_then(|l| listener_sections(l, now))
        .unzip();
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
        close_wait_unlisted,
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
        close_wait_by_workload: Vec::new(),
        time_wait_by_workload: Vec::new(),
        by_workload: Vec::new(),
        workloads: None,
        close_wait_by_stack,
        stacks,
        listeners,
        listen_drops,
        close_wait_keys,
        time_wait_keys: grouped.by_cgroup,
        mono_ns: now,
    }
}
