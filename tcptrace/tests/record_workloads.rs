//! Recordings keep workload names: a real server process moved into a real
//! cgroup shaped `…/system.slice/payments.service` (under the discovered
//! cgroup2 root) leaks CLOSE_WAIT while `tcptrace record` runs; then the
//! server is killed and its cgroup removed. `report --json` still names
//! `payments.service` for those sockets (as many as `ss` showed),
//! `report --unit payments.service` keeps them, `--unit other.service`
//! warns and shows none, and `replay --json` events carry the unit.
//!
//! And a leak older than the recording: sockets that only the opening
//! sock_diag snapshot knows, some of them with no owner a /proc walk can
//! find (in flight in a unix socket's queue), are named after the cgroup
//! the kernel reports for each socket, after that cgroup is gone.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader},
    net::{Shutdown, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{Running, free_port, ss_count, wait_for};
use serde_json::Value;
use tcptrace::seed::cgroupfs::Cgroup2Root;

const WAIT: Duration = Duration::from_secs(30);
const LEAKS: usize = 6;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tcptrace"))
}

/// The test's cgroups (removed deepest first) and its server (killed by
/// pid), whatever happens.
struct Cleanup {
    dirs: Vec<PathBuf>,
    server: Option<Child>,
}

impl Cleanup {
    fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }

    fn remove_dirs(&mut self) {
        for dir in self.dirs.drain(..).rev() {
            fs::remove_dir(&dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.kill_server();
        for dir in self.dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn run_json(args: &[&str]) -> (Value, String) {
    let out = bin().args(args).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    (serde_json::from_slice(&out.stdout).unwrap(), err)
}

#[test]
fn a_recording_names_the_workload_after_its_cgroup_is_gone() {
    let root = Cgroup2Root::discover().expect("a cgroup2 mount");
    let mount = root.mount_point().to_path_buf();
    let cg = format!(
        "/tcptrace-rec-{}/system.slice/payments.service",
        std::process::id()
    );
    let mut clean = Cleanup {
        dirs: Vec::new(),
        server: None,
    };
    let mut dir = mount.clone();
    for comp in cg.trim_start_matches('/').split('/') {
        dir.push(comp);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        clean.dirs.push(dir.clone());
    }
    let procs = dir.join("cgroup.procs");

    let port = free_port(false);
    let file = std::env::temp_dir().join(format!("tcptrace-{}-wl.tcptrace", std::process::id()));
    let _ = fs::remove_file(&file);
    let path = file.to_str().unwrap().to_string();
    let p = port.to_string();
    let record = Running::start(&["record", "-o", &path, "--port", &p], "recording to");

    // The server moves itself into the cgroup before it listens, accepts
    // LEAKS connections and never closes them.
    let script = format!(
        "import os,socket,sys,time\n\
         open({procs:?},'w').write(str(os.getpid()))\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('127.0.0.1',{port})); s.listen(64)\n\
         sys.stdout.write('listening\\n'); sys.stdout.flush()\n\
         held=[s.accept()[0] for _ in range({LEAKS})]\n\
         sys.stdout.write('held\\n'); sys.stdout.flush()\n\
         time.sleep(120)\n",
        procs = procs.to_str().unwrap()
    );
    let mut server = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    clean.server = Some(server);
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let mut clients = Vec::new();
    for _ in 0..LEAKS {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        clients.push(c);
    }
    assert_eq!(lines.next().unwrap().unwrap(), "held");
    wait_for("the server's sockets in CLOSE_WAIT", WAIT, || {
        ss_count("close-wait", port, None) == LEAKS
    });
    let seen_by_ss = ss_count("close-wait", port, None);

    // The workload vanishes: the server is killed and its cgroup removed.
    clean.kill_server();
    wait_for("the CLOSE_WAIT sockets to be gone", WAIT, || {
        ss_count("close-wait", port, None) == 0
    });
    clean.remove_dirs();
    assert!(!dir.exists());
    drop(clients);
    let (status, _, err) = record.stop();
    assert!(status.success(), "{err}");

    let (report, _) = run_json(&["report", "--json", &path]);
    let rows = report["close_wait_workload_holders"].as_array().unwrap();
    let payments = rows
        .iter()
        .find(|r| r["workload"] == "payments.service")
        .unwrap_or_else(|| panic!("payments.service in {rows:?}"));
    assert_eq!(payments["peak"], seen_by_ss as u64, "{payments}");
    assert_eq!(payments["unit"], "payments.service");
    assert_eq!(payments["workload_kind"], "unit");
    assert_eq!(payments["cgroup_path"], cg.as_str());
    let holders = report["close_wait_holders"].as_array().unwrap();
    let holder = holders
        .iter()
        .find(|h| h["comm"] == "python3")
        .unwrap_or_else(|| panic!("python3 in {holders:?}"));
    assert_eq!(holder["unit"], "payments.service");
    assert_eq!(holder["peak"], seen_by_ss as u64);

    // Filters on the recorded names.
    let (kept, err) = run_json(&["report", "--json", "--unit", "payments.service", &path]);
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(
        kept["close_wait_workload_holders"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(kept["close_wait_holders"][0]["unit"], "payments.service");
    let (none, err) = run_json(&["report", "--json", "--unit", "other.service", &path]);
    assert_eq!(
        err.lines().filter(|l| l.contains("warning")).count(),
        1,
        "{err}"
    );
    assert!(err.contains("other.service"), "{err}");
    assert!(
        none["close_wait_workload_holders"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(none["close_wait_holders"].as_array().unwrap().is_empty());
    let bad = bin()
        .args(["report", "--cgroup", "relative/path", &path])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);

    // replay: the events carry the unit.
    let out = bin()
        .args(["replay", "--json", "--as-fast-as-possible", &path])
        .output()
        .unwrap();
    assert!(out.status.success());
    let events: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let into_close_wait = events
        .iter()
        .filter(|e| e["new"] == "CLOSE_WAIT" && e["unit"] == "payments.service")
        .count();
    assert_eq!(into_close_wait, seen_by_ss, "{events:?}");
    let replay_filtered = bin()
        .args([
            "replay",
            "--as-fast-as-possible",
            "--unit",
            "other.service",
            &path,
        ])
        .output()
        .unwrap();
    assert!(replay_filtered.status.success());
    assert_eq!(
        String::from_utf8(replay_filtered.stdout)
            .unwrap()
            .lines()
            .count(),
        1,
        "only the header"
    );
    let _ = fs::remove_file(&file);
}

/// A child killed (by pid) and reaped when dropped: declared after the
/// cgroups, it goes before them.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_leak_older_than_the_recording_is_named_from_its_sockets_cgroup() {
    use common::cgroups::CgroupTree;
    use tcptrace::seed::{owners::socket_owners, sock_diag::dump_tcp};
    use tcptrace_core::model::TcpState;
    const IN_FLIGHT: usize = 3;

    let root = Cgroup2Root::discover().expect("a cgroup2 mount");
    let mount = root.mount_point().to_path_buf();
    let cg = format!(
        "/tcptrace-seedrec-{}/system.slice/ledger.service",
        std::process::id()
    );
    let mut tree = CgroupTree::new(&mount);
    let cg_id = tree.make(&cg);
    let procs = mount.join(cg.trim_start_matches('/')).join("cgroup.procs");
    let port = free_port(false);

    // The server moves itself into the cgroup, listens, accepts LEAKS
    // connections and never closes them; IN_FLIGHT of them it sends over
    // a unix socket pair it never reads and closes its own descriptor: no
    // process has those sockets in its descriptor table any more (no owner
    // for a /proc walk), yet they stay in CLOSE_WAIT.
    let script = format!(
        "import os,socket,sys,time\n\
         open({procs:?},'w').write(str(os.getpid()))\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('127.0.0.1',{port})); s.listen(64)\n\
         sys.stdout.write('listening\\n'); sys.stdout.flush()\n\
         held=[s.accept()[0] for _ in range({LEAKS})]\n\
         a,b=socket.socketpair(socket.AF_UNIX,socket.SOCK_DGRAM)\n\
         for c in held[:{IN_FLIGHT}]:\n\
         \x20   socket.send_fds(a,[b'x'],[c.fileno()]); c.close()\n\
         held=held[{IN_FLIGHT}:]\n\
         sys.stdout.write('held\\n'); sys.stdout.flush()\n\
         time.sleep(120)\n",
        procs = procs.to_str().unwrap()
    );
    let mut server = Killed(
        Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let mut clients = Vec::new();
    for _ in 0..LEAKS {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        clients.push(c);
    }
    assert_eq!(lines.next().unwrap().unwrap(), "held");
    wait_for("the server's sockets in CLOSE_WAIT", WAIT, || {
        ss_count("close-wait", port, None) == LEAKS
    });
    let seen_by_ss = ss_count("close-wait", port, None);

    // What the recorder's snapshot will see: every socket in the cgroup,
    // IN_FLIGHT of them with no owner to find.
    let owners = socket_owners();
    let leaked: Vec<_> = dump_tcp()
        .unwrap()
        .into_iter()
        .filter(|s| s.sport == port && s.state == TcpState::CloseWait)
        .collect();
    assert_eq!(leaked.len(), seen_by_ss);
    assert!(leaked.iter().all(|s| s.cgroup == Some(cg_id)), "{leaked:?}");
    let ownerless = leaked
        .iter()
        .filter(|s| !owners.contains_key(&s.inode))
        .count();
    assert_eq!(ownerless, IN_FLIGHT, "{leaked:?}");

    let file = std::env::temp_dir().join(format!(
        "tcptrace-{}-seeded-wl.tcptrace",
        std::process::id()
    ));
    let _ = fs::remove_file(&file);
    let path = file.to_str().unwrap().to_string();
    let p = port.to_string();
    // The banner follows the opening snapshot: the file has it.
    let record = Running::start(&["record", "-o", &path, "--port", &p], "recording to");

    // The workload vanishes: the server is killed and its cgroup removed.
    drop(server);
    wait_for("the CLOSE_WAIT sockets to be gone", WAIT, || {
        ss_count("close-wait", port, None) == 0
    });
    tree.remove(&cg);
    drop(clients);
    let (status, _, err) = record.stop();
    assert!(status.success(), "{err}");

    let (report, _) = run_json(&["report", "--json", &path]);
    let rows = report["close_wait_workload_holders"].as_array().unwrap();
    let ledger = rows
        .iter()
        .find(|r| r["workload"] == "ledger.service")
        .unwrap_or_else(|| panic!("ledger.service in {rows:?}"));
    assert_eq!(ledger["peak"], seen_by_ss as u64, "{ledger}");
    assert_eq!(ledger["unit"], "ledger.service");
    assert_eq!(ledger["cgroup_path"], cg.as_str());
    assert_eq!(ledger["cgroups"], serde_json::json!([cg_id]));
    // The process rows stay as they are: python3 holds the sockets it
    // kept, in its workload; the row of unknown owners names none.
    let holders = report["close_wait_holders"].as_array().unwrap();
    let python = holders
        .iter()
        .find(|h| h["comm"] == "python3")
        .unwrap_or_else(|| panic!("python3 in {holders:?}"));
    assert_eq!(python["peak"], (LEAKS - IN_FLIGHT) as u64, "{python}");
    assert_eq!(python["unit"], "ledger.service");
    let unknown = holders
        .iter()
        .find(|h| h["pid"].is_null())
        .unwrap_or_else(|| panic!("the unknown owners' row in {holders:?}"));
    assert_eq!(unknown["peak"], IN_FLIGHT as u64, "{unknown}");
    assert!(unknown["workload"].is_null(), "{unknown}");
    // The filter on the recorded names keeps the workload's row.
    let (kept, _) = run_json(&["report", "--json", "--unit", "ledger.service", &path]);
    assert_eq!(
        kept["close_wait_workload_holders"][0]["peak"],
        seen_by_ss as u64
    );
    let _ = fs::remove_file(&file);
}
