//! The live part of `cargo xtask bench`: the connection rate of the load
//! generator with nothing attached, with `tcptrace record` (to /dev/null),
//! `tcptrace stats`, `tcptrace top` (in a detached tmux, so it really draws)
//! and libbpf-tools' `tcpstates` (to /dev/null), each as a ratio to the
//! untraced rate, with events delivered against what the generator must
//! have caused, losses, the tracer's CPU per million events and its peak RSS.
//!
//! Every run loads a fresh network namespace of its own (its loopback, its
//! TIME_WAIT table), so runs start from the same state and do not wait for
//! the previous run's TIME_WAIT sockets to expire; the tracers see every
//! namespace, as they do on a real host.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    loadgen::{self, Mode},
    util::{self, say},
};

/// One tracer configuration measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tracer {
    #[value(name = "untraced")]
    None,
    Record,
    Stats,
    Top,
    Tcpstates,
}

impl Tracer {
    pub const ALL: [Tracer; 5] = [
        Tracer::None,
        Tracer::Record,
        Tracer::Stats,
        Tracer::Top,
        Tracer::Tcpstates,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tracer::None => "untraced",
            Tracer::Record => "tcptrace record --force -o /dev/null",
            Tracer::Stats => "tcptrace stats",
            Tracer::Top => "tcptrace top (tmux)",
            Tracer::Tcpstates => "tcpstates > /dev/null",
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Run {
    pub tracer: &'static str,
    pub connections: u64,
    pub per_sec: f64,
    /// Rate over the untraced rate of the same round.
    pub ratio: f64,
    /// Transitions the generator must have caused (both ends).
    pub expected: u64,
    /// Transitions the tracer counted (tcptrace only).
    pub delivered: Option<u64>,
    /// Events lost, all sources (ring full, recursion misses, ...).
    pub lost: Option<u64>,
    pub cpu_secs: Option<f64>,
    pub cpu_secs_per_m_transitions: Option<f64>,
    pub peak_rss_mb: Option<f64>,
}

/// A tracer process being measured, and how to read it.
struct Running {
    pid: u32,
    /// Our child, to reap; `None` for `top`, which tmux runs.
    child: Option<Child>,
    /// tmux server socket name for `top`.
    tmux: Option<String>,
    metrics_port: Option<u16>,
    stderr_file: Option<PathBuf>,
}

/// `utime + stime` of `pid`, seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat; 3 and on here (after pid and comm).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Peak resident set of `pid`, MiB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET /metrics` on 127.0.0.1:port, or None if it does not answer.
pub fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// Sum of every sample of metric family `name` (a counter's `_total` lines).
pub fn metric_sum(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn start(tracer: Tracer, bin: &Path, tag: &str) -> Result<Option<Running>> {
    let metrics_port = free_port()?;
    let metrics = format!("127.0.0.1:{metrics_port}");
    let running = match tracer {
        Tracer::None => return Ok(None),
        Tracer::Record | Tracer::Stats => {
            let args: Vec<&str> = if tracer == Tracer::Record {
                vec!["record", "--force", "-o", "/dev/null"]
            } else {
                vec!["stats", "--interval", "3600", "--metrics", &metrics]
            };
            let stderr_file = std::env::temp_dir().join(format!("tcptrace-bench-{tag}.err"));
            let child = Command::new(bin)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(fs::File::create(&stderr_file)?)
                .spawn()
                .with_context(|| format!("start {}", bin.display()))?;
            Running {
                pid: child.id(),
                child: Some(child),
                tmux: None,
                metrics_port: (tracer == Tracer::Stats).then_some(metrics_port),
                stderr_file: Some(stderr_file),
            }
        }
        Tracer::Top => {
            let socket = format!("tcptrace-bench-{tag}");
            let stderr_file = std::env::temp_dir().join(format!("tcptrace-bench-{tag}.err"));
            let cmd = format!(
                "exec {} top --interval 1 --metrics {metrics} 2>{}",
                bin.display(),
                stderr_file.display()
            );
            util::run(Command::new("tmux").args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-x",
                "160",
                "-y",
                "48",
                &cmd,
            ]))?;
            let pid = util::stdout_of(Command::new("tmux").args([
                "-L",
                &socket,
                "list-panes",
                "-F",
                "#{pane_pid}",
            ]))?;
            Running {
                pid: pid.trim().parse().context("tmux pane pid")?,
                child: None,
                tmux: Some(socket),
                metrics_port: Some(metrics_port),
                stderr_file: Some(stderr_file),
            }
        }
        Tracer::Tcpstates => {
            let child = Command::new("tcpstates")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("tcpstates (apt install libbpf-tools)")?;
            Running {
                pid: child.id(),
                child: Some(child),
                tmux: None,
                metrics_port: None,
                stderr_file: None,
            }
        }
    };
    // Attached: tcptrace answers its metrics / prints its banner once its
    // probes are in; tcpstates gets a fixed grace period.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = match (tracer, running.metrics_port) {
            (Tracer::Tcpstates, _) => {
                thread::sleep(Duration::from_secs(2));
                true
            }
            (_, Some(port)) => scrape(port).is_some(),
            (_, None) => running
                .stderr_file
                .as_ref()
                .and_then(|f| fs::read_to_string(f).ok())
                .is_some_and(|t| !t.is_empty()),
        };
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} did not attach within 30 s", tracer.name());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(Some(running))
}

