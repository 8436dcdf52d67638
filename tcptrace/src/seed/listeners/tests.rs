//! The sampler against the kernel: listeners in network namespaces these
//! tests create, checked against `ss -ltnm` and `/proc/net/netstat` read
//! inside the same namespace.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};
use tcptrace_core::{
    listeners::{DropCounters, ListenerSample},
    model::Family,
    record::Record,
};

use super::*;
use crate::{
    seed::{in_namespace, testutil::cost},
    source::timewait_check::thread_cpu_ns,
};

const SEC: u64 = 1_000_000_000;

/// A named namespace (`ip netns add`) with `lo` up, deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn create(tag: &str) -> Self {
        let name = format!("tcptrace-ls-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    fn inode(&self) -> u32 {
        namespace_inode(&self.path()).unwrap() as u32
    }

    /// `cmd` run inside it; its stdout.
    fn exec(&self, cmd: &[&str]) -> String {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }

    /// `ss -Hltnm` inside it, by port.
    fn ss(&self) -> Vec<SsListener> {
        parse_ss(&self.exec(&["ss", "-Hltnm"]))
    }

    fn netstat(&self) -> DropCounters {
        DropCounters::from_netstat(&self.exec(&["cat", "/proc/net/netstat"]))
    }

    fn delete(self) {
        // Drop does it.
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .expect("run a command");
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A LISTEN line of `ss -ltnm` and its `skmem` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SsListener {
    port: u16,
    queue: u32,
    limit: u32,
    drops: u64,
}

fn parse_ss(text: &str) -> Vec<SsListener> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"LISTEN") {
            continue;
        }
        let port = f[3].rsplit_once(':').unwrap().1.parse().unwrap();
        let skmem = lines.next().expect("an skmem line after LISTEN");
        let inner = skmem
            .trim()
            .strip_prefix("skmem:(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("skmem line: {skmem}"));
        let drops = inner
            .split(',')
            .find_map(|t| t.strip_prefix('d')?.parse().ok())
            .expect("d in skmem");
        out.push(SsListener {
            port,
            queue: f[1].parse().unwrap(),
            limit: f[2].parse().unwrap(),
            drops,
        });
    }
    out
}

/// Waits (bounded) for `ok`, polling every 20 ms.
fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn parts(rec: &Record) -> (&[ListenerSample], &[NetnsDropCounters]) {
    match rec {
        Record::Listeners {
            listeners,
            counters,
            ..
        } => (listeners, counters),
        other => panic!("not a Listeners record: {other:?}"),
    }
}

fn find(rec: &Record, netns: u32, port: u16) -> Option<ListenerSample> {
    parts(rec)
        .0
        .iter()
        .find(|l| l.netns == Some(netns) && l.port == port)
        .cloned()
}

fn counters_of(rec: &Record, netns: u32) -> Option<DropCounters> {
    parts(rec)
        .1
        .iter()
        .find(|c| c.netns == netns)
        .map(|c| c.counters)
}

/// A listener with `backlog` on `addr` (port 0), made in `ns`.
fn listen_in(ns: &TestNetns, addr: &str, backlog: i32) -> (Socket, u16) {
    let addr: SocketAddr = addr.parse().unwrap();
    in_namespace(&ns.path(), move || {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(backlog).unwrap();
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        (s, port)
    })
    .unwrap()
}

/// `n` non-blocking connects to 127.0.0.1:`port`, made in `ns`.
fn connect_many(ns: &TestNetns, port: u16, n: usize) -> Vec<Socket> {
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    in_namespace(&ns.path(), move || {
        (0..n)
            .map(|_| {
                let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                c.set_nonblocking(true).unwrap();
                match c.connect(&to.into()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                    Err(e) => panic!("connect: {e}"),
                }
                c
            })
            .collect()
    })
    .unwrap()
}

