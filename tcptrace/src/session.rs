//! THE live loop: every live command (`top`, `trace`, `stats`, `record`,
//! `watch`, `doctor`) is a [`Consumer`] of it, fed by a [`Source`] (the live
//! kernel, a recording on a virtual clock, or a scripted source in tests).
//!
//! What the loop does, once, for everyone:
//! - inputs on one channel ([`Input`]): stop signals, SIGHUP (stops, or goes
//!   to the consumer: `watch` reloads), metrics scrapes, `top`'s view and
//!   playback requests;
//! - every [`POLL`]: drain the source; each record goes to the engine (when
//!   the command keeps one) and then to the consumer;
//! - every second: the losses since the last report become a
//!   [`Record::Lost`] (trace prints it, record writes it, every snapshot
//!   counts it);
//! - sock_diag: the opening snapshot (seeds the engine; `record` writes it),
//!   one every `sockets_every` (reconciles; `record` writes it), and one at
//!   the end for those that ask;
//! - every `tick`: the consumer's periodic work (print, evaluate, refresh);
//! - scrapes: drained first, then answered from the engine, all waiting
//!   scrapes with one rendering;
//! - the deadline; hook fallbacks logged; losses counted from the banner on;
//! - named user stacks (`--stacks`) are records like the others
//!   ([`Record::Stack`]): the live source's namer puts them in the stream,
//!   the engine keeps them, `record` writes them; the engine groups
//!   CLOSE_WAIT sockets by stack when the source says it names them.
//!
//! Reconciliation failures, one policy: the opening snapshot failing ends
//! the command (exit 1, with the command's way around it, e.g. "try
//! --no-seed"); a later snapshot failing is reported on stderr (at most once
//! a minute, with how many failed; the closing one always) and the loop
//! goes on: the next one corrects what this one would have.

use std::{
    collections::VecDeque,
    process::ExitCode,
    sync::mpsc::{Receiver, SyncSender, TrySendError},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tcptrace_core::{
    app::{PlaybackCommand, ViewRequest},
    engine::Engine,
    metrics,
    model::Lost,
    record::{Record, RecordApplier},
    stats::{HistogramsBy, HostFacts, Snapshot},
};

use crate::{http::Scrape, source::Source};

/// How often the source is drained.
pub const POLL: Duration = Duration::from_millis(10);
/// How often losses are reported while losing.
pub const LOSS_REPORT: Duration = Duration::from_secs(1);
/// Reconciliation failures are reported at most this often.
const FAILURE_REPORT: Duration = Duration::from_secs(60);
/// Inputs waiting for the loop, at most (a scrape beyond is answered 503).
pub const INPUTS: usize = 256;
/// Records a drain's buffer keeps room for between drains (a 10 ms drain
/// at the box's highest rate takes ~5k).
const KEPT_DRAIN_ROOM: usize = 16 << 10;

/// What reaches the loop from outside.
#[derive(Debug)]
pub enum Input {
    /// SIGINT or SIGTERM (or `q` in `top`).
    Stop,
    /// SIGHUP.
    Hangup,
    /// A metrics scrape waiting for its text.
    Scrape(Scrape),
    /// `top`: sort, filter or rows of the connection list changed.
    View(ViewRequest),
    /// `top --from`: play/pause, seek, speed.
    Playback(PlaybackCommand),
}

/// The sending side of the loop's inputs (signals, the metrics server, the
/// TUI).
pub type Inputs = SyncSender<Input>;

/// A new input channel.
pub fn inputs() -> (Inputs, Receiver<Input>) {
    std::sync::mpsc::sync_channel(INPUTS)
}

/// Hands scrapes from the metrics server to the loop; a full queue or a
/// stopped loop gives the scrape back (answered 503).
pub fn scrape_delivery(tx: Inputs) -> impl Fn(Scrape) -> Result<(), Scrape> + Send + Sync {
    move |scrape| match tx.try_send(Input::Scrape(scrape)) {
        Ok(()) => Ok(()),
        Err(
            TrySendError::Full(Input::Scrape(s)) | TrySendError::Disconnected(Input::Scrape(s)),
        ) => Err(s),
        Err(_) => unreachable!("a scrape was sent"),
    }
}

/// What SIGHUP does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hangup {
    /// Stops, like SIGTERM (a closed terminal must not leave a tracer).
    Stops,
    /// Goes to the consumer's [`Consumer::input`] (`watch` reloads).
    Consumer,
}

