//! Aggregates over the connection table: HDR histograms of state durations
//! (all, per owner, per peer), end reasons, who closed first, transition
//! counts and rates, CLOSE_WAIT growth per process and per workload. Pure: fed by
//! [`crate::conn`] outputs with timestamps from the events.

mod capped;
mod histos;
#[cfg(test)]
pub(crate) mod listener_fixture;
#[cfg(test)]
mod listener_tests;
mod snapshot;
pub mod timewait;
pub mod workloads;

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use rustc_hash::FxHashMap;

pub use capped::{JSON_CLOSE_WAIT_SOCKETS, JSON_ROWS, cap_lists};
pub use histos::{HistKind, HistSummary, Histos};
pub use snapshot::*;
pub use timewait::{ClosedFirst, PortBudget, TimeWaitByLocal, TimeWaitByPeer, TimeWaitByService};

use crate::{
    conn::{Closer, EndReason, Finished, StateDuration},
    model::{Comm, Event, EventKind},
};

/// Per-owner and per-peer histogram sets kept at most (the rest are counted
/// in `untracked_keys`), to bound memory.
pub const MAX_KEYED_HISTOGRAMS: usize = 256;

/// How long CLOSE_WAIT count history is kept per process (the 15 min window
/// plus slack).
const GROWTH_HISTORY_NS: u64 = 16 * 60 * 1_000_000_000;

pub struct Aggregates {
    pub all: Histos,
    /// Whether durations are also kept per owner and per peer (`top` and
    /// `stats --histograms-by` show them; `report` does not: off there, a
    /// duration costs one histogram record instead of three).
    pub keyed: bool,
    pub by_owner: FxHashMap<u32, (Comm, Histos)>,
    pub by_peer: FxHashMap<(IpAddr, u16), Histos>,
    pub untracked_keys: u64,
    pub ended: FxHashMap<EndReason, u64>,
    pub closers: FxHashMap<Closer, u64>,
    /// Transition counts by (old, new), indexed by state number.
    pub transitions: Box<[[u64; 13]; 13]>,
    pub transitions_total: u64,
    pub timewait_total: u64,
    /// Every event applied (transitions and timewait begin/re-arm/end).
    pub events_total: u64,
    /// Connections that never got established, by destination (at most
    /// [`MAX_FAILED_PEERS`] destinations): for `doctor`'s dead backends.
    pub failed_connects: FxHashMap<(IpAddr, u16), FailedConnectCount>,
    /// connect() failures with EADDRNOTAVAIL per port budget (namespace,
    /// local address, destination), at most [`MAX_FAILED_PEERS`] budgets:
    /// one exhausted source says nothing about the others to the same
    /// destination.
    pub no_port_by_budget: FxHashMap<(u32, IpAddr, IpAddr, u16), u64>,
    /// Who closed first, per local service (connections accepted here) and
    /// per destination (connections opened here), at most
    /// [`MAX_CLOSE_GROUPS`] keys each.
    pub closed_by_service: FxHashMap<timewait::ServiceKey, ClosedFirst>,
    pub closed_by_peer: FxHashMap<(IpAddr, u16), ClosedFirst>,
    /// Timewait sockets whose 4-tuple a connect() took over (`tcp_tw_reuse`),
    /// by destination (at most [`MAX_FAILED_PEERS`] destinations), with the
    /// process that reused last.
    pub tw_reuses: FxHashMap<(IpAddr, u16), TwReuseCount>,
    /// CLOSE_WAIT counts sampled per process.
    close_wait_history: GrowthRing<u32>,
    /// The same per workload (its display name, as `close_wait_by_workload`
    /// names it: a restarted unit or container keeps its history).
    close_wait_history_by_workload: GrowthRing<Box<str>>,
}

/// (ts of the sample, count) per key, oldest first, over the last
/// [`GROWTH_HISTORY_NS`]: what CLOSE_WAIT growth rates are measured on. A
/// key is kept while it had CLOSE_WAIT sockets within that history.
#[derive(Debug)]
struct GrowthRing<K> {
    history: HashMap<K, VecDeque<(u64, u64)>>,
    /// When it was last sampled: a key first seen at the next sample had
    /// none then (its growth starts from 0, not from itself).
    last_sample_ns: Option<u64>,
}

