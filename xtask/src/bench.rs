//! `cargo xtask bench`: the benchmarks, built optimised and run as they are
//! (not timed tests), each reported as ratios to its target:
//! - live (root): the load generator's connection rate untraced and under
//!   each tracer, tcptrace against libbpf-tools' tcpstates ([`live`]);
//! - offline: the recording format and `report` (`tcptrace/benches/recording.rs`),
//!   and the engine at 1M live sockets: memory per socket, TUI refresh and
//!   frame time (`tcptrace/benches/engine.rs`).
//!
//! `--json` prints one object with every number, to compare commits.

pub mod live;

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::{Value, json};

use crate::loadgen::Mode;
use crate::setup;
use crate::util::{self, say};

/// Targets of issue 7.
const TARGET_RATIO: f64 = 0.90;

/// Options for `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds of load per tracer configuration (at most 600).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,
    /// Close pattern of the load (`mixed` is this box's fastest).
    #[arg(long, value_enum, default_value = "mixed")]
    pub mode: Mode,
    /// Rounds of every configuration (the table shows each round).
    #[arg(long, value_name = "N", default_value_t = 1)]
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
    /// Only these live configurations (comma-separated; ratios need
    /// `untraced` first), e.g. `--only stats --duration 70` for a soak with
    /// TIME_WAIT expiry bursts.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = live::Tracer::ALL)]
    pub only: Vec<live::Tracer>,
}

pub fn main(args: &BenchArgs) -> Result<()> {
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
        if !util::is_root() {
            anyhow::bail!(
                "the live benchmark loads eBPF programs: run as root (or pass --offline-only)"
            );
        }
        say("==> live: building tcptrace (release)");
        util::run(util::cargo().args(["build", "--release", "-p", "tcptrace"]))?;
        let bin = util::target_dir().join("release/tcptrace");
        let mut runs = Vec::new();
        for round in 0..args.rounds.max(1) {
            runs.extend(live::round(
                &bin,
                &args.only,
                args.mode,
                args.duration,
                round,
            )?);
        }
        if !args.json {
            print_live(&runs, args);
        }
        report.insert(
            "live".into(),
            json!({
                "mode": format!("{:?}", args.mode),
                "seconds_per_run": args.duration,
                "runs": runs,
            }),
        );
    }
    if args.json {
        println!("{}", Value::Object(report));
    }
    Ok(())
}

fn print_live(runs: &[live::Run], args: &BenchArgs) {
    println!(
        "live: load generator ({:?} close, {} s per run, a fresh netns each), ratio to untraced (target >= {TARGET_RATIO})",
        args.mode, args.duration
    );
    println!(
        "  {:<30} {:>9} {:>6} {:>11} {:>11} {:>6} {:>7} {:>9} {:>8}",
        "tracer",
        "conn/s",
        "ratio",
        "expected",
        "delivered",
        "lost",
        "cpu s",
        "cpu s/M",
        "peak MiB"
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for r in runs {
        println!(
            "  {:<30} {:>9.0} {:>6.3} {:>11} {:>11} {:>6} {:>7} {:>9} {:>8}",
            r.tracer,
            r.per_sec,
            r.ratio,
            r.expected,
            r.delivered.map_or("-".into(), |d| d.to_string()),
            r.lost.map_or("-".into(), |d| d.to_string()),
            opt(r.cpu_secs, 2),
            opt(r.cpu_secs_per_m_transitions, 2),
            opt(r.peak_rss_mb, 1),
        );
    }
    // The overhead comparison: 1 - ratio, tcptrace against tcpstates.
    let overhead = |name: &str| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.tracer.starts_with(name))
            .map(|r| 1.0 - r.ratio)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    if let (Some(ours), Some(theirs)) = (overhead("tcptrace stats"), overhead("tcpstates")) {
        println!(
            "  overhead (1 - ratio): tcptrace stats {:.3}, tcpstates {:.3}: {:.2} of tcpstates' (target <= 0.25)",
            ours,
            theirs,
            if theirs > 0.0 {
                ours / theirs
            } else {
                f64::NAN
            }
        );
    }
}
