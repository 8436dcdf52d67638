//! What the engine hands to `tcptrace top`: a [`TopData`] per refresh (the
//! stats snapshot, reshaped so that every screen reads only the rows it shows)
//! and a [`ConnPage`] whenever the connection list's sort or filter changes.
//!
//! Everything here is built on the engine side, off the render path, from
//! the counts the table keeps (never a walk of a million sockets: 2 ms per
//! refresh at 1M), and only for what is on screen: the connection page is a
//! selection of the top rows, the CLOSE_WAIT sockets are those of the
//! process opened. Pure: the clock and host facts come in as arguments.

use std::{
    cmp::{Ordering, Reverse},
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use super::filter::{RowFilter, RowView};
use crate::{
    alerts::{Alert, Alerter, Rules},
    conn::{Chunk, Closer, Conn, TwConn},
    engine::Engine,
    model::{Comm, TcpState},
    stats::{
        CloseWaitSocket, ClosedFirst, HistKind, HistSummary, HistogramsBy, HostFacts,
        KeyedHistograms, Snapshot, close_wait_sockets_of, keyed_histograms,
    },
};

/// CLOSE_WAIT sockets kept per process for the drill-down (oldest first).
pub const CLOSE_WAIT_SOCKETS_KEPT: usize = 5000;

/// Samples of state counts kept for the sparklines.
pub const HISTORY_SAMPLES: usize = 300;

/// States with a sparkline in the state panel, in display order.
pub const PANEL_STATES: [TcpState; 9] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::TimeWait,
    TcpState::Closing,
];

/// One refresh's state counts and transition rate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Live count per state, indexed by `state as usize - 1`.
    pub states: [u64; 12],
    pub transitions_per_sec: f64,
}

/// The last [`HISTORY_SAMPLES`] samples, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub samples: VecDeque<Sample>,
}

impl History {
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() == HISTORY_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// The last `n` values of one state, oldest first.
    pub fn series(&self, state: TcpState, n: usize) -> Vec<u64> {
        let skip = self.samples.len().saturating_sub(n);
        self.samples
            .iter()
            .skip(skip)
            .map(|s| s.states[state as usize - 1])
            .collect()
    }

    pub fn rate_series(&self, n: usize) -> Vec<u64> {
        let skip = self.samples.len().saturating_sub(n);
        self.samples
            .iter()
            .skip(skip)
            .map(|s| s.transitions_per_sec.round() as u64)
            .collect()
    }
}

/// How the connection list is ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConnSort {
    /// Oldest first.
    #[default]
    Age,
    /// By state, then oldest first.
    State,
    /// By process name and pid, then oldest first.
    Process,
    /// By remote address and port.
    Remote,
}

impl ConnSort {
    pub fn next(self) -> Self {
        match self {
            Self::Age => Self::State,
            Self::State => Self::Process,
            Self::Process => Self::Remote,
            Self::Remote => Self::Age,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Age => "age",
            Self::State => "state",
            Self::Process => "process",
            Self::Remote => "remote",
        }
    }
}

/// What the app asks of the engine beyond the periodic refresh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewRequest {
    /// Bumped on every change; answers carry it back.
    pub generation: u64,
    pub sort: ConnSort,
    pub filter: RowFilter,
    /// How many connection rows to send (the top of the sorted list).
    pub limit: usize,
    /// The process whose CLOSE_WAIT sockets are listed (`Some(None)`: those
    /// of no known owner); the engine sends only that list.
    pub close_wait_of: Option<Option<u32>>,
}

/// One live socket as the connection list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnRow {
    pub state: TcpState,
    /// A timewait socket (the kernel's separate TIME_WAIT object).
    pub timewait: bool,
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub netns: u32,
    /// Since the lifecycle began.
    pub age_ms: u64,
    pub age_is_lower_bound: bool,
    /// Since the current state was entered.
    pub state_age_ms: u64,
    pub state_age_is_lower_bound: bool,
    pub closer: Option<Closer>,
}

