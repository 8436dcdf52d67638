//! A recording summarised for a postmortem (`tcptrace report`): run through
//! the same engine as `stats` (seeded from the file's first snapshot,
//! reconciled at the later ones), it says who held CLOSE_WAIT and TIME_WAIT
//! at any time of the recording, not only at its end: every process that
//! held CLOSE_WAIT (peak, when, for how long, the oldest age reached,
//! peers), TIME_WAIT per destination and per service, a timeline whose step
//! fits the recording, and the `stats` summary at the end (or at `--at`),
//! as text, JSON or CSV.
//!
//! Counts are exact at every event ([`track`]): a leak that begins and ends
//! between two timeline points still shows its peak. `--from`/`--to` make a
//! window (records before it still build the state, so the window starts
//! from the true state; holders, timeline, gaps and counts cover the window
//! only); `--at` is the state at one moment (a window from the start to it,
//! the summary at it). Moments: [`window`].
//!
//! # `tcptrace report --json` schema
//!
//! The `stats --json` schema ([`crate::stats`]: `states`, `close_wait`,
//! `close_wait_by_process`, `time_wait_by_peer`, ... , flattened: the state
//! at the window's end) plus:
//! - `recording`: `file`, `host`, `kernel`, `hook`, `timewait_hook`,
//!   `filters`, `start_ns`, `end_ns` (wall clock of the first and last
//!   record), `events` (the whole file), `cut`, `skipped`.
//! - `gaps`: events lost (in the window): `ts_ns`, `ring_full`,
//!   `recursion_misses`, `map_full`, `probe_failed`.
//! - `close_wait_timeline`: points, oldest first: `ts_ns`, `close_wait`,
//!   `time_wait` (totals then), `top` (the largest CLOSE_WAIT holders then:
//!   `[pid, comm, count]`), `close_wait_max`, `time_wait_max` (the most
//!   since the previous point), `time_wait_top` (the largest TIME_WAIT
//!   groups then: `kind` `destination` or `service`, `netns` (services),
//!   `addr`, `count`).
//! - `window`: `from_ns`, `to_ns` (wall clock), `at_ns` (with `--at`),
//!   `events` (in the window), `step_ns` (the timeline's), `points`.
//! - `close_wait_holders`: every process that held CLOSE_WAIT in the
//!   window, largest peak first: `pid`, `comm`, `peak`, `peak_ns`,
//!   `first_ns`, `last_ns` (first and last moment seen holding),
//!   `held_for_ms` (`last - first`), `held_total_ms` (time spent holding
//!   any: less when it came and went), `count_at_end`, `oldest_age_ms`,
//!   `oldest_age_is_lower_bound`, `peers` (most frequent first, at most 5),
//!   and the owner's workload as recorded: `workload`, `workload_kind`,
//!   `cgroup_path`, `unit`, `container`, `pod`, `namespace` (null when
//!   unknown; `workload` is `cgroup:<id>` for a cgroup the recording does
//!   not name, as in recordings older than format 4).
//! - `close_wait_workload_holders`: the same per workload (owners' cgroups
//!   folded by workload name: a restarted unit's cgroups are one row, its
//!   `peak` the largest one cgroup reached), largest peak first: the
//!   workload fields, `comm` (a process seen holding), `cgroups` (the ids),
//!   the times and counts above, `oldest_age_ms`,
//!   `oldest_age_is_lower_bound`, `peers`. Owners of unknown cgroup are not
//!   in it. Capped in JSON like the `stats` lists (an `other` row, `capped`).
//! - `time_wait_destination_holders`: per destination of connections opened
//!   here: `daddr`, `dport`, `pid`, `comm` (the process behind most) and
//!   its workload fields,
//!   `peak`, `peak_ns`, `first_ns`, `last_ns`, `held_for_ms`,
//!   `held_total_ms`, `count_at_end`, `begun` (TIME_WAIT begun in the
//!   window), `ports` (ports connect() may pick in the namespace),
//!   `port_share_at_peak` (the fullest (namespace, local address) budget's
//!   share at its fullest), `budget_netns`/`budget_saddr`/`budget_time_wait`.
//! - `time_wait_service_holders`: per local service (connections accepted
//!   here, the server closed first): `netns`, `saddr`, `sport`, `pid`,
//!   `comm` (the listener's owner) and its workload fields, the same times
//!   and counts, `begun`,
//!   `rate_per_sec` (`begun` over the time held).
//! - `holders_dropped`: holders beyond [`track::MAX_HOLDERS`] per kind, not
//!   kept: `close_wait`, `close_wait_workload`, `time_wait_destination`,
//!   `time_wait_service`.
//! - `listeners_in_window` (recordings with listener records, format 6;
//!   absent otherwise): the connection attempts dropped in the window
//!   ([`listeners`]): `samples`, `drops_total`, `drops_by_reason`,
//!   `kernel_reported`, `kernel_suppressed`, `listeners` (`listener`,
//!   `netns`, `pid`, `comm`, the workload fields, `accept_queue`,
//!   `accept_queue_limit`, `accept_queue_peak`, `drops_total`,
//!   `drops_by_reason`, `drops_before_recording`, `drops_per_sec`,
//!   `main_reason`, `first_drop_ns`,
//!   `last_drop_ns`, `closed`), `listeners_omitted`, `unmatched`
//!   (`destination`, `netns`, `drops_total`, `drops_by_reason`),
//!   `namespaces` (`netns` and the counters' deltas over the window).
//!
//! With stacks (a recording made with `--stacks`: format 5), the flattened
//! summary also has `close_wait_by_stack` and `stacks` (the `stats --json`
//! schema: [`crate::stats`]), named from the recording's stack records
//! (names kept while recording, so they read after the processes are
//! gone); the `stacks` counts of the live namer are zero. `--stacks`
//! ([`Options::stacks`]) adds the full stack of each process's leading
//! code path to the text.
//!
//! Workload names come only from the recording (format 4 records), never
//! from the host reading it. `--cgroup`/`--container`/`--unit`
//! ([`Options::workloads`]) keep the holder rows whose recorded workload
//! matches; the totals, the timeline and the state summary stay the
//! recording's.

