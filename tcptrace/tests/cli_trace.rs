//! `tcptrace trace` as a user runs it: exit codes, one-line errors, JSON
//! Lines, a closed pipe, stopping by itself, lost events reported, and
//! orphans that move to TIME_WAIT without a hook shown as TIME_WAIT.

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Running, Streaming, free_listener};

const BIN: &str = env!("CARGO_BIN_EXE_tcptrace");

fn spawn(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tcptrace")
}

/// Waits for the "tracing ..." banner on stderr: the hooks are attached.
fn wait_ready(child: &mut Child) -> BufReader<std::process::ChildStderr> {
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(
        line.contains("tracing TCP state changes"),
        "unexpected: {line}"
    );
    err
}

fn connect_and_close(listener: &TcpListener, n: usize) {
    let port = listener.local_addr().unwrap().port();
    for _ in 0..n {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = listener.accept().unwrap();
        drop(c);
        drop(s);
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("tcptrace did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let out = Command::new(BIN)
        .args(["trace", "--state", "BOGUS"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown state 'BOGUS'"), "{err}");
}

#[test]
fn not_root_exits_2_and_says_sudo() {
    // SAFETY: setuid in the child before exec; drops root for this child only.
    let out = unsafe {
        Command::new(BIN)
            .args(["trace", "--duration", "1"])
            .pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
            .output()
            .unwrap()
    };
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("sudo"), "{err}");
}

#[test]
fn json_lines_with_documented_fields_and_count_stops() {
    // The listener starts after tcptrace, as in the normal case: children
    // inherit its owner before accept().
    let port = common::free_port(false);
    let mut child = spawn(&[
        "trace",
        "--json",
        "--port",
        &port.to_string(),
        "--count",
        "6",
    ]);
    let _err = wait_ready(&mut child);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    connect_and_close(&listener, 2);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    let me = std::process::id();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
        for field in [
            "ts_ns",
            "kind",
            "pid",
            "comm",
            "family",
            "saddr",
            "sport",
            "daddr",
            "dport",
            "old",
            "new",
            "prev_state_ns",
            "netns",
            "cgroup",
            "reason",
        ] {
            assert!(v.get(field).is_some(), "missing {field} in {line}");
        }
        assert_eq!(v["pid"], me, "{line}");
        assert_eq!(v["family"], "ipv4");
        assert!(v["sport"] == port || v["dport"] == port);
        let ts = v["ts_ns"].as_u64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(now - ts < 60_000_000_000, "ts_ns is wall-clock time");
    }
}

#[test]
fn closed_pipe_exits_zero() {
    let (listener, port) = free_listener();
    let mut child = spawn(&["trace", "--port", &port.to_string()]);
    let _err = wait_ready(&mut child);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut header = String::new();
    out.read_line(&mut header).unwrap();
    assert!(header.starts_with("TIME"));
    drop(out); // like `| head -1`
    // Events until it writes into the closed pipe and notices.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        connect_and_close(&listener, 3);
    }
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn duration_stops_by_itself_and_sigint_detaches() {
    let mut child = spawn(&["trace", "--duration", "1", "--port", "1"]);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success());

    let mut child = spawn(&["trace", "--port", "1"]);
    let mut err = wait_ready(&mut child);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success());
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("lost 0 ("), "{rest}");
}

/// Stop the reader, overflow a 1 MiB ring, resume: the loss is reported in
/// the stream (JSON "lost") and in the exit summary, never silently.
#[test]
fn ring_buffer_overflow_is_reported() {
    let (listener, port) = free_listener();
    let p = port.to_string();
    let running = Running::start(
        &["trace", "--json", "--ring-size", "1", "--port", &p],
        "tracing TCP state changes",
    );
    running.signal(libc::SIGSTOP);
    connect_and_close(&listener, 4_000); // ~40k events x 128 bytes >> 1 MiB
    running.signal(libc::SIGCONT);
    // Stopping reports the losses of its last second too.
    let (status, out, rest) = running.stop();
    assert!(status.success(), "{rest}");
    let lost: u64 = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "lost")
        .map(|v| v["ring_full"].as_u64().unwrap())
        .sum();
    assert!(
        lost > 0,
        "no lost object in {} lines of output; stderr: {rest}",
        out.lines().count()
    );
    assert!(rest.contains("ring buffer full"), "{rest}");
    assert!(!rest.contains("lost 0 "), "{rest}");
}

/// Reads JSON lines from `rx` into `seen` until `done` holds for one of
/// them or `deadline` passes; whether `done` held.
fn read_until(
    rx: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<serde_json::Value>,
    deadline: Instant,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        let hit = done(&v);
        seen.push(v);
        if hit {
            return true;
        }
    }
}

/// Whether a trace line shows the timewait socket as TIME_WAIT: found by
/// the check (`tw_substate`), or a re-arm a tracepoint did show.
fn shows_time_wait(v: &serde_json::Value) -> bool {
    matches!(
        v["kind"].as_str(),
        Some("tw_substate" | "tw_rearm" | "tw_begin")
    ) && v["new"] == "TIME_WAIT"
}

