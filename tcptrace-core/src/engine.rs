//! The engine: the connection table plus the aggregates, driven by decoded
//! events and snapshots. Pure and deterministic: every timestamp comes in
//! with its input.

use crate::{
    conn::{ConnTable, Finished},
    model::{Event, SeenSocket},
    stats::{Aggregates, Batch, Deferred, HistKind, Snapshot, SnapshotInput, build},
};

pub struct Engine {
    pub table: ConnTable,
    pub aggs: Aggregates,
    /// Transitions applied since the last snapshot (for the rate).
    since_snapshot: u64,
    last_snapshot_ns: Option<u64>,
    /// Keyed histograms to include in snapshots.
    pub histograms_by: crate::stats::HistogramsBy,
    /// A sock_diag snapshot has been taken in (the next ones reconcile).
    seeded: bool,
    /// Each network namespace's TCP sysctls, from the latest snapshot that
    /// carried them.
    pub facts: crate::netfacts::NetFacts,
    /// The first input's time: what rates over a window shorter than
    /// their own are measured over.
    pub started_ns: Option<u64>,
    /// Lifecycles one event ended, reused from event to event.
    finished: Vec<Finished>,
    /// Durations and ends left for another thread (see
    /// [`Self::defer_aggregates`]), and what is ready to go.
    batch: Option<Batch>,
    deferred: Vec<Deferred>,
    /// Emptied batches back from the aggregating thread, to fill again.
    spare: Vec<Batch>,
    /// Names of user stacks (`--stacks`; `enabled` puts them in snapshots).
    pub stacks: crate::stacks::StackTable,
    /// Listeners, their accept queues and the connection attempts dropped
    /// at them ([`crate::listeners`]).
    pub listeners: crate::listeners::ListenerTable,
}

impl Engine {
    pub fn new(cap: usize) -> Self {
        Self {
            table: ConnTable::new(cap),
            aggs: Aggregates::default(),
            since_snapshot: 0,
            last_snapshot_ns: None,
            histograms_by: crate::stats::HistogramsBy::None,
            seeded: false,
            facts: crate::netfacts::NetFacts::default(),
            started_ns: None,
            finished: Vec::new(),
            batch: None,
            deferred: Vec::new(),
            spare: Vec::new(),
            stacks: crate::stacks::StackTable::default(),
            listeners: Default::default(),
        }
    }

    /// On: durations and ends are not aggregated here but kept, in order,
    /// for another thread ([`Self::take_deferred`], [`Aggregates::take`]),
    /// which merges them back with [`Aggregates::merge_counts`]; `aggs`
    /// keeps only the event counts and the CLOSE_WAIT history meanwhile.
    /// Only with durations not kept per owner and peer (`report`). Off:
    /// aggregated here again (what was deferred must have been taken).
    pub fn defer_aggregates(&mut self, on: bool) {
        debug_assert!(!on || !self.aggs.keyed);
        self.batch = on.then(Batch::default);
        self.deferred.clear();
    }

    /// What was deferred since the last call, in order.
    pub fn take_deferred(&mut self) -> Vec<Deferred> {
        self.close_batch();
        std::mem::take(&mut self.deferred)
    }

    /// A batch back from the aggregating thread, emptied: filled again
    /// rather than grown anew.
    pub fn reuse(&mut self, b: Batch) {
        self.spare.push(b);
    }

    fn close_batch(&mut self) {
        if let Some(b) = &mut self.batch
            && !(b.durations.is_empty() && b.finished.is_empty())
        {
            let next = self.spare.pop().unwrap_or_default();
            self.deferred
                .push(Deferred::Batch(std::mem::replace(b, next)));
        }
    }

    /// Aggregates start again (a report window's start): here, and where
    /// they are deferred to.
    pub fn reset_aggregates(&mut self) {
        let keyed = self.aggs.keyed;
        self.aggs = Aggregates::default();
        self.aggs.keyed = keyed;
        if self.batch.is_some() {
            self.close_batch();
            self.deferred.push(Deferred::Reset);
        }
    }

    /// A sock_diag snapshot, the one way every source's are taken in: the
    /// first seeds the table, the later ones reconcile it.
    pub fn take_sockets(&mut self, sockets: &[SeenSocket], namespaces: &[u32], taken_at_ns: u64) {
        self.started_ns.get_or_insert(taken_at_ns);
        if self.seeded {
            self.reconcile(sockets, namespaces, taken_at_ns);
        } else {
            self.seed(sockets, taken_at_ns);
        }
    }

    fn fold(&mut self, finished: &mut Vec<Finished>) {
        match &mut self.batch {
            Some(b) => b.finished.append(finished),
            None => {
                // By reference: a lifecycle that ended is read, not moved.
                for f in finished.iter() {
                    self.aggs.on_finished(f);
                }
                finished.clear();
            }
        }
    }

    pub fn apply(&mut self, e: &Event) {
        self.started_ns.get_or_insert(e.ts_ns);
        self.aggs.on_event(e);
        if e.kind == crate::model::EventKind::Transition {
            self.since_snapshot += 1;
        }
        let mut finished = std::mem::take(&mut self.finished);
        if let Some(d) = self.table.apply_into(e, &mut finished) {
            match &mut self.batch {
                Some(b) => {
                    if let Some(kind) = HistKind::of_duration(&d) {
                        b.durations.push((kind, d.ns));
                    }
                }
                None => self.aggs.on_duration(&d),
            }
        }
        if !finished.is_empty() {
            self.fold(&mut finished);
        }
        self.finished = finished;
    }

    pub fn seed(&mut self, sockets: &[SeenSocket], taken_at_ns: u64) {
        self.seeded = true;
        let mut finished = self.table.seed(sockets, taken_at_ns);
        self.fold(&mut finished);
    }

    pub fn reconcile(&mut self, sockets: &[SeenSocket], namespaces: &[u32], taken_at_ns: u64) {
        let mut finished = self.table.reconcile(sockets, namespaces, taken_at_ns);
        self.fold(&mut finished);
    }

    /// A snapshot for a metrics scrape: like [`Self::snapshot`] but with no
    /// transition rate, so scrapes do not shorten the window of the rate
    /// the commands print.
    pub fn scrape_snapshot(
        &mut self,
        now_ns: u64,
        wall_ns: u64,
        host: crate::stats::HostFacts,
    ) -> Snapshot {
        self.build_snapshot(now_ns, wall_ns, host, 0.0, crate::stats::HistogramsBy::None)
    }

