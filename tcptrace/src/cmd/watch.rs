//! `tcptrace watch`: the live engine (as `stats`), with the rules of
//! [`tcptrace_core::alerts`] evaluated every `--interval`. Alerts go to stderr
//! as text lines, or to stdout as JSON Lines with `--json`; `--exec` runs a
//! command per alert ([`crate::exec`]). SIGHUP reloads `--config` (the flags
//! still override it, and who may write it is checked again).

use std::{
    io::{self, Write},
    process::ExitCode,
};

use anyhow::Result;
use tcptrace_core::alerts::{AlertState, Alerter};

use super::{Edges, stats::engine_options};
use crate::{
    cli::WatchConfig,
    exec::{EXEC_TIMEOUT, ExecHooks, FinishHooksOnDrop, exec_alert},
    session::{Consumer, Ctx, Flow, Hangup, Input},
    source::Live,
};

/// `watch` as a consumer of the loop.
pub struct Watch<W: Write> {
    cfg: WatchConfig,
    out: W,
    alerter: Alerter,
    hooks: ExecHooks,
    _finish_hooks: FinishHooksOnDrop,
    exit: ExitCode,
    /// Where a resolved cgroup path comes from (`/proc/PID/cgroup`).
    cgroup_of: fn(u32) -> Option<String>,
}

impl<W: Write> Watch<W> {
    /// Alerts as JSON go to `out`.
    pub fn new(cfg: WatchConfig, out: W) -> Self {
        let hooks = ExecHooks::default();
        Self {
            alerter: Alerter::new(cfg.rules.clone()),
            _finish_hooks: hooks.finish_on_drop(),
            hooks,
            cfg,
            out,
            exit: ExitCode::SUCCESS,
            cgroup_of: crate::seed::host::cgroup_path,
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Consumer for Watch<W> {
    fn start(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        super::banner(ctx, &format!("watching every {:?}", self.cfg.interval));
        Ok(())
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) -> Result<Flow> {
        let snap = ctx.snapshot();
        let (now, wall) = ctx.source.now();
        let mut fired = false;
        for mut a in self.alerter.evaluate(&snap, now, wall) {
            fired |= a.state == AlertState::Firing;
            name_workload(&mut a, &snap);
            if a.cgroup.is_none() {
                a.cgroup = a.pid.and_then(self.cgroup_of);
            }
            if let Some(cmd) = &self.cfg.exec {
                exec_alert(cmd, &a, &self.hooks, EXEC_TIMEOUT);
            }
            if self.cfg.json {
                serde_json::to_writer(&mut self.out, &a).map_err(io::Error::from)?;
                self.out.write_all(b"\n")?;
                self.out.flush()?;
            } else {
                crate::say!("{}", a.text_line());
            }
        }
        if fired && self.cfg.exit_on_alert {
            self.exit = ExitCode::from(1);
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    fn input(&mut self, input: Input, _ctx: &mut Ctx<'_>) -> Result<Flow> {
        if let Input::Hangup = input {
            match self
                .cfg
                .overrides
                .rules(self.cfg.config.as_deref(), self.cfg.exec.is_some())
            {
                Ok(rules) => {
                    crate::say!("rules reloaded");
                    self.alerter.rules = rules;
                }
                Err(e) => crate::say!("reload failed, keeping the current rules: {e}"),
            }
        }
        Ok(Flow::Continue)
    }

    fn firing(&self) -> Option<Vec<&'static str>> {
        Some(self.alerter.firing_rules())
    }

    fn finish(&mut self, _ctx: &mut Ctx<'_>) -> Result<ExitCode> {
        self.out.flush()?;
        Ok(self.exit)
    }
}

/// Names the workload of an alert about a process (from the snapshot's
/// folded rows: the owner's cgroup id, so it works after the process
/// exited) or about a workload.
fn name_workload(a: &mut tcptrace_core::alerts::Alert, snap: &tcptrace_core::stats::Snapshot) {
    let from_process = a.pid.and_then(|pid| {
        snap.close_wait_by_process
            .iter()
            .find(|p| p.pid == Some(pid))
            .map(|p| &p.workload)
    });
    if let Some(w) = from_process
        && w.workload.is_some()
    {
        let kind = snap
            .close_wait_by_workload
            .iter()
            .find(|r| Some(&r.workload) == w.workload.as_ref())
            .map(|r| r.workload_kind.to_string());
        a.workload = w.workload.clone();
        a.workload_kind = kind;
        a.unit = w.unit.clone();
        a.container = w.container.clone();
        a.pod = w.pod.clone();
        a.namespace = w.namespace.clone();
        a.cgroup = w.cgroup_path.clone();
        return;
    }
    if let Some(name) = a.workload.clone()
        && let Some(r) = snap
            .close_wait_by_workload
            .iter()
            .find(|r| r.workload == name)
    {
        a.name_workload(r);
    }
}

/// The loop's options for `watch`: as `stats`, with SIGHUP for the rules
/// and a first evaluation right after seeding (a leak that is already there
/// alerts at once).
pub fn options(cfg: &WatchConfig) -> crate::session::Options {
    crate::session::Options {
        hangup: Hangup::Consumer,
        tick_at_start: true,
        ..engine_options(
            cfg.seed,
            cfg.reconcile,
            cfg.max_conns,
            cfg.interval,
            cfg.duration,
        )
    }
}

pub fn run(cfg: WatchConfig) -> Result<ExitCode> {
    let edges = Edges::install()?;
    edges.serve_metrics(cfg.metrics.clone())?;
    let mut source = Live::load(&cfg.load, cfg.user_filter)?;
    let opts = options(&cfg);
    let mut watch = Watch::new(cfg, io::stdout().lock());
    edges.run(&mut source, &mut watch, &opts)
}
