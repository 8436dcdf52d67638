//! Hostile and careless input against the real binary, as root: each test
//! is named after what it proves. HTTP clients that lie, idle, pipeline or
//! never read; process names made of terminal escapes set by a real
//! unprivileged user; `--exec` hooks that linger; numbers that overflow;
//! output paths that are links, directories or existing files; SIGHUP and
//! file-size limits; rules files others can write; corrupt recordings.

mod common;

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    NetNs, Running, Streaming, free_listener, free_port, http_get, leak_close_wait, metric_value,
    processes_with, raw_exchange, scrape_from, wait_for,
};
use serde_json::Value;

const TCPTRACE: &str = env!("CARGO_BIN_EXE_tcptrace");

/// A fresh temp path for this test (anything left there removed).
fn temp(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tcptrace-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir_all(&path);
    path
}

/// `stats` with `--metrics` on a free port; its port.
fn stats_with_metrics(extra: &[&str]) -> (Running, u16) {
    let metrics_port = free_port(false);
    let addr = format!("127.0.0.1:{metrics_port}");
    let mut args = vec![
        "stats",
        "--interval",
        "3600",
        "--reconcile",
        "0",
        "--metrics",
        &addr,
    ];
    args.extend_from_slice(extra);
    (Running::start(&args, "stats every"), metrics_port)
}

/// A scrape that must succeed quickly, however the other clients behave.
fn scrape_within(port: u16, limit: Duration) -> String {
    let started = Instant::now();
    let (status, _, body) = http_get(port, "/metrics");
    assert!(status.contains("200"), "scrape answered {status}");
    assert!(
        started.elapsed() < limit,
        "a scrape took {:?}",
        started.elapsed()
    );
    body
}

fn still_running(r: &mut Running) {
    assert!(
        r.child.try_wait().unwrap().is_none(),
        "the tracer died: {:?}",
        r.child.try_wait()
    );
}

#[test]
fn a_huge_content_length_is_refused_and_the_tracer_keeps_serving() {
    for (cmd, banner) in [("stats", "stats every"), ("watch", "watching every")] {
        let metrics_port = free_port(false);
        let addr = format!("127.0.0.1:{metrics_port}");
        let mut running = Running::start(
            &[
                cmd,
                "--interval",
                "3600",
                "--reconcile",
                "0",
                "--metrics",
                &addr,
            ],
            banner,
        );
        for path in ["/metrics", "/nope"] {
            let reply = raw_exchange(
                metrics_port,
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
                    .as_bytes(),
                Duration::from_secs(10),
            );
            assert!(reply.starts_with("HTTP/1.1 413"), "{cmd} {path}: {reply}");
            let chunked = raw_exchange(
                metrics_port,
                format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n")
                    .as_bytes(),
                Duration::from_secs(10),
            );
            assert!(
                chunked.starts_with("HTTP/1.1 413"),
                "{cmd} {path}: {chunked}"
            );
        }
        still_running(&mut running);
        let body = scrape_within(metrics_port, Duration::from_secs(5));
        assert!(body.contains("tcptrace_events_total"), "{cmd}: {body}");
        let (status, _, err) = running.stop();
        assert!(status.success(), "{cmd}: {status} {err}");
    }
}

#[test]
fn oversized_or_endless_headers_are_cut_off_and_scrapes_go_on() {
    let (mut running, port) = stats_with_metrics(&[]);
    // 20 KiB of one header: over the 16 KiB limit.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let reply = raw_exchange(port, big.as_bytes(), Duration::from_secs(10));
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );
    // 200 headers: over the 64-header limit.
    let mut many = String::from("GET /metrics HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    let reply = raw_exchange(port, many.as_bytes(), Duration::from_secs(10));
    assert!(!reply.starts_with("HTTP/1.1 200"), "{reply}");
    // A request line, then silence: closed by the header timeout.
    let started = Instant::now();
    let reply = raw_exchange(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(20),
    );
    assert!(!reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a half-sent request held the connection {:?}",
        started.elapsed()
    );
    still_running(&mut running);
    scrape_within(port, Duration::from_secs(5));
    let (status, _, _) = running.stop();
    assert!(status.success());
}