/// The first `limit` rows of the sorted, filtered connection list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnPage {
    pub generation: u64,
    pub rows: Vec<ConnRow>,
    /// Live sockets matching the filter (rows holds at most `limit` of them).
    pub matching: u64,
    /// Live sockets tracked.
    pub total: u64,
    /// The CLOSE_WAIT sockets of the process the request names, oldest
    /// first (at most [`CLOSE_WAIT_SOCKETS_KEPT`]).
    pub close_wait: Option<(Option<u32>, Vec<CloseWaitSocket>)>,
}

/// Which side a TIME_WAIT group is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TwSide {
    /// Connections a local service accepted: the server closed first.
    Service,
    /// Connections opened here, to a destination: ephemeral ports.
    Destination,
}

/// One row of the TIME_WAIT view: a local service or a destination.
#[derive(Clone, Debug, PartialEq)]
pub struct TwGroup {
    pub side: TwSide,
    /// The service's local address, or the destination's.
    pub addr: IpAddr,
    pub port: u16,
    /// A service's network namespace (destinations gather every
    /// namespace's connections to them: `None`).
    pub netns: Option<u32>,
    /// Whether another namespace has a service on the same ip:port, so the
    /// row must name its namespace.
    pub netns_shown: bool,
    pub count: u64,
    /// TIME_WAIT begun per second (last 10 s).
    pub rate_per_sec: f64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Destinations: the fullest port budget's share connect() cannot pick
    /// and its TIME_WAIT share (per namespace and local address).
    pub port_share: Option<f64>,
    pub time_wait_share: Option<f64>,
    /// TIME_WAIT durations seen (destinations; kept for the first peers
    /// seen, up to the keyed histogram cap).
    pub duration: Option<HistSummary>,
    /// Connections of this group that ended, by who closed first.
    pub closed_first: ClosedFirst,
}

impl TwGroup {
    /// The key the selection follows across refreshes.
    pub fn key(&self) -> (TwSide, Option<u32>, IpAddr, u16) {
        (self.side, self.netns, self.addr, self.port)
    }
}

/// Everything one screen refresh needs.
#[derive(Clone, Debug)]
pub struct TopData {
    pub uptime_ms: u64,
    /// All events (transitions and timewait begin/re-arm/end) per second.
    pub events_per_sec: f64,
    /// The stats snapshot (its `close_wait` list emptied: see
    /// `close_wait_sockets`).
    pub snap: Snapshot,
    /// The CLOSE_WAIT sockets of the process the request names
    /// ([`ViewRequest::close_wait_of`]), oldest first, at most
    /// [`CLOSE_WAIT_SOCKETS_KEPT`]: only the list on screen is built.
    pub close_wait_sockets: HashMap<Option<u32>, Vec<CloseWaitSocket>>,
    /// TIME_WAIT per local service and per destination, most first.
    pub tw_groups: Vec<TwGroup>,
    pub hists_by_process: Vec<KeyedHistograms>,
    pub hists_by_peer: Vec<KeyedHistograms>,
    pub history: History,
    pub conns: ConnPage,
    /// Alerts firing now under `watch`'s default rules, by rule.
    pub alerts: Vec<Alert>,
    /// Where a replay is (`top --from`); `None` when live.
    pub playback: Option<PlaybackStatus>,
}

impl TopData {
    /// The Listeners view's rows: every listener the engine's
    /// [`crate::listeners::ListenerTable`] knows, most drops first (empty
    /// when no listener data came: see [`Snapshot::listeners`]).
    pub fn listeners(&self) -> &[crate::listeners::ListenerRow] {
        self.snap.listeners.as_deref().unwrap_or_default()
    }
}

/// What the user asks of a replay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PlaybackCommand {
    TogglePlay,
    /// Move the clock by this many steps (negative: back).
    Step(i32),
    /// Multiply the speed.
    Speed(f64),
}

/// Where a replay is, for the header.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PlaybackStatus {
    /// The moment shown: wall clock (Unix ns) and time since the recording began.
    pub at_wall_ns: u64,
    pub at_ms: u64,
    /// Where the clock is going, when a seek is still catching up.
    pub target_ms: u64,
    pub playing: bool,
    pub speed: f64,
    pub catching_up: bool,
    /// The last record has been applied.
    pub ended: bool,
    /// The file ended early at this byte (damaged or cut).
    pub cut_at: Option<u64>,
}

