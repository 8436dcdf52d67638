//! `tcptrace top`: the live loop on a thread of its own, with a consumer
//! ([`TopFeed`]) that hands refreshes and connection pages to the screen,
//! and the screen on the main thread: one channel of [`AppEvent`]s (keys
//! and resizes from the input thread, data from the loop) reduced into
//! [`App`], then drawn. Requests (sort, filter, playback, quit) go back to
//! the loop as inputs; signals go to the loop, which stops, and the screen
//! follows. The terminal is restored on every exit path
//! ([`crate::tui::terminal`]).

use std::{
    io::IsTerminal,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Sender},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use crossterm::event::{self, Event as TermEvent};
use tcptrace_core::app::{
    Action, App, Meta, PlaybackStatus, ViewRequest,
    data::{Feed, conn_page},
};

use super::Edges;
use crate::{
    cli::TopConfig,
    preflight::EnvError,
    session::{self, Consumer, Ctx, Flow, Hangup, Input, Options},
    source::{Live, Recording, Source},
    tui::{Screen, keys, terminal},
};

/// Everything the screen reacts to.
#[derive(Debug)]
pub enum AppEvent {
    Key(tcptrace_core::app::Key),
    Resize(u16, u16),
    /// From the loop.
    Engine(Action),
    /// The loop stopped.
    Stopped,
}

/// `top` draws a screen: refuse early, with the alternative, when stdout is
/// not a terminal.
pub fn check_terminal() -> Result<(), EnvError> {
    if std::io::stdout().is_terminal() {
        Ok(())
    } else {
        Err(EnvError(
            "tcptrace top needs a terminal on stdout: for pipes and files use `tcptrace stats` (add --json for JSON)".into(),
        ))
    }
}

/// What the loop's side of `top` reports when it stops.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    /// A replayed file was damaged or ended early: the warning.
    pub warning: Option<String>,
}

/// `top` as a consumer of the loop: a refresh every `--interval` (and at
/// once after a request or a seek), a connection page when the view changes.
pub struct TopFeed {
    tx: Sender<AppEvent>,
    feed: Option<Feed>,
    request: ViewRequest,
    /// A paused replay is not refreshed again (its sparklines would scroll).
    shown: Option<PlaybackStatus>,
    pub summary: Summary,
}

impl TopFeed {
    pub fn new(tx: Sender<AppEvent>, request: ViewRequest) -> Self {
        Self {
            tx,
            feed: None,
            request,
            shown: None,
            summary: Summary::default(),
        }
    }

    fn send(&self, a: Action) -> Flow {
        if self.tx.send(AppEvent::Engine(a)).is_ok() {
            Flow::Continue
        } else {
            // The screen is gone.
            Flow::Stop
        }
    }

    /// A full refresh, unless a paused replay would show the same again.
    fn refresh(&mut self, ctx: &mut Ctx<'_>, forced: bool) -> Flow {
        let status = ctx.source.playback_status();
        if !forced && status.is_some_and(|s| self.shown == Some(s)) {
            return Flow::Continue;
        }
        let (mono, wall) = ctx.source.now();
        let host = ctx.host_facts();
        let feed = self.feed.get_or_insert_with(|| Feed::new(mono));
        let engine = ctx.engine.as_deref_mut().expect("top keeps an engine");
        let mut data = feed.update(engine, &self.request, mono, wall, host);
        // Names of the owners' workloads (the live source's resolver).
        if let Some(w) = ctx.source.workloads() {
            let engine = ctx.engine.as_deref_mut().expect("top keeps an engine");
            w.fold(&mut data.snap, Some(&mut engine.aggs));
            feed.note_workloads(&data.snap);
        }
        data.playback = status;
        self.shown = status;
        self.send(Action::Data(Box::new(data)))
    }
}

impl Consumer for TopFeed {
    fn start(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        self.refresh(ctx, true);
        Ok(())
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) -> Result<Flow> {
        Ok(self.refresh(ctx, false))
    }

    fn input(&mut self, input: Input, ctx: &mut Ctx<'_>) -> Result<Flow> {
        match input {
            Input::View(req) => {
                self.request = req;
                let (mono, _) = ctx.source.now();
                let engine = ctx.engine.as_deref_mut().expect("top keeps an engine");
                // The CLOSE_WAIT list asked for counts sockets new since the last refresh.
                engine.table.counts();
                Ok(self.send(Action::Page(conn_page(engine, &self.request, mono))))
            }
            Input::Playback(_) => {
                if ctx.restarted {
                    self.feed = None;
                }
                Ok(self.refresh(ctx, true))
            }
            _ => Ok(Flow::Continue),
        }
    }

    fn firing(&self) -> Option<Vec<&'static str>> {
        Some(
            self.feed
                .as_ref()
                .map(Feed::firing_rules)
                .unwrap_or_default(),
        )
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>) -> Result<ExitCode> {
        let engine = ctx.engine.as_deref().expect("top keeps an engine");
        self.summary = Summary {
            events: engine.aggs.events_total,
            lost: ctx
                .lost
                .total()
                .saturating_add(ctx.decode_errors)
                .saturating_add(engine.table.counters.evictions),
            warning: ctx.source.warnings().into_iter().next(),
        };
        Ok(ExitCode::SUCCESS)
    }
}

