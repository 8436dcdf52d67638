//! One entry per socket lifecycle (keyed by socket address; a reused address
//! starts a new lifecycle) and one per timewait socket. Finished lifecycles are
//! handed back as [`Finished`] for the aggregates and dropped, so the table
//! only holds what is live. Sockets that existed before tracing started come
//! from sock_diag snapshots and are joined to events by (netns, 4-tuple).

use std::{collections::HashMap, net::IpAddr, num::NonZeroU64};

use rustc_hash::FxHashMap;

use super::{
    live::{Held, Live, Moved, Profile},
    slab::{IdSlab, Identified, Slot},
};
use crate::{
    model::{Event, EventKind, Family, Owner, Reuser, SeenSocket, TcpState, TwEndReason},
    stacks::StackKey,
};

/// Nominal TIME_WAIT length (`TCP_TIMEWAIT_LEN`): 60 s.
pub const TIMEWAIT_LEN_MS: u64 = 60_000;

/// A connection's 4-tuple plus its network namespace: the join key between
/// kernel events and sock_diag snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub netns: u32,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl TupleKey {
    /// The address family (from the addresses: no field to keep in step).
    pub fn family(&self) -> Family {
        match self.saddr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of_event(e: &Event) -> Self {
        Self {
            netns: e.netns.unwrap_or(0),
            saddr: e.saddr,
            daddr: e.daddr,
            sport: e.sport,
            dport: e.dport,
        }
    }

    pub fn of_seen(s: &SeenSocket) -> Self {
        Self {
            netns: s.netns.unwrap_or(0),
            saddr: s.saddr,
            daddr: s.daddr,
            sport: s.sport,
            dport: s.dport,
        }
    }
}

/// Which side closed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Closer {
    /// This socket sent the first FIN (close() before the peer): gets TIME_WAIT.
    Active,
    /// The peer closed first: this socket went through CLOSE_WAIT.
    Passive,
    /// Both at once (FIN_WAIT1 -> CLOSING).
    Simultaneous,
}

/// Which side opened a connection: what tells a server's TIME_WAIT (on
/// connections it accepted, grouped by the service) from a client's (on
/// connections it opened, grouped by destination, using ephemeral ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opened {
    /// A listener here accepted it (LISTEN -> SYN_RECV).
    Accepted,
    /// connect() here opened it (CLOSE -> SYN_SENT).
    Connected,
}

impl Opened {
    /// From the first transition seen of a socket, when it tells.
    fn of_event(e: &Event) -> Option<Self> {
        match (e.old, e.new) {
            (Some(TcpState::Close), TcpState::SynSent) | (Some(TcpState::SynSent), _) => {
                Some(Self::Connected)
            }
            (Some(TcpState::Listen), TcpState::SynRecv) | (Some(TcpState::SynRecv), _) => {
                Some(Self::Accepted)
            }
            _ if e.owner.is_some_and(|o| o.from_listener) => Some(Self::Accepted),
            _ => None,
        }
    }
}

/// How a lifecycle ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// Orderly close (LAST_ACK -> CLOSE, or handed to a timewait socket).
    Normal,
    /// Handed over to a timewait socket (FIN_WAIT2/CLOSING -> TIME_WAIT).
    TimeWait,
    /// Reset or aborted from an open state (-> CLOSE without the FIN dance).
    Reset,
    /// SYN_SENT -> CLOSE quickly: refused (RST).
    Refused,
    /// SYN_SENT -> CLOSE after retrying: connect timed out.
    Timeout,
    /// SYN_SENT -> CLOSE with no local port: connect() found no free
    /// ephemeral port for the destination and failed with EADDRNOTAVAIL
    /// (`tcp_v4_connect` enters SYN_SENT before choosing the port, and
    /// leaves it at once when none is free; a refused connect has a port).
    NoPort,
    /// A listening socket closed.
    ListenerClosed,
    /// A timewait socket's timer expired.
    TimeWaitExpired,
    /// A timewait socket killed early for none of the reasons below (an RST,
    /// a SYN it answered).
    TimeWaitKilled,
    /// A timewait socket whose 4-tuple a connect() took over (`tcp_tw_reuse`).
    TimeWaitReused,
    /// A timewait socket purged with its network namespace.
    TimeWaitPurged,
    /// A full socket that should have become a timewait socket (FIN_WAIT2 or
    /// CLOSING -> CLOSE) and got none: `tcp_max_tw_buckets` reached (the
    /// kernel's TCPTimeWaitOverflow).
    TimeWaitOverflow,
    /// Dropped by the table: evicted at the cap, or found gone by reconciliation.
    Dropped,
}

/// SYN_SENT lasting at least this long before CLOSE counts as a timeout
/// (the first SYN retransmission is at 1 s).
const CONNECT_TIMEOUT_NS: u64 = 900_000_000;

/// `Conn::flags` bits.
pub mod conn_flags {
    /// Existed before tracing started: `born_ns` and `state_since_ns` are lower bounds.
    pub const SEEDED: u8 = 1 << 0;
    /// First seen mid-life by an event (owner-map miss): times are lower bounds.
    pub const MIDLIFE: u8 = 1 << 1;
    /// `state_since_ns` is exact.
    pub const STATE_EXACT: u8 = 1 << 2;
    /// A timewait socket took over from this socket (its -> CLOSE is the hand-over).
    pub const TO_TIMEWAIT: u8 = 1 << 3;
}

/// A live full socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub sk: u64,
    pub key: TupleKey,
    pub owner: Option<Owner>,
    pub state: TcpState,
    /// Start of the lifecycle (lower bound when SEEDED/MIDLIFE).
    pub born_ns: u64,
    /// When the current state was entered (exact only with STATE_EXACT).
    pub state_since_ns: u64,
    pub closer: Option<Closer>,
    /// Accepted here or opened by connect(); `None` when not seen (sockets
    /// from before tracing): [`crate::stats`] then asks the listeners.
    pub opened: Option<Opened>,
    pub flags: u8,
}

impl Conn {
    pub fn age_is_lower_bound(&self) -> bool {
        self.flags & (conn_flags::SEEDED | conn_flags::MIDLIFE) != 0
    }

    pub fn state_age_is_lower_bound(&self) -> bool {
        self.flags & conn_flags::STATE_EXACT == 0
    }

    fn enter(&mut self, state: TcpState, ts: u64) {
        // Events of one socket can arrive a few µs out of order across CPUs:
        // time never runs backwards within a lifecycle.
        let ts = ts.max(self.state_since_ns).max(self.born_ns);
        self.state = state;
        self.state_since_ns = ts;
    }
}

impl Identified for Conn {
    fn id(&self) -> u64 {
        self.sk
    }
}

impl Identified for TwConn {
    fn id(&self) -> u64 {
        self.tw
    }
}

/// A live timewait socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwConn {
    pub tw: u64,
    pub key: TupleKey,
    pub owner: Option<Owner>,
    /// TIME_WAIT or FIN_WAIT2 (orphan).
    pub substate: TcpState,
    pub start_ns: u64,
    /// `start_ns` derived from a snapshot's timer rather than seen.
    pub start_estimated: bool,
    /// The full socket it replaced, when linked.
    pub from_sk: Option<NonZeroU64>,
    /// Who closed first, from the linked full socket (Active, or
    /// Simultaneous after FIN_WAIT1 -> CLOSING); unknown when unlinked.
    pub closer: Option<Closer>,
    /// From the linked full socket; unknown when unlinked.
    pub opened: Option<Opened>,
}

/// A lifecycle or timewait socket that ended: what the aggregates consume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    Conn {
        conn: Conn,
        end_ns: u64,
        reason: EndReason,
    },
    Tw {
        tw: TwConn,
        end_ns: u64,
        reason: EndReason,
        /// Time spent as a timewait socket, when known.
        duration_ns: Option<u64>,
        /// [`EndReason::TimeWaitReused`]: the process whose connect() took the
        /// 4-tuple over (the connecting socket's owner when the table has
        /// it, else the pid and name the event carried).
        reused_by: Option<Owner>,
    },
}

/// Time spent in a state that was just left: what the histograms consume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateDuration {
    pub state: TcpState,
    /// Set for SYN_SENT/SYN_RECV -> ESTABLISHED.
    pub handshake: bool,
    pub ns: u64,
    pub owner: Option<Owner>,
    pub peer: (IpAddr, u16),
}

