//! Workloads end to end, as root on the real kernel: three real servers in
//! real cgroup v2 groups made under the *discovered* cgroup2 root, shaped
//! like a systemd unit (`…/system.slice/payments.service`), a Docker
//! container (`…/docker-<64hex>.scope`, name from a fake `config.v2.json`)
//! and a Kubernetes/containerd container (`…/kubepods-burstable-pod<uid>
//! .slice/cri-containerd-<64hex>.scope`, names from `/var/log/containers`-
//! style files), each moved into its group before it listens (`pre_exec`
//! writes `cgroup.procs`), the Kubernetes one in its own network
//! namespace, each leaking CLOSE_WAIT. The names must show in `trace
//! --json`, `stats --json` (`close_wait_by_workload` counts equal to `ss`,
//! their growth, `by_workload`), `doctor --json` (the leak's `workload`),
//! `top` in tmux (the WORKLOAD column, then `w`),
//! `watch --json` and the metrics, and a real Prometheus scraping tcptrace
//! must see `tcptrace_workload_close_wait_sockets` equal to `ss`. Bad
//! filter input: exit 2 with one line, or one warning.

mod common;

use std::{
    fs,
    net::TcpStream,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{
    NetNs, Streaming,
    cgroups::{CgroupTree, FakeRoot, hex_id},
    free_port, http_get, metric_value, ss_count,
    tmux::Tmux,
    wait_for,
};
use serde_json::Value;
use tcptrace::seed::cgroupfs::Cgroup2Root;

const WAIT: Duration = Duration::from_secs(30);
const UID: &str = "1d2c3b4a-0000-1111-2222-333344445555";
const BIN: &str = env!("CARGO_BIN_EXE_tcptrace");

/// Accepts forever and never closes: every connection the client closes
/// stays in CLOSE_WAIT. Prints its port once listening.
const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(128)
print(s.getsockname()[1], flush=True)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
"#;

/// `n` connections to 127.0.0.1:`port` closed by the client: the server's
/// ends stay in CLOSE_WAIT.
fn leak(port: u16, n: usize, netns: Option<&NetNs>) {
    let go = move || {
        for _ in 0..n {
            let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            drop(c);
        }
    };
    match netns {
        Some(ns) => ns.run(go),
        None => go(),
    }
}

struct Servers {
    tree: CgroupTree,
    paths: [String; 3],
    _fake: FakeRoot,
    ns: NetNs,
    roots: String,
    base: String,
    /// (expected workload, port, in the netns)
    expect: Vec<(String, u16, bool)>,
}

impl Servers {
    fn ss(&self, port: u16, in_ns: bool) -> usize {
        ss_count("close-wait", port, in_ns.then_some(self.ns.name.as_str()))
    }

    /// Starts the three servers (after the tracer, so that their listening
    /// sockets' owners are captured: accepted sockets inherit them).
    fn start(&mut self) {
        let unit_port = self.tree.server_in(&self.paths[0], None, SERVER);
        let docker_port = self.tree.server_in(&self.paths[1], None, SERVER);
        let k8s_port = self
            .tree
            .server_in(&self.paths[2], Some(&self.ns.name), SERVER);
        self.expect = vec![
            ("payments.service".into(), unit_port, false),
            ("docker/web-1".into(), docker_port, false),
            ("shop/payments-7d9f-abcde/app".into(), k8s_port, true),
        ];
    }
}

fn setup(tag: &str) -> Servers {
    let root = Cgroup2Root::discover().expect("the test host has a cgroup2 mount");
    let mount = root.mount_point().to_path_buf();
    let base = format!("/tcptrace-test-{tag}-{}", std::process::id());
    let mut tree = CgroupTree::new(&mount);
    let (docker_id, k8s_id) = (hex_id(1), hex_id(2));
    let uid_ = UID.replace('-', "_");
    let unit_path = format!("{base}/system.slice/payments.service");
    let docker_path = format!("{base}/system.slice/docker-{docker_id}.scope");
    let k8s_path = format!(
        "{base}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{k8s_id}.scope"
    );
    for p in [&unit_path, &docker_path, &k8s_path] {
        tree.make(p);
    }
    let fake = FakeRoot::new(tag);
    fake.write(
        &format!("var/lib/docker/containers/{docker_id}/config.v2.json"),
        r#"{"ID":"x","Name":"/web-1","State":{"Running":true,"Pid":1},"Config":{"Labels":{}}}"#,
    );
    fake.write(
        &format!("var/log/containers/payments-7d9f-abcde_shop_app-{k8s_id}.log"),
        "",
    );
    fake.mkdir(&format!("var/log/pods/shop_payments-7d9f-abcde_{UID}/app"));
    let ns = NetNs::new(tag);
    Servers {
        tree,
        paths: [unit_path, docker_path, k8s_path],
        roots: fake.0.display().to_string(),
        _fake: fake,
        ns,
        base,
        expect: Vec::new(),
    }
}

fn leak_all(s: &Servers, n: usize) {
    for (i, (_, port, in_ns)) in s.expect.iter().enumerate() {
        leak(*port, n + i, in_ns.then_some(&s.ns));
    }
}

fn json_lines_until(run: &Streaming, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut seen = Vec::new();
    let line = Streaming::wait_line(&run.out, &mut seen, what, WAIT, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| ok(&v))
    });
    serde_json::from_str(&line).unwrap()
}