impl<K> Default for GrowthRing<K> {
    fn default() -> Self {
        Self {
            history: HashMap::default(),
            last_sample_ns: None,
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> GrowthRing<K> {
    /// Records each key's count at `now_ns` (keys absent from `counts` are
    /// recorded as 0 if they had history).
    fn sample(&mut self, now_ns: u64, counts: &HashMap<K, u64>) {
        let previous = self.last_sample_ns.filter(|&t| t < now_ns);
        for (key, &n) in counts {
            let hist = self.history.entry(key.clone()).or_default();
            if hist.is_empty()
                && let Some(t) = previous
            {
                // Sampled before with no CLOSE_WAIT: it grew from 0 since.
                hist.push_back((t, 0));
            }
            hist.push_back((now_ns, n));
        }
        self.last_sample_ns = Some(now_ns);
        self.history.retain(|key, hist| {
            if !counts.contains_key(key) {
                hist.push_back((now_ns, 0));
            }
            while hist
                .front()
                .is_some_and(|&(t, _)| now_ns.saturating_sub(t) > GROWTH_HISTORY_NS)
            {
                hist.pop_front();
            }
            hist.iter().any(|&(_, n)| n > 0)
        });
    }

    /// Growth of `key` over the last `window_ns`, or over the history
    /// available when shorter (nothing with less than one sample interval).
    fn growth<Q>(&self, key: &Q, now_ns: u64, window_ns: u64) -> Growth
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let Some(hist) = self.history.get(key) else {
            return Growth::default();
        };
        let Some(&(t_now, n_now)) = hist.back() else {
            return Growth::default();
        };
        let since = now_ns.saturating_sub(window_ns);
        let Some(&(t0, n0)) = hist.iter().find(|&&(t, _)| t >= since) else {
            return Growth::default();
        };
        let dt = t_now.saturating_sub(t0);
        if dt == 0 {
            return Growth::default();
        }
        let delta = n_now as i64 - n0 as i64;
        Growth {
            per_min: delta as f64 * 60e9 / dt as f64,
            delta,
            span_ns: dt,
        }
    }

    fn len(&self) -> usize {
        self.history.len()
    }
}

impl Default for Aggregates {
    fn default() -> Self {
        Self {
            all: Histos::default(),
            keyed: true,
            by_owner: FxHashMap::default(),
            by_peer: FxHashMap::default(),
            untracked_keys: 0,
            ended: FxHashMap::default(),
            closers: FxHashMap::default(),
            transitions: Box::default(),
            transitions_total: 0,
            timewait_total: 0,
            events_total: 0,
            failed_connects: FxHashMap::default(),
            no_port_by_budget: FxHashMap::default(),
            closed_by_service: FxHashMap::default(),
            closed_by_peer: FxHashMap::default(),
            tw_reuses: FxHashMap::default(),
            close_wait_history: GrowthRing::default(),
            close_wait_history_by_workload: GrowthRing::default(),
        }
    }
}

/// Durations and ends an engine left for another thread to aggregate
/// (`report`: [`crate::engine::Engine::defer_aggregates`]), in order.
/// Durations are not kept per owner and peer there, so the two lists
/// commute: only the ends' order matters (capped maps keep the first keys).
#[derive(Debug, Default)]
pub struct Batch {
    pub durations: Vec<(HistKind, u64)>,
    pub finished: Vec<Finished>,
}

/// What an aggregating thread takes, in order.
#[derive(Debug)]
pub enum Deferred {
    Batch(Batch),
    /// Start again (a report window's start).
    Reset,
}

/// A change of a count over the span it was measured on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Growth {
    /// Per minute over `span_ns`.
    pub per_min: f64,
    /// The change itself.
    pub delta: i64,
    /// The span measured: the window, or the history available when shorter.
    pub span_ns: u64,
}

/// Most keys [`Aggregates::closed_by_service`] and
/// [`Aggregates::closed_by_peer`] keep each.
pub const MAX_CLOSE_GROUPS: usize = 4096;

/// Most destinations [`Aggregates::failed_connects`] keeps.
pub const MAX_FAILED_PEERS: usize = 4096;

/// Failed connects to one destination, and who tried last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailedConnectCount {
    pub refused: u64,
    pub timeout: u64,
    /// connect() failed with EADDRNOTAVAIL: no free local port.
    pub no_port: u64,
    pub owner: Option<(u32, Comm)>,
}

/// Timewait sockets reused towards one destination, and who reused last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TwReuseCount {
    pub reused: u64,
    /// The namespace of the last reuse.
    pub netns: u32,
    pub last_by: Option<(u32, Comm)>,
}

impl Aggregates {
    pub fn on_event(&mut self, e: &Event) {
        self.events_total += 1;
        match e.kind {
            EventKind::Transition => {
                if let Some(old) = e.old {
                    self.transitions[old as usize][e.new as usize] += 1;
                }
                self.transitions_total += 1;
            }
            EventKind::TwBegin => self.timewait_total += 1,
            _ => {}
        }
    }

