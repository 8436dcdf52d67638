//! Entry point: parse arguments, dispatch to the command, and handle what
//! ends it once for all: the error line, the exit code, a closed pipe.
//!
//! Exit codes: 0 success; 1 runtime failure (and `watch --exit-on-alert`
//! when an alert fires); 2 bad arguments or an environment problem the user
//! must fix (not root, no BTF, tracefs missing).

use std::process::ExitCode;

use clap::Parser as _;
use tcptrace::{
    cli::{Cli, Command, UsageError},
    cmd,
    preflight::{self, EnvError},
};

fn main() -> ExitCode {
    // A file-size limit (`ulimit -f`) must surface as a write error on the
    // recording (one line, exit 1), not kill the process silently.
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread exists.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| {
            use std::io::Write as _;
            // Log lines carry outside values too (paths, errors): escaped.
            let text = record.args().to_string();
            writeln!(
                buf,
                "[{} {}] {}",
                record.level(),
                record.target(),
                tcptrace_core::output::escape(&text)
            )
        })
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): done, not failed.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            tcptrace::say!("{err:#}");
            if err.is::<UsageError>()
                || err.is::<EnvError>()
                || err.is::<tcptrace_core::record::BadRecording>()
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Whether `err` comes from writing to a pipe nobody reads any more.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Whether file descriptor 1 was open when the process started. Rust's
/// runtime puts /dev/null on a closed fd 1 before `main`, where `trace`
/// would then print into nothing and claim it printed; a constructor runs
/// before that and looks first.
static STDOUT_WAS_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[ctor::ctor(unsafe)]
fn look_at_stdout_before_the_runtime_does() {
    // SAFETY: F_GETFD on any fd number is harmless.
    let closed = unsafe { libc::fcntl(1, libc::F_GETFD) } == -1;
    STDOUT_WAS_CLOSED.store(closed, std::sync::atomic::Ordering::Relaxed);
}

fn stdout_is_open() -> bool {
    !STDOUT_WAS_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let writes_stdout = match &cli.command {
        Command::Record(_) => false,
        // Alerts go to stderr unless --json.
        Command::Watch(w) => w.json,
        _ => true,
    };
    if writes_stdout && !stdout_is_open() {
        return Err(EnvError(
            "stdout is closed: redirect it to a file or to /dev/null (e.g. >/dev/null)".into(),
        )
        .into());
    }
    match cli.command {
        Command::Top(args) => {
            let cfg = args.validate()?;
            cmd::top::check_terminal()?;
            // A recording needs no kernel access.
            if cfg.replay.is_none() {
                preflight::check()?;
            }
            cmd::top::run(cfg)
        }
        Command::Record(args) => {
            let cfg = args.validate()?;
            preflight::check()?;
            cmd::record::run(cfg)
        }
        Command::Replay(args) => cmd::replay::run(&args),
        Command::Report(args) => cmd::report::run(&args),
        Command::Trace(args) => {
            let cfg = args.validate()?;
            preflight::check()?;
            cmd::trace::run(cfg)
        }
        Command::Watch(args) => {
            let cfg = args.validate()?;
            preflight::check()?;
            cmd::watch::run(cfg)
        }
        Command::Generate(args) => {
            cmd::generate::write(args.kind, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(args) => {
            let cfg = args.validate()?;
            preflight::check()?;
            cmd::doctor::run(cfg)
        }
        Command::Stats(args) => {
            let cfg = args.validate()?;
            preflight::check()?;
            cmd::stats::run(cfg)
        }
    }
}