/// Timewait sockets alive on the host (every namespace): the active objects
/// of the `tw_sock_TCP*` slabs.
fn timewait_objects() -> u64 {
    fs::read_to_string("/proc/slabinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("tw_sock_TCP"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// One loadgen run in a fresh network namespace `ns` (left in place: see
/// [`delete_netns`]).
fn load(mode: Mode, duration: f64, ns: &str) -> Result<loadgen::LoadResult> {
    util::run(Command::new("ip").args(["netns", "add", ns]))?;
    (|| {
        util::run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        let exe = std::env::current_exe()?;
        let mode = format!("{mode:?}")
            .to_lowercase()
            .replace("closewait", "close-wait");
        let out = util::stdout_of(
            Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(exe)
                .args([
                    "loadgen",
                    "--json",
                    "--mode",
                    &mode,
                    "--duration",
                    &duration.to_string(),
                ]),
        )?;
        loadgen::LoadResult::from_json(&out)
    })()
}

/// Deletes `ns` and waits until the kernel has purged its timewait sockets
/// (a kernel worker does it after the delete): run after the tracer stopped,
/// so the purge neither counts against this run nor competes with the next.
fn delete_netns(ns: &str, baseline: u64) {
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    let deadline = Instant::now() + Duration::from_secs(120);
    while timewait_objects() > baseline + 1000 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250));
    }
}

/// Runs one round: each of `tracers` once, in order, against fresh namespaces.
pub fn round(
    bin: &Path,
    tracers: &[Tracer],
    mode: Mode,
    duration: f64,
    round: usize,
) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    let mut untraced = 0.0;
    for (i, &tracer) in tracers.iter().enumerate() {
        let tag = format!("{}-{round}-{i}", std::process::id());
        say(format!("--> {} ({mode:?}, {duration} s)", tracer.name()));
        let running = start(tracer, bin, &tag)?;
        let pid = running.as_ref().map(|r| r.pid);
        let cpu0 = pid.and_then(cpu_secs);
        let baseline = timewait_objects();
        let ns = format!("tcptrace-bench-{tag}");
        let result = load(mode, duration, &ns);
        // Let the tracer drain what is in the ring.
        thread::sleep(Duration::from_millis(1500));
        let cpu = pid.and_then(cpu_secs).zip(cpu0).map(|(a, b)| a - b);
        let rss = pid.and_then(peak_rss_mb);
        let scraped = running
            .as_ref()
            .and_then(|r| r.metrics_port)
            .and_then(scrape);
        let stderr = running.map(stop).transpose();
        delete_netns(&ns, baseline);
        let (stderr, r) = (stderr?, result?);
        let expected = r.connections * loadgen::transitions_per_connection(mode);
        let (delivered, lost) = match (&scraped, &stderr) {
            (Some(body), _) => (
                Some(metric_sum(body, "tcptrace_transitions_total")),
                Some(metric_sum(body, "tcptrace_lost_events_total")),
            ),
            (None, Some(err)) if tracer == Tracer::Record => {
                (None, parse_lost(err).or(Some(u64::MAX)))
            }
            _ => (None, None),
        };
        let per_sec = r.rate();
        if tracer == Tracer::None {
            untraced = per_sec;
        }
        let per_m = |secs: f64| secs / (delivered.unwrap_or(expected).max(1) as f64 / 1e6);
        runs.push(Run {
            tracer: tracer.name(),
            connections: r.connections,
            per_sec,
            ratio: if untraced > 0.0 {
                per_sec / untraced
            } else {
                0.0
            },
            expected,
            delivered,
            lost,
            cpu_secs: cpu,
            cpu_secs_per_m_transitions: cpu.map(per_m),
            peak_rss_mb: rss,
        });
    }
    Ok(runs)
}

/// Stops a tracer (SIGINT, as Ctrl-C) and returns its stderr.
fn stop(mut r: Running) -> Result<String> {
    let _ = Command::new("kill")
        .args(["-INT", &r.pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let gone = match r.child.as_mut() {
            Some(c) => c.try_wait()?.is_some(),
            None => !Path::new(&format!("/proc/{}", r.pid)).exists(),
        };
        if gone {
            break;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &r.pid.to_string()])
                .status();
            bail!("tracer {} did not stop within 20 s of SIGINT", r.pid);
        }
        thread::sleep(Duration::from_millis(50));
    }
    if let Some(socket) = &r.tmux {
        let _ = Command::new("tmux")
            .args(["-L", socket, "kill-server"])
            .status();
    }
    let err = r
        .stderr_file
        .as_ref()
        .and_then(|f| {
            let t = fs::read_to_string(f).ok();
            let _ = fs::remove_file(f);
            t
        })
        .unwrap_or_default();
    Ok(err)
}

/// `lost N` of record's closing line.
fn parse_lost(stderr: &str) -> Option<u64> {
    let line = stderr.lines().rev().find(|l| l.contains("recorded to"))?;
    line.rsplit_once("lost ")?.1.trim().parse().ok()
}
