//! Dropped SYNs at a full accept queue, per listener, against the kernel's
//! own counters: in a network namespace this test creates, `slowacceptd`
//! (a real process: Python renamed through /proc/self/comm) listens on
//! 127.0.0.1:8080 with backlog 1 and never accepts, and on 127.0.0.1:8081
//! with backlog 128 accepting everything; 40 clients connect to each. The
//! drops must be counted for 8080 alone, with its owner and the reason
//! `accept_queue_full`, equal to the namespace's `ListenOverflows` delta;
//! 8081 shows none; `doctor` names the listener and exits 1; `trace` prints
//! `drop` events for it; the metrics carry the per-listener series. Root;
//! fails (never skips) when the program cannot load.

mod common;

use std::time::Duration;

use common::{
    acceptq::{CLIENT, FAST, SERVER, SLOW, end, netstat, python_in, ss_drops},
    *,
};

const WAIT: Duration = Duration::from_secs(40);
const CLIENTS: usize = 40;

/// TcpExt `ListenOverflows` and `ListenDrops` of `ns`.
fn overflows(ns: &NetNs) -> (u64, u64) {
    (netstat(ns, "ListenOverflows"), netstat(ns, "ListenDrops"))
}

/// A listener row of a stats JSON line.
fn row<'a>(v: &'a serde_json::Value, listener: &str) -> Option<&'a serde_json::Value> {
    v["listeners"]
        .as_array()?
        .iter()
        .find(|r| r["listener"] == listener)
}

#[test]
fn a_full_accept_queue_s_drops_are_counted_for_that_listener_with_owner_and_reason() {
    let ns = NetNs::new("acceptq");
    let server = python_in(&ns, SERVER, &[], "ready");
    let server_pid = child_pid_in(&ns, "slowacceptd");
    let metrics_port = free_port(false);
    let metrics = format!("127.0.0.1:{metrics_port}");
    let running = Streaming::start(&[
        "stats",
        "--json",
        "--interval",
        "1",
        "--netns",
        &ns.name,
        "--metrics",
        &metrics,
    ]);
    let mut lines = Vec::new();
    // Sampled once: the listeners are known before the clients come.
    Streaming::wait_line(
        &running.out,
        &mut lines,
        "a summary listing 8080",
        WAIT,
        |l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| row(&v, &format!("127.0.0.1:{SLOW}")).is_some())
        },
    );
    let before = overflows(&ns);
    let clients = python_in(&ns, CLIENT, &[&CLIENTS.to_string()], "connected");
    wait_for("the kernel to drop SYNs at 8080", WAIT, || {
        ss_drops(&ns, SLOW) >= CLIENTS as u64
    });
    end(clients);
    // No client is left: nothing more can be dropped.
    let after = overflows(&ns);
    let (overflowed, dropped) = (after.0 - before.0, after.1 - before.1);
    assert!(overflowed >= CLIENTS as u64, "only {overflowed} overflows");
    let line = Streaming::wait_line(
        &running.out,
        &mut lines,
        &format!("8080 with {overflowed} drops (the ListenOverflows delta)"),
        WAIT,
        |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                row(&v, &format!("127.0.0.1:{SLOW}"))
                    .is_some_and(|r| r["drops_total"] == overflowed)
            })
        },
    );
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let slow = row(&v, &format!("127.0.0.1:{SLOW}")).unwrap();
    assert_eq!(
        slow["drops_by_reason"]["accept_queue_full"], overflowed,
        "{slow}"
    );
    assert_eq!(
        dropped, overflowed,
        "the namespace dropped for no other reason"
    );
    assert_eq!(slow["main_reason"], "accept_queue_full");
    assert_eq!(slow["comm"], "slowacceptd");
    assert_eq!(slow["pid"], server_pid);
    assert_eq!(slow["netns"], ns.inode());
    assert_eq!(slow["accept_queue_limit"], 1);
    let fast = row(&v, &format!("127.0.0.1:{FAST}")).expect("the normal listener is listed");
    assert_eq!(fast["drops_total"], 0, "{fast}");
    assert_eq!(fast["accept_queue_limit"], 128);

    // The metrics say the same.
    let (_, body) =
        scrape_from(std::net::Ipv4Addr::LOCALHOST, metrics_port).expect("scrape the metrics");
    let series = format!(
        r#"tcptrace_listen_drops_total{{listener="127.0.0.1:8080",netns="{}",reason="accept_queue_full"}}"#,
        ns.inode()
    );
    assert_eq!(
        metric_value(&body, &series),
        Some(overflowed as f64),
        "{series} in:\n{body}"
    );
    let limit = format!(
        r#"tcptrace_accept_queue_limit{{listener="127.0.0.1:8080",netns="{}"}}"#,
        ns.inode()
    );
    assert_eq!(
        metric_value(&body, &limit),
        Some(1.0),
        "{limit} in:\n{body}"
    );

    running.signal(libc::SIGINT);
    let _ = running.wait(WAIT);
    end(server);
}

