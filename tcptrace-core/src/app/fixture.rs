//! Test fixtures: app states built by feeding a real [`Engine`] a scripted
//! incident (a DB-connection leak in CLOSE_WAIT, an nginx TIME_WAIT flood,
//! a few long-lived sessions, sockets seeded before tracing, a listener
//! whose accept queue is full and drops SYNs), so reducer and screen tests
//! see data shaped exactly as in production.

use std::net::{IpAddr, Ipv4Addr};

use super::{
    Action, App, Meta,
    data::{Feed, TopData},
};
use crate::{
    engine::Engine,
    listeners::{DropCounters, DropReason, ListenerSample, NetnsDropCounters, SynDrop},
    model::{Comm, Event, EventKind, Family, Lost, Owner, SeenOwner, SeenSocket, TcpState},
    stats::HostFacts,
};

pub const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

pub fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn owner(pid: u32, comm: &str) -> Owner {
    Owner {
        pid,
        tid: pid,
        comm: Comm::from_name(comm),
        cgroup: 0,
        from_listener: false,
    }
}

#[allow(clippy::too_many_arguments)]
fn ev(
    ts: u64,
    kind: EventKind,
    sk: u64,
    o: Option<Owner>,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    old: TcpState,
    new: TcpState,
) -> Event {
    Event {
        ts_ns: ts,
        kind,
        sk,
        link: None,
        owner: o,
        netns: Some(4026531840),
        family: Family::V4,
        saddr: local.0,
        sport: local.1,
        daddr: remote.0,
        dport: remote.1,
        old: Some(old),
        new,
        prev_ns: None,
        reason: None,
        stack: None,
    }
}

fn path(
    e: &mut Engine,
    t0: u64,
    sk: u64,
    o: Owner,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    states: &[TcpState],
) {
    for (i, w) in states.windows(2).enumerate() {
        e.apply(&ev(
            t0 + i as u64 * MS,
            EventKind::Transition,
            sk,
            Some(o),
            local,
            remote,
            w[0],
            w[1],
        ));
    }
}

const APP: [u8; 4] = [10, 0, 0, 2];
const DB: ([u8; 4], u16) = ([10, 0, 0, 5], 5432);

fn app_ip() -> IpAddr {
    ip(APP[0], APP[1], APP[2], APP[3])
}

fn db() -> (IpAddr, u16) {
    (ip(DB.0[0], DB.0[1], DB.0[2], DB.0[3]), DB.1)
}

/// The start of the incident: sockets found by the startup snapshot (ages
/// are lower bounds) and two long sessions.
pub fn engine() -> Engine {
    use TcpState::*;
    let mut e = Engine::new(100_000);
    let seeded: Vec<SeenSocket> = (0..3u16)
        .map(|i| SeenSocket {
            netns: Some(4026531840),
            family: Family::V4,
            saddr: app_ip(),
            sport: 41000 + i,
            daddr: db().0,
            dport: db().1,
            state: CloseWait,
            inode: 100 + i as u64,
            owner: Some(SeenOwner {
                pid: 4242,
                comm: Comm::from_name("java"),
            }),
            timer_left_ms: None,
            cookie: 1 + i as u64,
            cgroup: None,
        })
        .collect();
    e.seed(&seeded, SEC);
    for i in 0..2u64 {
        path(
            &mut e,
            SEC + i * SEC,
            0xA000 + i,
            owner(1, "sshd"),
            (app_ip(), 22),
            (ip(192, 168, 1, 10 + i as u8), 50000 + i as u16),
            &[Listen, SynRecv, Established],
        );
    }
    e
}

/// Second `s` of the incident: the DB closes idle connections the app
/// never closes (2/s into CLOSE_WAIT); nginx opens and closes upstream
/// connections without keepalive (5/s into TIME_WAIT); a local API server
/// on :9000 closes its clients' connections first (3/s, server-side
/// TIME_WAIT).
pub fn second(e: &mut Engine, s: u64) {
    second_with(e, s, false)
}

