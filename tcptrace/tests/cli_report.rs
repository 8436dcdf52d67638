//! `report` answers the postmortem, not only the end: a 9 s recording in
//! which this test process (its thread `leakyd`) held 20 CLOSE_WAIT sockets
//! for about 5 s and released them well before the recording ended. The
//! report names leakyd with its peak (text, JSON, CSV), `--at` inside the
//! leak shows its 20 sockets and `--at` after it does not, `--from`/`--to`
//! bound the timeline, and a moment outside the recording is one line and
//! exit 2.

mod common;

use std::{
    net::TcpListener,
    path::PathBuf,
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{Running, free_port, leak_close_wait, wait_for};
use serde_json::Value;

/// How long a condition may take to show up before the test fails.
const WAIT: Duration = Duration::from_secs(30);
/// The recording's length.
const RECORD_SECS: u64 = 9;
/// How long leakyd holds its sockets (load shaping: the leak must end well
/// before the recording does).
const HOLD: Duration = Duration::from_secs(5);
const SEC: u64 = 1_000_000_000;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tcptrace"))
}

/// A fresh path under the temp dir (`record` refuses to overwrite a file).
fn temp(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tcptrace-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// `tcptrace report FILE args...`: exit code, stdout, stderr.
fn report(file: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = bin().arg("report").args(args).arg(file).output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn report_json(file: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = report(file, &all);
    assert_eq!(code, Some(0), "report {all:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// An RFC 3339 time for Unix-epoch nanoseconds.
fn rfc3339(ns: u64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .unwrap()
        .to_string()
}

/// "HH:MM:SS.mmm" UTC for Unix-epoch nanoseconds.
fn time_of_day(ns: u64) -> String {
    let ms = ns / 1_000_000;
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1_000 % 60,
        day_ms % 1_000
    )
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_leak_that_ends_before_the_recording_is_named_with_its_peak() {
    let me = std::process::id();
    let port = free_port(false);
    let file = temp("leak.tcptrace");
    let path = file.to_str().unwrap().to_string();
    let p = port.to_string();
    let secs = RECORD_SECS.to_string();
    let mut record = Running::start(
        &["record", "-o", &path, "--port", &p, "--duration", &secs],
        "recording to",
    );

    // leakyd: its own listener, 20 connections whose clients shut down
    // (the accepted sockets sit in CLOSE_WAIT), held, then closed.
    let (released_tx, released_rx) = mpsc::channel();
    let leakyd = std::thread::Builder::new()
        .name("leakyd".into())
        .spawn(move || {
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let mut held = Vec::new();
            leak_close_wait(&listener, port, 20, &mut held);
            std::thread::sleep(HOLD);
            drop(held);
            released_tx.send(Instant::now()).unwrap();
        })
        .unwrap();
    let released = released_rx
        .recv_timeout(WAIT + HOLD)
        .expect("leakyd released");
    leakyd.join().unwrap();
    wait_for("the recording to end by itself", WAIT, || {
        record.child.try_wait().unwrap().is_some()
    });
    assert!(
        released.elapsed() > Duration::from_millis(500),
        "the leak must end before the recording does"
    );
    let status = record.child.wait().unwrap();
    let (_, record_err) = record.finish();
    assert!(status.success(), "{record_err}");

    // JSON: leakyd among the holders, though the end knows nothing of it.
    let whole = report_json(&path, &[]);
    assert_eq!(whole["states"]["CLOSE_WAIT"], 0, "{}", whole["states"]);
    let holders = whole["close_wait_holders"].as_array().unwrap();
    let h = holders
        .iter()
        .find(|h| h["pid"] == me)
        .unwrap_or_else(|| panic!("no holder with pid {me}: {holders:#?}"));
    assert_eq!(h["comm"], "leakyd", "{h}");
    assert_eq!(h["peak"], 20, "{h}");
    assert_eq!(h["count_at_end"], 0, "{h}");
    let held_ms = u(&h["held_for_ms"]);
    assert!(
        (4_500..=7_000).contains(&held_ms),
        "held for {held_ms} ms: {h}"
    );
    assert!(u(&h["oldest_age_ms"]) >= 4_500, "{h}");
    assert_eq!(h["peers"].as_array().unwrap().len(), 5, "{h}");
    let (start, end) = (
        u(&whole["recording"]["start_ns"]),
        u(&whole["recording"]["end_ns"]),
    );
    let (peak_ns, last_ns) = (u(&h["peak_ns"]), u(&h["last_ns"]));
    assert!(
        start <= peak_ns && peak_ns < last_ns && last_ns + SEC / 2 < end,
        "{h}"
    );
    // The clients, still open, took the TIME_WAIT when leakyd closed.
    let dest = whole["time_wait_destination_holders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dport"] == port)
        .unwrap_or_else(|| panic!("{}", whole["time_wait_destination_holders"]));
    assert_eq!(
        (&dest["peak"], &dest["pid"]),
        (&Value::from(20), &Value::from(me))
    );
    // A 9 s recording: about 60 points.
    let points = whole["close_wait_timeline"].as_array().unwrap();
    assert!((50..=70).contains(&points.len()), "{} points", points.len());
    assert!(points.iter().any(|p| p["close_wait"] == 20));
    assert_eq!(points.last().unwrap()["close_wait"], 0);

    // Text: the holders section names it with its peak.
    let (code, text, err) = report(&path, &[]);
    assert_eq!(code, Some(0), "{err}");
    let line = text
        .lines()
        .skip_while(|l| !l.starts_with("CLOSE_WAIT holders"))
        .find(|l| l.contains("leakyd"))
        .unwrap_or_else(|| panic!("{text}"));
    // PID, COMM, WORKLOAD (this test's own cgroup, named as recorded), PEAK.
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        [fields[0], fields[1], fields[3]],
        [me.to_string().as_str(), "leakyd", "20"],
        "{line}"
    );
    assert!(text.contains("timeline (step "), "{text}");

    // --at inside the leak (RFC 3339): its 20 sockets, then.
    let mid = peak_ns + (last_ns - peak_ns) / 2;
    let inside = report_json(&path, &["--at", &rfc3339(mid)]);
    assert_eq!(inside["states"]["CLOSE_WAIT"], 20, "{}", inside["states"]);
    let p = &inside["close_wait_by_process"][0];
    assert_eq!(
        (&p["pid"], &p["comm"], &p["count"]),
        (&Value::from(me), &Value::from("leakyd"), &Value::from(20))
    );
    assert_eq!(u(&inside["window"]["at_ns"]), mid);
    assert!(
        inside["close_wait_timeline"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| u(&p["ts_ns"]) <= mid)
    );
    // --at after it (a time of day): none held.
    let after = report_json(&path, &["--at", &time_of_day(last_ns + SEC / 2)]);
    assert_eq!(after["states"]["CLOSE_WAIT"], 0, "{}", after["states"]);
    assert!(
        after["close_wait_by_process"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pid"] != me),
        "{}",
        after["close_wait_by_process"]
    );
    let (code, text, _) = report(&path, &["--at", &time_of_day(last_ns + SEC / 2)]);
    assert_eq!(code, Some(0));
    assert!(text.contains("(--at)"), "{text}");

    // --from/--to (offsets in seconds): a window inside the leak.
    let from_ms = (peak_ns - start) / 1_000_000 + 500;
    let (from, to) = (
        format!("{}.{:03}", from_ms / 1000, from_ms % 1000),
        format!("+{}ms", from_ms + 2_000),
    );
    let window = report_json(&path, &["--from", &from, "--to", &to]);
    let (w_from, w_to) = (
        start + from_ms * 1_000_000,
        start + (from_ms + 2_000) * 1_000_000,
    );
    assert_eq!(u(&window["window"]["from_ns"]), w_from);
    assert_eq!(u(&window["window"]["to_ns"]), w_to);
    let ts: Vec<u64> = window["close_wait_timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u(&p["ts_ns"]))
        .collect();
    assert!(ts.iter().all(|t| (w_from..=w_to).contains(t)), "{ts:?}");
    assert_eq!((ts[0], *ts.last().unwrap()), (w_from, w_to));
    let wh = window["close_wait_holders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["pid"] == me)
        .unwrap();
    assert_eq!(
        (u(&wh["peak"]), u(&wh["first_ns"]), u(&wh["count_at_end"])),
        (20, w_from, 20)
    );
    assert_eq!(window["states"]["CLOSE_WAIT"], 20);

    // CSV: the same rows.
    let (code, csv, _) = report(&path, &["--csv"]);
    assert_eq!(code, Some(0));
    assert!(
        csv.contains(&format!("close_wait_holders,{me} leakyd,peak,20")),
        "{csv}"
    );
    assert!(
        csv.contains(&format!("close_wait_holders,{me} leakyd,count_at_end,0")),
        "{csv}"
    );
    assert!(csv.contains("window,window,points,"), "{csv}");

    // A moment outside the recording: one line naming its span, exit 2.
    let (code, out, err) = report(&path, &["--at", "60s"]);
    assert_eq!(code, Some(2), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--at 60s is outside the recording, which spans "),
        "{err}"
    );
    let (code, _, err) = report(&path, &["--from", "soon"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("RFC 3339"), "{err}");
    let (code, _, err) = report(&path, &["--step", "1ms", "--from", "0"]);
    assert_eq!(code, Some(0), "{err}");
    let _ = std::fs::remove_file(&file);
}
