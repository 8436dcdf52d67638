//! `tcptrace replay`: a recording printed exactly as `trace` prints live
//! events (text, or the same JSON Lines), paced at `--speed` or all at once.
//!
//! Each event also names its owner's workload as the recording stored it
//! (format 4; never looked up on this host): the `WORKLOAD` column `trace`
//! prints, and in JSON the same fields as `trace --json`: `cgroup_path`, `workload`,
//! `workload_kind`, `unit`, `container`, `container_id`, `pod`, `pod_uid`,
//! `namespace`, `qos` (null when not applicable or unknown; `workload` is
//! `cgroup:<id>` for a cgroup the recording does not name).
//! `--cgroup`/`--container`/`--unit` keep the events whose recorded
//! workload matches (loss lines are always printed).

use std::{
    io::{self, Write},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{cli::ReplayArgs, clock::WallClock};
use tcptrace_core::{
    model::{Event, EventKind},
    output::{escape, json, text},
    record::Record,
    workload::{Workload, WorkloadTable},
};

/// Prints replayed events with their recorded workloads.
struct Replayer<W: Write> {
    out: W,
    json: bool,
    clock: WallClock,
    line: Vec<u8>,
    /// The recording's workloads, by cgroup id (the latest record wins).
    workloads: WorkloadTable,
}

impl<W: Write> Replayer<W> {
    fn header(&mut self) -> io::Result<()> {
        if !self.json {
            writeln!(self.out, "{}", text::HEADER)?;
        }
        Ok(())
    }

    /// The workload of `e`'s owner: the recording's, else `cgroup:<id>`;
    /// None without an owner cgroup.
    fn workload_of(&self, e: &Event) -> Option<std::borrow::Cow<'_, Workload>> {
        use std::borrow::Cow;
        let id = e.owner.map(|o| o.cgroup).filter(|id| *id != 0)?;
        Some(match self.workloads.get(id) {
            Some(w) => Cow::Borrowed(&**w),
            None => Cow::Owned(Workload::unknown(id)),
        })
    }

    fn event(&mut self, e: &Event, w: Option<&Workload>) -> io::Result<()> {
        if e.kind == EventKind::Accept {
            return Ok(());
        }
        let wall = self.clock.wall_ns(e.ts_ns);
        self.line.clear();
        // The printers `trace` uses, naming the recorded workload.
        if self.json {
            json::write_event_with(&mut self.line, e, wall, w)?;
        } else {
            text::write_event_with(&mut self.line, e, wall, w.map(|w| &*w.display))?;
        }
        self.out.write_all(&self.line)
    }

    fn lost_at(&mut self, lost: &tcptrace_core::model::Lost, mono_ns: u64) -> io::Result<()> {
        let wall = self.clock.wall_ns(mono_ns);
        if self.json {
            json::write_lost(&mut self.out, lost, wall)
        } else {
            text::write_lost(&mut self.out, lost, wall)
        }
    }
}

pub fn run(args: &ReplayArgs) -> Result<ExitCode> {
    let speed = crate::cli::speed("--speed", args.speed)?;
    let filter = args.workload.to_filter()?;
    let netns = args.netns()?;
    let mut reader = crate::source::recording::open_reader(&args.file)?;
    let clock = WallClock {
        offset_ns: reader.header.clock_offset_ns as i128,
    };
    let stdout = io::stdout().lock();
    let mut printer = Replayer {
        out: io::BufWriter::with_capacity(64 * 1024, stdout),
        json: args.json,
        clock,
        line: Vec::with_capacity(512),
        workloads: WorkloadTable::default(),
    };
    let paced = !args.as_fast_as_possible;
    let started = Instant::now();
    let mut first_ts: Option<u64> = None;
    let written = (|| -> io::Result<()> {
        printer.header()?;
        for rec in reader.by_ref() {
            let ts = match &rec {
                Record::Event(e) => e.ts_ns,
                Record::Lost { ts_ns, .. } => *ts_ns,
                Record::Snapshot { .. }
                | Record::Stack { .. }
                | Record::Listeners { .. }
                | Record::Drop(_) => continue,
                Record::Workload { cgroup, workload } => {
                    printer.workloads.insert(*cgroup, (**workload).clone(), 0);
                    continue;
                }
            };
            if paced {
                let first = *first_ts.get_or_insert(ts);
                // Bounded: at most u64::MAX ns over the slowest speed.
                let due =
                    Duration::try_from_secs_f64(ts.saturating_sub(first) as f64 / 1e9 / speed)
                        .unwrap_or(Duration::MAX);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    printer.out.flush()?;
                    std::thread::sleep(wait);
                }
            }
            match rec {
                Record::Event(e) => {
                    if !netns.is_empty() && !e.netns.is_some_and(|n| netns.contains(&n)) {
                        continue;
                    }
                    let w = printer.workload_of(&e).map(|w| w.into_owned());
                    if filter.narrows() && !w.as_ref().is_some_and(|w| filter.matches(w)) {
                        continue;
                    }
                    printer.event(&e, w.as_ref())?;
                }
                Record::Lost { ts_ns, lost } => printer.lost_at(&lost, ts_ns)?,
                Record::Snapshot { .. }
                | Record::Workload { .. }
                | Record::Stack { .. }
                | Record::Listeners { .. }
                | Record::Drop(_) => {}
            }
        }
        printer.out.flush()
    })();
    written?;
    for warning in reader.warnings(&args.file) {
        crate::say!("warning: {warning}");
    }
    if filter.narrows() && !printer.workloads.iter().any(|(_, w)| filter.matches(w)) {
        crate::say!(
            "warning: {} matches no workload in {}",
            args.workload.describe(),
            escape(&args.file.display().to_string())
        );
    }
    let _ = io::stderr().flush();
    Ok(ExitCode::SUCCESS)
}
