//! `tcptrace replay`: a recording printed exactly as `trace` prints live
//! events (text, or the same JSON Lines), paced at `--speed` or all at once.

use std::{
    io::{self, Write},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::trace::Printer;
use crate::{cli::ReplayArgs, clock::WallClock};
use tcptrace_core::record::Record;

pub fn run(args: &ReplayArgs) -> Result<ExitCode> {
    let speed = crate::cli::speed("--speed", args.speed)?;
    let mut reader = crate::source::recording::open_reader(&args.file)?;
    let clock = WallClock {
        offset_ns: reader.header.clock_offset_ns as i128,
    };
    let stdout = io::stdout().lock();
    let mut printer = Printer::new(
        io::BufWriter::with_capacity(64 * 1024, stdout),
        args.json,
        clock,
    );
    let paced = !args.as_fast_as_possible;
    let started = Instant::now();
    let mut first_ts: Option<u64> = None;
    let written = (|| -> io::Result<()> {
        printer.header()?;
        for rec in reader.by_ref() {
            let ts = match &rec {
                Record::Event(e) => e.ts_ns,
                Record::Lost { ts_ns, .. } => *ts_ns,
                Record::Snapshot { .. } => continue,
            };
            if paced {
                let first = *first_ts.get_or_insert(ts);
                // Bounded: at most u64::MAX ns over the slowest speed.
                let due =
                    Duration::try_from_secs_f64(ts.saturating_sub(first) as f64 / 1e9 / speed)
                        .unwrap_or(Duration::MAX);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    printer.flush()?;
                    std::thread::sleep(wait);
                }
            }
            match rec {
                Record::Event(e) => printer.event(&e)?,
                Record::Lost { ts_ns, lost } => printer.lost_at(&lost, ts_ns)?,
                Record::Snapshot { .. } => {}
            }
        }
        printer.flush()
    })();
    written?;
    for warning in reader.warnings(&args.file) {
        crate::say!("warning: {warning}");
    }
    let _ = io::stderr().flush();
    Ok(ExitCode::SUCCESS)
}
