//! `cargo xtask bench`: the benchmarks, built optimised and run as they are
//! (not timed tests). Each prints its results as ratios to its targets.
//! Today: the recording format (size per event, write, read and `report`
//! throughput against the 10M events/s target).

use anyhow::Result;
use clap::Args;

use crate::setup;
use crate::util::{self, say};

/// Options for `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {}

pub fn main(_args: &BenchArgs) -> Result<()> {
    setup::ensure(false)?;
    say("==> recording format (tcptrace/benches/recording.rs)");
    util::run(util::cargo().args(["bench", "-p", "tcptrace", "--bench", "recording"]))?;
    Ok(())
}
