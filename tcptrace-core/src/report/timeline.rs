//! The timeline of a report: CLOSE_WAIT and TIME_WAIT totals and the top
//! holders at evenly spaced moments of the window, plus the most of each
//! between two points (counts are exact at every event: see
//! [`super::track`]).
//!
//! With `--step`, points fall every step from the window's start (at most
//! [`MAX_POINTS`]). By default the step fits the window, about
//! [`TARGET_POINTS`] points, without knowing the window's length in advance
//! (a recording's end is only known once read): points are kept on a fine
//! grid that starts at 1 ms and coarsens along [`LADDER`] (each step a
//! multiple of the one before, so coarsening keeps a subset) whenever more
//! than [`FINE_POINTS`] would be kept; at the end, the step is the multiple
//! of the grid's closest to the window / [`TARGET_POINTS`]. A last point at
//! the window's end is always there.

use super::{TimeWaitTop, TimelinePoint, track::Tracker, track::TwGroup};
use crate::{clock::WallClock, output::escape};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

/// Points of a default timeline, about.
pub const TARGET_POINTS: u64 = 60;
/// Points a `--step` may make.
pub const MAX_POINTS: u64 = 100_000;
/// Points kept on the fine grid before it coarsens.
const FINE_POINTS: usize = 2_048;
/// The fine grid's steps, each a multiple of the one before (past the last:
/// doubling).
const LADDER: [u64; 19] = [
    MS,
    2 * MS,
    10 * MS,
    20 * MS,
    100 * MS,
    200 * MS,
    S,
    2 * S,
    10 * S,
    20 * S,
    60 * S,
    120 * S,
    600 * S,
    1_200 * S,
    3_600 * S,
    7_200 * S,
    21_600 * S,
    43_200 * S,
    86_400 * S,
];
/// Holders named per point.
const TOP: usize = 3;

#[derive(Debug)]
pub(super) struct Grid {
    origin: u64,
    interval: u64,
    fixed: bool,
    points: Vec<TimelinePoint>,
    /// Points a `--step` would have made beyond [`MAX_POINTS`].
    overflow: u64,
    /// The most of each since the last point.
    cw_max: u64,
    tw_max: u64,
}

/// The finished timeline.
#[derive(Debug)]
pub(super) struct Finished {
    pub points: Vec<TimelinePoint>,
    pub step_ns: u64,
    /// Points a `--step` would have made in all (more than [`MAX_POINTS`]).
    pub too_many: Option<u64>,
}

impl Grid {
    /// A timeline from `origin` (monotonic), every `step_ns` or by default.
    pub fn new(origin: u64, step_ns: Option<u64>, tracker: &Tracker) -> Self {
        Self {
            origin,
            interval: step_ns.unwrap_or(LADDER[0]).max(1),
            fixed: step_ns.is_some(),
            points: Vec::new(),
            overflow: 0,
            cw_max: tracker.close_wait.total,
            tw_max: tracker.time_wait.total,
        }
    }

    fn made(&self) -> u64 {
        self.points.len() as u64 + self.overflow
    }

    fn next_due(&self) -> u64 {
        self.origin
            .saturating_add(self.made().saturating_mul(self.interval))
    }

    /// The counts just changed.
    pub fn note(&mut self, tracker: &Tracker) {
        self.cw_max = self.cw_max.max(tracker.close_wait.total);
        self.tw_max = self.tw_max.max(tracker.time_wait.total);
    }

    /// Whether a point is due before `before` (what [`Self::advance`]
    /// would make): most records make none.
    #[inline]
    pub fn due_before(&self, before: u64) -> bool {
        let due = self.next_due();
        due < before && due != u64::MAX
    }

    /// Makes the points due before `before` (monotonic): the state now is
    /// the state at each of them (nothing happened in between).
    pub fn advance(&mut self, before: u64, tracker: &Tracker, clock: &WallClock) {
        loop {
            let due = self.next_due();
            if due >= before || due == u64::MAX {
                return;
            }
            let n = (before - 1 - due) / self.interval + 1;
            if !self.fixed && self.points.len() as u64 + n > FINE_POINTS as u64 {
                self.coarsen();
                continue;
            }
            let mut p = point(tracker, clock.wall_ns(due), self.cw_max, self.tw_max);
            for i in 0..n {
                if self.made() >= MAX_POINTS {
                    self.overflow += n - i;
                    break;
                }
                p.ts_ns = clock.wall_ns(due + i * self.interval);
                self.points.push(p.clone());
                p.close_wait_max = p.close_wait;
                p.time_wait_max = p.time_wait;
            }
            self.cw_max = tracker.close_wait.total;
            self.tw_max = tracker.time_wait.total;
            return;
        }
    }

