//! Who held CLOSE_WAIT and TIME_WAIT, and when, over a recording: live
//! counts per process, per destination and per service, kept in step with
//! the engine's table at every event.
//!
//! After each event, the sockets it can have changed are looked up in the
//! table: the event's own, and a socket of the same 4-tuple seen at a
//! snapshot (which the event adopts or replaces). CLOSE_WAIT and listening
//! sockets have a shadow entry each (owner, since when: what a release
//! needs for its age); a timewait socket's group (destination or service)
//! follows from the socket itself, looked up before and after the event,
//! so a TIME_WAIT flood needs no shadow (only sockets whose opening side
//! was not seen keep the group they were first counted in). Every count is
//! thus exact at every event: a leak that appears and ends between two
//! timeline points still shows its true peak, when it was reached, and for
//! how long it was held. Snapshot records (reconciliation) are followed by
//! a recount; so are table evictions (at most once a second: counts may
//! include the evicted sockets until then). Cost: a few hash lookups per
//! event and O(log n) per change of a count (the ranking the timeline's top
//! holders come from).
//!
//! CLOSE_WAIT is also counted per owner cgroup (the workload: resolved to
//! names only when the report is made, from the recording's own table),
//! with the same episodes as per process.
//!
//! Holders (per process, cgroup, destination, service) are kept for a window only,
//! at most [`MAX_HOLDERS`] of each kind; a holder beyond that is counted in
//! `dropped`, not kept.

use std::{
    cmp::Reverse,
    collections::BTreeSet,
    hash::Hash,
    net::{IpAddr, SocketAddr},
};

use rustc_hash::FxHashMap;

use crate::{
    conn::{ConnTable, Opened, TupleKey, TwConn},
    model::{Comm, Event, Owner, TcpState},
    netfacts::{NetFacts, Sysctls},
};

/// Holders kept per kind (processes, destinations, services).
pub const MAX_HOLDERS: usize = 10_000;
/// Distinct peers counted per CLOSE_WAIT holder (the rest are not named).
const MAX_PEERS: usize = 32;
/// Distinct owners counted per TIME_WAIT group.
const MAX_OWNERS: usize = 16;

/// Counts per key, ranked (largest first) when asked: a count changes at
/// every event of a flood, a ranking is read at each timeline point, so
/// the keys changed since are re-ranked then ([`Ranked::rank`]), not at
/// every change.
#[derive(Debug)]
pub(super) struct Ranked<K> {
    /// Each key's count, and the count it is ranked at (0: not ranked).
    counts: FxHashMap<K, (u64, u64)>,
    order: BTreeSet<(Reverse<u64>, K)>,
    /// Keys whose count changed since the last ranking.
    changed: Vec<K>,
    pub total: u64,
}

impl<K> Default for Ranked<K> {
    fn default() -> Self {
        Self {
            counts: FxHashMap::default(),
            order: BTreeSet::new(),
            changed: Vec::new(),
            total: 0,
        }
    }
}

impl<K: Copy + Ord + Hash> Ranked<K> {
    /// Sets `k`'s count by `f`; its new count.
    fn update(&mut self, k: K, f: impl FnOnce(u64) -> u64) -> u64 {
        let (c, ranked) = self.counts.entry(k).or_insert((0, 0));
        let old = *c;
        *c = f(old);
        let n = *c;
        if n == old {
            if n == 0 && *ranked == 0 {
                self.counts.remove(&k);
            }
            return n;
        }
        if old == *ranked {
            // No longer ranked at its count (once in `changed` per key).
            self.changed.push(k);
        }
        self.total = self.total - old + n;
        n
    }

    /// One more for `k`; its new count.
    fn add(&mut self, k: K) -> u64 {
        self.update(k, |c| c + 1)
    }

    /// One less for `k`; its new count.
    fn sub(&mut self, k: K) -> u64 {
        let Some((c, ranked)) = self.counts.get_mut(&k) else {
            return 0;
        };
        let old = *c;
        if old == 0 {
            return 0;
        }
        *c = old - 1;
        if old == *ranked {
            self.changed.push(k);
        }
        self.total -= 1;
        old - 1
    }

    pub fn get(&self, k: &K) -> u64 {
        self.counts.get(k).map_or(0, |c| c.0)
    }

    /// Sets `k`'s count.
    fn set(&mut self, k: K, n: u64) {
        self.update(k, |_| n);
    }

    /// Ranks the keys changed since the last ranking.
    pub fn rank(&mut self) {
        for k in std::mem::take(&mut self.changed) {
            let Some((c, ranked)) = self.counts.get_mut(&k) else {
                continue;
            };
            if *c == *ranked {
                if *c == 0 {
                    self.counts.remove(&k);
                }
                continue;
            }
            if *ranked > 0 {
                self.order.remove(&(Reverse(*ranked), k));
            }
            *ranked = *c;
            if *c > 0 {
                self.order.insert((Reverse(*c), k));
            } else {
                self.counts.remove(&k);
            }
        }
    }