/// Raises this process's open-file limit to `n` (for many client sockets).
fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = n.min(lim.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The address well-behaved clients scrape from, while the hostile ones
/// use 127.0.0.1.
const GOOD_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

/// `n` scrapes from [`GOOD_CLIENT`], each answered 200 within `limit`.
fn good_scrapes(port: u16, n: usize, limit: Duration) {
    for i in 0..n {
        let started = Instant::now();
        let (status, body) = scrape_from(GOOD_CLIENT, port)
            .unwrap_or_else(|e| panic!("scrape {i} from another address failed: {e}"));
        assert!(status.contains("200"), "scrape {i}: {status}");
        assert!(body.contains("tcptrace_events_total"));
        assert!(
            started.elapsed() < limit,
            "scrape {i} took {:?}",
            started.elapsed()
        );
    }
}

/// The soft open-file limit of `pid`.
fn nofile_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn idle_connections_never_lock_out_scrapes_or_exhaust_descriptors() {
    // The tracer at the default limit of 1,024 descriptors.
    let metrics_port = free_port(false);
    let addr = format!("127.0.0.1:{metrics_port}");
    let spawned = Streaming::start_program(
        "prlimit",
        &[
            "--nofile=1024:1024",
            TCPTRACE,
            "stats",
            "--interval",
            "3600",
            "--reconcile",
            "0",
            "--metrics",
            &addr,
        ],
    );
    Streaming::wait_line(
        &spawned.err,
        &mut Vec::new(),
        "banner",
        Duration::from_secs(30),
        |l| l.contains("stats every"),
    );
    // prlimit execs tcptrace: same pid.
    let pid = spawned.child.id();
    assert_eq!(nofile_limit(pid), 1024);
    let fds_before = open_fds(pid);
    // 1,100 idle connections from one address: more than the tracer's own
    // 1,024 descriptors (this process may open more).
    raise_nofile(4096);
    let idle: Vec<TcpStream> = (0..1100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", metrics_port)).ok())
        .collect();
    assert!(idle.len() > 1000, "only {} connected", idle.len());
    // Another client's scrapes get through at once, every time.
    good_scrapes(metrics_port, 5, Duration::from_secs(3));
    let fds = open_fds(pid);
    assert!(
        fds <= fds_before + tcptrace::http::MAX_CONNECTIONS + 8,
        "{fds} descriptors open (was {fds_before})"
    );
    // And once the idle ones are old, the same address gets in too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get_ok(metrics_port) {
        assert!(
            Instant::now() < deadline,
            "the idle address never got in again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(idle);
    spawned.signal(libc::SIGTERM);
    let (status, _, err) = spawned.wait(Duration::from_secs(10));
    assert!(status.success(), "{err:?}");
}

/// Whether a scrape from 127.0.0.1 is answered 200.
fn http_get_ok(port: u16) -> bool {
    scrape_from(std::net::Ipv4Addr::LOCALHOST, port).is_ok_and(|(status, _)| status.contains("200"))
}

#[test]
fn a_connection_flood_from_one_address_does_not_lock_out_others() {
    let (mut running, port) = stats_with_metrics(&[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four threads: connect and close as fast as possible, or connect and
    // hold a while, from 127.0.0.1.
    let flooders: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                        if i % 2 == 0 {
                            drop(s);
                        } else {
                            held.push(s);
                            if held.len() > 200 {
                                held.clear();
                            }
                        }
                    }
                }
            })
        })
        .collect();
    good_scrapes(port, 50, Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    still_running(&mut running);
    let (status, _, _) = running.stop();
    assert!(status.success());
}

#[test]
fn a_client_that_pipelines_and_never_reads_does_not_block_other_scrapes() {
    let (mut running, port) = stats_with_metrics(&[]);
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let one = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    slow.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Its socket buffers fill up; it never reads a byte.
    let _ = slow.write_all(one.repeat(200).as_bytes());
    for _ in 0..10 {
        scrape_within(port, Duration::from_secs(2));
    }
    good_scrapes(port, 10, Duration::from_secs(2));
    still_running(&mut running);
    drop(slow);
    let (status, _, _) = running.stop();
    assert!(status.success());
}