/// How a command uses the loop.
#[derive(Clone, Debug)]
pub struct Options {
    /// The consumer's [`Consumer::tick`] every so often.
    pub tick: Option<Duration>,
    /// The first tick right after the banner (else one period later).
    pub tick_at_start: bool,
    /// Stop after this long.
    pub deadline: Option<Duration>,
    /// Keep an engine (connection table and aggregates) of this capacity.
    pub engine: Option<usize>,
    /// Keyed histograms in the engine's snapshots (`stats --histograms-by`).
    pub histograms_by: HistogramsBy,
    /// The engine keeps durations per owner and per peer (what `top` and
    /// `stats --histograms-by` show; two more histogram records and hash
    /// lookups per transition for the others).
    pub histograms_per_key: bool,
    /// A sock_diag snapshot before anything else (seeds the engine).
    pub sockets_at_start: bool,
    /// A sock_diag snapshot every so often (reconciles the engine).
    pub sockets_every: Option<Duration>,
    /// A sock_diag snapshot once the loop stopped (`doctor`, `record`).
    pub sockets_at_end: bool,
    pub hangup: Hangup,
    /// Appended to the error when the opening snapshot fails (the command's
    /// way around it, e.g. " (try --no-seed)").
    pub opening_hint: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tick: None,
            tick_at_start: false,
            deadline: None,
            engine: None,
            histograms_by: HistogramsBy::None,
            histograms_per_key: true,
            sockets_at_start: false,
            sockets_every: None,
            sockets_at_end: false,
            hangup: Hangup::Stops,
            opening_hint: "",
        }
    }
}

/// Whether the loop goes on after a consumer's step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop now (e.g. `trace --count` reached, `watch --exit-on-alert`).
    Stop,
}

/// What a command does with the loop's work. Every method but `finish` has
/// a default that does nothing.
pub trait Consumer {
    /// Once the opening snapshot was taken and losses start to count: the
    /// banner.
    fn start(&mut self, _ctx: &mut Ctx<'_>) -> Result<()> {
        Ok(())
    }

    /// One record, after the engine took it: an event, a loss report, or a
    /// sock_diag snapshot.
    fn record(&mut self, _rec: &Record, _ctx: &mut Ctx<'_>) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    /// After each drain that delivered something (flush buffered output).
    fn drained(&mut self, _ctx: &mut Ctx<'_>) -> Result<()> {
        Ok(())
    }

    /// Every [`Options::tick`].
    fn tick(&mut self, _ctx: &mut Ctx<'_>) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    /// An input the loop does not handle itself: SIGHUP with
    /// [`Hangup::Consumer`], `top`'s view and playback requests (a playback
    /// command reaches the source first).
    fn input(&mut self, _input: Input, _ctx: &mut Ctx<'_>) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    /// The rules of the alerts firing now, for the metrics (`watch`, `top`).
    fn firing(&self) -> Option<Vec<&'static str>> {
        None
    }

    /// The loop stopped (the last records and the closing snapshot were
    /// delivered): the summary, and the exit code.
    fn finish(&mut self, ctx: &mut Ctx<'_>) -> Result<ExitCode>;
}

/// What a consumer can reach during a step: the source, the engine, the
/// losses so far.
pub struct Ctx<'a> {
    pub source: &'a mut dyn Source,
    /// The engine, for commands that keep one.
    pub engine: Option<&'a mut Engine>,
    /// Events lost since the banner, by cause (decode errors are apart).
    pub lost: Lost,
    /// Records the source could not decode since the banner.
    pub decode_errors: u64,
    /// Whether the loop stopped because the source ended (a recording).
    pub ended: bool,
    /// The engine was just replaced (a recording rewound by a seek).
    pub restarted: bool,
}

impl Ctx<'_> {
    /// Host facts for a snapshot: the source's, with the losses.
    pub fn host_facts(&self) -> HostFacts {
        let (port_range, tw_overflow) = self.source.host();
        HostFacts {
            port_range,
            tw_overflow,
            lost: self.lost,
            decode_errors: self.decode_errors,
            stacks: self.source.stack_counts(),
        }
    }

    /// The engine's snapshot now (the rate covers the time since the
    /// previous one). Panics for a command without an engine: a wiring bug.
    pub fn snapshot(&mut self) -> Snapshot {
        let (now, wall) = self.source.now();
        let host = self.host_facts();
        let engine = self
            .engine
            .as_deref_mut()
            .expect("this command keeps an engine");
        let mut snap = engine.snapshot(now, wall, host);
        if let Some(w) = self.source.workloads() {
            w.fold(&mut snap, Some(&mut engine.aggs));
        }
        snap
    }
}

/// Which sock_diag snapshot: they differ in ordering and failure policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    Opening,
    Periodic,
    Closing,
}

