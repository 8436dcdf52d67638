//! The live part of `cargo xtask bench`: the connection rate of the load
//! generator with nothing attached, with the limit (tcptrace's hooks with
//! programs that return at once: what merely attaching costs),
//! `tcptrace record` (to /dev/null), `tcptrace stats`, `tcptrace stats
//! --no-drop-reasons` (without the `skb:kfree_skb` hook: the difference is
//! what drop reasons cost), `tcptrace stats
//! --stacks` (a user stack captured at every connect and accept), `tcptrace top` (in a
//! detached tmux, so it really draws) and libbpf-tools' `tcpstates` (to
//! /dev/null). Per run: the rate and its ratios to the untraced and limit
//! runs of the same round, events delivered against what the generator must
//! have caused, losses (recursion misses apart), the tracer's CPU per million
//! transitions, its RSS once attached (idle) and at its peak, and what each
//! of its eBPF programs cost per run ([`super::bpf_stats`]).
//!
//! Every run loads a fresh network namespace of its own (its loopback, its
//! TIME_WAIT table), deleted after the run, so runs start from the same state
//! and do not wait for the previous run's TIME_WAIT sockets to expire; the
//! tracers see every namespace, as they do on a real host.

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

use super::bpf_stats::{self, ProgStat};
use crate::{
    loadgen::{self, Mode},
    util::{self, say},
};

/// One configuration measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tracer {
    #[value(name = "untraced")]
    None,
    /// tcptrace `stats` with `--bench-empty-programs`: the same hooks, programs that return at once.
    Limit,
    Record,
    Stats,
    /// `stats --stacks`: one `bpf_get_stackid` per connect and accept.
    StatsStacks,
    /// `stats --no-drop-reasons`: `stats` without the `skb:kfree_skb` hook,
    /// so that the two side by side show what it costs.
    StatsNoDrops,
    Top,
    Tcpstates,
}

