//! `tcptrace watch` on a real leak: this test leaks CLOSE_WAIT sockets at a
//! steady rate; `watch --json` with small thresholds must fire the count and
//! growth alerts naming this process, once each, then resolve them once the
//! sockets are closed.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{free_listener, leak_close_wait};
use serde_json::Value;

#[test]
fn watch_fires_on_a_close_wait_leak_naming_the_process_and_resolves_once_closed() {
    let (listener, port) = free_listener();
    let p = port.to_string();
    let hook_log = std::env::temp_dir().join(format!("tcptrace-exec-{port}.log"));
    let _ = std::fs::remove_file(&hook_log);
    // The hook appends the JSON it gets on stdin, then its variables.
    let exec = format!(
        "cat >> {0}; echo \"state=$TCPTRACE_ALERT_STATE rule=$TCPTRACE_ALERT_RULE pid=$TCPTRACE_ALERT_PID\" >> {0}",
        hook_log.display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args([
            "watch",
            "--json",
            "--interval",
            "0.5",
            "--port",
            &p,
            "--close-wait",
            "10",
            "--close-wait-growth",
            "5",
            "--growth-window",
            "1",
            "--close-wait-host",
            "0",
            "--lost",
            "0",
            "--reconcile",
            "0",
            "--exec",
            &exec,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut banner = String::new();
    err.read_line(&mut banner).unwrap();
    assert!(banner.contains("watching every"), "{banner}");
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            tx.send(serde_json::from_str(&line).expect("one JSON object per line"))
                .unwrap();
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let wait_for = |what: &str, ok: &dyn Fn(&[Value]) -> bool, seen: &mut Vec<Value>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok(seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(v) => seen.push(v),
                Err(_) => panic!("timed out waiting for {what}; alerts so far: {seen:#?}"),
            }
        }
    };
    let has = |rule: &'static str, state: &'static str| {
        move |s: &[Value]| s.iter().any(|a| a["rule"] == rule && a["state"] == state)
    };

    // A steady leak: 5 sockets per second for 4 seconds.
    let mut held = Vec::new();
    for _ in 0..8 {
        leak_close_wait(&listener, port, 5, &mut held);
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for(
        "count and growth firing",
        &|s: &[Value]| {
            has("close_wait_count", "firing")(s) && has("close_wait_growth", "firing")(s)
        },
        &mut seen,
    );
    let pid = std::process::id();
    for rule in ["close_wait_count", "close_wait_growth"] {
        let a = seen
            .iter()
            .find(|a| a["rule"] == rule && a["state"] == "firing")
            .unwrap();
        assert_eq!(a["pid"], pid, "{a}");
        assert!(a["comm"].as_str().is_some_and(|c| !c.is_empty()), "{a}");
        // The cgroup of this process, as /proc says.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        assert_eq!(a["cgroup"], own, "{a}");
        // The growth rule can fire before the count reaches its threshold.
        let floor = if rule == "close_wait_count" { 10 } else { 1 };
        assert!(a["count"].as_u64().unwrap() >= floor, "{a}");
        // The count can cross its threshold at the first evaluation, before
        // there is a sample to measure growth against.
        let growth = a["growth_per_min"].as_f64().unwrap();
        assert!(rule != "close_wait_growth" || growth > 5.0, "{a}");
        assert!(a["oldest_age_ms"].as_u64().is_some(), "{a}");
        assert!(
            a["peers"][0].as_str().unwrap().starts_with("127.0.0.1:"),
            "the clients: {a}"
        );
        assert!(
            a["message"]
                .as_str()
                .unwrap()
                .contains("after the peer closed: a leaked connection"),
            "{a}"
        );
    }

    // Closed: both resolve.
    drop(held);
    wait_for(
        "both resolved",
        &|s: &[Value]| {
            has("close_wait_count", "resolved")(s) && has("close_wait_growth", "resolved")(s)
        },
        &mut seen,
    );
    // An observation window, not a wait: four more evaluations must add
    // nothing (no storm, no flapping).
    std::thread::sleep(Duration::from_secs(2));
    seen.extend(rx.try_iter());
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    for rule in ["close_wait_count", "close_wait_growth"] {
        for state in ["firing", "resolved"] {
            let n = seen
                .iter()
                .filter(|a| a["rule"] == rule && a["state"] == state)
                .count();
            assert_eq!(n, 1, "{rule} {state} once: {seen:#?}");
        }
    }
    // --exec ran exactly once per state change, with the alert on stdin and
    // in its environment (watch lets running commands finish before it exits).
    let log = std::fs::read_to_string(&hook_log).unwrap();
    // Hooks for one evaluation run concurrently: compare as sets.
    let (json, env): (Vec<&str>, Vec<&str>) = log.lines().partition(|l| l.starts_with('{'));
    let mut from_json: Vec<String> = json
        .iter()
        .map(|l| {
            let a: Value = serde_json::from_str(l).unwrap();
            format!(
                "state={} rule={} pid={pid}",
                a["state"].as_str().unwrap(),
                a["rule"].as_str().unwrap()
            )
        })
        .collect();
    let mut from_env: Vec<String> = env.iter().map(|l| l.to_string()).collect();
    let mut printed: Vec<String> = seen
        .iter()
        .map(|a| {
            format!(
                "state={} rule={} pid={pid}",
                a["state"].as_str().unwrap(),
                a["rule"].as_str().unwrap()
            )
        })
        .collect();
    from_json.sort();
    from_env.sort();
    printed.sort();
    assert_eq!(from_json, printed, "{log}");
    assert_eq!(from_env, printed, "{log}");
    let _ = std::fs::remove_file(&hook_log);
}

#[test]
fn watch_rejects_bad_rules_in_one_line() {
    let dir = std::env::temp_dir().join(format!("tcptrace-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "close_wait_per_proces = 5\n").unwrap();
    for (args, says) in [
        (vec!["--growth-window", "3"], "must be 1, 5 or 15"),
        (
            vec!["--time-wait-share", "2"],
            "time_wait_port_share = 2 must be in (0, 1]",
        ),
        (
            vec!["--config", typo.to_str().unwrap()],
            "unknown field `close_wait_per_proces`",
        ),
        (
            vec!["--config", "/nonexistent.toml"],
            "cannot read /nonexistent.toml",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
            .arg("watch")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a service manager does: SIGHUP after editing the config reloads the
/// rules (a bad file keeps the current ones, said in one line); SIGTERM
/// stops cleanly with exit 0.
#[test]
fn sighup_reloads_the_config_and_sigterm_stops_cleanly() {
    use common::Streaming;
    const WAIT: Duration = Duration::from_secs(30);
    let (listener, port) = free_listener();
    let dir = std::env::temp_dir().join(format!("tcptrace-watch-hup-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("watch.toml");
    let rules = |n: u64| {
        format!(
            "close_wait_per_process = {n}\nclose_wait_host = 0\nlost_events = 0\nclose_wait_oldest_secs = 3600\nclose_wait_growth_per_min = 100000\n"
        )
    };
    std::fs::write(&config, rules(1000)).unwrap();
    let running = Streaming::start(&[
        "watch",
        "--json",
        "--interval",
        "0.3",
        "--reconcile",
        "0",
        "--port",
        &port.to_string(),
        "--config",
        config.to_str().unwrap(),
    ]);
    let mut errs = Vec::new();
    Streaming::wait_line(&running.err, &mut errs, "banner", WAIT, |l| {
        l.contains("watching every")
    });
    let mut held = Vec::new();
    leak_close_wait(&listener, port, 8, &mut held);
    // 8 < 1000: nothing, over an observation window of three evaluations
    // (a negative cannot be waited for; the scripted-source test of the
    // same reload pins it exactly). Then a bad file (kept rules), then a
    // good one.
    std::thread::sleep(Duration::from_millis(900));
    std::fs::write(&config, "close_wait_per_process = \"many\"\n").unwrap();
    running.signal(libc::SIGHUP);
    Streaming::wait_line(&running.err, &mut errs, "the refused reload", WAIT, |l| {
        l.contains("reload failed")
    });
    std::fs::write(&config, rules(5)).unwrap();
    running.signal(libc::SIGHUP);
    Streaming::wait_line(&running.err, &mut errs, "the reload", WAIT, |l| {
        l.contains("rules reloaded")
    });
    let mut outs = Vec::new();
    Streaming::wait_line(&running.out, &mut outs, "the alert", WAIT, |l| {
        l.contains("close_wait_count")
    });
    running.signal(libc::SIGTERM);
    let (status, out_rest, err_rest) = running.wait(WAIT);
    outs.extend(out_rest);
    errs.extend(err_rest);
    let (out, err) = (outs.join("\n"), errs.join("\n"));
    assert!(status.success(), "SIGTERM: {status} {err}");
    let alerts: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alerts.len(), 1, "{out}");
    assert_eq!(alerts[0]["rule"], "close_wait_count");
    assert_eq!(alerts[0]["count"], 8);
    assert!(
        err.contains("reload failed, keeping the current rules"),
        "{err}"
    );
    assert_eq!(err.matches("rules reloaded").count(), 1, "{err}");
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}
