//! Developer task runner for the tcptrace workspace (`cargo xtask <cmd>`).
//!
//! Building an aya eBPF tool needs a nightly toolchain, a matching
//! `bpf-linker`, a mounted tracefs and a few Debian packages used as test
//! oracles. Rather than documenting those steps in prose, `cargo xtask setup`
//! performs them, and `cargo xtask test` / `cargo xtask run` call it first so
//! a fresh checkout works with a single command.

mod bench;
mod deb;
mod install;
mod loadgen;
mod run;
mod setup;
mod soak;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Workspace automation for tcptrace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the prerequisites (nightly rust-src, bpf-linker, tracefs, Debian packages).
    Setup(setup::SetupArgs),
    /// Run setup, then rustfmt, clippy and the test suite (as root).
    Test(test::TestArgs),
    /// Run setup, build tcptrace and run it (as root): `cargo xtask run -- <args>`.
    Run(run::RunArgs),
    /// Run the benchmarks (optimised), reported as ratios to their targets.
    Bench(bench::BenchArgs),
    /// Build release and install the binary, man page, completions, systemd unit and config.
    Install(install::InstallArgs),
    /// Bounded loopback load: short connections as fast as the box allows.
    Loadgen(loadgen::LoadArgs),
    /// Metrics server under hostile clients for minutes while tracing a real load.
    Soak(soak::SoakArgs),
    /// Build the Debian package (cargo-deb); `--install-test` also installs, checks and purges it.
    Deb(deb::DebArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => setup::main(&args),
        Command::Test(args) => test::main(&args),
        Command::Run(args) => run::main(&args),
        Command::Bench(args) => bench::main(&args),
        Command::Install(args) => install::main(&args),
        Command::Deb(args) => deb::main(&args),
        Command::Loadgen(args) => loadgen::main(&args),
        Command::Soak(args) => soak::main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` keeps the whole context chain on one line.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