mod listeners;
mod output;
mod timeline;
mod track;
mod window;

#[cfg(test)]
mod tests;

use std::{io, net::IpAddr};

use serde::Serialize;

pub use output::{write_csv, write_text};
pub use timeline::{MAX_POINTS, TARGET_POINTS};
pub use track::MAX_HOLDERS;
pub use window::{Options, ReportError, Span, TimeArg, TimeSpec, fmt_ns, rfc3339};

use crate::{
    clock::WallClock,
    conn::DEFAULT_CAP,
    engine::Engine,
    model::Lost,
    record::{Reader, Record, RecordApplier},
    stats::{Aggregates, Batch, Deferred, HostFacts, Snapshot},
    workload::{Workload, WorkloadFilter, WorkloadTable},
};
use track::{Ctx, Holders, Tracker, TwGroup};

/// Blocks decoded ahead of the engine.
const READ_AHEAD: usize = 4;

/// Records between two hand-overs of deferred durations and ends to the
/// aggregating thread (small enough to stay in the cache; tiny in tests, to
/// hand over many batches).
const DEFER_BATCH: usize = if cfg!(test) { 7 } else { 2048 };

/// How often (recording time) CLOSE_WAIT growth is sampled, as `stats
/// --interval 1` does live.
const GROWTH_SAMPLE_NS: u64 = 1_000_000_000;

/// A full walk of the table after evictions, at most this often.
const RESYNC_NS: u64 = 1_000_000_000;

/// Peers named per CLOSE_WAIT holder.
const PEERS_SHOWN: usize = 5;

#[derive(Clone, Debug, Serialize)]
pub struct RecordingInfo {
    pub file: String,
    pub host: String,
    pub kernel: String,
    pub hook: String,
    pub timewait_hook: String,
    pub filters: Vec<String>,
    /// Wall clock, Unix epoch ns, of the first and last record.
    pub start_ns: u64,
    pub end_ns: u64,
    pub events: u64,
    /// Set when the file ends early: offset and reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
    /// Damaged stretches skipped (their events are missing): reason,
    /// offset and length of each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// Events lost at one moment of the recording.
#[derive(Clone, Debug, Serialize)]
pub struct Gap {
    pub ts_ns: u64,
    pub ring_full: u64,
    pub recursion_misses: u64,
    pub map_full: u64,
    pub probe_failed: u64,
}

/// The state at one moment of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimelinePoint {
    pub ts_ns: u64,
    pub close_wait: u64,
    pub time_wait: u64,
    /// The largest CLOSE_WAIT holders then: (pid, comm, count).
    pub top: Vec<(Option<u32>, Option<String>, u64)>,
    /// The most CLOSE_WAIT (TIME_WAIT) at any moment since the previous
    /// point (exact: counted at every event).
    pub close_wait_max: u64,
    pub time_wait_max: u64,
    /// The largest TIME_WAIT groups then.
    pub time_wait_top: Vec<TimeWaitTop>,
}

/// A TIME_WAIT group in a timeline point.
#[derive(Clone, Debug, Serialize)]
pub struct TimeWaitTop {
    /// `destination` (connections opened here) or `service` (accepted here).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// `ip:port` of the destination or of the service.
    pub addr: String,
    pub count: u64,
}

/// What the report covers.
#[derive(Clone, Debug, Serialize)]
pub struct WindowInfo {
    /// Wall clock, Unix epoch ns.
    pub from_ns: u64,
    pub to_ns: u64,
    /// With `--at`: the moment the summary is the state of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_ns: Option<u64>,
    /// Events in the window.
    pub events: u64,
    /// The timeline's step.
    pub step_ns: u64,
    pub points: u64,
}

/// How long a group held, and its peak.
#[derive(Clone, Debug, Serialize)]
pub struct Held {
    pub peak: u64,
    /// Wall clock of the (first) peak.
    pub peak_ns: u64,
    /// First and last moment seen holding (wall clock).
    pub first_ns: u64,
    pub last_ns: u64,
    /// `last_ns - first_ns`.
    pub held_for_ms: u64,
    /// Time spent holding any (less than `held_for_ms` when it came and went).
    pub held_total_ms: u64,
    /// The count at the window's end.
    pub count_at_end: u64,
}

