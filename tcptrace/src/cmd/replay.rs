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
//!
//! Recordings of format 6 also have `drop` lines, as `trace` prints them
//! ([`tcptrace_core::output::drops`]): the kernel-reported drops, with the
//! same rate limit per listener and reason (on the recording's clock), and
//! the listeners' drop count deltas between samples. The kernel's names of
//! its drop reasons are not in recordings: `kernel_reason_id` only. With a
//! workload filter there are none (a drop has no owner of its own).

use std::{
    io::{self, Write},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{cli::ReplayArgs, clock::WallClock};
use tcptrace_core::{
    model::{Event, EventKind},
    output::{
        drops::{self, DropFeed, DropLine},
        escape, json, text,
    },
    record::{Reader, Record},
    workload::{Workload, WorkloadFilter, WorkloadTable},
};

/// Prints replayed events with their recorded workloads.
struct Replayer<W: Write> {
    out: W,
    json: bool,
    clock: WallClock,
    line: Vec<u8>,
    /// The recording's workloads, by cgroup id (the latest record wins).
    workloads: WorkloadTable,
    /// The listener table and rate limit of `drop` lines.
    drops: DropFeed,
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

    fn drop_lines(&mut self, lines: Vec<DropLine>) -> io::Result<()> {
        for d in lines {
            let wall = self.clock.wall_ns(d.mono_ns);
            if self.json {
                drops::write_json(&mut self.out, &d, wall)?;
            } else {
                drops::write_text(&mut self.out, &d, wall)?;
            }
        }
        Ok(())
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

/// How a recording is played: paced or not, and what it keeps.
struct Play<'a> {
    paced: bool,
    speed: f64,
    netns: &'a [u32],
    filter: &'a WorkloadFilter,
}

/// Every record of `reader` through `printer`.
fn play<R: io::Read, W: Write>(
    reader: &mut Reader<R>,
    printer: &mut Replayer<W>,
    how: &Play<'_>,
) -> io::Result<()> {
    let Play {
        paced,
        speed,
        netns,
        filter,
    } = *how;
    let drop_lines = !filter.narrows();
    let started = Instant::now();
    let mut first_ts: Option<u64> = None;
    printer.header()?;
    for rec in reader.by_ref() {
        let ts = match &rec {
            Record::Event(e) => e.ts_ns,
            Record::Lost { ts_ns, .. } => *ts_ns,
            Record::Listeners { ts_ns, .. } if drop_lines => *ts_ns,
            Record::Drop(d) if drop_lines => d.ts_ns,
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
            let due = Duration::try_from_secs_f64(ts.saturating_sub(first) as f64 / 1e9 / speed)
                .unwrap_or(Duration::MAX);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                printer.out.flush()?;
                std::thread::sleep(wait);
            }
        }
        // The rate limit's seconds that ended by now.
        let due = printer.drops.due(ts);
        printer.drop_lines(due)?;
        let keeps = |ns: Option<u32>| netns.is_empty() || ns.is_some_and(|n| netns.contains(&n));
        match rec {
            Record::Event(e) => {
                if !keeps(e.netns) {
                    continue;
                }
                let w = printer.workload_of(&e).map(|w| w.into_owned());
                if filter.narrows() && !w.as_ref().is_some_and(|w| filter.matches(w)) {
                    continue;
                }
                printer.event(&e, w.as_ref())?;
            }
            Record::Lost { ts_ns, lost } => printer.lost_at(&lost, ts_ns)?,
            Record::Drop(d) => {
                if keeps(d.netns) {
                    let lines = printer.drops.drop(&d, None);
                    printer.drop_lines(lines)?;
                }
            }
            Record::Listeners {
                ts_ns,
                mut listeners,
                mut counters,
            } => {
                if !netns.is_empty() {
                    listeners.retain(|l| keeps(l.netns));
                    counters.retain(|c| netns.contains(&c.netns));
                }
                let lines = printer.drops.sample(ts_ns, &listeners, &counters);
                printer.drop_lines(lines)?;
            }
            Record::Snapshot { .. } | Record::Workload { .. } | Record::Stack { .. } => {}
        }
    }
    let rest = printer.drops.finish();
    printer.drop_lines(rest)?;
    printer.out.flush()
}

fn replayer<W: Write>(out: W, json: bool, clock: WallClock) -> Replayer<W> {
    Replayer {
        out,
        json,
        clock,
        line: Vec::with_capacity(512),
        workloads: WorkloadTable::default(),
        drops: DropFeed::default(),
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
    let mut printer = replayer(
        io::BufWriter::with_capacity(64 * 1024, stdout),
        args.json,
        clock,
    );
    let how = Play {
        paced: !args.as_fast_as_possible,
        speed,
        netns: &netns,
        filter: &filter,
    };
    play(&mut reader, &mut printer, &how)?;
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use tcptrace_core::{
        listeners::{DropCounters, DropReason, ListenerSample, NetnsDropCounters, SynDrop},
        model::{Comm, Family, SeenOwner},
        record::{Header, Writer},
    };

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn listener(drops: u64, netns: u32) -> ListenerSample {
        ListenerSample {
            netns: Some(netns),
            family: Family::V4,
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            inode: 3,
            owner: Some(SeenOwner {
                pid: 55,
                comm: Comm::from_name("slowacceptd"),
            }),
            cgroup: None,
            queue: 2,
            limit: 1,
            drops: Some(drops),
        }
    }

    fn counters(n: u64, netns: u32) -> NetnsDropCounters {
        NetnsDropCounters {
            netns,
            counters: DropCounters {
                listen_overflows: Some(n),
                listen_drops: Some(n),
                ..DropCounters::default()
            },
        }
    }

    /// Two samples of :8080 (20 drops between them) and 8 SYNs to port 9
    /// within a second.
    fn recording() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &Header::default()).unwrap();
        w.listeners(SEC, &[listener(0, 7)], &[counters(0, 7)])
            .unwrap();
        for i in 0..8 {
            w.drop_record(&SynDrop {
                ts_ns: SEC + SEC / 10 + i,
                netns: Some(7),
                family: Family::V4,
                local: IpAddr::V4(Ipv4Addr::LOCALHOST),
                local_port: 9,
                remote: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
                remote_port: 45_000,
                reason: DropReason::NoListener,
                kernel_reason: 3,
                syn: true,
                ack: false,
                rx_state: None,
                suppressed: 0,
            })
            .unwrap();
        }
        w.listeners(2 * SEC, &[listener(20, 7)], &[counters(20, 7)])
            .unwrap();
        w.finish().unwrap()
    }

    fn replay(netns: &[u32], filter: &WorkloadFilter) -> Vec<serde_json::Value> {
        let bytes = recording();
        let mut reader = Reader::new(&bytes[..]).unwrap();
        let mut printer = replayer(Vec::new(), true, WallClock { offset_ns: 0 });
        let how = Play {
            paced: false,
            speed: 1.0,
            netns,
            filter,
        };
        play(&mut reader, &mut printer, &how).unwrap();
        String::from_utf8(printer.out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn replay_prints_drop_lines_like_trace() {
        let lines = replay(&[], &WorkloadFilter::default());
        assert!(lines.iter().all(|l| l["event"] == "drop"));
        let closed: Vec<u64> = lines
            .iter()
            .filter(|l| l["destination"] == "127.0.0.1:9")
            .map(|l| l["count"].as_u64().unwrap())
            .collect();
        assert_eq!(closed, [1, 1, 1, 1, 1, 3], "five, then the rest summed");
        let sampled: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["source"] == "sock_diag")
            .collect();
        assert_eq!(sampled.len(), 1);
        assert_eq!(sampled[0]["count"], 20);
        assert_eq!(sampled[0]["reason"], "accept_queue_full");
        assert_eq!(sampled[0]["comm"], "slowacceptd");
        assert_eq!(sampled[0]["ts_ns"], 2 * SEC);
        // Another namespace: nothing.
        assert!(replay(&[8], &WorkloadFilter::default()).is_empty());
    }
}