/// What applying one event produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub duration: Option<StateDuration>,
    pub finished: Vec<Finished>,
}

/// Table counters, for "lost"/health reporting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounters {
    /// Entries dropped because the table was at its cap.
    pub evictions: u64,
    /// Reconciliation fixes: ghosts removed, missing sockets added, states corrected.
    pub corrections: u64,
    /// Events for sockets never seen before (started before tracing, or missed).
    pub unknown_sockets: u64,
    /// Timewait sockets found in TIME_WAIT by reconciliation while the table
    /// had them in FIN_WAIT2: the kernel re-armed their timer within the same
    /// timer-wheel bucket, which emits no tracepoint. Expected, not a loss.
    /// Found either by the live source's check of timewait sockets (a
    /// `TwSubstate` event, within about a second) or, for those it does not
    /// follow (seeded, or beyond its cap), by a snapshot reconciliation.
    pub silent_rearms: u64,
    /// Sockets whose owner only reconciliation found (`/proc/*/fd`).
    pub owners_found: u64,
}

pub struct ConnTable {
    conns: IdSlab<Held<Conn>>,
    tws: IdSlab<Held<TwConn>>,
    /// What the entries add up to, kept as they change.
    live: Live,
    /// Whether `live` is kept (else rebuilt when asked for: `report`).
    counting: bool,
    /// Entries inserted since the counts were last read, not counted yet:
    /// one that ends before then is never counted at all.
    pending_conns: Pending,
    pending_tws: Pending,
    /// Per slab chunk, no entry in it began before this (`born_ns` of full
    /// sockets, `start_ns` of timewait sockets; not raised when entries
    /// go): what lets `top` list the oldest sockets without reading all.
    conn_floors: Vec<u64>,
    tw_floors: Vec<u64>,
    /// The last event's full socket: its address, its state before and
    /// after (`None`: not in the table), when the event applied whole.
    touched: Option<(u64, Option<TcpState>, Option<TcpState>)>,
    /// The last timewait event's socket as it was before (`None` inside:
    /// not in the table), when asked for ([`Self::keep_timewait_before`]).
    tw_before: Option<(u64, Option<TwConn>)>,
    keep_tw_before: bool,
    /// Seeded entries not yet bound to a kernel address, by tuple: their key in
    /// `conns`/`tws` is synthetic (below [`SYNTHETIC_LIMIT`]).
    seeded: FxHashMap<TupleKey, u64>,
    /// Which tuples may be in `seeded` (checked before hashing into it).
    maybe_seeded: MaybeSeeded,
    next_synthetic: u64,
    /// The sock_diag cgroup id of seeded full sockets whose owner no
    /// /proc walk found (orphans, processes out of sight, gone), by the
    /// entry's id: the cgroup their workload is counted under
    /// ([`Self::cgroup_of`]). Only such sockets have an entry, so a table
    /// that seeded none pays nothing; it follows the entry when an event
    /// adopts it and goes with it.
    seen_cgroups: FxHashMap<u64, u64>,
    /// The user stack each full socket's owner opened it with
    /// (`--stacks`), by the entry's id. Only sockets with a stack have an
    /// entry, so a table with no stacks pays nothing; it follows the
    /// entry's id and goes with it. Set where a lifecycle starts, where the
    /// entry is made, and when the owner changes (an accept re-captures
    /// the owner, and its stack with it). Timewait sockets keep none (v1).
    stacks: FxHashMap<u64, StackKey>,
    cap: usize,
    pub counters: TableCounters,
}

/// A slab chunk of full sockets or of timewait sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    Full(usize),
    TimeWait(usize),
}

/// The owner of a seeded socket: the process a /proc walk found holding
/// it, in the cgroup sock_diag reported for the socket (the kernel's
/// `INET_DIAG_CGROUP_ID`: where the socket was created, which a recording
/// keeps and a report can name after the process is gone); 0 when none was
/// reported, and the process's `/proc/PID/cgroup` names it then.
fn seen_owner(o: crate::model::SeenOwner, cgroup: Option<u64>) -> Owner {
    Owner {
        pid: o.pid,
        tid: o.pid,
        comm: o.comm,
        cgroup: cgroup.unwrap_or(0),
        from_listener: false,
    }
}

/// Lowers the floor of `slot`'s chunk to `t`.
fn lower_floor(floors: &mut Vec<u64>, slot: Slot, t: u64) {
    let i = slot as usize / super::slab::CHUNK;
    if floors.len() <= i {
        floors.resize(i + 1, u64::MAX);
    }
    floors[i] = floors[i].min(t);
}

/// How an entry changing in a transition is counted now.
enum Counted {
    /// In this state, with the owner and 4-tuple it still has.
    State(TcpState),
    /// As this profile (its owner or 4-tuple changes).
    Profile(Profile),
    /// Not yet: a new entry.
    Not,
}

/// Kernel addresses are far above this; synthetic keys of seeded sockets below.
const SYNTHETIC_LIMIT: u64 = 1 << 40;

/// Slots of new entries left uncounted beyond as many as the table holds,
/// at most.
const PENDING_ROOM: usize = 4096;

/// Which tuples may be among the seeded entries: one bit per hash of a
/// tuple, at least 16 bits per seeded entry (a clear bit is a sure miss, a
/// set one is checked in the map). A host seeded with many sockets (a
/// hundred thousand in TIME_WAIT, or other namespaces' load) otherwise pays
/// a probe of that large map, missing the cache, for every new tuple until
/// they end. Bits are cleared only when rebuilt (as the map grows).
#[derive(Debug, Default)]
struct MaybeSeeded {
    bits: Vec<u64>,
    /// Keys inserted since the bits were (re)built, and the map's size then.
    inserted: usize,
    built_for: usize,
}

impl MaybeSeeded {
    fn index(&self, key: &TupleKey) -> (usize, u64) {
        let addr = |a: IpAddr| match a {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => {
                let b = a.octets();
                u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
                    ^ u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
        };
        let mut h =
            (u64::from(key.netns) << 32) | (u64::from(key.sport) << 16) | u64::from(key.dport);
        h ^= addr(key.daddr).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= addr(key.saddr).rotate_left(29);
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 31;
        let bit = (h as usize) & (self.bits.len() * 64 - 1);
        (bit / 64, 1u64 << (bit % 64))
    }

    /// False only if `key` is surely not seeded.
    fn may_hold(&self, key: &TupleKey) -> bool {
        if self.bits.is_empty() {
            return false;
        }
        let (word, bit) = self.index(key);
        self.bits[word] & bit != 0
    }

    /// `key` was just inserted into `seeded`.
    fn insert(&mut self, key: &TupleKey, seeded: &FxHashMap<TupleKey, u64>) {
        self.inserted += 1;
        if (self.built_for + self.inserted) * 16 > self.bits.len() * 64 {
            let words = (seeded.len() * 32).next_power_of_two().max(4096) / 64;
            self.bits = vec![0; words];
            self.inserted = 0;
            self.built_for = seeded.len();
            for k in seeded.keys() {
                self.set(k);
            }
        } else {
            self.set(key);
        }
    }

    fn set(&mut self, key: &TupleKey) {
        let (word, bit) = self.index(key);
        self.bits[word] |= bit;
    }
}

/// The slots of entries inserted and not counted yet, each listed once:
/// slots are reused last-freed first, so a churn of short-lived sockets
/// inserts into the same few slots over and over (listing each insert
/// filled the list, and had every entry live then counted, after a few
/// thousand inserts).
#[derive(Debug, Default)]
struct Pending {
    slots: Vec<Slot>,
    /// One bit per slot: whether it is in `slots`.
    listed: Vec<u64>,
}

impl Pending {
    fn len(&self) -> usize {
        self.slots.len()
    }

    fn note(&mut self, slot: Slot) {
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        if self.listed.len() <= word {
            self.listed.resize(word + 1, 0);
        }
        if self.listed[word] & bit == 0 {
            self.listed[word] |= bit;
            self.slots.push(slot);
        }
    }

    /// The slots listed, none listed any more.
    fn take(&mut self) -> Vec<Slot> {
        for &slot in &self.slots {
            if let Some(w) = self.listed.get_mut(slot as usize / 64) {
                *w &= !(1u64 << (slot % 64));
            }
        }
        std::mem::take(&mut self.slots)
    }

