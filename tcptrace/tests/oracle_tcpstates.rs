//! The oracle: under a bounded loopback load (20,000 connections in a network
//! namespace this test creates), tcptrace's transition counts by (old, new)
//! equal those of libbpf-tools `tcpstates` (Debian package libbpf-tools) on
//! the same run, allowing only the events either tool reports as lost.

mod common;

use std::{
    collections::BTreeMap,
    io::Read,
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use tcptrace_core::model::EventKind;

const CONNECTIONS: usize = 20_000;
const PORT: u16 = 40_777;
const TCPSTATES: &str = "/usr/sbin/tcpstates";

type Counts = BTreeMap<(String, String), u64>;

/// The BPF recursion misses of a process's programs (`recursion_misses:` in
/// the fdinfo of its program fds): tcpstates does not report them, and a
/// transition in a softirq that interrupts its program in process context is
/// one.
fn recursion_misses_of(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| {
                    l.strip_prefix("recursion_misses:")?
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Waits until the process has attached a BPF program (a bpf_link or perf
/// event fd shows up), then a little longer for the rest of its setup.
fn wait_attached(pid: u32) {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        let attached = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .map(|t| {
                            let t = t.to_string_lossy();
                            t.contains("bpf_link") || t.contains("perf_event")
                        })
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false);
        if attached {
            std::thread::sleep(Duration::from_millis(500));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("tcpstates did not attach within 20 s");
}

/// Rows of `tcpstates -w` whose local or remote port is PORT, by (old, new).
fn parse_tcpstates(text: &str) -> Counts {
    let mut counts = Counts::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // ... LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS (comm may hold spaces: index from the end)
        if f.len() < 9 || f[f.len() - 3] != "->" {
            continue;
        }
        let (old, new) = (f[f.len() - 4], f[f.len() - 2]);
        let rport = f[f.len() - 5];
        let lport = f[f.len() - 7];
        let p = PORT.to_string();
        if lport == p || rport == p {
            *counts
                .entry((old.to_string(), new.to_string()))
                .or_default() += 1;
        }
    }
    counts
}

#[test]
fn transition_counts_match_tcpstates() {
    assert!(
        std::path::Path::new(TCPSTATES).exists(),
        "{TCPSTATES} missing: `apt-get install libbpf-tools` (cargo xtask setup does)"
    );
    let ns = NetNs::new("oracle");

    // tcptrace, drained on a thread.
    let mut tracer = tracer_for_ports(&[PORT]);
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut counts = Counts::new();
            let mut decode_errors = 0u64;
            loop {
                let last = stop.load(Ordering::SeqCst);
                tracer.drain(|bytes| match tcptrace_core::decode::decode(bytes) {
                    Ok(e) if e.kind == EventKind::Transition => {
                        let key = (e.old.unwrap().name().to_string(), e.new.name().to_string());
                        *counts.entry(key).or_default() += 1;
                    }
                    // Dropped connection attempts: no transition.
                    Ok(_) | Err(tcptrace_core::decode::DecodeError::DropKind(_)) => {}
                    Err(_) => decode_errors += 1,
                });
                if last {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(decode_errors, 0);
            (counts, tracer.counters())
        })
    };

    // tcpstates, output to a file.
    let out_path = std::env::temp_dir().join(format!("tcptrace-oracle-{}.txt", std::process::id()));
    let out_file = std::fs::File::create(&out_path).unwrap();
    let mut oracle = Command::new(TCPSTATES)
        .arg("-w")
        .stdout(out_file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tcpstates");
    wait_attached(oracle.id());

    // The load: the server closes first; the client reads EOF and closes.
    let done = ns.run(|| {
        let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..CONNECTIONS {
                let (s, _) = listener.accept().unwrap();
                drop(s);
            }
        });
        let started = Instant::now();
        let mut buf = [0u8; 8];
        for _ in 0..CONNECTIONS {
            let mut c = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
            while c.read(&mut buf).unwrap() > 0 {}
        }
        server.join().unwrap();
        started.elapsed()
    });
    eprintln!("{CONNECTIONS} connections in {done:?}");
    std::thread::sleep(Duration::from_secs(1));

    let oracle_misses = recursion_misses_of(oracle.id());
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(oracle.id() as i32, libc::SIGINT) };
    let status = oracle.wait().unwrap();
    let mut stderr = String::new();
    oracle
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success() || status.code().is_none(),
        "tcpstates: {status} {stderr}"
    );
    let oracle_lost: u64 = stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("lost ")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum::<u64>()
        + oracle_misses;
    let theirs = parse_tcpstates(&std::fs::read_to_string(&out_path).unwrap());
    let _ = std::fs::remove_file(&out_path);

    stop.store(true, Ordering::SeqCst);
    let (ours, counters) = drainer.join().unwrap();
    let our_lost = counters.ring_full + counters.recursion_misses;
    eprintln!("tcptrace: {ours:?}\nlost {counters:?}\ntcpstates: {theirs:?}\nlost {oracle_lost}");

    let total: u64 = ours.values().sum();
    assert!(
        total + our_lost >= (10 * CONNECTIONS) as u64,
        "tcptrace saw {total} transitions (+{our_lost} lost) for {CONNECTIONS} connections"
    );
    let keys: std::collections::BTreeSet<_> = ours.keys().chain(theirs.keys()).collect();
    for key in keys {
        let a = ours.get(key).copied().unwrap_or(0);
        let b = theirs.get(key).copied().unwrap_or(0);
        assert!(
            a.abs_diff(b) <= our_lost + oracle_lost,
            "{key:?}: tcptrace {a}, tcpstates {b} (lost: ours {our_lost}, theirs {oracle_lost})"
        );
    }
}
