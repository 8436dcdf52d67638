//! `cargo xtask loadgen`: a bounded loopback load generator for the
//! benchmarks. It makes short TCP connections to a server of its own on
//! 127.0.0.1 (or ::1) as fast as the box allows, for a fixed count or a
//! fixed time (both capped), with the close pattern of the incident at hand:
//!
//! - `active`: the client closes first, so TIME_WAIT piles on the client
//!   side (a prober or a proxy without keep-alive to its backends);
//! - `passive`: the server closes first, so TIME_WAIT piles on the server's
//!   own port (a service closing its side);
//! - `mixed`: the two alternate;
//! - `close-wait`: the client closes first and the server holds the accepted
//!   sockets in CLOSE_WAIT, in batches of `--hold`, before closing them (a
//!   connection leak that a pool eventually cleans up).
//!
//! It knows how many connections it made, so a tracer's event count can be
//! checked against what must have happened ([`transitions_per_connection`]).

use std::{
    io::{ErrorKind, Read},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};

/// Longest run allowed, so a mistake cannot load the box for long.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Most connections allowed in one run.
pub const MAX_CONNECTIONS: u64 = 100_000_000;

/// Who closes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Active,
    Passive,
    Mixed,
    CloseWait,
}

/// Options for `cargo xtask loadgen`.
#[derive(Clone, Debug, Args)]
pub struct LoadArgs {
    /// Stop after this many connections (default: run for --duration).
    #[arg(long, value_name = "N")]
    pub connections: Option<u64>,
    /// Stop after this many seconds (at most 600).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,
    /// Who closes first.
    #[arg(long, value_enum, default_value = "active")]
    pub mode: Mode,
    /// Client threads (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Connections per second at most, all threads together (default: as
    /// fast as the box allows).
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// With `close-wait`: sockets held in CLOSE_WAIT (per server thread) before a batch is closed.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub hold: usize,
    /// Server ports of each kind, cycled through by the clients: TIME_WAIT
    /// on the client side holds ephemeral ports per destination, so one
    /// destination caps the rate (as it does for a real prober).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub ports: usize,
    /// Use ::1 instead of 127.0.0.1.
    #[arg(long)]
    pub ipv6: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What a run did (`--json` prints it).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct LoadResult {
    pub connections: u64,
    pub seconds: f64,
    /// Connections whose connect() failed (e.g. EADDRNOTAVAIL); not counted above.
    pub failed: u64,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.connections as f64 / self.seconds.max(1e-9)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text.trim()).with_context(|| format!("loadgen printed {text:?}"))
    }
}

/// State transitions `inet_sock_set_state` reports per connection in `mode`,
/// both ends counted (client: CLOSE->SYN_SENT->ESTABLISHED->FIN_WAIT1->
/// FIN_WAIT2->CLOSE for the closer, ESTABLISHED->CLOSE_WAIT->LAST_ACK->CLOSE
/// for the other; server child: SYN_RECV->ESTABLISHED plus its creation).
/// Checked against libbpf-tools' tcpstates by `cargo xtask bench`.
pub fn transitions_per_connection(_mode: Mode) -> u64 {
    10
}

