//! `tcptrace trace`: every transition and TIME_WAIT event as it is drained,
//! as text or JSON Lines, with a line for events lost every second while
//! losing and a summary at exit.

use std::{
    io::{self, Write},
    process::ExitCode,
};

use anyhow::Result;
use tcptrace_core::{
    clock::WallClock,
    model::{Event, EventKind, Lost},
    output::{json, text},
    record::Record,
    workload::Workload,
};

use super::Edges;
use crate::{
    cli::TraceConfig,
    session::{Consumer, Ctx, Flow, Hangup, Options},
    source::Live,
};

/// Writes events in the chosen format; counts what it wrote.
pub struct Printer<W: Write> {
    out: W,
    json: bool,
    clock: WallClock,
    pub printed: u64,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, json: bool, clock: WallClock) -> Self {
        Self {
            out,
            json,
            clock,
            printed: 0,
        }
    }

    pub fn header(&mut self) -> io::Result<()> {
        if !self.json {
            writeln!(self.out, "{}", text::HEADER)?;
        }
        Ok(())
    }

    /// One event (owner updates from the accept hook feed the engine only:
    /// `trace` shows transitions and TIME_WAIT).
    pub fn event(&mut self, e: &Event) -> io::Result<()> {
        self.event_with(e, None)
    }

    /// One event with its owner's workload (the `WORKLOAD` column and the
    /// JSON workload fields; `-`/null when `None`).
    pub fn event_with(&mut self, e: &Event, workload: Option<&Workload>) -> io::Result<()> {
        if e.kind == EventKind::Accept {
            return Ok(());
        }
        let wall = self.clock.wall_ns(e.ts_ns);
        if self.json {
            json::write_event_with(&mut self.out, e, wall, workload)?;
        } else {
            text::write_event_with(&mut self.out, e, wall, workload.map(|w| &*w.display))?;
        }
        self.printed += 1;
        Ok(())
    }

    /// A lost-events line stamped with the (monotonic) time of the loss.
    pub fn lost_at(&mut self, lost: &Lost, mono_ns: u64) -> io::Result<()> {
        let wall = self.clock.wall_ns(mono_ns);
        if self.json {
            json::write_lost(&mut self.out, lost, wall)
        } else {
            text::write_lost(&mut self.out, lost, wall)
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// `trace` as a consumer of the loop.
pub struct Trace<W: Write> {
    pub printer: Printer<W>,
    limit: u64,
}

impl<W: Write> Trace<W> {
    /// Prints to `out`; stops after `count` events.
    pub fn new(out: W, json: bool, clock: WallClock, count: Option<u64>) -> Self {
        Self {
            printer: Printer::new(out, json, clock),
            limit: count.unwrap_or(u64::MAX),
        }
    }
}

impl<W: Write> Consumer for Trace<W> {
    fn start(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        super::banner(ctx, "tracing TCP state changes");
        self.printer.header()?;
        self.printer.flush()?;
        Ok(())
    }

    fn record(&mut self, rec: &Record, ctx: &mut Ctx<'_>) -> Result<Flow> {
        match rec {
            // Losses are always told, --count reached or not.
            Record::Lost { ts_ns, lost } => self.printer.lost_at(lost, *ts_ns)?,
            _ if self.printer.printed >= self.limit => return Ok(Flow::Stop),
            Record::Event(e) => {
                let w = ctx.source.workloads().and_then(|w| w.of_owner(e.owner));
                self.printer.event_with(e, w.as_deref())?
            }
            Record::Snapshot { .. }
            | Record::Workload { .. }
            | Record::Stack { .. }
            | Record::Listeners { .. }
            | Record::Drop(_) => {}
        }
        Ok(if self.printer.printed >= self.limit {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }

    fn drained(&mut self, _ctx: &mut Ctx<'_>) -> Result<()> {
        self.printer.flush()?;
        Ok(())
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>) -> Result<ExitCode> {
        self.printer.flush()?;
        let lost = ctx.lost;
        crate::say!(
            "{} events printed ({} delivered by the kernel); lost {} (ring buffer full {}, recursion misses {}, owner map full {}, probe failed {}){}",
            self.printer.printed,
            ctx.source.delivered(),
            lost.total(),
            lost.ring_full,
            lost.recursion_misses,
            lost.map_full,
            lost.probe_failed,
            if ctx.decode_errors > 0 {
                format!("; {} undecodable", ctx.decode_errors)
            } else {
                String::new()
            }
        );
        if let Some(n) = ctx.source.kernel_workload_filtered() {
            crate::say!("{n} events of other workloads dropped in the kernel");
        }
        Ok(ExitCode::SUCCESS)
    }
}

pub fn run(cfg: TraceConfig) -> Result<ExitCode> {
    let edges = Edges::install()?;
    let mut source = Live::load(&cfg.load, cfg.user_filter)?;
    let out = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut trace = Trace::new(out, cfg.json, crate::clock::measure_wall_clock(), cfg.count);
    let opts = Options {
        deadline: cfg.duration,
        hangup: Hangup::Stops,
        ..Options::default()
    };
    edges.run(&mut source, &mut trace, &opts)
}