    /// The `n` largest, largest first, as of the last [`Self::rank`].
    pub fn top(&self, n: usize) -> impl Iterator<Item = (K, u64)> + '_ {
        self.order.iter().take(n).map(|&(Reverse(c), k)| (k, c))
    }

    pub fn iter(&self) -> impl Iterator<Item = (K, u64)> + '_ {
        self.counts
            .iter()
            .filter(|(_, c)| c.0 > 0)
            .map(|(&k, &c)| (k, c.0))
    }
}

/// A port budget: (namespace, local address, destination address, port).
pub(super) type BudgetKey = (u32, IpAddr, IpAddr, u16);

/// The fullest port budget of a destination, at its fullest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct BudgetPeak {
    pub netns: u32,
    pub saddr: IpAddr,
    pub time_wait: u64,
    pub ports: u32,
}

impl BudgetPeak {
    pub fn share(&self) -> f64 {
        self.time_wait as f64 / f64::from(self.ports.max(1))
    }
}

/// A TIME_WAIT socket's group: the destination of a connection opened here,
/// or the local service that accepted it (the server closed first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TwGroup {
    Destination(IpAddr, u16),
    /// (namespace, local address, port).
    Service(u32, IpAddr, u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    CloseWait,
    Listen,
}

#[derive(Clone, Copy, Debug)]
struct ConnEntry {
    key: TupleKey,
    held: Held,
    owner: Option<Owner>,
    /// The cgroup its workload counts under (0: unknown): the owner's, or
    /// for a seeded socket with no owner found, its sock_diag one.
    cgroup: u64,
    since_ns: u64,
    exact: bool,
}

/// Sockets the table took from a sock_diag snapshot have ids below this
/// (its synthetic keys, until an event binds them to a kernel address);
/// only they can leave the table through another socket's event (adopted
/// by, or a duplicate of, the event's socket with the same 4-tuple), so
/// only they are indexed by 4-tuple. Kernel addresses are far above.
const SEEDED_IDS_BELOW: u64 = 1 << 40;

/// Counts that rise and fall over a window: the peak and when, when it was
/// first and last seen above zero, and the time spent above zero.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Episode {
    pub peak: u64,
    pub peak_ns: u64,
    pub first_ns: u64,
    /// The last moment it was seen above zero (its release, or the
    /// window's end while still held).
    pub last_ns: u64,
    pub held_ns: u64,
    /// The count now (at the window's end once closed).
    pub now: u64,
    since: Option<u64>,
    seen: bool,
}

impl Episode {
    fn set(&mut self, n: u64, ts: u64) {
        self.now = n;
        if n > self.peak {
            self.peak = n;
            self.peak_ns = ts;
        }
        match (n > 0, self.since) {
            (true, None) => {
                self.since = Some(ts);
                if !self.seen {
                    self.seen = true;
                    self.first_ns = ts;
                }
            }
            (false, Some(s)) => {
                self.held_ns += ts.saturating_sub(s);
                self.since = None;
            }
            _ => {}
        }
        self.last_ns = self.last_ns.max(ts);
    }

    /// Folds another (closed) episode of the same workload in: the larger
    /// peak, the earliest first and latest last moment, the times held
    /// added (an upper bound when they overlapped), the counts now added.
    pub fn merge(&mut self, other: &Episode) {
        if other.peak > self.peak || (other.peak == self.peak && other.peak_ns < self.peak_ns) {
            self.peak = other.peak;
            self.peak_ns = other.peak_ns;
        }
        if other.seen {
            self.first_ns = if self.seen {
                self.first_ns.min(other.first_ns)
            } else {
                other.first_ns
            };
            self.seen = true;
        }
        self.last_ns = self.last_ns.max(other.last_ns);
        self.held_ns = self.held_ns.saturating_add(other.held_ns);
        self.now = self.now.saturating_add(other.now);
    }

    fn close(&mut self, ts: u64) {
        if let Some(s) = self.since {
            self.held_ns += ts.saturating_sub(s);
            self.since = Some(ts);
            self.last_ns = ts;
        }
    }
}

/// One process that held CLOSE_WAIT in the window.
#[derive(Clone, Debug, Default)]
pub(super) struct CwHolder {
    pub ep: Episode,
    pub comm: Option<Comm>,
    /// The owner's cgroup id last seen (0: unknown).
    pub cgroup: u64,
    /// The oldest CLOSE_WAIT age reached (at a socket's release, or at the
    /// window's end for those still held).
    pub oldest_ns: u64,
    pub oldest_lower_bound: bool,
    pub peers: FxHashMap<SocketAddr, u64>,
}