/// Runs the load and returns what it did.
pub fn run(args: &LoadArgs) -> Result<LoadResult> {
    let duration = Duration::try_from_secs_f64(args.duration)
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_DURATION)
        .with_context(|| format!("--duration {} must be in (0, 600] seconds", args.duration))?;
    if args
        .connections
        .is_some_and(|n| n == 0 || n > MAX_CONNECTIONS)
    {
        bail!("--connections must be in 1..={MAX_CONNECTIONS}");
    }
    let threads = args
        .threads
        .unwrap_or_else(|| thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 64);
    let ip = if args.ipv6 {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    };
    // Two servers: one whose clients close first, one that closes first
    // itself; `mixed` uses both, so nobody has to tell who closes first.
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    let ports = args.ports.clamp(1, 64);
    let mut addr_of = |server_first: bool| -> Result<SocketAddr> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).context("bind on loopback")?;
        let addr = listener.local_addr()?;
        let listener = Arc::new(listener);
        // Two acceptors per port: one may wait for a FIN while the other accepts.
        for _ in 0..2 {
            let (listener, stop) = (listener.clone(), stop.clone());
            let (mode, hold) = (args.mode, args.hold.max(1));
            servers.push((
                addr,
                thread::spawn(move || serve(&listener, server_first, mode, hold, &stop)),
            ));
        }
        Ok(addr)
    };
    let client_first_addrs: Vec<SocketAddr> =
        (0..ports).map(|_| addr_of(false)).collect::<Result<_>>()?;
    let server_first_addrs: Vec<SocketAddr> =
        (0..ports).map(|_| addr_of(true)).collect::<Result<_>>()?;
    let made = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let budget = args.connections.unwrap_or(u64::MAX);
    let started = Instant::now();
    let deadline = started + duration;
    // Paced: each thread's share of the rate, checked every 64 connections.
    let per_thread = args
        .rate
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(|r| r / threads as f64);
    let clients: Vec<_> = (0..threads)
        .map(|t| {
            let (made, failed, mode) = (made.clone(), failed.clone(), args.mode);
            let server_first = match mode {
                Mode::Active | Mode::CloseWait => false,
                Mode::Passive => true,
                Mode::Mixed => t % 2 == 1,
            };
            let addrs = if server_first {
                server_first_addrs.clone()
            } else {
                client_first_addrs.clone()
            };
            thread::spawn(move || {
                let mut i = 0u64;
                // The clock is read every 64 connections: cheap, and bounded.
                while (!i.is_multiple_of(64) || Instant::now() < deadline)
                    && made.fetch_add(1, Ordering::Relaxed) < budget
                {
                    if let Some(rate) = per_thread
                        && i.is_multiple_of(64)
                    {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    let addr = addrs[(i as usize + t) % addrs.len()];
                    if connect_once(addr, server_first, mode == Mode::CloseWait).is_err() {
                        made.fetch_sub(1, Ordering::Relaxed);
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
                made.fetch_sub(1, Ordering::Relaxed);
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    let elapsed = started.elapsed();
    let connections = made.load(Ordering::Relaxed).min(budget);
    stop.store(true, Ordering::Relaxed);
    // One connection per acceptor thread wakes each, and each then sees `stop`.
    for (addr, _) in &servers {
        let _ = TcpStream::connect(addr);
    }
    for (_, server) in servers {
        server.join().expect("server thread")?;
    }
    Ok(LoadResult {
        connections,
        seconds: elapsed.as_secs_f64(),
        failed: failed.load(Ordering::Relaxed),
    })
}

/// One connection. Client first: send FIN at once (`shutdown`), and in
/// `close-wait` leave; otherwise wait for the server's FIN, then close
/// (so a count means whole connections).
fn connect_once(addr: SocketAddr, server_first: bool, leave: bool) -> std::io::Result<()> {
    let mut c = TcpStream::connect(addr)?;
    if !server_first {
        c.shutdown(std::net::Shutdown::Write)?;
        if leave {
            return Ok(());
        }
    }
    let mut buf = [0u8; 1];
    while c.read(&mut buf)? > 0 {}
    Ok(())
}

/// One acceptor thread: accepts until `stop`. Server first: close at once.
/// Client first: wait for the client's FIN (already there, usually), then
/// close, or keep the socket in CLOSE_WAIT (`close-wait`, batches of `hold`).
fn serve(
    listener: &TcpListener,
    server_first: bool,
    mode: Mode,
    hold: usize,
    stop: &AtomicBool,
) -> Result<()> {
    let mut held = Vec::new();
    loop {
        let mut s = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("accept"),
        };
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if server_first {
            continue;
        }
        let mut buf = [0u8; 1];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        if mode == Mode::CloseWait {
            held.push(s);
            if held.len() >= hold {
                held.clear();
            }
        }
    }
}

/// Prints a run's result.
pub fn main(args: &LoadArgs) -> Result<()> {
    let r = run(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} connections ({:?} close) in {:.2}s: {:.0}/s, {} transitions{}",
            r.connections,
            args.mode,
            r.seconds,
            r.rate(),
            r.connections * transitions_per_connection(args.mode),
            if r.failed > 0 {
                format!(", {} connect failures", r.failed)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
