//! Real-kernel tests of the `skb:kfree_skb` hook (`probes/kfree_skb.rs`):
//! connection attempts the kernel drops with a reason reach userspace as
//! drop records, with the packet's addresses, the namespace, the kernel's
//! own reason and the rate limit's count. Each test works in a network
//! namespace it creates (the kernel's `--netns` filter keeps only that
//! namespace, but for the rate limit's, which counts every namespace's),
//! and fails (never skips) when the kernel refuses the program.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use common::*;
use tcptrace::{
    ebpf::{LoadOptions, Refuse, Tracer},
    workloads::WorkloadOptions,
};
use tcptrace_common::Filter;
use tcptrace_core::{
    decode,
    listeners::{DropReason, SynDrop},
    model::{EventKind, TcpState},
};

/// The workload options keeping only namespace `ns`'s events (`--netns`:
/// the kernel filters on it, drops included).
fn only(ns: &NetNs) -> WorkloadOptions {
    WorkloadOptions {
        netns: vec![ns.inode()],
        ..WorkloadOptions::default()
    }
}

/// A tracer keeping only namespace `ns`'s events (all namespaces' with
/// `None`), on the tp_btf program (this kernel has its 6.8+ prototype).
fn tracer_in(ns: Option<&NetNs>, per_cpu_per_sec: Option<u32>) -> Tracer {
    tracer_on(ns, per_cpu_per_sec, false)
}

/// [`tracer_in`], on the classic tracepoint when `refuse_btf` (as on a
/// kernel where the tp_btf program does not fit).
fn tracer_on(ns: Option<&NetNs>, per_cpu_per_sec: Option<u32>, refuse_btf: bool) -> Tracer {
    let mut opts = LoadOptions {
        workloads: ns.map(only).unwrap_or_default(),
        refuse: Refuse {
            drops_btf: refuse_btf,
            ..Refuse::default()
        },
        ..LoadOptions::default()
    };
    if let Some(n) = per_cpu_per_sec {
        opts.drops_per_cpu_per_sec = n;
    }
    let tracer = tracer_with(opts);
    let expected = if refuse_btf { "tracepoint" } else { "tp_btf" };
    assert_eq!(
        tracer.hooks.drops,
        Some(expected),
        "skb:kfree_skb not attached as {expected}: {:?}",
        tracer.hooks.fallbacks
    );
    tracer
}

/// The drop records waiting (other records are left out).
fn drain_drops(tracer: &mut Tracer, into: &mut Vec<SynDrop>) {
    let table = tracer.drop_reasons().cloned().expect("the reason table");
    tracer.drain(|bytes| {
        let raw = decode::raw(bytes).expect("120-byte records");
        if raw.kind == EventKind::Drop as u32 {
            into.push(decode::syn_drop(&raw, &table).expect("drops decode"));
        }
    });
}