/// [`second`]; with `stacks`, java's leaked connections carry the stack of
/// the code that opened them (`--stacks`): ids 7 and 8 by turn.
fn second_with(e: &mut Engine, s: u64, stacks: bool) {
    use TcpState::*;
    let java = owner(4242, "java");
    let nginx = owner(777, "nginx");
    let api = owner(900, "api");
    let t = s * SEC;
    for j in 0..3u64 {
        let sk = 0x30_0000 + s * 16 + j;
        let client = (ip(10, 0, 0, 30 + (j as u8)), 33000 + (s * 3 + j) as u16);
        let ts = t + 300 * MS + j * 10 * MS;
        path(
            e,
            ts,
            sk,
            api,
            (app_ip(), 9000),
            client,
            &[Listen, SynRecv, Established, FinWait1, FinWait2],
        );
        let mut begin = ev(
            ts + 5 * MS,
            EventKind::TwBegin,
            sk | 0xF000_0000,
            Some(api),
            (app_ip(), 9000),
            client,
            FinWait2,
            TimeWait,
        );
        begin.link = Some(sk);
        e.apply(&begin);
        e.apply(&ev(
            ts + 5 * MS,
            EventKind::Transition,
            sk,
            Some(api),
            (app_ip(), 9000),
            client,
            FinWait2,
            Close,
        ));
        if s >= 62 {
            let old = s - 60;
            let mut end = ev(
                ts + 6 * MS,
                EventKind::TwEnd,
                (0x30_0000 + old * 16 + j) | 0xF000_0000,
                Some(api),
                (app_ip(), 9000),
                (ip(10, 0, 0, 30 + (j as u8)), 33000 + (old * 3 + j) as u16),
                TimeWait,
                Close,
            );
            end.prev_ns = Some(60 * SEC + MS);
            end.reason = Some(crate::model::TwEndReason::Expired);
            e.apply(&end);
        }
    }
    for j in 0..2u64 {
        let port = 42000 + (s * 2 + j) as u16;
        let sk = 0x10_0000 + s * 16 + j;
        if stacks {
            for (i, w) in [Close, SynSent, Established, CloseWait]
                .windows(2)
                .enumerate()
            {
                let mut tr = ev(
                    t + j * 10 * MS + i as u64 * MS,
                    EventKind::Transition,
                    sk,
                    Some(java),
                    (app_ip(), port),
                    db(),
                    w[0],
                    w[1],
                );
                tr.stack = Some(7 + j as u32);
                e.apply(&tr);
            }
        } else {
            path(
                e,
                t + j * 10 * MS,
                sk,
                java,
                (app_ip(), port),
                db(),
                &[Close, SynSent, Established, CloseWait],
            );
        }
    }
    for j in 0..5u64 {
        let sk = 0x20_0000 + s * 16 + j;
        let port = 50000 + (s * 5 + j) as u16;
        let up = (ip(10, 0, 0, 9), 8080);
        let ts = t + 100 * MS + j * 20 * MS;
        path(
            e,
            ts,
            sk,
            nginx,
            (app_ip(), port),
            up,
            &[Close, SynSent, Established, FinWait1, FinWait2],
        );
        let mut begin = ev(
            ts + 5 * MS,
            EventKind::TwBegin,
            sk | 0xF000_0000,
            Some(nginx),
            (app_ip(), port),
            up,
            FinWait2,
            TimeWait,
        );
        begin.link = Some(sk);
        e.apply(&begin);
        e.apply(&ev(
            ts + 5 * MS,
            EventKind::Transition,
            sk,
            Some(nginx),
            (app_ip(), port),
            up,
            FinWait2,
            Close,
        ));
        // The timewait sockets of a minute ago expire.
        if s >= 62 {
            let old = s - 60;
            let mut end = ev(
                ts + 5 * MS + (j + 1) * 3 * MS,
                EventKind::TwEnd,
                (0x20_0000 + old * 16 + j) | 0xF000_0000,
                Some(nginx),
                (app_ip(), 50000 + (old * 5 + j) as u16),
                up,
                TimeWait,
                Close,
            );
            end.prev_ns = Some(60 * SEC + (j + 1) * 3 * MS);
            end.reason = Some(crate::model::TwEndReason::Expired);
            e.apply(&end);
        }
    }
    listeners_second(e, s);
    // Every other second, a health checker closes a connection to an IPv6
    // service first: the longest addresses a view has to fit.
    if s.is_multiple_of(2) {
        let checker = owner(3100, "healthcheck");
        let here = (
            IpAddr::V6("2001:db8:ffff:ffff:ffff:ffff:ffff:2".parse().expect("v6")),
            40000 + s as u16,
        );
        let there = (
            IpAddr::V6(
                "2001:db8:ffff:ffff:ffff:ffff:ffff:fe01"
                    .parse()
                    .expect("v6"),
            ),
            8443,
        );
        let sk = 0x30_0000 + s;
        let ts = t + 400 * MS;
        for (i, w) in [Close, SynSent, Established, FinWait1, FinWait2]
            .windows(2)
            .enumerate()
        {
            let mut tr = ev(
                ts + i as u64 * MS,
                EventKind::Transition,
                sk,
                Some(checker),
                here,
                there,
                w[0],
                w[1],
            );
            tr.family = Family::V6;
            e.apply(&tr);
        }
        let mut begin = ev(
            ts + 5 * MS,
            EventKind::TwBegin,
            sk | 0xF000_0000,
            Some(checker),
            here,
            there,
            FinWait2,
            TimeWait,
        );
        begin.family = Family::V6;
        begin.link = Some(sk);
        e.apply(&begin);
        let mut close = ev(
            ts + 5 * MS,
            EventKind::Transition,
            sk,
            Some(checker),
            here,
            there,
            FinWait2,
            Close,
        );
        close.family = Family::V6;
        e.apply(&close);
    }
}

