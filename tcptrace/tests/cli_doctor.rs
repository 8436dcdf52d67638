//! `tcptrace doctor` against real sockets in network namespaces this test
//! creates (each with its own sysctls): a CLOSE_WAIT leak, a server that
//! closes first under load, clients burning ephemeral ports to one
//! destination with a narrowed `ip_local_port_range` (one address, many
//! addresses, with and without `tcp_tw_reuse` applying), and the same
//! findings from a recording (`doctor --from`). Each must produce its
//! finding naming this process and the right port or peer. Root; fails
//! (never skips) when the program cannot load.

mod common;

use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    time::Duration,
};

use common::*;

const WINDOW: &str = "5";

/// Starts `doctor --json`, runs `load` once it observes, and returns its
/// exit code and findings.
fn doctor_during(load: impl FnOnce()) -> (i32, Vec<serde_json::Value>) {
    let mut doctor = Running::start(
        &["doctor", "--duration", WINDOW, "--json"],
        "tcptrace doctor: observing",
    );
    load();
    let status = doctor.child.wait().unwrap();
    let (out, err) = doctor.finish();
    let findings: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (status.code().expect("exited"), findings)
}

fn find<'a>(findings: &'a [serde_json::Value], id: &str, needle: &str) -> &'a serde_json::Value {
    findings
        .iter()
        .find(|f| f["id"] == id && f["title"].as_str().unwrap().contains(needle))
        .unwrap_or_else(|| {
            panic!(
                "no {id} finding mentioning {needle:?}: {}",
                serde_json::to_string_pretty(findings).unwrap()
            )
        })
}

#[test]
fn close_wait_leak_names_the_process() {
    let ns = NetNs::new("doc-cw");
    let me = std::process::id();
    let (code, findings) = doctor_during(|| {
        ns.run(|| {
            let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut held = Vec::new();
            leak_close_wait(&listener, port, 30, &mut held);
            // Held past the window, so doctor sees them at the end.
            std::thread::sleep(Duration::from_secs(6));
            drop(held);
        });
    });
    let f = find(&findings, "close_wait_leak", &format!("(pid {me})"));
    let title = f["title"].as_str().unwrap();
    assert!(title.contains("30 CLOSE_WAIT"), "{f}");
    // The peer: the clients that closed, on loopback in the namespace.
    assert!(title.contains("to 127.0.0.1:"), "{f}");
    let evidence: Vec<&str> = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        evidence.iter().any(|e| e.starts_with("peers: 127.0.0.1:")),
        "{f}"
    );
    assert!(evidence.iter().any(|e| e.starts_with("oldest ")), "{f}");
    assert!(matches!(
        f["severity"].as_str(),
        Some("warning" | "critical")
    ));
    assert!(f["advice"][0].as_str().unwrap().contains("close()"));
    assert_eq!(code, 1, "a warning exits 1");
}

#[test]
fn server_closing_first_makes_server_side_time_wait() {
    let ns = NetNs::new("doc-srv");
    let me = std::process::id();
    let port = 18080;
    let (code, findings) = doctor_during(|| {
        ns.run(move || {
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let server = std::thread::spawn(move || {
                for _ in 0..400 {
                    // The server closes first (no keep-alive).
                    drop(listener.accept().unwrap());
                }
                listener
            });
            for _ in 0..400 {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let mut buf = [0u8; 1];
                while c.read(&mut buf).unwrap() > 0 {}
            }
            // Keep the listener open past the window.
            let listener = server.join().unwrap();
            std::thread::sleep(Duration::from_secs(6));
            drop(listener);
        });
    });
    // `ss` is the oracle: a client's SYN from a port that a server-side
    // TIME_WAIT still remembers reopens that pair, so now and then one of
    // the 400 is gone before the window ends.
    let in_ss = ss_count("time-wait", port, Some(&ns.name));
    assert!((390..=400).contains(&in_ss), "{in_ss} in ss");
    let f = find(&findings, "server_time_wait", &format!("127.0.0.1:{port}"));
    let title = f["title"].as_str().unwrap();
    assert!(title.contains(&format!("(pid {me})")), "{title}");
    assert!(title.contains(&format!("{in_ss} TIME_WAIT")), "{title}");
    assert!(
        f["advice"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("keepalive"))
    );
    assert_eq!(code, 1);
}

