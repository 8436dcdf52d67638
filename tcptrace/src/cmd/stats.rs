//! `tcptrace stats`: the live engine (seeded from sock_diag, reconciled every
//! few seconds) printing a summary every `--interval`, as text or JSON.

use std::{
    io::{self, Write},
    process::ExitCode,
};

use anyhow::Result;
use tcptrace_core::output::{EscapeWriter, stats};

use super::Edges;
use crate::{
    cli::StatsConfig,
    session::{Consumer, Ctx, Flow, Hangup, Options},
    source::Live,
};

/// `stats` as a consumer of the loop: a summary per tick.
pub struct Stats<W: Write> {
    out: W,
    json: bool,
    interval: std::time::Duration,
}

impl<W: Write> Stats<W> {
    pub fn new(out: W, json: bool, interval: std::time::Duration) -> Self {
        Self {
            out,
            json,
            interval,
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Consumer for Stats<W> {
    fn start(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        super::banner(ctx, &format!("stats every {:?}", self.interval));
        Ok(())
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) -> Result<Flow> {
        let snap = ctx.snapshot();
        if self.json {
            stats::write_json(&mut self.out, &snap)?;
        } else {
            stats::write_text(&mut EscapeWriter::new(&mut self.out), &snap)?;
        }
        self.out.flush()?;
        Ok(Flow::Continue)
    }

    fn finish(&mut self, _ctx: &mut Ctx<'_>) -> Result<ExitCode> {
        self.out.flush()?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The loop's options for an engine command: seeded, reconciled every
/// `reconcile`, a tick every `interval`, durations not kept per owner and
/// peer (`stats --histograms-by` asks for them).
pub fn engine_options(
    seed: bool,
    reconcile: Option<std::time::Duration>,
    max_conns: usize,
    interval: std::time::Duration,
    duration: Option<std::time::Duration>,
) -> Options {
    Options {
        tick: Some(interval),
        deadline: duration,
        engine: Some(max_conns),
        sockets_at_start: seed,
        sockets_every: reconcile,
        hangup: Hangup::Stops,
        opening_hint: " (try --no-seed)",
        histograms_per_key: false,
        ..Options::default()
    }
}

pub fn run(cfg: StatsConfig) -> Result<ExitCode> {
    let edges = Edges::install()?;
    edges.serve_metrics(cfg.metrics.clone())?;
    let mut source = Live::load(&cfg.load, cfg.user_filter)?;
    let mut stats = Stats::new(
        io::BufWriter::new(io::stdout().lock()),
        cfg.json,
        cfg.interval,
    );
    let opts = Options {
        histograms_by: cfg.histograms_by,
        histograms_per_key: cfg.histograms_by != tcptrace_core::stats::HistogramsBy::None,
        ..engine_options(
            cfg.seed,
            cfg.reconcile,
            cfg.max_conns,
            cfg.interval,
            cfg.duration,
        )
    };
    edges.run(&mut source, &mut stats, &opts)
}
