//! `tcptrace watch`: the live engine (as `stats`), with the rules of
//! [`crate::alerts`] evaluated every `--interval`. Alerts go to stderr as
//! text lines, or to stdout as JSON Lines with `--json`. SIGHUP reloads
//! `--config` (the flags still override it); SIGTERM/SIGINT stop cleanly.

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
    alerts::{Alert, AlertState, Alerter},
    cli::WatchConfig,
    clock::hms_millis,
    ebpf::Tracer,
    engine::Engine,
    source::Source,
    trace::{POLL_INTERVAL, StopSignals},
};

/// One alert as a text line (stderr).
pub fn text_line(a: &Alert) -> String {
    let state = match a.state {
        AlertState::Firing => "ALERT",
        AlertState::Resolved => "RESOLVED",
    };
    format!("{} {state} {}: {}", hms_millis(a.ts_ns), a.rule, a.message)
}

pub async fn run(cfg: WatchConfig) -> Result<ExitCode> {
    let mut signals = StopSignals::install()?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut source = Source::live(Tracer::load(&cfg.load)?, cfg.user_filter);
    let mut engine = Engine::new(cfg.max_conns);
    if cfg.seed {
        source.seed(&mut engine)?;
    }
    source.restart_loss_count();
    let mut alerter = Alerter::new(cfg.rules.clone());
    let (hook, timewait_hook) = source.hooks();
    eprintln!(
        "tcptrace: watching every {:?} (hook: {hook}, TIME_WAIT: {timewait_hook}); Ctrl-C to stop",
        cfg.interval
    );
    let mut out = io::stdout().lock();
    let mut poll = interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut evaluate = interval(cfg.interval);
    evaluate.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let reconcile_every = cfg
        .reconcile
        .unwrap_or(Duration::from_secs(3600 * 24 * 365));
    let mut reconcile = interval(reconcile_every);
    reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
    reconcile.tick().await;
    let deadline = cfg.duration.map(|d| Instant::now() + d);
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            _ = async { sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => break,
            _ = hup.recv() => match cfg.overrides.rules(cfg.config.as_deref()) {
                Ok(rules) => {
                    eprintln!("tcptrace: rules reloaded");
                    alerter.rules = rules;
                }
                Err(e) => eprintln!("tcptrace: reload failed, keeping the current rules: {e}"),
            },
            _ = poll.tick() => { source.drain(&mut engine); }
            _ = reconcile.tick(), if cfg.reconcile.is_some() => {
                if let Err(e) = source.reconcile(&mut engine) {
                    log::warn!("reconciliation failed: {e:#}");
                }
            }
            _ = evaluate.tick() => {
                source.drain(&mut engine);
                let host = source.host_facts();
                let (now, wall) = source.now();
                let snap = engine.snapshot(now, wall, host);
                let mut fired = false;
                for a in alerter.evaluate(&snap, now, wall) {
                    fired |= a.state == AlertState::Firing;
                    let written = if cfg.json {
                        serde_json::to_writer(&mut out, &a)
                            .map_err(io::Error::from)
                            .and_then(|()| out.write_all(b"\n"))
                            .and_then(|()| out.flush())
                    } else {
                        writeln!(io::stderr(), "tcptrace: {}", text_line(&a))
                    };
                    match written {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
                        Err(e) => return Err(e.into()),
                    }
                }
                if fired && cfg.exit_on_alert {
                    return Ok(ExitCode::from(1));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