/// The workload of a row's owner, as the recording named it (all null
/// when the owner's cgroup is unknown): the same fields as `stats`' rows.
pub use crate::stats::workloads::WorkloadRef as WorkloadFields;
pub use listeners::{ListenerWindowRow, ListenersSection, NamespaceWindow, UnmatchedWindowRow};

/// Cgroup ids to the recording's workloads (`cgroup:<id>` for ids it does
/// not name), and the filter rows are kept by.
struct Names<'a> {
    table: &'a WorkloadTable,
    filter: &'a WorkloadFilter,
}

impl Names<'_> {
    /// The workload of cgroup `id` (None: unknown owner cgroup).
    fn get(&self, id: u64) -> Option<std::borrow::Cow<'_, Workload>> {
        use std::borrow::Cow;
        (id != 0).then(|| match self.table.get(id) {
            Some(w) => Cow::Borrowed(&**w),
            None => Cow::Owned(Workload::unknown(id)),
        })
    }

    fn fields(&self, id: u64) -> WorkloadFields {
        self.get(id)
            .map_or_else(WorkloadFields::default, |w| WorkloadFields::of(&w))
    }

    /// Whether a row owned by cgroup `id` is kept.
    fn keeps(&self, id: u64) -> bool {
        !self.filter.narrows() || self.get(id).is_some_and(|w| self.filter.matches(&w))
    }
}

/// A process that held CLOSE_WAIT in the window.
#[derive(Clone, Debug, Serialize)]
pub struct CloseWaitHolder {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    #[serde(flatten)]
    pub workload: WorkloadFields,
    #[serde(flatten)]
    pub held: Held,
    /// The oldest CLOSE_WAIT age reached in the window.
    pub oldest_age_ms: u64,
    pub oldest_age_is_lower_bound: bool,
    /// Remote endpoints, most frequent first.
    pub peers: Vec<String>,
}

/// A workload that held CLOSE_WAIT in the window.
#[derive(Clone, Debug, Serialize)]
pub struct CloseWaitWorkloadHolder {
    #[serde(flatten)]
    pub workload: WorkloadFields,
    /// A process seen holding.
    pub comm: Option<String>,
    /// The cgroup ids folded into this row.
    pub cgroups: Vec<u64>,
    #[serde(flatten)]
    pub held: Held,
    pub oldest_age_ms: u64,
    pub oldest_age_is_lower_bound: bool,
    pub peers: Vec<String>,
}

/// TIME_WAIT to one destination (connections opened here).
#[derive(Clone, Debug, Serialize)]
pub struct TimeWaitDestinationHolder {
    pub daddr: IpAddr,
    pub dport: u16,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    #[serde(flatten)]
    pub workload: WorkloadFields,
    #[serde(flatten)]
    pub held: Held,
    /// TIME_WAIT begun in the window.
    pub begun: u64,
    /// Ports connect() may pick in the fullest budget's namespace (or, with
    /// no budget, the namespace of the peak).
    pub ports: u32,
    /// The fullest port budget's share at its fullest in the window: its
    /// TIME_WAIT over its ports, per (namespace, local address,
    /// destination) as connect() picks ports (0 when every local port
    /// was outside the ephemeral range).
    pub port_share_at_peak: f64,
    /// That budget: its namespace, local address and TIME_WAIT then.
    pub budget_netns: Option<u32>,
    pub budget_saddr: Option<IpAddr>,
    pub budget_time_wait: Option<u64>,
}

/// TIME_WAIT on one local service (connections accepted here).
#[derive(Clone, Debug, Serialize)]
pub struct TimeWaitServiceHolder {
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    #[serde(flatten)]
    pub workload: WorkloadFields,
    #[serde(flatten)]
    pub held: Held,
    pub begun: u64,
    /// `begun` per second held.
    pub rate_per_sec: f64,
}

/// Holders not kept (beyond [`MAX_HOLDERS`] of a kind).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct HoldersDropped {
    pub close_wait: u64,
    pub close_wait_workload: u64,
    pub time_wait_destination: u64,
    pub time_wait_service: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub recording: RecordingInfo,
    #[serde(flatten)]
    pub summary: Snapshot,
    pub gaps: Vec<Gap>,
    pub close_wait_timeline: Vec<TimelinePoint>,
    pub window: WindowInfo,
    pub close_wait_holders: Vec<CloseWaitHolder>,
    pub close_wait_workload_holders: Vec<CloseWaitWorkloadHolder>,
    pub time_wait_destination_holders: Vec<TimeWaitDestinationHolder>,
    pub time_wait_service_holders: Vec<TimeWaitServiceHolder>,
    pub holders_dropped: HoldersDropped,
    /// Listeners and the connection attempts dropped at them in the window
    /// (format 6 recordings with listener records; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listeners_in_window: Option<ListenersSection>,
    /// With a workload filter: whether any workload the recording names
    /// matches it (the caller warns when none does). True without one.
    #[serde(skip)]
    pub filter_matched: bool,
    /// The recording has stacks (made with `--stacks`, or it names some):
    /// with `--stacks` and none, the caller warns.
    #[serde(skip)]
    pub has_stacks: bool,
    /// `--stacks`: the text shows full stacks.
    #[serde(skip)]
    pub show_stacks: bool,
}