/// A backlog-1 listener that never accepts, 40 clients: the sample's queue,
/// limit and drop count are `ss -ltnm`'s, its namespace counters are
/// netstat's, the drops are the namespace's ListenDrops, and a normal
/// listener beside it shows none.
#[test]
fn sample_matches_ss_after_a_backlog_one_listener_overflows() {
    let ns = TestNetns::create("ovf");
    let netns = ns.inode();
    let (_full, port) = listen_in(&ns, "127.0.0.1:0", 1);
    let (_normal, normal_port) = listen_in(&ns, "127.0.0.1:0", 128);
    let mut sampler = ListenerSampler::new(true);

    let first = sampler.sample(SEC).unwrap();
    assert!(sampler.namespaces().contains(&netns));
    let l = find(&first, netns, port).expect("the listener in the first sample");
    assert_eq!((l.queue, l.limit, l.drops), (0, 1, Some(0)), "{l:?}");
    assert_eq!(l.family, Family::V4);
    assert_eq!(l.addr, std::net::IpAddr::from([127, 0, 0, 1]));
    assert_ne!(l.inode, 0);
    let owner = l.owner.expect("an owner");
    assert_eq!(owner.pid, std::process::id());
    let before = counters_of(&first, netns).expect("counters of the namespace");
    assert_eq!(before, ns.netstat());
    assert_eq!(before.listen_overflows, Some(0), "a fresh namespace");

    let clients = connect_many(&ns, port, 40);
    wait_for(
        "drops at the backlog-1 listener",
        Duration::from_secs(10),
        || {
            ns.ss()
                .iter()
                .any(|s| s.port == port && s.queue == 2 && s.drops >= 20)
        },
    );
    // No more SYN retransmits: the counts stop moving.
    drop(clients);

    // Between two equal `ss` readings, the sample must be exactly theirs.
    let mut compared = false;
    for attempt in 0..50 {
        let (ss_before, stat_before) = (ns.ss(), ns.netstat());
        // A moved drop count makes it read netstat again; a later attempt
        // may see none moved: time forces the read.
        let rec = sampler
            .sample(2 * SEC + attempt * NETSTAT_EVERY_NS)
            .unwrap();
        let (ss_after, stat_after) = (ns.ss(), ns.netstat());
        if ss_before != ss_after || stat_before != stat_after {
            continue;
        }
        for want in &ss_after {
            let got = find(&rec, netns, want.port)
                .unwrap_or_else(|| panic!("{want:?} missing from {rec:?}"));
            assert_eq!(
                (got.queue, got.limit, got.drops),
                (want.queue, want.limit, Some(want.drops)),
                "port {}",
                want.port
            );
        }
        assert_eq!(
            parts(&rec)
                .0
                .iter()
                .filter(|l| l.netns == Some(netns))
                .count(),
            ss_after.len()
        );
        let full = find(&rec, netns, port).unwrap();
        assert_eq!((full.queue, full.limit), (2, 1), "backlog 1 holds 2");
        let drops = full.drops.unwrap();
        assert!(drops >= 20, "{full:?}");
        assert_eq!(full.owner.map(|o| o.pid), Some(std::process::id()));
        let normal = find(&rec, netns, normal_port).unwrap();
        assert_eq!((normal.queue, normal.drops), (0, Some(0)), "{normal:?}");

        let after = counters_of(&rec, netns).unwrap();
        assert_eq!(after, stat_after, "netstat read through the kept file");
        let delta = after.since(&before);
        assert_eq!(
            delta.listen_drops,
            Some(drops),
            "the only listener dropping: its count is the namespace's ListenDrops"
        );
        assert!(
            delta.listen_overflows.unwrap() > 0,
            "accept queue overflows counted: {delta:?}"
        );
        println!(
            "backlog-1 listener: queue {}/{} drops {drops}; namespace ListenOverflows +{:?} ListenDrops +{:?}",
            full.queue, full.limit, delta.listen_overflows, delta.listen_drops
        );
        compared = true;
        break;
    }
    assert!(compared, "ss never read the same twice in a row");
}

