//! Real-kernel tests of what the TIME_WAIT sysctls did, each in a network
//! namespace the test creates with the sysctl set: a connect() that reuses
//! a timewait socket (`tcp_tw_reuse`), active closes past
//! `tcp_max_tw_buckets` (no timewait socket made: overflow, cross-checked
//! with the namespace's TcpExt TCPTimeWaitOverflow), and a namespace deleted
//! with timewait sockets in it (purged). They need root and fail (never
//! skip) when the kernel refuses the program.

mod common;

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use tcptrace_core::{
    decode::ReuserNames,
    model::{Event, EventKind, Reuser, TcpState::*, TwEndReason},
};

/// A timewait socket may be reused once its last timestamp is older than
/// `tcp_tw_reuse_delay` (1 s by default on 6.18; before, a second).
const REUSE_DELAY_NS: u64 = 1_000_000_000;

/// TcpExt `name` of the namespace `ns`, from its `/proc/net/netstat`.
fn tcp_ext(ns: &NetNs, name: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "cat", "/proc/net/netstat"])
        .output()
        .expect("ip netns exec runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names
            .split_whitespace()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no TcpExt {name} in {text}"));
        return values.split_whitespace().nth(i).unwrap().parse().unwrap();
    }
    panic!("no TcpExt line in {text}")
}

/// One connection from `client` (a socket bound to 127.0.0.1:`cport`) to
/// 127.0.0.1:`port`, closed by the client first: the client's 4-tuple ends
/// in TIME_WAIT. Returns the connected stream's result.
fn bound_connect(cport: u16, port: u16) -> std::io::Result<TcpStream> {
    bound_connect_at(IpAddr::V4(Ipv4Addr::LOCALHOST), cport, port)
}

/// A socket of `ip`'s family bound to `ip`:`cport` (SO_REUSEADDR)
/// connecting to `ip`:`port`.
fn bound_connect_at(ip: IpAddr, cport: u16, port: u16) -> std::io::Result<TcpStream> {
    let domain = match ip {
        IpAddr::V4(_) => socket2::Domain::IPV4,
        IpAddr::V6(_) => socket2::Domain::IPV6,
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::new(ip, cport).into())?;
    s.connect(&SocketAddr::new(ip, port).into())?;
    Ok(s.into())
}

/// The client shuts down first and reads to EOF; the server closes on EOF.
fn close_first(client: &mut TcpStream, listener: &TcpListener) {
    let (mut server, _) = listener.accept().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(server.read(&mut buf).unwrap(), 0, "server sees EOF");
    drop(server);
    assert_eq!(client.read(&mut buf).unwrap(), 0, "client sees EOF");
}

/// What a reuse scenario made.
struct Reuse {
    ns_inode: u32,
    /// The reused timewait socket's family (set by `check_reuse`).
    family: Option<tcptrace_core::model::Family>,
    /// The client's local port, both times.
    cport: u16,
    /// Failed connects before the kernel allowed the reuse.
    attempts: u32,
}

/// How the client comes back to the same 4-tuple.
#[derive(Clone, Copy)]
enum Reconnect {
    /// connect() picks the port, and the namespace's `ip_local_port_range`
    /// has one port: `tcp_tw_reuse=1` lets it take the port back from the
    /// timewait socket once `tcp_tw_reuse_delay` (1 s) has passed.
    EphemeralPort,
    /// The client binds its port (SO_REUSEADDR) and connects: with
    /// timestamps the kernel lets it reuse the timewait socket at once
    /// (`tcp_twsk_unique()` without `twp`), whatever `tcp_tw_reuse` says.
    BoundPort,
    /// The same over IPv6 (`::1`).
    BoundPortV6,
    /// The same from an IPv6 socket to a v4-mapped address
    /// (`::ffff:127.0.0.1`, served by an IPv4 listener): `tcp_v6_connect()`
    /// hands over to `tcp_v4_connect()`.
    BoundPortV4Mapped,
}