/// [`build_with`] on this thread alone: what the threaded report must
/// equal.
#[cfg(test)]
pub(crate) fn build_on_one_thread<R: io::Read + Send>(
    reader: &mut Reader<R>,
    file: &str,
    opts: &Options,
) -> Result<Report, ReportError> {
    match build_inner(reader, file, opts, false) {
        (report, None) => Ok(report),
        (_, Some(e)) => Err(e),
    }
}

/// Runs a whole recording's records through the engine.
pub fn build<R: io::Read + Send>(reader: &mut Reader<R>, file: &str) -> Report {
    build_inner(reader, file, &Options::default(), true).0
}

/// Runs a recording through the engine for the window (or moment) of
/// `opts`; a moment outside the recording, or a step that makes too many
/// points, is an error naming the recording's span.
pub fn build_with<R: io::Read + Send>(
    reader: &mut Reader<R>,
    file: &str,
    opts: &Options,
) -> Result<Report, ReportError> {
    match build_inner(reader, file, opts, true) {
        (report, None) => Ok(report),
        (_, Some(e)) => Err(e),
    }
}

fn lost_since(now: Lost, base: Lost) -> Lost {
    Lost {
        ring_full: now.ring_full.saturating_sub(base.ring_full),
        recursion_misses: now.recursion_misses.saturating_sub(base.recursion_misses),
        map_full: now.map_full.saturating_sub(base.map_full),
        probe_failed: now.probe_failed.saturating_sub(base.probe_failed),
    }
}

/// Where the window stands while reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the first record, or before `--from`.
    Before,
    Open,
    /// Past `--to` (or the window could not be resolved): records are
    /// only counted.
    Closed,
}

/// Everything the read loop carries, so the loop reads as the steps it takes.
struct Run<'o> {
    opts: &'o Options,
    clock: WallClock,
    port_range: (u16, u16),
    engine: Engine,
    applier: RecordApplier,
    tracker: Tracker,
    listeners: listeners::ListenerWindow,
    phase: Phase,
    window: Option<window::Resolved>,
    error: Option<window::ResolveError>,
    grid: Option<timeline::Grid>,
    open_ns: u64,
    close_ns: Option<u64>,
    holders: Option<Holders>,
    timeline: Option<timeline::Finished>,
    lost_base: Lost,
    gaps: Vec<Gap>,
    first: Option<u64>,
    last: u64,
    /// Monotonic "now": records a few µs out of order never move it back.
    now: u64,
    events: u64,
    window_events: u64,
    next_growth: u64,
    next_resync: u64,
}

