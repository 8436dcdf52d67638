//! `tcptrace doctor`: observe the host for a short window with the live
//! engine, read the TCP sysctls (per network namespace where it matters),
//! and print what [`tcptrace_core::doctor`] makes of it. Never writes a
//! sysctl.

use std::{
    io::{self, Write},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::Result;
use tcptrace_core::{
    doctor::{self, FailedConnects, Observation, Thresholds},
    filter::UserFilter,
    netfacts::NetFacts,
    output::EscapeWriter,
    record::Record,
};

use super::Edges;
use crate::{
    cli::DoctorConfig,
    session::{Consumer, Ctx, Flow, Hangup, Options},
    source::{Live, Recording, Source},
};

/// `doctor` as a consumer of the loop: samples every second (for the
/// growth rates), diagnoses at the end (after a closing reconciliation:
/// a timewait socket re-armed from FIN_WAIT2 to TIME_WAIT within one timer
/// bucket fires no tracepoint). The namespaces' sysctls and TIME_WAIT
/// counters come with the snapshots, so the same consumer diagnoses a
/// recording (`--from`).
pub struct Doctor<W: Write> {
    out: W,
    json: bool,
    /// What is being observed, for the opening line.
    observing: String,
    started_ns: u64,
    /// The facts of the first and the last snapshot that carried them.
    facts_start: Option<NetFacts>,
    facts_end: Option<NetFacts>,
    /// The workloads a recording names (`--from`): its findings name them
    /// as the live run did, from the file only.
    recorded: tcptrace_core::workload::WorkloadTable,
}

impl<W: Write> Doctor<W> {
    /// Observes the live host for `duration`.
    pub fn new(out: W, json: bool, duration: Duration) -> Self {
        Self::observing(
            out,
            json,
            format!(
                "observing TCP for {:.0} s (Ctrl-C to stop early)",
                duration.as_secs_f64()
            ),
        )
    }

    /// `observing`: the opening line's words ("reading FILE").
    pub fn observing(out: W, json: bool, observing: String) -> Self {
        Self {
            out,
            json,
            observing,
            started_ns: 0,
            facts_start: None,
            facts_end: None,
            recorded: tcptrace_core::workload::WorkloadTable::default(),
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Consumer for Doctor<W> {
    fn start(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        self.started_ns = ctx.source.clock_ns();
        crate::say::write_stderr(&format!("tcptrace doctor: {}...\n", self.observing));
        Ok(())
    }

    fn record(&mut self, rec: &Record, _ctx: &mut Ctx<'_>) -> Result<Flow> {
        if let Record::Workload { cgroup, workload } = rec {
            self.recorded.insert(*cgroup, (**workload).clone(), 0);
        }
        if let Record::Snapshot {
            facts: Some(facts), ..
        } = rec
        {
            if self.facts_start.is_none() {
                self.facts_start = Some((**facts).clone());
            }
            self.facts_end = Some((**facts).clone());
        }
        Ok(Flow::Continue)
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) -> Result<Flow> {
        // Samples CLOSE_WAIT counts for the growth rates.
        ctx.snapshot();
        Ok(Flow::Continue)
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>) -> Result<ExitCode> {
        let mut snap = ctx.snapshot();
        if ctx.source.workloads().is_none() {
            // A recording: the names it stores (`cgroup:<id>` for those it
            // does not), never this host's.
            use tcptrace_core::{stats::workloads::WorkloadKey, workload::Workload};
            let recorded = &self.recorded;
            let engine = ctx.engine.as_deref_mut().expect("doctor keeps an engine");
            tcptrace_core::stats::workloads::fold(
                &mut snap,
                &mut |key| match key {
                    WorkloadKey::Cgroup(id) => Some(
                        recorded
                            .get(id)
                            .cloned()
                            .unwrap_or_else(|| std::sync::Arc::new(Workload::unknown(id))),
                    ),
                    WorkloadKey::Pid(_) | WorkloadKey::Unknown => None,
                },
                None,
                Some(&mut engine.aggs),
            );
        }
        let window_s = ctx.source.clock_ns().saturating_sub(self.started_ns) as f64 / 1e9;
        let engine = ctx.engine.as_deref().expect("doctor keeps an engine");
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
        let mut tw_reuses: Vec<doctor::TwReuses> = engine
            .aggs
            .tw_reuses
            .iter()
            .map(|(&(daddr, dport), r)| doctor::TwReuses {
                netns: r.netns,
                daddr,
                dport,
                reused: r.reused,
                pid: r.last_by.map(|o| o.0),
                comm: r.last_by.map(|o| o.1.to_str_lossy().into_owned()),
            })
            .collect();
        tw_reuses.sort_by_key(|r| (std::cmp::Reverse(r.reused), r.daddr, r.dport));
        let obs = Observation {
            window_s,
            transitions: snap.transitions_total,
            tracked: snap.tracked,
            lost: snap.lost.values().fold(0u64, |a, n| a.saturating_add(*n)),
            states: snap.states.clone(),
            close_wait: snap.close_wait_by_process.clone(),
            services: snap.time_wait_by_service.clone(),
            budgets: snap.port_budgets.clone(),
            fin_wait2_orphans: doctor::fin_wait2_orphans(&engine.table),
            failed_connects: failed,
            no_port_by_budget: engine
                .aggs
                .no_port_by_budget
                .iter()
                .map(|(&k, &n)| (k, n))
                .collect(),
            ended: snap.ended.clone(),
            tw_reuses,
            facts_start: self.facts_start.clone(),
            facts_end: self.facts_end.clone(),
            // Owners named from their captured cgroup id only (which a
            // recording stores too), not from /proc now: `doctor --from`
            // then names the same owners as the live run did.
            workloads: snap
                .by_process
                .iter()
                .filter(|p| {
                    matches!(
                        p.key,
                        tcptrace_core::stats::workloads::WorkloadKey::Cgroup(_)
                    )
                })
                .filter_map(|p| Some((p.pid?, p.workload.clone())))
                .collect(),
            attribution: ctx.source.workloads().map(|w| attribution(&w.resolver)),
            close_wait_by_stack: snap.close_wait_by_stack.clone().unwrap_or_default(),
            stacks: snap.stacks.clone(),
            listeners: snap.listeners.clone().unwrap_or_default(),
            listen_drops: snap.listen_drops.clone(),
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

/// What the live resolver says of its names, for the
/// `workload_attribution` finding.
fn attribution(r: &crate::seed::workloads::WorkloadResolver) -> doctor::Attribution {
    let s = r.status();
    doctor::Attribution {
        method: s.method.to_string(),
        cgroup2: s.cgroup2.map(|p| p.display().to_string()),
        unavailable: s.unavailable,
        resolved: s.resolved as u64,
        unresolved: s.unresolved,
        read_errors: r
            .names()
            .errors()
            .iter()
            .map(|(&(source, reason), &n)| ((source.to_string(), reason.to_string()), n))
            .collect(),
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

/// The loop's options for `doctor --from`: the recording's own snapshots,
/// to its end.
pub fn options_from_recording() -> Options {
    Options {
        deadline: None,
        ..options(Duration::ZERO)
    }
}

pub fn run(cfg: DoctorConfig) -> Result<ExitCode> {
    let edges = Edges::install()?;
    if let Some(path) = &cfg.from {
        return run_from(&edges, path, cfg.json);
    }
    let mut source = Live::load(&cfg.load, UserFilter::default())?;
    let opts = options(cfg.duration);
    let mut doctor = Doctor::new(io::stdout().lock(), cfg.json, cfg.duration);
    edges.run(&mut source, &mut doctor, &opts)
}

/// `doctor --from FILE`: the recording played as fast as it reads, on its
/// own clock.
fn run_from(edges: &Edges, path: &Path, json: bool) -> Result<ExitCode> {
    let mut source = Recording::virtual_clock(path)?;
    let observing = format!(
        "reading {}",
        tcptrace_core::output::escape(&path.display().to_string())
    );
    let mut doctor = Doctor::observing(io::stdout().lock(), json, observing);
    let code = edges.run(&mut source, &mut doctor, &options_from_recording())?;
    for warning in source.warnings() {
        crate::say!("warning: {warning}");
    }
    Ok(code)
}