/// Builds [`TopData`] from the engine, keeping the sparkline history.
#[derive(Debug)]
pub struct Feed {
    started_ns: u64,
    history: History,
    last_events: Option<(u64, u64)>,
    /// `watch`'s default rules, evaluated at every refresh for the alert strip.
    alerter: Alerter,
    /// Each process's workload, from the last snapshot the edge named
    /// ([`Feed::note_workloads`]), for the `/` filter on connections.
    workloads: WorkloadNames,
}

fn conn_row(c: &Conn, now: u64) -> ConnRow {
    ConnRow {
        state: c.state,
        timewait: false,
        pid: c.owner.map(|o| o.pid),
        comm: c.owner.map(|o| o.comm),
        saddr: c.key.saddr,
        sport: c.key.sport,
        daddr: c.key.daddr,
        dport: c.key.dport,
        netns: c.key.netns,
        age_ms: now.saturating_sub(c.born_ns) / 1_000_000,
        age_is_lower_bound: c.age_is_lower_bound(),
        state_age_ms: now.saturating_sub(c.state_since_ns) / 1_000_000,
        state_age_is_lower_bound: c.state_age_is_lower_bound(),
        closer: c.closer,
    }
}

fn tw_row(t: &TwConn, now: u64) -> ConnRow {
    let age = now.saturating_sub(t.start_ns) / 1_000_000;
    ConnRow {
        state: t.substate,
        timewait: true,
        pid: t.owner.map(|o| o.pid),
        comm: t.owner.map(|o| o.comm),
        saddr: t.key.saddr,
        sport: t.key.sport,
        daddr: t.key.daddr,
        dport: t.key.dport,
        netns: t.key.netns,
        age_ms: age,
        age_is_lower_bound: t.start_estimated,
        state_age_ms: age,
        state_age_is_lower_bound: t.start_estimated,
        closer: t.closer,
    }
}

/// A live socket of either kind, borrowed while sorting.
#[derive(Clone, Copy)]
enum Live<'a> {
    Full(&'a Conn),
    Tw(&'a TwConn),
}

impl Live<'_> {
    fn born(&self) -> u64 {
        match self {
            Live::Full(c) => c.born_ns,
            Live::Tw(t) => t.start_ns,
        }
    }
    fn state(&self) -> TcpState {
        match self {
            Live::Full(c) => c.state,
            Live::Tw(t) => t.substate,
        }
    }
    fn owner(&self) -> Option<crate::model::Owner> {
        match self {
            Live::Full(c) => c.owner,
            Live::Tw(t) => t.owner,
        }
    }
    fn key(&self) -> &crate::conn::TupleKey {
        match self {
            Live::Full(c) => &c.key,
            Live::Tw(t) => &t.key,
        }
    }
    fn row(&self, now: u64) -> ConnRow {
        match self {
            Live::Full(c) => conn_row(c, now),
            Live::Tw(t) => tw_row(t, now),
        }
    }
    fn matches(&self, f: &RowFilter, workloads: &WorkloadNames) -> bool {
        if f.is_empty() {
            return true;
        }
        let k = self.key();
        let owner = self.owner();
        // Only build the name when a term needs it: this runs per socket.
        let comm = f
            .needs_comm()
            .then(|| owner.map(|o| o.comm.to_str_lossy().into_owned()));
        let workload = f
            .needs_workload()
            .then(|| owner.and_then(|o| workloads.get(&o.pid).map(|w| &**w)));
        f.matches(&RowView {
            pid: Some(owner.map(|o| o.pid)),
            comm: comm.as_ref().map(|c| c.as_deref()),
            workload,
            saddr: Some(k.saddr),
            sport: Some(k.sport),
            daddr: Some(k.daddr),
            dport: Some(k.dport),
            state: Some(self.state()),
        })
    }
}