    /// The next step of [`LADDER`]: every point not on it goes, its most
    /// folded into the next one kept.
    fn coarsen(&mut self) {
        let next = LADDER
            .iter()
            .copied()
            .find(|&s| s > self.interval)
            .unwrap_or(self.interval.saturating_mul(2));
        let ratio = (next / self.interval).max(1) as usize;
        let mut carry = (0, 0);
        let mut kept = Vec::with_capacity(self.points.len() / ratio + 1);
        for (i, mut p) in self.points.drain(..).enumerate() {
            if i % ratio == 0 {
                p.close_wait_max = p.close_wait_max.max(carry.0);
                p.time_wait_max = p.time_wait_max.max(carry.1);
                kept.push(p);
                carry = (0, 0);
            } else {
                carry = (carry.0.max(p.close_wait_max), carry.1.max(p.time_wait_max));
            }
        }
        self.cw_max = self.cw_max.max(carry.0);
        self.tw_max = self.tw_max.max(carry.1);
        self.points = kept;
        self.interval = next;
    }

    /// The timeline up to `end` (monotonic), with a last point there.
    pub fn finish(mut self, end: u64, tracker: &Tracker, clock: &WallClock) -> Finished {
        self.advance(end.saturating_add(1), tracker, clock);
        let grid_len = self.points.len();
        let made = self.made();
        // The grid's last point is the end itself, or a point at the end
        // follows it.
        let ends_on_grid = self.overflow == 0
            && grid_len > 0
            && self.origin + (grid_len as u64 - 1) * self.interval == end;
        if !ends_on_grid {
            self.points
                .push(point(tracker, clock.wall_ns(end), self.cw_max, self.tw_max));
        }
        if self.fixed {
            return Finished {
                too_many: (made > MAX_POINTS).then_some(made),
                points: self.points,
                step_ns: self.interval,
            };
        }
        let span = end.saturating_sub(self.origin);
        let want = span / TARGET_POINTS;
        let m = ((want + self.interval / 2) / self.interval).max(1);
        let last = self.points.len() - 1;
        let mut carry = (0, 0);
        let mut out = Vec::with_capacity(self.points.len() / m as usize + 2);
        for (i, mut p) in self.points.into_iter().enumerate() {
            if (i as u64).is_multiple_of(m) || i == last {
                p.close_wait_max = p.close_wait_max.max(carry.0);
                p.time_wait_max = p.time_wait_max.max(carry.1);
                out.push(p);
                carry = (0, 0);
            } else {
                carry = (carry.0.max(p.close_wait_max), carry.1.max(p.time_wait_max));
            }
        }
        Finished {
            points: out,
            step_ns: self.interval * m,
            too_many: None,
        }
    }
}

/// The state now, as a point at `ts_ns` (wall).
fn point(tracker: &Tracker, ts_ns: u64, cw_max: u64, tw_max: u64) -> TimelinePoint {
    let close_wait = tracker.close_wait.total;
    let time_wait = tracker.time_wait.total;
    TimelinePoint {
        ts_ns,
        close_wait,
        time_wait,
        top: tracker
            .close_wait
            .top(TOP)
            .map(|(pid, n)| {
                (
                    pid,
                    tracker
                        .comms
                        .get(&pid)
                        .map(|c| c.to_str_lossy().into_owned()),
                    n,
                )
            })
            .collect(),
        close_wait_max: cw_max.max(close_wait),
        time_wait_max: tw_max.max(time_wait),
        time_wait_top: tracker
            .time_wait
            .top(TOP)
            .map(|(g, count)| time_wait_top(g, count))
            .collect(),
    }
}

fn time_wait_top(g: TwGroup, count: u64) -> TimeWaitTop {
    match g {
        TwGroup::Destination(ip, port) => TimeWaitTop {
            kind: "destination",
            netns: None,
            addr: std::net::SocketAddr::new(ip, port).to_string(),
            count,
        },
        TwGroup::Service(netns, ip, port) => TimeWaitTop {
            kind: "service",
            netns: Some(netns),
            addr: std::net::SocketAddr::new(ip, port).to_string(),
            count,
        },
    }
}

/// A point's holders for a text line: "1234/leakyd 20".
pub(super) fn text_top(p: &TimelinePoint) -> String {
    let mut parts: Vec<String> = p
        .top
        .iter()
        .map(|(pid, comm, n)| {
            format!(
                "{}/{} {n}",
                pid.map_or("-".into(), |p| p.to_string()),
                escape(comm.as_deref().unwrap_or("?"))
            )
        })
        .collect();
    parts.extend(p.time_wait_top.iter().map(|t| {
        let side = if t.kind == "service" { "svc" } else { "dst" };
        format!("{side} {} {}", t.addr, t.count)
    }));
    parts.join("  ")
}