#[test]
fn client_burning_ports_with_a_narrow_range() {
    let ns = NetNs::new("doc-cli");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999");
    // No reuse: every TIME_WAIT holds its port for 60 s.
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
    let me = std::process::id();
    let port = 19090;
    let (code, findings) = doctor_during(|| {
        ns.run(move || {
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            // The client closes first: TIME_WAIT on its ephemeral ports.
            pile_time_wait(listener, port, 450);
        });
    });
    let f = find(
        &findings,
        "client_port_pressure",
        &format!("127.0.0.1:{port}"),
    );
    let title = f["title"].as_str().unwrap();
    assert!(title.contains("45%"), "450 of 1000 ports: {title}");
    assert!(title.contains(&format!("(pid {me})")), "{title}");
    assert!(
        title.contains("from 127.0.0.1 in network namespace"),
        "{title}"
    );
    assert_eq!(f["severity"], "warning");
    assert!(
        f["evidence"][0].as_str().unwrap().contains("(40000-40999)"),
        "the namespace's own range: {f}"
    );
    let sysctls = f["sysctls"].as_array().unwrap();
    assert!(
        sysctls
            .iter()
            .any(|s| s.as_str().unwrap().contains("ip_local_port_range"))
    );
    assert_eq!(code, 1);
    // Never changed anything itself.
    let range =
        ns.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap());
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["40000", "40999"]
    );
}

/// Every ephemeral port to one destination held by an open connection: the
/// next connect() fails with EADDRNOTAVAIL, which the kernel shows as
/// SYN_SENT -> CLOSE before a local port was chosen.
#[test]
fn exhausted_ports_are_reported_from_eaddrnotavail() {
    let ns = NetNs::new("doc-noport");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40009");
    let me = std::process::id();
    let port = 19191;
    let (code, findings) = doctor_during(|| {
        let failures = ns.run(move || {
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let mut held = Vec::new();
            let mut failures = 0;
            for _ in 0..15 {
                match std::net::TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => held.push((s, listener.accept().unwrap())),
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{e}");
                        failures += 1;
                    }
                }
            }
            failures
        });
        assert_eq!(failures, 5, "10 ports, 15 connects");
    });
    let f = find(
        &findings,
        "client_port_pressure",
        &format!("127.0.0.1:{port}"),
    );
    // The connections were closed by the client at the end: their TIME_WAIT
    // fills the range too; the failures are evidence either way.
    let title = f["title"].as_str().unwrap();
    assert!(title.contains(&format!("(pid {me})")), "{title}");
    assert!(
        f["evidence"].as_array().unwrap().iter().any(|e| e
            .as_str()
            .unwrap()
            .contains("failed 5 times with EADDRNOTAVAIL")),
        "{f}"
    );
    assert_eq!(f["severity"], "critical");
    // Not mistaken for a dead backend.
    assert!(
        !findings.iter().any(|f| f["id"] == "failed_connects"),
        "{findings:#?}"
    );
    assert_eq!(code, 1);
}

/// A namespace with a `ports`-port range from 40000 and `addr` on its
/// loopback device (traffic to it goes through loopback, but the address is
/// not a loopback one: `tcp_tw_reuse=2` does not apply to it).
fn namespace_with(tag: &str, ports: u16, addr: &str) -> NetNs {
    let ns = NetNs::new(tag);
    ns.sysctl(
        "net.ipv4.ip_local_port_range",
        &format!("40000 {}", 40000 + ports - 1),
    );
    run(
        "ip",
        &[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "lo",
        ],
    );
    ns
}

fn ids(findings: &[serde_json::Value]) -> Vec<(String, String)> {
    findings
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// 1,600 TIME_WAIT sockets to one server from 40 source addresses, over a
/// 1,000-port range: 160% of the range, but each (address, destination)
/// has its own 1,000 ports, and holds 4% of them.
#[test]
fn many_source_addresses_each_have_their_own_budget() {
    let ns = namespace_with("doc-many", 1000, "10.77.0.1");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
    let port = 19292;
    let (_, findings) = doctor_during(|| {
        ns.run(move || {
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
            for source in 1..=40u8 {
                for _ in 0..40 {
                    time_wait_from(Ipv4Addr::new(127, 10, 0, source), to, &listener).unwrap();
                }
            }
        });
    });
    // (Other tests run beside this one: only findings about this
    // destination count; the exit code is theirs too.)
    let dest = format!("127.0.0.1:{port}");
    assert!(
        !findings
            .iter()
            .any(|f| f["title"].as_str().unwrap().contains(&dest)),
        "{findings:#?}"
    );
}

/// One address, 100 ports, connects faster than `tcp_tw_reuse` may take
/// over a TIME_WAIT (1 s): connect() fails with EADDRNOTAVAIL; critical.
#[test]
fn one_address_with_a_narrow_range_is_critical_and_fails_connects() {
    let ns = namespace_with("doc-one", 100, "10.77.0.1");
    let me = std::process::id();
    let port = 19393;
    let (code, findings) = doctor_during(|| {
        let failures = ns.run(move || {
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
            let mut failures = 0;
            for _ in 0..150 {
                match time_wait_from(Ipv4Addr::LOCALHOST, to, &listener) {
                    Ok(()) => {}
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{e}");
                        failures += 1;
                    }
                }
            }
            failures
        });
        assert!(failures >= 1, "100 ports, 150 connects within a second");
    });
    let f = find(
        &findings,
        "client_port_pressure",
        &format!("127.0.0.1:{port}"),
    );
    assert_eq!(f["severity"], "critical", "{f}");
    let title = f["title"].as_str().unwrap();
    assert!(
        title.contains("from 127.0.0.1") && title.contains(&format!("(pid {me})")),
        "{title}"
    );
    let evidence = f["evidence"].to_string();
    assert!(evidence.contains("with EADDRNOTAVAIL"), "{evidence}");
    assert!(evidence.contains("of the 100 ports"), "{evidence}");
    assert_eq!(code, 1);
}