/// The host's network namespace, and a container's.
pub const HOST_NS: u32 = 4026531840;
pub const POD_NS: u32 = 4026532501;

/// The accept queue limit of `slowacceptd` (min(backlog, somaxconn)).
pub const SLOW_LIMIT: u32 = 128;

/// `slowacceptd`'s cumulative drops at second `s`: its queue fills from
/// second 2 (5 connections a second it never accepts) and is full from
/// second 28; from then on 12 SYNs a second are dropped.
pub fn slow_drops_at(s: u64) -> u64 {
    s.saturating_sub(28) * 12
}

/// The listeners' side of second `s` (a sock_diag sample at .900, as the
/// live source takes one a second, and the drops the kernel reported):
/// `slowacceptd` on 10.0.0.2:8080 stops accepting (queue 128/128, 12
/// drops/s from second 28, one of them the handshake's ACK the kernel
/// reports); `api` on *:9000 and `sshd` on *:22 and [::]:22 are healthy; a
/// postgres in a pod's namespace (a long IPv6 address) rejects two SYNs of
/// NATed clients every 5 s on PAWS (timestamps); SYNs to 10.0.0.2:81, where
/// nothing listens, every other second.
fn listeners_second(e: &mut Engine, s: u64) {
    let t = s * SEC;
    let slow = slow_drops_at(s);
    let pg_addr: IpAddr = "fd00:ffff:ffff:ffff:ffff:ffff:ffff:5".parse().expect("v6");
    let mut drops = Vec::new();
    let syn_drop = |ts: u64, netns: u32, local: (IpAddr, u16), remote: (IpAddr, u16)| SynDrop {
        ts_ns: ts,
        netns: Some(netns),
        family: if local.0.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        },
        local: local.0,
        local_port: local.1,
        remote: remote.0,
        remote_port: remote.1,
        reason: DropReason::AcceptQueueFull,
        kernel_reason: 40,
        syn: false,
        ack: true,
        rx_state: Some(TcpState::Listen),
        suppressed: 0,
    };
    if s > 28 {
        drops.push(syn_drop(
            t + 500 * MS,
            HOST_NS,
            (app_ip(), 8080),
            (ip(10, 0, 0, 40), 35000 + s as u16),
        ));
    }
    let paws = s >= 40 && s.is_multiple_of(5);
    if paws {
        for j in 0..2u16 {
            drops.push(SynDrop {
                reason: DropReason::Paws,
                kernel_reason: 36,
                syn: true,
                ack: false,
                ..syn_drop(
                    t + 600 * MS + u64::from(j) * MS,
                    POD_NS,
                    (pg_addr, 5432),
                    (
                        "fd00:ffff:ffff:ffff:ffff:ffff:ffff:99".parse().expect("v6"),
                        41000 + j,
                    ),
                )
            });
        }
    }
    if s.is_multiple_of(2) {
        drops.push(SynDrop {
            reason: DropReason::NoListener,
            kernel_reason: 3,
            syn: true,
            ack: false,
            rx_state: None,
            ..syn_drop(
                t + 700 * MS,
                HOST_NS,
                (app_ip(), 81),
                (ip(10, 0, 0, 77), 52000 + s as u16),
            )
        });
    }
    for d in &drops {
        e.listeners.apply_drop(d);
    }
    let seen = |pid: u32, comm: &str| {
        Some(SeenOwner {
            pid,
            comm: Comm::from_name(comm),
        })
    };
    let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let any6 = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    let sample = |netns: u32, addr: IpAddr, port: u16, inode: u64| ListenerSample {
        netns: Some(netns),
        family: if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        },
        addr,
        port,
        inode,
        owner: None,
        cgroup: None,
        queue: 0,
        limit: 4096,
        drops: Some(0),
    };
    let listeners = vec![
        ListenerSample {
            owner: seen(5150, "slowacceptd"),
            queue: (s.saturating_sub(2) * 5).min(u64::from(SLOW_LIMIT)) as u32,
            limit: SLOW_LIMIT,
            drops: Some(slow),
            ..sample(HOST_NS, app_ip(), 8080, 9001)
        },
        ListenerSample {
            owner: seen(900, "api"),
            queue: u32::from(s.is_multiple_of(3)),
            ..sample(HOST_NS, any4, 9000, 9002)
        },
        ListenerSample {
            owner: seen(1, "sshd"),
            limit: 128,
            ..sample(HOST_NS, any4, 22, 9003)
        },
        ListenerSample {
            owner: seen(1, "sshd"),
            limit: 128,
            ..sample(HOST_NS, any6, 22, 9004)
        },
        ListenerSample {
            owner: seen(3300, "postgres"),
            limit: 244,
            ..sample(POD_NS, pg_addr, 5432, 9005)
        },
    ];
    // The namespaces' TcpExt counters (cumulative, from before tracing).
    let host = DropCounters {
        listen_overflows: Some(1_000 + slow),
        listen_drops: Some(1_200 + slow),
        req_qfull_drop: Some(0),
        paws_passive: Some(7),
        ..DropCounters::default()
    };
    let pod = DropCounters {
        listen_overflows: Some(0),
        listen_drops: Some(0),
        req_qfull_drop: Some(0),
        paws_passive: Some(2 * (s.saturating_sub(35) / 5)),
        ..DropCounters::default()
    };
    e.listeners.apply_sample(
        t + 900 * MS,
        &listeners,
        &[
            NetnsDropCounters {
                netns: HOST_NS,
                counters: host,
            },
            NetnsDropCounters {
                netns: POD_NS,
                counters: pod,
            },
        ],
    );
}

