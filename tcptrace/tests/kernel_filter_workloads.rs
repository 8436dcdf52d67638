//! The kernel part of the workload filters, as root on the real kernel:
//! real servers in real cgroup v2 groups (made under the *discovered*
//! cgroup2 root) and one in its own network namespace, load on all of
//! them, `trace` naming one. What it prints holds only that one's events
//! (userspace), and the kernel really dropped the others': the binary's
//! "N events of other workloads dropped in the kernel" line (the
//! `FilteredWorkload` counter), with `--lport` narrowing the kernel's
//! filter to the test's servers so that N counts only theirs. The kept
//! server's CLOSE_WAIT count equals `ss`. And a unit restarted while
//! tracing (its cgroup removed and made again, with a new id) is still
//! kept: the kernel checks its stable parent slice, not its own cgroup.

mod common;

use std::{
    fs,
    io::Read,
    net::TcpStream,
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{NetNs, Streaming, cgroups::CgroupTree, ss_count, wait_for};
use serde_json::Value;
use tcptrace::seed::cgroupfs::Cgroup2Root;

const WAIT: Duration = Duration::from_secs(30);

/// Accepts forever, sends one byte on each accepted connection (so the
/// client knows accept() ran: the owner is the server's from then on)
/// and never closes: every connection the client closes stays in
/// CLOSE_WAIT. Prints its port once listening.
const SERVER: &str = r#"
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(128)
print(s.getsockname()[1], flush=True)
held = []
while True:
    c, _ = s.accept()
    c.send(b"x")
    held.append(c)
"#;

/// `n` connections to 127.0.0.1:`port`, each closed by the client once the
/// server accepted it: the server's ends stay in CLOSE_WAIT.
fn leak(port: u16, n: usize, netns: Option<&NetNs>) {
    let go = move || {
        for _ in 0..n {
            let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut byte = [0u8; 1];
            c.read_exact(&mut byte).expect("the server accepted");
            drop(c);
        }
    };
    match netns {
        Some(ns) => ns.run(go),
        None => go(),
    }
}

struct Host {
    tree: CgroupTree,
    mount: PathBuf,
    base: String,
    /// A unit name unique to this test process.
    unit: String,
}

fn host(tag: &str) -> Host {
    let root = Cgroup2Root::discover().expect("the test host has a cgroup2 mount");
    let mount = root.mount_point().to_path_buf();
    let pid = std::process::id();
    Host {
        tree: CgroupTree::new(&mount),
        mount,
        base: format!("/tcptrace-test-kf-{tag}-{pid}"),
        unit: format!("kf-payments-{pid}.service"),
    }
}

impl Host {
    /// A server in a new cgroup `path`; returns its port.
    fn server(&mut self, path: &str, netns: Option<&str>) -> u16 {
        self.tree.make(path);
        self.tree.server_in(path, netns, SERVER)
    }

    fn procs(&self, path: &str) -> Vec<u32> {
        fs::read_to_string(
            self.mount
                .join(path.trim_start_matches('/'))
                .join("cgroup.procs"),
        )
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
    }

    /// Moves every process of `from` into `to` (both made by this test).
    fn move_all(&mut self, from: &str, to: &str) {
        self.tree.make(to);
        let procs = self
            .mount
            .join(to.trim_start_matches('/'))
            .join("cgroup.procs");
        for pid in self.procs(from) {
            fs::write(&procs, pid.to_string()).expect("move a process");
        }
        wait_for("the cgroup to empty", WAIT, || self.procs(from).is_empty());
    }
}

/// `trace --json` with `args`, once its banner is out.
fn trace(args: &[&str]) -> Streaming {
    let mut all = vec!["trace", "--json"];
    all.extend_from_slice(args);
    let run = Streaming::start(&all);
    let mut errs = Vec::new();
    Streaming::wait_line(&run.err, &mut errs, "the banner", WAIT, |l| {
        l.contains("tracing")
    });
    run
}

/// Events printed until `done` holds on them (all events so far).
fn events_until(run: &Streaming, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    let mut events = Vec::new();
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        match run.out.recv_timeout(left) {
            Ok(line) => events.push(serde_json::from_str(&line).expect("a JSON event")),
            Err(_) => panic!("timed out waiting for {what}; events: {events:#?}"),
        }
    }
    events
}