/// The loop's own state besides the source and the consumer.
struct Loop {
    engine: Option<Engine>,
    applier: RecordApplier,
    /// What a drain took from the source, delivered by reference; kept
    /// (emptied) from one drain to the next so that its room is reused.
    drained: Vec<Record>,
    lost: Lost,
    pending: VecDeque<Input>,
    reconcile_failures: u64,
    reported_failure_at: Option<u64>,
    ended: bool,
    restarted: bool,
}

impl Loop {
    fn ctx<'a>(&'a mut self, source: &'a mut dyn Source) -> Ctx<'a> {
        Ctx {
            decode_errors: source.decode_errors(),
            source,
            engine: self.engine.as_mut(),
            lost: self.lost,
            ended: self.ended,
            restarted: self.restarted,
        }
    }

    /// One record into the loss count and the engine.
    fn take_in(&mut self, rec: &Record) {
        if let Record::Lost { lost, .. } = rec {
            self.lost = self.lost.saturating_add(lost);
        }
        if let Some(engine) = &mut self.engine {
            self.applier.apply(engine, rec);
        }
    }

    /// One record: to the loss count and the engine, then the consumer.
    fn deliver(
        &mut self,
        rec: &Record,
        source: &mut dyn Source,
        consumer: &mut dyn Consumer,
    ) -> Result<Flow> {
        self.take_in(rec);
        consumer.record(rec, &mut self.ctx(source))
    }

    /// Everything the source has now; `Stop` if the consumer said so.
    fn drain(&mut self, source: &mut dyn Source, consumer: &mut dyn Consumer) -> Result<Flow> {
        let mut got = std::mem::take(&mut self.drained);
        source.drain(&mut |rec| got.push(rec));
        if source.ended() {
            self.ended = true;
        }
        if got.is_empty() {
            self.drained = got;
            return Ok(Flow::Continue);
        }
        let mut flow = Ok(Flow::Continue);
        for rec in &got {
            match flow {
                Ok(Flow::Continue) => flow = self.deliver(rec, source, consumer),
                // The consumer is done; the engine and the loss count still
                // take what was drained.
                Ok(Flow::Stop) => self.take_in(rec),
                Err(_) => break,
            }
        }
        got.clear();
        // Names of cgroups first seen in this drain, within a budget.
        if let Some(w) = source.workloads() {
            w.after_drain();
        }
        // A backlog drained at once leaves no lasting room behind.
        got.shrink_to(KEPT_DRAIN_ROOM);
        self.drained = got;
        let flow = flow?;
        consumer.drained(&mut self.ctx(source))?;
        Ok(flow)
    }

    /// Losses since the last report, as a record.
    fn report_losses(
        &mut self,
        source: &mut dyn Source,
        consumer: &mut dyn Consumer,
    ) -> Result<Flow> {
        let lost = source.take_lost();
        if lost.is_zero() {
            return Ok(Flow::Continue);
        }
        let (ts_ns, _) = source.now();
        let flow = self.deliver(&Record::Lost { ts_ns, lost }, source, consumer)?;
        consumer.drained(&mut self.ctx(source))?;
        Ok(flow)
    }

