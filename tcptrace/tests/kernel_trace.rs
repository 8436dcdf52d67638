//! Real-kernel tests of the eBPF pipeline: load the program, drive real
//! sockets on loopback (and in network namespaces the tests create), and check
//! the exact transition sequences, TIME_WAIT events and owners. They need root
//! and fail (never skip) when the kernel refuses the program.

mod common;

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use tcptrace_core::model::{EventKind, TcpState::*, TwEndReason};

fn loopback(v6: bool) -> &'static str {
    if v6 { "::1" } else { "127.0.0.1" }
}

/// Client shuts down first and closes after the server's FIN: the client ends
/// in TIME_WAIT, the server goes CLOSE_WAIT -> LAST_ACK -> CLOSE.
fn active_close(
    v6: bool,
) -> (
    Vec<tcptrace_core::model::Event>,
    u16,
    u64,
    tcptrace::ebpf::Tracer,
) {
    let port = free_port(v6);
    active_close_with(v6, tracer_for_ports(&[port]), port)
}

fn active_close_with(
    v6: bool,
    mut tracer: tcptrace::ebpf::Tracer,
    port: u16,
) -> (
    Vec<tcptrace_core::model::Event>,
    u16,
    u64,
    tcptrace::ebpf::Tracer,
) {
    let listener = TcpListener::bind((loopback(v6), port)).unwrap();
    let mut client = TcpStream::connect((loopback(v6), port)).unwrap();
    let cport = client.local_addr().unwrap().port();
    let (mut server, _) = listener.accept().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).unwrap(), 0, "server sees EOF");
    drop(server);
    assert_eq!(client.read(&mut buf).unwrap(), 0, "client sees EOF");
    drop(client);
    drop(listener);

    let mut events = Vec::new();
    let me = std::process::id();
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(5), |ev| {
        sk_with(ev, cport, FinWait2, Close).is_some()
            && sk_with(ev, port, LastAck, Close).is_some()
            && sk_with(ev, port, Listen, Close).is_some()
    });
    assert!(ok, "missing transitions: {events:#?}");

    let client_sk = sk_with(&events, cport, SynSent, Established).expect("client connected");
    assert_eq!(
        path_of(&events, client_sk),
        [
            (Close, SynSent),
            (SynSent, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close),
        ]
    );
    let server_sk = sk_with(&events, port, Listen, SynRecv).expect("child socket");
    assert_eq!(
        path_of(&events, server_sk),
        [
            (Listen, SynRecv),
            (SynRecv, Established),
            (Established, CloseWait),
            (CloseWait, LastAck),
            (LastAck, Close),
        ]
    );
    // Owners are this process, not whatever ran the softirq.
    for e in events.iter().filter(|e| e.kind == EventKind::Transition) {
        let owner = e.owner.unwrap_or_else(|| panic!("owner known: {e:?}"));
        assert_eq!(owner.pid, me, "{e:?}");
        assert!(!owner.comm.to_str_lossy().is_empty());
        assert!(e.netns.is_some());
    }
    // Time in the previous state is known for all but lifecycle starts.
    for e in events.iter().filter(|e| e.kind == EventKind::Transition) {
        let start = e.old == Some(Close) || (e.old == Some(Listen) && e.new == SynRecv);
        assert_eq!(e.prev_ns.is_some(), !start, "{e:?}");
    }

    // TIME_WAIT begins on the client's 4-tuple, linked to the client socket,
    // with its owner, right before the full socket's FIN_WAIT2 -> CLOSE.
    let tw = events
        .iter()
        .find(|e| e.kind == EventKind::TwBegin && e.sport == cport)
        .unwrap_or_else(|| panic!("tw_begin for the client: {events:#?}"));
    assert_eq!(tw.link, Some(client_sk));
    assert_eq!(tw.old, Some(FinWait2));
    assert_eq!(tw.new, TimeWait);
    assert_eq!(tw.dport, port);
    assert_eq!(tw.owner.expect("tw owner").pid, me);
    assert_ne!(tw.sk, client_sk, "the timewait socket is a separate object");
    let tw_idx = events.iter().position(|e| std::ptr::eq(e, tw)).unwrap();
    let close_idx = events
        .iter()
        .position(|e| e.sk == client_sk && e.new == Close)
        .unwrap();
    assert!(tw_idx < close_idx);
    let tw_sk = tw.sk;
    (events, cport, tw_sk, tracer)
}

#[test]
fn active_close_ipv4_ends_in_time_wait_with_owner() {
    active_close(false);
}