/// One destination or service that held TIME_WAIT in the window.
#[derive(Clone, Debug, Default)]
pub(super) struct TwHolder {
    pub ep: Episode,
    /// TIME_WAIT sockets that began in the window.
    pub begun: u64,
    /// Sockets seen per owner (the process behind most is named), with
    /// the owner's cgroup id (0: unknown).
    pub owners: FxHashMap<u32, (u64, Comm, u64)>,
    /// The listener's owner (services).
    pub listener: Option<Owner>,
    /// Ports connect() may pick in the namespace of the peak (destinations).
    pub ports_at_peak: u32,
    /// The fullest (namespace, local address) budget to this destination
    /// at its fullest in the window (destinations).
    pub budget_peak: Option<BudgetPeak>,
}

impl TwHolder {
    /// Budget `key` now holds `n` TIME_WAIT of `ports`.
    pub fn note_budget(&mut self, key: BudgetKey, n: u64, ports: u32) {
        let now = BudgetPeak {
            netns: key.0,
            saddr: key.1,
            time_wait: n,
            ports,
        };
        if self.budget_peak.is_none_or(|p| now.share() > p.share()) {
            self.budget_peak = Some(now);
        }
    }
}

impl TwHolder {
    /// The process behind the group: pid, name and cgroup id (0: unknown).
    pub fn owner(&self) -> Option<(u32, Comm, u64)> {
        if let Some(o) = self.listener {
            return Some((o.pid, o.comm, o.cgroup));
        }
        self.owners
            .iter()
            .max_by_key(|(pid, (n, _, _))| (*n, Reverse(**pid)))
            .map(|(pid, (_, comm, cgroup))| (*pid, *comm, *cgroup))
    }
}

/// A capped map of holders.
#[derive(Debug)]
pub(super) struct Capped<K, V> {
    pub map: FxHashMap<K, V>,
    pub dropped: u64,
}

impl<K, V> Default for Capped<K, V> {
    fn default() -> Self {
        Self {
            map: FxHashMap::default(),
            dropped: 0,
        }
    }
}

impl<K: Hash + Eq, V: Default> Capped<K, V> {
    /// The holder of `k`, made if there is room; `starting` counts a refusal.
    fn slot(&mut self, k: K, starting: bool) -> Option<&mut V> {
        if self.map.len() >= MAX_HOLDERS && !self.map.contains_key(&k) {
            if starting {
                self.dropped += 1;
            }
            return None;
        }
        Some(self.map.entry(k).or_default())
    }
}

/// The holders of one window.
#[derive(Debug, Default)]
pub(super) struct Holders {
    pub close_wait: Capped<Option<u32>, CwHolder>,
    /// CLOSE_WAIT per owner cgroup id (owners of unknown cgroup are not
    /// counted here).
    pub close_wait_cgroups: Capped<u64, CwHolder>,
    pub destinations: Capped<TwGroup, TwHolder>,
    pub services: Capped<TwGroup, TwHolder>,
}

impl Holders {
    fn tw(&mut self, g: TwGroup) -> &mut Capped<TwGroup, TwHolder> {
        match g {
            TwGroup::Destination(..) => &mut self.destinations,
            TwGroup::Service(..) => &mut self.services,
        }
    }
}

/// What the shadow needs from outside the table: the namespaces' port
/// ranges.
pub(super) struct Ctx<'a> {
    pub facts: &'a NetFacts,
    pub host_port_range: (u16, u16),
}

/// The shadow of the table and the live counts (see the module doc).
#[derive(Debug, Default)]
pub(super) struct Tracker {
    conns: FxHashMap<u64, ConnEntry>,
    /// Timewait sockets in TIME_WAIT whose opening side was not seen
    /// (seeded, or not linked to their full socket): the group each was
    /// counted in, fixed then (it follows the listeners of that moment).
    /// The others' group follows from the socket itself and is not kept:
    /// a flood of TIME_WAIT costs no memory here.
    unopened: FxHashMap<u64, TwGroup>,
    /// Seeded sockets (ids below [`SEEDED_IDS_BELOW`]) by 4-tuple, and back.
    conn_by_key: FxHashMap<TupleKey, u64>,
    tw_by_key: FxHashMap<TupleKey, u64>,
    tw_keys: FxHashMap<u64, TupleKey>,
    /// Listening sockets per (namespace, port), and the owner of one.
    listeners: FxHashMap<(u32, u16), (u32, Option<Owner>)>,
    /// CLOSE_WAIT sockets per owning process (`None`: owner unknown).
    pub close_wait: Ranked<Option<u32>>,
    /// The name of each process holding CLOSE_WAIT now.
    pub comms: FxHashMap<Option<u32>, Comm>,
    /// The cgroup of each process holding CLOSE_WAIT now (when known).
    cgroups_of: FxHashMap<u32, u64>,
    /// CLOSE_WAIT sockets per owner cgroup id (known ones only).
    close_wait_cgroups: FxHashMap<u64, u64>,
    /// TIME_WAIT sockets per destination or service.
    pub time_wait: Ranked<TwGroup>,
    /// Usable ports per namespace (cleared when the facts change).
    ports: FxHashMap<u32, u32>,
    /// Each namespace's sysctls (cleared when the facts change).
    sysctls: FxHashMap<u32, Sysctls>,
    /// TIME_WAIT per port budget (namespace, local address, destination),
    /// from ephemeral local ports: what a destination's share is judged by.
    budgets: FxHashMap<BudgetKey, u64>,
    /// The budget each counted socket is in (destination sockets from an
    /// ephemeral port only: a client's flood costs one entry per socket).
    tw_budget: FxHashMap<u64, BudgetKey>,
    evictions: u64,
    /// The table evicted sockets since the last full walk.
    pub stale: bool,
    /// Set while a window is open.
    pub holders: Option<Holders>,
}

