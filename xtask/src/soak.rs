//! `cargo xtask soak`: the metrics server under hostile clients for a long
//! time (10 minutes by default; too long for CI's default path) while the
//! tracer drains a real load. `tcptrace stats --metrics` runs against a
//! bounded loopback load in a network namespace of its own; client threads
//! keep sending well-formed scrapes from 127.0.0.2 (which must all succeed)
//! mixed with, from 127.0.0.1,
//! malformed and abusive requests (from the start; memory is measured from
//! the end of a 75 s warm-up): random bytes, lying `Content-Length`,
//! oversized and endless headers, wrong methods, half-sent requests, idle
//! connections, pipelines that are never read. It fails unless the tracer
//! survived, every well-formed scrape was answered, no event was lost in
//! userspace or to a full ring (the kernel's own recursion misses, which no
//! scraper can cause, are reported; `--strict` fails on them too), and its
//! memory and open descriptors stayed under their ceilings.

use std::{
    fs,
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    bench::live::{free_port, metric_sum, scrape},
    setup,
    util::{self, say},
};

/// Options for `cargo xtask soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Minutes to run (at most 60).
    #[arg(long, value_name = "MIN", default_value_t = 10.0)]
    pub minutes: f64,
    /// Hostile client threads.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub clients: usize,
    /// Growth of the tracer's resident memory allowed after warm-up, MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub memory_ceiling: u64,
    /// Connections per second of the load the tracer drains meanwhile.
    #[arg(long, value_name = "PER_SEC", default_value_t = 5000.0)]
    pub load_rate: f64,
    /// Fail on kernel recursion misses too (a transition that interrupted
    /// the hook on the same CPU and was skipped by the kernel: the eBPF
    /// path's own loss, not something a scraper can cause).
    #[arg(long)]
    pub strict: bool,
    /// Seed of the clients' random choices (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// What the soak started: the tracer and the load's namespace, stopped and
/// deleted on every way out (an early error included).
struct Started {
    tracer: std::process::Child,
    ns: Option<String>,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.tracer.try_wait() {
            let _ = self.tracer.kill();
            let _ = self.tracer.wait();
        }
        if let Some(ns) = &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Time before the memory baseline is taken (see its use).
const WARM_UP: Duration = Duration::from_secs(75);

/// A tiny xorshift: the choices only need to vary, and be replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the clients counted.
#[derive(Default)]
struct Tally {
    scrapes_ok: AtomicU64,
    scrapes_failed: AtomicU64,
    abuse: [AtomicU64; ABUSE.len()],
}

const ABUSE: [&str; 10] = [
    "random bytes",
    "huge Content-Length",
    "oversized header",
    "200 headers",
    "wrong method",
    "half-sent request",
    "idle connection",
    "pipeline never read",
    "slowloris",
    "flood of 100 connections",
];

/// Where the well-formed scrapes come from: another address than the
/// abusers' 127.0.0.1 (the server bounds what one address can hold).
const GOOD_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

/// A well-formed `GET /metrics` from [`GOOD_CLIENT`]: the body, if answered 200.
fn good_scrape(port: u16) -> Option<String> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    s.bind(&std::net::SocketAddr::from((GOOD_CLIENT, 0)).into())
        .ok()?;
    s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .ok()?;
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn connect(port: u16) -> Option<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(20))).ok()?;
    Some(s)
}

/// Sends `bytes`, reads whatever comes back until the server closes.
fn exchange(port: u16, bytes: &[u8]) {
    if let Some(mut s) = connect(port) {
        let _ = s.write_all(bytes);
        let _ = s.read_to_end(&mut Vec::new());
    }
}