/// The seed's prober: 260 pings through 200 ports on loopback, paced like a
/// prober. `tcp_tw_reuse=2` (the default) takes over TIME_WAIT ports older
/// than 1 s: no connect fails, and doctor says so instead of "critical".
#[test]
fn loopback_reuse_keeps_a_full_range_working() {
    let ns = namespace_with("doc-reuse", 200, "10.77.0.1");
    let port = 19494;
    let (_, findings) = doctor_during(|| {
        ns.run(move || {
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
            for _ in 0..260 {
                time_wait_from(Ipv4Addr::LOCALHOST, to, &listener)
                    .expect("reuse keeps connect() working");
                // A prober's pace: 260 pings over about 2.6 s.
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    });
    let f = find(
        &findings,
        "client_port_pressure",
        &format!("127.0.0.1:{port}"),
    );
    assert_eq!(f["severity"], "info", "{f}");
    assert!(
        f["title"].as_str().unwrap().contains("no connect failed"),
        "{f}"
    );
    assert!(
        f["evidence"].to_string().contains("tcp_tw_reuse=2 here"),
        "{f}"
    );
    // What reuse did: 260 connects through 200 ports reused at least 60.
    let r = find(&findings, "time_wait_reuse", &format!("127.0.0.1:{port}"));
    let reused: u64 = r["title"].as_str().unwrap()["tcp_tw_reuse reused ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reused >= 60, "{r}");
    // Info: no warning about this destination (the exit code is shared
    // with the tests running beside this one).
    let dest = format!("127.0.0.1:{port}");
    assert!(
        !findings.iter().any(|f| f["severity"] != "info"
            && f["severity"] != "ok"
            && f["title"].as_str().unwrap().contains(&dest)),
        "{findings:#?}"
    );
}

/// The same scenario off loopback (a 10.77.0.1 address): `tcp_tw_reuse=2`
/// does not apply, 170 TIME_WAIT hold 85% of the 200 ports: critical. And
/// a recording of it gives `doctor --from` the same findings.
#[test]
fn off_loopback_reuse_does_not_apply_and_a_recording_says_the_same() {
    let ns = namespace_with("doc-off", 200, "10.77.0.1");
    let port = 19595;
    let dir = tempdir();
    let file = dir.join("incident.tcptrace");
    let file_arg = file.to_str().unwrap().to_string();
    let recorder = Running::start(
        &["record", "-o", &file_arg, "--duration", "6"],
        "recording to",
    );
    let (code, live) = doctor_during(|| {
        ns.run(move || {
            let listener = TcpListener::bind(("10.77.0.1", port)).unwrap();
            let to = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), port);
            for _ in 0..170 {
                time_wait_from(Ipv4Addr::new(10, 77, 0, 1), to, &listener).unwrap();
            }
        });
    });
    let f = find(&live, "client_port_pressure", &format!("10.77.0.1:{port}"));
    assert_eq!(f["severity"], "critical", "{f}");
    assert!(f["title"].as_str().unwrap().contains("85%"), "{f}");
    assert!(f["evidence"].to_string().contains("loopback only"), "{f}");
    assert_eq!(code, 1);

    let mut recorder = recorder;
    let status = recorder.child.wait().unwrap();
    assert!(status.success(), "record: {:?}", recorder.finish());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["doctor", "--from", &file_arg, "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let replayed: Vec<serde_json::Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1));
    // The same findings about this scenario, word for word (other tests
    // running beside this one add their own to both).
    let dest = format!("10.77.0.1:{port}");
    let mine = |all: &[serde_json::Value]| -> Vec<serde_json::Value> {
        all.iter()
            .filter(|f| f["title"].as_str().unwrap().contains(&dest))
            .cloned()
            .collect()
    };
    assert_eq!(ids(&mine(&replayed)), ids(&mine(&live)));
    assert_eq!(mine(&replayed), mine(&live), "{replayed:#?}\n{live:#?}");
    assert!(
        !replayed.iter().any(|f| f["id"] == "facts_missing"),
        "the recording carries the sysctls: {replayed:#?}"
    );
}

/// A fresh directory for this test's files.
fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tcptrace-doctor-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