fn compare(sort: ConnSort, a: &Live<'_>, b: &Live<'_>) -> Ordering {
    // Ties broken by the tuple, so the order is total and pages are stable.
    let tuple = |l: &Live<'_>| {
        let k = l.key();
        (k.saddr, k.sport, k.daddr, k.dport, k.netns)
    };
    let oldest = a
        .born()
        .cmp(&b.born())
        .then_with(|| tuple(a).cmp(&tuple(b)));
    match sort {
        ConnSort::Age => oldest,
        ConnSort::State => (a.state() as u8).cmp(&(b.state() as u8)).then(oldest),
        ConnSort::Process => {
            let key = |l: &Live<'_>| l.owner().map(|o| (o.comm.0, o.pid));
            // Owned sockets first, then by name and pid.
            match (key(a), key(b)) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            }
            .then(oldest)
        }
        ConnSort::Remote => (a.key().daddr, a.key().dport)
            .cmp(&(b.key().daddr, b.key().dport))
            .then(oldest),
    }
}

/// The first `req.limit` rows of the sorted, filtered list of live sockets:
/// one pass over the table keeping the best candidates (most sockets are
/// turned away by one comparison with the worst kept), then a sort of
/// those only: O(live sockets + limit log limit), no list of every socket.
pub fn conn_page(engine: &Engine, req: &ViewRequest, now_ns: u64) -> ConnPage {
    conn_page_named(engine, req, now_ns, &WorkloadNames::default())
}

/// Each process's workload as shown (from the last snapshot the edge
/// named), for the `/` filter's workload terms on connection rows.
pub type WorkloadNames = rustc_hash::FxHashMap<u32, Box<str>>;

/// [`conn_page`] with the workloads of the owners, by pid.
pub fn conn_page_named(
    engine: &Engine,
    req: &ViewRequest,
    now_ns: u64,
    workloads: &WorkloadNames,
) -> ConnPage {
    let table = &engine.table;
    let limit = req.limit.max(1);
    let order = |a: &Live<'_>, b: &Live<'_>| compare(req.sort, a, b);
    let mut best = Best {
        kept: Vec::with_capacity(2 * limit),
        bar: None,
        limit,
        order: &order,
    };
    let mut matching = 0u64;
    if req.sort == ConnSort::Age && req.filter.is_empty() {
        // Oldest first, everything matches: the chunks in the order of the
        // oldest they may hold, until one may hold none older than the bar.
        matching = table.len() as u64;
        for (floor, chunk) in table.chunks_by_floor() {
            if best.bar.is_some_and(|b| floor > b.born()) {
                break;
            }
            match chunk {
                Chunk::Full(i) => table.chunk_conns(i).for_each(|c| best.offer(Live::Full(c))),
                Chunk::TimeWait(i) => table
                    .chunk_timewaits(i)
                    .for_each(|t| best.offer(Live::Tw(t))),
            }
        }
    } else {
        for l in table
            .conns()
            .map(Live::Full)
            .chain(table.timewaits().map(Live::Tw))
        {
            if l.matches(&req.filter, workloads) {
                matching += 1;
                best.offer(l);
            }
        }
    }
    let mut kept = best.kept;
    if kept.len() > limit {
        kept.select_nth_unstable_by(limit - 1, order);
        kept.truncate(limit);
    }
    kept.sort_unstable_by(order);
    ConnPage {
        generation: req.generation,
        rows: kept.iter().map(|l| l.row(now_ns)).collect(),
        matching,
        total: table.len() as u64,
        close_wait: req.close_wait_of.map(|pid| {
            (
                pid,
                close_wait_sockets_of(table, pid, now_ns, CLOSE_WAIT_SOCKETS_KEPT),
            )
        }),
    }
}

/// The best `limit` sockets offered so far (and up to as many more, until
/// the next selection).
struct Best<'a, 'o> {
    kept: Vec<Live<'a>>,
    /// The worst of the kept at the last selection: what a newcomer must beat.
    bar: Option<Live<'a>>,
    limit: usize,
    order: &'o dyn Fn(&Live<'_>, &Live<'_>) -> Ordering,
}