/// The workloads of the listeners' owners, as `top`'s edge names them
/// (the fold; the fixture's owners carry no cgroup).
pub fn name_listener_workloads(d: &mut TopData) {
    for r in d.snap.listeners.iter_mut().flatten() {
        let (name, kind) = match r.pid {
            Some(5150) => ("slowacceptd.service", "unit"),
            Some(3300) => ("shop/postgres-0", "pod"),
            _ => continue,
        };
        r.workload.workload = Some(name.into());
        r.workload.workload_kind = Some(kind);
    }
}

pub fn meta() -> Meta {
    Meta {
        host: "app-01".into(),
        kernel: "6.18.0".into(),
        hook: "tp_btf".into(),
        timewait_hook: "timer tracepoints".into(),
        source: None,
        interval_ms: 1000,
        step_ms: 0,
    }
}

pub fn host(lost: Lost) -> HostFacts {
    HostFacts {
        port_range: (32768, 60999),
        tw_overflow: 0,
        lost,
        decode_errors: 0,
        stacks: Default::default(),
    }
}

/// An app after `until_s` seconds of the incident, refreshed after every
/// second from second 2, with `lost` kernel-side losses.
pub fn app_at(until_s: u64, lost: Lost) -> App {
    let mut app = App::new(meta());
    let mut e = engine();
    let mut feed = Feed::new(0);
    for s in 2..=until_s {
        second(&mut e, s);
        let now = (s + 1) * SEC;
        let mut d = feed.update(
            &mut e,
            &app.request,
            now,
            1_790_000_000 * SEC + now,
            host(lost),
        );
        name_listener_workloads(&mut d);
        app.update(Action::Data(Box::new(d)));
    }
    app
}