/// The classic tracepoints (the fallback where tp_btf does not load, for
/// transitions and for the timer hooks) see the same sequences, owners and
/// TIME_WAIT.
#[test]
fn classic_tracepoint_sees_the_same() {
    let port = free_port(false);
    let tracer = tracer_with(tcptrace::ebpf::LoadOptions {
        filter: filter_for_ports(&[port]),
        hook: tcptrace::ebpf::HookChoice::Tracepoint,
        timewait: tcptrace::ebpf::TimewaitChoice::TimerTracepoint,
        ..tcptrace::ebpf::LoadOptions::default()
    });
    assert_eq!(tracer.hooks.transitions, "tracepoint");
    assert_eq!(tracer.hooks.timewait, "timer tracepoints");
    active_close_with(false, tracer, port);
}

/// fentry is the preferred TIME_WAIT path; where the kernel refuses it (this
/// machine: EPERM) the timer hooks (tp_btf) take over and the reason is kept.
#[test]
fn timewait_hook_falls_back_to_timer_tracepoints() {
    let tracer = tracer_with(tcptrace::ebpf::LoadOptions::default());
    assert_eq!(tracer.hooks.transitions, "tp_btf");
    match tracer.hooks.timewait {
        "fentry" => assert!(tracer.hooks.fallbacks.is_empty()),
        "timer tp_btf" => assert!(
            tracer.hooks.fallbacks.iter().any(|f| f.contains("fentry")),
            "{:?}",
            tracer.hooks.fallbacks
        ),
        other => panic!("unexpected TIME_WAIT hook {other}"),
    }
    assert!(tracer.hooks.accept);
}

/// fentry refused (as on kernels without it, this one included): the timer
/// hooks as tp_btf carry TIME_WAIT, and the reason is kept.
#[test]
fn refused_fentry_falls_back_to_the_timer_hooks() {
    let port = free_port(false);
    let tracer = tracer_with(tcptrace::ebpf::LoadOptions {
        filter: filter_for_ports(&[port]),
        refuse: tcptrace::ebpf::Refuse {
            fentry: true,
            ..Default::default()
        },
        ..tcptrace::ebpf::LoadOptions::default()
    });
    assert_eq!(tracer.hooks.transitions, "tp_btf");
    assert_eq!(tracer.hooks.timewait, "timer tp_btf");
    assert!(
        tracer
            .hooks
            .fallbacks
            .iter()
            .any(|f| f.starts_with("TIME_WAIT via timer hooks: fentry refused")),
        "{:?}",
        tracer.hooks.fallbacks
    );
    active_close_with(false, tracer, port);
}

/// Every fallback, forced: with tp_btf and fentry refused (as a kernel
/// without them would), the classic tracepoints carry transitions and the
/// timer tracepoints TIME_WAIT, each reason is kept, and the events are the
/// same.
#[test]
fn refused_hooks_fall_back_and_say_why() {
    let port = free_port(false);
    let tracer = tracer_with(tcptrace::ebpf::LoadOptions {
        filter: filter_for_ports(&[port]),
        refuse: tcptrace::ebpf::Refuse {
            tp_btf: true,
            timer_btf: true,
            fentry: true,
            drops_btf: true,
        },
        ..tcptrace::ebpf::LoadOptions::default()
    });
    assert_eq!(tracer.hooks.transitions, "tracepoint");
    assert_eq!(tracer.hooks.timewait, "timer tracepoints");
    assert_eq!(tracer.hooks.drops, Some("tracepoint"));
    let reasons = tracer.hooks.fallbacks.join("; ");
    for expected in [
        "TIME_WAIT via timer hooks: fentry refused",
        "timer tracepoints: timer tp_btf refused",
        "classic tracepoint: tp_btf refused",
        "drop reasons via the classic skb:kfree_skb: kfree_skb tp_btf refused",
    ] {
        assert!(reasons.contains(expected), "{reasons}");
    }
    active_close_with(false, tracer, port);
}

#[test]
fn active_close_ipv6_ends_in_time_wait_with_owner() {
    let (events, ..) = active_close(true);
    assert!(
        events
            .iter()
            .all(|e| e.family == tcptrace_core::model::Family::V6)
    );
}

/// The slow one (~61 s): runs in parallel with the others.
#[test]
fn time_wait_expires_after_about_sixty_seconds() {
    let (mut events, cport, tw_sk, mut tracer) = active_close(false);
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(75), |ev| {
        has(ev, EventKind::TwEnd, tw_sk)
    });
    assert!(ok, "no tw_end within 75 s");
    let end = events
        .iter()
        .find(|e| e.kind == EventKind::TwEnd && e.sk == tw_sk)
        .unwrap();
    assert_eq!(end.reason, Some(TwEndReason::Expired));
    assert_eq!(end.old, Some(TimeWait));
    assert_eq!(end.new, Close);
    assert_eq!(end.sport, cport);
    assert_eq!(
        end.owner.expect("owner carried into TIME_WAIT").pid,
        std::process::id()
    );
    let secs = end.prev_ns.expect("duration known") as f64 / 1e9;
    assert!((59.0..=64.0).contains(&secs), "TIME_WAIT lasted {secs} s");
}