impl Tracer {
    pub const ALL: [Tracer; 8] = [
        Tracer::None,
        Tracer::Limit,
        Tracer::Record,
        Tracer::Stats,
        Tracer::StatsNoDrops,
        Tracer::StatsStacks,
        Tracer::Top,
        Tracer::Tcpstates,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tracer::None => "untraced",
            Tracer::Limit => "limit (empty programs)",
            Tracer::Record => "tcptrace record --force -o /dev/null",
            Tracer::Stats => "tcptrace stats",
            Tracer::StatsStacks => "tcptrace stats --stacks",
            Tracer::StatsNoDrops => "tcptrace stats --no-drop-reasons",
            Tracer::Top => "tcptrace top (tmux)",
            Tracer::Tcpstates => "tcpstates > /dev/null",
        }
    }

    /// Short name: `--only`'s value, the JSON's key.
    pub fn key(self) -> &'static str {
        match self {
            Tracer::None => "untraced",
            Tracer::Limit => "limit",
            Tracer::Record => "record",
            Tracer::Stats => "stats",
            Tracer::StatsStacks => "stats-stacks",
            Tracer::StatsNoDrops => "stats-no-drops",
            Tracer::Top => "top",
            Tracer::Tcpstates => "tcpstates",
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Run {
    /// Display name.
    pub tracer: &'static str,
    /// `--only`'s value.
    pub config: &'static str,
    /// Round, from 0.
    pub round: usize,
    pub connections: u64,
    pub per_sec: f64,
    /// Rate over the untraced rate of the same round (0 without one).
    pub ratio: f64,
    /// Rate over the limit's rate of the same round.
    pub ratio_to_limit: Option<f64>,
    /// Transitions the generator must have caused (both ends).
    pub expected: u64,
    /// Transitions the tracer counted (tcptrace only).
    pub delivered: Option<u64>,
    /// Events lost, all sources (ring full, recursion misses, ...), as the
    /// tracer counts them.
    pub lost: Option<u64>,
    /// Of `lost`, recursion misses (`stats`, `top`, limit: from the metrics).
    pub recursion_lost: Option<u64>,
    pub cpu_secs: Option<f64>,
    pub cpu_secs_per_m_transitions: Option<f64>,
    /// RSS once attached, before the load.
    pub idle_rss_mb: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// The tracer's eBPF programs (bpf_stats), read before it stopped.
    pub bpf_programs: Vec<ProgStat>,
    /// All its programs' run time over the connections made, µs.
    pub bpf_us_per_connection: Option<f64>,
    /// CPU the rest of the host used while the load ran, as a share of all
    /// CPUs: user + system time of the host (/proc/stat) less the load
    /// generator's and the tracer's. A few percent is the kernel's own
    /// (ksoftirqd, workers); much more means something else ran (a build)
    /// and the run is noise.
    pub others_cpu_share: Option<f64>,
}

/// A tracer process being measured, and how to read it.
struct Running {
    pid: u32,
    /// Our child, to reap; `None` for `top`, which tmux runs.
    child: Option<Child>,
    /// tmux server socket path for `top` (removed when it stops).
    tmux: Option<PathBuf>,
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

/// User + system CPU time of the whole host, seconds (/proc/stat's `cpu`
/// line: user, nice, system; interrupts apart, as they are not any task's).
fn host_busy_secs() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    (ticks.len() == 3).then(|| ticks.iter().sum::<f64>() / 100.0)
}

/// User + system CPU of this process's reaped children (the load
/// generators), seconds.
fn children_cpu_secs() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage that outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Resident set of `pid` now (`VmRSS:`) or at its peak (`VmHWM:`), MiB.
fn rss_mb(pid: u32, field: &str) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
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

/// Sum of the samples of family `name` that carry `label` (e.g.
/// `source="recursion_misses"`).
fn metric_sum_with(body: &str, name: &str, label: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn start(tracer: Tracer, bin: &Path, tag: &str) -> Result<Option<Running>> {
    let metrics_port = free_port()?;
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut running = match tracer {
        Tracer::None => return Ok(None),
        Tracer::Record
        | Tracer::Stats
        | Tracer::StatsStacks
        | Tracer::StatsNoDrops
        | Tracer::Limit => {
            let args: Vec<&str> = match tracer {
                Tracer::Record => vec!["record", "--force", "-o", "/dev/null"],
                Tracer::Stats => vec!["stats", "--interval", "3600", "--metrics", &metrics],
                Tracer::StatsStacks => vec![
                    "stats",
                    "--interval",
                    "3600",
                    "--stacks",
                    "--metrics",
                    &metrics,
                ],
                Tracer::StatsNoDrops => vec![
                    "stats",
                    "--interval",
                    "3600",
                    "--no-drop-reasons",
                    "--metrics",
                    &metrics,
                ],
                _ => vec![
                    "stats",
                    "--interval",
                    "3600",
                    "--bench-empty-programs",
                    "--metrics",
                    &metrics,
                ],
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
                metrics_port: (tracer != Tracer::Record).then_some(metrics_port),
                stderr_file: Some(stderr_file),
            }
        }
        Tracer::Top => {
            let socket = std::env::temp_dir().join(format!("tcptrace-bench-{tag}.tmux"));
            let stderr_file = std::env::temp_dir().join(format!("tcptrace-bench-{tag}.err"));
            let cmd = format!(
                "exec {} top --interval 1 --metrics {metrics} 2>{}",
                bin.display(),
                stderr_file.display()
            );
            let tmux = || {
                let mut c = Command::new("tmux");
                c.arg("-S").arg(&socket);
                c
            };
            util::run(tmux().args(["new-session", "-d", "-x", "160", "-y", "48", &cmd]))?;
            let pid = util::stdout_of(tmux().args(["list-panes", "-F", "#{pane_pid}"]))?;
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
        let exited = match running.child.as_mut() {
            Some(c) => c.try_wait()?.is_some(),
            None => !Path::new(&format!("/proc/{}", running.pid)).exists(),
        };
        if exited || Instant::now() > deadline || bpf_stats::interrupted() {
            let err = stop(running).unwrap_or_default();
            bail!(
                "{} did not attach (exited: {exited}; 30 s at most; or interrupted): {}",
                tracer.name(),
                err.trim()
            );
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

/// Runs one round: each of `tracers` once, in order, against fresh
/// namespaces; then the ratios to the round's untraced and limit runs.
pub fn round(
    bin: &Path,
    tracers: &[Tracer],
    mode: Mode,
    duration: f64,
    round: usize,
) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for (i, &tracer) in tracers.iter().enumerate() {
        bpf_stats::check_interrupted()?;
        let tag = format!("{}-{round}-{i}", std::process::id());
        say(format!(
            "--> round {}: {} ({mode:?}, {duration} s)",
            round + 1,
            tracer.name()
        ));
        let run = one(bin, tracer, mode, duration, round, &tag)?;
        say(format!(
            "    {:.0} conn/s, lost {}, cpu {} s, idle RSS {} MiB, {} programs",
            run.per_sec,
            run.lost.map_or("-".into(), |l| l.to_string()),
            run.cpu_secs.map_or("-".into(), |c| format!("{c:.2}")),
            run.idle_rss_mb.map_or("-".into(), |c| format!("{c:.1}")),
            run.bpf_programs.len()
        ));
        runs.push(run);
    }
    let rate_of = |t: Tracer| runs.iter().find(|r| r.config == t.key()).map(|r| r.per_sec);
    let (untraced, limit) = (rate_of(Tracer::None), rate_of(Tracer::Limit));
    for r in &mut runs {
        r.ratio = untraced.filter(|&u| u > 0.0).map_or(0.0, |u| r.per_sec / u);
        r.ratio_to_limit = limit.filter(|&l| l > 0.0).map(|l| r.per_sec / l);
    }
    Ok(runs)
}

/// One configuration once: start the tracer, note its idle RSS, load a fresh
/// namespace, let the tracer drain, read its counters and programs, stop it,
/// delete the namespace.
fn one(
    bin: &Path,
    tracer: Tracer,
    mode: Mode,
    duration: f64,
    round: usize,
    tag: &str,
) -> Result<Run> {
    let running = start(tracer, bin, tag)?;
    let pid = running.as_ref().map(|r| r.pid);
    let idle_rss = pid.and_then(|p| rss_mb(p, "VmRSS:"));
    let cpu0 = pid.and_then(cpu_secs);
    let baseline = timewait_objects();
    let ns = format!("tcptrace-bench-{tag}");
    let cpus = thread::available_parallelism().ok().map(|n| n.get() as f64);
    let (busy0, children0, started) = (host_busy_secs(), children_cpu_secs(), Instant::now());
    let result = if bpf_stats::interrupted() {
        Err(anyhow::anyhow!("interrupted"))
    } else {
        load(mode, duration, &ns)
    };
    let (busy1, children1) = (host_busy_secs(), children_cpu_secs());
    let others_cpu_share = match (busy0, busy1, pid.map(cpu_secs), cpus) {
        (Some(b0), Some(b1), tracer, Some(cpus)) => {
            let tracer = match (tracer.flatten(), cpu0) {
                (Some(a), Some(b)) => a - b,
                _ => 0.0,
            };
            let others = (b1 - b0) - (children1 - children0) - tracer;
            Some((others / (started.elapsed().as_secs_f64() * cpus)).max(0.0))
        }
        _ => None,
    };
    // Let the tracer drain what is in the ring.
    if result.is_ok() {
        thread::sleep(Duration::from_millis(1500));
    }
    let cpu = pid.and_then(cpu_secs).zip(cpu0).map(|(a, b)| a - b);
    let peak_rss = pid.and_then(|p| rss_mb(p, "VmHWM:"));
    let scraped = running
        .as_ref()
        .and_then(|r| r.metrics_port)
        .and_then(scrape);
    let programs = match pid {
        Some(pid) if result.is_ok() => bpf_stats::programs_of(pid).unwrap_or_else(|e| {
            say(format!(
                "warning: no bpf_stats for {}: {e:#}",
                tracer.name()
            ));
            Vec::new()
        }),
        _ => Vec::new(),
    };
    let stderr = running.map(stop).transpose();
    delete_netns(&ns, baseline);
    let (stderr, r) = (stderr?, result?);
    let expected = r.connections * loadgen::transitions_per_connection(mode);
    let (delivered, lost, recursion_lost) = match (&scraped, &stderr) {
        (Some(body), _) => (
            Some(metric_sum(body, "tcptrace_transitions_total")),
            Some(metric_sum(body, "tcptrace_lost_events_total")),
            Some(metric_sum_with(
                body,
                "tcptrace_lost_events_total",
                "source=\"recursion_misses\"",
            )),
        ),
        (None, Some(err)) if tracer == Tracer::Record => {
            (None, parse_lost(err).or(Some(u64::MAX)), None)
        }
        _ => (None, None, None),
    };
    // The limit's programs deliver nothing: no transitions to count.
    let delivered = delivered.filter(|_| tracer != Tracer::Limit);
    let per_m = |secs: f64| secs / (delivered.unwrap_or(expected).max(1) as f64 / 1e6);
    let bpf_ns: u64 = programs.iter().map(|p| p.run_time_ns).sum();
    Ok(Run {
        tracer: tracer.name(),
        config: tracer.key(),
        round,
        connections: r.connections,
        per_sec: r.rate(),
        ratio: 0.0,
        ratio_to_limit: None,
        expected,
        delivered,
        lost,
        recursion_lost,
        cpu_secs: cpu,
        cpu_secs_per_m_transitions: cpu.map(per_m),
        idle_rss_mb: idle_rss,
        peak_rss_mb: peak_rss,
        bpf_us_per_connection: (!programs.is_empty() && r.connections > 0)
            .then(|| bpf_ns as f64 / 1e3 / r.connections as f64),
        bpf_programs: programs,
        others_cpu_share,
    })
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
        // Usually gone with its only pane already.
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(socket)
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_file(socket);
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
