//! What the table holds, counted as it changes: sockets per state, per
//! owning process, per local port and per remote address, the CLOSE_WAIT
//! sockets (whose, since when, to which peer), the listening ports, and the
//! full sockets that may hold an ephemeral port (what port budgets count).
//! The table keeps these at every insert, change and removal of an entry,
//! so the snapshot `stats`, `watch` and `top` take every interval reads
//! counts and short lists instead of walking a million sockets.
//!
//! Each entry remembers where it is counted ([`Links`]: its groups and its
//! places in the lists), so a transition updates counts by index, with no
//! hashing unless the owner, port or peer changed. A change is described by
//! the entry's [`Profile`] before and after.

use std::{
    hash::Hash,
    net::{IpAddr, SocketAddr},
};

use rustc_hash::FxHashMap;

use super::{Conn, Opened, TupleKey, TwConn, slab::Slot};
use crate::model::{Comm, Owner, TcpState};

/// No group, no place in a list.
pub(super) const NONE: u32 = u32::MAX;

/// Where an entry is counted: its group in each grouping, its place in the
/// CLOSE_WAIT list and in the list of budget candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Links {
    pid: u32,
    port: u32,
    remote: u32,
    cw: u32,
    candidate: u32,
}

impl Default for Links {
    fn default() -> Self {
        Self {
            pid: NONE,
            port: NONE,
            remote: NONE,
            cw: NONE,
            candidate: NONE,
        }
    }
}

/// What of an entry the counts depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Profile {
    state: TcpState,
    owner: Option<Owner>,
    key: TupleKey,
    since_ns: u64,
    /// The state's age is a lower bound.
    lower: bool,
    /// Counted per remote address (all but listening sockets).
    remote: bool,
    /// May hold an ephemeral port towards a destination: a full socket,
    /// not listening or closed, not seen accepted.
    candidate: bool,
    /// A full socket (CLOSE_WAIT and listening are states of full sockets
    /// only, whatever a timewait socket's substate says).
    full: bool,
}

impl Profile {
    pub(super) fn of_conn(c: &Conn) -> Self {
        Self::of_conn_in(c, c.state)
    }

    /// `c` as counted while it was in `state` (what a removal needs).
    pub(super) fn of_conn_in(c: &Conn, state: TcpState) -> Self {
        Self {
            state,
            owner: c.owner,
            key: c.key,
            since_ns: c.state_since_ns,
            lower: c.state_age_is_lower_bound(),
            remote: state != TcpState::Listen,
            candidate: !matches!(state, TcpState::Listen | TcpState::Close)
                && c.opened != Some(Opened::Accepted),
            full: true,
        }
    }

    pub(super) fn of_tw(t: &TwConn) -> Self {
        Self {
            state: t.substate,
            owner: t.owner,
            key: t.key,
            since_ns: t.start_ns,
            lower: t.start_estimated,
            remote: true,
            candidate: false,
            full: false,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.owner.map(|o| o.pid)
    }

    fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.key.daddr, self.key.dport)
    }
}

/// Live sockets of one key, by state.
#[derive(Clone, Debug)]
pub struct Group<K> {
    pub key: K,
    /// By state number.
    pub counts: [u32; 13],
    pub total: u32,
    /// Processes: the names its sockets' owners carry (threads may differ),
    /// with how many sockets carry each.
    comms: Vec<(Comm, u32)>,
}

impl<K> Group<K> {
    /// The name most sockets carry (ties: the first by bytes).
    pub fn comm(&self) -> Option<Comm> {
        self.comms
            .iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.0.cmp(&a.0.0)))
            .map(|c| c.0)
    }
}

/// Live sockets per key (a process, a port, an address): rows found by
/// key when a socket joins, by index afterwards.
#[derive(Clone, Debug)]
pub struct Groups<K> {
    ids: FxHashMap<K, u32>,
    rows: Vec<Group<K>>,
    free: Vec<u32>,
}