impl Run<'_> {
    fn host(&self, lost: Lost) -> HostFacts {
        HostFacts {
            port_range: self.port_range,
            tw_overflow: 0,
            lost,
            decode_errors: 0,
            stacks: Default::default(),
        }
    }

    fn open(&mut self, at: u64) {
        if self.window.is_some_and(|w| w.explicit_from) {
            // Counts, histograms and rates start with the window.
            self.engine.reset_aggregates();
            self.lost_base = self.applier.lost;
        }
        let ctx = Ctx {
            facts: &self.engine.facts,
            host_port_range: self.port_range,
        };
        self.tracker.open(&self.engine.table, &ctx, at);
        self.listeners.open(&self.engine.listeners);
        self.tracker.rank();
        self.grid = Some(timeline::Grid::new(at, self.opts.step_ns, &self.tracker));
        self.open_ns = at;
        self.phase = Phase::Open;
    }

    fn close(&mut self, at: u64) {
        self.tracker.rank();
        if let Some(grid) = self.grid.take() {
            self.timeline = Some(grid.finish(at, &self.tracker, &self.clock));
        }
        self.holders = self.tracker.close(at);
        self.close_ns = Some(at);
        self.phase = Phase::Closed;
    }

    fn take(&mut self, rec: &Record) {
        let narrowed;
        let rec = match rec {
            Record::Event(e) if !self.keeps_netns(e.netns) => return,
            Record::Snapshot {
                ts_ns,
                namespaces,
                sockets,
                facts,
            } if !self.opts.netns.is_empty() => {
                narrowed = Record::Snapshot {
                    ts_ns: *ts_ns,
                    namespaces: namespaces
                        .iter()
                        .copied()
                        .filter(|n| self.opts.netns.contains(n))
                        .collect(),
                    sockets: sockets
                        .iter()
                        .filter(|s| self.keeps_netns(s.netns))
                        .cloned()
                        .collect(),
                    facts: facts.clone(),
                };
                &narrowed
            }
            Record::Drop(d) if !self.keeps_netns(d.netns) => return,
            Record::Listeners {
                ts_ns,
                listeners,
                counters,
            } if !self.opts.netns.is_empty() => {
                narrowed = Record::Listeners {
                    ts_ns: *ts_ns,
                    listeners: listeners
                        .iter()
                        .filter(|l| self.keeps_netns(l.netns))
                        .cloned()
                        .collect(),
                    counters: counters
                        .iter()
                        .filter(|c| self.opts.netns.contains(&c.netns))
                        .copied()
                        .collect(),
                };
                &narrowed
            }
            _ => rec,
        };
        if let Record::Workload { .. } | Record::Stack { .. } = rec {
            // Names only: no moment, nothing counted.
            self.applier.apply(&mut self.engine, rec);
            return;
        }
        let ts = rec.ts_ns();
        if self.first.is_none() {
            self.first = Some(ts);
            self.now = ts;
            self.next_growth = ts;
            match self.opts.resolve(ts, &self.clock) {
                Ok(w) => self.window = Some(w),
                Err(e) => {
                    self.error = Some(e);
                    self.phase = Phase::Closed;
                }
            }
        }
        self.last = self.last.max(ts);
        if matches!(rec, Record::Event(_)) {
            self.events += 1;
        }
        let Some(w) = self.window else { return };
        if self.phase == Phase::Closed {
            return;
        }
        if ts > w.to {
            if self.phase == Phase::Before {
                // Nothing happened in the window: it is the state at its start.
                self.open(w.from);
            }
            self.close(w.to);
            return;
        }
        if self.phase == Phase::Before && ts >= w.from {
            self.open(w.from);
        }
        self.now = self.now.max(ts);
        let now = self.now;
        if let Some(grid) = &mut self.grid
            && grid.due_before(now)
        {
            self.tracker.rank();
            grid.advance(now, &self.tracker, &self.clock);
        }
        let open = self.phase == Phase::Open;
        match rec {
            Record::Event(_) if open => self.window_events += 1,
            Record::Lost { ts_ns, lost: l } if open => self.gaps.push(Gap {
                ts_ns: self.clock.wall_ns(*ts_ns),
                ring_full: l.ring_full,
                recursion_misses: l.recursion_misses,
                map_full: l.map_full,
                probe_failed: l.probe_failed,
            }),
            _ => {}
        }
        self.applier.apply(&mut self.engine, rec);
        // (What the event's timewait socket was counted as: the table kept
        // it as it was before.)
        let before = match rec {
            Record::Event(e) => self.tracker.before_event(&self.engine.table, e),
            _ => None,
        };
        match rec {
            Record::Snapshot { facts, .. } => {
                if facts.is_some() {
                    self.tracker.facts_changed();
                }
                self.resync(now);
            }
            Record::Event(e) => {
                let ctx = Ctx {
                    facts: &self.engine.facts,
                    host_port_range: self.port_range,
                };
                self.tracker
                    .after_event(&self.engine.table, &ctx, e, before, now);
                if self.tracker.stale && now >= self.next_resync {
                    self.resync(now);
                }
            }
            Record::Listeners { .. } | Record::Drop(_) if open => {
                self.listeners.observe(&self.engine.listeners, rec);
            }
            Record::Lost { .. }
            | Record::Workload { .. }
            | Record::Stack { .. }
            | Record::Listeners { .. }
            | Record::Drop(_) => {}
        }
        if let Some(grid) = &mut self.grid {
            grid.note(&self.tracker);
        }
        if now >= self.next_growth {
            let counts = self.tracker.close_wait_by_pid();
            self.engine.aggs.sample_close_wait(now, &counts);
            self.next_growth = now + GROWTH_SAMPLE_NS;
        }
    }

    /// Whether `--netns` keeps namespace `ns` (no `--netns`: all).
    fn keeps_netns(&self, ns: Option<u32>) -> bool {
        self.opts.netns.is_empty() || ns.is_some_and(|n| self.opts.netns.contains(&n))
    }

    fn resync(&mut self, now: u64) {
        let ctx = Ctx {
            facts: &self.engine.facts,
            host_port_range: self.port_range,
        };
        self.tracker.resync(&self.engine.table, &ctx, now);
        self.next_resync = now + RESYNC_NS;
    }
}