fn conn_entry(table: &ConnTable, id: u64) -> Option<ConnEntry> {
    let c = table.conn(id)?;
    let held = match c.state {
        TcpState::CloseWait => Held::CloseWait,
        TcpState::Listen => Held::Listen,
        _ => return None,
    };
    Some(ConnEntry {
        key: c.key,
        held,
        owner: c.owner,
        cgroup: table.cgroup_of(c),
        since_ns: c.state_since_ns,
        exact: !c.state_age_is_lower_bound(),
    })
}

impl Tracker {
    /// What an event about to be applied may change that the table will
    /// no longer tell afterwards: the group its timewait socket counts in.
    /// Asked right after the engine applied the event: the table kept
    /// the timewait socket as it was before ([`ConnTable::timewait_before`]),
    /// which saves looking it up twice.
    pub fn before_event(&self, table: &ConnTable, e: &Event) -> Option<TwGroup> {
        use crate::model::EventKind;
        match e.kind {
            EventKind::TwBegin | EventKind::TwRearm | EventKind::TwSubstate | EventKind::TwEnd => {
                let t = table.timewait_before(e.sk).flatten()?;
                if t.substate != TcpState::TimeWait {
                    return None;
                }
                stable_group(t).or_else(|| self.unopened.get(&e.sk).copied())
            }
            _ => None,
        }
    }

    /// Follows one event the engine just applied (`before`: what
    /// [`Self::before_event`] said): the sockets it can have changed are
    /// its own and a seeded one with its 4-tuple.
    pub fn after_event(
        &mut self,
        table: &ConnTable,
        ctx: &Ctx<'_>,
        e: &Event,
        before: Option<TwGroup>,
        now: u64,
    ) {
        use crate::model::EventKind;
        let seeded_conn = |t: &Self| {
            if t.conn_by_key.is_empty() {
                return None;
            }
            t.conn_by_key.get(&TupleKey::of_event(e)).copied()
        };
        let seeded_tw = |t: &Self| {
            if t.tw_by_key.is_empty() {
                return None;
            }
            t.tw_by_key.get(&TupleKey::of_event(e)).copied()
        };
        match e.kind {
            EventKind::Transition | EventKind::Accept => {
                // Only CLOSE_WAIT and listening sockets are followed: an
                // event that moved its socket between other states (most)
                // changes nothing here (the shadow follows the table, so
                // it holds no socket the table had in another state).
                let followed =
                    |s: Option<TcpState>| matches!(s, Some(TcpState::CloseWait | TcpState::Listen));
                match table.touched(e.sk) {
                    Some((before, after)) if !followed(before) && !followed(after) => {}
                    _ => self.sync_conn(table, e.sk, now),
                }
                if let Some(id) = seeded_conn(self).filter(|&id| id != e.sk) {
                    self.sync_conn(table, id, now);
                }
                if let Some(id) = seeded_tw(self) {
                    self.sync_seeded_tw(table, ctx, id, now);
                }
            }
            EventKind::TwBegin | EventKind::TwRearm | EventKind::TwSubstate | EventKind::TwEnd => {
                // A begin on a socket the table had is a new one.
                if e.kind == EventKind::TwBegin {
                    if let Some(g) = before {
                        self.tw_gone(e.sk, g, now);
                    }
                    self.sync_tw(table, ctx, e.sk, None, now);
                } else {
                    self.sync_tw(table, ctx, e.sk, before, now);
                }
                if let Some(id) = seeded_tw(self).filter(|&id| id != e.sk) {
                    self.sync_seeded_tw(table, ctx, id, now);
                }
                if let Some(id) = seeded_conn(self) {
                    self.sync_conn(table, id, now);
                }
            }
            EventKind::Lost | EventKind::Drop => {}
        }
        if table.counters.evictions != self.evictions {
            self.evictions = table.counters.evictions;
            self.stale = true;
        }
    }

    /// A seeded timewait socket (its opening side never seen: counted in
    /// the group it was first given) after another socket's event.
    fn sync_seeded_tw(&mut self, table: &ConnTable, ctx: &Ctx<'_>, id: u64, now: u64) {
        let was = self.unopened.get(&id).copied();
        self.sync_tw(table, ctx, id, was, now);
    }