/// One abusive client action, chosen by `rng`.
fn abuse(port: u16, kind: usize, rng: &mut Rng, stop: &AtomicBool) {
    let hold = |s: TcpStream, secs: u64| {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(200));
        }
        drop(s);
    };
    match kind {
        0 => {
            let junk: Vec<u8> = (0..rng.below(4096) + 1).map(|_| rng.next() as u8).collect();
            exchange(port, &junk);
        }
        1 => exchange(
            port,
            format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                rng.next()
            )
            .as_bytes(),
        ),
        2 => exchange(
            port,
            format!(
                "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
                "a".repeat(rng.below(100_000) as usize + 17_000)
            )
            .as_bytes(),
        ),
        3 => {
            let mut r = String::from("GET /metrics HTTP/1.1\r\n");
            for i in 0..200 {
                r.push_str(&format!("X-{i}: y\r\n"));
            }
            exchange(port, format!("{r}\r\n").as_bytes());
        }
        4 => exchange(port, b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        5 => {
            if let Some(mut s) = connect(port) {
                let _ = s.write_all(b"GET /metr");
                let _ = s.shutdown(Shutdown::Write);
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
        6 => {
            if let Some(s) = connect(port) {
                hold(s, rng.below(40) + 1);
            }
        }
        7 => {
            if let Some(mut s) = connect(port) {
                let _ = s.write_all(
                    "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                        .repeat(rng.below(200) as usize + 1)
                        .as_bytes(),
                );
                hold(s, rng.below(20) + 1);
            }
        }
        9 => {
            let flood: Vec<TcpStream> = (0..100).filter_map(|_| connect(port)).collect();
            thread::sleep(Duration::from_millis(rng.below(3000)));
            drop(flood);
        }
        _ => {
            if let Some(mut s) = connect(port) {
                for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\n".iter() {
                    if s.write_all(&[*b]).is_err() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
}

/// Resident memory (KiB) and open descriptors of `pid`.
fn usage(pid: u32) -> Option<(u64, usize)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// Runs the load generator in namespace `ns` until `stop`, a minute at a
/// time; returns the connections made.
fn load_until(ns: &str, rate: f64, stop: &AtomicBool) -> Result<u64> {
    let exe = std::env::current_exe()?;
    let mut made = 0;
    while !stop.load(Ordering::Relaxed) {
        let out = util::stdout_of(
            Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(&exe)
                .args(["loadgen", "--json", "--threads", "1", "--mode", "mixed"])
                .args(["--rate", &rate.to_string(), "--duration", "30"]),
        )?;
        made += crate::loadgen::LoadResult::from_json(&out)?.connections;
    }
    Ok(made)
}

pub fn main(args: &SoakArgs) -> Result<()> {
    if !(args.minutes > 0.0 && args.minutes <= 60.0) {
        bail!("--minutes must be in (0, 60]");
    }
    setup::ensure(true)?;
    let bin = crate::install::build_release()?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    say(format!(
        "==> soak: {} min, {} hostile clients, seed {seed}",
        args.minutes, args.clients
    ));
    let port = free_port()?;
    let metrics = format!("127.0.0.1:{port}");
    let tracer = Command::new(&bin)
        .args(["stats", "--interval", "3600", "--metrics", &metrics])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let mut started = Started { tracer, ns: None };
    let pid = started.tracer.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape(port).is_none() {
        if Instant::now() > deadline {
            bail!("tcptrace stats did not answer within 30 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let ns = format!("tcptrace-soak-{}", std::process::id());
    util::run(Command::new("ip").args(["netns", "add", &ns]))?;
    started.ns = Some(ns.clone());
    util::run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = {
        let (ns, stop, rate) = (ns.clone(), stop.clone(), args.load_rate);
        thread::spawn(move || load_until(&ns, rate, &stop))
    };
    let clients: Vec<_> = (0..args.clients.clamp(1, 64))
        .map(|i| {
            let (stop, tally) = (stop.clone(), tally.clone());
            let mut rng = Rng(seed.wrapping_mul(i as u64 * 2 + 1) | 1);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Half well-formed scrapes, half abuse.
                    if rng.below(2) == 0 {
                        let ok =
                            good_scrape(port).is_some_and(|b| b.contains("tcptrace_events_total"));
                        let counter = if ok {
                            &tally.scrapes_ok
                        } else {
                            &tally.scrapes_failed
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let kind = rng.below(ABUSE.len() as u64) as usize;
                        abuse(port, kind, &mut rng, &stop);
                        tally.abuse[kind].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Warm-up, then the memory baseline; samples every 5 s. The load's
    // TIME_WAIT sockets live 60 s: past that the connection table keeps its
    // size, and what grows after is the server's (or a leak).
    thread::sleep(WARM_UP);
    let (base_rss, base_fds) = usage(pid).context("the tracer is gone")?;
    let end = Instant::now() + Duration::from_secs_f64(args.minutes * 60.0).saturating_sub(WARM_UP);
    let (mut max_rss, mut max_fds) = (base_rss, base_fds);
    let mut died = None;
    while Instant::now() < end {
        thread::sleep(Duration::from_secs(5));
        if let Some(status) = started.tracer.try_wait()? {
            died = Some(status);
            break;
        }
        if let Some((rss, fds)) = usage(pid) {
            max_rss = max_rss.max(rss);
            max_fds = max_fds.max(fds);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let connections = load.join().map_err(|_| anyhow::anyhow!("load thread"))??;
    let body = scrape(port).unwrap_or_default();
    let lost = metric_sum(&body, "tcptrace_lost_events_total");
    let nesting = body
        .lines()
        .find_map(|l| l.strip_prefix("tcptrace_lost_events_total{source=\"recursion_misses\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    // What the server and the consumer could have caused: everything but
    // the kernel's recursion misses.
    let lost_here = lost.saturating_sub(nesting);
    let lost_by_source: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("tcptrace_lost_events_total{") && !l.ends_with(" 0"))
        .collect();
    let events = metric_sum(&body, "tcptrace_events_total");
    // The child we started, by pid.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = started.tracer.wait()?;
    drop(started);

    let ok = tally.scrapes_ok.load(Ordering::Relaxed);
    let failed = tally.scrapes_failed.load(Ordering::Relaxed);
    say(format!(
        "load: {connections} connections ({} per second asked); tracer: {events} events, {lost} lost {lost_by_source:?}",
        args.load_rate
    ));
    say(format!("scrapes: {ok} answered, {failed} failed"));
    for (name, n) in ABUSE.iter().zip(&tally.abuse) {
        say(format!("  {name}: {}", n.load(Ordering::Relaxed)));
    }
    say(format!(
        "memory: {} -> max {} MiB (ceiling +{} MiB); descriptors: {base_fds} -> max {max_fds}",
        base_rss / 1024,
        max_rss / 1024,
        args.memory_ceiling
    ));
    let mut problems = Vec::new();
    if let Some(status) = died {
        problems.push(format!("the tracer died: {status}"));
    }
    if !exit.success() && died.is_none() {
        problems.push(format!("the tracer exited with {exit}"));
    }
    if failed > 0 || ok == 0 {
        problems.push(format!(
            "{failed} well-formed scrapes failed ({ok} answered)"
        ));
    }
    if lost_here > 0 || events == 0 {
        problems.push(format!(
            "{lost_here} events lost of {events} (ring full, map full, evictions or decode errors)"
        ));
    }
    if nesting > 0 {
        say(format!(
            "kernel recursion misses: {nesting} of {events} (nested hook runs the kernel skipped; {})",
            if args.strict {
                "failing: --strict"
            } else {
                "reported, not the server's doing; --strict fails on them"
            }
        ));
        if args.strict {
            problems.push(format!("{nesting} recursion misses"));
        }
    }
    if max_rss > base_rss + args.memory_ceiling * 1024 {
        problems.push(format!("memory grew {} MiB", (max_rss - base_rss) / 1024));
    }
    // The server's cap (64) plus the tracer's own descriptors and slack.
    if max_fds > base_fds + 64 + 16 {
        problems.push(format!("{max_fds} descriptors open (from {base_fds})"));
    }
    if problems.is_empty() {
        say("==> soak passed");
        Ok(())
    } else {
        bail!("soak failed (seed {seed}): {}", problems.join("; "))
    }
}