/// Clients that close first leave orphans, timewait sockets in FIN_WAIT2;
/// when the servers close, the kernel moves them to TIME_WAIT, re-arming
/// their timer mostly within the same timer-wheel bucket, where no timer
/// tracepoint fires. `trace --json` shows every one as TIME_WAIT within
/// 3 s of the servers' close.
#[test]
fn client_closes_first_connections_are_all_shown_as_time_wait_within_3_s() {
    const N: usize = 20;
    let (listener, port) = free_listener();
    let p = port.to_string();
    let trace = Streaming::start(&["trace", "--json", "--port", &p]);
    Streaming::wait_line(
        &trace.err,
        &mut Vec::new(),
        "the banner",
        Duration::from_secs(30),
        |l| l.contains("tracing TCP state changes"),
    );
    let (servers, ports) = common::orphans(&listener, port, N);
    let ours = |v: &serde_json::Value| {
        v["sport"]
            .as_u64()
            .is_some_and(|p| ports.contains(&(p as u16)))
    };
    // Every client reached FIN_WAIT2, in the stream and in the kernel
    // (nearly all as timewait sockets: `tw_begin` with `new` FIN_WAIT2; an
    // orphan whose ACK came while close() held its lock stays a full socket,
    // whose later move to TIME_WAIT is a `tw_begin` in TIME_WAIT).
    let mut seen = Vec::new();
    let mut in_fin_wait2 = std::collections::HashSet::new();
    let all_there = read_until(
        &trace.out,
        &mut seen,
        Instant::now() + Duration::from_secs(30),
        |v| {
            if ours(v) && v["kind"] == "transition" && v["new"] == "FIN_WAIT2" {
                in_fin_wait2.insert(v["sport"].as_u64());
            }
            in_fin_wait2.len() == N
        },
    );
    assert!(
        all_there,
        "{} of {N} clients in FIN_WAIT2: {seen:#?}",
        in_fin_wait2.len()
    );
    common::wait_for("the orphans in FIN_WAIT2", Duration::from_secs(30), || {
        common::ss_count("fin-wait-2", port, None) == N
    });

    let closed = Instant::now();
    drop(servers);
    let mut shown = std::collections::HashSet::new();
    read_until(
        &trace.out,
        &mut seen,
        closed + Duration::from_secs(3),
        |v| {
            if ours(v) && shows_time_wait(v) {
                shown.insert(v["sport"].as_u64());
            }
            shown.len() == N
        },
    );
    let took = closed.elapsed();
    assert_eq!(
        shown.len(),
        N,
        "{} of {N} shown as TIME_WAIT within 3 s; stream: {seen:#?}",
        shown.len()
    );
    let found: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|v| ours(v) && v["kind"] == "tw_substate")
        .collect();
    let count = |kind: &str, new: &str| {
        seen.iter()
            .filter(|v| ours(v) && v["kind"] == kind && v["new"] == new)
            .count()
    };
    eprintln!(
        "all {N} shown as TIME_WAIT after {} ms: {} found by the check, {} by a re-arm tracepoint, {} began in TIME_WAIT ({} orphans began as timewait sockets in FIN_WAIT2)",
        took.as_millis(),
        found.len(),
        count("tw_rearm", "TIME_WAIT"),
        count("tw_begin", "TIME_WAIT"),
        count("tw_begin", "FIN_WAIT2"),
    );
    let me = std::process::id();
    for v in found {
        assert_eq!(v["old"], "FIN_WAIT2", "{v}");
        assert_eq!(v["found_by"], "reconciliation", "{v}");
        assert_eq!(v["pid"], me, "the orphan keeps its owner: {v}");
        assert!(v["netns"].is_u64(), "{v}");
        let (ts, after) = (
            v["ts_ns"].as_u64().unwrap(),
            v["changed_after_ns"].as_u64().unwrap(),
        );
        assert_eq!(ts - after, v["prev_state_ns"].as_u64().unwrap(), "{v}");
        assert!(after <= ts, "{v}");
    }
    trace.signal(libc::SIGINT);
    let (status, _, _) = trace.wait(Duration::from_secs(30));
    assert!(status.success());
}

/// `--state TIME_WAIT` still shows orphans becoming TIME_WAIT (their begin
/// is FIN_WAIT2 -> FIN_WAIT2: the kernel's filter lets it through so the
/// live check can follow them), and nothing the user did not ask for.
#[test]
fn state_time_wait_follows_orphans_and_prints_only_time_wait() {
    const N: usize = 10;
    let (listener, port) = free_listener();
    let p = port.to_string();
    let trace = Streaming::start(&["trace", "--json", "--port", &p, "--state", "TIME_WAIT"]);
    Streaming::wait_line(
        &trace.err,
        &mut Vec::new(),
        "the banner",
        Duration::from_secs(30),
        |l| l.contains("tracing TCP state changes"),
    );
    let (servers, ports) = common::orphans(&listener, port, N);
    common::wait_for("the orphans in FIN_WAIT2", Duration::from_secs(30), || {
        common::ss_count("fin-wait-2", port, None) == N
    });
    let ours = |v: &serde_json::Value| {
        v["sport"]
            .as_u64()
            .is_some_and(|p| ports.contains(&(p as u16)))
    };
    drop(servers);
    let mut seen = Vec::new();
    let mut shown = std::collections::HashSet::new();
    read_until(
        &trace.out,
        &mut seen,
        Instant::now() + Duration::from_secs(5),
        |v| {
            if ours(v) && shows_time_wait(v) {
                shown.insert(v["sport"].as_u64());
            }
            shown.len() == N
        },
    );
    assert_eq!(shown.len(), N, "{seen:#?}");
    assert!(
        seen.iter()
            .all(|v| v["old"] == "TIME_WAIT" || v["new"] == "TIME_WAIT"),
        "only what was asked for: {seen:#?}"
    );
    trace.signal(libc::SIGINT);
    let (status, _, _) = trace.wait(Duration::from_secs(30));
    assert!(status.success());
}