    /// Walks the whole table (after a snapshot record, or evictions).
    pub fn resync(&mut self, table: &ConnTable, ctx: &Ctx<'_>, now: u64) {
        let known: Vec<u64> = self.conns.keys().copied().collect();
        for id in known {
            self.sync_conn(table, id, now);
        }
        for c in table.conns() {
            if matches!(c.state, TcpState::CloseWait | TcpState::Listen)
                && !self.conns.contains_key(&c.sk)
            {
                self.sync_conn(table, c.sk, now);
            }
        }
        // TIME_WAIT is counted again: the groups whose count changed
        // change by that much now (one socket of each named, for its
        // namespace and owner).
        let mut counts: FxHashMap<TwGroup, (u64, u32, Option<Owner>)> = FxHashMap::default();
        let mut unopened = FxHashMap::default();
        self.budgets.clear();
        self.tw_budget.clear();
        let (mut by_key, mut keys) = (FxHashMap::default(), FxHashMap::default());
        for t in table.timewaits() {
            if t.substate != TcpState::TimeWait {
                continue;
            }
            let g = stable_group(t).unwrap_or_else(|| {
                let g = self
                    .unopened
                    .get(&t.tw)
                    .copied()
                    .unwrap_or_else(|| self.by_listeners(t, ctx));
                unopened.insert(t.tw, g);
                g
            });
            if t.tw < SEEDED_IDS_BELOW {
                by_key.insert(t.key, t.tw);
                keys.insert(t.tw, t.key);
            }
            counts.entry(g).or_insert((0, t.key.netns, t.owner)).0 += 1;
            if matches!(g, TwGroup::Destination(..))
                && let Some(b) = self.budget_of(ctx, &t.key)
            {
                self.tw_budget.insert(t.tw, b);
                *self.budgets.entry(b).or_default() += 1;
            }
        }
        self.note_budgets(ctx);
        self.unopened = unopened;
        self.tw_by_key = by_key;
        self.tw_keys = keys;
        let mut changed: Vec<(TwGroup, u64, u64)> = self
            .time_wait
            .iter()
            .map(|(g, n)| (g, n, counts.get(&g).map_or(0, |c| c.0)))
            .filter(|(_, old, new)| old != new)
            .collect();
        changed.extend(
            counts
                .iter()
                .filter(|(g, _)| self.time_wait.get(g) == 0)
                .map(|(&g, c)| (g, 0, c.0)),
        );
        for (g, old, new) in changed {
            self.time_wait.set(g, new);
            if self.holders.is_none() {
                continue;
            }
            let (_, netns, owner) = counts.get(&g).copied().unwrap_or((0, 0, None));
            let ports = match g {
                TwGroup::Destination(..) => self.ports_of(ctx, netns),
                TwGroup::Service(..) => 0,
            };
            let listener = self.listener_of(g);
            if let Some(h) = &mut self.holders
                && let Some(holder) = h.tw(g).slot(g, old == 0)
            {
                if new > holder.ep.peak {
                    holder.ports_at_peak = ports;
                }
                holder.ep.set(new, now);
                holder.begun += new.saturating_sub(old);
                if listener.is_some() {
                    holder.listener = listener;
                }
                if new > old {
                    note_owner(holder, owner);
                }
            }
        }
        self.evictions = table.counters.evictions;
        self.stale = false;
    }

    /// The namespaces' facts changed: port budgets are read again.
    pub fn facts_changed(&mut self) {
        self.ports.clear();
        self.sysctls.clear();
    }

    /// The budget a destination socket from `key` counts in: none when its
    /// local port is not one connect() picks.
    fn budget_of(&mut self, ctx: &Ctx<'_>, key: &TupleKey) -> Option<BudgetKey> {
        let sys = self.sysctls.entry(key.netns).or_insert_with(|| {
            crate::stats::timewait::netns_sysctls(ctx.facts, key.netns, ctx.host_port_range)
        });
        sys.is_ephemeral(key.sport)
            .then_some((key.netns, key.saddr, key.daddr, key.dport))
    }

    /// One more TIME_WAIT in the budget of destination socket `id`: the
    /// budget, its count now and its ports.
    fn budget_add(
        &mut self,
        ctx: &Ctx<'_>,
        id: u64,
        key: &TupleKey,
    ) -> Option<(BudgetKey, u64, u32)> {
        let b = self.budget_of(ctx, key)?;
        self.tw_budget.insert(id, b);
        let n = self.budgets.entry(b).or_default();
        *n += 1;
        let n = *n;
        Some((b, n, self.ports_of(ctx, b.0)))
    }

    /// Every budget's count now, to its destination's holder (a window
    /// opening, a recount).
    fn note_budgets(&mut self, ctx: &Ctx<'_>) {
        if self.holders.is_none() {
            return;
        }
        let budgets: Vec<(BudgetKey, u64)> = self.budgets.iter().map(|(&b, &n)| (b, n)).collect();
        for (b, n) in budgets {
            let ports = self.ports_of(ctx, b.0);
            let g = TwGroup::Destination(b.2, b.3);
            if let Some(h) = &mut self.holders
                && let Some(holder) = h.tw(g).slot(g, false)
            {
                holder.note_budget(b, n, ports);
            }
        }
    }