#[test]
fn metrics_allow_keeps_other_clients_out_and_a_public_address_is_warned_about() {
    // Loopback is not in 10.0.0.0/8: connections are closed unanswered.
    let (mut running, port) = stats_with_metrics(&["--metrics-allow", "10.0.0.0/8"]);
    let reply = raw_exchange(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(reply, "", "a client outside the allow list was answered");
    still_running(&mut running);
    running.stop();
    let (running, port) = stats_with_metrics(&["--metrics-allow", "127.0.0.0/8"]);
    scrape_within(port, Duration::from_secs(5));
    running.stop();
    // Bound beyond loopback without an allow list: one warning line first.
    let metrics_port = free_port(false);
    let addr = format!("0.0.0.0:{metrics_port}");
    let spawned = Streaming::start(&["stats", "--interval", "3600", "--metrics", &addr]);
    let mut seen = Vec::new();
    Streaming::wait_line(
        &spawned.err,
        &mut seen,
        "the banner",
        Duration::from_secs(30),
        |l| l.contains("stats every"),
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("warning") && l.contains("--metrics-allow")),
        "{seen:?}"
    );
    scrape_within(metrics_port, Duration::from_secs(5));
    spawned.signal(libc::SIGTERM);
    let (status, _, _) = spawned.wait(Duration::from_secs(10));
    assert!(status.success());
    // A malformed network is a usage error.
    let out = Command::new(TCPTRACE)
        .args([
            "stats",
            "--metrics",
            "127.0.0.1:1",
            "--metrics-allow",
            "10.0.0.0/99",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

// ------------------------------------------------------------ escapes

/// The process name an unprivileged user gives their process.
const HOSTILE_NAME: &str = "\x1b]0;PWN\x07\x1b[2J\x1b[31m";
/// The same name as the kernel keeps it (15 bytes), escaped.
const HOSTILE_SHOWN: &str = "\\x1b]0;PWN\\x07\\x1b[2J\\x1b[3";

/// A real unprivileged user for the test (created once, kept).
fn unprivileged_user() -> &'static str {
    const USER: &str = "tcptrace-hostile";
    let exists = Command::new("id")
        .arg(USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status()
            .expect("useradd runs (passwd package)");
        // 9: created meanwhile by a test running in parallel.
        assert!(
            status.success() || status.code() == Some(9),
            "useradd: {status}"
        );
    }
    USER
}

/// A name that forges a line: what follows the newline would start a line.
const FORGING_NAME: &str = "ok\nFORGED LINE";

/// As the unprivileged user, a perl that renamed itself `name` (one
/// write(2) to /proc/self/comm, as prctl(PR_SET_NAME) would) opens `n`
/// connections to `port` and holds them; stdin closed ends it.
fn hostile_client(port: u16, n: usize, name: &str) -> std::process::Child {
    let user = unprivileged_user();
    let script = r#"
        use IO::Socket::INET;
        my ($name, $port, $n) = @ARGV;
        open(my $c, '>', "/proc/self/comm") or die "comm: $!";
        syswrite($c, $name) or die "rename: $!";
        close($c);
        my @held;
        for (1 .. $n) {
            push @held, IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => $port, Proto => "tcp")
                or die "connect: $!";
        }
        $| = 1;
        print "ready\n";
        my $wait = <STDIN>;
    "#;
    let mut child = Command::new("setpriv")
        .args([
            "--reuid",
            user,
            "--regid",
            user,
            "--clear-groups",
            "perl",
            "-e",
            script,
        ])
        .arg(name)
        .arg(port.to_string())
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv and perl run");
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .expect("the hostile client connected");
    child
}

fn assert_no_raw_control(text: &str, what: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{what} printed a raw control character: {text:?}"
    );
}