    /// A snapshot at monotonic `now_ns`; the transition rate covers the time
    /// since the previous snapshot.
    pub fn snapshot(
        &mut self,
        now_ns: u64,
        wall_ns: u64,
        host: crate::stats::HostFacts,
    ) -> Snapshot {
        let rate = match self.last_snapshot_ns {
            Some(prev) if now_ns > prev => {
                self.since_snapshot as f64 * 1e9 / (now_ns - prev) as f64
            }
            _ => 0.0,
        };
        self.since_snapshot = 0;
        self.last_snapshot_ns = Some(now_ns);
        self.build_snapshot(now_ns, wall_ns, host, rate, self.histograms_by)
    }

    fn build_snapshot(
        &mut self,
        now_ns: u64,
        wall_ns: u64,
        host: crate::stats::HostFacts,
        transitions_per_sec: f64,
        histograms_by: crate::stats::HistogramsBy,
    ) -> Snapshot {
        self.table.counts();
        build(
            &self.table,
            &mut self.aggs,
            &SnapshotInput {
                now_ns,
                wall_ns,
                host,
                transitions_per_sec,
                histograms_by,
                facts: &self.facts,
                since_ns: self.started_ns.unwrap_or(now_ns),
                stacks: self.stacks.enabled.then_some(&self.stacks),
                listeners: Some(&self.listeners),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::{
        conn::EndReason,
        model::{Comm, EventKind, Family, Owner, SeenOwner, TcpState, TcpState::*, TwEndReason},
        stats::HostFacts,
    };

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            tid: pid,
            comm: Comm::from_name(&format!("app{pid}")),
            cgroup: 1,
            from_listener: false,
        }
    }

    /// A transition of socket `sk` (local 10.0.0.1:sport -> 10.0.0.2:dport).
    fn tr(ts: u64, sk: u64, old: TcpState, new: TcpState, sport: u16, dport: u16) -> Event {
        Event {
            ts_ns: ts,
            kind: EventKind::Transition,
            sk,
            link: None,
            owner: Some(owner(100)),
            netns: Some(1),
            family: Family::V4,
            saddr: ip(1),
            sport,
            daddr: ip(2),
            dport,
            old: Some(old),
            new,
            prev_ns: None,
            reason: None,
            stack: None,
        }
    }

    fn tw(ts: u64, kind: EventKind, tw: u64, link: Option<u64>, sport: u16, dport: u16) -> Event {
        Event {
            kind,
            link,
            old: Some(if kind == EventKind::TwEnd {
                TimeWait
            } else {
                FinWait2
            }),
            new: if kind == EventKind::TwEnd {
                Close
            } else {
                TimeWait
            },
            reason: (kind == EventKind::TwEnd).then_some(TwEndReason::Expired),
            ..tr(ts, tw, FinWait2, TimeWait, sport, dport)
        }
    }

    fn host() -> HostFacts {
        HostFacts {
            port_range: (32768, 60999),
            ..HostFacts::default()
        }
    }

    fn client_active_close(e: &mut Engine, t0: u64, sk: u64, twsk: u64, sport: u16) {
        e.apply(&tr(t0, sk, Close, SynSent, 0, 80));
        e.apply(&tr(t0 + MS, sk, SynSent, Established, sport, 80));
        e.apply(&tr(t0 + 11 * MS, sk, Established, FinWait1, sport, 80));
        e.apply(&tr(t0 + 12 * MS, sk, FinWait1, FinWait2, sport, 80));
        e.apply(&tw(
            t0 + 13 * MS,
            EventKind::TwBegin,
            twsk,
            Some(sk),
            sport,
            80,
        ));
        e.apply(&tr(t0 + 13 * MS, sk, FinWait2, Close, sport, 80));
    }

    #[test]
    fn active_close_lifecycle_becomes_time_wait_then_aggregates() {
        let mut e = Engine::new(1000);
        client_active_close(&mut e, SEC, 0xa, 0xb, 40000);
        assert!(
            e.table.conn(0xa).is_none(),
            "finished lifecycles are dropped"
        );
        let t = e.table.timewait(0xb).expect("timewait tracked");
        assert_eq!(t.owner.unwrap().pid, 100);
        assert_eq!(t.from_sk.map(|s| s.get()), Some(0xa));
        let snap = e.snapshot(2 * SEC, 2 * SEC, host());
        assert_eq!(snap.states["TIME_WAIT"], 1);
        assert_eq!(snap.time_wait_by_peer[0].count, 1);
        assert_eq!(
            (
                snap.time_wait_by_peer[0].daddr,
                snap.time_wait_by_peer[0].dport
            ),
            (ip(2), 80)
        );
        assert!((snap.time_wait_by_peer[0].port_range_ratio - 1.0 / 28232.0).abs() < 1e-9);
        assert_eq!(snap.histograms["handshake_connect"].count, 1);
        assert!((snap.histograms["handshake_connect"].p50_ms - 1.0).abs() < 0.02);
        assert!((snap.histograms["established"].p50_ms - 10.0).abs() < 0.2);
        assert_eq!(snap.histograms["lifetime"].count, 1);
        assert_eq!(snap.closers["active"], 1);
        assert_eq!(snap.ended["time_wait"], 1);
        assert!(snap.histograms_by.is_empty());
        e.histograms_by = crate::stats::HistogramsBy::Process;
        let snap = e.snapshot(2 * SEC, 2 * SEC, host());
        assert_eq!(snap.histograms_by[0].pid, Some(100));
        assert_eq!(
            snap.histograms_by[0].histograms["handshake_connect"].count,
            1
        );
        e.histograms_by = crate::stats::HistogramsBy::Peer;
        let snap = e.snapshot(2 * SEC, 2 * SEC, host());
        assert_eq!(snap.histograms_by[0].daddr, Some(ip(2)));
        assert_eq!(snap.histograms_by[0].dport, Some(80));
        e.histograms_by = crate::stats::HistogramsBy::None;

        let mut end = tw(SEC + 61 * SEC, EventKind::TwEnd, 0xb, None, 40000, 80);
        end.prev_ns = Some(61 * SEC - 13 * MS);
        e.apply(&end);
        assert!(e.table.is_empty());
        let snap = e.snapshot(70 * SEC, 70 * SEC, host());
        assert_eq!(snap.states["TIME_WAIT"], 0);
        let h = snap.histograms["time_wait"];
        assert_eq!(h.count, 1);
        assert!((h.max_ms / 1000.0 - 61.0).abs() < 1.0, "{h:?}");
        assert_eq!(snap.ended["time_wait_expired"], 1);
    }

    #[test]
    fn passive_close_counts_close_wait_with_age_and_growth() {
        let mut e = Engine::new(1000);
        // A server leaks 10 connections a minute for 2 minutes.
        let mut t = SEC;
        let mut samples = Vec::new();
        for minute in 0..3u64 {
            for i in 0..10u64 {
                let sk = 0x1000 + minute * 100 + i;
                let port = 50000 + (minute * 100 + i) as u16;
                e.apply(&tr(t, sk, Listen, SynRecv, 5432, port));
                e.apply(&tr(t + MS, sk, SynRecv, Established, 5432, port));
                e.apply(&tr(t + 2 * MS, sk, Established, CloseWait, 5432, port));
            }
            samples.push(e.snapshot(t + 3 * MS, t, host()));
            t += 60 * SEC;
        }
        let snap = samples.last().unwrap();
        assert_eq!(snap.states["CLOSE_WAIT"], 30);
        assert_eq!(snap.close_wait.len(), 30);
        assert!(
            snap.close_wait
                .windows(2)
                .all(|w| w[0].age_ms >= w[1].age_ms),
            "oldest first"
        );
        assert_eq!(snap.close_wait[0].age_ms, 120_001);
        assert!(!snap.close_wait[0].age_is_lower_bound);
        let p = &snap.close_wait_by_process[0];
        assert_eq!((p.pid, p.count), (Some(100), 30));
        assert!((p.growth_per_min - 10.0).abs() < 0.01, "{p:?}");
        assert!((p.growth_per_min_5m - 10.0).abs() < 0.01, "{p:?}");
        assert_eq!(
            snap.closers.get("passive"),
            None,
            "still open: not finished"
        );
    }

    #[test]
    fn a_new_leak_grows_from_zero_over_the_span_measured() {
        let mut e = Engine::new(1000);
        // Sampled at 1 s with no CLOSE_WAIT; 20 appear between 5 and 10 s.
        let _ = e.snapshot(SEC, SEC, host());
        for i in 0..20u64 {
            let sk = 0x1000 + i;
            let port = 50000 + i as u16;
            let t = 5 * SEC + i * 250 * MS;
            e.apply(&tr(t, sk, Listen, SynRecv, 5432, port));
            e.apply(&tr(t + MS, sk, SynRecv, Established, 5432, port));
            e.apply(&tr(t + 2 * MS, sk, Established, CloseWait, 5432, port));
        }
        let snap = e.snapshot(10 * SEC, 10 * SEC, host());
        let p = &snap.close_wait_by_process[0];
        assert_eq!((p.count, p.growth_delta, p.growth_span_ms), (20, 20, 9_000));
        assert_eq!((p.growth_delta_5m, p.growth_span_5m_ms), (20, 9_000));
        assert_eq!(
            crate::clock::fmt_growth(p.growth_delta_5m, p.growth_span_5m_ms, 300_000),
            "+20 in 9.0s"
        );
        assert!(p.growth_per_min > 0.0, "not +0.0/m");
    }

    #[test]
    fn reused_socket_address_starts_a_new_lifecycle() {
        let mut e = Engine::new(1000);
        e.apply(&tr(SEC, 0xa, Close, SynSent, 0, 80));
        e.apply(&tr(SEC + MS, 0xa, SynSent, Established, 1111, 80));
        // The CLOSE was lost; the address is reused by a new connect().
        e.apply(&tr(2 * SEC, 0xa, Close, SynSent, 0, 443));
        e.apply(&tr(2 * SEC + MS, 0xa, SynSent, Established, 2222, 443));
        let c = e.table.conn(0xa).unwrap();
        assert_eq!((c.key.sport, c.key.dport), (2222, 443));
        assert_eq!(c.born_ns, 2 * SEC);
        assert_eq!(e.aggs.ended[&EndReason::Dropped], 1);
        assert_eq!(e.table.len(), 1);
    }

    #[test]
    fn refused_and_timed_out_connects_are_told_apart() {
        let mut e = Engine::new(1000);
        e.apply(&tr(SEC, 0xa, Close, SynSent, 0, 80));
        e.apply(&tr(SEC + MS, 0xa, SynSent, Close, 1, 80));
        e.apply(&tr(SEC, 0xb, Close, SynSent, 0, 81));
        e.apply(&tr(4 * SEC, 0xb, SynSent, Close, 2, 81));
        assert_eq!(e.aggs.ended[&EndReason::Refused], 1);
        assert_eq!(e.aggs.ended[&EndReason::Timeout], 1);
        // No local port chosen (sport 0 at SYN_SENT -> CLOSE): EADDRNOTAVAIL.
        e.apply(&tr(5 * SEC, 0xc, Close, SynSent, 0, 82));
        e.apply(&tr(5 * SEC + 1000, 0xc, SynSent, Close, 0, 82));
        assert_eq!(e.aggs.ended[&EndReason::NoPort], 1);
        let by_dest = |port: u16| {
            e.aggs
                .failed_connects
                .iter()
                .find(|(k, _)| k.1 == port)
                .map(|(_, f)| (f.refused, f.timeout, f.no_port))
        };
        assert_eq!(by_dest(80), Some((1, 0, 0)));
        assert_eq!(by_dest(81), Some((0, 1, 0)));
        assert_eq!(by_dest(82), Some((0, 0, 1)));
    }

    #[test]
    fn unknown_socket_mid_life_uses_the_kernels_prev_duration() {
        let mut e = Engine::new(1000);
        let mut ev = tr(10 * SEC, 0xa, Established, CloseWait, 80, 5000);
        ev.prev_ns = Some(3 * SEC);
        e.apply(&ev);
        assert_eq!(e.table.counters.unknown_sockets, 1);
        let c = e.table.conn(0xa).unwrap();
        assert!(c.age_is_lower_bound());
        assert_eq!(c.born_ns, 7 * SEC);
        assert_eq!(
            e.aggs
                .all
                .summary(crate::stats::HistKind::Established)
                .count,
            1
        );
    }

    fn seen(state: TcpState, sport: u16, dport: u16, pid: Option<u32>) -> SeenSocket {
        SeenSocket {
            netns: Some(1),
            family: Family::V4,
            saddr: ip(1),
            sport,
            daddr: ip(2),
            dport,
            state,
            inode: 9,
            owner: pid.map(|pid| SeenOwner {
                pid,
                comm: Comm::from_name("db"),
            }),
            timer_left_ms: (state == TimeWait).then_some(45_000),
            cookie: 0,
            cgroup: None,
        }
    }

    #[test]
    fn seeded_sockets_have_lower_bound_ages_and_are_adopted_by_events() {
        let mut e = Engine::new(1000);
        e.seed(
            &[
                seen(CloseWait, 5432, 6000, Some(7)),
                seen(TimeWait, 6001, 80, None),
                seen(SynRecv, 5432, 6002, None),
            ],
            100 * SEC,
        );
        assert_eq!(e.table.len(), 2, "request sockets are not seeded");
        let snap = e.snapshot(160 * SEC, 160 * SEC, host());
        let cw = &snap.close_wait[0];
        assert_eq!(
            (cw.pid, cw.age_ms, cw.age_is_lower_bound),
            (Some(7), 60_000, true)
        );
        let t = e.table.timewaits().next().unwrap();
        assert_eq!(t.start_ns, 85 * SEC, "start follows from the timer left");

        // The leak's owner finally closes: the event adopts the seeded entry.
        let mut ev = tr(170 * SEC, 0xdead, CloseWait, LastAck, 5432, 6000);
        ev.owner = None;
        e.apply(&ev);
        let c = e
            .table
            .conn(0xdead)
            .expect("adopted under its real address");
        assert_eq!(c.owner.unwrap().pid, 7);
        assert!(c.age_is_lower_bound());
        assert_eq!(e.table.len(), 2);
    }

    /// A socket of a snapshot in `cgroup` (sock_diag's cgroup id).
    fn seen_in(state: TcpState, sport: u16, pid: Option<u32>, cgroup: Option<u64>) -> SeenSocket {
        SeenSocket {
            cgroup,
            ..seen(state, sport, 7000 + sport, pid)
        }
    }

    #[test]
    fn seeded_sockets_count_under_their_sock_diag_cgroup() {
        use crate::stats::workloads::WorkloadKey;
        let mut e = Engine::new(1000);
        e.seed(
            &[
                // An owner found: its owner is in the socket's cgroup.
                seen_in(CloseWait, 1, Some(7), Some(63)),
                // No owner found (an orphan, a process out of sight).
                seen_in(CloseWait, 2, None, Some(64)),
                seen_in(CloseWait, 3, None, Some(64)),
                // Nothing known at all.
                seen_in(CloseWait, 4, None, None),
                // Established now, CLOSE_WAIT once an event says so.
                seen_in(Established, 5, None, Some(65)),
                // TIME_WAIT: the kernel sends no cgroup; none is kept.
                seen_in(TimeWait, 6, None, Some(66)),
            ],
            100 * SEC,
        );
        let cgroup_of = |e: &Engine, sport: u16| {
            let c = e.table.conns().find(|c| c.key.sport == sport).unwrap();
            e.table.cgroup_of(c)
        };
        assert_eq!(
            e.table
                .conns()
                .find(|c| c.key.sport == 1)
                .unwrap()
                .owner
                .unwrap()
                .cgroup,
            63
        );
        assert_eq!(
            [1, 2, 3, 4, 5].map(|p| cgroup_of(&e, p)),
            [63, 64, 64, 0, 65]
        );
        assert_eq!(
            e.table.seeded_cgroups(),
            3,
            "only ownerless sockets need an entry"
        );

        // The leak's socket moves to CLOSE_WAIT: the event (no owner: the
        // kernel never saw the socket open) adopts the seeded entry, which
        // keeps its cgroup under the real address.
        let mut ev = tr(110 * SEC, 0xbeef, Established, CloseWait, 5, 7005);
        ev.owner = None;
        e.apply(&ev);
        assert_eq!(e.table.cgroup_of(e.table.conn(0xbeef).unwrap()), 65);

        let snap = e.snapshot(160 * SEC, 160 * SEC, host());
        let keys: Vec<(WorkloadKey, u64)> = snap
            .close_wait_keys
            .iter()
            .map(|k| (k.key, k.count))
            .collect();
        assert_eq!(
            keys,
            [
                (WorkloadKey::Cgroup(63), 1),
                (WorkloadKey::Cgroup(64), 2),
                (WorkloadKey::Cgroup(65), 1),
                (WorkloadKey::Unknown, 1),
            ]
        );
        // The process rows stay as they were: pid 7 under its cgroup, the
        // row of unknown owners under no workload.
        let rows: Vec<(Option<u32>, u64, WorkloadKey)> = snap
            .close_wait_by_process
            .iter()
            .map(|r| (r.pid, r.count, r.key))
            .collect();
        assert_eq!(
            rows,
            [
                (None, 4, WorkloadKey::Unknown),
                (Some(7), 1, WorkloadKey::Cgroup(63)),
            ]
        );

        // Closed: the entry goes with the socket.
        let mut last = tr(170 * SEC, 0xbeef, CloseWait, LastAck, 5, 7005);
        last.owner = None;
        e.apply(&last);
        let mut gone = tr(171 * SEC, 0xbeef, LastAck, Close, 5, 7005);
        gone.owner = None;
        e.apply(&gone);
        assert!(e.table.conn(0xbeef).is_none());
        assert_eq!(e.table.seeded_cgroups(), 2);

        // A later snapshot finds the owner of port 2: in the socket's cgroup.
        e.reconcile(
            &[
                seen_in(CloseWait, 1, Some(7), Some(63)),
                seen_in(CloseWait, 2, Some(8), Some(64)),
                seen_in(CloseWait, 3, None, Some(64)),
                seen_in(CloseWait, 4, None, None),
            ],
            &[1],
            200 * SEC,
        );
        let o = e
            .table
            .conns()
            .find(|c| c.key.sport == 2)
            .unwrap()
            .owner
            .unwrap();
        assert_eq!((o.pid, o.cgroup), (8, 64));
    }

    #[test]
    fn seeded_duplicate_of_a_live_event_is_dropped() {
        let mut e = Engine::new(1000);
        e.apply(&tr(SEC, 0xa, Close, SynSent, 0, 80));
        e.seed(&[seen(Established, 1234, 80, Some(100))], 2 * SEC);
        e.apply(&tr(SEC + 1, 0xa, SynSent, Established, 1234, 80));
        assert_eq!(e.table.len(), 1);
    }

    #[test]
    fn reconcile_removes_ghosts_adds_missing_fixes_states() {
        let mut e = Engine::new(1000);
        e.apply(&tr(SEC, 0xa, Close, SynSent, 0, 80));
        e.apply(&tr(SEC + MS, 0xa, SynSent, Established, 1000, 80)); // ghost: its CLOSE was lost
        e.apply(&tr(SEC, 0xb, Close, SynSent, 0, 81));
        e.apply(&tr(SEC + MS, 0xb, SynSent, Established, 1001, 81)); // missed -> CLOSE_WAIT
        e.apply(&tr(20 * SEC, 0xc, Close, SynSent, 0, 82));
        e.apply(&tr(20 * SEC, 0xc, SynSent, Established, 1002, 82)); // newer than the snapshot
        let kernel = [
            seen(CloseWait, 1001, 81, Some(100)),
            seen(Established, 1003, 83, None),
        ];
        e.reconcile(&kernel, &[1], 10 * SEC);
        assert!(e.table.conn(0xa).is_none());
        assert_eq!(e.table.conn(0xb).unwrap().state, CloseWait);
        assert!(
            e.table.conn(0xc).is_some(),
            "touched after the snapshot: not judged"
        );
        assert_eq!(e.table.counters.corrections, 3);
        assert_eq!(e.table.len(), 3);
        // Namespaces not dumped are not judged.
        e.reconcile(&[], &[2], 30 * SEC);
        assert_eq!(e.table.len(), 3);
    }

    #[test]
    fn reconcile_finds_silent_rearms_and_missing_owners() {
        let mut e = Engine::new(1000);
        // An orphan's timewait socket begins in FIN_WAIT2; the peer's FIN
        // moves it to TIME_WAIT with a re-arm the timer tracepoints missed.
        let mut begin = tw(SEC, EventKind::TwBegin, 0xb, None, 40000, 80);
        begin.new = FinWait2;
        e.apply(&begin);
        // A child socket whose listener predates tracing: no owner.
        let mut child = tr(SEC, 0xc, Listen, SynRecv, 8080, 5555);
        child.owner = None;
        e.apply(&child);
        e.apply(&Event {
            owner: None,
            ..tr(SEC + MS, 0xc, SynRecv, Established, 8080, 5555)
        });
        assert_eq!(e.snapshot(2 * SEC, 2 * SEC, host()).states["FIN_WAIT2"], 1);
        let mut tw_seen = seen(TimeWait, 40000, 80, None);
        tw_seen.timer_left_ms = Some(59_000);
        let mut child_seen = seen(Established, 8080, 5555, Some(321));
        child_seen.timer_left_ms = None;
        e.reconcile(&[tw_seen, child_seen], &[1], 3 * SEC);
        let snap = e.snapshot(4 * SEC, 4 * SEC, host());
        assert_eq!((snap.states["FIN_WAIT2"], snap.states["TIME_WAIT"]), (0, 1));
        assert_eq!(e.table.conn(0xc).unwrap().owner.unwrap().pid, 321);
        let c = e.table.counters;
        assert_eq!((c.silent_rearms, c.owners_found, c.corrections), (1, 1, 0));
    }

    /// The live source's check found the orphan in TIME_WAIT (a
    /// `TwSubstate`): the table moves it, counts the silent re-arm once (a
    /// later snapshot finding it TIME_WAIT does not count it again), and its
    /// end is an ordinary TIME_WAIT end.
    #[test]
    fn tw_substate_moves_an_orphan_to_time_wait_counted_once() {
        let mut e = Engine::new(1000);
        let mut begin = tw(SEC, EventKind::TwBegin, 0xb, None, 40000, 80);
        begin.new = FinWait2;
        e.apply(&begin);
        let found = Event {
            kind: EventKind::TwSubstate,
            link: None,
            old: Some(FinWait2),
            new: TimeWait,
            prev_ns: Some(SEC),
            ..begin
        };
        e.apply(&Event {
            ts_ns: 2 * SEC,
            ..found
        });
        let snap = e.snapshot(3 * SEC, 3 * SEC, host());
        assert_eq!((snap.states["FIN_WAIT2"], snap.states["TIME_WAIT"]), (0, 1));
        let c = e.table.counters;
        assert_eq!(
            (c.silent_rearms, c.unknown_sockets, c.corrections),
            (1, 0, 0)
        );
        let mut tw_seen = seen(TimeWait, 40000, 80, None);
        tw_seen.timer_left_ms = Some(58_000);
        e.reconcile(&[tw_seen], &[1], 4 * SEC);
        assert_eq!(e.table.counters.silent_rearms, 1, "counted once");
        // Found twice (a duplicate): nothing more.
        e.apply(&Event {
            ts_ns: 5 * SEC,
            ..found
        });
        assert_eq!(e.table.counters.silent_rearms, 1);
        let mut end = tw(62 * SEC, EventKind::TwEnd, 0xb, None, 40000, 80);
        end.prev_ns = None;
        e.apply(&end);
        let snap = e.snapshot(63 * SEC, 63 * SEC, host());
        assert_eq!(snap.states["TIME_WAIT"], 0);
        assert_eq!(snap.ended["time_wait_expired"], 1);
        assert_eq!(snap.histograms["time_wait"].count, 1);
    }

    /// A `TwSubstate` for a timewait socket the table does not hold (evicted,
    /// or begun before tracing and never adopted) changes nothing and is no
    /// error.
    #[test]
    fn tw_substate_of_an_unknown_socket_is_ignored() {
        let mut e = Engine::new(1000);
        e.apply(&Event {
            kind: EventKind::TwSubstate,
            link: None,
            old: Some(FinWait2),
            new: TimeWait,
            prev_ns: Some(SEC),
            ..tw(SEC, EventKind::TwBegin, 0xb, None, 40000, 80)
        });
        assert!(e.table.is_empty());
        assert_eq!(e.table.counters, crate::conn::TableCounters::default());
    }

    #[test]
    fn cap_evicts_and_counts() {
        let mut e = Engine::new(3);
        for i in 0..5u64 {
            e.apply(&tr(SEC + i, 0x100 + i, Close, Listen, 1000 + i as u16, 0));
        }
        assert_eq!(e.table.len(), 3);
        assert_eq!(e.table.counters.evictions, 2);
        let snap = e.snapshot(2 * SEC, 2 * SEC, host());
        assert_eq!(snap.lost["evictions"], 2);
    }

    /// A TIME_WAIT flood at the cap pushes out timewait sockets, not the
    /// listener or the CLOSE_WAIT socket.
    #[test]
    fn cap_evicts_timewait_sockets_first() {
        let mut e = Engine::new(4);
        e.apply(&tr(SEC, 0x1, Close, Listen, 8080, 0));
        e.apply(&tr(SEC, 0x2, Listen, SynRecv, 8080, 5000));
        e.apply(&tr(SEC, 0x2, SynRecv, Established, 8080, 5000));
        e.apply(&tr(SEC, 0x2, Established, CloseWait, 8080, 5000));
        for i in 0..10u64 {
            e.apply(&tw(
                SEC + i,
                EventKind::TwBegin,
                0x100 + i,
                None,
                40000 + i as u16,
                80,
            ));
        }
        assert_eq!(e.table.len(), 4);
        assert_eq!(e.table.counters.evictions, 8);
        assert_eq!(e.table.conn(0x1).unwrap().state, Listen);
        assert_eq!(e.table.conn(0x2).unwrap().state, CloseWait);
        assert_eq!(e.table.timewaits().count(), 2);
    }

    #[test]
    fn memory_per_live_entry_is_bounded() {
        // A live socket: its entry in a slab chunk, plus the index's bucket
        // (slot and tag: 8 bytes) and control byte, 2.3 buckets per socket
        // just after the index doubles (7/16 full), plus one chunk of slack
        // spread over the sockets: <= 256 bytes at any table size.
        for value in [
            std::mem::size_of::<crate::conn::Conn>(),
            std::mem::size_of::<crate::conn::TwConn>(),
        ] {
            let worst = value as f64 + 9.0 * 16.0 / 7.0;
            assert!(worst <= 240.0, "{worst} bytes per live socket");
        }
    }

    /// What a snapshot says, computed the plain way: one walk of the table
    /// (as snapshots were built before the table kept counts).
    fn walked(e: &Engine, now: u64) -> serde_json::Value {
        use std::collections::BTreeMap;
        let mut states: BTreeMap<&str, u64> = BTreeMap::new();
        let mut by_pid: BTreeMap<Option<u32>, BTreeMap<&str, u64>> = BTreeMap::new();
        let mut by_port: BTreeMap<u16, BTreeMap<&str, u64>> = BTreeMap::new();
        let mut by_remote: BTreeMap<IpAddr, BTreeMap<&str, u64>> = BTreeMap::new();
        type Listed = (u64, (IpAddr, u16, IpAddr, u16), bool, Option<u32>);
        let mut cw: Vec<Listed> = Vec::new();
        // Per process: sockets, oldest age, lower bound, sockets per peer.
        type Held = (u64, u64, bool, BTreeMap<String, u64>);
        let mut cw_pids: BTreeMap<Option<u32>, Held> = BTreeMap::new();
        let add = |m: &mut BTreeMap<&str, u64>, s: TcpState| *m.entry(s.name()).or_default() += 1;
        for c in e.table.conns() {
            let pid = c.owner.map(|o| o.pid);
            add(&mut states, c.state);
            add(by_pid.entry(pid).or_default(), c.state);
            add(by_port.entry(c.key.sport).or_default(), c.state);
            if c.state != Listen {
                add(by_remote.entry(c.key.daddr).or_default(), c.state);
            }
            if c.state == CloseWait {
                let age = now.saturating_sub(c.state_since_ns) / 1_000_000;
                let lower = c.state_age_is_lower_bound();
                cw.push((
                    age,
                    (c.key.saddr, c.key.sport, c.key.daddr, c.key.dport),
                    lower,
                    pid,
                ));
                let p = cw_pids.entry(pid).or_default();
                p.0 += 1;
                if age > p.1 || p.0 == 1 {
                    (p.1, p.2) = (age, lower);
                } else if age == p.1 {
                    p.2 |= lower;
                }
                let peer = std::net::SocketAddr::new(c.key.daddr, c.key.dport).to_string();
                *p.3.entry(peer).or_default() += 1;
            }
        }
        for t in e.table.timewaits() {
            add(&mut states, t.substate);
            add(
                by_pid.entry(t.owner.map(|o| o.pid)).or_default(),
                t.substate,
            );
            add(by_port.entry(t.key.sport).or_default(), t.substate);
            add(by_remote.entry(t.key.daddr).or_default(), t.substate);
        }
        cw.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let listed: Vec<_> = cw
            .iter()
            .take(crate::stats::CLOSE_WAIT_LISTED)
            .map(|c| (c.0, c.1.1, c.1.3, c.2))
            .collect();
        serde_json::json!({
            "states": states,
            "by_pid": by_pid.into_iter().map(|(k, v)| (format!("{k:?}"), v)).collect::<BTreeMap<_, _>>(),
            "by_port": by_port,
            "by_remote": by_remote.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
            "close_wait": listed,
            "close_wait_total": cw.len(),
            "close_wait_by_pid": cw_pids.into_iter().map(|(k, (n, age, lower, peers))| {
                let mut peers: Vec<(String, u64)> = peers.into_iter().collect();
                peers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.parse::<std::net::SocketAddr>().unwrap().cmp(&b.0.parse().unwrap())));
                (format!("{k:?}"), serde_json::json!([n, age, lower, peers.into_iter().take(5).map(|p| p.0).collect::<Vec<_>>()]))
            }).collect::<BTreeMap<_, _>>(),
        })
    }

    /// The same, from a snapshot built from the kept counts.
    fn counted(snap: &Snapshot) -> serde_json::Value {
        use std::collections::BTreeMap;
        let states: BTreeMap<&str, u64> = snap
            .states
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (*k, *n))
            .collect();
        let rows = |c: &crate::stats::StateCounts| c.states.iter().collect::<BTreeMap<_, _>>();
        serde_json::json!({
            "states": states,
            "by_pid": snap.by_process.iter().map(|p| (format!("{:?}", p.pid), rows(&p.counts))).collect::<BTreeMap<_, _>>(),
            "by_port": snap.by_local_port.iter().map(|p| (p.port, rows(&p.counts))).collect::<BTreeMap<_, _>>(),
            "by_remote": snap.by_remote.iter().map(|p| (p.daddr.to_string(), rows(&p.counts))).collect::<BTreeMap<_, _>>(),
            "close_wait": snap.close_wait.iter().map(|c| (c.age_ms, c.sport, c.dport, c.age_is_lower_bound)).collect::<Vec<_>>(),
            "close_wait_total": snap.close_wait.len() as u64 + snap.close_wait_unlisted,
            "close_wait_by_pid": snap.close_wait_by_process.iter().map(|p| {
                (format!("{:?}", p.pid), serde_json::json!([p.count, p.oldest_age_ms, p.oldest_age_is_lower_bound, p.peers]))
            }).collect::<BTreeMap<_, _>>(),
        })
    }

    /// One random input: an event of any kind, a seed or a reconciliation.
    fn arb_input() -> impl Strategy<Value = (u8, u64, TcpState, TcpState, u16, u16, u32, u64)> {
        (
            0u8..12,
            0u64..24,
            arb_state(),
            arb_state(),
            0u16..6,
            0u16..4,
            0u32..4,
            0u64..3_000,
        )
    }

    fn input_of(
        (kind, sk, old, new, port, peer, pid, jitter): (
            u8,
            u64,
            TcpState,
            TcpState,
            u16,
            u16,
            u32,
            u64,
        ),
        t: u64,
    ) -> Result<Event, Vec<SeenSocket>> {
        let ts = t.saturating_sub(jitter * 1_000);
        let mut ev = tr(ts, 0x1000 + sk, old, new, 1000 + port, 80 + peer);
        ev.owner = (pid > 0).then(|| owner(pid));
        ev.daddr = ip(2 + (peer % 2) as u8);
        ev.prev_ns = (jitter % 3 == 0).then_some(jitter * MS);
        Ok(match kind {
            0..=4 => ev,
            5 => Event {
                kind: EventKind::TwBegin,
                link: Some(0x1000 + (sk ^ 1)),
                ..ev
            },
            6 => Event {
                kind: EventKind::TwEnd,
                reason: Some(TwEndReason::Expired),
                ..ev
            },
            7 => Event {
                kind: EventKind::TwRearm,
                ..ev
            },
            8 => Event {
                kind: EventKind::TwSubstate,
                ..ev
            },
            9 => Event {
                kind: EventKind::Accept,
                owner: Some(owner(pid + 7)),
                ..ev
            },
            _ => {
                let mut s = seen(new, 1000 + port, 80 + peer, (pid > 0).then_some(pid));
                s.daddr = ip(2 + (peer % 2) as u8);
                let mut other = seen(old, 2000 + port, 90 + peer, None);
                other.timer_left_ms = (old == TimeWait).then_some(30_000);
                return Err(vec![s, other]);
            }
        })
    }

    proptest! {
        /// Snapshots read counts the table keeps as entries come, change and
        /// go (some counted only when the counts are read): whatever the
        /// inputs (events of every kind, seeds, reconciliations, a small
        /// cap evicting), they say what a walk of the table says; and a
        /// table that counted nothing until the end (`report`'s) says the
        /// same.
        #[test]
        fn kept_counts_say_what_a_walk_says(
            inputs in proptest::collection::vec(arb_input(), 1..250),
            reads in proptest::collection::vec(0usize..250, 0..6),
        ) {
            let mut kept = Engine::new(20);
            let mut once = Engine::new(20);
            once.table.set_counting(false);
            let mut t = 10 * SEC;
            for (n, input) in inputs.into_iter().enumerate() {
                t += 7 * MS;
                for e in [&mut kept, &mut once] {
                    match input_of(input, t) {
                        Ok(ev) => e.apply(&ev),
                        Err(sockets) => e.take_sockets(&sockets, &[1], t),
                    }
                }
                if reads.contains(&n) {
                    kept.table.assert_counts_match();
                }
            }
            let now = t + 90 * SEC;
            let a = kept.snapshot(now, now, host());
            prop_assert_eq!(counted(&a), walked(&kept, now));
            let b = once.snapshot(now, now, host());
            prop_assert_eq!(
                serde_json::to_value(&a).unwrap(),
                serde_json::to_value(&b).unwrap()
            );
            kept.table.assert_counts_match();
        }
    }

    fn arb_state() -> impl Strategy<Value = TcpState> {
        (1u8..=12).prop_map(|v| TcpState::from_u8(v).unwrap())
    }

    proptest! {
        /// Random (even nonsensical) event streams, timestamps jittered by a few
        /// microseconds as across CPUs: no panic, no negative durations, and
        /// per-owner counts add up to the totals.
        #[test]
        fn random_streams_keep_invariants(
            ops in proptest::collection::vec(
                (0u8..4, 0u64..12, arb_state(), arb_state(), 0u64..5_000, 0u16..4, proptest::option::of(0u64..10 * SEC), 0u32..3),
                1..300,
            )
        ) {
            let mut e = Engine::new(16);
            let mut t = SEC;
            for (n, (kind, sk, old, new, jitter, port, prev, pid)) in ops.into_iter().enumerate() {
                t += 1_000;
                let ts = t.saturating_sub(jitter);
                let mut ev = tr(ts, sk, old, new, 1000 + port, 80 + port);
                ev.prev_ns = prev;
                ev.owner = (pid > 0).then(|| owner(pid));
                let ev = match kind {
                    0 | 1 => ev,
                    2 => Event { kind: EventKind::TwBegin, link: Some(sk ^ 1), ..ev },
                    _ => Event { kind: EventKind::TwEnd, reason: Some(TwEndReason::Killed), ..ev },
                };
                e.apply(&ev);
                prop_assert!(e.table.len() <= 16);
                // Counted now and then (in between, new entries wait).
                if n % 5 == 0 {
                    e.table.assert_counts_match();
                }
            }
            e.table.assert_counts_match();
            let snap = e.snapshot(t + SEC, t + SEC, host());
            let by_state: u64 = snap.states.values().sum();
            let by_owner: u64 = snap.by_process.iter().map(|p| p.counts.total).sum();
            prop_assert_eq!(by_state, snap.tracked);
            prop_assert_eq!(by_owner, snap.tracked);
            for c in e.table.conns() {
                prop_assert!(c.state_since_ns >= c.born_ns || c.age_is_lower_bound());
            }
            for h in snap.histograms.values() {
                prop_assert!(h.p50_ms >= 0.0 && h.max_ms >= h.p50_ms);
                prop_assert!(h.max_ms <= 86_400_000.0);
            }
        }
    }

    /// Socket `sk` of owner 100 connects with stack `stack` and enters
    /// CLOSE_WAIT at `t0 + 10 ms`.
    fn leaked(e: &mut Engine, t0: u64, sk: u64, sport: u16, stack: Option<u32>) {
        for (i, (old, new)) in [
            (Close, SynSent),
            (SynSent, Established),
            (Established, CloseWait),
        ]
        .into_iter()
        .enumerate()
        {
            e.apply(&Event {
                stack,
                ..tr(t0 + 5 * MS * i as u64, sk, old, new, sport, 80)
            });
        }
    }

    fn named_leak() -> crate::stacks::Stack {
        use crate::stacks::{Frame, Stack, StackQuality};
        let frame = |function: &str, module: &str| Frame {
            addr: 0x4000,
            function: Some(function.into()),
            module: Some(module.into()),
            ..Frame::default()
        };
        Stack {
            frames: vec![
                frame("__connect", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
                frame("checkout_reserve_items", "/tmp/stackleak"),
                frame("handle_order", "/tmp/stackleak"),
                frame("main", "/tmp/stackleak"),
                frame(
                    "__libc_start_call_main",
                    "/usr/lib/x86_64-linux-gnu/libc.so.6",
                ),
            ],
            quality: StackQuality::Complete,
            depth: 5,
            exe: Some("/tmp/stackleak".into()),
        }
    }

    #[test]
    fn close_wait_by_stack_groups_by_code_path_and_names_what_is_named() {
        use crate::{
            record::{Record, RecordApplier},
            stacks::{StackCounts, StackKey},
        };
        let mut e = Engine::new(100);
        e.stacks.enabled = true;
        for i in 0..3 {
            leaked(&mut e, i * MS, 10 + i, 5000 + i as u16, Some(7));
        }
        leaked(&mut e, 50 * MS, 20, 6000, Some(8));
        leaked(&mut e, 60 * MS, 21, 6001, None);
        // A connection with a stack that did not leak.
        e.apply(&Event {
            stack: Some(9),
            ..tr(70 * MS, 30, Close, SynSent, 0, 80)
        });
        RecordApplier::default().apply(
            &mut e,
            &Record::Stack {
                key: StackKey { pid: 100, id: 7 },
                stack: std::sync::Arc::new(named_leak()),
            },
        );
        let mut facts = host();
        facts.stacks = StackCounts {
            kernel_misses: 2,
            requested: 2,
            named: 1,
            pending: 1,
            max_depth: 127,
            ..StackCounts::default()
        };
        let snap = e.snapshot(SEC, SEC, facts);
        let rows = snap.close_wait_by_stack.as_ref().unwrap();
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.pid, r.stack_id, r.count, r.process_count, r.stack_quality))
            .collect();
        assert_eq!(
            summary,
            [
                (Some(100), Some(7), 3, 5, "complete"),
                (Some(100), Some(8), 1, 5, "pending"),
                (Some(100), None, 1, 5, "none"),
            ]
        );
        assert_eq!(
            rows[0].code_path,
            "checkout_reserve_items ← handle_order ← main ← …"
        );
        assert_eq!(rows[0].top_frame.as_deref(), Some("checkout_reserve_items"));
        assert_eq!(rows[0].frames.len(), 5);
        assert_eq!(rows[0].oldest_age_ms, 1000 - 10);
        assert_eq!(rows[0].peers, ["10.0.0.2:80"]);
        assert_eq!(rows[0].comm.as_deref(), Some("app100"));
        assert_eq!(rows[1].code_path, "(not named yet)");
        assert!(rows[1].frames.is_empty() && rows[1].top_frame.is_none());
        assert_eq!(rows[2].code_path, "(no stack)");
        let status = snap.stacks.as_ref().unwrap();
        assert_eq!(
            (
                status.known,
                status.sockets_with_stack,
                status.close_wait_without_stack
            ),
            (1, 5, 1)
        );
        // The JSON contract (§ stats --json).
        let json = serde_json::to_value(&snap).unwrap();
        let row = &json["close_wait_by_stack"][0];
        for key in [
            "pid",
            "comm",
            "stack_id",
            "count",
            "process_count",
            "oldest_age_ms",
            "oldest_age_is_lower_bound",
            "peers",
            "code_path",
            "top_frame",
            "stack_quality",
            "frames",
        ] {
            assert!(row.get(key).is_some(), "{key} in {row}");
        }
        let frame = &row["frames"][1];
        for key in [
            "addr",
            "function",
            "function_offset",
            "module",
            "module_offset",
            "build_id",
            "file",
            "line",
        ] {
            assert!(frame.get(key).is_some(), "{key} in {frame}");
        }
        assert_eq!(frame["addr"], "0x4000");
        assert_eq!(
            json["close_wait_by_stack"][2]["stack_id"],
            serde_json::Value::Null
        );
        let stacks = &json["stacks"];
        for key in [
            "kernel_misses",
            "requested",
            "named",
            "failed",
            "pending",
            "dropped",
            "max_depth",
            "known",
            "sockets_with_stack",
            "close_wait_without_stack",
        ] {
            assert!(stacks.get(key).is_some(), "{key} in {stacks}");
        }
        assert_eq!(stacks["kernel_misses"], 2);
    }

    #[test]
    fn stats_text_lists_code_paths_escaped() {
        use crate::stacks::{Frame, Stack, StackKey};
        let mut e = Engine::new(100);
        e.stacks.enabled = true;
        leaked(&mut e, 0, 10, 5000, Some(7));
        leaked(&mut e, 0, 11, 5001, None);
        e.stacks.insert(
            StackKey { pid: 100, id: 7 },
            std::sync::Arc::new(Stack {
                frames: vec![Frame {
                    function: Some("evil\x1b[2J".into()),
                    module: Some("/srv/x".into()),
                    ..Frame::default()
                }],
                quality: crate::stacks::StackQuality::NoFramePointers,
                ..Stack::default()
            }),
        );
        let snap = e.snapshot(SEC, SEC, host());
        let mut out = Vec::new();
        crate::output::stats::write_text(&mut out, &snap).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("CLOSE_WAIT by code path:"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(
            text.contains("1/2") && text.contains("[no frame pointers: one frame]"),
            "{text}"
        );
        assert!(text.contains("(no stack)"), "{text}");
        let mut out = Vec::new();
        crate::output::stats::write_stack(
            &mut out,
            &snap.close_wait_by_stack.unwrap()[0].frames,
            "no_frame_pointers",
        )
        .unwrap();
        let stack = String::from_utf8(out).unwrap();
        assert!(stack.starts_with("    #0   evil"), "{stack}");
        assert!(stack.contains("(one frame only"), "{stack}");
        // Without stacks: no section.
        let mut e = Engine::new(100);
        leaked(&mut e, 0, 10, 5000, Some(7));
        let mut out = Vec::new();
        crate::output::stats::write_text(&mut out, &e.snapshot(SEC, SEC, host())).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("code path"));
    }

    #[test]
    fn without_stacks_the_keys_are_absent() {
        let mut e = Engine::new(100);
        leaked(&mut e, 0, 10, 5000, Some(7));
        let snap = e.snapshot(SEC, SEC, host());
        assert!(snap.close_wait_by_stack.is_none() && snap.stacks.is_none());
        let json = serde_json::to_value(&snap).unwrap();
        assert!(json.get("close_wait_by_stack").is_none());
        assert!(json.get("stacks").is_none());
        // On, with nothing in CLOSE_WAIT: present and empty.
        let mut e = Engine::new(100);
        e.stacks.enabled = true;
        let json = serde_json::to_value(e.snapshot(SEC, SEC, host())).unwrap();
        assert_eq!(json["close_wait_by_stack"], serde_json::json!([]));
        assert_eq!(json["stacks"]["known"], 0);
    }

    #[test]
    fn close_wait_by_stack_rows_are_capped_in_json() {
        let mut e = Engine::new(1000);
        e.stacks.enabled = true;
        for i in 0..60u64 {
            leaked(&mut e, 0, 100 + i, 7000 + i as u16, Some(i as u32));
        }
        let mut json = serde_json::to_value(e.snapshot(SEC, SEC, host())).unwrap();
        crate::stats::cap_lists(&mut json);
        let rows = json["close_wait_by_stack"].as_array().unwrap();
        assert_eq!(rows.len(), crate::stats::JSON_ROWS + 1);
        let other = rows.last().unwrap();
        assert_eq!(other["other"], true);
        assert_eq!(other["count"], 10);
        assert!(other.get("frames").is_none());
    }
}
