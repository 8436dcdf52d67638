//! `tcptrace doctor`: observe the host for a short window with the live
//! engine, read the TCP sysctls (per network namespace where it matters),
//! and print what [`tcptrace_core::doctor`] makes of it. Never writes a sysctl.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Write},
    path::Path,
    process::ExitCode,
};

use anyhow::Result;
use tokio::time::{Instant, sleep_until};

use crate::{
    cli::DoctorConfig,
    ebpf::Tracer,
    seed,
    source::Source,
    trace::{POLL_INTERVAL, StopSignals, ticker},
};
use tcptrace_core::{
    doctor::{self, FailedConnects, Finding, Observation, Sysctls, Thresholds},
    engine::Engine,
    filter::UserFilter,
};

pub async fn run(cfg: DoctorConfig) -> Result<ExitCode> {
    let mut signals = StopSignals::install()?;
    let mut source = Source::live(Tracer::load(&cfg.load)?, UserFilter::default());
    let mut engine = Engine::new(tcptrace_core::conn::DEFAULT_CAP);
    source.seed(&mut engine)?;
    source.restart_loss_count();
    crate::sched::drain_priority(cfg.load.realtime_drain);
    let overflow_before = seed::host::tw_overflow().unwrap_or(0);
    crate::say::write_stderr(&format!(
        "tcptrace doctor: observing TCP for {:.0} s (Ctrl-C to stop early)...\n",
        cfg.duration.as_secs_f64()
    ));
    let started = Instant::now();
    let deadline = started + cfg.duration;
    let mut poll = ticker(POLL_INTERVAL);
    // Snapshots each second sample CLOSE_WAIT counts for the growth rates.
    let mut sample = ticker(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            _ = sleep_until(deadline) => break,
            _ = poll.tick() => { source.drain(&mut engine); }
            _ = sample.tick() => {
                source.drain(&mut engine);
                let (now, wall) = source.now();
                engine.snapshot(now, wall, source.host_facts());
            }
        }
    }
    source.drain(&mut engine);
    // One reconciliation with sock_diag: a timewait socket re-armed from
    // FIN_WAIT2 to TIME_WAIT within one timer bucket fires no tracepoint.
    if let Err(e) = source.reconcile(&mut engine) {
        log::warn!("reconciliation failed: {e:#}");
    }
    let (now, wall) = source.now();
    let host = source.host_facts();
    let snap = engine.snapshot(now, wall, host);
    let census = doctor::census(&engine.table);
    let host_netns = seed::sock_diag::current_netns().ok();
    let others: BTreeSet<u32> = census
        .time_wait_to
        .iter()
        .map(|d| d.netns)
        .filter(|&n| Some(n) != host_netns)
        .collect();
    let port_ranges = netns_port_ranges(&others);
    // Read by `host_facts` for the snapshot.
    let overflow_total = snap.tw_overflow;
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
        window_s: started.elapsed().as_secs_f64(),
        transitions: snap.transitions_total,
        tracked: snap.tracked,
        lost: snap.lost.values().fold(0u64, |a, n| a.saturating_add(*n)),
        states: snap.states.clone(),
        close_wait: snap.close_wait_by_process.clone(),
        census,
        failed_connects: failed,
        tw_overflow_during: overflow_total.saturating_sub(overflow_before),
        tw_overflow_total: overflow_total,
        sysctls: read_sysctls(Path::new("/proc/sys/net/ipv4")),
        port_ranges,
        host_netns,
    };
    let findings = doctor::diagnose(&obs, &Thresholds::default());
    let mut out = io::stdout().lock();
    let written = if cfg.json {
        serde_json::to_writer_pretty(&mut out, &findings)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
    } else {
        write_text(
            &mut tcptrace_core::output::EscapeWriter::new(&mut out),
            &findings,
        )
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::from(doctor::exit_code(&findings)))
}

/// Human text: a severity marker and title per finding, then its evidence,
/// advice and commands, indented.
pub fn write_text(w: &mut impl Write, findings: &[Finding]) -> io::Result<()> {
    for (i, f) in findings.iter().enumerate() {
        if i > 0 {
            writeln!(w)?;
        }
        // Findings quote process names: escaped, one line each.
        let esc = tcptrace_core::output::escape;
        writeln!(w, "{} {}  ({})", f.severity.marker(), esc(&f.title), f.id)?;
        for e in &f.evidence {
            writeln!(w, "    - {}", esc(e))?;
        }
        for a in &f.advice {
            writeln!(w, "    > {}", esc(a))?;
        }
        for s in &f.sysctls {
            writeln!(w, "    $ {}", esc(s))?;
        }
    }
    Ok(())
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
