//! Measures userspace memory per live socket with a counting allocator: the
//! connection table holding 200,000 live connections, bytes / sockets; and the
//! aggregates' bounded overhead (histograms per owner and per peer are capped).

use std::net::{IpAddr, Ipv4Addr};

use tcptrace::{
    conn::ConnTable,
    engine::Engine,
    model::{Comm, Event, EventKind, Family, Owner, TcpState},
    stats::MAX_KEYED_HISTOGRAMS,
};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

/// Accept of connection `i` on a server: LISTEN -> SYN_RECV -> ESTABLISHED.
fn accepted(i: u64) -> [Event; 2] {
    let e = Event {
        ts_ns: 1_000 + i,
        kind: EventKind::Transition,
        sk: 0xffff_8880_0000_0000 + i * 2048,
        link: None,
        owner: Some(Owner {
            pid: 1000 + (i % 50) as u32,
            tid: 1000,
            comm: Comm::from_name("server"),
            cgroup: 7,
            from_listener: false,
        }),
        netns: Some(4026531840),
        family: Family::V4,
        saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        sport: 5432,
        daddr: IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i as u32)),
        dport: (i % 60000) as u16,
        old: Some(TcpState::Listen),
        new: TcpState::SynRecv,
        prev_ns: None,
        reason: None,
    };
    let established = Event {
        old: Some(TcpState::SynRecv),
        new: TcpState::Established,
        ts_ns: e.ts_ns + 10,
        ..e
    };
    [e, established]
}

#[test]
fn table_memory_per_live_socket_is_at_most_256_bytes() {
    const N: u64 = 200_000;
    let before = counting_alloc::allocated();
    let mut table = ConnTable::new(1_000_000);
    for i in 0..N {
        for e in accepted(i) {
            table.apply(&e);
        }
    }
    assert_eq!(table.len() as u64, N);
    let bytes = counting_alloc::allocated() - before;
    let per = bytes as f64 / N as f64;
    eprintln!("connection table: {per:.1} bytes per live socket ({bytes} bytes for {N})");
    assert!(per <= 256.0, "{per:.1} bytes per live socket");
}

#[test]
fn aggregates_are_bounded_whatever_the_number_of_peers() {
    let mut engine = Engine::new(1_000_000);
    for i in 0..2_000u64 {
        for e in accepted(i) {
            engine.apply(&e);
        }
    }
    assert_eq!(engine.aggs.by_peer.len(), MAX_KEYED_HISTOGRAMS);
    assert!(engine.aggs.untracked_keys > 0);
}