/// The standard fixture: 75 s into the incident, nothing lost.
pub fn app() -> App {
    app_at(75, Lost::default())
}

/// The named stacks of the `--stacks` fixture: java's leak opened at
/// `checkout_reserve_items` (7, complete, with file:line), and a second path
/// whose walk was cut (8).
pub fn stack_records() -> Vec<crate::record::Record> {
    use crate::stacks::{Frame, Stack, StackKey, StackQuality};
    let exe = "/opt/shop/bin/shop";
    let frame = |addr: u64, function: &str, off: u64, module: &str, line: Option<u32>| Frame {
        addr,
        function: Some(function.to_string()),
        function_offset: off,
        module: Some(module.to_string()),
        module_offset: addr & 0xffff,
        build_id: Some("3f2a9c".to_string()),
        file: line.map(|_| "/src/shop/orders.c".to_string()),
        line,
    };
    let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    let complete = Stack {
        frames: vec![
            frame(0x7f00_0010_a7c0, "__connect", 0x10, libc, None),
            frame(
                0x5600_0000_1234,
                "checkout_reserve_items",
                0x1c,
                exe,
                Some(37),
            ),
            frame(0x5600_0000_1300, "handle_order", 0x9, exe, Some(52)),
            frame(0x5600_0000_1400, "main", 0x40, exe, Some(61)),
            frame(0x7f00_0002_724a, "__libc_start_call_main", 0x7a, libc, None),
        ],
        quality: StackQuality::Complete,
        depth: 5,
        exe: Some(exe.to_string()),
    };
    let cut = Stack {
        frames: vec![
            frame(0x7f00_0010_a7c0, "__connect", 0x10, libc, None),
            frame(0x5600_0000_2000, "pool_refill", 0x33, exe, Some(88)),
        ],
        quality: StackQuality::Cut,
        depth: 9,
        exe: Some(exe.to_string()),
    };
    vec![
        crate::record::Record::Stack {
            key: StackKey { pid: 4242, id: 7 },
            stack: std::sync::Arc::new(complete),
        },
        crate::record::Record::Stack {
            key: StackKey { pid: 4242, id: 8 },
            stack: std::sync::Arc::new(cut),
        },
    ]
}

/// The standard fixture's engine traced with `--stacks`: java's leaked
/// sockets carry stacks 7 and 8, named through the record applier as the
/// live loop does (the seeded ones have none).
pub fn engine_with_stacks() -> Engine {
    let mut e = engine();
    e.stacks.enabled = true;
    let mut applier = crate::record::RecordApplier::default();
    for rec in stack_records() {
        applier.apply(&mut e, &rec);
    }
    e
}

/// [`app`] traced with `--stacks`.
pub fn app_with_stacks() -> App {
    let mut app = App::new(meta());
    let mut e = engine_with_stacks();
    let mut feed = Feed::new(0);
    for s in 2..=75 {
        second_with(&mut e, s, true);
        let now = (s + 1) * SEC;
        let d = feed.update(
            &mut e,
            &app.request,
            now,
            1_790_000_000 * SEC + now,
            host(Lost::default()),
        );
        app.update(Action::Data(Box::new(d)));
    }
    app
}

/// What the engine answers the standard fixture's current view request
/// (a process's CLOSE_WAIT sockets, a connection page), as `top`'s loop
/// does when the request changes.
pub fn answer(app: &mut App) {
    let mut e = engine();
    for s in 2..=75 {
        second(&mut e, s);
    }
    e.table.counts();
    let page = super::data::conn_page(&e, &app.request, 76 * SEC);
    app.update(Action::Page(page));
}
