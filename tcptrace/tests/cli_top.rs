//! `tcptrace top` end to end, as a user sees it: the real binary in a real
//! terminal (tmux), a real CLOSE_WAIT leak made by this test, the screen read
//! back with `capture-pane`, keys sent with `send-keys`. After `q` the
//! terminal must be back: alternate screen left, cursor shown, exit code 0.

mod common;

use std::{
    net::{Shutdown, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::{free_listener, tmux::Tmux};

#[test]
fn top_shows_a_close_wait_leak_switches_views_and_restores_the_terminal() {
    let (listener, port) = free_listener();
    let exit_file: PathBuf = std::env::temp_dir().join(format!("tcptrace-top-exit-{port}"));
    let _ = std::fs::remove_file(&exit_file);
    let bin = env!("CARGO_BIN_EXE_tcptrace");
    // The shell stays after tcptrace exits so the pane (and its state) can
    // be inspected.
    let metrics_port = common::free_port(false);
    let cmd = format!(
        "sh -c '{bin} top --interval 0.5 --port {port} --metrics 127.0.0.1:{metrics_port}; echo $? > {}; sleep 600'",
        exit_file.display()
    );
    let tmux = Tmux::start("leak", 110, 32, &cmd);
    tmux.wait_for("the first refresh", |s| {
        s.contains(" up ") && s.contains("CLOSE_WAIT")
    });

    // The leak: a thread named "leakydb" accepts connections and never
    // closes them; the clients close, so the accepted sockets sit in
    // CLOSE_WAIT owned by this process (accept runs in that thread).
    const LEAKED: usize = 25;
    let leaker = std::thread::Builder::new()
        .name("leakydb".into())
        .spawn(move || {
            let mut held = Vec::new();
            for _ in 0..LEAKED {
                let (s, _) = listener.accept().unwrap();
                held.push(s);
            }
            held
        })
        .unwrap();
    for _ in 0..LEAKED {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        std::mem::forget(c);
    }
    let held = leaker.join().unwrap();
    let pid = std::process::id().to_string();

    let overview = tmux.wait_for("the leak in the overview", |s| {
        s.lines()
            .any(|l| l.contains(&pid) && l.contains("leakydb") && l.contains(&LEAKED.to_string()))
    });
    assert!(overview.contains(&format!("CW {LEAKED}")), "{overview}");
    // top serves the same numbers to Prometheus.
    let (_, _, metrics) = common::http_get(metrics_port, "/metrics");
    // (with the process's workload as a third label)
    let prefix = format!(r#"tcptrace_close_wait_sockets{{pid="{pid}",comm="leakydb",workload=""#);
    let value = metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok());
    assert_eq!(value, Some(LEAKED as f64), "{metrics}");
    // A lying client is refused; top keeps drawing and keeps serving.
    let reply = common::raw_exchange(
        metrics_port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let (status, _, _) = common::http_get(metrics_port, "/metrics");
    assert!(status.contains("200"), "{status}");

    tmux.keys(&["2"]);
    let cw = tmux.wait_for("the CLOSE_WAIT view", |s| {
        s.contains("CLOSE_WAIT by process")
    });
    let row = cw
        .lines()
        .find(|l| l.contains("leakydb"))
        .unwrap_or_else(|| panic!("leaking process listed:\n{cw}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[..3], [pid.as_str(), "leakydb", "25"], "{row}");
    assert!(cw.contains("sort: count"), "{cw}");
    tmux.keys(&["s"]);
    tmux.wait_for("sort by growth", |s| s.contains("sort: growth"));
    tmux.keys(&["Enter"]);
    let sockets = tmux.wait_for("the sockets of the process", |s| {
        s.contains(&format!("CLOSE_WAIT sockets of {pid} leakydb ({LEAKED}"))
    });
    let local = format!("127.0.0.1:{port}");
    assert_eq!(
        sockets.lines().filter(|l| l.starts_with(&local)).count(),
        LEAKED,
        "{sockets}"
    );
    tmux.keys(&["Escape", "4"]);
    tmux.wait_for("the connections view", |s| s.contains("sort: age"));
    tmux.keys(&["s"]);
    tmux.wait_for("connections sorted by state", |s| s.contains("sort: state"));
    // Narrow to the leak with the filter: 25 of the 50 sockets (the clients'
    // FIN_WAIT2 ends are the other half).
    tmux.keys(&["/", "state:close_wait", "Enter"]);
    let conns = tmux.wait_for("the filtered connections", |s| {
        s.contains(&format!("Connections ({LEAKED} of {}", 2 * LEAKED))
    });
    let rows: Vec<&str> = conns
        .lines()
        .filter(|l| l.starts_with("CLOSE_WAIT"))
        .collect();
    assert_eq!(rows.len(), LEAKED, "{conns}");
    assert!(
        rows.iter()
            .all(|l| l.contains(&format!("{pid}/leakydb")) && l.contains(&local)),
        "{conns}"
    );
    assert!(conns.contains("filter: state:close_wait"), "{conns}");

    tmux.keys(&["q"]);
    let code = exit_code(&exit_file, "q");
    assert_eq!(code, "0", "exit code");
    let state = tmux.tmux(&["display-message", "-p", "#{alternate_on} #{cursor_flag}"]);
    assert_eq!(state.trim(), "0 1", "alternate screen left, cursor shown");
    let after = tmux.screen();
    assert!(after.contains("tcptrace: top ran"), "{after}");
    let _ = std::fs::remove_file(&exit_file);
    drop(held);
}

#[test]
fn top_without_a_terminal_says_what_to_use_instead() {
    let out = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .arg("top")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("needs a terminal") && err.contains("tcptrace stats"),
        "{err}"
    );
}

#[test]
fn top_rejects_bad_options_in_one_line() {
    for (args, says) in [
        (
            &["--interval", "0"][..],
            "--interval 0 must be a positive number",
        ),
        (
            &["--from", "x.tcptrace", "--port", "80"],
            "filters apply when recording, not with --from",
        ),
        (
            &["--from", "x.tcptrace", "--speed", "0"],
            "--speed 0 must be a positive number",
        ),
        (
            &["--from", "x.tcptrace", "--step", "0"],
            "--step 0 must be a positive number",
        ),
        (&["--speed", "2"], "--from <FILE>"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
            .arg("top")
            .args(args)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn top_from_a_missing_or_damaged_file_is_one_line_and_exit_2() {
    let junk = std::env::temp_dir().join(format!("tcptrace-junk-{}", std::process::id()));
    std::fs::write(&junk, b"not a recording at all").unwrap();
    for (i, (file, says)) in [
        (
            "/nonexistent/x.tcptrace".to_string(),
            "cannot open /nonexistent/x.tcptrace",
        ),
        (junk.display().to_string(), "not a tcptrace recording"),
    ]
    .into_iter()
    .enumerate()
    {
        let exit_file =
            std::env::temp_dir().join(format!("tcptrace-topbad-{}", std::process::id()));
        let _ = std::fs::remove_file(&exit_file);
        let cmd = format!(
            "sh -c '{} top --from {file} 2>&1; echo $? > {}; sleep 600'",
            env!("CARGO_BIN_EXE_tcptrace"),
            exit_file.display()
        );
        let tmux = Tmux::start(&format!("bad{i}"), 100, 10, &cmd);
        assert_eq!(exit_code(&exit_file, "a bad file"), "2");
        let screen = tmux.screen();
        let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{screen}");
        assert!(lines[0].contains(says), "{screen}");
        let _ = std::fs::remove_file(&exit_file);
    }
    let _ = std::fs::remove_file(&junk);
}

/// The exit code the pane's shell wrote to `file` once tcptrace ended.
fn exit_code(file: &std::path::Path, after: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(file)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "tcptrace top did not stop on {after}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid of the shell's child (tcptrace) in the pane.
fn child_of(pid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = children.split_whitespace().next() {
            return c.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no child of {pid}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_restores_the_terminal() {
    let exit_file: PathBuf =
        std::env::temp_dir().join(format!("tcptrace-top-term-{}", std::process::id()));
    let _ = std::fs::remove_file(&exit_file);
    let bin = env!("CARGO_BIN_EXE_tcptrace");
    let cmd = format!(
        "sh -c '{bin} top --no-seed --port 9; echo $? > {}; sleep 600'",
        exit_file.display()
    );
    let tmux = Tmux::start("term", 80, 24, &cmd);
    tmux.wait_for("the first refresh", |s| s.contains(" up "));
    assert_eq!(
        tmux.tmux(&["display-message", "-p", "#{alternate_on}"])
            .trim(),
        "1"
    );
    let shell: u32 = tmux
        .tmux(&["display-message", "-p", "#{pane_pid}"])
        .trim()
        .parse()
        .unwrap();
    let top = child_of(shell);
    // SAFETY: kill(2) on the tcptrace this test started.
    assert_eq!(unsafe { libc::kill(top as i32, libc::SIGTERM) }, 0);
    let code = exit_code(&exit_file, "SIGTERM");
    assert_eq!(code, "0");
    let state = tmux.tmux(&["display-message", "-p", "#{alternate_on} #{cursor_flag}"]);
    assert_eq!(state.trim(), "0 1", "alternate screen left, cursor shown");
    let _ = std::fs::remove_file(&exit_file);
}

/// The CLOSE_WAIT count on the state strip ("CW 20").
fn cw_on_strip(screen: &str) -> Option<u64> {
    let line = screen.lines().find(|l| l.contains(" CW "))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "CW")?;
    words.next()?.parse().ok()
}

#[test]
fn top_from_a_recording_plays_pauses_and_seeks() {
    // A real recording: 10 CLOSE_WAIT sockets leaked, 3 s later 10 more.
    let (listener, port) = free_listener();
    let file = std::env::temp_dir().join(format!("tcptrace-topfrom-{port}.tcptrace"));
    let _ = std::fs::remove_file(&file);
    let p = port.to_string();
    let record = common::Running::start(
        &["record", "-o", file.to_str().unwrap(), "--port", &p],
        "recording to",
    );
    let mut held = Vec::new();
    common::leak_close_wait(&listener, port, 10, &mut held);
    // The scenario, not a wait: the recording must hold a 3-second plateau.
    std::thread::sleep(Duration::from_secs(3));
    common::leak_close_wait(&listener, port, 10, &mut held);
    // Stopping drains and writes everything.
    let (status, _, err) = record.stop();
    assert!(status.success(), "{err}");

    let exit_file = std::env::temp_dir().join(format!("tcptrace-topfrom-exit-{port}"));
    let _ = std::fs::remove_file(&exit_file);
    let bin = env!("CARGO_BIN_EXE_tcptrace");
    let cmd = format!(
        "sh -c '{bin} top --from {} --speed 2 --step 0.5 --interval 0.2; echo $? > {}; sleep 600'",
        file.display(),
        exit_file.display()
    );
    let tmux = Tmux::start("from", 130, 30, &cmd);
    // Played through at 2x: the end, with all 20 and their owner.
    let end = tmux.wait_for("the end of the recording", |s| s.contains(" END "));
    assert!(end.contains(&format!("replay {}", file.display())), "{end}");
    assert_eq!(cw_on_strip(&end), Some(20), "{end}");
    let pid = std::process::id().to_string();
    assert!(
        end.lines().any(|l| l.contains(&pid) && l.contains(" 20 ")),
        "the holder and its count: {end}"
    );

    // Back to the start (100 steps of 0.5 s), paused there: nothing leaked yet.
    for _ in 0..10 {
        tmux.keys(&["{"]);
    }
    let start = tmux.wait_for("the start", |s| s.contains("(+0.0s)"));
    assert!(start.contains(" PAUSED "), "{start}");
    assert_eq!(cw_on_strip(&start), Some(0), "{start}");

    // Step forward: the count rises 0 -> 10 -> 20, never down, and the
    // 3-second plateau at 10 is seen.
    let mut seen = vec![0];
    for _ in 0..30 {
        tmux.keys(&["]"]);
        let s = tmux.screen();
        if let Some(n) = cw_on_strip(&s) {
            assert!(
                n >= *seen.last().unwrap(),
                "went back: {seen:?} then {n}\n{s}"
            );
            seen.push(n);
        }
        if s.contains(" END ") {
            break;
        }
    }
    assert!(seen.contains(&10), "the plateau at 10: {seen:?}");
    assert_eq!(seen.last(), Some(&20), "{seen:?}");

    // Play from a point in the middle (2 s in) to the end again.
    tmux.keys(&["{", "]", "]", "]", "]"]);
    let mid = tmux.wait_for("a paused middle", |s| cw_on_strip(s) == Some(10));
    assert!(mid.contains(" PAUSED "), "{mid}");
    tmux.keys(&["Space"]);
    tmux.wait_for("playing again to the end", |s| {
        s.contains(" END ") && cw_on_strip(s) == Some(20)
    });

    tmux.keys(&["q"]);
    assert_eq!(exit_code(&exit_file, "q"), "0");
    let _ = std::fs::remove_file(&exit_file);
    let _ = std::fs::remove_file(&file);
    drop(held);
}

/// A real nginx closing every connection first: `top`'s TIME_WAIT view
/// shows it as one row (the service, its owner, "server" closing first) at
/// 80 and at 200 columns, every column whole.
#[test]
fn server_side_time_wait_is_one_row_per_service_at_80_and_200_columns() {
    const REQUESTS: usize = 60;
    let ns = common::NetNs::new("top-nginx");
    let port = common::free_port(false);
    let nginx = common::Nginx::start(&ns, port);
    let bin = env!("CARGO_BIN_EXE_tcptrace");
    let cmd = format!("{bin} top --interval 0.5 --port {port}");
    let narrow = Tmux::start("nginx80", 80, 24, &cmd);
    let wide = Tmux::start("nginx200", 200, 30, &cmd);
    for t in [&narrow, &wide] {
        t.wait_for("the first refresh", |s| s.contains(" up "));
    }
    nginx.requests(&ns, REQUESTS);
    let service = format!("svc 127.0.0.1:{port}");
    for (t, width) in [(&narrow, 80), (&wide, 200)] {
        t.keys(&["3"]);
        let screen = t.wait_for("the nginx service row", |s| {
            s.lines()
                .any(|l| l.contains(&service) && l.contains(&REQUESTS.to_string()))
        });
        let rows: Vec<&str> = screen
            .lines()
            .filter(|l| l.starts_with("svc ") || l.starts_with("to "))
            .collect();
        assert_eq!(
            rows.len(),
            1,
            "one row, not one per client ({width} columns):\n{screen}"
        );
        let cols: Vec<&str> = rows[0].split_whitespace().collect();
        // svc ADDR PID COMM COUNT RATE PORTS CLOSES-FIRST...
        assert_eq!(cols[..2], ["svc", &service[4..]], "{screen}");
        assert_eq!(cols[3], "nginx", "the listener's owner:\n{screen}");
        assert_eq!(cols[4], REQUESTS.to_string(), "{screen}");
        assert_eq!(cols[6], "-", "no port budget for a service:\n{screen}");
        assert_eq!(cols[7..9], ["server", "100%"], "{screen}");
        assert!(
            screen.lines().all(|l| l.chars().count() <= width),
            "{screen}"
        );
        t.keys(&["q"]);
    }
    drop(nginx);
}
