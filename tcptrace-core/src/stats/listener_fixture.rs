//! Test fixtures: an engine fed listener samples and kernel drops through
//! the records a live source or a recording gives ([`Record::Listeners`],
//! [`Record::Drop`]), for the tests of the snapshot, its printers, the
//! metrics, the rules and doctor (no kernel needed).

use std::net::{IpAddr, Ipv4Addr};

use crate::{
    engine::Engine,
    listeners::{DropCounters, DropReason, ListenerSample, NetnsDropCounters, SynDrop},
    model::{Comm, Family, SeenOwner, TcpState},
    record::{Record, RecordApplier},
    stats::{HostFacts, Snapshot},
};

pub const S: u64 = 1_000_000_000;
pub const NETNS: u32 = 4026531840;

pub fn lo() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// A listener on 127.0.0.1:`port` owned by `comm` (pid 42 + port % 100).
pub fn sample(port: u16, comm: &str, queue: u32, limit: u32, drops: u64) -> ListenerSample {
    ListenerSample {
        netns: Some(NETNS),
        family: Family::V4,
        addr: lo(),
        port,
        inode: u64::from(port) + 1000,
        owner: Some(SeenOwner {
            pid: 42 + u32::from(port % 100),
            comm: Comm::from_name(comm),
        }),
        cgroup: None,
        queue,
        limit,
        drops: Some(drops),
    }
}

pub fn counters(c: DropCounters) -> Vec<NetnsDropCounters> {
    vec![NetnsDropCounters {
        netns: NETNS,
        counters: c,
    }]
}

/// The namespace's counters with `overflows` ListenOverflows (and as many
/// ListenDrops) and `paws` PAWSPassive.
pub fn netstat(overflows: u64, paws: u64) -> DropCounters {
    DropCounters {
        listen_overflows: Some(overflows),
        listen_drops: Some(overflows),
        req_qfull_drop: Some(0),
        paws_passive: Some(paws),
        ..Default::default()
    }
}

/// A kernel-reported drop of a SYN to 127.0.0.1:`port`.
pub fn syn_drop(ts_ns: u64, port: u16, reason: DropReason) -> SynDrop {
    SynDrop {
        ts_ns,
        netns: Some(NETNS),
        family: Family::V4,
        local: lo(),
        local_port: port,
        remote: lo(),
        remote_port: 40000,
        reason,
        kernel_reason: 0,
        syn: true,
        ack: false,
        rx_state: None,
        suppressed: 0,
    }
}

/// Applies `records` to `engine` as a source would.
pub fn feed(engine: &mut Engine, records: Vec<Record>) {
    let mut applier = RecordApplier::default();
    for r in &records {
        applier.apply(engine, r);
    }
}

pub fn listeners(ts_ns: u64, l: Vec<ListenerSample>, c: DropCounters) -> Record {
    Record::Listeners {
        ts_ns,
        listeners: l,
        counters: counters(c),
    }
}

/// `slowacceptd` on 127.0.0.1:8080 (limit 128) never accepts: 76 SYNs
/// dropped in the second after the first sample, the namespace's
/// ListenOverflows +76; `fastd` on 127.0.0.1:9090 drops none; SYNs to
/// 127.0.0.1:7777 (nobody listens) reported by the kernel. Now: 2 s.
pub fn overflowing() -> Engine {
    let mut e = Engine::new(1024);
    feed(
        &mut e,
        vec![
            listeners(
                S,
                vec![
                    sample(8080, "slowacceptd", 129, 128, 0),
                    sample(9090, "fastd", 0, 128, 0),
                ],
                netstat(10, 0),
            ),
            Record::Drop(syn_drop(S + S / 2, 7777, DropReason::NoListener)),
            Record::Drop(syn_drop(S + S / 2, 7777, DropReason::NoListener)),
            listeners(
                2 * S,
                vec![
                    sample(8080, "slowacceptd", 129, 128, 76),
                    sample(9090, "fastd", 1, 128, 0),
                ],
                netstat(86, 0),
            ),
        ],
    );
    e
}

/// `natd` on 127.0.0.1:8443: SYNs rejected by PAWS at TIME_WAIT sockets
/// (kernel-reported, 20 in the second) and by PAWS at the listener (10).
pub fn paws() -> Engine {
    let mut e = Engine::new(1024);
    let mut recs = vec![listeners(
        S,
        vec![sample(8443, "natd", 0, 4096, 0)],
        netstat(0, 0),
    )];
    for i in 0..20 {
        let mut d = syn_drop(S + i * 10_000_000, 8443, DropReason::TimewaitPaws);
        d.rx_state = Some(TcpState::TimeWait);
        recs.push(Record::Drop(d));
    }
    for i in 0..10 {
        recs.push(Record::Drop(syn_drop(
            S + i * 10_000_000,
            8443,
            DropReason::Paws,
        )));
    }
    recs.push(listeners(
        2 * S,
        vec![sample(8443, "natd", 0, 4096, 0)],
        netstat(0, 10),
    ));
    feed(&mut e, recs);
    e
}

/// The engine's snapshot at 2 s.
pub fn snapshot(e: &mut Engine) -> Snapshot {
    e.snapshot(2 * S, 1_700_000_000 * S, HostFacts::default())
}
