//! Entry point: parse arguments, run the command, print any error once.
//!
//! Exit codes: 0 success; 1 runtime failure (and `watch --exit-on-alert`
//! when an alert fires); 2 bad arguments or an environment problem the user
//! must fix (not root, no BTF, tracefs missing).

use std::process::ExitCode;

use clap::Parser as _;
use tcptrace::{
    cli::{Cli, Command, UsageError},
    preflight::{self, EnvError},
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tcptrace: {err:#}");
            if err.is::<UsageError>()
                || err.is::<EnvError>()
                || err.is::<tcptrace::record::BadRecording>()
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Top(args) => {
            let cfg = args.validate()?;
            tcptrace::top::check_terminal()?;
            // A recording needs no kernel access.
            if cfg.replay.is_none() {
                preflight::check()?;
            }
            runtime()?.block_on(tcptrace::top::run(cfg))
        }
        Command::Record(args) => {
            let cfg = args.validate()?;
            preflight::check()?;
            runtime()?.block_on(tcptrace::record_cmd::run(cfg))
        }
        Command::Replay(args) => tcptrace::replay::run(&args),
        Command::Report(args) => tcptrace::report::run(&args),
        Command::Trace(args) => {
            let cfg = args.validate()?;
            preflight::check()?;
            runtime()?.block_on(tcptrace::trace::run(cfg))
        }
        Command::Watch(args) => {
            let cfg = args.validate()?;
            preflight::check()?;
            runtime()?.block_on(tcptrace::watch::run(cfg))
        }
        Command::Generate(args) => {
            tcptrace::generate::write(args.kind, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(args) => {
            let cfg = args.validate()?;
            preflight::check()?;
            runtime()?.block_on(tcptrace::doctor_cmd::run(cfg))
        }
        Command::Stats(args) => {
            let cfg = args.validate()?;
            preflight::check()?;
            runtime()?.block_on(tcptrace::stats_cmd::run(cfg))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
