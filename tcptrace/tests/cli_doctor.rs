//! `tcptrace doctor` against real sockets in network namespaces this test
//! creates (each with its own sysctls): a CLOSE_WAIT leak, a server that
//! closes first under load, and a client burning ephemeral ports to one
//! destination with a narrowed `ip_local_port_range`. Each must produce its
//! finding naming this process and the right port or peer. Root; fails
//! (never skips) when the program cannot load.

mod common;

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
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
    let f = find(&findings, "server_time_wait", &format!("port {port}"));
    let title = f["title"].as_str().unwrap();
    assert!(title.contains(&format!("(pid {me})")), "{title}");
    assert!(title.contains("400 TIME_WAIT"), "{title}");
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
