//! `tcptrace stats --json` against `ss`: a server leaking CLOSE_WAIT sockets
//! (some created before tcptrace started) and a client leaving TIME_WAIT
//! sockets to one port; the JSON shows them exactly, with this process as
//! owner and lower-bound ages for the sockets that predate the tracer.

mod common;

use std::{
    net::{Shutdown, TcpStream},
    time::Duration,
};

use common::{Streaming, free_listener, leak_close_wait, pile_time_wait, ss_count};

/// How long a condition may take to show up before the test fails.
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn stats_json_matches_ss_for_close_wait_leak_and_time_wait_pile() {
    let (cw_listener, cw_port) = free_listener();
    let (tw_listener, tw_port) = free_listener();
    let mut held = Vec::new();
    leak_close_wait(&cw_listener, cw_port, 10, &mut held); // before tcptrace starts

    let (cw, tw) = (cw_port.to_string(), tw_port.to_string());
    let args = [
        "stats",
        "--json",
        "--interval",
        "1",
        "--port",
        &cw,
        "--port",
        &tw,
    ];
    let running = Streaming::start(&args);
    Streaming::wait_line(&running.err, &mut Vec::new(), "banner", WAIT, |l| {
        l.contains("stats every")
    });

    leak_close_wait(&cw_listener, cw_port, 40, &mut held);
    // 200 client-side TIME_WAITs to tw_port: the client closes first.
    pile_time_wait(tw_listener, tw_port, 200);
    let mut lines = Vec::new();
    // 200 TIME_WAITs, less any the kernel itself ended early (a connect
    // elsewhere on this busy host reusing one of their ports: tcptrace
    // counts it in `ended.time_wait_killed`, and `ss` no longer has it).
    let tw_of = |l: &str| -> Option<(u64, u64)> {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        Some((
            v["states"]["TIME_WAIT"].as_u64()?,
            v["ended"]["time_wait_killed"].as_u64().unwrap_or(0),
        ))
    };
    Streaming::wait_line(
        &running.out,
        &mut lines,
        "a summary with 50 CLOSE_WAIT and 200 TIME_WAIT",
        WAIT,
        |l| {
            l.contains(r#""CLOSE_WAIT":50"#)
                && tw_of(l).is_some_and(|(tw, killed)| tw + killed == 200)
        },
    );
    // One more summary after it: the counts must hold, not just pass by.
    Streaming::wait_line(&running.out, &mut lines, "the next summary", WAIT, |_| true);
    let ss_cw = ss_count("close-wait", cw_port, None);
    let ss_tw = ss_count("time-wait", tw_port, None);
    running.signal(libc::SIGINT);
    let (status, _, _) = running.wait(WAIT);
    assert!(status.success());
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();

    let (tw, killed) = tw_of(lines.last().unwrap()).unwrap();
    assert!(
        killed <= 2,
        "{killed} TIME_WAIT sockets ended early: {last}"
    );
    assert_eq!(
        (ss_cw, ss_tw as u64 + killed),
        (50, 200),
        "the scenario itself"
    );
    assert_eq!(last["states"]["CLOSE_WAIT"], 50, "{last}");
    assert_eq!(tw, ss_tw as u64, "TIME_WAIT equals ss: {last}");
    let me = std::process::id();
    let procs = last["close_wait_by_process"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "{procs:?}");
    assert_eq!(procs[0]["pid"], me);
    assert_eq!(procs[0]["count"], 50);
    let cw = last["close_wait"].as_array().unwrap();
    assert_eq!(cw.len(), 50);
    let lower: Vec<&serde_json::Value> = cw
        .iter()
        .filter(|s| s["age_is_lower_bound"] == true)
        .collect();
    assert_eq!(lower.len(), 10, "the sockets that predate tcptrace");
    assert!(
        cw[..10].iter().all(|s| s["age_is_lower_bound"] == true),
        "oldest first"
    );
    assert!(cw.iter().all(|s| s["pid"] == me && s["sport"] == cw_port));
    let peers = last["time_wait_by_peer"].as_array().unwrap();
    let peer = peers
        .iter()
        .find(|p| p["dport"] == tw_port)
        .expect("the TIME_WAIT destination");
    assert_eq!(peer["count"], 200);
    let ratio = peer["port_range_ratio"].as_f64().unwrap();
    let (lo, hi): (f64, f64) = {
        let r = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let v: Vec<f64> = r.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (v[0], v[1])
    };
    assert!((ratio - 200.0 / (hi - lo + 1.0)).abs() < 1e-9);
    for key in [
        "histograms",
        "lost",
        "ts_ns",
        "close_wait_by_process",
        "time_wait_by_peer",
    ] {
        assert!(last.get(key).is_some(), "{key}");
    }
    assert_eq!(last["lost"]["ring_full"], 0);
    drop(held);
}

/// Lost events must not hide real sockets: stop tcptrace, overflow a 1 MiB
/// ring with churn while leaking CLOSE_WAIT, resume; within a reconciliation
/// period the counts equal `ss` again, and the loss is reported.
#[test]
fn reconciliation_repairs_what_lost_events_hid() {
    let (listener, port) = free_listener();
    let p = port.to_string();
    let args = [
        "stats",
        "--json",
        "--interval",
        "1",
        "--reconcile",
        "1",
        "--ring-size",
        "1",
        "--port",
        &p,
    ];
    let running = Streaming::start(&args);
    Streaming::wait_line(&running.err, &mut Vec::new(), "banner", WAIT, |l| {
        l.contains("stats every")
    });
    running.signal(libc::SIGSTOP);
    let mut held = Vec::new();
    for i in 0..2_000 {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = listener.accept().unwrap();
        if i % 100 == 0 {
            c.shutdown(Shutdown::Write).unwrap();
            held.push((s, c)); // 20 CLOSE_WAIT, events mostly lost
        } else {
            drop(c);
            drop(s);
        }
    }
    running.signal(libc::SIGCONT);
    // Within a reconciliation period or two, the counts are right again.
    let mut lines = Vec::new();
    Streaming::wait_line(
        &running.out,
        &mut lines,
        "a summary with the 20 CLOSE_WAIT sockets back",
        WAIT,
        |l| l.contains(r#""CLOSE_WAIT":20"#),
    );
    // And the next one too: repaired for good, not in passing.
    Streaming::wait_line(&running.out, &mut lines, "the next summary", WAIT, |_| true);
    let ss_cw = ss_count("close-wait", port, None);
    running.signal(libc::SIGINT);
    let (status, _, _) = running.wait(WAIT);
    assert!(status.success());
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(ss_cw, 20);
    assert!(
        last["lost"]["ring_full"].as_u64().unwrap() > 0,
        "the ring did overflow"
    );
    assert_eq!(last["states"]["CLOSE_WAIT"], 20, "{}", last["states"]);
    assert!(last["corrections"].as_u64().unwrap() > 0);
    drop(held);
}

/// A real nginx that closes every connection first (no keep-alive): its
/// TIME_WAIT is one row per service (the nginx port, owner nginx, closing
/// first), not one row per client port; the metrics have it per service.
#[test]
fn server_side_time_wait_is_one_row_per_service_in_json_and_metrics() {
    const REQUESTS: usize = 120;
    let ns = common::NetNs::new("stats-nginx");
    let port = common::free_port(false);
    let nginx = common::Nginx::start(&ns, port);
    let metrics_port = common::free_port(false);
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let p = port.to_string();
    let running = Streaming::start(&[
        "stats",
        "--json",
        "--interval",
        "1",
        "--port",
        &p,
        "--metrics",
        &metrics_addr,
    ]);
    Streaming::wait_line(&running.err, &mut Vec::new(), "banner", WAIT, |l| {
        l.contains("stats every")
    });
    nginx.requests(&ns, REQUESTS);
    let mut lines = Vec::new();
    let want = format!(r#""TIME_WAIT":{REQUESTS}"#);
    Streaming::wait_line(&running.out, &mut lines, "every TIME_WAIT", WAIT, |l| {
        l.contains(&want)
    });
    let snap: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let services = snap["time_wait_by_service"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{services:#?}");
    let s = &services[0];
    assert_eq!(
        (s["sport"].as_u64(), s["count"].as_u64()),
        (Some(port.into()), Some(REQUESTS as u64))
    );
    assert_eq!(s["saddr"], "127.0.0.1");
    assert_eq!(s["comm"], "nginx", "the listener's owner: {s}");
    assert_eq!(s["clients"], 1);
    assert!(s["rate_per_sec"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(
        s["closed_first"]["local"].as_u64(),
        Some(REQUESTS as u64),
        "{s}"
    );
    // Not one row per client: no destination row for the clients' ports.
    assert!(
        snap["time_wait_by_peer"].as_array().unwrap().is_empty(),
        "{}",
        snap["time_wait_by_peer"]
    );
    assert_eq!(
        snap["time_wait_by_local"][0]["sport"].as_u64(),
        Some(port.into())
    );
    let (_, body) = {
        let (status, _, body) = common::http_get(metrics_port, "/metrics");
        (status, body)
    };
    assert_eq!(
        common::metric_value(
            &body,
            &format!(
                r#"tcptrace_time_wait_service_sockets{{service="127.0.0.1:{port}",netns="{}",comm="nginx"}}"#,
                s["netns"]
            )
        ),
        Some(REQUESTS as f64),
        "{body}"
    );
    assert!(!body.contains("tcptrace_time_wait_sockets{peer="), "{body}");
    running.signal(libc::SIGINT);
    let (status, _, _) = running.wait(WAIT);
    assert!(status.success());
    drop(nginx);
}