fn banner(run: &Streaming, words: &str) {
    let mut errs = Vec::new();
    Streaming::wait_line(&run.err, &mut errs, "banner", WAIT, |l| l.contains(words));
}

#[test]
fn trace_stats_watch_and_metrics_name_units_containers_and_pods() {
    let mut s = setup("e2e");

    // trace --json: the events of each server's CLOSE_WAIT name it.
    let trace = Streaming::start(&["trace", "--json", "--workload-roots", &s.roots]);
    banner(&trace, "tracing");
    s.start();
    leak_all(&s, 2);
    for (workload, port, _) in &s.expect {
        let e = json_lines_until(&trace, &format!("a CLOSE_WAIT event of {workload}"), |v| {
            v["new"] == "CLOSE_WAIT" && v["sport"] == *port
        });
        assert_eq!(e["workload"], *workload, "{e}");
        assert!(e["cgroup"].is_u64(), "cgroup stays the id: {e}");
        assert!(
            e["cgroup_path"].as_str().unwrap().starts_with(&s.base),
            "{e}"
        );
    }
    drop(trace);

    // stats --json: close_wait_by_workload counts equal ss per server.
    // (Only this test's cgroups: another run of these tests on the host
    // has workloads of the same names.)
    let stats = Streaming::start(&[
        "stats",
        "--json",
        "--interval",
        "0.5",
        "--cgroup",
        &s.base,
        "--workload-roots",
        &s.roots,
    ]);
    banner(&stats, "stats every");
    let want: Vec<(String, u64)> = s
        .expect
        .iter()
        .map(|(w, port, ns)| (w.clone(), s.ss(*port, *ns) as u64))
        .collect();
    assert!(want.iter().all(|(_, n)| *n >= 2), "{want:?}");
    let line = json_lines_until(&stats, "close_wait_by_workload equal to ss", |v| {
        want.iter().all(|(w, n)| {
            v["close_wait_by_workload"]
                .as_array()
                .is_some_and(|rows| rows.iter().any(|r| r["workload"] == *w && r["count"] == *n))
        })
    });
    let rows = line["close_wait_by_workload"].as_array().unwrap();
    let k8s = rows
        .iter()
        .find(|r| r["workload"] == "shop/payments-7d9f-abcde/app")
        .unwrap();
    assert_eq!(k8s["workload_kind"], "container", "{k8s}");
    assert_eq!(k8s["namespace"], "shop", "{k8s}");
    assert_eq!(k8s["pod"], "payments-7d9f-abcde", "{k8s}");
    assert_eq!(k8s["pod_uid"], UID, "{k8s}");
    assert_eq!(k8s["qos"], "burstable", "{k8s}");
    let docker = rows
        .iter()
        .find(|r| r["workload"] == "docker/web-1")
        .unwrap();
    assert_eq!(docker["container"], "web-1", "{docker}");
    assert_eq!(
        line["workloads"]["method"], "handle",
        "{}",
        line["workloads"]
    );
    let procs = line["close_wait_by_process"].as_array().unwrap();
    assert!(
        procs
            .iter()
            .any(|p| p["workload"] == "payments.service" && p["unit"] == "payments.service"),
        "{procs:?}"
    );
    // by_workload: each server's CLOSE_WAIT among its live sockets per state.
    let by = line["by_workload"].as_array().unwrap();
    assert!(by.len() <= 51, "capped: {}", by.len());
    for (w, n) in &want {
        let row = by.iter().find(|r| r["workload"] == *w);
        assert!(
            row.is_some_and(|r| r["states"]["CLOSE_WAIT"].as_u64() >= Some(*n)),
            "{w}: {by:?}"
        );
    }
    // Growth per workload: 3 more leaked by the unit show in its rates.
    for r in rows {
        for f in ["growth_per_min", "growth_per_min_5m", "growth_per_min_15m"] {
            assert!(r[f].is_f64(), "{f} in {r}");
        }
    }
    let (_, unit_port, _) = s.expect[0];
    leak(unit_port, 3, None);
    let unit_now = s.ss(unit_port, false) as u64;
    let line = json_lines_until(&stats, "payments.service's growth", |v| {
        v["close_wait_by_workload"].as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["workload"] == "payments.service"
                    && r["count"] == unit_now
                    && r["growth_delta"].as_i64() >= Some(3)
            })
        })
    });
    let unit = line["close_wait_by_workload"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["workload"] == "payments.service")
        .unwrap()
        .clone();
    assert!(unit["growth_per_min"].as_f64() > Some(0.0), "{unit}");
    drop(stats);

    // doctor --json: the leak's finding carries the workload object.
    leak(unit_port, 20, None);
    let out = Command::new(BIN)
        .args(["doctor", "--json", "--duration", "1"])
        .output()
        .unwrap();
    let findings: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let leak_finding = findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "close_wait_leak" && f["workload"]["workload"] == "payments.service")
        .unwrap_or_else(|| panic!("no close_wait_leak naming payments.service: {findings}"));
    assert_eq!(
        leak_finding["workload"]["workload_kind"], "unit",
        "{leak_finding}"
    );
    assert_eq!(
        leak_finding["workload"]["unit"], "payments.service",
        "{leak_finding}"
    );
    assert!(leak_finding["workload"]["pod"].is_null(), "{leak_finding}");

    // top in a real terminal: the WORKLOAD column, then `w`.
    {
        let tmux = Tmux::start(
            "wl",
            160,
            32,
            &format!("{BIN} top --interval 0.5 --workload-roots {}", s.roots),
        );
        tmux.wait_for("the first refresh", |sc| sc.contains(" up "));
        tmux.keys(&["2"]);
        tmux.wait_for("the WORKLOAD column naming the unit", |sc| {
            sc.contains("WORKLOAD") && sc.contains("payments.service")
        });
        tmux.keys(&["w"]);
        tmux.wait_for("CLOSE_WAIT by workload", |sc| {
            sc.contains("CLOSE_WAIT by workload")
                && sc.contains("docker/web-1")
                && sc.contains("shop/payments-7d9f-abcde/app")
        });
    }

    // watch --json with metrics: the alert names the workload; the
    // per-workload series equal ss.
    let metrics_port = free_port(false);
    let listen = format!("127.0.0.1:{metrics_port}");
    let watch = Streaming::start(&[
        "watch",
        "--json",
        "--interval",
        "0.5",
        "--close-wait",
        "2",
        "--metrics",
        &listen,
        "--cgroup",
        &s.base,
        "--workload-roots",
        &s.roots,
    ]);
    banner(&watch, "watching every");
    let alert = json_lines_until(&watch, "an alert naming payments.service", |v| {
        v["rule"] == "close_wait_count" && v["workload"] == "payments.service"
    });
    assert_eq!(alert["unit"], "payments.service", "{alert}");
    assert!(
        alert["cgroup"]
            .as_str()
            .is_some_and(|c| c.ends_with("/system.slice/payments.service")),
        "cgroup stays the path: {alert}"
    );
    for (workload, port, ns) in &s.expect {
        let kind = if workload == "payments.service" {
            "unit"
        } else {
            "container"
        };
        let series = format!(
            "tcptrace_workload_close_wait_sockets{{workload=\"{workload}\",workload_kind=\"{kind}\"}}"
        );
        let want = s.ss(*port, *ns) as f64;
        wait_for(&format!("{series} = {want}"), WAIT, || {
            metric_value(&http_get(metrics_port, "/metrics").2, &series) == Some(want)
        });
    }
    let body = http_get(metrics_port, "/metrics").2;
    assert!(
        body.lines()
            .any(|l| l.starts_with("tcptrace_close_wait_sockets{")
                && l.contains("workload=\"payments.service\"")),
        "{body}"
    );

    // A real Prometheus scraping tcptrace, queried for the unit's count.
    let prom = Prometheus::start(metrics_port);
    let want = s.ss(s.expect[0].1, false) as f64;
    wait_for(
        "Prometheus to see payments.service's CLOSE_WAIT",
        Duration::from_secs(60),
        || {
            prom.query("tcptrace_workload_close_wait_sockets{workload=\"payments.service\"}")
                == Some(want)
        },
    );
    drop(prom);
    drop(watch);

    // watch --group-by workload: the rule is the workload's.
    let watch = Streaming::start(&[
        "watch",
        "--json",
        "--interval",
        "0.5",
        "--close-wait",
        "3",
        "--group-by",
        "workload",
        "--cgroup",
        &s.base,
        "--workload-roots",
        &s.roots,
    ]);
    banner(&watch, "watching every");
    let alert = json_lines_until(&watch, "an alert about docker/web-1", |v| {
        v["rule"] == "close_wait_count" && v["workload"] == "docker/web-1"
    });
    assert_eq!(alert["container"], "web-1", "{alert}");
    assert_eq!(alert["workload_kind"], "container", "{alert}");
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("workload docker/web-1"),
        "{alert}"
    );
}

