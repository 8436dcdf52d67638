//! `cargo xtask bench`: the benchmarks, built optimised and run as they are
//! (not timed tests), each reported against its target:
//! - live (root): the load generator's connection rate untraced, at the limit
//!   (tcptrace's hooks with programs that return at once) and under each
//!   tracer, tcptrace against libbpf-tools' tcpstates, in interleaved rounds
//!   whose medians are the result ([`live`], [`summary`]), with each eBPF
//!   program's cost per run from the kernel's bpf_stats ([`bpf_stats`]);
//! - offline: the recording format and `report` (`tcptrace/benches/recording.rs`),
//!   and the engine at 1M live sockets: memory per socket, TUI refresh and
//!   frame time (`tcptrace/benches/engine.rs`).
//!
//! `--json` prints one object with every number, to compare commits.

pub mod bpf_stats;
pub mod live;
pub mod summary;

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::{Value, json};

use crate::loadgen::{MAX_DURATION, Mode};
use crate::setup;
use crate::util::{self, say};

/// Most rounds, so a typo cannot keep the box busy for hours.
const MAX_ROUNDS: usize = 20;

/// Options for `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds of load per configuration and round (at most 600).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,
    /// Close pattern of the load (`mixed` is this box's fastest).
    #[arg(long, value_enum, default_value = "mixed")]
    pub mode: Mode,
    /// Interleaved rounds: every configuration once per round, in order; the
    /// medians across rounds are the result (at most 20).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub rounds: usize,
    /// Only the offline benchmarks (no root, no load).
    #[arg(long, conflicts_with = "live_only")]
    pub offline_only: bool,
    /// Only the live benchmark.
    #[arg(long)]
    pub live_only: bool,
    /// One JSON object on stdout instead of the tables.
    #[arg(long)]
    pub json: bool,
    /// Only these live configurations, in this order (comma-separated; the
    /// ratios need `untraced` and `limit`), e.g. `--only stats --duration 70`
    /// for a soak with TIME_WAIT expiry bursts.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = live::Tracer::ALL)]
    pub only: Vec<live::Tracer>,
}

pub fn main(args: &BenchArgs) -> Result<()> {
    let seconds_ok = args.duration.is_finite()
        && args.duration > 0.0
        && args.duration <= MAX_DURATION.as_secs_f64();
    if !seconds_ok {
        anyhow::bail!("--duration {} must be in (0, 600] seconds", args.duration);
    }
    if !(1..=MAX_ROUNDS).contains(&args.rounds) {
        anyhow::bail!("--rounds {} must be in 1..={MAX_ROUNDS}", args.rounds);
    }
    setup::ensure(true)?;
    let mut report = serde_json::Map::new();
    if !args.live_only {
        for bench in ["recording", "engine"] {
            say(format!("==> {bench} (tcptrace/benches/{bench}.rs)"));
            let out = util::capture(
                util::cargo().args(["bench", "-q", "-p", "tcptrace", "--bench", bench]),
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                anyhow::bail!(
                    "the {bench} benchmark failed:\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            for line in text.lines() {
                match line.strip_prefix("BENCH_JSON ") {
                    Some(j) => {
                        let v: Value = serde_json::from_str(j).context("benchmark JSON")?;
                        report.insert(bench.into(), v);
                    }
                    None if !args.json => println!("{line}"),
                    None => {}
                }
            }
        }
    }
    if !args.offline_only {
        report.insert("live".into(), live_bench(args)?);
    }
    if args.json {
        println!("{}", Value::Object(report));
    }
    Ok(())
}

/// The live benchmark: rounds of every configuration, with bpf_stats on.
fn live_bench(args: &BenchArgs) -> Result<Value> {
    if !util::is_root() {
        anyhow::bail!(
            "the live benchmark loads eBPF programs: run as root (or pass --offline-only)"
        );
    }
    say("==> live: building tcptrace (release)");
    util::run(util::cargo().args(["build", "--release", "-p", "tcptrace"]))?;
    let bin = util::target_dir().join("release/tcptrace");
    let mut runs = Vec::new();
    {
        // On for the rounds only; restored when this scope ends, whatever
        // ends it (a signal restores it at once).
        let _stats = bpf_stats::StatsGuard::enable()?;
        for round in 0..args.rounds {
            runs.extend(live::round(
                &bin,
                &args.only,
                args.mode,
                args.duration,
                round,
            )?);
        }
        bpf_stats::check_interrupted()?;
    }
    let medians = summary::summarize(&runs, &args.only);
    let overheads = summary::overheads(&medians);
    if !args.json {
        println!(
            "live: load generator ({:?} close, {} s per run, {} interleaved round(s), a fresh netns each, bpf_stats on)",
            args.mode, args.duration, args.rounds
        );
        summary::print_runs(&runs);
        summary::print_summary(&medians, &overheads, args.rounds);
    }
    Ok(json!({
        "mode": format!("{:?}", args.mode),
        "seconds_per_run": args.duration,
        "rounds": args.rounds,
        "order": args.only.iter().map(|t| t.key()).collect::<Vec<_>>(),
        "bpf_stats": true,
        "runs": runs,
        "medians": medians,
        "overhead_vs_tcpstates": overheads,
        "targets": {
            "ratio_to_limit": summary::TARGET_TO_LIMIT,
            "ratio_to_limit_at_least": summary::TARGET_TO_LIMIT_AT_LEAST,
            "top_ratio_to_limit": summary::TARGET_TOP_TO_LIMIT,
            "overhead_share_of_tcpstates": summary::TARGET_OVERHEAD_SHARE,
            "cpu_secs_per_m_transitions": summary::TARGET_CPU_PER_M,
            "ns_per_run": bpf_stats::HOOKS.iter().map(|h| (h.name, h.target_ns)).collect::<std::collections::BTreeMap<_, _>>(),
        },
    }))
}