    /// A list [`Self::take`] gave, once read: its room is reused.
    fn give_back(&mut self, mut slots: Vec<Slot>) {
        if self.slots.is_empty() {
            slots.clear();
            self.slots = slots;
        }
    }
}

pub const DEFAULT_CAP: usize = 1_000_000;

impl Default for ConnTable {
    fn default() -> Self {
        Self::new(DEFAULT_CAP)
    }
}

impl ConnTable {
    pub fn new(cap: usize) -> Self {
        Self {
            conns: IdSlab::default(),
            tws: IdSlab::default(),
            live: Live::default(),
            counting: true,
            pending_conns: Pending::default(),
            pending_tws: Pending::default(),
            conn_floors: Vec::new(),
            tw_floors: Vec::new(),
            touched: None,
            tw_before: None,
            keep_tw_before: false,
            seeded: FxHashMap::default(),
            maybe_seeded: MaybeSeeded::default(),
            next_synthetic: 1,
            seen_cgroups: FxHashMap::default(),
            stacks: FxHashMap::default(),
            cap: cap.max(1),
            counters: TableCounters::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len() + self.tws.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn conns(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values().map(|h| &h.v)
    }

    pub fn timewaits(&self) -> impl Iterator<Item = &TwConn> {
        self.tws.values().map(|h| &h.v)
    }

    pub fn conn(&self, sk: u64) -> Option<&Conn> {
        self.conns.get(sk).map(|h| &h.v)
    }

    pub fn timewait(&self, tw: u64) -> Option<&TwConn> {
        self.tws.get(tw).map(|h| &h.v)
    }

    fn note_tw_before(&mut self, tw: u64, slot: Option<Slot>) {
        if self.keep_tw_before {
            let before = slot.and_then(|s| self.tws.at(s)).map(|h| h.v.clone());
            self.tw_before = Some((tw, before));
        }
    }

    /// Keep the timewait socket each event changes as it was before
    /// ([`Self::timewait_before`]: what `report` follows).
    pub fn keep_timewait_before(&mut self, on: bool) {
        self.keep_tw_before = on;
    }

    /// Timewait socket `tw` as it was before the last event, if that event
    /// was about it (`Some(None)`: not in the table then).
    pub fn timewait_before(&self, tw: u64) -> Option<Option<&TwConn>> {
        self.tw_before
            .as_ref()
            .filter(|b| b.0 == tw)
            .map(|b| b.1.as_ref())
    }

    /// The state before and after the last event of full socket `sk`, if
    /// that event was about it and applied whole (`None` in a state: not
    /// in the table).
    pub fn touched(&self, sk: u64) -> Option<(Option<TcpState>, Option<TcpState>)> {
        self.touched
            .filter(|t| t.0 == sk)
            .map(|(_, before, after)| (before, after))
    }

    /// What the table holds, counted: the entries inserted since the last
    /// call are counted now (rebuilt from scratch when counting was off).
    pub fn counts(&mut self) -> &Live {
        if !self.counting {
            self.live = Live::default();
            let conns: Vec<Slot> = self.conns.slots().map(|(s, _)| s).collect();
            let tws: Vec<Slot> = self.tws.slots().map(|(s, _)| s).collect();
            for slot in conns {
                if let Some(h) = self.conns.at_mut(slot) {
                    h.links = Default::default();
                }
                self.recount_conn(slot, None);
            }
            for slot in tws {
                if let Some(h) = self.tws.at_mut(slot) {
                    h.links = Default::default();
                }
                self.recount_tw(slot, None);
            }
            self.counting = true;
        }
        self.count_pending();
        &self.live
    }

    /// The counts as of the last [`Self::counts`] (what a snapshot built
    /// right after it reads).
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Off: nothing is counted as events apply (what `report` wants: one
    /// summary at the end); [`Self::counts`] then counts everything once
    /// and keeps counting.
    pub fn set_counting(&mut self, on: bool) {
        if !on {
            self.counting = false;
            self.live = Live::default();
            self.pending_conns = Pending::default();
            self.pending_tws = Pending::default();
        }
    }

    fn count_pending(&mut self) {
        let conns = self.pending_conns.take();
        for &slot in &conns {
            if self.conns.at(slot).is_some_and(|h| !h.links.counted()) {
                self.recount_conn(slot, None);
            }
        }
        self.pending_conns.give_back(conns);
        let tws = self.pending_tws.take();
        for &slot in &tws {
            if self.tws.at(slot).is_some_and(|h| !h.links.counted()) {
                self.recount_tw(slot, None);
            }
        }
        self.pending_tws.give_back(tws);
    }

    /// Entry `slot` is new: counted at the next [`Self::counts`], or now
    /// when the list of those would hold more than the table and
    /// [`PENDING_ROOM`] (most ended). The list names each slot once, so
    /// that it outgrows the table only when the table shrank: counting
    /// early costs a count and a removal from the counts for every entry
    /// live then.
    fn note_new_conn(&mut self, slot: Slot) {
        if self.counting {
            self.pending_conns.note(slot);
            if self.pending_conns.len() > self.conns.len() + PENDING_ROOM {
                self.count_pending();
            }
        }
    }

    fn note_new_tw(&mut self, slot: Slot) {
        if self.counting {
            self.pending_tws.note(slot);
            if self.pending_tws.len() > self.tws.len() + PENDING_ROOM {
                self.count_pending();
            }
        }
    }

    /// Panics unless the kept counts equal counts built from scratch.
    #[cfg(test)]
    pub(crate) fn assert_counts_match(&mut self) {
        self.counts();
        self.live
            .assert_matches(self.conns.slots(), self.tws.slots());
    }

    /// The full socket in `slot` (as [`Live`]'s lists name them).
    pub fn conn_at(&self, slot: Slot) -> Option<&Conn> {
        self.conns.at(slot).map(|h| &h.v)
    }

    /// Counts full socket `slot`, which was counted as `before` (`None`:
    /// not counted yet), as it is now.
    fn recount_conn(&mut self, slot: Slot, before: Option<&Profile>) {
        let Some(h) = self.conns.at(slot) else { return };
        if before.is_some() && !h.links.counted() {
            return;
        }
        let after = Profile::of_conn(&h.v);
        if before == Some(&after) {
            return;
        }
        let mut links = h.links;
        let moved = self.live.change(slot, before, Some(&after), &mut links);
        self.relink(slot, links, moved);
    }

    /// Counts full socket `slot`, whose state alone changed (from `before`).
    fn restate_conn(&mut self, slot: Slot, before: TcpState) {
        let Some(h) = self.conns.at(slot).filter(|h| h.links.counted()) else {
            return;
        };
        let mut links = h.links;
        let moved = self.live.restate(slot, &h.v, before, &mut links);
        self.relink(slot, links, moved);
    }

    /// Takes full socket `slot`, counted as `counted`, out of the counts.
    fn uncount_conn(&mut self, slot: Slot, counted: &Profile) {
        let Some(h) = self.conns.at(slot).filter(|h| h.links.counted()) else {
            return;
        };
        let mut links = h.links;
        let moved = self.live.change(slot, Some(counted), None, &mut links);
        self.relink(slot, links, moved);
    }

    fn relink(&mut self, slot: Slot, links: super::live::Links, (cw, candidate): (Moved, Moved)) {
        if let Some(h) = self.conns.at_mut(slot) {
            h.links = links;
        }
        if let Some((s, pos)) = cw
            && let Some(h) = self.conns.at_mut(s)
        {
            h.links.set_cw(pos);
        }
        if let Some((s, pos)) = candidate
            && let Some(h) = self.conns.at_mut(s)
        {
            h.links.set_candidate(pos);
        }
    }

    fn recount_tw(&mut self, slot: Slot, before: Option<&Profile>) {
        let Some(h) = self.tws.at(slot) else { return };
        if before.is_some() && !h.links.counted() {
            return;
        }
        let after = Profile::of_tw(&h.v);
        if before == Some(&after) {
            return;
        }
        let mut links = h.links;
        // Timewait sockets are in no list: nothing moves.
        let _ = self.live.change(slot, before, Some(&after), &mut links);
        if let Some(h) = self.tws.at_mut(slot) {
            h.links = links;
        }
    }

    fn insert_conn(&mut self, conn: Conn) -> Slot {
        let slot = self.put_conn(conn);
        self.note_new_conn(slot);
        slot
    }

    /// Stores a new full socket (not counted yet).
    fn put_conn(&mut self, conn: Conn) -> Slot {
        let born = conn.born_ns;
        let slot = self.conns.insert_new(Held::new(conn));
        lower_floor(&mut self.conn_floors, slot, born);
        slot
    }

    fn insert_tw(&mut self, tw: TwConn) -> Slot {
        let start = tw.start_ns;
        let slot = self.tws.insert_new(Held::new(tw));
        lower_floor(&mut self.tw_floors, slot, start);
        self.note_new_tw(slot);
        slot
    }

    /// The table's slab chunks with the time none of their entries began
    /// before, lowest first: the oldest sockets are in the first chunks.
    pub fn chunks_by_floor(&self) -> Vec<(u64, Chunk)> {
        let conns = self.conn_floors.iter().enumerate();
        let tws = self.tw_floors.iter().enumerate();
        let mut v: Vec<(u64, Chunk)> = conns
            .map(|(i, &f)| (f, Chunk::Full(i)))
            .chain(tws.map(|(i, &f)| (f, Chunk::TimeWait(i))))
            .filter(|c| c.0 != u64::MAX)
            .collect();
        v.sort_unstable_by_key(|c| c.0);
        v
    }

    /// The full sockets of chunk `i`.
    pub fn chunk_conns(&self, i: usize) -> impl Iterator<Item = &Conn> {
        self.conns.chunk(i).map(|h| &h.v)
    }

    /// The timewait sockets of chunk `i`.
    pub fn chunk_timewaits(&self, i: usize) -> impl Iterator<Item = &TwConn> {
        self.tws.chunk(i).map(|h| &h.v)
    }

    /// Changes the timewait socket in `slot`, keeping the counts.
    fn change_tw(&mut self, slot: Slot, f: impl FnOnce(&mut TwConn)) {
        let Some(h) = self.tws.at_mut(slot) else {
            return;
        };
        let before = Profile::of_tw(&h.v);
        f(&mut h.v);
        self.recount_tw(slot, Some(&before));
    }

    /// Changes the full socket in `slot`, keeping the counts.
    fn change_conn(&mut self, slot: Slot, f: impl FnOnce(&mut Conn)) {
        let Some(h) = self.conns.at_mut(slot) else {
            return;
        };
        let before = Profile::of_conn(&h.v);
        f(&mut h.v);
        self.recount_conn(slot, Some(&before));
    }

    /// At the cap, evicts until there is room for one more socket: timewait sockets
    /// first (a flood of them is what fills the table, and they end by
    /// themselves within a minute), full sockets only when none is left, so a
    /// TIME_WAIT flood cannot push out the listeners and the CLOSE_WAIT pile
    /// an operator is looking for.
    fn make_room(&mut self, out: &mut Vec<Finished>, now: u64) {
        while self.len() >= self.cap {
            self.counters.evictions += 1;
            if let Some(slot) = self.tws.any_slot() {
                let tw = self.remove_tw_at(slot).expect("a live slot");
                out.push(Finished::Tw {
                    tw,
                    end_ns: now,
                    reason: EndReason::Dropped,
                    duration_ns: None,
                    reused_by: None,
                });
            } else if let Some(slot) = self.conns.any_slot() {
                let conn = self.remove_conn_at(slot).expect("a live slot");
                out.push(Finished::Conn {
                    conn,
                    end_ns: now,
                    reason: EndReason::Dropped,
                });
            } else {
                break;
            }
        }
    }

    fn remove_conn_at(&mut self, slot: Slot) -> Option<Conn> {
        let counted = Profile::of_conn(&self.conns.at(slot)?.v);
        self.uncount_conn(slot, &counted);
        self.take_conn(slot)
    }

    /// Takes the full socket in `slot` out, already uncounted.
    fn take_conn(&mut self, slot: Slot) -> Option<Conn> {
        let conn = self.conns.remove_at(slot)?.v;
        if conn.sk < SYNTHETIC_LIMIT && self.seeded.get(&conn.key) == Some(&conn.sk) {
            self.seeded.remove(&conn.key);
        }
        if !self.seen_cgroups.is_empty() {
            self.seen_cgroups.remove(&conn.sk);
        }
        if !self.stacks.is_empty() {
            self.stacks.remove(&conn.sk);
        }
        Some(conn)
    }

    /// The user stack a full socket was opened with (`--stacks`), with
    /// the pid it means something in; cheap when the table has none.
    pub fn stack_of(&self, c: &Conn) -> Option<StackKey> {
        if self.stacks.is_empty() {
            return None;
        }
        self.stacks.get(&c.sk).copied()
    }

    /// Live full sockets with a stack.
    pub fn sockets_with_stacks(&self) -> usize {
        self.stacks.len()
    }

    /// The cgroup id a full socket's workload is counted under (0:
    /// unknown): its owner's, else, for a socket seeded with no owner
    /// found, the one sock_diag reported for the socket itself.
    pub fn cgroup_of(&self, c: &Conn) -> u64 {
        match c.owner {
            Some(o) => o.cgroup,
            None if self.seen_cgroups.is_empty() => 0,
            None => self.seen_cgroups.get(&c.sk).copied().unwrap_or(0),
        }
    }

    /// Full sockets seeded with no owner but with a sock_diag cgroup.
    pub fn seeded_cgroups(&self) -> usize {
        self.seen_cgroups.len()
    }

    fn remove_conn(&mut self, sk: u64) -> Option<Conn> {
        let slot = self.conns.slot(sk)?;
        self.remove_conn_at(slot)
    }

    fn remove_tw_at(&mut self, slot: Slot) -> Option<TwConn> {
        let h = self.tws.at(slot)?;
        let (counted, mut links) = (Profile::of_tw(&h.v), h.links);
        if links.counted() {
            let _ = self.live.change(slot, Some(&counted), None, &mut links);
        }
        let t = self.tws.remove_at(slot)?.v;
        if t.tw < SYNTHETIC_LIMIT && self.seeded.get(&t.key) == Some(&t.tw) {
            self.seeded.remove(&t.key);
        }
        Some(t)
    }

    fn remove_tw(&mut self, tw: u64) -> Option<TwConn> {
        let slot = self.tws.slot(tw)?;
        self.remove_tw_at(slot)
    }

    /// Takes a seeded entry for this tuple out of the table, if any, with
    /// its sock_diag cgroup when it has no owner.
    fn adopt_seeded_conn(&mut self, key: &TupleKey) -> Option<(Conn, Option<u64>)> {
        if !self.maybe_seeded.may_hold(key) {
            return None;
        }
        let synthetic = *self.seeded.get(key)?;
        let cgroup = self.seen_cgroups.get(&synthetic).copied();
        Some((self.remove_conn(synthetic)?, cgroup))
    }

    fn adopt_seeded_tw(&mut self, key: &TupleKey) -> Option<TwConn> {
        if !self.maybe_seeded.may_hold(key) {
            return None;
        }
        self.remove_tw(*self.seeded.get(key)?)
    }

    /// A socket the snapshot found and an event also reports (it started
    /// after the tracer attached but before the snapshot): keep the event's.
    fn drop_seeded_duplicate(&mut self, key: &TupleKey) {
        // Runs for every new tuple: skip the hash once no seeded entry is
        // left, or when this tuple cannot be one.
        if self.seeded.is_empty() || !self.maybe_seeded.may_hold(key) {
            return;
        }
        if let Some(synthetic) = self.seeded.remove(key) {
            self.remove_conn(synthetic);
            self.remove_tw(synthetic);
        }
    }

    /// Applies one kernel event.
    pub fn apply(&mut self, e: &Event) -> Applied {
        let mut finished = Vec::new();
        let duration = self.apply_into(e, &mut finished);
        Applied { duration, finished }
    }

    /// Applies one kernel event: the lifecycles it ended are pushed to
    /// `finished` (a buffer the caller reuses: nothing is allocated per
    /// event), the time spent in the state it left is returned.
    pub fn apply_into(&mut self, e: &Event, finished: &mut Vec<Finished>) -> Option<StateDuration> {
        self.touched = None;
        self.tw_before = None;
        match e.kind {
            EventKind::Transition => return self.transition(e, finished),
            EventKind::TwBegin => self.tw_begin(e, finished),
            EventKind::TwRearm => {
                let slot = self.tws.slot(e.sk);
                self.note_tw_before(e.sk, slot);
                if let Some(slot) = slot {
                    self.change_tw(slot, |t| t.substate = e.new);
                }
            }
            EventKind::TwEnd => self.tw_end(e, finished),
            EventKind::TwSubstate => {
                // The live source found it by asking the kernel: the silent
                // re-arm a snapshot reconciliation would find, found sooner
                // (counted the same way, once: the entry is TIME_WAIT now).
                // Not an error, and nothing for an unknown socket.
                let slot = self.tws.slot(e.sk);
                self.note_tw_before(e.sk, slot);
                if let Some(slot) = slot
                    && self.tws.at(slot).is_some_and(|t| t.v.substate != e.new)
                {
                    self.change_tw(slot, |t| t.substate = e.new);
                    self.counters.silent_rearms += 1;
                }
            }
            // No socket's event (drops are decoded apart).
            EventKind::Lost | EventKind::Drop => {}
            EventKind::Accept => {
                let slot = self.conns.slot(e.sk);
                if let Some(slot) = slot
                    && e.owner.is_some()
                {
                    self.change_conn(slot, |c| c.owner = e.owner);
                    // The acceptor's stack (captured at accept) replaces
                    // the listener's; none known: the listener's goes.
                    match StackKey::of_event(e) {
                        Some(key) => {
                            self.stacks.insert(e.sk, key);
                        }
                        None if !self.stacks.is_empty() => {
                            self.stacks.remove(&e.sk);
                        }
                        None => {}
                    }
                }
                let state = slot.and_then(|s| self.conn_at(s)).map(|c| c.state);
                self.touched = Some((e.sk, state, state));
            }
        }
        None
    }

    fn new_conn(e: &Event, flags: u8) -> Conn {
        Conn {
            sk: e.sk,
            key: TupleKey::of_event(e),
            owner: e.owner,
            state: e.old.unwrap_or(e.new),
            born_ns: e.ts_ns,
            state_since_ns: e.ts_ns,
            closer: None,
            opened: Opened::of_event(e),
            flags,
        }
    }

    /// A transition: one index lookup finds the socket's slot, every later
    /// step works on the slot.
    fn transition(&mut self, e: &Event, out: &mut Vec<Finished>) -> Option<StateDuration> {
        let old = e.old?;
        let starts =
            old == TcpState::Close || (old == TcpState::Listen && e.new == TcpState::SynRecv);
        let mut found = self.conns.slot(e.sk);
        let was = found.and_then(|s| self.conn_at(s)).map(|c| c.state);
        if starts && let Some(stale) = found.and_then(|s| self.remove_conn_at(s)) {
            // The previous lifecycle on this address ended unseen.
            out.push(Finished::Conn {
                conn: stale,
                end_ns: e.ts_ns,
                reason: EndReason::Dropped,
            });
            found = None;
        }
        // The common case (a known socket) is updated in place, not removed
        // and re-inserted. Later events know more: ports are 0 at
        // CLOSE -> SYN_SENT, so the tuple is refreshed.
        let key = TupleKey::of_event(e);
        // How the entry is counted now: the state it was in (the common
        // case: only that changes), or all of it when the tuple or owner
        // changes too; nothing for a new entry (counted once changed).
        let (mut slot, new_tuple, mut counted) =
            match found.and_then(|s| Some((s, &mut self.conns.at_mut(s)?.v))) {
                Some((s, c)) if c.key == key => (s, false, Counted::State(c.state)),
                Some((s, c)) => {
                    let counted = Profile::of_conn(c);
                    c.key = key;
                    (s, true, Counted::Profile(counted))
                }
                None => {
                    let conn = if starts {
                        self.make_room(out, e.ts_ns);
                        let mut c = Self::new_conn(e, conn_flags::STATE_EXACT);
                        c.state = old;
                        c
                    } else {
                        self.counters.unknown_sockets += 1;
                        self.make_room(out, e.ts_ns);
                        match self.adopt_seeded_conn(&key) {
                            Some((mut c, seen_cgroup)) => {
                                if let Some(cg) = seen_cgroup {
                                    self.seen_cgroups.insert(e.sk, cg);
                                }
                                c.sk = e.sk;
                                c
                            }
                            None => {
                                let mut c = Self::new_conn(e, conn_flags::MIDLIFE);
                                // The kernel knows how long the old state lasted
                                // even when we never saw it start.
                                if let Some(p) = e.prev_ns {
                                    c.born_ns = e.ts_ns.saturating_sub(p);
                                    c.state_since_ns = c.born_ns;
                                    c.flags |= conn_flags::STATE_EXACT;
                                }
                                c
                            }
                        }
                    };
                    (self.put_conn(conn), true, Counted::Not)
                }
            };
        // Only a tuple seen for the first time can duplicate a seeded socket.
        if new_tuple && !self.seeded.is_empty() {
            self.drop_seeded_duplicate(&key);
            // That removed another entry: this one's slot stands, unless
            // the duplicate was this very id.
            slot = self.conns.slot(e.sk)?;
        }
        let created = matches!(counted, Counted::Not);
        let conn = &mut self.conns.at_mut(slot)?.v;
        let owner_changed = e.owner.is_some() && e.owner != conn.owner;
        if owner_changed {
            if let Counted::State(_) = counted {
                counted = Counted::Profile(Profile::of_conn(conn));
            }
            conn.owner = e.owner;
        }
        // A stack comes with an owner's capture: where a lifecycle starts,
        // on a new entry, or with a new owner (an accept). No work for
        // events without one, unless their owner is new: the old owner's
        // stack does not name the new owner's code.
        if e.stack.is_some() && (starts || created || owner_changed) {
            if let Some(key) = StackKey::of_event(e) {
                self.stacks.insert(e.sk, key);
            }
        } else if owner_changed && !self.stacks.is_empty() {
            self.stacks.remove(&e.sk);
        }
        let conn = &mut self.conns.at_mut(slot)?.v;

        let exact = e.prev_ns.or_else(|| {
            (conn.flags & conn_flags::STATE_EXACT != 0)
                .then(|| e.ts_ns.saturating_sub(conn.state_since_ns))
        });
        let duration = match exact {
            Some(ns) if !starts => Some(StateDuration {
                state: old,
                handshake: e.new == TcpState::Established
                    && matches!(old, TcpState::SynSent | TcpState::SynRecv),
                ns,
                owner: conn.owner,
                peer: (conn.key.daddr, conn.key.dport),
            }),
            _ => None,
        };

        match (old, e.new) {
            (TcpState::Established | TcpState::SynRecv, TcpState::FinWait1) => {
                conn.closer.get_or_insert(Closer::Active);
            }
            (TcpState::Established | TcpState::SynRecv, TcpState::CloseWait) => {
                conn.closer.get_or_insert(Closer::Passive);
            }
            (TcpState::FinWait1, TcpState::Closing) => conn.closer = Some(Closer::Simultaneous),
            _ => {}
        }
        conn.enter(e.new, e.ts_ns);
        conn.flags |= conn_flags::STATE_EXACT;

        if e.new == TcpState::Close {
            let linked_tw = conn.flags & conn_flags::TO_TIMEWAIT != 0;
            let reason = match old {
                TcpState::Listen => EndReason::ListenerClosed,
                TcpState::SynSent if e.sport == 0 => EndReason::NoPort,
                TcpState::SynSent => {
                    if exact.is_some_and(|ns| ns >= CONNECT_TIMEOUT_NS) {
                        EndReason::Timeout
                    } else {
                        EndReason::Refused
                    }
                }
                TcpState::LastAck => EndReason::Normal,
                _ if linked_tw => EndReason::TimeWait,
                TcpState::FinWait2 | TcpState::Closing
                    if e.reason == Some(TwEndReason::Overflow) =>
                {
                    EndReason::TimeWaitOverflow
                }
                _ => EndReason::Reset,
            };
            match counted {
                Counted::Profile(p) => self.uncount_conn(slot, &p),
                Counted::State(before) => {
                    let p = Profile::of_conn_in(&self.conns.at(slot)?.v, before);
                    self.uncount_conn(slot, &p);
                }
                Counted::Not => {}
            }
            if let Some(conn) = self.take_conn(slot) {
                out.push(Finished::Conn {
                    conn,
                    end_ns: e.ts_ns,
                    reason,
                });
            }
            self.touched = Some((e.sk, was, None));
        } else {
            self.touched = Some((e.sk, was, Some(e.new)));
            match counted {
                Counted::Profile(p) => self.recount_conn(slot, Some(&p)),
                Counted::State(before) => self.restate_conn(slot, before),
                Counted::Not => self.note_new_conn(slot),
            }
        }
        duration
    }

    fn tw_begin(&mut self, e: &Event, out: &mut Vec<Finished>) {
        let existing = self.tws.slot(e.sk);
        self.note_tw_before(e.sk, existing);
        self.make_room(out, e.ts_ns);
        let from = e
            .link
            .and_then(|sk| self.conns.get_mut(sk))
            .map(|h| &mut h.v);
        let (owner, closer, opened) = match from {
            Some(c) => {
                c.flags |= conn_flags::TO_TIMEWAIT;
                (e.owner.or(c.owner), c.closer, c.opened)
            }
            None => (e.owner, None, None),
        };
        let t = TwConn {
            tw: e.sk,
            key: TupleKey::of_event(e),
            owner,
            substate: e.new,
            start_ns: e.ts_ns,
            start_estimated: false,
            from_sk: e.link.and_then(NonZeroU64::new),
            closer,
            opened,
        };
        self.drop_seeded_duplicate(&t.key);
        // (Making room may have evicted it, or moved another into its slot.)
        let existing = existing.filter(|&s| self.tws.at(s).is_some_and(|h| h.v.tw == t.tw));
        if let Some(stale) = existing.and_then(|s| self.remove_tw_at(s)) {
            out.push(Finished::Tw {
                tw: stale,
                end_ns: e.ts_ns,
                reason: EndReason::Dropped,
                duration_ns: None,
                reused_by: None,
            });
        }
        self.insert_tw(t);
    }

    fn tw_end(&mut self, e: &Event, out: &mut Vec<Finished>) {
        let (reason, reused_by) = match e.reason {
            Some(TwEndReason::Killed) => (EndReason::TimeWaitKilled, None),
            Some(TwEndReason::Purged) => (EndReason::TimeWaitPurged, None),
            Some(TwEndReason::Reused { by }) => {
                (EndReason::TimeWaitReused, self.reuser(e.link, by))
            }
            _ => (EndReason::TimeWaitExpired, None),
        };
        let key = TupleKey::of_event(e);
        let tw = match self.remove_tw(e.sk) {
            Some(t) => {
                if self.keep_tw_before {
                    self.tw_before = Some((e.sk, Some(t.clone())));
                }
                Some(t)
            }
            None => {
                if self.keep_tw_before {
                    self.tw_before = Some((e.sk, None));
                }
                self.counters.unknown_sockets += 1;
                self.adopt_seeded_tw(&key)
            }
        };
        let tw = tw.unwrap_or_else(|| TwConn {
            tw: e.sk,
            key,
            owner: e.owner,
            substate: e.old.unwrap_or(TcpState::TimeWait),
            start_ns: e.ts_ns.saturating_sub(e.prev_ns.unwrap_or(0)),
            start_estimated: e.prev_ns.is_none(),
            from_sk: None,
            closer: None,
            opened: None,
        });
        let duration_ns = e.prev_ns.or_else(|| {
            (!tw.start_estimated || tw.tw < SYNTHETIC_LIMIT)
                .then(|| e.ts_ns.saturating_sub(tw.start_ns))
        });
        out.push(Finished::Tw {
            tw,
            end_ns: e.ts_ns,
            reason,
            duration_ns,
            reused_by,
        });
    }

    /// The owner of the socket whose connect() reused a timewait socket:
    /// the connecting socket's (captured in that same connect(), so exact)
    /// when the table has it and the kernel's pid agrees, else what the event
    /// says.
    fn reuser(&self, link: Option<u64>, by: Option<Reuser>) -> Option<Owner> {
        let connecting = link.and_then(|sk| self.conn(sk)).and_then(|c| c.owner);
        match (connecting, by) {
            (Some(o), Some(b)) if o.pid == b.pid => Some(o),
            (Some(o), None) => Some(o),
            (_, Some(b)) => Some(Owner {
                pid: b.pid,
                tid: b.pid,
                comm: b.comm.unwrap_or_default(),
                cgroup: 0,
                from_listener: false,
            }),
            (None, None) => None,
        }
    }

    /// Adds the sockets of a startup snapshot (sock_diag) taken at
    /// `taken_at_ns` (monotonic). Their ages are lower bounds, except
    /// TIME_WAIT, whose start follows from the time left on its timer.
    pub fn seed(&mut self, sockets: &[SeenSocket], taken_at_ns: u64) -> Vec<Finished> {
        let mut out = Vec::new();
        for s in sockets {
            self.insert_seen(s, taken_at_ns, &mut out);
        }
        out
    }

    fn insert_seen(&mut self, s: &SeenSocket, taken_at_ns: u64, out: &mut Vec<Finished>) {
        if matches!(
            s.state,
            TcpState::SynRecv | TcpState::NewSynRecv | TcpState::Close
        ) {
            // Request sockets never reach the tracepoint; CLOSE is not a connection.
            return;
        }
        let key = TupleKey::of_seen(s);
        if self.seeded.contains_key(&key) {
            return;
        }
        self.make_room(out, taken_at_ns);
        let synthetic = self.next_synthetic;
        self.next_synthetic += 1;
        let owner = s.owner.map(|o| seen_owner(o, s.cgroup));
        // sock_diag reports timewait sockets by substate (TIME_WAIT, or
        // FIN_WAIT2 for orphans) with the timewait timer set.
        if s.state == TcpState::TimeWait || s.timer_left_ms.is_some() {
            let elapsed_ms = s
                .timer_left_ms
                .map(|left| TIMEWAIT_LEN_MS.saturating_sub(left as u64));
            self.insert_tw(TwConn {
                tw: synthetic,
                key,
                owner,
                substate: s.state,
                start_ns: taken_at_ns.saturating_sub(elapsed_ms.unwrap_or(0) * 1_000_000),
                start_estimated: true,
                from_sk: None,
                closer: None,
                opened: None,
            });
        } else {
            self.insert_conn(Conn {
                sk: synthetic,
                key,
                owner,
                state: s.state,
                born_ns: taken_at_ns,
                state_since_ns: taken_at_ns,
                closer: match s.state {
                    TcpState::CloseWait | TcpState::LastAck => Some(Closer::Passive),
                    TcpState::FinWait1 | TcpState::FinWait2 => Some(Closer::Active),
                    TcpState::Closing => Some(Closer::Simultaneous),
                    _ => None,
                },
                opened: None,
                flags: conn_flags::SEEDED,
            });
            if owner.is_none()
                && let Some(cgroup) = s.cgroup.filter(|&c| c != 0)
            {
                self.seen_cgroups.insert(synthetic, cgroup);
            }
        }
        self.seeded.insert(key, synthetic);
        self.maybe_seeded.insert(&key, &self.seeded);
    }

    /// Reconciles the table with a fresh snapshot of the kernel's sockets:
    /// entries the kernel no longer has (and that no event touched since the
    /// snapshot began) are ghosts and go; sockets the table lacks are added
    /// as seeded; states that disagree are corrected. Only namespaces present
    /// in `namespaces` are judged. Returns the ghosts, as finished.
    pub fn reconcile(
        &mut self,
        sockets: &[SeenSocket],
        namespaces: &[u32],
        taken_at_ns: u64,
    ) -> Vec<Finished> {
        use std::collections::HashSet;
        let mut out = Vec::new();
        let seen: HashMap<TupleKey, &SeenSocket> =
            sockets.iter().map(|s| (TupleKey::of_seen(s), s)).collect();
        let judged: HashSet<u32> = namespaces.iter().copied().collect();

        let ghosts: Vec<u64> = self
            .conns()
            .filter(|c| {
                judged.contains(&c.key.netns)
                    && c.state_since_ns < taken_at_ns
                    && !seen.contains_key(&c.key)
                    && c.state != TcpState::SynSent
            })
            .map(|c| c.sk)
            .collect();
        for sk in ghosts {
            let conn = self.remove_conn(sk).expect("present");
            self.counters.corrections += 1;
            out.push(Finished::Conn {
                conn,
                end_ns: taken_at_ns,
                reason: EndReason::Dropped,
            });
        }
        let tw_ghosts: Vec<u64> = self
            .timewaits()
            .filter(|t| {
                judged.contains(&t.key.netns)
                    && t.start_ns < taken_at_ns
                    && !seen.contains_key(&t.key)
            })
            .map(|t| t.tw)
            .collect();
        for tw in tw_ghosts {
            let tw = self.remove_tw(tw).expect("present");
            self.counters.corrections += 1;
            out.push(Finished::Tw {
                tw,
                end_ns: taken_at_ns,
                reason: EndReason::Dropped,
                duration_ns: None,
                reused_by: None,
            });
        }

        let known: HashSet<TupleKey> = self
            .conns()
            .map(|c| c.key)
            .chain(self.timewaits().map(|t| t.key))
            .collect();
        let rearmed: Vec<Slot> = self
            .tws
            .slots()
            .filter(|(_, h)| {
                let t = &h.v;
                seen.get(&t.key).is_some_and(|s| {
                    t.substate == TcpState::FinWait2
                        && s.state == TcpState::TimeWait
                        && t.start_ns < taken_at_ns
                })
            })
            .map(|(slot, _)| slot)
            .collect();
        for slot in rearmed {
            self.change_tw(slot, |t| t.substate = TcpState::TimeWait);
            self.counters.silent_rearms += 1;
        }
        let owner_found = |c: &Conn| {
            c.owner
                .is_none()
                .then(|| {
                    seen.get(&c.key)
                        .and_then(|s| Some(seen_owner(s.owner?, s.cgroup)))
                })
                .flatten()
        };
        let corrected = |c: &Conn| {
            seen.get(&c.key).map(|s| s.state).filter(|&state| {
                state != c.state
                    && state != TcpState::TimeWait
                    && seen.get(&c.key).is_some_and(|s| s.timer_left_ms.is_none())
                    && c.state_since_ns < taken_at_ns
                    && !matches!(state, TcpState::SynRecv | TcpState::NewSynRecv)
            })
        };
        let fixes: Vec<(Slot, Option<Owner>, Option<TcpState>)> = self
            .conns
            .slots()
            .filter_map(|(slot, h)| {
                let (owner, state) = (owner_found(&h.v), corrected(&h.v));
                (owner.is_some() || state.is_some()).then_some((slot, owner, state))
            })
            .collect();
        for (slot, owner, state) in fixes {
            if owner.is_some() {
                self.counters.owners_found += 1;
            }
            if state.is_some() {
                self.counters.corrections += 1;
            }
            self.change_conn(slot, |c| {
                if owner.is_some() {
                    c.owner = owner;
                }
                if let Some(state) = state {
                    c.state = state;
                    c.state_since_ns = taken_at_ns;
                    c.flags &= !conn_flags::STATE_EXACT;
                }
            });
        }
        for s in sockets {
            let key = TupleKey::of_seen(s);
            if judged.contains(&key.netns)
                && !known.contains(&key)
                && !matches!(
                    s.state,
                    TcpState::SynRecv | TcpState::NewSynRecv | TcpState::Close
                )
                && !self.seeded.contains_key(&key)
            {
                self.counters.corrections += 1;
                self.insert_seen(s, taken_at_ns, &mut out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    //! How the table ends timewait sockets reused, purged and killed, and a
    //! full socket that got no timewait socket.

    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::model::Comm;

    #[test]
    fn the_seeded_filter_never_misses_a_seeded_tuple_and_rules_out_most_others() {
        let key = |netns: u32, port: u16| TupleKey {
            netns,
            saddr: IpAddr::V4(Ipv4Addr::new(10, 0, (port >> 8) as u8, port as u8)),
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: port,
            dport: 443,
        };
        let mut map = FxHashMap::default();
        let mut filter = MaybeSeeded::default();
        assert!(!filter.may_hold(&key(1, 1)));
        for port in 1..=20_000u16 {
            map.insert(key(1, port), u64::from(port));
            filter.insert(&key(1, port), &map);
        }
        assert!((1..=20_000u16).all(|p| filter.may_hold(&key(1, p))));
        let others = (1..=20_000u16)
            .filter(|&p| filter.may_hold(&key(2, p)))
            .count();
        assert!(others < 2_000, "{others} of 20000 other tuples pass");
    }

    fn owner(pid: u32, name: &str) -> Owner {
        Owner {
            pid,
            tid: pid + 1,
            comm: Comm::from_name(name),
            cgroup: 3,
            from_listener: false,
        }
    }

    fn ev(ts: u64, kind: EventKind, sk: u64, old: TcpState, new: TcpState) -> Event {
        Event {
            ts_ns: ts,
            kind,
            sk,
            link: None,
            owner: Some(owner(10, "client")),
            netns: Some(1),
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            sport: 40_000,
            daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            dport: 80,
            old: Some(old),
            new,
            prev_ns: None,
            reason: None,
            stack: None,
        }
    }

    /// A client socket `sk` that connects and closes first; its timewait
    /// socket `tw` begins at `ts + 3`.
    fn active_close(t: &mut ConnTable, ts: u64, sk: u64, tw: u64) {
        use TcpState::*;
        for (i, (old, new)) in [
            (Close, SynSent),
            (SynSent, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
        ]
        .into_iter()
        .enumerate()
        {
            t.apply(&ev(ts + i as u64, EventKind::Transition, sk, old, new));
        }
        let mut begin = ev(ts + 3, EventKind::TwBegin, tw, FinWait2, TimeWait);
        begin.link = Some(sk);
        t.apply(&begin);
        let close = t.apply(&ev(ts + 3, EventKind::Transition, sk, FinWait2, Close));
        assert!(matches!(
            close.finished[..],
            [Finished::Conn {
                reason: EndReason::TimeWait,
                ..
            }]
        ));
    }

    fn tw_end(ts: u64, tw: u64, reason: TwEndReason) -> Event {
        let mut e = ev(
            ts,
            EventKind::TwEnd,
            tw,
            TcpState::TimeWait,
            TcpState::Close,
        );
        e.reason = Some(reason);
        e
    }

    fn ended(applied: &Applied) -> (EndReason, Option<Owner>, Option<u64>) {
        match applied.finished[..] {
            [
                Finished::Tw {
                    reason,
                    reused_by,
                    duration_ns,
                    ..
                },
            ] => (reason, reused_by, duration_ns),
            ref other => panic!("one timewait end expected: {other:?}"),
        }
    }

    #[test]
    fn reused_timewait_names_the_connecting_sockets_owner() {
        let mut t = ConnTable::default();
        active_close(&mut t, 1_000, 0xa0, 0x7a);
        // A new connect (another thread of another process) enters SYN_SENT,
        // then takes the 4-tuple over.
        let mut connect = ev(
            2_000_000_000,
            EventKind::Transition,
            0xb0,
            TcpState::Close,
            TcpState::SynSent,
        );
        connect.owner = Some(owner(20, "pool"));
        connect.sport = 0;
        t.apply(&connect);
        let mut end = tw_end(
            2_000_000_100,
            0x7a,
            TwEndReason::Reused {
                by: Some(Reuser {
                    pid: 20,
                    comm: None,
                }),
            },
        );
        end.link = Some(0xb0);
        end.prev_ns = Some(1_999_999_000);
        let (reason, by, duration) = ended(&t.apply(&end));
        assert_eq!(reason, EndReason::TimeWaitReused);
        assert_eq!(
            by,
            Some(owner(20, "pool")),
            "the connecting socket's owner, tid and all"
        );
        assert_eq!(duration, Some(1_999_999_000));
        assert!(t.timewait(0x7a).is_none());
        assert!(t.conn(0xb0).is_some(), "the reusing connection lives on");
    }

    #[test]
    fn reused_timewait_without_the_connect_keeps_the_kernels_pid() {
        let mut t = ConnTable::default();
        active_close(&mut t, 1_000, 0xa0, 0x7a);
        let mut end = tw_end(
            5_000,
            0x7a,
            TwEndReason::Reused {
                by: Some(Reuser {
                    pid: 31,
                    comm: Some(Comm::from_name("curl")),
                }),
            },
        );
        end.link = Some(0xdead);
        let (reason, by, _) = ended(&t.apply(&end));
        assert_eq!(reason, EndReason::TimeWaitReused);
        let by = by.expect("the pid the kernel sent");
        assert_eq!((by.pid, by.comm), (31, Comm::from_name("curl")));
        // Nothing known at all.
        active_close(&mut t, 9_000, 0xa1, 0x7b);
        let (reason, by, _) = ended(&t.apply(&tw_end(9_500, 0x7b, TwEndReason::REUSED)));
        assert_eq!((reason, by), (EndReason::TimeWaitReused, None));
    }

    #[test]
    fn purged_and_killed_timewait_sockets_end_as_such() {
        let mut t = ConnTable::default();
        active_close(&mut t, 1_000, 0xa0, 0x7a);
        active_close(&mut t, 2_000, 0xa1, 0x7b);
        active_close(&mut t, 3_000, 0xa2, 0x7c);
        let cases = [
            (0x7a, TwEndReason::Purged, EndReason::TimeWaitPurged),
            (0x7b, TwEndReason::Killed, EndReason::TimeWaitKilled),
            (0x7c, TwEndReason::Expired, EndReason::TimeWaitExpired),
        ];
        for (tw, reason, want) in cases {
            let (got, by, _) = ended(&t.apply(&tw_end(10_000, tw, reason)));
            assert_eq!((got, by), (want, None), "{reason:?}");
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn close_with_no_timewait_socket_is_an_overflow_not_a_reset() {
        use TcpState::*;
        let mut t = ConnTable::default();
        for (sk, last) in [(0xa0, FinWait2), (0xa1, Closing)] {
            t.apply(&ev(1, EventKind::Transition, sk, Close, SynSent));
            t.apply(&ev(2, EventKind::Transition, sk, SynSent, Established));
            t.apply(&ev(3, EventKind::Transition, sk, Established, FinWait1));
            t.apply(&ev(4, EventKind::Transition, sk, FinWait1, last));
            let mut close = ev(5, EventKind::Transition, sk, last, Close);
            close.reason = Some(TwEndReason::Overflow);
            let out = t.apply(&close);
            assert!(
                matches!(
                    out.finished[..],
                    [Finished::Conn {
                        reason: EndReason::TimeWaitOverflow,
                        ..
                    }]
                ),
                "{out:?}"
            );
        }
        // Without the mark, the same CLOSE is a reset.
        t.apply(&ev(1, EventKind::Transition, 0xa2, Close, SynSent));
        t.apply(&ev(2, EventKind::Transition, 0xa2, SynSent, FinWait1));
        t.apply(&ev(3, EventKind::Transition, 0xa2, FinWait1, FinWait2));
        let out = t.apply(&ev(4, EventKind::Transition, 0xa2, FinWait2, Close));
        assert!(matches!(
            out.finished[..],
            [Finished::Conn {
                reason: EndReason::Reset,
                ..
            }]
        ));
    }

    fn with_stack(mut e: Event, id: u32) -> Event {
        e.stack = Some(id);
        e
    }

    fn key(pid: u32, id: u32) -> StackKey {
        StackKey { pid, id }
    }

    fn stack_of_sk(t: &ConnTable, sk: u64) -> Option<StackKey> {
        let slot = t.conns.slot(sk)?;
        t.stack_of(t.conn_at(slot)?)
    }

    #[test]
    fn a_stack_set_at_connect_lasts_through_close_wait_and_goes_at_close() {
        use TcpState::*;
        let mut t = ConnTable::new(16);
        t.apply(&with_stack(
            ev(1, EventKind::Transition, 7, Close, SynSent),
            42,
        ));
        // Later events carry it too (the owner's); they change nothing.
        t.apply(&with_stack(
            ev(2, EventKind::Transition, 7, SynSent, Established),
            42,
        ));
        t.apply(&with_stack(
            ev(3, EventKind::Transition, 7, Established, CloseWait),
            42,
        ));
        assert_eq!(stack_of_sk(&t, 7), Some(key(10, 42)));
        assert_eq!(t.sockets_with_stacks(), 1);
        t.apply(&with_stack(
            ev(4, EventKind::Transition, 7, CloseWait, LastAck),
            42,
        ));
        t.apply(&with_stack(
            ev(5, EventKind::Transition, 7, LastAck, Close),
            42,
        ));
        assert_eq!(t.sockets_with_stacks(), 0);
        assert!(t.stacks.is_empty());
    }

    #[test]
    fn events_without_a_stack_never_make_an_entry() {
        use TcpState::*;
        let mut t = ConnTable::new(16);
        active_close(&mut t, 1, 7, 8);
        t.apply(&ev(10, EventKind::Transition, 9, Close, SynSent));
        t.apply(&ev(11, EventKind::Transition, 9, SynSent, Established));
        let mut other = ev(12, EventKind::Accept, 9, Established, Established);
        other.owner = Some(owner(20, "worker"));
        t.apply(&other);
        assert!(t.stacks.is_empty());
        assert_eq!(stack_of_sk(&t, 9), None);
    }

    #[test]
    fn an_accept_by_another_process_replaces_the_listeners_stack() {
        use TcpState::*;
        let mut t = ConnTable::new(16);
        // A child of a listener: it inherits the listener's owner and
        // listen() stack.
        let mut child = with_stack(ev(1, EventKind::Transition, 7, Listen, SynRecv), 5);
        child.owner = Some(Owner {
            from_listener: true,
            ..owner(10, "server")
        });
        t.apply(&child);
        assert_eq!(stack_of_sk(&t, 7), Some(key(10, 5)));
        // Another process accepts it, with its own stack.
        let mut accept = with_stack(ev(2, EventKind::Accept, 7, Established, Established), 9);
        accept.owner = Some(owner(20, "worker"));
        t.apply(&accept);
        assert_eq!(stack_of_sk(&t, 7), Some(key(20, 9)));
        // An accept whose stack the kernel missed drops the old one.
        let mut missed = ev(3, EventKind::Accept, 7, Established, Established);
        missed.owner = Some(owner(30, "other"));
        t.apply(&missed);
        assert_eq!(stack_of_sk(&t, 7), None);
    }

    #[test]
    fn a_listener_inherited_stack_is_replaced_when_from_listener_flips() {
        use TcpState::*;
        let mut t = ConnTable::new(16);
        let mut child = with_stack(ev(1, EventKind::Transition, 7, Listen, SynRecv), 5);
        child.owner = Some(Owner {
            from_listener: true,
            ..owner(10, "server")
        });
        t.apply(&child);
        // The same thread accepted it: no event then; the next one carries
        // the accept stack with the owner no longer from the listener.
        let next = with_stack(ev(2, EventKind::Transition, 7, SynRecv, Established), 6);
        t.apply(&next);
        assert_eq!(stack_of_sk(&t, 7), Some(key(10, 6)));
        // The same owner again with another id changes nothing (no capture).
        t.apply(&with_stack(
            ev(3, EventKind::Transition, 7, Established, CloseWait),
            99,
        ));
        assert_eq!(stack_of_sk(&t, 7), Some(key(10, 6)));
        // A new owner without a stack: the old one goes.
        let mut moved = ev(4, EventKind::Transition, 7, CloseWait, LastAck);
        moved.owner = Some(owner(11, "server"));
        t.apply(&moved);
        assert_eq!(stack_of_sk(&t, 7), None);
    }

    #[test]
    fn a_seeded_socket_has_no_stack_until_an_owner_brings_one() {
        use TcpState::*;
        let mut t = ConnTable::new(16);
        let e = ev(1, EventKind::Transition, 7, Established, CloseWait);
        t.seed(
            &[SeenSocket {
                netns: e.netns,
                family: Family::V4,
                saddr: e.saddr,
                sport: e.sport,
                daddr: e.daddr,
                dport: e.dport,
                state: Established,
                inode: 1,
                owner: None,
                timer_left_ms: None,
                cookie: 1,
                cgroup: None,
            }],
            0,
        );
        assert_eq!(t.sockets_with_stacks(), 0);
        // The first event adopts the seeded entry (the owner is new): with
        // no stack it brings none.
        t.apply(&e);
        assert_eq!(stack_of_sk(&t, 7), None);
        assert!(t.stacks.is_empty());
    }

    #[test]
    fn a_reused_address_starts_again_with_the_new_stack() {
        use TcpState::*;
        let mut t = ConnTable::new(16);
        t.apply(&with_stack(
            ev(1, EventKind::Transition, 7, Close, SynSent),
            1,
        ));
        t.apply(&with_stack(
            ev(2, EventKind::Transition, 7, Close, SynSent),
            2,
        ));
        assert_eq!(stack_of_sk(&t, 7), Some(key(10, 2)));
        // A timewait socket keeps none; the full socket's goes with it.
        active_close(&mut t, 10, 8, 9);
        assert_eq!(t.sockets_with_stacks(), 1);
        t.apply(&with_stack(
            ev(30, EventKind::Transition, 7, SynSent, Close),
            2,
        ));
        assert_eq!(t.sockets_with_stacks(), 0);
    }
}