/// Polls until `done(drops)` or `timeout`.
fn drops_until(
    tracer: &mut Tracer,
    drops: &mut Vec<SynDrop>,
    timeout: Duration,
    mut done: impl FnMut(&[SynDrop]) -> bool,
) -> bool {
    let end = Instant::now() + timeout;
    loop {
        drain_drops(tracer, drops);
        if done(drops) {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SYNs to ports nobody listens on (IPv4 and IPv6): the kernel answers
/// with a reset and frees the SYN as NO_SOCKET; each one is reported as
/// `no_listener`, with the closed port as the local side, the client as
/// the remote one, and the namespace.
#[test]
fn syns_to_a_closed_port_are_reported_as_no_listener() {
    syns_to_a_closed_port(false);
}

/// The same on the classic tracepoint (tp_btf refused, as on a kernel
/// before 6.8): the record's fields give the same drops, and the fallback
/// says why.
#[test]
fn the_classic_tracepoint_reports_the_same_when_tp_btf_is_refused() {
    syns_to_a_closed_port(true);
}

fn syns_to_a_closed_port(refuse_btf: bool) {
    let ns = NetNs::new(if refuse_btf {
        "drops-closed-tp"
    } else {
        "drops-closed"
    });
    let inode = ns.inode();
    let mut tracer = tracer_on(Some(&ns), None, refuse_btf);
    if refuse_btf {
        assert!(
            tracer.hooks.fallbacks.iter().any(|f| f
                == "drop reasons via the classic skb:kfree_skb: kfree_skb tp_btf refused (simulated)"),
            "{:?}",
            tracer.hooks.fallbacks
        );
    } else {
        assert!(
            !tracer
                .hooks
                .fallbacks
                .iter()
                .any(|f| f.contains("kfree_skb")),
            "{:?}",
            tracer.hooks.fallbacks
        );
    }
    let table = tracer.drop_reasons().cloned().unwrap();
    let no_socket = table.id("NO_SOCKET").expect("this kernel names NO_SOCKET");
    let port = free_port(false);
    let clients = ns.run(move || {
        let mut clients = Vec::new();
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            for _ in 0..3 {
                let err =
                    TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2))
                        .expect_err("nothing listens");
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            clients.push(ip);
        }
        clients
    });
    assert_eq!(clients.len(), 2);
    let mut drops = Vec::new();
    let ok = drops_until(&mut tracer, &mut drops, Duration::from_secs(5), |d| {
        d.iter().filter(|d| d.local_port == port).count() >= 6
    });
    let ours: Vec<&SynDrop> = drops.iter().filter(|d| d.local_port == port).collect();
    assert!(ok, "6 drops at port {port}, got {drops:#?}");
    assert_eq!(ours.len(), 6, "{ours:#?}");
    for d in &ours {
        assert_eq!(d.reason, DropReason::NoListener, "{d:?}");
        assert_eq!(d.kernel_reason, no_socket);
        assert_eq!(table.name(d.kernel_reason), Some("NO_SOCKET"));
        assert_eq!(d.netns, Some(inode), "{d:?}");
        assert!(d.syn && !d.ack, "{d:?}");
        assert_eq!(d.rx_state, None, "no socket received it: {d:?}");
        assert_eq!(d.local, d.remote, "loopback: {d:?}");
        assert_ne!(d.remote_port, port);
        assert_eq!(d.suppressed, 0);
    }
    assert_eq!(ours.iter().filter(|d| d.local.is_ipv4()).count(), 3);
    assert_eq!(
        ours.iter()
            .filter(|d| d.local == IpAddr::V6(Ipv6Addr::LOCALHOST))
            .count(),
        3
    );
    // Established traffic and other reasons are not reported: nothing but
    // these six in this namespace.
    assert_eq!(drops.len(), 6, "{drops:#?}");
    let c = tracer.counters();
    assert!(c.drops_seen >= 6, "{c:?}");
    assert_eq!(tracer.drop_recursion_misses(), 0);
}

/// `--no-drop-reasons`: the hook is not attached, and nothing is reported.
#[test]
fn without_drop_reasons_nothing_is_attached() {
    let ns = NetNs::new("drops-off");
    let mut tracer = tracer_with(LoadOptions {
        workloads: only(&ns),
        drop_reasons: false,
        ..LoadOptions::default()
    });
    assert_eq!(tracer.hooks.drops, None);
    assert!(tracer.drop_reasons().is_none());
    let port = free_port(false);
    ns.run(move || {
        TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
    });
    // The tracer sees the client's transitions (CLOSE -> SYN_SENT ->
    // CLOSE) and no drop.
    let mut events = Vec::new();
    assert!(collect_until(
        &mut tracer,
        &mut events,
        Duration::from_secs(5),
        |e| e
            .iter()
            .any(|e| e.dport == port && e.new == TcpState::Close)
    ));
    assert_eq!(tracer.counters().drops_seen, 0);
}

/// A SYN flood to a closed port, over the rate limit (20 per CPU per
/// second here): at most that many are reported per CPU and window, and
/// the rest are counted and carried by the next reported drop on their
/// CPU, so that reported + suppressed covers every one sent.
#[test]
fn a_flood_is_rate_limited_and_counted() {
    const LIMIT: u32 = 20;
    const FLOOD: usize = 400;
    let ns = NetNs::new("drops-flood");
    let mut tracer = tracer_in(None, Some(LIMIT));
    let port = free_port(false);
    let flood_started = Instant::now();
    ns.run(move || {
        for _ in 0..FLOOD {
            TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
        }
    });
    let flood_secs = flood_started.elapsed().as_secs_f64();
    let mut drops = Vec::new();
    drain_drops(&mut tracer, &mut drops);
    let reported_in_flood = drops.iter().filter(|d| d.local_port == port).count();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Windows the flood spanned, on every CPU.
    let windows = (flood_secs.ceil() as usize + 1) * cpus;
    assert!(
        reported_in_flood <= LIMIT as usize * windows,
        "{reported_in_flood} reported in {flood_secs:.2} s"
    );
    assert!(reported_in_flood < FLOOD, "{reported_in_flood}");
    // One more SYN every 50 ms until the held-back counts arrive with the
    // next window's first drops (bounded: 8 s).
    let mut extra = 0usize;
    let end = Instant::now() + Duration::from_secs(8);
    // Held-back counts ride on the CPU's next reported drop, whichever
    // namespace it is in: this tracer sees them all (no namespace filter).
    let total = |drops: &[SynDrop]| -> (usize, u64) {
        let ours = drops.iter().filter(|d| d.local_port == port).count();
        let suppressed = drops.iter().map(|d| d.suppressed).sum::<u64>();
        (ours, suppressed)
    };
    loop {
        drain_drops(&mut tracer, &mut drops);
        let (reported, suppressed) = total(&drops);
        if reported as u64 + suppressed >= (FLOOD + extra) as u64 || Instant::now() > end {
            break;
        }
        ns.run(move || {
            TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
        });
        extra += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let (reported, suppressed) = total(&drops);
    assert!(suppressed > 0, "nothing suppressed: {reported} reported");
    // The limit is per CPU, whatever the namespace: drops of other
    // namespaces (other tests) held back count too. So at least what was
    // sent.
    assert!(
        reported as u64 + suppressed >= (FLOOD + extra) as u64,
        "{reported} reported + {suppressed} suppressed, {FLOOD} + {extra} sent"
    );
    let c = tracer.counters();
    assert!(c.drops_suppressed >= suppressed, "{c:?}");
    assert!(c.drops_seen >= (FLOOD + extra) as u64, "{c:?}");
}

/// The handshake's last ACK at a full accept queue: the listener (backlog
/// 4: the queue holds 5) never accepts. Two clients whose ACK the kernel
/// delays (`TCP_DEFER_ACCEPT` on a connecting socket holds the ACK of the
/// SYN-ACK for 200 ms) get request sockets while the queue is empty; five
/// more fill the queue at once; the two delayed ACKs then find it full:
/// `tcp_check_req` fails with TCP_LISTEN_OVERFLOW, the kernel frees them
/// with that reason, and each is reported as `accept_queue_full`, at the
/// listener (LISTEN), an ACK without SYN.
/// A port scan of another namespace does not spend the budget of the one
/// traced: the user's `--netns` applies before the rate limit.
#[test]
fn drops_the_filter_leaves_out_do_not_spend_the_rate_limit() {
    const LIMIT: u32 = 20;
    let noisy = NetNs::new("drops-noisy");
    let traced = NetNs::new("drops-traced");
    let mut tracer = tracer_in(Some(&traced), Some(LIMIT));
    let port = free_port(false);
    // Ten times the limit in the other namespace, then 5 in the traced one,
    // within the same second.
    noisy.run(move || {
        for _ in 0..10 * LIMIT {
            TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
        }
    });
    traced.run(move || {
        for _ in 0..5 {
            TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
        }
    });
    let mut drops = Vec::new();
    let inode = traced.inode();
    let all = drops_until(&mut tracer, &mut drops, Duration::from_secs(5), |d| {
        d.iter().filter(|d| d.netns == Some(inode)).count() >= 5
    });
    assert!(
        all,
        "the traced namespace's 5 drops were not all reported: {drops:?}"
    );
    assert!(drops.iter().all(|d| d.netns == Some(inode)), "{drops:?}");
    assert!(tracer.counters().drops_suppressed < u64::from(10 * LIMIT));
}

#[test]
fn an_ack_at_a_full_accept_queue_is_reported_as_accept_queue_full() {
    let ns = NetNs::new("drops-overflow");
    let inode = ns.inode();
    let mut tracer = tracer_in(Some(&ns), None);
    let port = free_port(false);
    let held = ns.run(move || {
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        listener
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
            .expect("bind");
        listener.listen(4).expect("listen");
        let listener: TcpListener = listener.into();
        let mut held = Vec::new();
        for _ in 0..2 {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            let secs: libc::c_int = 5;
            // SAFETY: setsockopt with a valid fd and an int option.
            let rc = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    (&raw const secs).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(
                rc,
                0,
                "TCP_DEFER_ACCEPT: {}",
                std::io::Error::last_os_error()
            );
            s.connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
                .expect("deferred connect");
            held.push(TcpStream::from(s));
        }
        for _ in 0..5 {
            held.push(
                TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    Duration::from_secs(2),
                )
                .expect("a connect that fills the queue"),
            );
        }
        (listener, held)
    });
    let mut drops = Vec::new();
    let ok = drops_until(&mut tracer, &mut drops, Duration::from_secs(5), |d| {
        d.iter()
            .filter(|d| d.reason == DropReason::AcceptQueueFull)
            .count()
            >= 2
    });
    assert!(ok, "no accept_queue_full drop: {drops:#?}");
    let table = tracer.drop_reasons().unwrap();
    for d in drops
        .iter()
        .filter(|d| d.reason == DropReason::AcceptQueueFull)
    {
        assert_eq!(table.name(d.kernel_reason), Some("TCP_LISTEN_OVERFLOW"));
        assert_eq!(d.local, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(d.local_port, port, "{d:?}");
        assert_eq!(d.netns, Some(inode));
        assert_eq!(d.rx_state, Some(TcpState::Listen), "{d:?}");
        assert!(d.ack && !d.syn, "{d:?}");
    }
    drop(held);
}

/// The live source (every command's): a drop reaches the loop as
/// `Record::Drop`, and the source names the kernel's reason.
#[test]
fn the_live_source_turns_drops_into_drop_records() {
    use tcptrace::source::{Live, Source as _};
    use tcptrace_core::{filter::UserFilter, record::Record};
    let ns = NetNs::new("drops-live");
    let inode = ns.inode();
    let mut live = Live::load(
        &LoadOptions {
            workloads: only(&ns),
            realtime_drain: false,
            ..LoadOptions::default()
        },
        UserFilter(Filter::default()),
    )
    .expect("the kernel loads tcptrace's program");
    let port = free_port(false);
    ns.run(move || {
        TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
    });
    let mut drops = Vec::new();
    wait_for("a drop record", Duration::from_secs(5), || {
        live.drain(&mut |r| {
            if let Record::Drop(d) = r {
                drops.push(d);
            }
        });
        drops.iter().any(|d| d.local_port == port)
    });
    let d = drops.iter().find(|d| d.local_port == port).unwrap();
    assert_eq!(d.reason, DropReason::NoListener);
    assert_eq!(d.netns, Some(inode));
    assert_eq!(
        live.drop_reason_name(d.kernel_reason).as_deref(),
        Some("NO_SOCKET")
    );
    assert_eq!(live.decode_errors(), 0);
}