/// A namespace created after the sampler started is sampled from the next
/// listing on (not before: listing waits 10 s); once deleted, it is no
/// longer sampled.
#[test]
fn finds_a_new_namespace_and_drops_a_deleted_one() {
    let mut sampler = ListenerSampler::new(true);
    let t0 = 100 * SEC;
    sampler.sample(t0).unwrap();
    let own = current_netns().unwrap();
    assert_eq!(sampler.namespaces()[0], own, "our own namespace first");

    let ns = TestNetns::create("new");
    let netns = ns.inode();
    let (listener, port) = listen_in(&ns, "127.0.0.1:0", 16);

    let soon = sampler.sample(t0 + SEC).unwrap();
    assert!(counters_of(&soon, netns).is_none(), "listed again too soon");
    assert!(find(&soon, netns, port).is_none());

    let later = sampler.sample(t0 + RELIST_EVERY_NS).unwrap();
    assert!(sampler.namespaces().contains(&netns));
    assert!(counters_of(&later, netns).is_some());
    let l = find(&later, netns, port).expect("the new namespace's listener");
    assert_eq!((l.queue, l.limit, l.drops), (0, 16, Some(0)));
    assert_eq!(l.owner.map(|o| o.pid), Some(std::process::id()));

    drop(listener);
    ns.delete();
    let gone = sampler.sample(t0 + 2 * RELIST_EVERY_NS).unwrap();
    assert!(!sampler.namespaces().contains(&netns));
    assert!(counters_of(&gone, netns).is_none());
    assert!(parts(&gone).0.iter().all(|l| l.netns != Some(netns)));
    assert_eq!(sampler.namespaces()[0], own);
}

/// A sampler of one namespace keeps answering for it from any thread, with
/// both families, and `max_listeners` caps a sample.
#[test]
fn one_namespace_from_any_thread_and_capped() {
    let ns = TestNetns::create("cap");
    let netns = ns.inode();
    let (_a, a) = listen_in(&ns, "127.0.0.1:0", 8);
    let (_b, b) = listen_in(&ns, "[::1]:0", 9);
    let mut sampler = in_namespace(&ns.path(), || {
        let mut s = ListenerSampler::new(false);
        s.sample(SEC).unwrap();
        s
    })
    .unwrap();
    assert_eq!(sampler.namespaces(), [netns]);
    // From this thread (another namespace), still that namespace's.
    let rec = sampler.sample(2 * SEC).unwrap();
    let (listeners, counters) = parts(&rec);
    assert_eq!(listeners.len(), 2, "{listeners:?}");
    let v4 = find(&rec, netns, a).unwrap();
    let v6 = find(&rec, netns, b).unwrap();
    assert_eq!((v4.family, v4.limit), (Family::V4, 8));
    assert_eq!((v6.family, v6.limit), (Family::V6, 9));
    assert_eq!(
        v6.addr,
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
    );
    assert_eq!(counters.len(), 1);
    assert_eq!(counters[0].netns, netns);
    assert_eq!(counters[0].counters, ns.netstat());
    assert_eq!(sampler.netstat_reads(), 1, "quiet: the counters repeated");
    let (_, quiet) = parts(&rec);
    let later = sampler.sample(2 * SEC + NETSTAT_EVERY_NS).unwrap();
    assert_eq!(sampler.netstat_reads(), 2, "read again after 10 s");
    assert_eq!(parts(&later).1, quiet);

    let (_c, _) = listen_in(&ns, "127.0.0.1:0", 10);
    sampler.max_listeners = 2;
    let capped = sampler.sample(3 * SEC + NETSTAT_EVERY_NS).unwrap();
    assert_eq!(parts(&capped).0.len(), 2);
    assert_eq!(sampler.left_out(), 1);
}

/// `max_namespaces` keeps the first listed: our own.
#[test]
fn namespaces_are_capped() {
    let _ns = TestNetns::create("nscap");
    let mut sampler = ListenerSampler::new(true);
    sampler.max_namespaces = 1;
    let rec = sampler.sample(SEC).unwrap();
    let own = current_netns().unwrap();
    assert_eq!(sampler.namespaces(), [own]);
    assert_eq!(parts(&rec).1.len(), 1);
    assert!(parts(&rec).0.iter().all(|l| l.netns == Some(own)));
}

