//! Synthetic socket events shared by the memory test and the engine
//! benchmark (included with `#[path]`): server-side accepts with distinct
//! 4-tuples, from 4096 peers, owned by one of 50 processes.

use std::net::{IpAddr, Ipv4Addr};

use tcptrace_core::model::{Comm, Event, EventKind, Family, Owner, TcpState};

/// Accept of connection `i` on a server: LISTEN -> SYN_RECV -> ESTABLISHED.
pub fn accepted(i: u64) -> [Event; 2] {
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
        daddr: IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + (i % 4096) as u32)),
        dport: (1024 + i / 4096) as u16,
        old: Some(TcpState::Listen),
        new: TcpState::SynRecv,
        prev_ns: None,
        reason: None,
        stack: None,
    };
    let established = Event {
        old: Some(TcpState::SynRecv),
        new: TcpState::Established,
        ts_ns: e.ts_ns + 10,
        ..e
    };
    [e, established]
}