impl<K> Default for Groups<K> {
    fn default() -> Self {
        Self {
            ids: FxHashMap::default(),
            rows: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Groups<K> {
    fn join(&mut self, key: K) -> u32 {
        if let Some(&g) = self.ids.get(&key) {
            return g;
        }
        let row = Group {
            key,
            counts: [0; 13],
            total: 0,
            comms: Vec::new(),
        };
        let g = match self.free.pop() {
            Some(g) => {
                self.rows[g as usize] = row;
                g
            }
            None => {
                self.rows.push(row);
                (self.rows.len() - 1) as u32
            }
        };
        self.ids.insert(key, g);
        g
    }

    fn add(&mut self, g: u32, state: TcpState) {
        let row = &mut self.rows[g as usize];
        row.counts[state as usize] += 1;
        row.total += 1;
    }

    fn sub(&mut self, g: u32, state: TcpState) {
        let row = &mut self.rows[g as usize];
        row.counts[state as usize] = row.counts[state as usize].saturating_sub(1);
        row.total = row.total.saturating_sub(1);
    }

    fn add_comm(&mut self, g: u32, comm: Comm) {
        let comms = &mut self.rows[g as usize].comms;
        match comms.iter_mut().find(|c| c.0 == comm) {
            Some(c) => c.1 += 1,
            None => comms.push((comm, 1)),
        }
    }

    fn sub_comm(&mut self, g: u32, comm: Comm) {
        let comms = &mut self.rows[g as usize].comms;
        if let Some(i) = comms.iter().position(|c| c.0 == comm) {
            comms[i].1 -= 1;
            if comms[i].1 == 0 {
                comms.swap_remove(i);
            }
        }
    }

    fn release_if_empty(&mut self, g: u32) {
        let row = &self.rows[g as usize];
        if row.total == 0 {
            self.ids.remove(&row.key);
            self.free.push(g);
        }
    }

    /// Moves one socket from (key, state) `before` to `after`: by index
    /// when the key stays.
    fn regroup(
        &mut self,
        g: &mut u32,
        before: Option<(K, TcpState)>,
        after: Option<(K, TcpState)>,
    ) {
        match (before, after) {
            (Some((kb, sb)), Some((ka, sa))) if kb == ka && *g != NONE => {
                if sb != sa {
                    self.sub(*g, sb);
                    self.add(*g, sa);
                }
            }
            _ => {
                if let Some((_, sb)) = before
                    && *g != NONE
                {
                    self.sub(*g, sb);
                    self.release_if_empty(*g);
                    *g = NONE;
                }
                if let Some((ka, sa)) = after {
                    *g = self.join(ka);
                    self.add(*g, sa);
                }
            }
        }
    }

    /// The groups with sockets.
    pub fn iter(&self) -> impl Iterator<Item = &Group<K>> {
        self.rows.iter().filter(|r| r.total > 0)
    }

    pub fn get(&self, key: &K) -> Option<&Group<K>> {
        self.ids.get(key).map(|&g| &self.rows[g as usize])
    }

    /// The index of `key`'s group (as [`CloseWaitItem::pid_group`] names it).
    pub fn index_of(&self, key: &K) -> Option<u32> {
        self.ids.get(key).copied()
    }

    /// The group at index `g` (as [`CloseWaitItem::pid_group`] names it).
    pub fn at(&self, g: u32) -> &Group<K> {
        &self.rows[g as usize]
    }

    /// Indexes in use are below this.
    pub fn bound(&self) -> usize {
        self.rows.len()
    }
}

/// A CLOSE_WAIT socket, as the list of them keeps it.
#[derive(Clone, Copy, Debug)]
pub struct CloseWaitItem {
    pub slot: Slot,
    /// Its process's group in [`Live::by_pid`].
    pub pid_group: u32,
    pub since_ns: u64,
    pub lower: bool,
    pub key: TupleKey,
}

/// Listening sockets on one (namespace, port).
#[derive(Clone, Debug, Default)]
pub struct Listening {
    /// The owners of each, latest last.
    owners: Vec<Option<Owner>>,
}

impl Listening {
    pub fn count(&self) -> usize {
        self.owners.len()
    }

    /// The owner of one of them, when known: the lowest pid (a server's
    /// first process, when several listen on the port).
    pub fn owner(&self) -> Option<Owner> {
        self.owners
            .iter()
            .flatten()
            .min_by_key(|o| (o.pid, o.tid, o.comm.0, o.cgroup, o.from_listener))
            .copied()
    }
}

/// The counts (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Live sockets by state (timewait sockets by substate), by state number.
    pub states: [u64; 13],
    pub by_pid: Groups<Option<u32>>,
    pub by_port: Groups<u16>,
    /// All but listening sockets.
    pub by_remote: Groups<IpAddr>,
    /// Every CLOSE_WAIT socket (in no order).
    pub close_wait: Vec<CloseWaitItem>,
    /// CLOSE_WAIT sockets per (process group, peer).
    pub close_wait_peers: FxHashMap<(u32, SocketAddr), u32>,
    pub listeners: FxHashMap<(u32, u16), Listening>,
    /// Full sockets that may hold an ephemeral port: not listening or
    /// closed, not seen accepted.
    pub candidates: Vec<Slot>,
}

/// An entry another one's removal from a list moved: its new place.
pub(super) type Moved = Option<(Slot, u32)>;

impl Live {
    /// Moves one entry (`slot`) from `before` to `after` (`None`: not
    /// counted); returns the entries moved in the CLOSE_WAIT list and the
    /// candidates, whose links the caller updates.
    pub(super) fn change(
        &mut self,
        slot: Slot,
        before: Option<&Profile>,
        after: Option<&Profile>,
        links: &mut Links,
    ) -> (Moved, Moved) {
        if let Some(b) = before {
            self.states[b.state as usize] = self.states[b.state as usize].saturating_sub(1);
        }
        if let Some(a) = after {
            self.states[a.state as usize] += 1;
        }
        let comm = |p: Option<&Profile>| p.and_then(|p| p.owner).map(|o| o.comm);
        let renamed =
            comm(before) != comm(after) || before.map(Profile::pid) != after.map(Profile::pid);
        if renamed
            && let Some(c) = comm(before)
            && links.pid != NONE
        {
            self.by_pid.sub_comm(links.pid, c);
        }
        self.by_pid.regroup(
            &mut links.pid,
            before.map(|b| (b.pid(), b.state)),
            after.map(|a| (a.pid(), a.state)),
        );
        if renamed
            && let Some(c) = comm(after)
            && links.pid != NONE
        {
            self.by_pid.add_comm(links.pid, c);
        }
        self.by_port.regroup(
            &mut links.port,
            before.map(|b| (b.key.sport, b.state)),
            after.map(|a| (a.key.sport, a.state)),
        );
        self.by_remote.regroup(
            &mut links.remote,
            before.filter(|b| b.remote).map(|b| (b.key.daddr, b.state)),
            after.filter(|a| a.remote).map(|a| (a.key.daddr, a.state)),
        );
        fn listening(p: Option<&Profile>) -> Option<&Profile> {
            p.filter(|p| p.full && p.state == TcpState::Listen)
        }
        if listening(before) != listening(after) {
            if let Some(b) = listening(before) {
                let port = (b.key.netns, b.key.sport);
                if let Some(l) = self.listeners.get_mut(&port) {
                    if let Some(i) = l.owners.iter().rposition(|o| *o == b.owner) {
                        l.owners.remove(i);
                    }
                    if l.owners.is_empty() {
                        self.listeners.remove(&port);
                    }
                }
            }
            if let Some(a) = listening(after) {
                self.listeners
                    .entry((a.key.netns, a.key.sport))
                    .or_default()
                    .owners
                    .push(a.owner);
            }
        }
        let cw = self.close_wait_change(slot, before, after, links);
        let candidate = |p: Option<&Profile>| p.is_some_and(|p| p.candidate);
        let candidate = self.candidate_change(slot, links, candidate(before), candidate(after));
        (cw, candidate)
    }

    /// The common change: a full socket moved from state `before` (since
    /// `before_since_ns`, lower bound `before_lower`) to the one `c` is in
    /// now, its owner and 4-tuple unchanged. By index only, except where a
    /// socket joins or leaves the remote and listening groups.
    pub(super) fn restate(
        &mut self,
        slot: Slot,
        c: &Conn,
        before: TcpState,
        links: &mut Links,
    ) -> (Moved, Moved) {
        let after = c.state;
        if before != after {
            self.states[before as usize] = self.states[before as usize].saturating_sub(1);
            self.states[after as usize] += 1;
            if links.pid != NONE {
                self.by_pid.sub(links.pid, before);
                self.by_pid.add(links.pid, after);
            }
            if links.port != NONE {
                self.by_port.sub(links.port, before);
                self.by_port.add(links.port, after);
            }
            let listen = TcpState::Listen;
            self.by_remote.regroup(
                &mut links.remote,
                (before != listen).then_some((c.key.daddr, before)),
                (after != listen).then_some((c.key.daddr, after)),
            );
            if before == listen || after == listen {
                let port = (c.key.netns, c.key.sport);
                if before == listen
                    && let Some(l) = self.listeners.get_mut(&port)
                {
                    if let Some(i) = l.owners.iter().rposition(|o| *o == c.owner) {
                        l.owners.remove(i);
                    }
                    if l.owners.is_empty() {
                        self.listeners.remove(&port);
                    }
                }
                if after == listen {
                    self.listeners.entry(port).or_default().owners.push(c.owner);
                }
            }
        }
        let mut cw = None;
        if before == TcpState::CloseWait || after == TcpState::CloseWait {
            let (was, p) = (Profile::of_conn_in(c, before), Profile::of_conn(c));
            cw = self.close_wait_change(slot, Some(&was), Some(&p), links);
        }
        let candidate = |s: TcpState| {
            !matches!(s, TcpState::Listen | TcpState::Close) && c.opened != Some(Opened::Accepted)
        };
        let candidate = self.candidate_change(slot, links, candidate(before), candidate(after));
        (cw, candidate)
    }

    /// Slot `slot` joins or leaves the list of budget candidates (`was`,
    /// `is`); returns the entry moved into a removed one's place.
    fn candidate_change(&mut self, slot: Slot, links: &mut Links, was: bool, is: bool) -> Moved {
        match (was, is) {
            (false, true) => {
                links.candidate = self.candidates.len() as u32;
                self.candidates.push(slot);
                None
            }
            (true, false) => {
                let pos = std::mem::replace(&mut links.candidate, NONE);
                remove_from(&mut self.candidates, pos, |&s| s)
            }
            _ => None,
        }
    }

    fn close_wait_change(
        &mut self,
        slot: Slot,
        before: Option<&Profile>,
        after: Option<&Profile>,
        links: &mut Links,
    ) -> Moved {
        let cw = |p: Option<&Profile>| {
            p.filter(|p| p.full && p.state == TcpState::CloseWait)
                .copied()
        };
        let (b, a) = (cw(before), cw(after));
        // The peers are counted by process group: before's group is the
        // links' one until regrouped, so count them out first.
        let mut moved = None;
        if let Some(b) = b {
            let pos = links.cw;
            let group = self.close_wait.get(pos as usize).map(|i| i.pid_group);
            if let Some(g) = group {
                let k = (g, b.peer());
                if let Some(n) = self.close_wait_peers.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.close_wait_peers.remove(&k);
                    }
                }
            }
            if a.is_none() {
                links.cw = NONE;
                moved = remove_from(&mut self.close_wait, pos, |i| i.slot);
            }
        }
        if let Some(a) = a {
            let item = CloseWaitItem {
                slot,
                pid_group: links.pid,
                since_ns: a.since_ns,
                lower: a.lower,
                key: a.key,
            };
            match self.close_wait.get_mut(links.cw as usize) {
                Some(i) if b.is_some() => *i = item,
                _ => {
                    links.cw = self.close_wait.len() as u32;
                    self.close_wait.push(item);
                }
            }
            *self
                .close_wait_peers
                .entry((links.pid, a.peer()))
                .or_default() += 1;
        }
        moved
    }
}