/// Ctrl-C: the rest of the events, and the count of the kernel's
/// "events of other workloads dropped in the kernel" line (`None` when the
/// kernel filtered no workload).
fn stop(run: Streaming, events: &mut Vec<Value>) -> Option<u64> {
    run.signal(libc::SIGINT);
    let (status, out, err) = run.wait(WAIT);
    assert!(status.success(), "{status}: {err:?}");
    events.extend(
        out.iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()),
    );
    err.iter().find_map(|l| {
        l.strip_suffix(" events of other workloads dropped in the kernel")?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    })
}

fn close_waits(events: &[Value], port: u16) -> usize {
    events
        .iter()
        .filter(|e| e["new"] == "CLOSE_WAIT" && e["sport"] == port)
        .count()
}

fn touches(e: &Value, port: u16) -> bool {
    e["sport"] == port || e["dport"] == port
}

/// `--cgroup` naming one unit's cgroup, `--unit` naming it: only its events
/// show, the other's were dropped by the kernel, its CLOSE_WAIT count is
/// `ss`'s.
#[test]
fn the_kernel_drops_other_workloads_events_by_cgroup_and_by_unit() {
    let mut h = host("cg");
    let kept_path = format!("{}/shop.slice/{}", h.base, h.unit);
    let other_path = format!("{}/other.slice/billing.service", h.base);
    let kept = h.server(&kept_path, None);
    let other = h.server(&other_path, None);
    let (pk, po) = (kept.to_string(), other.to_string());

    for (round, flag, value) in [
        (0, "--cgroup", kept_path.as_str()),
        (1, "--unit", h.unit.as_str()),
    ] {
        let run = trace(&[flag, value, "--lport", &pk, "--lport", &po]);
        let (n_kept, n_other) = (2 + round, 3 + round);
        leak(kept, n_kept, None);
        leak(other, n_other, None);
        let want_kept = ss_count("close-wait", kept, None);
        let want_other = ss_count("close-wait", other, None);
        let mut events = events_until(&run, "the kept server's CLOSE_WAITs", |ev| {
            close_waits(ev, kept) == n_kept
        });
        let dropped = stop(run, &mut events).expect("the kernel filtered the workload");

        assert_eq!(close_waits(&events, kept), n_kept, "{flag}: {events:#?}");
        assert_eq!(
            want_kept,
            (2..=2 + round).sum::<usize>(),
            "{flag}: ss, kept"
        );
        assert_eq!(
            want_other,
            (3..=3 + round).sum::<usize>(),
            "{flag}: ss, other"
        );
        assert!(
            events.iter().all(|e| !touches(e, other)),
            "{flag}: the other server's events show: {events:#?}"
        );
        assert!(
            events.iter().all(|e| e["unit"] == h.unit.as_str()),
            "{flag}: {events:#?}"
        );
        eprintln!(
            "{flag}: kept {n_kept} CLOSE_WAIT (ss {want_kept} in all), {dropped} events of the other server dropped in the kernel"
        );
        // Each of the other server's connections made at least its accept
        // and its CLOSE_WAIT transition, dropped in the kernel (nothing
        // else passes the --lport part of the kernel's filter).
        assert!(
            dropped >= 2 * n_other as u64,
            "{flag}: {dropped} dropped in the kernel, want >= {}",
            2 * n_other
        );
    }

    // stats --unit: the kept unit's CLOSE_WAIT count equals ss; the other
    // never shows.
    let stats = Streaming::start(&["stats", "--json", "--interval", "0.5", "--unit", &h.unit]);
    let want = ss_count("close-wait", kept, None) as u64;
    let mut seen = Vec::new();
    let line = Streaming::wait_line(&stats.out, &mut seen, "stats equal to ss", WAIT, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["close_wait_by_workload"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["workload"] == h.unit.as_str() && r["count"] == want)
            })
        })
    });
    let v: Value = serde_json::from_str(&line).unwrap();
    let rows = v["close_wait_by_workload"].as_array().unwrap();
    assert!(
        rows.iter().all(|r| r["workload"] == h.unit.as_str()),
        "{rows:?}"
    );
}