impl<'a> Best<'a, '_> {
    fn offer(&mut self, l: Live<'a>) {
        if self
            .bar
            .is_some_and(|b| (self.order)(&l, &b) != Ordering::Less)
        {
            return;
        }
        self.kept.push(l);
        if self.kept.len() == 2 * self.limit {
            let order = self.order;
            self.kept
                .select_nth_unstable_by(self.limit - 1, |a, b| order(a, b));
            self.kept.truncate(self.limit);
            self.bar = self.kept.iter().copied().max_by(|a, b| order(a, b));
        }
    }
}

impl Feed {
    pub fn new(started_ns: u64) -> Self {
        Self {
            started_ns,
            history: History::default(),
            last_events: None,
            alerter: Alerter::new(Rules::default()),
            workloads: WorkloadNames::default(),
        }
    }

    /// Keeps the workload of each process of `snap` (named by the edge:
    /// [`crate::stats::workloads::fold`]) for the next refreshes'
    /// connection filter. O(processes with sockets).
    pub fn note_workloads(&mut self, snap: &crate::stats::Snapshot) {
        self.workloads.clear();
        for p in &snap.by_process {
            if let (Some(pid), Some(w)) = (p.pid, p.workload.workload.as_deref()) {
                self.workloads.insert(pid, w.into());
            }
        }
    }

    /// The rule of each alert firing at the last refresh.
    pub fn firing_rules(&self) -> Vec<&'static str> {
        self.alerter.firing_rules()
    }

    /// A full refresh at monotonic `now_ns`.
    pub fn update(
        &mut self,
        engine: &mut Engine,
        req: &ViewRequest,
        now_ns: u64,
        wall_ns: u64,
        host: HostFacts,
    ) -> TopData {
        let mut snap = engine.snapshot(now_ns, wall_ns, host);
        let events = engine.aggs.events_total;
        let events_per_sec = match self.last_events {
            Some((t, n)) if now_ns > t => (events - n) as f64 * 1e9 / (now_ns - t) as f64,
            _ => snap.transitions_per_sec,
        };
        self.last_events = Some((now_ns, events));

        let mut sample = Sample {
            transitions_per_sec: snap.transitions_per_sec,
            ..Sample::default()
        };
        for s in TcpState::ALL {
            sample.states[s as usize - 1] = snap.states.get(s.name()).copied().unwrap_or(0);
        }
        self.history.push(sample);
        self.alerter.evaluate(&snap, now_ns, wall_ns);
        let alerts = self.alerter.firing().into_iter().cloned().collect();

        snap.close_wait.clear();
        let mut conns = conn_page_named(engine, req, now_ns, &self.workloads);
        let close_wait_sockets = conns.close_wait.take().into_iter().collect();

        let hists_by_process = keyed_histograms(&engine.aggs, HistogramsBy::Process);
        let hists_by_peer = keyed_histograms(&engine.aggs, HistogramsBy::Peer);
        let tw_groups = tw_groups(&snap, engine);

        TopData {
            uptime_ms: now_ns.saturating_sub(self.started_ns) / 1_000_000,
            events_per_sec,
            conns,
            snap,
            close_wait_sockets,
            tw_groups,
            hists_by_process,
            hists_by_peer,
            history: self.history.clone(),
            alerts,
            playback: None,
        }
    }
}