#[test]
fn a_hostile_process_name_reaches_no_terminal_raw() {
    let (listener, port) = free_listener();
    let p = port.to_string();
    let trace = Running::start(&["trace", "--port", &p], "tracing TCP state changes");
    let trace_json = Running::start(
        &["trace", "--json", "--port", &p],
        "tracing TCP state changes",
    );
    let stats = Streaming::start(&[
        "stats",
        "--interval",
        "0.5",
        "--reconcile",
        "0",
        "--port",
        &p,
    ]);
    let watch = Streaming::start(&[
        "watch",
        "--interval",
        "0.5",
        "--reconcile",
        "0",
        "--port",
        &p,
        "--close-wait",
        "2",
        "--close-wait-host",
        "0",
        "--lost",
        "0",
    ]);
    let mut seen_err = Vec::new();
    Streaming::wait_line(
        &watch.err,
        &mut seen_err,
        "watch's banner",
        Duration::from_secs(30),
        |l| l.contains("watching every"),
    );
    Streaming::wait_line(
        &stats.err,
        &mut Vec::new(),
        "stats' banner",
        Duration::from_secs(30),
        |l| l.contains("stats every"),
    );
    let mut client = hostile_client(port, 3, HOSTILE_NAME);
    let mut forger = hostile_client(port, 3, FORGING_NAME);
    // The server closes its ends: the clients' sockets sit in CLOSE_WAIT.
    let accepted: Vec<TcpStream> = (0..6).map(|_| listener.accept().unwrap().0).collect();
    for s in &accepted {
        s.shutdown(Shutdown::Both).unwrap();
    }
    let alert = Streaming::wait_line(
        &watch.err,
        &mut seen_err,
        "the CLOSE_WAIT alert",
        Duration::from_secs(30),
        |l| l.contains("ALERT close_wait_count"),
    );
    assert!(alert.contains(HOSTILE_SHOWN), "{alert}");
    let mut stats_out = Vec::new();
    Streaming::wait_line(
        &stats.out,
        &mut stats_out,
        "the holder in stats",
        Duration::from_secs(30),
        |l| l.contains(HOSTILE_SHOWN),
    );
    Streaming::wait_line(
        &stats.out,
        &mut stats_out,
        "the forger in stats",
        Duration::from_secs(30),
        |l| l.contains("ok\\x0aFORGED"),
    );
    for c in [&mut client, &mut forger] {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    let (_, trace_out, _) = trace.stop();
    let (_, json_out, _) = trace_json.stop();
    watch.signal(libc::SIGTERM);
    stats.signal(libc::SIGTERM);
    let (_, _, watch_rest) = watch.wait(Duration::from_secs(10));
    let (_, stats_rest, _) = stats.wait(Duration::from_secs(10));
    assert!(trace_out.contains(HOSTILE_SHOWN), "{trace_out}");
    assert!(trace_out.contains("ok\\x0aFORGED"), "{trace_out}");
    assert_no_raw_control(&trace_out, "trace");
    for (what, text) in [
        ("trace", trace_out.clone()),
        ("stats", stats_out.join("\n")),
        ("watch", seen_err.join("\n")),
    ] {
        assert!(
            !text.lines().any(|l| l.starts_with("FORGED")),
            "{what} let a name forge a line: {text}"
        );
    }
    assert_no_raw_control(&json_out, "trace --json");
    assert!(json_out.contains("\\u001b]0;PWN"), "{json_out}");
    assert_no_raw_control(&stats_out.join("\n"), "stats");
    assert_no_raw_control(&stats_rest.join("\n"), "stats");
    assert_no_raw_control(&seen_err.join("\n"), "watch");
    assert_no_raw_control(&watch_rest.join("\n"), "watch");

    // A recording whose host field is hostile: report and replay text.
    let file = temp("hostile-host.tcptrace");
    let header = tcptrace_core::record::Header {
        host: format!("db01{HOSTILE_NAME}"),
        kernel: "6.18".into(),
        port_range: (32768, 60999),
        ..Default::default()
    };
    let mut w =
        tcptrace_core::record::Writer::new(std::fs::File::create(&file).unwrap(), &header).unwrap();
    w.flush().unwrap();
    drop(w);
    for args in [vec!["report"], vec!["report", "--csv"], vec!["replay"]] {
        let out = Command::new(TCPTRACE)
            .args(&args)
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_no_raw_control(&text, "report");
        if args == ["report"] {
            assert!(text.contains("db01\\x1b]0;PWN"), "{text}");
        }
    }
    let _ = std::fs::remove_file(&file);
}

// ------------------------------------------------------------ --exec

/// `watch` alerting on a 3-socket leak on `port` with `--exec hook`.
fn watch_with_hook(port: u16, hook: &str, extra: &[&str]) -> Streaming {
    let p = port.to_string();
    let mut args = vec![
        "watch",
        "--interval",
        "0.3",
        "--reconcile",
        "0",
        "--port",
        &p,
        "--close-wait",
        "2",
        "--close-wait-host",
        "0",
        "--lost",
        "0",
        "--exec",
        hook,
    ];
    args.extend_from_slice(extra);
    Streaming::start(&args)
}

/// `watch` whose hook is `sleep SECS; echo after` (SECS unique to this
/// port), alerting on a 3-socket leak it makes; returns once the hook's
/// sleep runs: watch, the stderr lines so far, the sleep's argv, the held
/// sockets.
fn watch_with_a_running_hook(
    tag: u32,
    extra: &[&str],
) -> (Streaming, Vec<String>, String, Vec<TcpStream>) {
    let (listener, port) = free_listener();
    let secs = format!("{tag}.{port}");
    let watch = watch_with_hook(port, &format!("sleep {secs}; echo after"), extra);
    let mut err = Vec::new();
    Streaming::wait_line(
        &watch.err,
        &mut err,
        "banner",
        Duration::from_secs(30),
        |l| l.contains("watching every"),
    );
    let mut held = Vec::new();
    leak_close_wait(&listener, port, 3, &mut held);
    wait_for("the hook's sleep", Duration::from_secs(20), || {
        !processes_with(&["sleep", &secs]).is_empty()
    });
    (watch, err, secs, held)
}

#[test]
fn an_exec_hook_that_times_out_is_killed_with_everything_it_started() {
    let (watch, mut err, secs, _held) = watch_with_a_running_hook(1001, &[]);
    Streaming::wait_line(
        &watch.err,
        &mut err,
        "the kill",
        Duration::from_secs(30),
        |l| l.contains("killed after 10s"),
    );
    wait_for("the sleep to be gone", Duration::from_secs(5), || {
        processes_with(&["sleep", &secs]).is_empty()
    });
    watch.signal(libc::SIGTERM);
    let (status, _, _) = watch.wait(Duration::from_secs(10));
    assert!(status.success());
}

#[test]
fn stopping_watch_kills_running_exec_hooks() {
    for how in ["SIGTERM", "--duration"] {
        let extra: &[&str] = if how == "--duration" {
            &["--duration", "4"]
        } else {
            &[]
        };
        let (watch, _, secs, _held) = watch_with_a_running_hook(1002, extra);
        if how == "SIGTERM" {
            watch.signal(libc::SIGTERM);
        }
        let (status, _, _) = watch.wait(Duration::from_secs(15));
        assert!(status.success(), "{how}: {status}");
        wait_for(
            &format!("the hook gone after {how}"),
            Duration::from_secs(5),
            || processes_with(&["sleep", &secs]).is_empty(),
        );
    }
}

// ------------------------------------------------------------ numbers

#[test]
fn huge_tiny_and_odd_numbers_are_one_line_and_exit_2() {
    let f = temp("numbers.tcptrace");
    let file = f.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["trace", "--duration", "99999999999999999999"],
        vec!["trace", "--duration", "1e19"],
        vec!["stats", "--duration", "1e19"],
        vec!["stats", "--interval", "1e20"],
        vec!["stats", "--interval", "1e-9"],
        vec!["stats", "--interval", "NaN"],
        vec!["stats", "--reconcile", "1e20"],
        vec!["watch", "--interval", "inf"],
        vec!["watch", "--repeat", "99999999999999"],
        vec!["doctor", "--duration", "1e300"],
        vec!["record", "-o", file, "--rotate-time", "1e20"],
        vec!["record", "-o", file, "--snapshot-every", "1e20"],
        vec![
            "record",
            "-o",
            file,
            "--keep",
            "99999999999",
            "--rotate-time",
            "5",
        ],
        vec!["top", "--from", file, "--step", "1e300"],
        vec!["top", "--from", file, "--speed", "1e-300"],
        vec!["replay", file, "--speed", "1e-300"],
        vec!["stats", "--max-conns", "99999999999"],
        vec!["trace", "--owner-map-size", "4294967295"],
        vec!["stats", "--stacks", "--stack-map-size", "100"],
        vec!["top", "--stacks", "--stack-map-size", "65536"],
    ];
    for args in cases {
        let out = Command::new(TCPTRACE).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("out of range"), "{args:?}: {err}");
    }
}

