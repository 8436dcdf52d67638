//! User stacks (`--stacks`) on the real kernel, below any symbolizer: the
//! eBPF program captures the user stack where a lifecycle starts (connect,
//! listen, accept) into the kernel's stack map, and its id travels in every
//! event of the socket (`event_flags::STACK_KNOWN`, `RawEvent::stack_id`).
//! Checked on the raw records: a C service built with frame pointers
//! (`tests/stacks/stackleak.c`) connects 30 times, and every connect carries
//! a stack whose caller frame lies in the service's own code; without
//! `--stacks` no event carries one and nothing is counted; a stack map too
//! small for the stacks it is offered counts its misses
//! (`Counter::StackMiss`) instead of naming the wrong code.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{
    stacks::{Service, build_stackleak, closing_listener},
    tracer_with, wait_for,
};
use tcptrace::ebpf::{LoadOptions, Tracer};
use tcptrace_common::{Filter, RawEvent, event_flags, tcp_state};

const WAIT: Duration = Duration::from_secs(30);

/// Every record waiting, as the kernel wrote it.
fn poll_raw(tracer: &mut Tracer, into: &mut Vec<RawEvent>) {
    tracer.drain(|bytes| {
        assert_eq!(bytes.len(), RawEvent::SIZE, "a record of another size");
        // SAFETY: RawEvent is plain old data of exactly this size.
        into.push(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) });
    });
}