/// The TIME_WAIT view's rows: services (server closes first) and
/// destinations (this host closes first, using ephemeral ports), most
/// TIME_WAIT first.
fn tw_groups(snap: &Snapshot, engine: &Engine) -> Vec<TwGroup> {
    let mut namespaces_of: HashMap<(IpAddr, u16), u32> = HashMap::new();
    for s in &snap.time_wait_by_service {
        *namespaces_of.entry((s.saddr, s.sport)).or_default() += 1;
    }
    let services = snap.time_wait_by_service.iter().map(|s| TwGroup {
        side: TwSide::Service,
        addr: s.saddr,
        port: s.sport,
        netns: Some(s.netns),
        netns_shown: namespaces_of.get(&(s.saddr, s.sport)).copied() > Some(1),
        count: s.count,
        rate_per_sec: s.rate_per_sec,
        pid: s.pid,
        comm: s.comm.clone(),
        port_share: None,
        time_wait_share: None,
        duration: None,
        closed_first: s.closed_first,
    });
    // The fullest budget of each destination, in one pass.
    let mut fullest: HashMap<(IpAddr, u16), f64> = HashMap::new();
    for b in &snap.port_budgets {
        let r = fullest.entry((b.daddr, b.dport)).or_insert(b.in_use_ratio);
        *r = r.max(b.in_use_ratio);
    }
    let destinations = snap.time_wait_by_peer.iter().map(|p| {
        let worst = fullest.get(&(p.daddr, p.dport)).copied();
        TwGroup {
            side: TwSide::Destination,
            addr: p.daddr,
            port: p.dport,
            netns: None,
            netns_shown: false,
            count: p.count,
            rate_per_sec: p.rate_per_sec,
            pid: p.pid,
            comm: p.comm.clone(),
            port_share: Some(worst.unwrap_or(0.0)),
            time_wait_share: Some(p.port_range_ratio),
            duration: engine
                .aggs
                .by_peer
                .get(&(p.daddr, p.dport))
                .map(|h| h.summary(HistKind::TimeWait))
                .filter(|s| s.count > 0),
            closed_first: p.closed_first,
        }
    });
    let mut groups: Vec<TwGroup> = services.chain(destinations).collect();
    rank_tw_groups(&mut groups);
    groups
}