impl Reconnect {
    /// The server's (listening) address.
    fn server(self) -> IpAddr {
        match self {
            Reconnect::BoundPortV6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// In a namespace with `tcp_tw_reuse=1`: a client closes first, then
/// connects again from the same port to the same server, retrying until the
/// kernel lets it reuse the timewait socket.
fn reuse_in(ns: &NetNs, port: u16, how: Reconnect) -> Reuse {
    let cport = 45_000 + (std::process::id() % 1_000) as u16;
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    ns.sysctl("net.ipv4.tcp_timestamps", "1");
    ns.sysctl("net.ipv4.ip_local_port_range", &format!("{cport} {cport}"));
    let ns_inode = ns.inode();
    let connect = move || match how {
        Reconnect::EphemeralPort => TcpStream::connect(("127.0.0.1", port)),
        Reconnect::BoundPort => bound_connect(cport, port),
        Reconnect::BoundPortV6 => bound_connect_at(how.server(), cport, port),
        Reconnect::BoundPortV4Mapped => {
            let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
            bound_connect_at(IpAddr::V6(mapped), cport, port)
        }
    };
    let attempts = ns.run(move || {
        let listener = TcpListener::bind((how.server(), port)).unwrap();
        let mut first = connect().expect("first connect");
        assert_eq!(first.local_addr().unwrap().port(), cport);
        close_first(&mut first, &listener);
        drop(first);
        // Not a sleep: connect until the kernel allows the reuse.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut attempts = 0;
        let second = loop {
            match connect() {
                Ok(s) => break s,
                Err(e) => {
                    assert_eq!(
                        e.raw_os_error(),
                        Some(libc::EADDRNOTAVAIL),
                        "only the timewait socket stands in the way: {e}"
                    );
                    assert!(Instant::now() < deadline, "the kernel never reused it");
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        assert_eq!(second.local_addr().unwrap().port(), cport);
        let (server, _) = listener.accept().unwrap();
        second.shutdown(Shutdown::Both).unwrap();
        drop(server);
        attempts
    });
    Reuse {
        ns_inode,
        family: None,
        cport,
        attempts,
    }
}

/// Which hooks a test loads.
#[derive(Clone, Copy)]
enum Hooks {
    /// What loads here by default: tp_btf (fentry is refused on this host).
    Default,
    /// The classic tracepoints, for transitions and the timer hooks.
    Classic,
}

fn tracer(port: u16, hooks: Hooks) -> tcptrace::ebpf::Tracer {
    use tcptrace::ebpf::{HookChoice, LoadOptions, TimewaitChoice};
    let (hook, timewait) = match hooks {
        Hooks::Default => (HookChoice::Auto, TimewaitChoice::Auto),
        Hooks::Classic => (HookChoice::Tracepoint, TimewaitChoice::TimerTracepoint),
    };
    tracer_with(LoadOptions {
        filter: filter_for_ports(&[port]),
        ring_bytes: 16 << 20,
        hook,
        timewait,
        ..LoadOptions::default()
    })
}

fn reused_end(events: &[Event], cport: u16) -> Option<&Event> {
    events.iter().find(|e| {
        e.kind == EventKind::TwEnd
            && e.sport == cport
            && matches!(e.reason, Some(TwEndReason::Reused { .. }))
    })
}

/// tcp_tw_reuse=1 and a one-port range: the timewait socket ends
/// "reused", linked to the socket whose connect() took its 4-tuple over,
/// with that process and the age of the timewait socket (at least the
/// reuse delay).
#[test]
fn tw_reuse_is_reported_with_the_reusing_process_and_the_age() {
    let r = check_reuse("twreuse", 40_311, Reconnect::EphemeralPort, Hooks::Default);
    assert!(r.attempts > 0, "refused before the delay");
}

/// A client reconnecting from its bound port reuses its timewait socket at
/// once: "reused" too.
#[test]
fn reconnect_from_a_bound_port_is_reported_as_reused() {
    check_reuse("twrebind", 40_315, Reconnect::BoundPort, Hooks::Default);
}

/// The same over IPv6, and from an IPv6 socket to a v4-mapped address.
#[test]
fn reconnects_over_ipv6_and_v4_mapped_are_reported_as_reused() {
    let r = check_reuse("twrebind6", 40_320, Reconnect::BoundPortV6, Hooks::Default);
    assert_eq!(r.family, Some(tcptrace_core::model::Family::V6));
    let r = check_reuse(
        "twrebindmap",
        40_321,
        Reconnect::BoundPortV4Mapped,
        Hooks::Default,
    );
    assert_eq!(
        r.family,
        Some(tcptrace_core::model::Family::V6),
        "the timewait socket is AF_INET6"
    );
}

/// The classic tracepoints (the fallback where tp_btf does not load) tell
/// the same three ends.
#[test]
fn classic_tracepoints_tell_reused_overflow_and_purged() {
    check_reuse(
        "twreuse-tp",
        40_316,
        Reconnect::EphemeralPort,
        Hooks::Classic,
    );
    check_overflow("twoverflow-tp", 40_317, Hooks::Classic);
    check_purge("twpurge-tp", 40_318, Hooks::Classic);
}

fn check_reuse(tag: &str, port: u16, how: Reconnect, hooks: Hooks) -> Reuse {
    let ns = NetNs::new(tag);
    let mut tracer = tracer(port, hooks);
    let mut r = reuse_in(&ns, port, how);
    let mut events = Vec::new();
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(5), |ev| {
        reused_end(ev, r.cport).is_some()
    });
    assert!(
        ok,
        "no reused tw_end ({} failed connects first): {events:#?}",
        r.attempts
    );
    let begin = events
        .iter()
        .find(|e| e.kind == EventKind::TwBegin && e.sport == r.cport)
        .expect("the first connection's timewait socket began");
    let end = *reused_end(&events, r.cport).unwrap();
    assert_eq!(end.sk, begin.sk, "the same timewait socket");
    assert_eq!(end.netns, Some(r.ns_inode));
    assert_eq!(end.dport, port);
    let age = end.prev_ns.expect("age known");
    match how {
        Reconnect::EphemeralPort => {
            assert!(age >= REUSE_DELAY_NS, "reused after the delay: {end:?}")
        }
        _ => assert!(age < 30_000_000_000, "reused early: {end:?}"),
    }
    let me = std::process::id();
    assert_eq!(
        end.reason,
        Some(TwEndReason::Reused {
            by: Some(Reuser {
                pid: me,
                comm: None
            })
        }),
        "the kernel sends the reusing pid"
    );
    // The link is the socket whose connect() reused it: it went
    // CLOSE -> SYN_SENT just before (the failed attempts' sockets may have
    // had the same address) and got established from the same port.
    let reuser = end.link.expect("linked to the connecting socket");
    let end_at = events.iter().position(|e| *e == end).unwrap();
    let connect_at = events[..end_at]
        .iter()
        .rposition(|e| e.sk == reuser && e.old == Some(Close) && e.new == SynSent)
        .expect("the reusing socket's CLOSE -> SYN_SENT, before the end");
    let connect = events[connect_at];
    assert_eq!(
        path_of(&events[connect_at..], reuser)[..2],
        [(Close, SynSent), (SynSent, Established)]
    );
    assert!(
        events[connect_at..]
            .iter()
            .any(|e| e.sk == reuser && e.new == Established && e.sport == r.cport)
    );
    assert_eq!(end.owner.expect("the timewait socket's owner").pid, me);
    // The name comes from that connect: what `trace` and the engine show.
    let mut names = ReuserNames::default();
    let mut named = Vec::new();
    for mut e in events.iter().copied() {
        names.observe(&mut e);
        named.push(e);
    }
    let end = reused_end(&named, r.cport).unwrap();
    let comm = connect.owner.expect("connect's owner").comm;
    assert_eq!(
        end.reason,
        Some(TwEndReason::Reused {
            by: Some(Reuser {
                pid: me,
                comm: Some(comm)
            })
        })
    );
    // Nothing else of this namespace was told as killed.
    assert!(
        !events
            .iter()
            .any(|e| e.kind == EventKind::TwEnd && e.reason == Some(TwEndReason::Killed)),
        "{events:#?}"
    );
    r.family = Some(end.family);
    r
}

/// tcp_max_tw_buckets=5: of 20 active closes, 5 make a timewait socket and
/// 15 go FIN_WAIT2 -> CLOSE marked overflow, as many as the namespace's
/// TCPTimeWaitOverflow counted.
#[test]
fn overflow_past_max_tw_buckets_matches_the_namespace_counter() {
    check_overflow("twoverflow", 40_312, Hooks::Default);
}

fn check_overflow(tag: &str, port: u16, hooks: Hooks) {
    const CLOSES: usize = 20;
    const BUCKETS: usize = 5;
    let ns = NetNs::new(tag);
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", &BUCKETS.to_string());
    let ns_inode = ns.inode();
    let before = tcp_ext(&ns, "TCPTimeWaitOverflow");
    let mut tracer = tracer(port, hooks);
    ns.run(move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        pile_time_wait(listener, port, CLOSES);
    });
    let counted = tcp_ext(&ns, "TCPTimeWaitOverflow") - before;
    let mut events = Vec::new();
    let client_closes = |ev: &[Event]| {
        ev.iter()
            .filter(|e| {
                e.kind == EventKind::Transition
                    && e.dport == port
                    && e.new == Close
                    && matches!(e.old, Some(FinWait2 | Closing))
            })
            .count()
    };
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(5), |ev| {
        client_closes(ev) == CLOSES
    });
    assert!(
        ok,
        "{} client closes of {CLOSES}: {events:#?}",
        client_closes(&events)
    );
    let overflows: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Transition && e.reason == Some(TwEndReason::Overflow))
        .collect();
    let begun = events
        .iter()
        .filter(|e| e.kind == EventKind::TwBegin && e.dport == port)
        .count();
    assert_eq!(counted, (CLOSES - BUCKETS) as u64, "the kernel's own count");
    assert_eq!(overflows.len() as u64, counted, "{overflows:#?}");
    assert_eq!(begun, BUCKETS);
    for e in &overflows {
        assert_eq!(e.old, Some(FinWait2), "{e:?}");
        assert_eq!(e.dport, port);
        assert_eq!(e.netns, Some(ns_inode));
        assert_eq!(e.owner.expect("owner").pid, std::process::id());
        // No timewait socket begun for that 4-tuple.
        assert!(
            !events
                .iter()
                .any(|b| b.kind == EventKind::TwBegin && b.sport == e.sport),
            "{e:?}"
        );
    }
    // The server side (passive close) is no overflow.
    assert!(overflows.iter().all(|e| e.sport != port));
    assert_eq!(ss_count("time-wait", port, Some(&ns.name)), BUCKETS);
}

/// Deleting a namespace purges its timewait sockets: every one ends
/// "purged", with the namespace's inode.
#[test]
fn namespace_deletion_purges_its_timewait_sockets() {
    check_purge("twpurge", 40_313, Hooks::Default);
}

fn check_purge(tag: &str, port: u16, hooks: Hooks) {
    const N: usize = 3;
    let mut ns = NetNs::new(tag);
    let ns_inode = ns.inode();
    let mut tracer = tracer(port, hooks);
    ns.run(move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        pile_time_wait(listener, port, N);
    });
    let mut events = Vec::new();
    let begun = |ev: &[Event]| -> Vec<u64> {
        ev.iter()
            .filter(|e| e.kind == EventKind::TwBegin && e.dport == port)
            .map(|e| e.sk)
            .collect()
    };
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(5), |ev| {
        begun(ev).len() == N
    });
    assert!(ok, "{events:#?}");
    let tws = begun(&events);
    ns.delete();
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(10), |ev| {
        tws.iter().all(|&tw| has(ev, EventKind::TwEnd, tw))
    });
    assert!(ok, "not every timewait socket ended: {events:#?}");
    for tw in tws {
        let end = events
            .iter()
            .find(|e| e.kind == EventKind::TwEnd && e.sk == tw)
            .unwrap();
        assert_eq!(end.reason, Some(TwEndReason::Purged), "{end:?}");
        assert_eq!(end.netns, Some(ns_inode));
        assert!(
            end.prev_ns.unwrap() < 30_000_000_000,
            "ended early: {end:?}"
        );
    }
}