    fn keyed_owner(&mut self, pid: u32, comm: Comm) -> Option<&mut Histos> {
        // One hash on the hot path: the cap is checked only for new keys.
        let full = self.by_owner.len() >= MAX_KEYED_HISTOGRAMS;
        match self.by_owner.entry(pid) {
            std::collections::hash_map::Entry::Occupied(o) => Some(&mut o.into_mut().1),
            std::collections::hash_map::Entry::Vacant(_) if full => {
                self.untracked_keys += 1;
                None
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                Some(&mut v.insert((comm, Histos::default())).1)
            }
        }
    }

    fn keyed_peer(&mut self, peer: (IpAddr, u16)) -> Option<&mut Histos> {
        let full = self.by_peer.len() >= MAX_KEYED_HISTOGRAMS;
        match self.by_peer.entry(peer) {
            std::collections::hash_map::Entry::Occupied(o) => Some(o.into_mut()),
            std::collections::hash_map::Entry::Vacant(_) if full => {
                self.untracked_keys += 1;
                None
            }
            std::collections::hash_map::Entry::Vacant(v) => Some(v.insert(Histos::default())),
        }
    }

    fn record(&mut self, kind: HistKind, ns: u64, owner: Option<(u32, Comm)>, peer: (IpAddr, u16)) {
        self.all.record(kind, ns);
        if !self.keyed {
            return;
        }
        if let Some((pid, comm)) = owner
            && let Some(h) = self.keyed_owner(pid, comm)
        {
            h.record(kind, ns);
        }
        if let Some(h) = self.keyed_peer(peer) {
            h.record(kind, ns);
        }
    }

    pub fn on_duration(&mut self, d: &StateDuration) {
        let Some(kind) = HistKind::of_duration(d) else {
            return;
        };
        self.record(kind, d.ns, d.owner.map(|o| (o.pid, o.comm)), d.peer);
    }

    /// What [`Self::on_duration`] records when durations are not kept per
    /// owner and peer.
    fn on_duration_unkeyed(&mut self, kind: HistKind, ns: u64) {
        self.all.record(kind, ns);
    }

    /// Takes what another thread's engine deferred ([`Deferred`]), in
    /// order; returns a batch's emptied lists, for the engine to reuse.
    pub fn take(&mut self, d: Deferred) -> Option<Batch> {
        match d {
            Deferred::Batch(mut b) => {
                for &(kind, ns) in &b.durations {
                    self.on_duration_unkeyed(kind, ns);
                }
                for f in &b.finished {
                    self.on_finished(f);
                }
                b.durations.clear();
                b.finished.clear();
                Some(b)
            }
            Deferred::Reset => {
                *self = Self {
                    keyed: self.keyed,
                    ..Self::default()
                };
                None
            }
        }
    }

    /// Takes over what another `Aggregates` kept of the same events while
    /// this one took their durations and ends ([`Deferred`]): the event
    /// counts and the CLOSE_WAIT history.
    pub fn merge_counts(&mut self, from: Aggregates) {
        self.transitions = from.transitions;
        self.transitions_total = from.transitions_total;
        self.timewait_total = from.timewait_total;
        self.events_total = from.events_total;
        self.close_wait_history = from.close_wait_history;
        self.close_wait_history_by_workload = from.close_wait_history_by_workload;
    }