/// Groups ranked by TIME_WAIT count, then address: the default order.
pub fn rank_tw_groups(groups: &mut [TwGroup]) {
    groups.sort_by_key(|g| {
        (
            Reverse(g.count),
            g.addr,
            g.port,
            g.side == TwSide::Destination,
        )
    });
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{Event, EventKind, Family, Owner};

    const MS: u64 = 1_000_000;

    fn ev(ts: u64, sk: u64, old: TcpState, new: TcpState, sport: u16, pid: u32) -> Event {
        Event {
            ts_ns: ts,
            kind: EventKind::Transition,
            sk,
            link: None,
            owner: Some(Owner {
                pid,
                tid: pid,
                comm: Comm::from_name(&format!("p{pid}")),
                cgroup: 0,
                from_listener: false,
            }),
            netns: Some(1),
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport,
            daddr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            dport: 80,
            old: Some(old),
            new,
            prev_ns: None,
            reason: None,
            stack: None,
        }
    }

    fn engine_with(n: u64) -> Engine {
        let mut e = Engine::new(100_000);
        for i in 0..n {
            let st = if i % 3 == 0 {
                TcpState::CloseWait
            } else {
                TcpState::Established
            };
            e.apply(&ev(
                i * MS,
                0x1000 + i,
                TcpState::SynRecv,
                st,
                1000 + i as u16,
                10 + (i % 4) as u32,
            ));
        }
        e
    }

    #[test]
    fn page_is_the_top_of_the_full_sort() {
        let e = engine_with(500);
        for sort in [
            ConnSort::Age,
            ConnSort::State,
            ConnSort::Process,
            ConnSort::Remote,
        ] {
            let full = conn_page(
                &e,
                &ViewRequest {
                    sort,
                    limit: 10_000,
                    ..ViewRequest::default()
                },
                1000 * MS,
            );
            let top = conn_page(
                &e,
                &ViewRequest {
                    sort,
                    limit: 37,
                    ..ViewRequest::default()
                },
                1000 * MS,
            );
            assert_eq!(full.rows.len(), 500);
            assert_eq!((top.rows.len(), top.matching, top.total), (37, 500, 500));
            assert_eq!(top.rows[..], full.rows[..37], "{sort:?}");
        }
        let oldest = conn_page(
            &e,
            &ViewRequest {
                limit: 1,
                ..ViewRequest::default()
            },
            1000 * MS,
        );
        assert_eq!(oldest.rows[0].sport, 1000);
        assert_eq!(oldest.rows[0].age_ms, 1000);
    }

    /// Oldest first with no filter reads only the chunks that may hold
    /// the oldest: the same page as sorting every socket, however births
    /// are spread over the table's chunks (and timewait sockets mixed in).
    #[test]
    fn oldest_page_reads_few_chunks_and_is_the_top_of_the_full_sort() {
        let mut e = Engine::new(100_000);
        // Born in a scrambled order over several chunks; some end.
        for i in 0..7_000u64 {
            let born = (i * 7_919) % 7_000 * MS;
            let mut ev = ev(
                born,
                0x10_0000 + i,
                TcpState::Close,
                TcpState::SynSent,
                0,
                10,
            );
            ev.dport = (i % 50) as u16;
            e.apply(&ev);
            if i % 3 == 0 {
                e.apply(&ev_tw(born + 5, 0x90_0000 + i, 40_000 + (i % 1000) as u16));
            }
            if i % 5 == 0 {
                e.apply(&Event {
                    old: Some(TcpState::SynSent),
                    new: TcpState::Close,
                    ..ev
                });
            }
        }
        let now = 10_000 * MS;
        let all = |e: &Engine| {
            let mut live: Vec<Live<'_>> = e
                .table
                .conns()
                .map(Live::Full)
                .chain(e.table.timewaits().map(Live::Tw))
                .collect();
            live.sort_by(|a, b| compare(ConnSort::Age, a, b));
            live.iter().map(|l| l.row(now)).collect::<Vec<_>>()
        };
        let full = all(&e);
        for limit in [1, 37, 1000, 20_000] {
            let page = conn_page(
                &e,
                &ViewRequest {
                    limit,
                    ..ViewRequest::default()
                },
                now,
            );
            assert_eq!(page.matching, full.len() as u64);
            assert_eq!(
                page.rows[..],
                full[..limit.min(full.len())],
                "limit {limit}"
            );
        }
    }

    fn ev_tw(ts: u64, sk: u64, sport: u16) -> Event {
        Event {
            kind: EventKind::TwBegin,
            old: Some(TcpState::FinWait2),
            new: TcpState::TimeWait,
            ..ev(ts, sk, TcpState::FinWait2, TcpState::TimeWait, sport, 7)
        }
    }

    #[test]
    fn page_applies_the_filter() {
        let e = engine_with(90);
        let req = ViewRequest {
            filter: RowFilter::parse("close_wait pid:10").unwrap(),
            limit: 1000,
            ..ViewRequest::default()
        };
        let page = conn_page(&e, &req, 100 * MS);
        // CLOSE_WAIT: i % 3 == 0; pid 10: i % 4 == 0; both: i % 12 == 0.
        assert_eq!(page.matching, 8);
        assert!(
            page.rows
                .iter()
                .all(|r| r.state == TcpState::CloseWait && r.pid == Some(10))
        );
    }

    #[test]
    fn update_groups_close_wait_and_keeps_history() {
        let mut e = engine_with(30);
        let mut feed = Feed::new(0);
        let req = ViewRequest {
            limit: 5,
            ..ViewRequest::default()
        };
        let d = feed.update(&mut e, &req, 40 * MS, 40 * MS, HostFacts::default());
        assert!(d.snap.close_wait.is_empty());
        assert!(d.close_wait_sockets.is_empty(), "no process asked for");
        assert_eq!(d.conns.rows.len(), 5);
        // A process asked for: its sockets, oldest first.
        for pid in [10, 11, 12, 13] {
            let req = ViewRequest {
                close_wait_of: Some(Some(pid)),
                ..req.clone()
            };
            let d = feed.update(&mut e, &req, 40 * MS, 40 * MS, HostFacts::default());
            let list = &d.close_wait_sockets[&Some(pid)];
            // CLOSE_WAIT: i % 3 == 0; this pid: i % 4 == pid - 10.
            let want = (0..30).filter(|i| i % 3 == 0 && i % 4 == u64::from(pid) - 10);
            assert_eq!(list.len(), want.count());
            assert!(list.windows(2).all(|w| w[0].age_ms >= w[1].age_ms));
            assert!(list.iter().all(|s| s.pid == Some(pid)));
            assert!(d.conns.close_wait.is_none(), "moved to close_wait_sockets");
        }
        let d = feed.update(&mut e, &req, 50 * MS, 50 * MS, HostFacts::default());
        assert_eq!(
            d.history.series(TcpState::CloseWait, 10),
            vec![10, 10, 10, 10, 10, 10]
        );
        assert_eq!(d.history.series(TcpState::Established, 1), vec![20]);
    }
}