/// The server closes first: it gets TIME_WAIT, the client passes through CLOSE_WAIT.
#[test]
fn passive_close_client_side() {
    let port = free_port(false);
    let mut tracer = tracer_for_ports(&[port]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let cport = client.local_addr().unwrap().port();
    let (mut server, _) = listener.accept().unwrap();
    server.write_all(b"bye").unwrap();
    server.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    drop(client);
    let mut buf = [0u8; 4];
    assert_eq!(server.read(&mut buf).unwrap(), 0);
    drop(server);

    let mut events = Vec::new();
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(5), |ev| {
        sk_with(ev, cport, LastAck, Close).is_some() && sk_with(ev, port, FinWait2, Close).is_some()
    });
    assert!(ok, "{events:#?}");
    let client_sk = sk_with(&events, cport, SynSent, Established).unwrap();
    assert_eq!(
        path_of(&events, client_sk),
        [
            (Close, SynSent),
            (SynSent, Established),
            (Established, CloseWait),
            (CloseWait, LastAck),
            (LastAck, Close),
        ]
    );
    let server_sk = sk_with(&events, port, Listen, SynRecv).unwrap();
    assert_eq!(
        path_of(&events, server_sk),
        [
            (Listen, SynRecv),
            (SynRecv, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close),
        ]
    );
    let tw = events
        .iter()
        .find(|e| e.kind == EventKind::TwBegin)
        .expect("server-side TIME_WAIT");
    assert_eq!(
        (tw.sport, tw.dport, tw.link),
        (port, cport, Some(server_sk))
    );
    assert_eq!(tw.owner.unwrap().pid, std::process::id());
}

/// A server that never closes: its socket stays in CLOSE_WAIT, as `ss` says.
#[test]
fn server_that_never_closes_stays_in_close_wait() {
    let port = free_port(false);
    let mut tracer = tracer_for_ports(&[port]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(client);

    let mut events = Vec::new();
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(5), |ev| {
        sk_with(ev, port, Established, CloseWait).is_some()
    });
    assert!(ok, "{events:#?}");
    std::thread::sleep(Duration::from_millis(500));
    poll(&mut tracer, &mut events);
    let server_sk = sk_with(&events, port, Established, CloseWait).unwrap();
    assert_eq!(
        path_of(&events, server_sk).last(),
        Some(&(Established, CloseWait)),
        "nothing after CLOSE_WAIT while the application holds the socket"
    );
    assert_eq!(ss_count("close-wait", port, None), 1);
    let e = events
        .iter()
        .find(|e| e.sk == server_sk && e.new == CloseWait)
        .unwrap();
    assert_eq!(e.owner.unwrap().pid, std::process::id());
    drop(server);
}

/// connect() to a port nobody listens on: SYN_SENT -> CLOSE by RST.
#[test]
fn connection_refused() {
    let port = free_port(false);
    let mut tracer = tracer_for_ports(&[port]);
    let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let mut events = Vec::new();
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(5), |ev| {
        ev.iter().any(|e| e.old == Some(SynSent) && e.new == Close)
    });
    assert!(ok, "{events:#?}");
    let sk = events.iter().find(|e| e.new == SynSent).unwrap().sk;
    assert_eq!(path_of(&events, sk), [(Close, SynSent), (SynSent, Close)]);
    assert!(
        events
            .iter()
            .all(|e| e.owner.unwrap().pid == std::process::id())
    );
    assert!(!events.iter().any(|e| e.kind == EventKind::TwBegin));
}

