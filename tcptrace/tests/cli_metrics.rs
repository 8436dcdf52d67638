//! `--metrics ADDR` scraped over HTTP on loopback, checked against `ss`:
//! this test leaks CLOSE_WAIT sockets and piles TIME_WAIT sockets on ports
//! of its own, and the scraped gauges must equal what `ss` counts on them.

mod common;

use std::time::{Duration, Instant};

use common::{
    Running, free_listener, free_port, http_get, leak_close_wait, metric_value as value,
    pile_time_wait, ss_count,
};

/// Scrapes until `ok` holds (events arrive asynchronously), or panics with the last body.
fn scrape_until(port: u16, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, _, body) = http_get(port, "/metrics");
        if ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn stats_metrics_match_ss_for_close_wait_and_time_wait() {
    let (listener, port) = free_listener();
    let (tw_listener, tw_port) = free_listener();
    let metrics_port = free_port(false);
    let addr = format!("127.0.0.1:{metrics_port}");
    let running = Running::start(
        &[
            "stats",
            "--interval",
            "3600",
            "--reconcile",
            "0",
            "--port",
            &port.to_string(),
            "--port",
            &tw_port.to_string(),
            "--metrics",
            &addr,
        ],
        "stats every",
    );

    let mut held = Vec::new();
    leak_close_wait(&listener, port, 25, &mut held);
    pile_time_wait(tw_listener, tw_port, 40);

    let me = std::process::id();
    let cw_series = format!(r#"tcptrace_close_wait_sockets{{pid="{me}",comm="#);
    // The final states (the clients' FIN_WAIT1 -> FIN_WAIT2 can trail the
    // server's CLOSE_WAIT by a delayed ACK).
    let body = scrape_until(
        metrics_port,
        "25 CLOSE_WAIT, 25 FIN_WAIT2, 40 TIME_WAIT",
        |b| {
            value(b, r#"tcptrace_connections{state="CLOSE_WAIT"}"#) == Some(25.0)
                && value(b, r#"tcptrace_connections{state="FIN_WAIT2"}"#) == Some(25.0)
                && value(b, r#"tcptrace_connections{state="TIME_WAIT"}"#) == Some(40.0)
        },
    );
    // The oracle: ss, on the same ports.
    let ss_cw = ss_count("close-wait", port, None) as f64;
    let ss_tw = ss_count("time-wait", tw_port, None) as f64;
    let ss_fw2 = ss_count("fin-wait-2", port, None) as f64;
    assert_eq!(
        (ss_cw, ss_tw, ss_fw2),
        (25.0, 40.0, 25.0),
        "ss disagrees with the test itself"
    );
    let gauge = |state: &str| {
        value(
            &body,
            &format!(r#"tcptrace_connections{{state="{state}"}}"#),
        )
    };
    assert_eq!(gauge("CLOSE_WAIT"), Some(ss_cw));
    assert_eq!(gauge("TIME_WAIT"), Some(ss_tw));
    assert_eq!(gauge("FIN_WAIT2"), Some(ss_fw2));
    assert_eq!(
        gauge("ESTABLISHED"),
        Some(ss_count("established", port, None) as f64)
    );
    // Held by this process, by pid.
    let held_by_me: f64 = body
        .lines()
        .filter(|l| l.starts_with(&cw_series))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(held_by_me, ss_cw, "{body}");
    // TIME_WAIT by the peer the ports were burnt on.
    assert_eq!(
        value(
            &body,
            &format!(r#"tcptrace_time_wait_sockets{{peer="127.0.0.1:{tw_port}"}}"#)
        ),
        Some(ss_tw)
    );
    // Every connection reached CLOSE_WAIT on one side: 25 leaked + 40 closed by the server.
    assert_eq!(
        value(
            &body,
            r#"tcptrace_transitions_total{old="ESTABLISHED",new="CLOSE_WAIT"}"#
        ),
        Some(65.0)
    );
    assert_eq!(value(&body, "tcptrace_time_wait_begun_total"), Some(40.0));
    assert_eq!(
        value(
            &body,
            r#"tcptrace_handshake_duration_seconds_count{side="connect"}"#
        ),
        Some(65.0)
    );
    for source in [
        "ring_full",
        "recursion_misses",
        "map_full",
        "evictions",
        "decode_errors",
    ] {
        assert_eq!(
            value(
                &body,
                &format!(r#"tcptrace_lost_events_total{{source="{source}"}}"#)
            ),
            Some(0.0),
            "{source}"
        );
    }
    assert!(
        !body.contains("tcptrace_alerts_firing"),
        "stats runs no rules"
    );

    let (status, headers, _) = http_get(metrics_port, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    let (status, _, body) = http_get(metrics_port, "/");
    assert!(
        status.contains("404") && body.contains("/metrics"),
        "{status} {body}"
    );

    drop(held);
    let (status, _, err) = running.stop();
    assert!(status.success(), "{status} {err}");
}

#[test]
fn watch_metrics_show_the_alerts_firing() {
    let (listener, port) = free_listener();
    let metrics_port = free_port(false);
    let addr = format!("127.0.0.1:{metrics_port}");
    let running = Running::start(
        &[
            "watch",
            "--interval",
            "0.5",
            "--reconcile",
            "0",
            "--port",
            &port.to_string(),
            "--close-wait",
            "5",
            "--close-wait-host",
            "0",
            "--lost",
            "0",
            "--metrics",
            &addr,
        ],
        "watching every",
    );
    let body = scrape_until(metrics_port, "the rules listed, none firing", |b| {
        value(b, r#"tcptrace_alerts_firing{rule="close_wait_count"}"#) == Some(0.0)
    });
    assert!(body.contains(r#"tcptrace_alerts_firing{rule="time_wait_ports"} 0"#));
    let mut held = Vec::new();
    leak_close_wait(&listener, port, 8, &mut held);
    scrape_until(metrics_port, "close_wait_count firing", |b| {
        value(b, r#"tcptrace_alerts_firing{rule="close_wait_count"}"#) == Some(1.0)
    });
    drop(held);
    scrape_until(metrics_port, "close_wait_count resolved", |b| {
        value(b, r#"tcptrace_alerts_firing{rule="close_wait_count"}"#) == Some(0.0)
    });
    let (status, _, err) = running.stop();
    assert!(status.success(), "{status} {err}");
}

#[test]
fn a_taken_metrics_address_is_one_line_and_exit_2() {
    let (_taken, port) = free_listener();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args([
            "stats",
            "--duration",
            "1",
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--metrics") && err.contains("cannot listen"),
        "{err}"
    );
}
