//! `record`, `replay` and `report` on real traffic: a recording made while
//! this test leaks CLOSE_WAIT sockets and piles TIME_WAIT sockets reports
//! what `stats --json` saw live at the same time; replay prints what `trace`
//! prints; damaged files give one line and exit 2.

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{
    Running, Streaming, free_listener, leak_close_wait, orphans, pile_time_wait, ss_count, wait_for,
};
use serde_json::Value;

/// How long a condition may take to show up before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// Bytes of every file in `dir`.
fn bytes_in(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tcptrace"))
}

/// A fresh path under the temp dir: whatever an earlier run left there is
/// removed (`record` refuses to overwrite a file).
fn temp(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tcptrace-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir_all(&path);
    path
}

#[test]
fn report_of_a_recording_equals_what_stats_saw_live() {
    let (cw_listener, cw_port) = free_listener();
    let (tw_listener, tw_port) = free_listener();
    let file = temp("live.tcptrace");
    let (cw, tw) = (cw_port.to_string(), tw_port.to_string());
    let filter = ["--port", &cw, "--port", &tw];
    let mut stats_args = vec!["stats", "--json", "--interval", "1", "--reconcile", "0"];
    stats_args.extend(filter);
    let stats = Streaming::start(&stats_args);
    Streaming::wait_line(&stats.err, &mut Vec::new(), "banner", WAIT, |l| {
        l.contains("stats every")
    });
    let mut record_args = vec!["record", "-o", file.to_str().unwrap()];
    record_args.extend(filter);
    let record = Running::start(&record_args, "recording to");

    let mut held = Vec::new();
    leak_close_wait(&cw_listener, cw_port, 30, &mut held);
    pile_time_wait(tw_listener, tw_port, 100);
    // Both saw the end of the load once `stats` shows it (they drain the
    // same kernel events; `record` writes whatever is left when stopped).
    let mut summaries = Vec::new();
    Streaming::wait_line(
        &stats.out,
        &mut summaries,
        "the whole load in stats",
        WAIT,
        |l| l.contains(r#""CLOSE_WAIT":30"#) && l.contains(r#""TIME_WAIT":100"#),
    );
    let (status, _, record_err) = record.stop();
    assert!(status.success(), "{record_err}");
    assert!(record_err.contains("recorded to"), "{record_err}");
    stats.signal(libc::SIGINT);
    let (status, out, _) = stats.wait(WAIT);
    assert!(status.success());
    summaries.extend(out);
    let live: Value = serde_json::from_str(summaries.last().expect("a summary")).unwrap();

    let report = bin()
        .args(["report", "--json", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(report.status.success(), "{report:?}");
    let offline: Value = serde_json::from_slice(&report.stdout).unwrap();

    assert_eq!(live["states"]["CLOSE_WAIT"], 30, "{live}");
    assert_eq!(live["states"]["TIME_WAIT"], 100, "{live}");
    // The load is small (130 connections): neither tracer may lose one.
    let lost_sum = |v: &Value| -> u64 {
        v["lost"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum()
    };
    assert_eq!(lost_sum(&live), 0, "{}", live["lost"]);
    assert_eq!(lost_sum(&offline), 0, "{}", offline["lost"]);
    assert_eq!(offline["states"], live["states"]);
    assert_eq!(offline["transitions_total"], live["transitions_total"]);
    assert_eq!(offline["closers"], live["closers"]);
    assert_eq!(offline["ended"], live["ended"]);
    let keyed = |v: &Value, list: &str, fields: &[&str]| -> Vec<Vec<Value>> {
        v[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| fields.iter().map(|f| p[*f].clone()).collect())
            .collect()
    };
    assert_eq!(
        keyed(&offline, "close_wait_by_process", &["pid", "comm", "count"]),
        keyed(&live, "close_wait_by_process", &["pid", "comm", "count"])
    );
    assert_eq!(
        keyed(&offline, "time_wait_by_peer", &["daddr", "dport", "count"]),
        keyed(&live, "time_wait_by_peer", &["daddr", "dport", "count"])
    );
    // The two tracers are two programs on the same tracepoints, each reading
    // the clock itself: their stamps of one transition differ by the other
    // program's run time (µs, more if interrupted). Counts agree exactly,
    // medians to within 10 µs.
    let close = |a: &Value, b: &Value| {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        (a - b).abs() <= 0.010 + 0.05 * a.max(b)
    };
    for (name, h) in live["histograms"].as_object().unwrap() {
        let o = &offline["histograms"][name];
        assert_eq!(o["count"], h["count"], "{name}");
        assert!(close(&o["p50_ms"], &h["p50_ms"]), "{name}: {o} vs {h}");
    }
    assert_eq!(offline["recording"]["filters"][1], cw.as_str());
    assert!(offline["gaps"].as_array().unwrap().len() <= 1);

    // Replay prints what trace prints: one line per event, same schema.
    let replay = bin()
        .args([
            "replay",
            "--json",
            "--as-fast-as-possible",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(replay.status.success());
    let lines: Vec<Value> = String::from_utf8(replay.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let transitions = lines.iter().filter(|l| l["kind"] == "transition").count();
    assert_eq!(
        transitions as u64,
        live["transitions_total"].as_u64().unwrap()
    );
    let me = std::process::id();
    let tw_begins: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "tw_begin").collect();
    assert_eq!(tw_begins.len(), 100);
    assert!(
        tw_begins.iter().all(|l| l["pid"] == me),
        "owners survive the round trip"
    );
    assert_eq!(offline["close_wait_by_process"][0]["pid"], me, "{offline}");
    let csv = bin()
        .args(["report", "--csv", file.to_str().unwrap()])
        .output()
        .unwrap();
    let csv = String::from_utf8(csv.stdout).unwrap();
    // The workload column was added at the end (empty where none applies).
    assert!(
        csv.starts_with("section,key,field,value,workload\n"),
        "{csv}"
    );
    assert!(csv.contains("states,CLOSE_WAIT,count,30"), "{csv}");
    drop(held);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn damaged_recordings_are_one_line_and_exit_2() {
    let garbage = temp("garbage.tcptrace");
    std::fs::write(&garbage, b"definitely not a recording").unwrap();
    for cmd in ["report", "replay"] {
        let out = bin()
            .args([cmd, garbage.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("not a tcptrace recording"), "{err}");
    }
    let missing = bin()
        .args(["report", "/nonexistent/x.tcptrace"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let _ = std::fs::remove_file(&garbage);
}

#[test]
fn a_recording_cut_mid_block_reads_to_its_last_block_with_a_warning() {
    let (listener, port) = free_listener();
    let file = temp("cut.tcptrace");
    let p = port.to_string();
    let record = Running::start(
        &["record", "-o", file.to_str().unwrap(), "--port", &p],
        "recording to",
    );
    pile_time_wait(listener, port, 50);
    // Stopping drains and writes everything.
    let (status, _, _) = record.stop();
    assert!(status.success());
    let bytes = std::fs::read(&file).unwrap();
    // kill -9 or a full disk: the file ends in the middle of its last block.
    std::fs::write(&file, &bytes[..bytes.len() - 7]).unwrap();
    let out = bin()
        .args(["report", "--json", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("incomplete block at byte"), "{err}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["states"]["TIME_WAIT"], 50, "{report}");
    let _ = std::fs::remove_file(&file);
}

/// `report --json` of one file: (events, TIME_WAIT count, start, stderr).
fn report_of(file: &std::path::Path) -> (u64, Value, String) {
    let out = bin()
        .args(["report", "--json", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {out:?}", file.display());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let events = v["recording"]["events"].as_u64().unwrap();
    (events, v, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The "N events" of record's closing line.
fn recorded_events(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("recorded to"))
        .unwrap_or_else(|| panic!("no closing line: {stderr}"));
    let before = line.split(" events").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `record` into a fresh directory's `r.tcptrace`, for a fresh listener's
/// port, with the rotation options `rotation`.
fn record_rotating(
    name: &str,
    rotation: &[&str],
) -> (PathBuf, PathBuf, std::net::TcpListener, u16, Running) {
    let dir = temp(name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("r.tcptrace");
    let (listener, port) = free_listener();
    let p = port.to_string();
    let mut args = vec!["record", "-o", file.to_str().unwrap(), "--port", &p];
    args.extend(rotation);
    let record = Running::start(&args, "recording to");
    (dir, file, listener, port, record)
}

#[test]
fn rotation_by_time_keeps_n_files_each_readable_and_loses_nothing_between_them() {
    let (dir, file, listener, port, record) =
        record_rotating("rot-time", &["--rotate-time", "1", "--keep", "20"]);
    // Connections all along, so every file has events.
    let load = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(3500) {
            let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (s, _) = listener.accept().unwrap();
            drop(c);
            drop(s);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    load.join().unwrap();
    let (status, _, err) = record.stop();
    assert!(status.success(), "{err}");
    let total = recorded_events(&err);

    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "rotated every second: {files:?}");
    let mut sum = 0;
    let mut starts = Vec::new();
    for f in &files {
        let (events, v, stderr) = report_of(f);
        assert!(stderr.is_empty(), "{}: {stderr}", f.display());
        sum += events;
        starts.push((v["recording"]["start_ns"].as_u64().unwrap(), f.clone()));
    }
    assert_eq!(sum, total, "every recorded event is in exactly one file");
    // FILE is the newest, FILE.1 the one before it, and so on.
    starts.sort();
    let newest_first: Vec<&PathBuf> = starts.iter().rev().map(|(_, f)| f).collect();
    assert_eq!(newest_first[0], &file, "{starts:?}");
    for (n, f) in newest_first.iter().enumerate().skip(1) {
        assert_eq!(f.to_str().unwrap(), format!("{}.{n}", file.display()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rotation_by_size_keeps_only_the_newest_n() {
    let (dir, _file, listener, port, record) =
        record_rotating("rot-size", &["--rotate-size", "64K", "--keep", "2"]);
    // About 100 bytes per connection: each second's block passes 64 KiB.
    for _ in 0..5 {
        let before = bytes_in(&dir);
        pile_time_wait(listener.try_clone().unwrap(), port, 700);
        // Its block was written (and maybe rotated: old files go).
        wait_for("the burst's block in the files", WAIT, || {
            bytes_in(&dir) != before
        });
    }
    let (status, _, err) = record.stop();
    assert!(status.success(), "{err}");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["r.tcptrace", "r.tcptrace.1", "r.tcptrace.2"],
        "--keep 2: the oldest were deleted"
    );
    for n in ["r.tcptrace.1", "r.tcptrace.2"] {
        let len = std::fs::metadata(dir.join(n)).unwrap().len();
        assert!(
            len >= 65536,
            "{n} was rotated at {len} bytes, under --rotate-size"
        );
        let (_, _, stderr) = report_of(&dir.join(n));
        assert!(stderr.is_empty(), "{n}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(name: &str, size: &str) -> Self {
        let dir = temp(name);
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tcptrace-test",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (needs root)");
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_disk_stops_the_recording_with_one_line_and_the_file_reads_back() {
    let disk = SmallDisk::mount("full", "64k");
    let file = disk.0.join("full.tcptrace");
    let (listener, port) = free_listener();
    let p = port.to_string();
    let mut record = Running::start(
        &["record", "-o", file.to_str().unwrap(), "--port", &p],
        "recording to",
    );
    // About 100 bytes per connection: a block of about 30 KiB a second
    // fills 64 KiB in a few seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let before = bytes_in(&disk.0);
        let l = listener.try_clone().unwrap();
        pile_time_wait(l, port, 300);
        // The next block reached the disk, or the disk is full.
        wait_for("a block or the end", WAIT, || {
            bytes_in(&disk.0) > before || !matches!(record.child.try_wait(), Ok(None))
        });
        if let Some(status) = record.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the 64 KiB disk never filled"
        );
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut record.err, &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    // Status lines (every 10 s without a terminal), then the one error line.
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("tcptrace: recording to"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "tcptrace: recording stopped: cannot write {} at byte ",
            file.display()
        )) && lines[0].ends_with("No space left on device (os error 28)"),
        "{err}"
    );
    // Everything before the failed block reads back.
    let (events, _, stderr) = report_of(&file);
    assert!(events > 0);
    assert!(stderr.lines().count() <= 1, "{stderr}");
    drop(disk);
}

/// Wall-clock now, Unix epoch ns.
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn kill_9_with_blocks_in_flight_loses_at_most_the_last_flush_interval() {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    };
    let (listener, port) = free_listener();
    let file = temp("kill9.tcptrace");
    let p = port.to_string();
    let record = Running::start(
        &["record", "-o", file.to_str().unwrap(), "--port", &p],
        "recording to",
    );
    // A steady load while it records: a connection every few ms, each
    // started at a wall-clock time we keep.
    let stop = Arc::new(AtomicBool::new(false));
    let started: Arc<Mutex<Vec<u64>>> = Arc::default();
    let load = {
        let (stop, started) = (stop.clone(), started.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                started.lock().unwrap().push(wall_ns());
                let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                let (s, _) = listener.accept().unwrap();
                drop(c);
                drop(s);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // Blocks are reaching the file: kill while the next ones are in flight.
    let mut grew = 0;
    let mut last = 0;
    wait_for("two event blocks written", WAIT, || {
        let now = std::fs::metadata(&file).map_or(0, |m| m.len());
        if now > last && last > 0 {
            grew += 1;
        }
        last = now;
        grew >= 2
    });
    let killed_at = wall_ns();
    record.signal(libc::SIGKILL);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (_, _, _) = record.stop();

    // The file reads back to its last complete block (one warning at most).
    let (_, _, stderr) = report_of(&file);
    assert!(stderr.lines().count() <= 1, "{stderr}");
    let replay = bin()
        .args(["replay", "--json", "--as-fast-as-possible"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(replay.status.success());
    let connects: Vec<u64> = String::from_utf8(replay.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["old"] == "CLOSE" && v["new"] == "SYN_SENT" && v["dport"] == port)
        .map(|v| v["ts_ns"].as_u64().unwrap())
        .collect();
    // A block reaches the file every second: what was lost is at most the
    // last second (plus one 10 ms drain and the block's write).
    let window = 1_100_000_000;
    let made_before = started
        .lock()
        .unwrap()
        .iter()
        .filter(|&&t| t + window < killed_at)
        .count();
    assert!(made_before > 0);
    assert!(
        connects.len() >= made_before,
        "{} connects recorded, {made_before} made more than 1.1 s before the kill",
        connects.len()
    );
    let newest = connects.iter().max().copied().unwrap_or(0);
    assert!(
        killed_at.saturating_sub(newest) <= window,
        "the newest recorded connect is {} ms before the kill",
        killed_at.saturating_sub(newest) / 1_000_000
    );
    let _ = std::fs::remove_file(&file);
}

/// `replay --json --as-fast-as-possible` of `file` (a recording still being
/// written reads to its last complete block), one value per line.
fn replayed(file: &std::path::Path) -> Vec<Value> {
    let out = bin()
        .args(["replay", "--json", "--as-fast-as-possible"])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Orphans found in TIME_WAIT by the live check (`tw_substate`, no hook
/// fires for that move) are recorded: `replay` prints them as `trace` did,
/// and `report` applies them (every orphan ends in TIME_WAIT, none left in
/// FIN_WAIT2, each one found counted as a silent re-arm).
#[test]
fn recorded_substate_changes_replay_and_report() {
    const N: usize = 10;
    let (listener, port) = free_listener();
    let file = temp("substate.tcptrace");
    let p = port.to_string();
    let record = Running::start(
        &["record", "-o", file.to_str().unwrap(), "--port", &p],
        "recording to",
    );
    let (servers, ports) = orphans(&listener, port, N);
    wait_for("the orphans in FIN_WAIT2", WAIT, || {
        ss_count("fin-wait-2", port, None) == N
    });
    drop(servers);
    let ours = |v: &Value| {
        v["sport"]
            .as_u64()
            .is_some_and(|p| ports.contains(&(p as u16)))
    };
    let time_wait_shown = |lines: &[Value]| {
        lines
            .iter()
            .filter(|v| ours(v))
            .filter(|v| {
                // An orphan that stayed a full socket (rarely) begins its
                // timewait socket in TIME_WAIT.
                matches!(
                    v["kind"].as_str(),
                    Some("tw_substate" | "tw_rearm" | "tw_begin")
                ) && v["new"] == "TIME_WAIT"
            })
            .count()
    };
    wait_for("every orphan in TIME_WAIT in the recording", WAIT, || {
        time_wait_shown(&replayed(&file)) == N
    });
    let (status, _, err) = record.stop();
    assert!(status.success(), "{err}");

    let lines = replayed(&file);
    assert_eq!(time_wait_shown(&lines), N);
    let found: Vec<&Value> = lines
        .iter()
        .filter(|v| ours(v) && v["kind"] == "tw_substate")
        .collect();
    assert!(!found.is_empty(), "no tw_substate in {lines:#?}");
    for v in &found {
        assert_eq!(v["found_by"], "reconciliation", "{v}");
        assert_eq!(
            (&v["old"], &v["new"]),
            (&Value::from("FIN_WAIT2"), &Value::from("TIME_WAIT"))
        );
    }
    let report = bin()
        .args(["report", "--json", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(report.status.success(), "{report:?}");
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["states"]["TIME_WAIT"], N, "{report}");
    assert_eq!(report["states"]["FIN_WAIT2"], 0, "{report}");
    assert_eq!(report["silent_rearms"], found.len(), "{report}");
    let _ = std::fs::remove_file(&file);
}
