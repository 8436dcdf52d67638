//! `tcptrace trace`: drain the ring buffer every 10 ms, print each event, and
//! report lost events every second while losing and once at exit.

use std::{
    io::{self, Write},
    process::ExitCode,
    time::Duration,
};

use anyhow::Result;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, sleep_until},
};

use crate::{
    cli::TraceConfig,
    clock::{WallClock, monotonic_ns},
    ebpf::{KernelCounters, Tracer},
};
use tcptrace_core::{
    decode,
    model::{Event, Lost},
    output::{json, text},
};

/// How often the ring buffer is drained (the kernel does not wake us per event).
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Writes events in the chosen format; counts what it wrote.
pub struct Printer<W: Write> {
    out: W,
    json: bool,
    clock: WallClock,
    pub printed: u64,
    pub decode_errors: u64,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, json: bool, clock: WallClock) -> Self {
        Self {
            out,
            json,
            clock,
            printed: 0,
            decode_errors: 0,
        }
    }

    pub fn header(&mut self) -> io::Result<()> {
        if !self.json {
            writeln!(self.out, "{}", text::HEADER)?;
        }
        Ok(())
    }

    pub fn event(&mut self, e: &Event) -> io::Result<()> {
        let wall = self.clock.wall_ns(e.ts_ns);
        if self.json {
            json::write_event(&mut self.out, e, wall)?;
        } else {
            text::write_event(&mut self.out, e, wall)?;
        }
        self.printed += 1;
        Ok(())
    }

    pub fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        match decode::decode(bytes) {
            // Owner updates feed the lifecycle engine; `trace` streams
            // transitions and TIME_WAIT only.
            Ok(e) if e.kind == tcptrace_core::model::EventKind::Accept => Ok(()),
            Ok(e) => self.event(&e),
            Err(err) => {
                self.decode_errors += 1;
                if self.decode_errors == 1 {
                    crate::say!("undecodable event ({err}); counting further ones");
                }
                Ok(())
            }
        }
    }

    pub fn lost(&mut self, lost: &Lost) -> io::Result<()> {
        self.lost_at(lost, monotonic_ns())
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
}

/// Reports lost events since the last report, if any.
fn report_lost<W: Write>(
    printer: &mut Printer<W>,
    tracer: &Tracer,
    last: &mut KernelCounters,
) -> io::Result<()> {
    let now = tracer.counters();
    let delta = now.lost().since(&last.lost());
    *last = now;
    if !delta.is_zero() {
        printer.lost(&delta)?;
    }
    Ok(())
}

/// A tokio interval that delays (never bursts) after a late tick.
pub fn ticker(period: std::time::Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// The reconciliation ticker of the live commands: first tick one period
/// from now; `None` (never) ticks about once a year and is guarded off by
/// the caller.
pub async fn reconcile_ticker(every: Option<std::time::Duration>) -> tokio::time::Interval {
    let mut t = ticker(every.unwrap_or(std::time::Duration::from_secs(3600 * 24 * 365)));
    t.tick().await;
    t
}

/// The signals that stop a live command cleanly (summary printed,
/// recording closed): SIGINT, SIGTERM and, except for `watch` (where it
/// reloads the rules), SIGHUP — a closed terminal or a `kill -HUP` must not
/// end it mid-write. Installed before anything is announced so an early
/// Ctrl-C still detaches cleanly.
pub struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// SIGINT, SIGTERM and SIGHUP stop.
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            hup: Some(signal(SignalKind::hangup())?),
            ..Self::without_hangup()?
        })
    }

    /// SIGINT and SIGTERM stop; SIGHUP is the caller's (`watch` reloads).
    pub fn without_hangup() -> io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: None,
        })
    }

    pub async fn recv(&mut self) {
        let hup = async {
            match &mut self.hup {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = hup => {}
        }
    }
}

pub async fn run(cfg: TraceConfig) -> Result<ExitCode> {
    let mut signals = StopSignals::install()?;
    let mut tracer = Tracer::load(&cfg.load)?;
    for fallback in &tracer.hooks.fallbacks {
        log::info!("fallback: {fallback}");
    }
    // Baseline before announcing readiness: whatever happens after the
    // banner is counted.
    let start_counters = tracer.counters();
    crate::sched::drain_priority(cfg.load.realtime_drain);
    crate::say!(
        "tracing TCP state changes (hook: {}, TIME_WAIT: {}); Ctrl-C to stop",
        tracer.hooks.transitions,
        tracer.hooks.timewait
    );
    let stdout = io::stdout().lock();
    let mut printer = Printer::new(
        io::BufWriter::with_capacity(64 * 1024, stdout),
        cfg.json,
        crate::clock::measure_wall_clock(),
    );
    let mut last = start_counters;
    match trace_loop(&cfg, &mut tracer, &mut printer, &mut last, &mut signals).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e.into()),
    }
    let end = tracer.counters();
    let total_lost = end.lost().since(&start_counters.lost());
    let written = end.events.saturating_sub(start_counters.events);
    log::debug!("kernel counters at exit: {end:?}");
    crate::say!(
        "{} events printed ({} delivered by the kernel); lost {} (ring buffer full {}, recursion misses {}, owner map full {}){}",
        printer.printed,
        written,
        total_lost.total(),
        total_lost.ring_full,
        total_lost.recursion_misses,
        total_lost.map_full,
        if printer.decode_errors > 0 {
            format!("; {} undecodable", printer.decode_errors)
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn trace_loop<W: Write>(
    cfg: &TraceConfig,
    tracer: &mut Tracer,
    printer: &mut Printer<W>,
    last: &mut KernelCounters,
    signals: &mut StopSignals,
) -> io::Result<()> {
    printer.header()?;
    printer.flush()?;
    let mut poll = interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut lost_tick = interval(Duration::from_secs(1));
    lost_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = cfg.duration.map(|d| Instant::now() + d);
    let limit = cfg.count.unwrap_or(u64::MAX);
    let mut done = false;
    while !done {
        tokio::select! {
            _ = signals.recv() => done = true,
            _ = async { sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => done = true,
            _ = lost_tick.tick() => {
                tracer.flush_logs();
                report_lost(printer, tracer, last)?;
                printer.flush()?;
            }
            _ = poll.tick() => {
                done = drain(tracer, printer, limit)?;
                printer.flush()?;
            }
        }
    }
    if printer.printed < limit {
        drain(tracer, printer, limit)?;
    }
    report_lost(printer, tracer, last)?;
    printer.flush()
}

/// Prints what is in the ring; true once `limit` events are printed.
fn drain<W: Write>(tracer: &mut Tracer, printer: &mut Printer<W>, limit: u64) -> io::Result<bool> {
    let mut result = Ok(());
    tracer.drain(|bytes| {
        if result.is_ok() && printer.printed < limit {
            result = printer.record(bytes);
        }
    });
    result?;
    Ok(printer.printed >= limit)
}