/// The report, and what makes it not the one asked for.
fn build_inner<R: io::Read + Send>(
    reader: &mut Reader<R>,
    file: &str,
    opts: &Options,
    parallel: bool,
) -> (Report, Option<ReportError>) {
    let header = reader.header.clone();
    let mut run = Run {
        opts,
        clock: WallClock {
            offset_ns: header.clock_offset_ns as i128,
        },
        port_range: header.port_range,
        engine: {
            // One summary, at the end: the table counts its sockets then.
            let mut e = Engine::new(DEFAULT_CAP);
            e.table.set_counting(false);
            // The tracker reads a timewait socket's state before an event.
            e.table.keep_timewait_before(true);
            // Nor are durations per owner and peer shown.
            e.aggs.keyed = false;
            // Stacks in the summary when the recording has them (stack
            // records turn them on too) or they are asked for.
            e.stacks.enabled = header.stacks || opts.stacks;
            e
        },
        applier: RecordApplier::default(),
        tracker: Tracker::default(),
        listeners: Default::default(),
        phase: Phase::Before,
        window: None,
        error: None,
        grid: None,
        open_ns: 0,
        close_ns: None,
        holders: None,
        timeline: None,
        lost_base: Lost::default(),
        gaps: Vec::new(),
        first: None,
        last: header.start_mono_ns,
        now: 0,
        events: 0,
        window_events: 0,
        next_growth: 0,
        next_resync: 0,
    };
    // Reading (decompress, decode) runs on its own thread, a few blocks
    // ahead of the engine; blocks go back and forth without copying.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<Record>>(READ_AHEAD);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<Record>>();
    let (agg_tx, agg_rx) = std::sync::mpsc::sync_channel::<Vec<Deferred>>(READ_AHEAD);
    let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Batch>();
    let reading = &mut *reader;
    run.engine.defer_aggregates(parallel);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut spare = Vec::new();
            while let Some(block) = reading.next_block_owned(spare) {
                if full_tx.send(block).is_err() {
                    break;
                }
                spare = empty_rx.try_recv().unwrap_or_default();
            }
        });
        // Durations and ends are aggregated on a thread of their own, in
        // order: the same calls on the same data as on this thread.
        let aggregating = parallel.then(|| {
            s.spawn(move || {
                let mut aggs = Aggregates::default();
                aggs.keyed = false;
                for batch in agg_rx {
                    for d in batch {
                        if let Some(emptied) = aggs.take(d) {
                            let _ = spare_tx.send(emptied);
                        }
                    }
                }
                aggs
            })
        });
        let mut unsent = 0;
        for mut block in full_rx {
            for rec in &block {
                run.take(rec);
                unsent += 1;
                if parallel && unsent >= DEFER_BATCH {
                    while let Ok(b) = spare_rx.try_recv() {
                        run.engine.reuse(b);
                    }
                    let _ = agg_tx.send(run.engine.take_deferred());
                    unsent = 0;
                }
            }
            block.clear();
            let _ = empty_tx.send(block);
        }
        if let Some(thread) = aggregating {
            let _ = agg_tx.send(run.engine.take_deferred());
            drop(agg_tx);
            let mut aggs = match thread.join() {
                Ok(aggs) => aggs,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            aggs.merge_counts(std::mem::take(&mut run.engine.aggs));
            run.engine.aggs = aggs;
        }
        run.engine.defer_aggregates(false);
    });

    let first = run.first;
    let last = run.last;
    let span = Span {
        wall: first.map(|f| (run.clock.wall_ns(f), run.clock.wall_ns(last))),
    };
    let mut error = run.error.take().map(|e| e.with_span(opts, span));
    if first.is_none()
        && let Some((flag, arg)) = opts.from.as_ref().map(|a| ("--from", a)).or(opts.end_arg())
    {
        // Nothing to place a moment in.
        error = Some(ReportError::Outside {
            flag,
            text: arg.text.clone(),
            span,
        });
    }
    if error.is_none()
        && let Some(w) = run.window
    {
        if run.phase == Phase::Before && w.from > last {
            error = opts.from.as_ref().map(|a| ReportError::Outside {
                flag: "--from",
                text: a.text.clone(),
                span,
            });
        } else if run.phase != Phase::Closed && w.to != u64::MAX && w.to > last {
            error = opts.end_arg().map(|(flag, a)| ReportError::Outside {
                flag,
                text: a.text.clone(),
                span,
            });
        }
    }
    if run.phase == Phase::Before {
        let at = run.window.map_or(last, |w| w.from.min(last));
        run.open(at);
    }
    if run.phase == Phase::Open {
        run.close(last);
    }
    let close_ns = run.close_ns.unwrap_or(last);
    let lost = lost_since(run.applier.lost, run.lost_base);
    let mut summary = run
        .engine
        .snapshot(close_ns, run.clock.wall_ns(close_ns), run.host(lost));
    let open_ns = run.open_ns;
    let span_s = close_ns.saturating_sub(open_ns) as f64 / 1e9;
    summary.transitions_per_sec = if span_s > 0.0 {
        summary.transitions_total as f64 / span_s
    } else {
        0.0
    };
    let timeline = run.timeline.take().unwrap_or(timeline::Finished {
        points: Vec::new(),
        step_ns: opts.step_ns.unwrap_or(0),
        too_many: None,
    });
    if error.is_none()
        && let Some(points) = timeline.too_many
    {
        let span_ns = close_ns.saturating_sub(open_ns);
        error = Some(ReportError::TooManyPoints {
            step_ns: timeline.step_ns,
            span_ns,
            points,
            max: MAX_POINTS,
            min_step_ns: span_ns.div_ceil(MAX_POINTS - 1).max(1),
        });
    }
    let clock = run.clock;
    let holders = run.holders.take().unwrap_or_default();
    let names = Names {
        table: &run.applier.workloads,
        filter: &opts.workloads,
    };
    let filter_matched = !opts.workloads.narrows()
        || run
            .applier
            .workloads
            .iter()
            .any(|(_, w)| opts.workloads.matches(w));
    let HolderRows {
        close_wait: close_wait_holders,
        close_wait_workload: close_wait_workload_holders,
        destinations: time_wait_destination_holders,
        services: time_wait_service_holders,
        dropped,
    } = holder_rows(holders, &clock, &names);
    let listeners_in_window = run.listeners.finish(
        &run.engine.listeners,
        &clock,
        close_ns.saturating_sub(open_ns),
        |cgroup| names.fields(cgroup.unwrap_or(0)),
    );
    let report = Report {
        recording: RecordingInfo {
            file: file.to_string(),
            host: header.host,
            kernel: header.kernel,
            hook: header.hook,
            timewait_hook: header.timewait_hook,
            filters: header.filters,
            start_ns: clock.wall_ns(first.unwrap_or(last)),
            end_ns: clock.wall_ns(last),
            events: run.events,
            cut: reader
                .cut
                .as_ref()
                .map(|c| format!("{} at byte {}", c.error, c.offset)),
            skipped: {
                let mut v: Vec<String> = reader
                    .skipped
                    .iter()
                    .take(crate::stats::JSON_ROWS)
                    .map(|s| {
                        format!(
                            "{} at byte {}: {} bytes skipped",
                            s.error, s.offset, s.bytes
                        )
                    })
                    .collect();
                if reader.skipped.len() > crate::stats::JSON_ROWS {
                    v.push(format!(
                        "{} more damaged stretches",
                        reader.skipped.len() - crate::stats::JSON_ROWS
                    ));
                }
                v
            },
        },
        summary,
        gaps: run.gaps,
        window: WindowInfo {
            from_ns: clock.wall_ns(open_ns),
            to_ns: clock.wall_ns(close_ns),
            at_ns: opts.at.as_ref().map(|_| clock.wall_ns(close_ns)),
            events: run.window_events,
            step_ns: timeline.step_ns,
            points: timeline.points.len() as u64,
        },
        close_wait_timeline: timeline.points,
        close_wait_holders,
        close_wait_workload_holders,
        time_wait_destination_holders,
        time_wait_service_holders,
        holders_dropped: dropped,
        listeners_in_window,
        filter_matched,
        has_stacks: header.stacks || !run.engine.stacks.is_empty(),
        show_stacks: opts.stacks,
    };
    (report, error)
}