/// Deleting a network namespace purges its timewait sockets early: tw_end
/// "purged", with the namespace's inode (more in `kernel_tw_reasons.rs`).
#[test]
fn time_wait_killed_early_by_namespace_teardown() {
    let mut ns = NetNs::new("twkill");
    let ns_inode = ns.inode();
    let port = 40_123;
    let mut tracer = tracer_for_ports(&[port]);
    let cport = ns.run(move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let cport = client.local_addr().unwrap().port();
        let (mut server, _) = listener.accept().unwrap();
        drop(client);
        let mut buf = [0u8; 4];
        assert_eq!(server.read(&mut buf).unwrap(), 0);
        drop(server);
        cport
    });
    let mut events = Vec::new();
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(5), |ev| {
        ev.iter()
            .any(|e| e.kind == EventKind::TwBegin && e.sport == cport)
    });
    assert!(ok, "{events:#?}");
    let tw = *events
        .iter()
        .find(|e| e.kind == EventKind::TwBegin && e.sport == cport)
        .unwrap();
    assert_eq!(tw.netns, Some(ns_inode));
    ns.delete();
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(10), |ev| {
        has(ev, EventKind::TwEnd, tw.sk)
    });
    assert!(ok, "no tw_end after namespace teardown: {events:#?}");
    let end = events
        .iter()
        .find(|e| e.kind == EventKind::TwEnd && e.sk == tw.sk)
        .unwrap();
    assert_eq!(end.reason, Some(TwEndReason::Purged));
    assert_eq!(end.owner.unwrap().pid, std::process::id());
    assert!(end.prev_ns.unwrap() < 30_000_000_000);
}

/// The process that accept()s owns the child socket, not the one that listened.
#[test]
fn accepting_process_owns_the_child_socket() {
    let port = free_port(false);
    let mut tracer = tracer_for_ports(&[port]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    use std::os::fd::AsRawFd;
    let lfd = listener.as_raw_fd();
    let mut child = unsafe {
        Command::new("python3")
            .args([
                "-c",
                "import socket,sys\ns=socket.socket(fileno=3)\nc,_=s.accept()\nsys.stdout.write('ok\\n'); sys.stdout.flush()\nc.recv(1)\nc.close()",
            ])
            .stdout(Stdio::piped())
            .pre_exec(move || {
                // dup2 onto itself keeps FD_CLOEXEC: clear it instead.
                let ok = if lfd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0) >= 0
                } else {
                    libc::dup2(lfd, 3) >= 0
                };
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
            .spawn()
            .expect("python3")
    };
    let child_pid = child.id();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut line = [0u8; 3];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"ok\n");
    drop(client);
    assert!(child.wait().unwrap().success());

    let mut events = Vec::new();
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(5), |ev| {
        sk_with(ev, port, LastAck, Close).is_some()
    });
    assert!(ok, "{events:#?}");
    let child_sk = sk_with(&events, port, Listen, SynRecv).unwrap();
    let syn_recv = events
        .iter()
        .find(|e| e.sk == child_sk && e.new == SynRecv)
        .unwrap();
    let owner = syn_recv.owner.unwrap();
    assert_eq!(
        owner.pid,
        std::process::id(),
        "before accept: the listener's owner"
    );
    assert!(owner.from_listener);
    for e in events
        .iter()
        .filter(|e| e.sk == child_sk && e.old == Some(Established))
    {
        let owner = e.owner.unwrap();
        assert_eq!(owner.pid, child_pid, "after accept: the acceptor ({e:?})");
        assert!(!owner.from_listener);
        assert_eq!(owner.comm.to_str_lossy(), "python3");
    }
}

/// A thread that listens and accepts itself: after accept() its owner is
/// confirmed (no longer the listener's guess), with no Accept event needed.
#[test]
fn the_listening_thread_accepting_confirms_its_ownership() {
    let port = free_port(false);
    let mut tracer = tracer_for_ports(&[port]);
    let (listening_tx, listening) = std::sync::mpsc::channel();
    let (accepted_tx, accepted) = std::sync::mpsc::channel();
    // One thread does both (the harness's threads differ from this one).
    let server = std::thread::spawn(move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listening_tx.send(()).unwrap();
        let (mut c, _) = listener.accept().unwrap();
        accepted_tx.send(()).unwrap();
        let mut b = [0u8; 1];
        let _ = c.read(&mut b);
    });
    listening.recv().unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Closed only once accept() returned: the FIN's transition comes after.
    accepted.recv().unwrap();
    drop(client);
    server.join().unwrap();
    let mut events = Vec::new();
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(5), |ev| {
        sk_with(ev, port, LastAck, Close).is_some()
    });
    assert!(ok, "{events:#?}");
    let child_sk = sk_with(&events, port, Listen, SynRecv).unwrap();
    let later: Vec<_> = events
        .iter()
        .filter(|e| e.sk == child_sk && e.old == Some(Established))
        .collect();
    assert!(!later.is_empty(), "{events:#?}");
    for e in later {
        let owner = e.owner.unwrap();
        assert_eq!(owner.pid, std::process::id());
        assert!(!owner.from_listener, "accepted by its own thread: {e:?}");
    }
}

