//! `tcptrace watch`: the live engine (as `stats`), with the rules of
//! [`crate::alerts`] evaluated every `--interval`. Alerts go to stderr as
//! text lines, or to stdout as JSON Lines with `--json`. SIGHUP reloads
//! `--config` (the flags still override it); SIGTERM/SIGINT stop cleanly.
//! `--exec` runs a command per alert on its own thread, bounded in time and
//! in number, so a slow or hanging hook never delays tracing.

use std::{
    io::{self, Write},
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};

use crate::{
    alerts::{Alert, AlertState, Alerter},
    cli::WatchConfig,
    clock::hms_millis,
    ebpf::Tracer,
    engine::Engine,
    metrics_http,
    source::Source,
    trace::{POLL_INTERVAL, StopSignals, reconcile_ticker, ticker},
};

/// One alert as a text line (stderr).
pub fn text_line(a: &Alert) -> String {
    let state = match a.state {
        AlertState::Firing => "ALERT",
        AlertState::Resolved => "RESOLVED",
    };
    let cgroup = a
        .cgroup
        .as_deref()
        .map(|c| format!(" [cgroup {c}]"))
        .unwrap_or_default();
    format!(
        "{} {state} {}: {}{cgroup}",
        hms_millis(a.ts_ns),
        a.rule,
        a.message
    )
}

/// Longest an `--exec` command may run before it is killed.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// `--exec` commands running at once, at most; more alerts are logged, not run.
pub const EXEC_MAX_RUNNING: usize = 4;

/// What became of one `--exec` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exec {
    /// Started on its own thread.
    Started,
    /// Not run: [`EXEC_MAX_RUNNING`] commands were still running.
    Skipped,
}