fn held(ep: &track::Episode, clock: &WallClock) -> Held {
    Held {
        peak: ep.peak,
        peak_ns: clock.wall_ns(ep.peak_ns),
        first_ns: clock.wall_ns(ep.first_ns),
        last_ns: clock.wall_ns(ep.last_ns),
        held_for_ms: ep.last_ns.saturating_sub(ep.first_ns) / 1_000_000,
        held_total_ms: ep.held_ns / 1_000_000,
        count_at_end: ep.now,
    }
}

fn comm_string(c: Option<crate::model::Comm>) -> Option<String> {
    c.map(|c| c.to_str_lossy().into_owned())
}

struct HolderRows {
    close_wait: Vec<CloseWaitHolder>,
    close_wait_workload: Vec<CloseWaitWorkloadHolder>,
    destinations: Vec<TimeWaitDestinationHolder>,
    services: Vec<TimeWaitServiceHolder>,
    dropped: HoldersDropped,
}

/// Peers, most frequent first, the first [`PEERS_SHOWN`].
fn top_peers(peers: impl IntoIterator<Item = (std::net::SocketAddr, u64)>) -> Vec<String> {
    let mut peers: Vec<_> = peers.into_iter().collect();
    peers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    peers
        .into_iter()
        .take(PEERS_SHOWN)
        .map(|(p, _)| p.to_string())
        .collect()
}

