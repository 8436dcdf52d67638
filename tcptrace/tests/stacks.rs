//! `--stacks` end to end: real services (`tests/stacks/stackleak.c`, and
//! its Go twin) leak connections from one code path and close them on
//! another; `stats`, `top`, `doctor` and a recording must name exactly the
//! leaking function for exactly the leaked sockets, the healthy path
//! never. Root; fails (never skips) when the program cannot load. Every wait
//! is bounded; every process is stopped by its pid.

mod common;

use std::time::Duration;

use common::{
    Running, Streaming, ss_count,
    stacks::{Service, build_earlyaccept, build_goleak, build_stackleak, closing_listener},
    tmux::Tmux,
    wait_for,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const LEAKED: u64 = 25;
const CLOSED: u64 = 5;

/// The function names of a row's frames, innermost first.
fn functions(row: &Value) -> Vec<String> {
    row["frames"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|f| f["function"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The `close_wait_by_stack` rows of `pid` in a `stats --json` line.
fn rows_of(snap: &Value, pid: u32) -> Vec<Value> {
    snap["close_wait_by_stack"]
        .as_array()
        .map(|rows| rows.iter().filter(|r| r["pid"] == pid).cloned().collect())
        .unwrap_or_default()
}

/// Whether a `stats --json` line shows `pid`'s leak fully named: the row
/// headed by `top` holds every leaked socket, the process holds no other.
fn leak_named(line: &str, pid: u32, top: &str) -> bool {
    let Ok(snap) = serde_json::from_str::<Value>(line) else {
        return false;
    };
    let rows = rows_of(&snap, pid);
    let named = rows
        .iter()
        .any(|r| r["top_frame"] == top && r["count"] == LEAKED && r["process_count"] == LEAKED);
    let process = snap["close_wait_by_process"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["pid"] == pid && p["count"] == LEAKED);
    named && process
}

/// `stats --stacks --json` while `bin` leaks: the JSON line that names it.
fn stats_names_the_leak(bin: &std::path::Path, comm: &str, top: &str) -> (u32, Value) {
    let running = Streaming::start(&[
        "stats",
        "--stacks",
        "--json",
        "--interval",
        "0.5",
        "--comm",
        comm,
    ]);
    let mut seen = Vec::new();
    Streaming::wait_line(&running.out, &mut seen, "the first summary", WAIT, |l| {
        l.starts_with('{')
    });
    let (port, listener) = closing_listener((LEAKED + CLOSED) as usize);
    let service = Service::start(bin, port, LEAKED as usize, CLOSED as usize);
    let pid = service.pid;
    let line = Streaming::wait_line(
        &running.out,
        &mut seen,
        &format!("{top} named for the {LEAKED} leaked sockets of pid {pid}"),
        WAIT,
        |l| leak_named(l, pid, top),
    );
    assert_eq!(listener.join().unwrap(), (LEAKED + CLOSED) as usize);
    drop(service);
    (pid, serde_json::from_str(&line).unwrap())
}

#[test]
fn stats_stacks_json_attributes_exactly_the_leaked_sockets() {
    let bin = build_stackleak();
    let (pid, snap) = stats_names_the_leak(&bin, "stackleak", "checkout_reserve_items");
    let rows = rows_of(&snap, pid);
    let row = rows
        .iter()
        .find(|r| r["top_frame"] == "checkout_reserve_items")
        .unwrap();
    let quality = row["stack_quality"].as_str().unwrap();
    assert!(matches!(quality, "complete" | "cut"), "{row}");
    let names = functions(row);
    for f in ["checkout_reserve_items", "handle_order", "main"] {
        assert!(names.iter().any(|n| n == f), "{f} in {names:?}");
    }
    assert!(
        row["code_path"]
            .as_str()
            .unwrap()
            .starts_with("checkout_reserve_items ← handle_order ← main"),
        "{row}"
    );
    // Built with -g: file:line from DWARF.
    assert!(
        row["frames"].as_array().unwrap().iter().any(|f| f["file"]
            .as_str()
            .is_some_and(|p| p.ends_with("stackleak.c"))
            && f["line"].as_u64().is_some()),
        "{row}"
    );
    assert!(row["stack_id"].as_u64().is_some(), "{row}");
    // The healthy path's sockets closed: no row of this process names it.
    for r in &rows {
        assert!(
            !functions(r).iter().any(|n| n == "refresh_inventory_cache"),
            "{r}"
        );
    }
    let stacks = &snap["stacks"];
    assert!(stacks["requested"].as_u64().unwrap() >= 1, "{stacks}");
    assert!(stacks["named"].as_u64().unwrap() >= 1, "{stacks}");
    assert!(stacks["max_depth"].as_u64().unwrap() >= 3, "{stacks}");
    // (kernel_misses is not asserted: other processes on this host connect
    // too, and --comm filters after the capture only where it can.)
}

#[test]
fn go_service_is_named_too() {
    let bin = build_goleak();
    let (pid, snap) = stats_names_the_leak(&bin, "goleak", "main.checkoutReserveItems");
    let rows = rows_of(&snap, pid);
    let row = rows
        .iter()
        .find(|r| r["top_frame"] == "main.checkoutReserveItems")
        .unwrap();
    let names = functions(row);
    assert!(names.iter().any(|n| n == "main.handleOrder"), "{names:?}");
    assert!(names.iter().any(|n| n == "main.main"), "{names:?}");
    for r in &rows {
        assert!(
            !functions(r)
                .iter()
                .any(|n| n == "main.refreshInventoryCache"),
            "{r}"
        );
    }
}

/// Sockets whose peers closed before `accept()` returned (health checks, a
/// full backlog) are accepted already in CLOSE_WAIT, with no transition
/// left to carry the acceptor's stack: they still name the accepting code,
/// never the `listen()` path, whether the listening thread accepts them or
/// a forked child does (a pre-fork server).
#[test]
fn sockets_closed_before_accept_name_the_acceptor() {
    use std::io::{BufRead, Write};
    const N: u64 = 6;
    let bin = build_earlyaccept();
    for mode in ["same", "fork"] {
        let running = Streaming::start(&[
            "stats",
            "--stacks",
            "--json",
            "--interval",
            "0.5",
            "--comm",
            "earlyaccept",
        ]);
        let mut seen = Vec::new();
        Streaming::wait_line(&running.out, &mut seen, "the first summary", WAIT, |l| {
            l.starts_with('{')
        });
        let mut server = std::process::Command::new(&bin)
            .args([mode, &N.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run earlyaccept");
        let mut stdin = server.stdin.take().unwrap();
        let stdout = server.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let next = |what: &str| {
            lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("earlyaccept {mode}: no `{what}` line"))
        };
        let ready = next("ready");
        let fields: Vec<&str> = ready.split_whitespace().collect();
        let (pid, port): (u32, u16) = match fields[..] {
            ["ready", pid, port] => (pid.parse().unwrap(), port.parse().unwrap()),
            _ => panic!("unexpected {ready:?}"),
        };
        let acceptor: u32 = if mode == "fork" {
            next("acceptor")
                .strip_prefix("acceptor ")
                .and_then(|p| p.parse().ok())
                .expect("the acceptor's pid")
        } else {
            pid
        };
        // The peers connect and close before the server accepts anything.
        let clients: Vec<std::net::TcpStream> = (0..N)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        drop(clients);
        wait_for("the sockets in CLOSE_WAIT before accept()", WAIT, || {
            ss_count("close-wait", port, None) == N as usize
        });
        writeln!(stdin, "go").unwrap();
        assert_eq!(next("accepted"), "accepted");
        let line = Streaming::wait_line(
            &running.out,
            &mut seen,
            &format!("serve_health_checks named for {N} sockets of pid {acceptor} ({mode})"),
            WAIT,
            |l| {
                serde_json::from_str::<Value>(l).is_ok_and(|snap| {
                    rows_of(&snap, acceptor)
                        .iter()
                        .any(|r| r["top_frame"] == "serve_health_checks" && r["count"] == N)
                })
            },
        );
        let snap: Value = serde_json::from_str(&line).unwrap();
        for r in rows_of(&snap, acceptor) {
            assert!(
                !functions(&r).iter().any(|f| f == "start_server_socket"),
                "{mode}: the listen() path named for accepted sockets: {r}"
            );
        }
        drop(stdin);
        for p in [acceptor, pid] {
            // SAFETY: signalling processes this test started, by pid.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = server.wait();
        running.signal(libc::SIGINT);
        let (status, _, err) = running.wait(WAIT);
        assert!(status.success(), "{status}: {err:?}");
    }
}

#[test]
fn top_shows_the_leaking_code_path() {
    let service_bin = build_stackleak();
    let bin = env!("CARGO_BIN_EXE_tcptrace");
    let cmd = format!("sh -c '{bin} top --stacks --comm stackleak --interval 0.5; sleep 600'");
    let tmux = Tmux::start("stacks", 120, 32, &cmd);
    tmux.wait_for("the first refresh", |s| {
        s.contains(" up ") && s.contains("CLOSE_WAIT")
    });
    let (port, listener) = closing_listener((LEAKED + CLOSED) as usize);
    let service = Service::start(&service_bin, port, LEAKED as usize, CLOSED as usize);
    let pid = service.pid.to_string();
    // Other tests of this file run their own stackleak beside this one:
    // narrowed to this one with top's filter.
    tmux.keys(&["2", "/"]);
    tmux.tmux(&["send-keys", "-l", &format!("pid:{pid}")]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the leaking process", |s| {
        s.lines()
            .any(|l| l.starts_with(&pid) && l.contains("stackleak") && l.contains(" 25 "))
    });
    tmux.keys(&["Enter"]);
    let paths = tmux.wait_for("the leaking code path", |s| {
        s.contains(&format!("Code paths of {pid} stackleak"))
            && s.contains("checkout_reserve_items ← handle_order ← main")
    });
    assert!(!paths.contains("refresh_inventory_cache"), "{paths}");
    assert!(paths.contains("25 of 25 with a stack"), "{paths}");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the full stack", |s| {
        s.contains(&format!("Stack of {pid} stackleak"))
            && s.contains("handle_order")
            && s.contains("stackleak.c:")
    });
    tmux.keys(&["Escape"]);
    tmux.wait_for("back to the code paths", |s| s.contains("Code paths of"));
    tmux.keys(&["Escape", "q"]);
    assert_eq!(listener.join().unwrap(), (LEAKED + CLOSED) as usize);
    drop(service);
}

#[test]
fn doctor_stacks_names_the_leaking_function() {
    let mut doctor = Running::start(
        &["doctor", "--stacks", "--duration", "6", "--json"],
        "tcptrace doctor: observing",
    );
    let (port, listener) = closing_listener((LEAKED + CLOSED) as usize);
    let service = Service::start(&build_stackleak(), port, LEAKED as usize, CLOSED as usize);
    let pid = service.pid;
    let status = doctor.child.wait().unwrap();
    let (out, err) = doctor.finish();
    drop(service);
    assert_eq!(listener.join().unwrap(), (LEAKED + CLOSED) as usize);
    let findings: Vec<Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert!(status.code().is_some(), "{status:?}");
    let f = findings
        .iter()
        .find(|f| {
            f["id"] == "close_wait_leak"
                && f["title"]
                    .as_str()
                    .is_some_and(|t| t.contains(&format!("(pid {pid})")))
        })
        .unwrap_or_else(|| panic!("no close_wait_leak for pid {pid}: {out}\n{err}"));
    let evidence: Vec<&str> = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        evidence.iter().any(|e| e
            .starts_with("opened at checkout_reserve_items ← handle_order ← main")
            && e.ends_with(&format!(": {LEAKED} of {LEAKED}"))),
        "{f}"
    );
}

#[test]
fn recording_keeps_the_names() {
    let dir = std::env::temp_dir().join(format!("tcptrace-stacks-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("leak.tcptrace");
    let file_arg = file.to_str().unwrap().to_string();
    let mut recorder = Running::start(
        &[
            "record",
            "--stacks",
            "--comm",
            "stackleak",
            "-o",
            &file_arg,
            "--force",
            "--duration",
            "5",
        ],
        "recording to",
    );
    let (port, listener) = closing_listener((LEAKED + CLOSED) as usize);
    let mut service = Service::start(&build_stackleak(), port, LEAKED as usize, CLOSED as usize);
    let pid = service.pid;
    let status = recorder.child.wait().unwrap();
    assert!(status.success(), "record: {:?}", recorder.finish());
    // The process is gone: only the recording can still name its code.
    service.stop();
    assert_eq!(listener.join().unwrap(), (LEAKED + CLOSED) as usize);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["report", "--stacks", "--json", &file_arg])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let rows = rows_of(&report, pid);
    assert!(
        rows.iter()
            .any(|r| r["top_frame"] == "checkout_reserve_items" && r["count"] == LEAKED),
        "{rows:#?}"
    );
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["report", "--stacks", &file_arg])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("checkout_reserve_items"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