    /// Socket `id` left its budget.
    fn budget_sub(&mut self, id: u64) {
        if let Some(b) = self.tw_budget.remove(&id)
            && let Some(n) = self.budgets.get_mut(&b)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.budgets.remove(&b);
            }
        }
    }

    fn sync_conn(&mut self, table: &ConnTable, id: u64, now: u64) {
        let want = conn_entry(table, id);
        let have = self.conns.get(&id).copied();
        match (have, want) {
            (None, None) => {}
            (Some(h), Some(w))
                if h.key == w.key
                    && h.held == w.held
                    && h.owner.map(|o| o.pid) == w.owner.map(|o| o.pid)
                    && h.cgroup == w.cgroup =>
            {
                self.conns.insert(id, w);
            }
            _ => {
                if let Some(h) = have {
                    self.remove_conn(id, h, now);
                }
                if let Some(w) = want {
                    self.add_conn(id, w, now);
                }
            }
        }
    }

    fn add_conn(&mut self, id: u64, e: ConnEntry, now: u64) {
        self.conns.insert(id, e);
        if id < SEEDED_IDS_BELOW {
            self.conn_by_key.insert(e.key, id);
        }
        match e.held {
            Held::Listen => {
                let l = self
                    .listeners
                    .entry((e.key.netns, e.key.sport))
                    .or_insert((0, None));
                l.0 += 1;
                if e.owner.is_some() {
                    l.1 = e.owner;
                }
            }
            Held::CloseWait => {
                let pid = e.owner.map(|o| o.pid);
                let n = self.close_wait.add(pid);
                let cgroup = e.cgroup;
                if let Some(o) = e.owner {
                    self.comms.insert(pid, o.comm);
                    if cgroup != 0 {
                        self.cgroups_of.insert(o.pid, cgroup);
                    }
                }
                let by_cgroup = (cgroup != 0).then(|| {
                    let c = self.close_wait_cgroups.entry(cgroup).or_default();
                    *c += 1;
                    *c
                });
                if let Some(h) = &mut self.holders {
                    if let Some(holder) = h.close_wait.slot(pid, n == 1) {
                        holder.ep.set(n, now);
                        if let Some(o) = e.owner {
                            holder.comm = Some(o.comm);
                            if cgroup != 0 {
                                holder.cgroup = cgroup;
                            }
                        }
                        count_peer(holder, &e);
                    }
                    if let Some(c) = by_cgroup
                        && let Some(holder) = h.close_wait_cgroups.slot(cgroup, c == 1)
                    {
                        holder.ep.set(c, now);
                        holder.cgroup = cgroup;
                        if let Some(o) = e.owner {
                            holder.comm = Some(o.comm);
                        }
                        count_peer(holder, &e);
                    }
                }
            }
        }
    }

    fn remove_conn(&mut self, id: u64, e: ConnEntry, now: u64) {
        self.conns.remove(&id);
        if id < SEEDED_IDS_BELOW && self.conn_by_key.get(&e.key) == Some(&id) {
            self.conn_by_key.remove(&e.key);
        }
        match e.held {
            Held::Listen => {
                let port = (e.key.netns, e.key.sport);
                if let Some(l) = self.listeners.get_mut(&port) {
                    l.0 = l.0.saturating_sub(1);
                    if l.0 == 0 {
                        self.listeners.remove(&port);
                    }
                }
            }
            Held::CloseWait => {
                let pid = e.owner.map(|o| o.pid);
                let n = self.close_wait.sub(pid);
                if n == 0 {
                    self.comms.remove(&pid);
                    if let Some(pid) = pid {
                        self.cgroups_of.remove(&pid);
                    }
                }
                let cgroup = e.cgroup;
                let by_cgroup = match self.close_wait_cgroups.get_mut(&cgroup) {
                    Some(c) if cgroup != 0 => {
                        *c = c.saturating_sub(1);
                        let left = *c;
                        if left == 0 {
                            self.close_wait_cgroups.remove(&cgroup);
                        }
                        Some(left)
                    }
                    _ => None,
                };
                if let Some(h) = &mut self.holders {
                    if let Some(holder) = h.close_wait.slot(pid, false) {
                        note_age(holder, &e, now);
                        holder.ep.set(n, now);
                    }
                    if let Some(c) = by_cgroup
                        && let Some(holder) = h.close_wait_cgroups.slot(cgroup, false)
                    {
                        note_age(holder, &e, now);
                        holder.ep.set(c, now);
                    }
                }
            }
        }
    }

    /// The group of a socket whose opening side was not seen: a service
    /// when a listener has its port.
    fn by_listeners(&self, t: &TwConn, ctx: &Ctx<'_>) -> TwGroup {
        let sys =
            crate::stats::timewait::netns_sysctls(ctx.facts, t.key.netns, ctx.host_port_range);
        let listening = self.listeners.contains_key(&(t.key.netns, t.key.sport));
        group(
            crate::stats::timewait::side_of(None, &t.key, listening, &sys),
            t,
        )
    }

    /// The group timewait socket `id` is counted in now (if in TIME_WAIT).
    fn counted(&self, table: &ConnTable, id: u64) -> Option<TwGroup> {
        let t = table.timewait(id)?;
        if t.substate != TcpState::TimeWait {
            return None;
        }
        stable_group(t).or_else(|| self.unopened.get(&id).copied())
    }

    /// Brings timewait socket `id` in step: `was` is the group it was
    /// counted in (None: not counted).
    fn sync_tw(
        &mut self,
        table: &ConnTable,
        ctx: &Ctx<'_>,
        id: u64,
        was: Option<TwGroup>,
        now: u64,
    ) {
        let t = table
            .timewait(id)
            .filter(|t| t.substate == TcpState::TimeWait);
        let is = t.map(|t| {
            stable_group(t)
                .or_else(|| was.filter(|_| self.unopened.contains_key(&id)))
                .unwrap_or_else(|| self.by_listeners(t, ctx))
        });
        if was == is {
            return;
        }
        if let Some(g) = was {
            self.tw_gone(id, g, now);
        }
        if let (Some(t), Some(g)) = (t, is) {
            let (key, owner, netns, opened) = (t.key, t.owner, t.key.netns, t.opened);
            self.tw_new(id, key, g, opened.is_none(), owner, netns, ctx, now);
        }
    }

    fn ports_of(&mut self, ctx: &Ctx<'_>, netns: u32) -> u32 {
        *self.ports.entry(netns).or_insert_with(|| {
            ctx.facts.of(netns).map_or_else(
                || {
                    Sysctls {
                        port_range: ctx.host_port_range,
                        ..Sysctls::default()
                    }
                    .usable_ports()
                },
                |f| f.sysctls.usable_ports(),
            )
        })
    }

    fn listener_of(&self, g: TwGroup) -> Option<Owner> {
        match g {
            TwGroup::Service(netns, _, port) => {
                self.listeners.get(&(netns, port)).and_then(|l| l.1)
            }
            TwGroup::Destination(..) => None,
        }
    }

    /// A socket entered TIME_WAIT in group `g`.
    #[allow(clippy::too_many_arguments)]
    fn tw_new(
        &mut self,
        id: u64,
        key: TupleKey,
        g: TwGroup,
        unopened: bool,
        owner: Option<Owner>,
        netns: u32,
        ctx: &Ctx<'_>,
        now: u64,
    ) {
        if unopened {
            self.unopened.insert(id, g);
        }
        if id < SEEDED_IDS_BELOW {
            self.tw_by_key.insert(key, id);
            self.tw_keys.insert(id, key);
        }
        let n = self.time_wait.add(g);
        let budget = match g {
            TwGroup::Destination(..) => self.budget_add(ctx, id, &key),
            TwGroup::Service(..) => None,
        };
        if self.holders.is_none() {
            return;
        }
        let ports = match g {
            TwGroup::Destination(..) => self.ports_of(ctx, netns),
            TwGroup::Service(..) => 0,
        };
        let listener = self.listener_of(g);
        let Some(h) = &mut self.holders else { return };
        if let Some(holder) = h.tw(g).slot(g, n == 1) {
            if n > holder.ep.peak {
                holder.ports_at_peak = ports;
            }
            holder.ep.set(n, now);
            holder.begun += 1;
            note_owner(holder, owner);
            if let Some((b, count, ports)) = budget {
                holder.note_budget(b, count, ports);
            }
            if listener.is_some() {
                holder.listener = listener;
            }
        }
    }

    /// A socket counted in group `g` left TIME_WAIT.
    fn tw_gone(&mut self, id: u64, g: TwGroup, now: u64) {
        // (Both are empty in a flood of linked timewait sockets: no hashing.)
        if !self.unopened.is_empty() {
            self.unopened.remove(&id);
        }
        if !self.tw_budget.is_empty() {
            self.budget_sub(id);
        }
        if !self.tw_keys.is_empty()
            && let Some(key) = self.tw_keys.remove(&id)
            && self.tw_by_key.get(&key) == Some(&id)
        {
            self.tw_by_key.remove(&key);
        }
        let n = self.time_wait.sub(g);
        if let Some(h) = &mut self.holders
            && let Some(holder) = h.tw(g).slot(g, false)
        {
            holder.ep.set(n, now);
        }
    }

    /// Opens a window at `now`: whatever is held then starts its holders.
    pub fn open(&mut self, table: &ConnTable, ctx: &Ctx<'_>, now: u64) {
        let mut h = Holders::default();
        for (pid, n) in self.close_wait.iter() {
            if let Some(holder) = h.close_wait.slot(pid, true) {
                holder.ep.set(n, now);
                holder.comm = self.comms.get(&pid).copied();
                holder.cgroup = pid
                    .and_then(|p| self.cgroups_of.get(&p).copied())
                    .unwrap_or(0);
            }
        }
        for (&cgroup, &n) in &self.close_wait_cgroups {
            if let Some(holder) = h.close_wait_cgroups.slot(cgroup, true) {
                holder.ep.set(n, now);
                holder.cgroup = cgroup;
            }
        }
        for e in self.conns.values() {
            if e.held != Held::CloseWait {
                continue;
            }
            if let Some(holder) = h.close_wait.slot(e.owner.map(|o| o.pid), false) {
                count_peer(holder, e);
            }
            if e.cgroup != 0
                && let Some(holder) = h.close_wait_cgroups.slot(e.cgroup, false)
            {
                if let Some(o) = e.owner {
                    holder.comm = Some(o.comm);
                }
                count_peer(holder, e);
            }
        }
        let groups: Vec<(TwGroup, u64)> = self.time_wait.iter().collect();
        for (g, n) in groups {
            if let Some(holder) = h.tw(g).slot(g, true) {
                holder.ep.set(n, now);
                if let TwGroup::Service(netns, _, port) = g {
                    holder.listener = self.listeners.get(&(netns, port)).and_then(|l| l.1);
                }
            }
        }
        for t in table.timewaits() {
            let Some(g) = self.counted(table, t.tw) else {
                continue;
            };
            let ports = match g {
                TwGroup::Destination(..) => self.ports_of(ctx, t.key.netns),
                TwGroup::Service(..) => 0,
            };
            if let Some(holder) = h.tw(g).slot(g, false) {
                note_owner(holder, t.owner);
                holder.ports_at_peak = holder.ports_at_peak.max(ports);
            }
        }
        self.holders = Some(h);
        self.note_budgets(ctx);
    }

    /// Closes the window at `now`: ages of the sockets still held, and
    /// every holder's time held up to now.
    pub fn close(&mut self, now: u64) -> Option<Holders> {
        let mut h = self.holders.take()?;
        for e in self.conns.values() {
            if e.held != Held::CloseWait {
                continue;
            }
            if let Some(holder) = h.close_wait.slot(e.owner.map(|o| o.pid), false) {
                note_age(holder, e, now);
            }
            if e.cgroup != 0
                && let Some(holder) = h.close_wait_cgroups.slot(e.cgroup, false)
            {
                note_age(holder, e, now);
            }
        }
        for holder in h
            .close_wait
            .map
            .values_mut()
            .chain(h.close_wait_cgroups.map.values_mut())
        {
            holder.ep.close(now);
        }
        for holder in h
            .destinations
            .map
            .values_mut()
            .chain(h.services.map.values_mut())
        {
            holder.ep.close(now);
        }
        Some(h)
    }

    /// Ranks the counts changed since the last ranking (before a timeline
    /// point reads the largest).
    pub fn rank(&mut self) {
        self.close_wait.rank();
        self.time_wait.rank();
    }

    /// CLOSE_WAIT counts per known process, for the growth rates.
    pub fn close_wait_by_pid(&self) -> std::collections::HashMap<u32, u64> {
        self.close_wait
            .iter()
            .filter_map(|(pid, n)| Some((pid?, n)))
            .collect()
    }
}