/// The cgroups' holders folded by workload name, largest peak first.
fn workload_rows(
    map: rustc_hash::FxHashMap<u64, track::CwHolder>,
    clock: &WallClock,
    names: &Names<'_>,
) -> Vec<CloseWaitWorkloadHolder> {
    struct Acc {
        fields: WorkloadFields,
        comm: Option<crate::model::Comm>,
        cgroups: Vec<u64>,
        ep: track::Episode,
        oldest_ns: u64,
        lower_bound: bool,
        peers: rustc_hash::FxHashMap<std::net::SocketAddr, u64>,
    }
    let mut by_name: std::collections::BTreeMap<String, Acc> = Default::default();
    for (id, x) in map.into_iter().filter(|(_, x)| x.ep.peak > 0) {
        if !names.keeps(id) {
            continue;
        }
        let fields = names.fields(id);
        let key = fields.workload.clone().unwrap_or_default();
        match by_name.get_mut(&key) {
            None => {
                by_name.insert(
                    key,
                    Acc {
                        fields,
                        comm: x.comm,
                        cgroups: vec![id],
                        ep: x.ep,
                        oldest_ns: x.oldest_ns,
                        lower_bound: x.oldest_lower_bound,
                        peers: x.peers,
                    },
                );
            }
            Some(acc) => {
                acc.cgroups.push(id);
                acc.comm = acc.comm.or(x.comm);
                acc.ep.merge(&x.ep);
                if x.oldest_ns >= acc.oldest_ns {
                    acc.oldest_ns = x.oldest_ns;
                    acc.lower_bound = x.oldest_lower_bound;
                }
                for (p, n) in x.peers {
                    *acc.peers.entry(p).or_default() += n;
                }
            }
        }
    }
    let mut rows: Vec<CloseWaitWorkloadHolder> = by_name
        .into_values()
        .map(|mut a| {
            a.cgroups.sort_unstable();
            CloseWaitWorkloadHolder {
                workload: a.fields,
                comm: comm_string(a.comm),
                cgroups: a.cgroups,
                held: held(&a.ep, clock),
                oldest_age_ms: a.oldest_ns / 1_000_000,
                oldest_age_is_lower_bound: a.lower_bound,
                peers: top_peers(a.peers),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.held
            .peak
            .cmp(&a.held.peak)
            .then(a.held.peak_ns.cmp(&b.held.peak_ns))
            .then(a.workload.workload.cmp(&b.workload.workload))
    });
    rows
}

/// The holders as rows, largest peak first (then earliest peak); with a
/// workload filter, only rows whose owner's workload matches.
fn holder_rows(h: Holders, clock: &WallClock, names: &Names<'_>) -> HolderRows {
    let close_wait_workload = workload_rows(h.close_wait_cgroups.map, clock, names);
    let mut cw: Vec<CloseWaitHolder> = h
        .close_wait
        .map
        .into_iter()
        .filter(|(_, x)| x.ep.peak > 0 && names.keeps(x.cgroup))
        .map(|(pid, x)| {
            let mut peers: Vec<_> = x.peers.into_iter().collect();
            peers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            CloseWaitHolder {
                pid,
                comm: comm_string(x.comm),
                workload: names.fields(x.cgroup),
                held: held(&x.ep, clock),
                oldest_age_ms: x.oldest_ns / 1_000_000,
                oldest_age_is_lower_bound: x.oldest_lower_bound,
                peers: peers
                    .into_iter()
                    .take(PEERS_SHOWN)
                    .map(|(p, _)| p.to_string())
                    .collect(),
            }
        })
        .collect();
    cw.sort_by(|a, b| {
        b.held
            .peak
            .cmp(&a.held.peak)
            .then(a.held.peak_ns.cmp(&b.held.peak_ns))
            .then(a.pid.cmp(&b.pid))
    });
    let mut dest: Vec<TimeWaitDestinationHolder> = h
        .destinations
        .map
        .into_iter()
        .filter(|(_, x)| x.ep.peak > 0)
        .filter_map(|(g, x)| {
            let TwGroup::Destination(daddr, dport) = g else {
                return None;
            };
            let owner = x.owner();
            let cgroup = owner.map_or(0, |o| o.2);
            if !names.keeps(cgroup) {
                return None;
            }
            Some(TimeWaitDestinationHolder {
                daddr,
                dport,
                pid: owner.map(|o| o.0),
                comm: comm_string(owner.map(|o| o.1)),
                workload: names.fields(cgroup),
                held: held(&x.ep, clock),
                begun: x.begun,
                ports: x.budget_peak.map_or(x.ports_at_peak, |b| b.ports),
                port_share_at_peak: x.budget_peak.map_or(0.0, |b| b.share()),
                budget_netns: x.budget_peak.map(|b| b.netns),
                budget_saddr: x.budget_peak.map(|b| b.saddr),
                budget_time_wait: x.budget_peak.map(|b| b.time_wait),
            })
        })
        .collect();
    dest.sort_by(|a, b| {
        b.held
            .peak
            .cmp(&a.held.peak)
            .then(a.held.peak_ns.cmp(&b.held.peak_ns))
            .then((a.daddr, a.dport).cmp(&(b.daddr, b.dport)))
    });
    let mut svc: Vec<TimeWaitServiceHolder> = h
        .services
        .map
        .into_iter()
        .filter(|(_, x)| x.ep.peak > 0)
        .filter_map(|(g, x)| {
            let TwGroup::Service(netns, saddr, sport) = g else {
                return None;
            };
            let owner = x.owner();
            let cgroup = owner.map_or(0, |o| o.2);
            if !names.keeps(cgroup) {
                return None;
            }
            let held_s = x.ep.held_ns as f64 / 1e9;
            Some(TimeWaitServiceHolder {
                netns,
                saddr,
                sport,
                pid: owner.map(|o| o.0),
                comm: comm_string(owner.map(|o| o.1)),
                workload: names.fields(cgroup),
                held: held(&x.ep, clock),
                begun: x.begun,
                rate_per_sec: if held_s > 0.0 {
                    x.begun as f64 / held_s
                } else {
                    0.0
                },
            })
        })
        .collect();
    svc.sort_by(|a, b| {
        b.held
            .peak
            .cmp(&a.held.peak)
            .then(a.held.peak_ns.cmp(&b.held.peak_ns))
            .then((a.netns, a.saddr, a.sport).cmp(&(b.netns, b.saddr, b.sport)))
    });
    let dropped = HoldersDropped {
        close_wait: h.close_wait.dropped,
        close_wait_workload: h.close_wait_cgroups.dropped,
        time_wait_destination: h.destinations.dropped,
        time_wait_service: h.services.dropped,
    };
    HolderRows {
        close_wait: cw,
        close_wait_workload,
        destinations: dest,
        services: svc,
        dropped,
    }
}