/// Polls until `done(events)` holds, or panics after [`WAIT`].
fn collect_raw(
    tracer: &mut Tracer,
    events: &mut Vec<RawEvent>,
    what: &str,
    done: impl Fn(&[RawEvent]) -> bool,
) {
    let end = Instant::now() + WAIT;
    loop {
        poll_raw(tracer, events);
        if done(events) {
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The connect()s (CLOSE -> SYN_SENT) of process `pid`.
fn connects(events: &[RawEvent], pid: u32) -> Vec<RawEvent> {
    events
        .iter()
        .filter(|e| {
            e.tgid == pid
                && e.flags & event_flags::OWNER_KNOWN != 0
                && e.old == tcp_state::CLOSE
                && e.new == tcp_state::SYN_SENT
        })
        .copied()
        .collect()
}

fn stack_of(e: &RawEvent) -> Option<u32> {
    (e.flags & event_flags::STACK_KNOWN != 0).then_some(u32::from(e.stack_id))
}

/// The executable mappings (start, end) of `pid`'s own program file.
fn exe_text(pid: u32) -> Vec<(u64, u64)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the service's exe");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("the service's maps");
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = f.nth(3)?;
            if !perms.contains('x') || std::path::Path::new(path) != exe {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

fn with_stacks(entries: u32, filter: Filter) -> LoadOptions {
    LoadOptions {
        filter,
        stacks: true,
        stack_entries: entries,
        ..LoadOptions::default()
    }
}

#[test]
fn every_connect_of_a_frame_pointer_service_carries_its_stack() {
    let mut tracer = tracer_with(with_stacks(8192, Filter::default()));
    assert!(tracer.stacks_on());
    assert_eq!(tracer.stack_depth(), 127);
    let (port, server) = closing_listener(30);
    let service = Service::start(&build_stackleak(), port, 25, 5);
    let mut events = Vec::new();
    collect_raw(&mut tracer, &mut events, "30 connects", |ev| {
        connects(ev, service.pid).len() == 30
    });
    let stacks = tracer
        .take_stack_map()
        .expect("the stack map with --stacks");
    assert!(tracer.take_stack_map().is_none(), "taken once");
    let text = exe_text(service.pid);
    assert!(!text.is_empty(), "stackleak has an executable mapping");
    let mut ids = HashMap::new();
    for e in connects(&events, service.pid) {
        let id = stack_of(&e).unwrap_or_else(|| panic!("a connect without a stack: {e:?}"));
        let trace = stacks
            .get(&id, 0)
            .unwrap_or_else(|err| panic!("stack {id} not in the map: {err}"));
        let ips: Vec<u64> = trace.frames().iter().map(|f| f.ip).collect();
        // libc's connect (no frame pointer), the caller of open_connection,
        // then handle_order / refresh_caches, main, libc's start.
        assert!(ips.len() >= 3, "a shallow stack: {ips:x?}");
        assert!(
            text.iter().any(|&(a, b)| (a..b).contains(&ips[1])),
            "frame 1 ({:#x}) is not in stackleak's code {text:x?}",
            ips[1]
        );
        *ids.entry(id).or_insert(0) += 1;
    }
    // Two code paths (the leaking one, the closing one): two stacks.
    let mut counts: Vec<u32> = ids.values().copied().collect();
    counts.sort_unstable();
    assert_eq!(counts, [5, 25], "stack ids by count: {ids:?}");

    // The listener (this test process) carries its listen() stack, and its
    // accepted sockets the accept()ing thread's from then on (a thread of
    // the same process: no Accept event; the next transition carries it).
    let me = std::process::id();
    let listen = events
        .iter()
        .find(|e| e.tgid == me && e.new == tcp_state::LISTEN && e.sport == port)
        .expect("the listener's CLOSE -> LISTEN");
    let listen_stack = stack_of(listen).expect("listen() captures a stack");
    drop(service);
    assert_eq!(server.join().expect("the closing listener"), 30);
    collect_raw(
        &mut tracer,
        &mut events,
        "the accepted sockets closing",
        |ev| {
            ev.iter()
                .filter(|e| e.sport == port && e.old == tcp_state::ESTABLISHED)
                .count()
                >= 30
        },
    );
    let after_accept: Vec<Option<u32>> = events
        .iter()
        .filter(|e| e.sport == port && e.old == tcp_state::ESTABLISHED)
        .map(stack_of)
        .collect();
    assert!(
        after_accept
            .iter()
            .all(|s| s.is_some() && *s != Some(listen_stack)),
        "accepted sockets carry the accept() stack, not listen()'s ({listen_stack}): {after_accept:?}"
    );
}

#[test]
fn without_stacks_no_event_carries_one_and_nothing_is_counted() {
    let mut tracer = tracer_with(LoadOptions::default());
    assert!(!tracer.stacks_on());
    assert!(tracer.take_stack_map().is_none());
    let (port, server) = closing_listener(6);
    let service = Service::start(&build_stackleak(), port, 5, 1);
    let mut events = Vec::new();
    collect_raw(&mut tracer, &mut events, "6 connects", |ev| {
        connects(ev, service.pid).len() == 6
    });
    drop(service);
    assert_eq!(server.join().expect("the closing listener"), 6);
    poll_raw(&mut tracer, &mut events);
    let with_stack: Vec<&RawEvent> = events
        .iter()
        .filter(|e| e.flags & event_flags::STACK_KNOWN != 0 || e.stack_id != 0)
        .collect();
    assert!(
        with_stack.is_empty(),
        "stacks without --stacks: {with_stack:?}"
    );
    assert_eq!(tracer.counters().stack_miss, 0);
}

#[test]
fn a_full_stack_map_counts_its_misses() {
    // 64 buckets, 200 processes: each one's stack is new (ASLR), so most
    // find their bucket taken (no REUSE_STACKID) or the map full.
    const PROCESSES: usize = 200;
    let mut comm = [0u8; 16];
    comm[..9].copy_from_slice(b"stackleak");
    let filter = Filter {
        comm_set: 1,
        comm,
        ..Filter::default()
    };
    let mut tracer = tracer_with(with_stacks(64, filter));
    let (port, server) = closing_listener(PROCESSES);
    let bin = build_stackleak();
    let mut events = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..PROCESSES {
        let mut service = Service::start(&bin, port, 1, 0);
        pids.push(service.pid);
        service.stop();
        poll_raw(&mut tracer, &mut events);
    }
    assert_eq!(server.join().expect("the closing listener"), PROCESSES);
    wait_for("stack misses counted", WAIT, || {
        tracer.counters().stack_miss > 0
    });
    collect_raw(&mut tracer, &mut events, "every connect", |ev| {
        pids.iter().all(|&pid| connects(ev, pid).len() == 1)
    });
    let all: Vec<RawEvent> = pids
        .iter()
        .flat_map(|&pid| connects(&events, pid))
        .collect();
    let kept: Vec<u32> = all.iter().filter_map(stack_of).collect();
    let missed = (all.len() - kept.len()) as u64;
    let distinct: std::collections::HashSet<u32> = kept.iter().copied().collect();
    assert!(
        !kept.is_empty() && distinct.len() <= 64,
        "{} stacks kept in 64 entries",
        distinct.len()
    );
    assert!(missed > 0, "200 new stacks in 64 entries, none missed");
    // Every miss is counted (at least these: another stackleak on the host,
    // another test's, may add its own; the comm filter keeps everyone
    // else's stacks out of the map).
    assert!(tracer.counters().stack_miss >= missed);
}

#[test]
fn the_classic_tracepoint_captures_them_too() {
    let mut tracer = tracer_with(LoadOptions {
        hook: tcptrace::ebpf::HookChoice::Tracepoint,
        ..with_stacks(1024, Filter::default())
    });
    assert_eq!(tracer.hooks.transitions, "tracepoint");
    let (port, server) = closing_listener(6);
    let service = Service::start(&build_stackleak(), port, 5, 1);
    let mut events = Vec::new();
    collect_raw(&mut tracer, &mut events, "6 connects", |ev| {
        connects(ev, service.pid).len() == 6
    });
    let stacks = tracer.take_stack_map().expect("the stack map");
    let text = exe_text(service.pid);
    for e in connects(&events, service.pid) {
        let id = stack_of(&e).unwrap_or_else(|| panic!("a connect without a stack: {e:?}"));
        let ips: Vec<u64> = stacks
            .get(&id, 0)
            .expect("in the map")
            .frames()
            .iter()
            .map(|f| f.ip)
            .collect();
        assert!(
            ips.len() >= 3 && text.iter().any(|&(a, b)| (a..b).contains(&ips[1])),
            "{ips:x?}"
        );
    }
    drop(service);
    assert_eq!(server.join().expect("the closing listener"), 6);
}