/// The pid of the process named `comm` whose network namespace is `ns`.
fn child_pid_in(ns: &NetNs, comm: &str) -> u32 {
    let want = ns.inode() as u64;
    let mut found = None;
    wait_for(&format!("{comm} to exist"), WAIT, || {
        found = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                use std::os::unix::fs::MetadataExt;
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
                    && std::fs::metadata(format!("/proc/{pid}/ns/net"))
                        .is_ok_and(|m| m.ino() == want)
            });
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn doctor_names_the_listener_whose_queue_overflows_and_exits_1() {
    let ns = NetNs::new("doctorq");
    let server = python_in(&ns, SERVER, &[], "ready");
    let mut doctor = Running::start(
        &["doctor", "--duration", "6", "--json", "--netns", &ns.name],
        "tcptrace doctor: observing",
    );
    let clients = python_in(&ns, CLIENT, &[&CLIENTS.to_string()], "connected");
    wait_for("the kernel to drop SYNs at 8080", WAIT, || {
        ss_drops(&ns, SLOW) >= CLIENTS as u64
    });
    let status = doctor.child.wait().unwrap();
    let (out, err) = doctor.finish();
    end(clients);
    end(server);
    let findings: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let f = findings
        .iter()
        .find(|f| f["id"] == "listen_drops")
        .unwrap_or_else(|| panic!("no listen_drops finding: {out}\n{err}"));
    let title = f["title"].as_str().unwrap();
    assert!(title.contains("127.0.0.1:8080"), "{title}");
    assert!(title.contains("accept queue full"), "{title}");
    assert!(title.contains("slowacceptd"), "{title}");
    assert!(
        title.starts_with(&format!(
            "SYNs to 127.0.0.1:{SLOW} dropped: accept queue full (limit 1 = min(backlog, net.core.somaxconn)); slowacceptd is not accepting fast enough"
        )),
        "{title}"
    );
    assert!(
        !findings.iter().any(|f| f["id"] == "listen_drops"
            && f["title"]
                .as_str()
                .is_some_and(|t| t.contains(&format!(":{FAST}")))),
        "the normal listener has no finding: {out}"
    );
    assert_eq!(
        status.code(),
        Some(1),
        "doctor exits 1 on a critical finding: {err}"
    );
}

#[test]
fn trace_prints_drop_events_for_the_listener() {
    let ns = NetNs::new("traceq");
    let server = python_in(&ns, SERVER, &[], "ready");
    let running = Streaming::start(&["trace", "--json", "--netns", &ns.name]);
    Streaming::wait_line(&running.err, &mut Vec::new(), "banner", WAIT, |l| {
        l.contains("tcptrace")
    });
    let clients = python_in(&ns, CLIENT, &[&CLIENTS.to_string()], "connected");
    let mut lines = Vec::new();
    let line = Streaming::wait_line(
        &running.out,
        &mut lines,
        "a drop event at 8080",
        WAIT,
        |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["event"] == "drop"
                    && v["listener"] == "127.0.0.1:8080"
                    && v["reason"] == "accept_queue_full"
            })
        },
    );
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v["count"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["netns"], ns.inode());
    end(clients);
    end(server);
    running.signal(libc::SIGINT);
    let (_, rest, _) = running.wait(WAIT);
    lines.extend(rest);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(r#""event":"drop""#) && l.contains(":8081")),
        "no drop at the normal listener: {lines:#?}"
    );
}