/// Debian's `prometheus`, on a free loopback port with its own storage,
/// scraping tcptrace every second; stopped by pid when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target_port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("tcptrace-prom-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port(false);
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/bin/prometheus runs (Debian's prometheus package)");
        Self { child, port, dir }
    }

    /// The single value of an instant query, if any.
    fn query(&self, expr: &str) -> Option<f64> {
        let q: String = expr
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let conn = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        drop(conn);
        let (status, _, body) = http_get(self.port, &format!("/api/v1/query?query={q}"));
        if !status.contains("200") {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn filters_keep_the_workloads_asked_for_and_say_so_on_bad_input() {
    let mut s = setup("filters");
    // --cgroup: the two servers below system.slice, not the pod's.
    let system = format!("{}/system.slice", s.base);
    let trace = Streaming::start(&[
        "trace",
        "--json",
        "--cgroup",
        &system,
        "--workload-roots",
        &s.roots,
    ]);
    banner(&trace, "tracing");
    s.start();
    // The pod's first, then the others: what arrives before the unit's
    // and docker's must not include the pod's.
    leak(s.expect[2].1, 2, Some(&s.ns));
    leak(s.expect[0].1, 2, None);
    leak(s.expect[1].1, 2, None);
    let mut seen_ports = std::collections::BTreeSet::new();
    let mut lines = Vec::new();
    while seen_ports.len() < 2 {
        let line = Streaming::wait_line(&trace.out, &mut lines, "events of both", WAIT, |l| {
            l.contains("CLOSE_WAIT")
        });
        let v: Value = serde_json::from_str(&line).unwrap();
        let port = v["sport"].as_u64().unwrap() as u16;
        assert_ne!(port, s.expect[2].1, "the pod is filtered out: {v}");
        if v["new"] == "CLOSE_WAIT" {
            seen_ports.insert(port);
        }
    }
    drop(trace);

    // --netns NAME: only the pod's namespace.
    let trace = Streaming::start(&[
        "trace",
        "--json",
        "--netns",
        &s.ns.name,
        "--workload-roots",
        &s.roots,
    ]);
    banner(&trace, "tracing");
    leak(s.expect[0].1, 1, None);
    leak(s.expect[2].1, 1, Some(&s.ns));
    let e = json_lines_until(&trace, "the pod's event", |v| v["new"] == "CLOSE_WAIT");
    assert_eq!(e["sport"], s.expect[2].1, "{e}");
    assert_eq!(e["netns"], s.ns.inode(), "{e}");
    drop(trace);

    // Malformed: exit 2, one line.
    let out = Command::new(BIN)
        .args(["trace", "--cgroup", "relative"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--cgroup"), "{err}");

    // Well-formed, matching nothing yet: one warning, exit 0.
    let out = Command::new(BIN)
        .args(["trace", "--unit", "nope.service", "--duration", "0.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("--unit nope.service"), "{err}");
    let _ = fs::metadata("/").map(|m| m.ino());
}