/// The group of a TIME_WAIT socket opened by `opened`.
fn group(opened: Opened, t: &TwConn) -> TwGroup {
    match opened {
        Opened::Accepted => TwGroup::Service(t.key.netns, t.key.saddr, t.key.sport),
        Opened::Connected => TwGroup::Destination(t.key.daddr, t.key.dport),
    }
}

/// The group, when the socket says who opened its connection.
fn stable_group(t: &TwConn) -> Option<TwGroup> {
    t.opened.map(|o| group(o, t))
}

fn count_peer(holder: &mut CwHolder, e: &ConnEntry) {
    let peer = SocketAddr::new(e.key.daddr, e.key.dport);
    if holder.peers.len() < MAX_PEERS || holder.peers.contains_key(&peer) {
        *holder.peers.entry(peer).or_default() += 1;
    }
}

fn note_age(holder: &mut CwHolder, e: &ConnEntry, now: u64) {
    let age = now.saturating_sub(e.since_ns);
    if age >= holder.oldest_ns {
        holder.oldest_ns = age;
        holder.oldest_lower_bound = !e.exact;
    }
}

fn note_owner(holder: &mut TwHolder, owner: Option<Owner>) {
    if let Some(o) = owner
        && (holder.owners.len() < MAX_OWNERS || holder.owners.contains_key(&o.pid))
    {
        let slot = holder.owners.entry(o.pid).or_insert((0, o.comm, 0));
        slot.0 += 1;
        if o.cgroup != 0 {
            slot.2 = o.cgroup;
        }
    }
}