/// `tcptrace trace --json` tells the reuse with the reusing process.
#[test]
fn trace_json_shows_reused_with_the_reusing_process() {
    let (end, lines) = trace_reuse("twreusecli", 40_314, &[]);
    let link = end["link"].as_str().expect("link to the reusing socket");
    let connect = lines
        .iter()
        .rev()
        .find(|v| v["sk"] == link && v["old"] == "CLOSE" && v["new"] == "SYN_SENT")
        .unwrap_or_else(|| panic!("no connect of {link} in {lines:#?}"));
    assert_eq!(end["reused_by_comm"], connect["comm"], "{end}");
    assert!(lines.iter().all(|v| v["no_time_wait"].is_null()));
}

/// With `--state TIME_WAIT` the reusing connect is filtered out in the
/// kernel: the reuser's name comes from `/proc` (the process's).
#[test]
fn trace_json_names_the_reuser_when_its_connect_is_filtered_out() {
    let (end, lines) = trace_reuse("twreusestate", 40_322, &["--state", "TIME_WAIT"]);
    assert!(lines.iter().all(|v| v["new"] != "SYN_SENT"), "{lines:#?}");
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(end["reused_by_comm"], me.trim_end(), "{end}");
}

/// `tcptrace trace --json --port PORT EXTRA...` while a client reuses its
/// timewait socket (tcp_tw_reuse) in namespace `tag`: the reused tw_end,
/// checked for the reusing pid and the age, and every JSON line before it.
fn trace_reuse(
    tag: &str,
    port: u16,
    extra: &[&str],
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let ns = NetNs::new(tag);
    let p = port.to_string();
    let mut args = vec!["trace", "--json", "--port", &p];
    args.extend_from_slice(extra);
    let running = Streaming::start(&args);
    let mut err_seen = Vec::new();
    Streaming::wait_line(
        &running.err,
        &mut err_seen,
        "the banner",
        Duration::from_secs(30),
        |l| l.contains("tracing TCP state changes"),
    );
    let r = reuse_in(&ns, port, Reconnect::EphemeralPort);
    let mut seen = Vec::new();
    let json = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok();
    let line = Streaming::wait_line(
        &running.out,
        &mut seen,
        "a reused tw_end",
        Duration::from_secs(10),
        |l| {
            json(l).is_some_and(|v| {
                v["kind"] == "tw_end" && v["sport"] == r.cport && v["reason"] == "reused"
            })
        },
    );
    running.signal(libc::SIGINT);
    let (status, _, err) = running.wait(Duration::from_secs(10));
    assert!(status.success(), "{err:?}");
    let end = json(&line).unwrap();
    assert_eq!(end["reused_by_pid"], std::process::id(), "{end}");
    assert!(end["reused_by_comm"].is_string(), "{end}");
    assert!(
        end["prev_state_ns"].as_u64().unwrap() >= REUSE_DELAY_NS,
        "{end}"
    );
    assert_eq!(end["netns"], r.ns_inode, "{end}");
    (end, seen.iter().filter_map(|l| json(l)).collect())
}

