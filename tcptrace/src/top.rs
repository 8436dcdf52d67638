//! `tcptrace top`: wires the edges to the app. Three producers feed one
//! event channel into the main loop:
//! - the engine thread (drains the source every 10 ms, refreshes every
//!   `--interval`, answers sort/filter requests with a connection page),
//! - the input thread (crossterm keys and resizes),
//! - signals (SIGTERM, SIGHUP, SIGINT).
//!
//! The main loop reduces each event into [`App`], forwards changed requests
//! to the engine, and draws. The terminal is restored on every exit path
//! (see `tui::terminal`).

use std::{
    io::IsTerminal,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use crossterm::event::{self, Event as TermEvent};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc::{UnboundedSender, unbounded_channel},
};

use crate::{
    cli::TopConfig,
    ebpf::Tracer,
    http,
    preflight::EnvError,
    source::{Replay, Source},
    trace::POLL_INTERVAL,
    tui::{keys, render::fmt_ms, terminal},
};
use tcptrace_core::{
    app::{
        Action, App, Meta, PlaybackCommand, PlaybackStatus, ViewRequest,
        data::{Feed, conn_page},
    },
    engine::Engine,
};

/// Everything the main loop reacts to.
#[derive(Debug)]
pub enum AppEvent {
    Key(tcptrace_core::app::Key),
    Resize(u16, u16),
    Engine(Action),
    /// A stop signal.
    Stop,
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

/// What the engine thread reports when it stops.
#[derive(Debug, Default)]
struct EngineSummary {
    events: u64,
    lost: u64,
    /// A replayed file ended early: the warning.
    cut: Option<String>,
}

/// What the main loop asks of the engine thread.
#[derive(Debug)]
pub enum EngineRequest {
    /// Sort, filter and rows of the connection list.
    View(ViewRequest),
    /// Play/pause, seek or speed of a replay.
    Playback(PlaybackCommand),
}

/// The engine thread: owns the source and the engine.
fn engine_loop(
    mut source: Source,
    cfg: TopConfig,
    mut request: ViewRequest,
    requests: std_mpsc::Receiver<EngineRequest>,
    mut scrapes: Option<http::Scrapes>,
    tx: UnboundedSender<AppEvent>,
    stop: Arc<AtomicBool>,
) -> EngineSummary {
    let mut engine = Engine::new(cfg.max_conns);
    let send = |a: Action| tx.send(AppEvent::Engine(a)).is_ok();
    if cfg.seed
        && let Err(e) = source.seed(&mut engine)
    {
        send(Action::Fatal(format!(
            "startup snapshot failed: {e:#} (try --no-seed)"
        )));
        return EngineSummary::default();
    }
    if matches!(source, Source::Live(_)) {
        crate::sched::drain_priority(cfg.load.realtime_drain);
    }
    let (start, _) = source.now();
    let mut feed = Feed::new(start);
    let mut next_refresh = Instant::now();
    let mut next_reconcile = cfg.reconcile.map(|d| Instant::now() + d);
    let mut pending = Vec::new();
    // A paused replay is not refreshed again (its sparklines would scroll).
    let mut shown: Option<PlaybackStatus> = None;
    while !stop.load(Ordering::Relaxed) {
        source.drain(&mut engine);
        pending.extend(requests.try_iter());
        let (mut view_changed, mut moved) = (false, false);
        for r in pending.drain(..) {
            match r {
                EngineRequest::View(v) => {
                    request = v;
                    view_changed = true;
                }
                EngineRequest::Playback(cmd) => match source.playback(cmd, &mut engine) {
                    Ok(rewound) => {
                        if rewound {
                            feed = Feed::new(start);
                        }
                        moved = true;
                    }
                    Err(e) => {
                        send(Action::Fatal(format!(
                            "cannot read the recording again: {e:#}"
                        )));
                        return EngineSummary::default();
                    }
                },
            }
        }
        if moved {
            source.drain(&mut engine);
        }
        if let Some(queue) = scrapes.as_mut()
            && let Ok(first) = queue.try_recv()
        {
            http::answer_all(
                first,
                queue,
                &mut source,
                &mut engine,
                Some(&feed.firing_rules()),
            );
        }
        let now = Instant::now();
        let due = now >= next_refresh;
        let status = source.playback_status();
        let still = status.is_some_and(|s| shown == Some(s));
        if (due && !still) || moved {
            let (mono, wall) = source.now();
            let host = source.host_facts();
            let mut data = feed.update(&mut engine, &request, mono, wall, host);
            data.playback = status;
            shown = status;
            if !send(Action::Data(Box::new(data))) {
                break;
            }
        } else if view_changed {
            let (mono, _) = source.now();
            if !send(Action::Page(conn_page(&engine, &request, mono))) {
                break;
            }
        }
        if due {
            next_refresh = (next_refresh + cfg.interval).max(now);
        }
        if let (Some(at), Some(every)) = (next_reconcile, cfg.reconcile)
            && now >= at
        {
            if let Err(e) = source.reconcile(&mut engine) {
                log::warn!("reconciliation failed: {e:#}");
            }
            next_reconcile = Some(Instant::now() + every);
        }
        // Wake for a request at once; otherwise poll the source every 10 ms.
        match requests.recv_timeout(POLL_INTERVAL) {
            Ok(r) => pending.push(r),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let host = source.host_facts();
    EngineSummary {
        events: engine.aggs.events_total,
        lost: host
            .lost
            .total()
            .saturating_add(host.decode_errors)
            .saturating_add(engine.table.counters.evictions),
        cut: source.cut_warning(),
    }
}

/// Keys and resizes, until `stop`.
fn input_loop(tx: UnboundedSender<AppEvent>, stop: Arc<AtomicBool>) {
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
fn open_source(cfg: &TopConfig) -> Result<(Source, Meta)> {
    let mut meta = Meta {
        interval_ms: cfg.interval.as_millis() as u64,
        ..Meta::default()
    };
    let source = match &cfg.replay {
        Some(r) => {
            let replay = Replay::open(&r.file, r.speed, r.step, cfg.max_conns)?;
            let h = replay.header();
            meta.host = h.host.clone();
            meta.kernel = h.kernel.clone();
            meta.source = Some(r.file.display().to_string());
            meta.step_ms = r.step.as_millis() as u64;
            Source::recording(replay)
        }
        None => {
            let tracer = Tracer::load(&cfg.load)?;
            for fallback in &tracer.hooks.fallbacks {
                log::info!("fallback: {fallback}");
            }
            meta.host = crate::seed::host::hostname();
            meta.kernel = crate::seed::host::kernel_release();
            Source::live(tracer, cfg.user_filter)
        }
    };
    (meta.hook, meta.timewait_hook) = source.hooks();
    Ok((source, meta))
}

pub async fn run(cfg: TopConfig) -> Result<ExitCode> {
    let (source, meta) = open_source(&cfg)?;
    let scrapes = cfg.metrics.clone().map(http::serve).transpose()?;
    let mut app = App::new(meta);

    let (tx, mut rx) = unbounded_channel::<AppEvent>();
    let (req_tx, req_rx) = std_mpsc::channel::<EngineRequest>();
    let stop = Arc::new(AtomicBool::new(false));
    let mut term_sig = signal(SignalKind::terminate())?;
    let mut hup_sig = signal(SignalKind::hangup())?;
    let mut int_sig = signal(SignalKind::interrupt())?;

    let (mut term, guard) = terminal::enter().context("cannot set up the terminal")?;
    let size = term.size()?;
    app.update(Action::Resize(size.width, size.height));
    let started = Instant::now();

    let engine = {
        let (tx, stop, request) = (tx.clone(), stop.clone(), app.request.clone());
        thread::Builder::new()
            .name("tcptrace-engine".into())
            .spawn(move || engine_loop(source, cfg, request, req_rx, scrapes, tx, stop))?
    };
    {
        let (tx, stop) = (tx.clone(), stop.clone());
        thread::Builder::new()
            .name("tcptrace-input".into())
            .spawn(move || input_loop(tx, stop))?;
    }
    drop(tx);

    let mut sent_generation = app.request.generation;
    let mut result = Ok(());
    term.draw(|f| f.render_widget(crate::tui::render::Screen(&app), f.area()))?;
    while !app.quit {
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            _ = term_sig.recv() => Some(AppEvent::Stop),
            _ = hup_sig.recv() => Some(AppEvent::Stop),
            _ = int_sig.recv() => Some(AppEvent::Stop),
        };
        let Some(mut ev) = ev else {
            result = Err(anyhow::anyhow!("the engine thread stopped unexpectedly"));
            break;
        };
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
                AppEvent::Stop => app.quit = true,
            }
            match rx.try_recv() {
                Ok(next) => ev = next,
                Err(_) => break,
            }
        }
        if app.request.generation != sent_generation {
            sent_generation = app.request.generation;
            let _ = req_tx.send(EngineRequest::View(app.request.clone()));
        }
        for cmd in app.playback_out.drain(..) {
            let _ = req_tx.send(EngineRequest::Playback(cmd));
        }
        if let Err(e) = term.draw(|f| f.render_widget(crate::tui::render::Screen(&app), f.area())) {
            result = Err(e.into());
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(req_tx);
    let summary = engine.join();
    drop(term);
    drop(guard);
    result?;
    if let Some(msg) = &app.fatal {
        anyhow::bail!("{msg}");
    }
    let summary = summary.map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    if let Some(warning) = &summary.cut {
        crate::say!("warning: {warning}");
    }
    crate::say!(
        "top ran {}; {} events, {} lost",
        fmt_ms(started.elapsed().as_millis() as f64),
        summary.events,
        summary.lost
    );
    Ok(ExitCode::SUCCESS)
}