/// Runs `sh -c cmd` for one alert on its own thread: the alert as JSON on
/// stdin and in `TCPTRACE_ALERT_*` variables, killed after `timeout`;
/// failures are logged on stderr. Returns at once.
pub fn exec_alert(cmd: &str, a: &Alert, running: &Arc<AtomicUsize>, timeout: Duration) -> Exec {
    if running.fetch_add(1, Ordering::SeqCst) >= EXEC_MAX_RUNNING {
        running.fetch_sub(1, Ordering::SeqCst);
        eprintln!(
            "tcptrace: --exec skipped for {} ({EXEC_MAX_RUNNING} still running)",
            a.rule
        );
        return Exec::Skipped;
    }
    let json = serde_json::to_string(a).unwrap_or_default();
    let state = match a.state {
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .env("TCPTRACE_ALERT_RULE", a.rule)
        .env("TCPTRACE_ALERT_STATE", state)
        .env(
            "TCPTRACE_ALERT_PID",
            a.pid.map(|p| p.to_string()).unwrap_or_default(),
        )
        .env("TCPTRACE_ALERT_COMM", a.comm.clone().unwrap_or_default())
        .env(
            "TCPTRACE_ALERT_CGROUP",
            a.cgroup.clone().unwrap_or_default(),
        )
        .env("TCPTRACE_ALERT_COUNT", a.count.to_string())
        .env("TCPTRACE_ALERT_PEERS", a.peers.join(" "))
        .env("TCPTRACE_ALERT_MESSAGE", &a.message)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let rule = a.rule;
    let running = running.clone();
    std::thread::spawn(move || {
        let outcome = (|| -> io::Result<String> {
            let mut child = command.spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                // A command that does not read stdin is fine.
                let _ = stdin.write_all(json.as_bytes());
                let _ = stdin.write_all(b"\n");
            }
            let started = std::time::Instant::now();
            loop {
                if let Some(status) = child.try_wait()? {
                    return Ok(if status.success() {
                        String::new()
                    } else {
                        format!("exited with {status}")
                    });
                }
                if started.elapsed() >= timeout {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(format!("killed after {:?}", timeout));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })();
        match outcome {
            Ok(problem) if problem.is_empty() => {}
            Ok(problem) => eprintln!("tcptrace: --exec for {rule} {problem}"),
            Err(e) => eprintln!("tcptrace: --exec for {rule} failed: {e}"),
        }
        running.fetch_sub(1, Ordering::SeqCst);
    });
    Exec::Started
}

pub async fn run(cfg: WatchConfig) -> Result<ExitCode> {
    let mut signals = StopSignals::install()?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut scrapes = cfg.metrics.map(metrics_http::serve).transpose()?;
    let mut source = Source::live(Tracer::load(&cfg.load)?, cfg.user_filter);
    let mut engine = Engine::new(cfg.max_conns);
    if cfg.seed {
        source.seed(&mut engine)?;
    }
    source.restart_loss_count();
    crate::sched::drain_priority(cfg.load.realtime_drain);
    let mut alerter = Alerter::new(cfg.rules.clone());
    let exec_running = Arc::new(AtomicUsize::new(0));
    let (hook, timewait_hook) = source.hooks();
    eprintln!(
        "tcptrace: watching every {:?} (hook: {hook}, TIME_WAIT: {timewait_hook}); Ctrl-C to stop",
        cfg.interval
    );
    let mut out = io::stdout().lock();
    let mut poll = ticker(POLL_INTERVAL);
    let mut evaluate = ticker(cfg.interval);
    let mut reconcile = reconcile_ticker(cfg.reconcile).await;
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
            Some(scrape) = metrics_http::next(&mut scrapes) => {
                let firing = alerter.firing_rules();
                scrape.answer(&mut source, &mut engine, Some(&firing));
            }
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
                for mut a in alerter.evaluate(&snap, now, wall) {
                    fired |= a.state == AlertState::Firing;
                    a.cgroup = a.pid.and_then(crate::seed::host::cgroup_path);
                    if let Some(cmd) = &cfg.exec {
                        exec_alert(cmd, &a, &exec_running, EXEC_TIMEOUT);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::AlertState;

    fn alert() -> Alert {
        Alert {
            rule: "close_wait_count",
            state: AlertState::Firing,
            ts_ns: 0,
            pid: Some(1),
            comm: Some("init".into()),
            cgroup: Some("/init.scope".into()),
            count: 1,
            growth_per_min: None,
            oldest_age_ms: None,
            peers: vec![],
            value: 1.0,
            threshold: 1.0,
            message: "m".into(),
        }
    }

    fn wait_until(ok: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_hanging_command_is_killed_at_the_timeout_and_never_blocks_the_caller() {
        let running = Arc::new(AtomicUsize::new(0));
        let started = std::time::Instant::now();
        let got = exec_alert("sleep 30", &alert(), &running, Duration::from_millis(300));
        assert_eq!(got, Exec::Started);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "exec blocked"
        );
        assert_eq!(running.load(Ordering::SeqCst), 1);
        wait_until(|| running.load(Ordering::SeqCst) == 0);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[test]
    fn at_most_four_run_at_once_and_the_rest_are_skipped() {
        let running = Arc::new(AtomicUsize::new(0));
        let a = alert();
        let got: Vec<Exec> = (0..6)
            .map(|_| exec_alert("sleep 30", &a, &running, Duration::from_millis(500)))
            .collect();
        assert_eq!(got[..EXEC_MAX_RUNNING], [Exec::Started; EXEC_MAX_RUNNING]);
        assert_eq!(got[EXEC_MAX_RUNNING..], [Exec::Skipped, Exec::Skipped]);
        wait_until(|| running.load(Ordering::SeqCst) == 0);
        // Room again once they are gone.
        let out = std::env::temp_dir().join(format!("tcptrace-exec-env-{}", std::process::id()));
        let cmd = format!(
            "cat > {0}; echo \"$TCPTRACE_ALERT_RULE $TCPTRACE_ALERT_PID $TCPTRACE_ALERT_CGROUP\" >> {0}",
            out.display()
        );
        assert_eq!(
            exec_alert(&cmd, &a, &running, Duration::from_secs(5)),
            Exec::Started
        );
        wait_until(|| running.load(Ordering::SeqCst) == 0);
        let text = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        let mut lines = text.lines();
        let json: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(json["cgroup"], "/init.scope");
        assert_eq!(lines.next(), Some("close_wait_count 1 /init.scope"));
    }

    #[test]
    fn the_text_line_names_the_cgroup() {
        let line = text_line(&alert());
        assert!(
            line.ends_with("ALERT close_wait_count: m [cgroup /init.scope]"),
            "{line}"
        );
    }
}
