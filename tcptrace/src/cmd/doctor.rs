//! `tcptrace doctor`: observe the host for a short window with the live
//! engine, read the TCP sysctls (per network namespace where it matters),
//! and print what [`tcptrace_core::doctor`] makes of it. Never writes a
//! sysctl.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Write},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::Result;
use tcptrace_core::{
    doctor::{self, FailedConnects, Observation, Sysctls, Thresholds},
    filter::UserFilter,
    output::EscapeWriter,
};

use super::Edges;
use crate::{
    cli::DoctorConfig,
    ebpf::Tracer,
    seed,
    session::{Consumer, Ctx, Flow, Hangup, Options},
    source::Live,
};

/// `doctor` as a consumer of the loop: samples every second (for the
/// growth rates), diagnoses at the end (after a closing reconciliation:
/// a timewait socket re-armed from FIN_WAIT2 to TIME_WAIT within one timer
/// bucket fires no tracepoint).
pub struct Doctor<W: Write> {
    out: W,
    json: bool,
    duration: Duration,
    started_ns: u64,
    overflow_before: u64,
    /// Where sysctls and port ranges come from (the host's /proc).
    facts: HostReader,
}

/// The TCP sysctls, and the port range of each network namespace asked
/// for (by inode).
pub type HostReader = fn(&BTreeSet<u32>) -> (Sysctls, BTreeMap<u32, (u16, u16)>);

impl<W: Write> Doctor<W> {
    pub fn new(out: W, json: bool, duration: Duration) -> Self {
        Self {
            out,
            json,
            duration,
            started_ns: 0,
            overflow_before: 0,
            facts: host_facts,
        }
    }