/// /proc is scanned only for an inode the cache does not know, and at most
/// every 5 s; until then a new listener has no owner.
#[test]
fn owners_come_from_a_cache_scanned_when_needed() {
    let ns = TestNetns::create("own");
    let netns = ns.inode();
    let (_a, a) = listen_in(&ns, "127.0.0.1:0", 4);
    // Opened on first use, in the calling thread's namespace: inside it.
    let mut sampler = in_namespace(&ns.path(), || {
        let mut s = ListenerSampler::new(false);
        s.sample(SEC).unwrap();
        s
    })
    .unwrap();
    assert_eq!(sampler.owner_scans(), 1);
    let rec = sampler.sample(2 * SEC).unwrap();
    assert_eq!(sampler.owner_scans(), 1, "nothing new: no scan");
    let me = std::process::id();
    assert_eq!(find(&rec, netns, a).unwrap().owner.map(|o| o.pid), Some(me));

    let (_b, b) = listen_in(&ns, "127.0.0.1:0", 4);
    let rec = sampler.sample(3 * SEC).unwrap();
    assert_eq!(sampler.owner_scans(), 1, "the last scan is too recent");
    assert_eq!(find(&rec, netns, b).unwrap().owner, None);
    assert_eq!(find(&rec, netns, a).unwrap().owner.map(|o| o.pid), Some(me));

    let rec = sampler.sample(SEC + OWNER_SCAN_EVERY_NS).unwrap();
    assert_eq!(sampler.owner_scans(), 2);
    assert_eq!(find(&rec, netns, b).unwrap().owner.map(|o| o.pid), Some(me));
}

/// One sample's cost with 1 and with 50 namespaces (each created here with
/// two listeners), steady state (no listing, no /proc scan), beside the
/// listing and owner scan that happen at most every 10 s and 5 s.
#[test]
#[ignore = "measurement: cargo test -p tcptrace --lib -- --ignored --nocapture measure_listener"]
fn measure_listener_sample_cost() {
    for n in [1usize, 50] {
        let spaces: Vec<TestNetns> = (0..n)
            .map(|i| TestNetns::create(&format!("m{i}")))
            .collect();
        let held: Vec<(Socket, u16)> = spaces
            .iter()
            .flat_map(|ns| {
                [
                    listen_in(ns, "127.0.0.1:0", 128),
                    listen_in(ns, "[::1]:0", 128),
                ]
            })
            .collect();
        let mut sampler = ListenerSampler::new(true);
        let mut t = SEC;
        let (c0, w0) = (thread_cpu_ns(), Instant::now());
        let first = sampler.sample(t).unwrap();
        let first_cost = ((thread_cpu_ns() - c0) / 1_000, w0.elapsed().as_micros());
        let listeners = parts(&first).0.len();
        let reads = sampler.netstat_reads();
        let steady = cost(31, || {
            t += SEC / 100;
            sampler.sample(t).unwrap();
        });
        assert_eq!(
            sampler.netstat_reads(),
            reads,
            "quiet samples repeat counters"
        );
        let relist = cost(5, || {
            t += RELIST_EVERY_NS;
            sampler.sample(t).unwrap();
        });
        let owners = cost(5, || {
            let _ = crate::seed::socket_owners();
        });
        // Its parts: the dumps, the netstat reads.
        let mut out = Vec::new();
        let dumps = cost(31, || {
            out.clear();
            for ns in &mut sampler.namespaces {
                ns.dump(MAX_LISTENERS, &mut out).unwrap();
            }
        });
        let mut buf = Vec::new();
        let netstat = cost(31, || {
            for ns in &sampler.namespaces {
                let _ = ns.counters(&mut buf);
            }
        });
        println!(
            "{n:>2} test namespaces ({} sampled, {listeners} listeners): first sample (opens all) cpu {} us wall {} us | \
             steady (quiet) sample cpu {} us wall {} us | with re-listing cpu {} us wall {} us | /proc owner scan cpu {} us wall {} us\n    \
             of a steady sample: dumps cpu {} us wall {} us, netstat reads (when drops moved, or every 10 s) cpu {} us wall {} us",
            sampler.namespaces().len(),
            first_cost.0,
            first_cost.1,
            steady.0,
            steady.1,
            relist.0,
            relist.1,
            owners.0,
            owners.1,
            dumps.0,
            dumps.1,
            netstat.0,
            netstat.1
        );
        drop(sampler);
        drop(held);
        drop(spaces);
    }
    // Our own namespace only.
    let mut sampler = ListenerSampler::new(false);
    let mut t = SEC;
    sampler.sample(t).unwrap();
    let steady = cost(31, || {
        t += SEC / 100;
        sampler.sample(t).unwrap();
    });
    println!(
        "own namespace only (new(false)): steady sample cpu {} us wall {} us",
        steady.0, steady.1
    );
}

/// The integrator may sample from any thread (a blocking task).
#[test]
fn the_sampler_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<ListenerSampler>();
}