/// Removes the item at `pos` by swapping the last one in: that one's
/// entry (named by `slot_of`) and its new place, for its links.
fn remove_from<T>(list: &mut Vec<T>, pos: u32, slot_of: impl Fn(&T) -> Slot) -> Moved {
    let pos = pos as usize;
    if pos >= list.len() {
        return None;
    }
    list.swap_remove(pos);
    list.get(pos).map(|moved| (slot_of(moved), pos as u32))
}

impl Links {
    /// Counted (every counted entry has a process group, if only `None`'s).
    pub(super) fn counted(&self) -> bool {
        self.pid != NONE
    }

    pub(super) fn set_cw(&mut self, pos: u32) {
        self.cw = pos;
    }

    pub(super) fn set_candidate(&mut self, pos: u32) {
        self.candidate = pos;
    }
}

/// A table entry and where it is counted.
#[derive(Clone, Debug)]
pub(super) struct Held<T> {
    pub v: T,
    pub links: Links,
}

impl<T> Held<T> {
    pub(super) fn new(v: T) -> Self {
        Self {
            v,
            links: Links::default(),
        }
    }
}

impl<T: super::slab::Identified> super::slab::Identified for Held<T> {
    fn id(&self) -> u64 {
        self.v.id()
    }
}

#[cfg(test)]
impl Live {
    /// The counts built from scratch over `conns` and `tws`, compared with
    /// these kept ones (and each entry's links checked): panics on a
    /// difference. For tests that run random event streams.
    pub(super) fn assert_matches<'a>(
        &self,
        conns: impl Iterator<Item = (Slot, &'a Held<Conn>)>,
        tws: impl Iterator<Item = (Slot, &'a Held<TwConn>)>,
    ) {
        let mut fresh = Live::default();
        let mut states = [0u64; 13];
        for (slot, h) in conns {
            let p = Profile::of_conn(&h.v);
            states[p.state as usize] += 1;
            let mut links = Links::default();
            let _ = fresh.change(slot, None, Some(&p), &mut links);
            if p.full && p.state == TcpState::CloseWait {
                let item = self.close_wait[h.links.cw as usize];
                assert_eq!(item.slot, slot, "links of {:?}", h.v);
                assert_eq!(self.by_pid.at(item.pid_group).key, p.pid());
            }
            if p.candidate {
                assert_eq!(self.candidates[h.links.candidate as usize], slot);
            }
        }
        for (slot, h) in tws {
            let p = Profile::of_tw(&h.v);
            states[p.state as usize] += 1;
            let mut links = Links::default();
            let _ = fresh.change(slot, None, Some(&p), &mut links);
        }
        assert_eq!(self.states, states, "states");
        assert_eq!(fresh.states, states);
        fn rows<K: Copy + Ord + Hash>(g: &Groups<K>) -> Vec<(K, [u32; 13], u32)> {
            let mut v: Vec<_> = g.iter().map(|r| (r.key, r.counts, r.total)).collect();
            v.sort_by_key(|a| a.0);
            v
        }
        assert_eq!(rows(&self.by_pid), rows(&fresh.by_pid), "by process");
        assert_eq!(rows(&self.by_port), rows(&fresh.by_port), "by port");
        assert_eq!(rows(&self.by_remote), rows(&fresh.by_remote), "by remote");
        let items = |l: &Live| {
            let mut v: Vec<_> = l
                .close_wait
                .iter()
                .map(|i| {
                    let pid = l.by_pid.at(i.pid_group).key;
                    (i.slot, pid, i.since_ns, i.lower, format!("{:?}", i.key))
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(items(self), items(&fresh), "close wait");
        let peers = |l: &Live| {
            let mut v: Vec<_> = l
                .close_wait_peers
                .iter()
                .map(|(&(g, peer), &n)| (l.by_pid.at(g).key, peer, n))
                .collect();
            v.sort();
            v
        };
        assert_eq!(peers(self), peers(&fresh), "close wait peers");
        let listeners = |l: &Live| {
            let mut v: Vec<_> = l
                .listeners
                .iter()
                .map(|(k, ls)| {
                    let mut o: Vec<String> = ls.owners.iter().map(|o| format!("{o:?}")).collect();
                    o.sort();
                    (*k, o)
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(listeners(self), listeners(&fresh), "listeners");
        let mut a = self.candidates.clone();
        let mut b = fresh.candidates.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "budget candidates");
    }
}