/// A server that closes first holds the timewait socket; the client
/// reconnecting from the same port sends a SYN that kills it (in the
/// softirq of the client's own connect(), on loopback: the same task and
/// CPU as a reuse, yet the reversed 4-tuple). Still "killed", not reused.
#[test]
fn syn_killing_a_servers_timewait_socket_is_killed_not_reused() {
    let ns = NetNs::new("twsynkill");
    let port = 40_319;
    let mut tracer = tracer(port, Hooks::Default);
    let cport = 46_000 + (std::process::id() % 1_000) as u16;
    ns.run(move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let mut client = bound_connect(cport, port).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.shutdown(Shutdown::Write).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "client sees EOF");
        drop(client);
        assert_eq!(server.read(&mut buf).unwrap(), 0, "server sees EOF");
        drop(server);
        let again = bound_connect(cport, port).expect("the SYN kills the server's timewait socket");
        let (served, _) = listener.accept().unwrap();
        drop((again, served));
    });
    let mut events = Vec::new();
    let server_end = |ev: &[Event]| {
        ev.iter()
            .find(|e| e.kind == EventKind::TwEnd && e.sport == port && e.dport == cport)
            .copied()
    };
    let ok = collect_until(&mut tracer, &mut events, Duration::from_secs(5), |ev| {
        server_end(ev).is_some()
    });
    assert!(ok, "the server's timewait socket never ended: {events:#?}");
    let end = server_end(&events).unwrap();
    assert_eq!(end.reason, Some(TwEndReason::Killed), "{end:?}");
    assert_eq!(end.link, None);
}