    /// A sock_diag snapshot. The opening one is delivered at once (it
    /// seeds: the events that follow apply on top of it, and a recording
    /// opens with it). A later one is taken first, then the events up to it
    /// are drained, then it is delivered: the table leaves alone what those
    /// events touched after the dump began, so it corrects only what was
    /// missed. Failures follow the policy above: the opening one is fatal;
    /// later ones are reported at most once a minute (`always_report`: the
    /// closing one, every time).
    fn sockets(
        &mut self,
        source: &mut dyn Source,
        consumer: &mut dyn Consumer,
        moment: Moment,
        opts: &Options,
    ) -> Result<Flow> {
        let taken = source.sockets();
        if moment != Moment::Opening && self.drain(source, consumer)? == Flow::Stop {
            return Ok(Flow::Stop);
        }
        match taken {
            Ok(Some(snapshot)) => {
                let flow = self.deliver(&snapshot, source, consumer)?;
                consumer.drained(&mut self.ctx(source))?;
                Ok(flow)
            }
            Ok(None) => Ok(Flow::Continue),
            Err(e) if moment == Moment::Opening => Err(e.context(format!(
                "startup snapshot (sock_diag) failed{}",
                opts.opening_hint
            ))),
            Err(e) => {
                self.reconcile_failures += 1;
                let now = source.clock_ns();
                let due = moment == Moment::Closing
                    || self
                        .reported_failure_at
                        .is_none_or(|t| now.saturating_sub(t) >= FAILURE_REPORT.as_nanos() as u64);
                if due {
                    crate::say!(
                        "warning: snapshot of sockets (sock_diag) failed ({} so far): {e:#}; going on",
                        self.reconcile_failures
                    );
                    self.reported_failure_at = Some(now);
                }
                Ok(Flow::Continue)
            }
        }
    }

    /// Answers `first` and every scrape already waiting, with one rendering.
    fn answer_scrapes(
        &mut self,
        first: Scrape,
        inputs: &Receiver<Input>,
        source: &mut dyn Source,
        consumer: &mut dyn Consumer,
    ) -> Result<Flow> {
        let mut waiting = vec![first];
        while let Ok(input) = inputs.try_recv() {
            match input {
                Input::Scrape(s) => waiting.push(s),
                other => self.pending.push_back(other),
            }
        }
        if self.drain(source, consumer)? == Flow::Stop
            || self.report_losses(source, consumer)? == Flow::Stop
        {
            return Ok(Flow::Stop);
        }
        let firing = consumer.firing();
        let ctx = self.ctx(source);
        let host = ctx.host_facts();
        let (now, wall) = ctx.source.now();
        let text = match ctx.engine {
            Some(engine) => {
                let mut snap = engine.scrape_snapshot(now, wall, host);
                if let Some(w) = ctx.source.workloads() {
                    w.fold(&mut snap, Some(&mut engine.aggs));
                }
                metrics::Exposition::new(&snap, &engine.aggs, firing.as_deref()).render()
            }
            None => String::new(),
        };
        let text = bytes::Bytes::from(text);
        for s in waiting {
            s.answer(text.clone());
        }
        Ok(Flow::Continue)
    }
}

/// When a step due at `prev` is due next: one period later, or one period
/// from `now` when it ran late by more than a period (a late step delays
/// the next one instead of firing twice in a row).
fn next_after(prev: u64, every: u64, now: u64) -> u64 {
    let next = prev.saturating_add(every);
    if next <= now {
        now.saturating_add(every)
    } else {
        next
    }
}

/// A fresh engine as `opts` asks for; `stacks`: the source names user
/// stacks ([`crate::source::SourceInfo::stacks`]), so its snapshots group
/// CLOSE_WAIT sockets by the code that opened them.
fn new_engine(opts: &Options, stacks: bool) -> Option<Engine> {
    opts.engine.map(|cap| {
        let mut e = Engine::new(cap);
        e.stacks.enabled = stacks;
        e.histograms_by = opts.histograms_by;
        e.aggs.keyed = opts.histograms_per_key;
        e
    })
}