/// Both sides shut down at once: FIN_WAIT1 -> CLOSING -> (TIME_WAIT) on each.
/// Loopback delivers synchronously, so the test races two threads through a
/// barrier until the FINs cross (a few percent of attempts), bounded in count.
#[test]
fn simultaneous_close_goes_through_closing() {
    let port = free_port(false);
    let mut tracer = tracer_for_ports(&[port]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut events = Vec::new();
    for _attempt in 0..3_000 {
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let b = barrier.clone();
        let t = std::thread::spawn(move || {
            b.wait();
            server.shutdown(Shutdown::Write).unwrap();
            server
        });
        barrier.wait();
        client.shutdown(Shutdown::Write).unwrap();
        let server = t.join().unwrap();
        drop((client, server));
        poll(&mut tracer, &mut events);
        if events.iter().filter(|e| e.new == Closing).count() >= 2 {
            break;
        }
    }
    collect_until(&mut tracer, &mut events, Duration::from_secs(2), |_| false);
    let closing: Vec<u64> = events
        .iter()
        .filter(|e| e.new == Closing)
        .map(|e| e.sk)
        .collect();
    assert!(
        !closing.is_empty(),
        "no simultaneous close in 3000 attempts"
    );
    for sk in closing {
        // Socket addresses are reused across attempts: judge the lifecycle
        // that went through CLOSING, i.e. the events just before its
        // CLOSING -> CLOSE.
        let close_idx = events
            .iter()
            .position(|e| e.sk == sk && e.old == Some(Closing) && e.new == Close)
            .unwrap_or_else(|| panic!("CLOSING -> CLOSE for {sk:#x}: {events:#?}"));
        let path = path_of(&events[..=close_idx], sk);
        assert_eq!(
            &path[path.len() - 3..],
            [
                (Established, FinWait1),
                (FinWait1, Closing),
                (Closing, Close)
            ],
            "{path:?}"
        );
        let tw = events[..close_idx]
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::TwBegin && e.link == Some(sk))
            .unwrap_or_else(|| panic!("TIME_WAIT after CLOSING for {sk:#x}"));
        assert_eq!((tw.old, tw.new), (Some(Closing), TimeWait));
        assert_eq!(tw.owner.unwrap().pid, std::process::id());
    }
}

/// A consumer that does not drain while many times the ring's size is
/// produced (`top` refreshing a million sockets, a reconciliation, `record`
/// compressing) loses nothing: the reader thread keeps copying the ring out.
#[test]
fn stalled_consumer_loses_nothing_while_the_reader_copies_the_ring() {
    // ~26,000 events, ~3 MB: three times the ring, within what the reader
    // may queue (four rings' worth, at least 256 MiB).
    const CONNECTIONS: usize = 2_000;
    let ns = NetNs::new("stall");
    let port = 18777;
    let mut tracer = tracer_with(tcptrace::ebpf::LoadOptions {
        filter: filter_for_ports(&[port]),
        ring_bytes: 1 << 20,
        ..tcptrace::ebpf::LoadOptions::default()
    });
    let lost_before = tracer.counters().lost().total();
    ns.run(move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 1];
        for _ in 0..CONNECTIONS {
            let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            assert_eq!(server.read(&mut buf).unwrap(), 0);
            drop(server);
            assert_eq!(client.read(&mut buf).unwrap(), 0);
        }
    });
    // Not drained until now. The last ACKs' transitions (LAST_ACK ->
    // CLOSE, in softirq) may still be on their way: wait for them.
    let transitions = |events: &[tcptrace_core::model::Event]| {
        events
            .iter()
            .filter(|e| e.kind == EventKind::Transition)
            .count()
    };
    let mut events = Vec::new();
    // 5 per side per connection, plus the listener's CLOSE -> LISTEN -> CLOSE.
    let want = CONNECTIONS * 10 + 2;
    collect_until(&mut tracer, &mut events, Duration::from_secs(10), |e| {
        transitions(e) >= want
    });
    let lost = tracer.counters().lost();
    assert_eq!(lost.total() - lost_before, 0, "{lost:?}");
    if transitions(&events) != want {
        let mut by_pair = std::collections::BTreeMap::new();
        for e in events.iter().filter(|e| e.kind == EventKind::Transition) {
            *by_pair
                .entry(format!("{:?}->{:?}", e.old, e.new))
                .or_insert(0) += 1;
        }
        panic!(
            "every transition delivered: {} of {want}: {by_pair:#?}",
            transitions(&events)
        );
    }
    let ends = events
        .iter()
        .filter(|e| e.kind == EventKind::TwBegin)
        .count();
    assert_eq!(ends, CONNECTIONS, "every TIME_WAIT begun");
}