/// `--netns NAME`: the server in that namespace is kept, the host's
/// server's events are dropped in the kernel.
#[test]
fn the_kernel_drops_other_namespaces_events() {
    let mut h = host("ns");
    let ns = NetNs::new("kfns");
    let inside = h.server(&format!("{}/ns.slice/in.service", h.base), Some(&ns.name));
    let outside = h.server(&format!("{}/host.slice/out.service", h.base), None);
    let (pi, po) = (inside.to_string(), outside.to_string());
    let run = trace(&["--netns", &ns.name, "--lport", &pi, "--lport", &po]);
    leak(inside, 2, Some(&ns));
    leak(outside, 3, None);
    let mut events = events_until(&run, "the namespace's CLOSE_WAITs", |ev| {
        close_waits(ev, inside) == 2
    });
    let dropped = stop(run, &mut events).expect("the kernel filtered the namespace");
    assert_eq!(ss_count("close-wait", inside, Some(&ns.name)), 2);
    assert_eq!(close_waits(&events, inside), 2, "{events:#?}");
    assert!(
        events.iter().all(|e| e["netns"] == ns.inode()),
        "{events:#?}"
    );
    if inside != outside {
        assert!(events.iter().all(|e| !touches(e, outside)), "{events:#?}");
    }
    eprintln!("--netns: {dropped} events of the host's server dropped in the kernel");
    assert!(dropped >= 6, "{dropped} dropped in the kernel, want >= 6");
}

/// A unit restarted while tracing (its cgroup removed and made again: a new
/// id) is still kept: the kernel checks its parent slice.
#[test]
fn a_unit_restarted_while_tracing_is_still_kept() {
    let mut h = host("rs");
    let slice = format!("{}/shop.slice", h.base);
    let unit_path = format!("{slice}/{}", h.unit);
    let first = h.server(&unit_path, None);
    let id_before = h.tree.make(&unit_path);
    let run = trace(&["--unit", &h.unit]);
    leak(first, 2, None);
    let mut events = events_until(&run, "the first run's CLOSE_WAITs", |ev| {
        close_waits(ev, first) == 2
    });

    // The restart: the old process leaves, the cgroup is removed and made
    // again (a new id), a new server starts in it.
    h.move_all(&unit_path, &format!("{}/parked", h.base));
    h.tree.remove(&unit_path);
    let second = h.server(&unit_path, None);
    let id_after = h.tree.make(&unit_path);
    assert_ne!(id_before, id_after, "the cgroup was made again");
    leak(second, 3, None);
    events.extend(events_until(
        &run,
        "the restarted unit's CLOSE_WAITs",
        |ev| close_waits(ev, second) == 3,
    ));
    let dropped = stop(run, &mut events);
    assert!(dropped.is_some(), "the kernel filtered by the unit's slice");
    assert_eq!(ss_count("close-wait", second, None), 3);
    let restarted: Vec<&Value> = events.iter().filter(|e| touches(e, second)).collect();
    assert!(
        restarted
            .iter()
            .all(|e| e["cgroup"] == id_after && e["unit"] == h.unit.as_str()),
        "{restarted:#?}"
    );
}