/// Keys and resizes, until `stop`.
fn input_loop(tx: Sender<AppEvent>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match event::poll(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => break,
        }
        let ev = match event::read() {
            Ok(TermEvent::Key(k)) => keys::key(k).map(AppEvent::Key),
            Ok(TermEvent::Resize(w, h)) => Some(AppEvent::Resize(w, h)),
            Ok(_) => None,
            Err(_) => break,
        };
        if let Some(ev) = ev
            && tx.send(ev).is_err()
        {
            break;
        }
    }
}

/// The live kernel, or the recording of `--from`, with the header facts.
fn open_source(cfg: &TopConfig) -> Result<(Box<dyn Source>, Meta)> {
    let mut meta = Meta {
        interval_ms: cfg.interval.as_millis() as u64,
        ..Meta::default()
    };
    let source: Box<dyn Source> = match &cfg.replay {
        Some(r) => {
            meta.step_ms = r.step.as_millis() as u64;
            Box::new(Recording::open(&r.file, r.speed, r.step, false)?)
        }
        None => Box::new(Live::load(&cfg.load, cfg.user_filter)?),
    };
    let info = source.info();
    meta.host = info.host;
    meta.kernel = info.kernel;
    meta.hook = info.hook;
    meta.timewait_hook = info.timewait_hook;
    meta.source = info.recording.map(|p| p.display().to_string());
    Ok((source, meta))
}

/// The loop's options for `top` (its consumer refreshes once at start).
pub fn options(cfg: &TopConfig) -> Options {
    Options {
        tick: Some(cfg.interval),
        engine: Some(cfg.max_conns),
        sockets_at_start: cfg.seed && cfg.replay.is_none(),
        sockets_every: cfg.reconcile,
        hangup: Hangup::Stops,
        opening_hint: " (try --no-seed)",
        ..Options::default()
    }
}

pub fn run(cfg: TopConfig) -> Result<ExitCode> {
    let Edges { tx: inputs, rx } = Edges::install()?;
    if let Some(m) = cfg.metrics.clone() {
        crate::http::serve(m, Arc::new(session::scrape_delivery(inputs.clone())))?;
    }
    let (mut source, meta) = open_source(&cfg)?;
    let opts = options(&cfg);
    let mut app = App::new(meta);
    let (app_tx, app_rx) = mpsc::channel::<AppEvent>();
    let stop_input = Arc::new(AtomicBool::new(false));

    let (mut term, guard) = terminal::enter().context("cannot set up the terminal")?;
    let size = term.size()?;
    app.update(Action::Resize(size.width, size.height));
    let started = Instant::now();

    let engine = {
        let (tx, request) = (app_tx.clone(), app.request.clone());
        thread::Builder::new()
            .name("tcptrace-engine".into())
            .spawn(move || {
                let mut feed = TopFeed::new(tx.clone(), request);
                let result = session::run(source.as_mut(), &mut feed, &opts, &rx);
                let _ = tx.send(AppEvent::Stopped);
                (result, feed.summary)
            })?
    };
    {
        let (tx, stop) = (app_tx.clone(), stop_input.clone());
        thread::Builder::new()
            .name("tcptrace-input".into())
            .spawn(move || input_loop(tx, stop))?;
    }
    drop(app_tx);

    let mut sent_generation = app.request.generation;
    let mut result: Result<()> = Ok(());
    term.draw(|f| f.render_widget(Screen(&app), f.area()))?;
    while !app.quit {
        let Ok(mut ev) = app_rx.recv() else { break };
        // Take everything already queued before drawing once.
        loop {
            match ev {
                AppEvent::Key(k) => {
                    if let Some(a) = app.action_for(k) {
                        app.update(a);
                    }
                }
                AppEvent::Resize(w, h) => {
                    app.update(Action::Resize(w, h));
                    term.autoresize()?;
                }
                AppEvent::Engine(a) => app.update(a),
                AppEvent::Stopped => app.quit = true,
            }
            match app_rx.try_recv() {
                Ok(next) => ev = next,
                Err(_) => break,
            }
        }
        if app.request.generation != sent_generation {
            sent_generation = app.request.generation;
            let _ = inputs.send(Input::View(app.request.clone()));
        }
        for cmd in app.playback_out.drain(..) {
            let _ = inputs.send(Input::Playback(cmd));
        }
        if let Err(e) = term.draw(|f| f.render_widget(Screen(&app), f.area())) {
            result = Err(e.into());
            break;
        }
    }
    stop_input.store(true, Ordering::Relaxed);
    let _ = inputs.send(Input::Stop);
    let joined = engine.join();
    drop(term);
    drop(guard);
    result?;
    let (loop_result, summary) =
        joined.map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    loop_result?;
    if let Some(msg) = &app.fatal {
        anyhow::bail!("{msg}");
    }
    if let Some(warning) = &summary.warning {
        crate::say!("warning: {warning}");
    }
    crate::say!(
        "top ran {}; {} events, {} lost",
        crate::clock::fmt_ms(started.elapsed().as_millis() as f64),
        summary.events,
        summary.lost
    );
    Ok(ExitCode::SUCCESS)
}