    pub fn on_finished(&mut self, f: &Finished) {
        match f {
            Finished::Conn {
                conn,
                end_ns,
                reason,
            } => {
                *self.ended.entry(*reason).or_default() += 1;
                if *reason == EndReason::Dropped {
                    return;
                }
                if matches!(
                    reason,
                    EndReason::Refused | EndReason::Timeout | EndReason::NoPort
                ) {
                    let key = (conn.key.daddr, conn.key.dport);
                    if self.failed_connects.len() < MAX_FAILED_PEERS
                        || self.failed_connects.contains_key(&key)
                    {
                        let f = self.failed_connects.entry(key).or_default();
                        match reason {
                            EndReason::Refused => f.refused += 1,
                            EndReason::Timeout => f.timeout += 1,
                            _ => f.no_port += 1,
                        }
                    }
                    let budget = (
                        conn.key.netns,
                        conn.key.saddr,
                        conn.key.daddr,
                        conn.key.dport,
                    );
                    if *reason == EndReason::NoPort
                        && (self.no_port_by_budget.len() < MAX_FAILED_PEERS
                            || self.no_port_by_budget.contains_key(&budget))
                    {
                        *self.no_port_by_budget.entry(budget).or_default() += 1;
                    }
                    if let Some(f) = self.failed_connects.get_mut(&key)
                        && let Some(o) = conn.owner
                    {
                        f.owner = Some((o.pid, o.comm));
                    }
                }
                if let Some(c) = conn.closer {
                    *self.closers.entry(c).or_default() += 1;
                    self.count_close_group(conn, c);
                }
                if !conn.age_is_lower_bound() && *reason != EndReason::ListenerClosed {
                    self.record(
                        HistKind::Lifetime,
                        end_ns.saturating_sub(conn.born_ns),
                        conn.owner.map(|o| (o.pid, o.comm)),
                        (conn.key.daddr, conn.key.dport),
                    );
                }
            }
            Finished::Tw {
                tw,
                reason,
                duration_ns,
                reused_by,
                ..
            } => {
                *self.ended.entry(*reason).or_default() += 1;
                if *reason == EndReason::TimeWaitReused {
                    let key = (tw.key.daddr, tw.key.dport);
                    if self.tw_reuses.len() < MAX_FAILED_PEERS || self.tw_reuses.contains_key(&key)
                    {
                        let r = self.tw_reuses.entry(key).or_default();
                        r.reused += 1;
                        r.netns = tw.key.netns;
                        if let Some(o) = reused_by {
                            r.last_by = Some((o.pid, o.comm));
                        }
                    }
                }
                if let Some(ns) = duration_ns
                    && *reason != EndReason::Dropped
                {
                    self.record(
                        HistKind::TimeWait,
                        *ns,
                        tw.owner.map(|o| (o.pid, o.comm)),
                        (tw.key.daddr, tw.key.dport),
                    );
                }
            }
        }
    }

    fn count_close_group(&mut self, conn: &crate::conn::Conn, closer: Closer) {
        fn bump<K: std::hash::Hash + Eq>(map: &mut FxHashMap<K, ClosedFirst>, key: K, c: Closer) {
            if map.len() < MAX_CLOSE_GROUPS || map.contains_key(&key) {
                map.entry(key).or_default().add(c);
            }
        }
        match timewait::close_group(conn) {
            Some(timewait::CloseGroup::Service(k)) => bump(&mut self.closed_by_service, k, closer),
            Some(timewait::CloseGroup::Peer(k)) => bump(&mut self.closed_by_peer, k, closer),
            None => {}
        }
    }

    /// Records the current CLOSE_WAIT count of each process at `now_ns`
    /// (processes absent from `counts` are recorded as 0 if they had history).
    pub fn sample_close_wait(&mut self, now_ns: u64, counts: &HashMap<u32, u64>) {
        self.close_wait_history.sample(now_ns, counts);
    }

    /// CLOSE_WAIT growth of `pid` in sockets per minute over the last
    /// `window_ns` (or over the history available, if shorter; 0 with less
    /// than one sample interval of history).
    pub fn close_wait_growth_per_min(&self, pid: u32, now_ns: u64, window_ns: u64) -> f64 {
        self.close_wait_growth(pid, now_ns, window_ns).per_min
    }

    /// CLOSE_WAIT growth of `pid` over the last `window_ns`, or over the
    /// history available when shorter: the change, the span, the rate.
    pub fn close_wait_growth(&self, pid: u32, now_ns: u64, window_ns: u64) -> Growth {
        self.close_wait_history.growth(&pid, now_ns, window_ns)
    }

    /// Records the current CLOSE_WAIT count of each workload (by its
    /// display name) at `now_ns`, as [`Self::sample_close_wait`] does per
    /// process: workloads absent from `counts` are recorded as 0 if they
    /// had history.
    pub fn sample_close_wait_by_workload(&mut self, now_ns: u64, counts: &HashMap<Box<str>, u64>) {
        self.close_wait_history_by_workload.sample(now_ns, counts);
    }

    /// CLOSE_WAIT growth of workload `name` over the last `window_ns`, or
    /// over the history available when shorter (the same sample ring as
    /// per process, keyed by workload).
    pub fn close_wait_growth_of_workload(&self, name: &str, now_ns: u64, window_ns: u64) -> Growth {
        self.close_wait_history_by_workload
            .growth(name, now_ns, window_ns)
    }

    /// Workloads with CLOSE_WAIT history kept (bounded by the rows folded
    /// per snapshot).
    pub fn workloads_with_history(&self) -> usize {
        self.close_wait_history_by_workload.len()
    }
}