/// `--netns NAME` given before `ip netns add NAME`: one warning at start,
/// and the namespace's events show once it exists (the name is looked for
/// again every second).
#[test]
fn a_netns_named_before_it_exists_is_kept_once_it_does() {
    let mut h = host("late-ns");
    // `NetNs::new(tag)` names it `tcptrace-test-TAG-PID`.
    let name = format!("tcptrace-test-late-{}", std::process::id());
    let run = Streaming::start(&["trace", "--json", "--netns", &name]);
    let mut errs = Vec::new();
    Streaming::wait_line(&run.err, &mut errs, "the warning", WAIT, |l| {
        l.contains("names no namespace") && l.contains(&name)
    });
    Streaming::wait_line(&run.err, &mut errs, "the banner", WAIT, |l| {
        l.contains("tracing")
    });
    let ns = NetNs::new("late");
    assert_eq!(ns.name, name);
    let port = h.server(&format!("{}/late.service", h.base), Some(&ns.name));
    // Connections until the events show (the first ones may come before
    // the name is looked for again).
    let deadline = Instant::now() + WAIT;
    let mut events: Vec<Value> = Vec::new();
    while close_waits(&events, port) == 0 {
        assert!(
            Instant::now() < deadline,
            "no event of the namespace: {events:#?}"
        );
        leak(port, 1, Some(&ns));
        while let Ok(line) = run.out.recv_timeout(Duration::from_millis(500)) {
            events.push(serde_json::from_str(&line).expect("a JSON event"));
        }
    }
    stop(run, &mut events);
    assert!(
        events.iter().all(|e| e["netns"] == ns.inode()),
        "{events:#?}"
    );
}

/// With file handles refused (no CAP_DAC_READ_SEARCH: cgroup ids are then
/// found by walking the tree, at most every 2 s), a workload started just
/// after another one's first event is still kept: a verdict from a lookup
/// that could not finish is asked again, never kept for the whole run.
#[test]
fn a_workload_started_while_tracing_is_kept_when_handles_are_refused() {
    let mut h = host("walk");
    let first = h.server(&format!("{}/b.service", h.base), None);
    let run = Streaming::start_program(
        "setpriv",
        &[
            "--inh-caps=-dac_read_search",
            "--bounding-set=-dac_read_search",
            env!("CARGO_BIN_EXE_tcptrace"),
            "trace",
            "--json",
            "--cgroup",
            &h.base,
        ],
    );
    let mut errs = Vec::new();
    Streaming::wait_line(&run.err, &mut errs, "the banner", WAIT, |l| {
        l.contains("tracing")
    });
    leak(first, 1, None);
    let mut events = events_until(&run, "b.service's event", |ev| close_waits(ev, first) == 1);
    // Started right after: its first lookup finds the walk not due yet.
    let second = h.server(&format!("{}/a.service", h.base), None);
    let deadline = Instant::now() + WAIT;
    while close_waits(&events, second) == 0 {
        assert!(
            Instant::now() < deadline,
            "a.service's events never kept: {events:#?}"
        );
        leak(second, 1, None);
        while let Ok(line) = run.out.recv_timeout(Duration::from_millis(500)) {
            events.push(serde_json::from_str(&line).expect("a JSON event"));
        }
    }
    stop(run, &mut events);
    assert!(
        events
            .iter()
            .filter(|e| touches(e, second))
            .all(|e| e["workload"] == "a.service"),
        "{events:#?}"
    );
}

/// The workload filters on the commands that are not live tracers:
/// `doctor` (live runs; `--from` refuses them in one line), `report` and
/// `replay` (`--netns` by the recorded inode; a name is refused).
#[test]
fn doctor_report_and_replay_take_the_filters() {
    let bin = env!("CARGO_BIN_EXE_tcptrace");
    let one_line_exit_2 = |args: &[&str], says: &str| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    one_line_exit_2(
        &["doctor", "--from", "/nonexistent", "--unit", "x"],
        "doctor --from diagnoses the whole recording",
    );
    one_line_exit_2(
        &["report", "/nonexistent", "--netns", "blue"],
        "--netns blue",
    );
    one_line_exit_2(&["replay", "/nonexistent", "--netns", "0"], "--netns 0");
    one_line_exit_2(&["doctor", "--unit", "bad/unit"], "--unit");

    // A live doctor scoped to a unit that runs nothing: it says so once,
    // and diagnoses.
    let out = std::process::Command::new(bin)
        .args([
            "doctor",
            "--duration",
            "1",
            "--json",
            "--unit",
            "nothing-here-at-all.service",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{err}");
    assert!(err.contains("nothing-here-at-all.service"), "{err}");
    let findings: Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    assert!(findings.is_array(), "{findings}");
}