// ------------------------------------------------------------ record -o

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `record -o path` with `extra` (one second unless it says otherwise):
/// (exit code, stderr).
fn record_once(path: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let duration: &[&str] = if extra.contains(&"--duration") {
        &[]
    } else {
        &["--duration", "1"]
    };
    let out = Command::new(TCPTRACE)
        .args(["record", "--quiet", "-o"])
        .arg(path)
        .args(extra)
        .args(duration)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn record_never_follows_a_link_nor_overwrites_without_force_and_writes_0600() {
    let dir = temp("record-o");
    std::fs::create_dir_all(&dir).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let link = dir.join("trap.tcptrace");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    for extra in [&[][..], &["--force"][..]] {
        let (code, err) = record_once(&link, extra);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("symbolic link"), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    // An existing file: refused, then replaced with --force.
    let (code, err) = record_once(&victim, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let (code, err) = record_once(&victim, &["--force"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(std::fs::read(&victim).unwrap().starts_with(b"TCPTRACE"));
    assert_eq!(mode(&victim), 0o600);
    // A new file is 0600; a directory or a missing directory is exit 2.
    let fresh = dir.join("fresh.tcptrace");
    let (code, err) = record_once(&fresh, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(mode(&fresh), 0o600);
    for bad in [dir.clone(), dir.join("missing").join("x.tcptrace")] {
        let (code, err) = record_once(&bad, &[]);
        assert_eq!(code, Some(2), "{}: {err}", bad.display());
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------ signals

#[test]
fn sighup_stops_trace_stats_and_record_cleanly() {
    let (listener, port) = free_listener();
    let p = port.to_string();
    let file = temp("hup.tcptrace");
    let runs: Vec<(Running, &str)> = vec![
        (Running::start(&["trace", "--port", &p], "tracing"), "trace"),
        (
            Running::start(
                &["stats", "--interval", "3600", "--port", &p],
                "stats every",
            ),
            "stats",
        ),
        (
            Running::start(
                &["record", "-o", file.to_str().unwrap(), "--port", &p],
                "recording to",
            ),
            "record",
        ),
    ];
    let mut held = Vec::new();
    leak_close_wait(&listener, port, 3, &mut held);
    for (mut r, what) in runs {
        r.signal(libc::SIGHUP);
        let status = r.child.wait().unwrap();
        let (_, err) = r.finish();
        assert_eq!(status.code(), Some(0), "{what}: {status} {err}");
        if what == "trace" {
            assert!(err.contains("events printed"), "{err}");
        }
        if what == "record" {
            assert!(err.contains("recorded to"), "{err}");
        }
    }
    // The recording was closed: it reads back whole, no warning.
    let out = Command::new(TCPTRACE)
        .args(["report", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["recording"]["cut"].is_null(), "{report}");
    assert_eq!(report["states"]["CLOSE_WAIT"], 3, "{report}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_file_size_limit_ends_record_with_one_line_not_a_signal() {
    let (listener, port) = free_listener();
    let file = temp("fsize.tcptrace");
    let p = port.to_string();
    let mut child = Command::new("prlimit")
        .arg("--fsize=4096")
        .arg(TCPTRACE)
        .args(["record", "--quiet", "-o"])
        .arg(&file)
        .args(["--port", &p])
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit runs (util-linux)");
    wait_for("the recording file", Duration::from_secs(30), || {
        file.exists()
    });
    // Connections until the file would pass 4 KiB.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                drop(s);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        for _ in 0..100 {
            let _ = TcpStream::connect(("127.0.0.1", port));
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "record never hit the limit");
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(err.contains("File too large"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // One more connection wakes the server thread to see it.
    let _ = TcpStream::connect(("127.0.0.1", port));
    server.join().unwrap();
    let _ = std::fs::remove_file(&file);
}

// ------------------------------------------------------------ config

#[test]
fn a_rules_file_others_can_write_is_refused_with_exec_and_warned_without() {
    let dir = temp("config-trust");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("watch.toml");
    std::fs::write(&config, "close_wait_per_process = 50\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(TCPTRACE)
        .args(["watch", "--exec", "true", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("writable by group or others"), "{err}");
    // Owned by another user: refused too.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&config, Some(65534), None).unwrap();
    let out = Command::new(TCPTRACE)
        .args(["watch", "--exec", "true", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by uid 65534"));
    // Without --exec: a warning, then it runs.
    let spawned = Streaming::start(&[
        "watch",
        "--duration",
        "1",
        "--config",
        config.to_str().unwrap(),
    ]);
    let (status, _, err) = spawned.wait(Duration::from_secs(30));
    assert!(status.success(), "{err:?}");
    assert!(
        err.iter()
            .any(|l| l.contains("warning") && l.contains("owned by uid 65534")),
        "{err:?}"
    );
    // Root's own 0644 file is fine with --exec.
    std::os::unix::fs::chown(&config, Some(0), None).unwrap();
    let out = Command::new(TCPTRACE)
        .args(["watch", "--duration", "0.5", "--exec", "true", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------ smaller

#[test]
fn a_closed_stdout_is_an_error_not_a_claim_of_success() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(TCPTRACE);
    cmd.args(["trace", "--duration", "1"]);
    // SAFETY: close(2) in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(1);
            Ok(())
        });
    }
    let out = cmd.stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("stdout is closed"), "{err}");
    assert!(!err.contains("events printed"), "{err}");
}

#[test]
fn stats_json_lists_are_capped_with_an_other_row_carrying_the_true_totals() {
    let ns = NetNs::new("capped");
    let file = temp("capped.tcptrace");
    let record = Running::start(&["record", "-o", file.to_str().unwrap()], "recording to");
    let stats = Streaming::start(&["stats", "--json", "--interval", "0.5", "--reconcile", "0"]);
    Streaming::wait_line(
        &stats.err,
        &mut Vec::new(),
        "banner",
        Duration::from_secs(30),
        |l| l.contains("stats every"),
    );
    // 80 destinations in the namespace, each with a client-side TIME_WAIT.
    ns.run(|| {
        let listeners: Vec<std::net::TcpListener> = (0..80)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        for l in &listeners {
            let port = l.local_addr().unwrap().port();
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut s, _) = l.accept().unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut buf = [0u8; 1];
            while s.read(&mut buf).unwrap() > 0 {}
            drop(s);
            while c.read(&mut buf).unwrap() > 0 {}
        }
    });
    let mut seen = Vec::new();
    let line = Streaming::wait_line(
        &stats.out,
        &mut seen,
        "80 peers capped",
        Duration::from_secs(30),
        |l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["capped"]["time_wait_by_peer"]["rows"].as_u64() >= Some(80)
        },
    );
    let v: Value = serde_json::from_str(&line).unwrap();
    let rows = v["time_wait_by_peer"].as_array().unwrap();
    assert_eq!(rows.len(), tcptrace_core::stats::JSON_ROWS + 1);
    let other = rows.last().unwrap();
    assert_eq!(other["other"], true);
    // Every TIME_WAIT is a destination's (opened here) or a service's
    // (accepted here): the two lists add up to the host's count.
    let services = v["time_wait_by_service"].as_array().unwrap();
    let sum: u64 = rows
        .iter()
        .chain(services)
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, v["states"]["TIME_WAIT"].as_u64().unwrap(), "{line}");
    assert!(line.len() < 64 * 1024, "a {} byte line", line.len());
    stats.signal(libc::SIGTERM);
    let (status, _, _) = stats.wait(Duration::from_secs(10));
    assert!(status.success());
    // `report --json` of a recording of the same: capped the same way.
    let (status, _, err) = record.stop();
    assert!(status.success(), "{err}");
    let out = Command::new(TCPTRACE)
        .args(["report", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["capped"]["time_wait_by_peer"]["rows"].as_u64() >= Some(80),
        "{report}"
    );
    let rows = report["time_wait_by_peer"].as_array().unwrap();
    assert_eq!(rows.len(), tcptrace_core::stats::JSON_ROWS + 1);
    let services = report["time_wait_by_service"].as_array().unwrap();
    let sum: u64 = rows
        .iter()
        .chain(services)
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, report["states"]["TIME_WAIT"].as_u64().unwrap());
    let _ = std::fs::remove_file(&file);
    drop(ns);
}

/// Where each block of a recording starts.
fn block_starts(bytes: &[u8]) -> Vec<usize> {
    use tcptrace_core::record::format::{BLOCK_FIXED, HEADER_FIXED, decode_block_head};
    let json_len = u32::from_le_bytes(bytes[10..14].try_into().unwrap()) as usize;
    let mut at = HEADER_FIXED + json_len;
    let mut starts = Vec::new();
    while at + BLOCK_FIXED <= bytes.len() {
        let head: &[u8; BLOCK_FIXED] = bytes[at..at + BLOCK_FIXED].try_into().unwrap();
        let (_, len, _, _) = decode_block_head(head).expect("an intact recording");
        starts.push(at);
        at += BLOCK_FIXED + len as usize;
    }
    starts
}

#[test]
fn a_corrupt_block_costs_only_its_own_events_and_is_reported() {
    let (listener, port) = free_listener();
    let p = port.to_string();
    let file = temp("corrupt.tcptrace");
    let record = Running::start(
        &["record", "-o", file.to_str().unwrap(), "--port", &p],
        "recording to",
    );
    // Four bursts, each in a block of its own (blocks reach the file every
    // second: wait for the file to grow between bursts).
    let mut held = Vec::new();
    for _ in 0..4 {
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        leak_close_wait(&listener, port, 5, &mut held);
        wait_for("a block written", Duration::from_secs(10), || {
            std::fs::metadata(&file).is_ok_and(|m| m.len() > size)
        });
    }
    let (status, _, err) = record.stop();
    assert!(status.success(), "{err}");
    let intact = std::fs::read(&file).unwrap();
    let starts = block_starts(&intact);
    assert!(starts.len() >= 5, "{} blocks", starts.len());
    // Damage the payload of the second block (an events block).
    let mut damaged = intact.clone();
    let victim = starts[2];
    damaged[victim + 20] ^= 0x5a;
    std::fs::write(&file, &damaged).unwrap();
    let events_in = |bytes: &[u8]| -> usize {
        tcptrace_core::record::Reader::new(bytes)
            .unwrap()
            .filter(|r| matches!(r, tcptrace_core::record::Record::Event(_)))
            .count()
    };
    let lost_block = events_in(&intact) - events_in(&damaged);
    assert!(lost_block > 0 && lost_block < events_in(&intact));
    let out = Command::new(TCPTRACE)
        .args(["report", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("at byte {victim}")) && err.contains("skipped"),
        "{err}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["recording"]["events"].as_u64().unwrap() as usize,
        events_in(&intact) - lost_block
    );
    assert_eq!(report["recording"]["skipped"].as_array().unwrap().len(), 1);
    assert!(report["recording"]["cut"].is_null());
    // Later blocks were read: the last burst's sockets are there.
    assert_eq!(report["states"]["CLOSE_WAIT"], 20, "{report}");
    drop(held);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn metrics_scraped_under_hostile_clients_still_match_the_load() {
    // One end-to-end check that hostile clients do not corrupt answers.
    let (listener, port) = free_listener();
    let p = port.to_string();
    let (running, metrics_port) = stats_with_metrics(&["--port", &p]);
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", metrics_port)).ok())
        .collect();
    let mut held = Vec::new();
    leak_close_wait(&listener, port, 7, &mut held);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = scrape_from(GOOD_CLIENT, metrics_port).unwrap();
        if metric_value(&body, r#"tcptrace_connections{state="CLOSE_WAIT"}"#) == Some(7.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(idle);
    running.stop();
}

#[test]
fn exit_on_alert_still_delivers_the_alert_to_its_exec_hook() {
    let (listener, port) = free_listener();
    let done = temp("exit-on-alert.done");
    let hook = format!("sleep 0.5; touch {}", done.display());
    let watch = watch_with_hook(port, &hook, &["--exit-on-alert"]);
    Streaming::wait_line(
        &watch.err,
        &mut Vec::new(),
        "banner",
        Duration::from_secs(30),
        |l| l.contains("watching every"),
    );
    let mut held = Vec::new();
    leak_close_wait(&listener, port, 3, &mut held);
    let (status, _, err) = watch.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{err:?}");
    assert!(
        done.exists(),
        "the hook of the alert that ended watch never ran to its end"
    );
    let _ = std::fs::remove_file(&done);
}

#[test]
fn a_rules_file_reached_through_others_links_or_directories_is_refused() {
    let dir = temp("config-chain");
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("watch.toml");
    std::fs::write(&good, "close_wait_per_process = 50\n").unwrap();
    // A directory anyone can write (no sticky bit) holding a link to it.
    let open_dir = dir.join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let link = open_dir.join("watch.toml");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    // The file itself inside that directory.
    let inside = open_dir.join("real.toml");
    std::fs::write(&inside, "close_wait_per_process = 50\n").unwrap();
    // A link owned by another user in a safe directory.
    let their_link = dir.join("theirs.toml");
    std::os::unix::fs::symlink(&good, &their_link).unwrap();
    std::os::unix::fs::lchown(&their_link, Some(65534), None).unwrap();
    for (config, says) in [
        (&link, "writable by group or others"),
        (&inside, "writable by group or others"),
        (&their_link, "link owned by uid 65534"),
    ] {
        let out = Command::new(TCPTRACE)
            .args(["watch", "--exec", "true", "--config"])
            .arg(config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", config.display());
        assert!(err.contains(says), "{}: {err}", config.display());
    }
    // The good file directly is accepted.
    let out = Command::new(TCPTRACE)
        .args(["watch", "--duration", "0.5", "--exec", "true", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Checked again at every reload: made writable, SIGHUP keeps the rules.
    let watch = Streaming::start(&[
        "watch",
        "--exec",
        "true",
        "--config",
        good.to_str().unwrap(),
    ]);
    let mut err = Vec::new();
    Streaming::wait_line(
        &watch.err,
        &mut err,
        "banner",
        Duration::from_secs(30),
        |l| l.contains("watching every"),
    );
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o666)).unwrap();
    watch.signal(libc::SIGHUP);
    Streaming::wait_line(
        &watch.err,
        &mut err,
        "the refused reload",
        Duration::from_secs(10),
        |l| l.contains("reload failed") && l.contains("writable by group or others"),
    );
    watch.signal(libc::SIGTERM);
    let (status, _, _) = watch.wait(Duration::from_secs(15));
    assert!(status.success());
    // Out-of-range values in the file are one line and exit 2 as well.
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&good, "repeat_secs = 99999999999\n").unwrap();
    let out = Command::new(TCPTRACE)
        .args(["watch", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("out of range") && err.lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rotated_recordings_are_private_and_created_afresh() {
    let dir = temp("rotate-mode");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("r.tcptrace");
    let (code, err) = record_once(&file, &["--rotate-time", "1", "--duration", "3.5"]);
    assert_eq!(code, Some(0), "{err}");
    let rotated = dir.join("r.tcptrace.1");
    assert!(rotated.exists(), "no rotation happened: {err}");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&rotated), 0o600);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_terminal_hang_up_stops_record_cleanly_with_its_file_closed() {
    use std::os::{fd::FromRawFd, unix::process::CommandExt};
    let (listener, port) = free_listener();
    let file = temp("pty-hup.tcptrace");
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty with valid out-pointers and no name/termios/winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    let mut cmd = Command::new(TCPTRACE);
    cmd.args(["record", "-o"])
        .arg(&file)
        .args(["--port", &port.to_string()]);
    // SAFETY: between fork and exec only async-signal-safe calls: a new
    // session whose controlling terminal is the pty, on fds 0-2; the child
    // keeps no copy of the master (else closing ours hangs nothing up).
    unsafe {
        cmd.pre_exec(move || {
            libc::close(master);
            libc::setsid();
            libc::ioctl(slave, libc::TIOCSCTTY, 0);
            for fd in 0..3 {
                libc::dup2(slave, fd);
            }
            if slave > 2 {
                libc::close(slave);
            }
            Ok(())
        });
    }
    /// Kills the child if the test fails before it exits.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let child = &mut child.0;
    // SAFETY: the parent's copy of the slave, no longer needed.
    unsafe { libc::close(slave) };
    // SAFETY: `master` is ours; the File closes it when dropped.
    let mut master = unsafe { std::fs::File::from_raw_fd(master) };
    // The banner on the terminal: it is recording.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("Ctrl-C to stop") {
        let n = master.read(&mut buf).unwrap();
        assert!(n > 0, "the pty closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    let mut held = Vec::new();
    leak_close_wait(&listener, port, 3, &mut held);
    // Hang up: the terminal goes away (SIGHUP; stderr writes fail with EIO).
    drop(master);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "record ignored the hang-up");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status}");
    let out = Command::new(TCPTRACE)
        .args(["report", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["states"]["CLOSE_WAIT"], 3, "{report}");
    let _ = std::fs::remove_file(&file);
}