    /// Sysctls and port ranges from `facts` instead of the host (tests).
    pub fn with_facts(mut self, facts: HostReader) -> Self {
        self.facts = facts;
        self
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// The host's TCP sysctls and the port range of every namespace in `netns`.
fn host_facts(netns: &BTreeSet<u32>) -> (Sysctls, BTreeMap<u32, (u16, u16)>) {
    (
        read_sysctls(Path::new("/proc/sys/net/ipv4")),
        netns_port_ranges(netns),
    )
}

impl<W: Write> Consumer for Doctor<W> {
    fn start(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        self.started_ns = ctx.source.clock_ns();
        self.overflow_before = ctx.source.host().1;
        crate::say::write_stderr(&format!(
            "tcptrace doctor: observing TCP for {:.0} s (Ctrl-C to stop early)...\n",
            self.duration.as_secs_f64()
        ));
        Ok(())
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) -> Result<Flow> {
        // Samples CLOSE_WAIT counts for the growth rates.
        ctx.snapshot();
        Ok(Flow::Continue)
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>) -> Result<ExitCode> {
        let snap = ctx.snapshot();
        let window_s = ctx.source.clock_ns().saturating_sub(self.started_ns) as f64 / 1e9;
        let engine = ctx.engine.as_deref().expect("doctor keeps an engine");
        let census = doctor::census(&engine.table);
        let host_netns = seed::sock_diag::current_netns().ok();
        let others: BTreeSet<u32> = census
            .time_wait_to
            .iter()
            .map(|d| d.netns)
            .filter(|&n| Some(n) != host_netns)
            .collect();
        let (sysctls, port_ranges) = (self.facts)(&others);
        let mut failed: Vec<FailedConnects> = engine
            .aggs
            .failed_connects
            .iter()
            .map(|(&(daddr, dport), f)| FailedConnects {
                daddr,
                dport,
                refused: f.refused,
                timeout: f.timeout,
                no_port: f.no_port,
                pid: f.owner.map(|o| o.0),
                comm: f.owner.map(|o| o.1.to_str_lossy().into_owned()),
            })
            .collect();
        failed.sort_by_key(|f| std::cmp::Reverse(f.refused + f.timeout + f.no_port));
        let obs = Observation {
            window_s,
            transitions: snap.transitions_total,
            tracked: snap.tracked,
            lost: snap.lost.values().fold(0u64, |a, n| a.saturating_add(*n)),
            states: snap.states.clone(),
            close_wait: snap.close_wait_by_process.clone(),
            census,
            failed_connects: failed,
            tw_overflow_during: snap.tw_overflow.saturating_sub(self.overflow_before),
            tw_overflow_total: snap.tw_overflow,
            sysctls,
            port_ranges,
            host_netns,
        };
        let findings = doctor::diagnose(&obs, &Thresholds::default());
        let written = if self.json {
            serde_json::to_writer_pretty(&mut self.out, &findings)
                .map_err(io::Error::from)
                .and_then(|()| self.out.write_all(b"\n"))
        } else {
            doctor::write_text(&mut EscapeWriter::new(&mut self.out), &findings)
        };
        match written.and_then(|()| self.out.flush()) {
            // `doctor | head`: the findings' exit code all the same.
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(e.into()),
            _ => {}
        }
        Ok(ExitCode::from(doctor::exit_code(&findings)))
    }
}

/// The loop's options for `doctor`: seeded, a sample every second from the
/// start, a closing reconciliation.
pub fn options(duration: Duration) -> Options {
    Options {
        tick: Some(Duration::from_secs(1)),
        tick_at_start: true,
        deadline: Some(duration),
        engine: Some(tcptrace_core::conn::DEFAULT_CAP),
        sockets_at_start: true,
        sockets_at_end: true,
        hangup: Hangup::Stops,
        ..Options::default()
    }
}

pub fn run(cfg: DoctorConfig) -> Result<ExitCode> {
    let edges = Edges::install()?;
    let mut source = Live::new(
        Tracer::load(&cfg.load)?,
        UserFilter::default(),
        cfg.load.realtime_drain,
    );
    let opts = options(cfg.duration);
    let mut doctor = Doctor::new(io::stdout().lock(), cfg.json, cfg.duration);
    edges.run(&mut source, &mut doctor, &opts)
}

/// The TCP sysctls under `dir` (`/proc/sys/net/ipv4` of the reading
/// thread's namespace).
pub fn read_sysctls(dir: &Path) -> Sysctls {
    let text = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let num = |name: &str| text(name).and_then(|t| t.trim().parse::<u64>().ok());
    let small = |name: &str| num(name).and_then(|v| u32::try_from(v).ok());
    let defaults = Sysctls::defaults();
    Sysctls {
        tw_recycle: small("tcp_tw_recycle"),
        tw_reuse: small("tcp_tw_reuse"),
        timestamps: small("tcp_timestamps"),
        fin_timeout: small("tcp_fin_timeout"),
        syncookies: small("tcp_syncookies"),
        max_tw_buckets: num("tcp_max_tw_buckets"),
        port_range: text("ip_local_port_range")
            .and_then(|t| seed::host::parse_port_range(&t).ok())
            .unwrap_or(defaults.port_range),
        reserved_ports: text("ip_local_reserved_ports")
            .map(|t| t.trim().to_string())
            .unwrap_or_default(),
    }
}

/// `ip_local_port_range` inside each network namespace of `wanted` (by
/// inode) that can be entered: the namespaces are listed once.
fn netns_port_ranges(wanted: &BTreeSet<u32>) -> BTreeMap<u32, (u16, u16)> {
    if wanted.is_empty() {
        return BTreeMap::new();
    }
    seed::netns::namespaces()
        .into_iter()
        .filter_map(|path| {
            let inode = u32::try_from(seed::netns::namespace_inode(&path).ok()?).ok()?;
            if !wanted.contains(&inode) {
                return None;
            }
            let range =
                seed::netns::in_namespace(&path, || seed::host::ephemeral_port_range().ok())
                    .ok()
                    .flatten()?;
            Some((inode, range))
        })
        .collect()
}
