//! The part of a recording a report covers: `--from`/`--to` (a window) or
//! `--at` (a moment), given as an offset from the recording's start, a UTC
//! time of day on the recording's day, or an absolute time. The binary
//! parses what the user typed into a [`TimeSpec`]; here it becomes a
//! monotonic timestamp of the recording (pure arithmetic on its clock), and
//! a moment outside the recording becomes one line naming its span.

use std::fmt;

use crate::clock::{WallClock, fmt_ms};

const DAY_NS: u64 = 86_400 * 1_000_000_000;

/// A moment as the user gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSpec {
    /// Nanoseconds after the recording's first record (`90`, `90s`, `1m30s`, `+5s`).
    Offset(u64),
    /// Nanoseconds after midnight UTC, on the recording's day (`16:05:03.250`);
    /// a recording that runs past midnight takes the next day for times of
    /// day earlier than its start.
    TimeOfDay(u64),
    /// Unix-epoch nanoseconds (RFC 3339 `2026-12-01T16:05:03Z`).
    Wall(u64),
}

/// A moment given on the command line: what was typed (for messages) and
/// what it means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeArg {
    pub text: String,
    pub spec: TimeSpec,
}

/// What a report covers, before it is resolved against the recording.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `--from`: the window starts here (records before it still build the
    /// state, but holders, timeline, gaps and counts start here).
    pub from: Option<TimeArg>,
    /// `--to`: the window ends here (the summary is the state then).
    pub to: Option<TimeArg>,
    /// `--at`: the state at this moment (a window from the start to it).
    pub at: Option<TimeArg>,
    /// `--step`: the timeline's step; default about
    /// [`super::timeline::TARGET_POINTS`] points over the window.
    pub step_ns: Option<u64>,
    /// `--cgroup`/`--container`/`--unit`: holder rows are kept when their
    /// owner's recorded workload matches.
    pub workloads: crate::workload::WorkloadFilter,
    /// `--netns`: only the events and snapshot sockets of these
    /// namespaces (inodes) are read; empty: all.
    pub netns: Vec<u32>,
    /// `--stacks`: the text shows the full stack of each process's leading
    /// code path (the code paths themselves show whenever the recording
    /// has stacks; JSON has them then too).
    pub stacks: bool,
}

/// Why a report cannot be made as asked: one line, a usage error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("{flag} {text} is outside the recording, which {span}")]
    Outside {
        flag: &'static str,
        text: String,
        span: Span,
    },
    #[error("--from {from} is after --to {to}")]
    Reversed { from: String, to: String },
    #[error(
        "--step {step} makes {points} timeline points over {len}: at most {max}; give a step of at least {min}",
        step = fmt_ns(*step_ns),
        len = fmt_ns(*span_ns),
        min = fmt_ns(*min_step_ns)
    )]
    TooManyPoints {
        step_ns: u64,
        span_ns: u64,
        points: u64,
        max: u64,
        min_step_ns: u64,
    },
}

/// The recording's span (wall clock), for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// `None`: the recording has no record at all.
    pub wall: Option<(u64, u64)>,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wall {
            None => write!(f, "has no records"),
            // To the millisecond, inward: both printed moments are inside.
            Some((start, end)) => write!(
                f,
                "spans {} to {} ({}; offsets 0 to {})",
                rfc3339(start.div_ceil(1_000_000) * 1_000_000),
                rfc3339(end - end % 1_000_000),
                fmt_ns(end.saturating_sub(start)),
                fmt_ns(end.saturating_sub(start)),
            ),
        }
    }
}

/// A duration for messages and headings: "9.0s", "1m30s", "150.0ms",
/// "90.0us", "500ns".
pub fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        fmt_ms(ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.1}us", ns as f64 / 1e3)
    } else {
        format!("{ns}ns")
    }
}

/// `2026-12-01T16:05:03.25Z` for Unix-epoch nanoseconds.
pub fn rfc3339(wall_ns: u64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(wall_ns))
        .map_or_else(|_| format!("{wall_ns} ns"), |t| t.to_string())
}

/// Where a report starts and ends, in the recording's monotonic time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub from: u64,
    /// `u64::MAX`: up to the end.
    pub to: u64,
    /// The window was given a start (`--from`): counts restart there.
    pub explicit_from: bool,
}

/// The monotonic time of `spec` in a recording whose first record is at
/// `start` (monotonic). `None` when it falls before the recording (or
/// before the epoch).
pub fn resolve(spec: TimeSpec, start: u64, clock: &WallClock) -> Option<u64> {
    let mono_of_wall =
        |wall: u64| -> Option<u64> { u64::try_from(i128::from(wall) - clock.offset_ns).ok() };
    let t = match spec {
        TimeSpec::Offset(ns) => start.checked_add(ns)?,
        TimeSpec::Wall(wall) => mono_of_wall(wall)?,
        TimeSpec::TimeOfDay(ns) => {
            let start_wall = clock.wall_ns(start);
            let mut wall = start_wall - start_wall % DAY_NS + ns.min(DAY_NS - 1);
            if wall < start_wall {
                wall += DAY_NS;
            }
            mono_of_wall(wall)?
        }
    };
    (t >= start).then_some(t)
}

impl Options {
    /// The flag and text of the window's end, if given.
    pub(super) fn end_arg(&self) -> Option<(&'static str, &TimeArg)> {
        match (&self.at, &self.to) {
            (Some(at), _) => Some(("--at", at)),
            (None, Some(to)) => Some(("--to", to)),
            _ => None,
        }
    }

    /// Every moment given, with its flag.
    fn args(&self) -> impl Iterator<Item = (&'static str, &TimeArg)> {
        self.from
            .as_ref()
            .map(|a| ("--from", a))
            .into_iter()
            .chain(self.end_arg())
    }

    /// Whether no moment was given (the whole recording).
    pub fn is_whole(&self) -> bool {
        self.args().next().is_none()
    }

    /// Resolves the window against a recording whose first record is at
    /// `start`. On failure: the flag and text at fault.
    pub(super) fn resolve(&self, start: u64, clock: &WallClock) -> Result<Resolved, ResolveError> {
        let mut out = Resolved {
            from: start,
            to: u64::MAX,
            explicit_from: self.from.is_some(),
        };
        for (flag, arg) in self.args() {
            let t = resolve(arg.spec, start, clock).ok_or_else(|| ResolveError::Outside {
                flag,
                text: arg.text.clone(),
            })?;
            if flag == "--from" {
                out.from = t;
            } else {
                out.to = t;
            }
        }
        if out.from > out.to {
            return Err(ResolveError::Reversed);
        }
        Ok(out)
    }
}

/// [`Options::resolve`]'s failures, before the span is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ResolveError {
    Outside { flag: &'static str, text: String },
    Reversed,
}

impl ResolveError {
    pub(super) fn with_span(self, opts: &Options, span: Span) -> ReportError {
        match self {
            Self::Outside { flag, text } => ReportError::Outside { flag, text, span },
            Self::Reversed => ReportError::Reversed {
                from: opts
                    .from
                    .as_ref()
                    .map_or_else(String::new, |a| a.text.clone()),
                to: opts
                    .end_arg()
                    .map_or_else(String::new, |(_, a)| a.text.clone()),
            },
        }
    }
}