/// Runs `consumer` on `source` until a stop: an input, the deadline, the
/// consumer, or the end of a recording. Returns the consumer's exit code.
pub fn run(
    source: &mut dyn Source,
    consumer: &mut dyn Consumer,
    opts: &Options,
    inputs: &Receiver<Input>,
) -> Result<ExitCode> {
    let info = source.info();
    for fallback in &info.fallbacks {
        log::info!("fallback: {fallback}");
    }
    source.enter_loop();
    let mut state = Loop {
        engine: new_engine(opts, info.stacks),
        applier: RecordApplier::default(),
        drained: Vec::new(),
        lost: Lost::default(),
        pending: VecDeque::new(),
        reconcile_failures: 0,
        reported_failure_at: None,
        ended: false,
        restarted: false,
    };
    if opts.sockets_at_start
        && state.sockets(source, consumer, Moment::Opening, opts)? == Flow::Stop
    {
        return consumer.finish(&mut state.ctx(source));
    }
    // Losses count from the banner on.
    let _ = source.take_lost();
    source.restart_decode_errors();
    consumer
        .start(&mut state.ctx(source))
        .context("cannot start")?;

    let ns = |d: Duration| d.as_nanos() as u64;
    let start = source.clock_ns();
    let deadline = opts.deadline.map(|d| start.saturating_add(ns(d)));
    let mut next_poll = start + ns(POLL);
    let mut next_loss = start + ns(LOSS_REPORT);
    let mut next_tick = opts.tick.map(|t| {
        if opts.tick_at_start {
            start
        } else {
            start + ns(t)
        }
    });
    let mut next_sockets = opts.sockets_every.map(|t| start + ns(t));
    let mut flow = Flow::Continue;
    while flow == Flow::Continue && !state.ended {
        let until = [
            Some(next_poll),
            Some(next_loss),
            next_tick,
            next_sockets,
            deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("polling is always due");
        let input = match state.pending.pop_front() {
            Some(i) => Some(i),
            None => source.wait(until, inputs),
        };
        // An input is handled, then whatever is due runs all the same: a
        // stream of inputs (scrapes) cannot hold off ticks or the deadline.
        if let Some(input) = input {
            flow = match input {
                Input::Stop => Flow::Stop,
                Input::Hangup if opts.hangup == Hangup::Stops => Flow::Stop,
                Input::Scrape(s) => state.answer_scrapes(s, inputs, source, consumer)?,
                Input::Playback(cmd) => {
                    state.restarted = source.playback(cmd)?;
                    if state.restarted {
                        // A seek back: the recording is read again from its
                        // start into a fresh engine.
                        state.engine = new_engine(opts, info.stacks);
                        state.applier = RecordApplier::default();
                        state.lost = Lost::default();
                    }
                    state.drain(source, consumer)?;
                    let flow = consumer.input(Input::Playback(cmd), &mut state.ctx(source))?;
                    state.restarted = false;
                    flow
                }
                other => consumer.input(other, &mut state.ctx(source))?,
            };
        }
        let now = source.clock_ns();
        if flow == Flow::Continue && now >= next_poll {
            flow = state.drain(source, consumer)?;
            next_poll = next_after(next_poll, ns(POLL), now);
        }
        if flow == Flow::Continue && now >= next_loss {
            flow = state.report_losses(source, consumer)?;
            next_loss = next_after(next_loss, ns(LOSS_REPORT), now);
        }
        if let (Some(at), Some(every)) = (next_sockets, opts.sockets_every)
            && flow == Flow::Continue
            && now >= at
        {
            flow = state.sockets(source, consumer, Moment::Periodic, opts)?;
            next_sockets = Some(next_after(at, ns(every), source.clock_ns()));
        }
        if let (Some(at), Some(every)) = (next_tick, opts.tick)
            && flow == Flow::Continue
            && now >= at
        {
            // Up to date: what is drained, and the losses so far.
            flow = state.drain(source, consumer)?;
            if flow == Flow::Continue {
                flow = state.report_losses(source, consumer)?;
            }
            if flow == Flow::Continue {
                flow = consumer.tick(&mut state.ctx(source))?;
            }
            next_tick = Some(next_after(at, ns(every), now));
        }
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
    }
    // The end: what is left, the last losses, the closing snapshot.
    state.drain(source, consumer)?;
    state.report_losses(source, consumer)?;
    if opts.sockets_at_end {
        state.sockets(source, consumer, Moment::Closing, opts)?;
    }
    consumer.finish(&mut state.ctx(source))
}

#[cfg(test)]
mod tests;
