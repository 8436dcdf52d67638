//! Command line: clap definitions, and validation into the typed configs the
//! commands run on. Raw arguments never leak past this module.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tcptrace_common::{Filter, config::MAX_FILTER_PORTS};

use crate::ebpf::{HookChoice, LoadOptions, TimewaitChoice};
use tcptrace_core::model::{Comm, TcpState};

/// Live TCP state transitions, TIME_WAIT and owners, from eBPF.
#[derive(Debug, Parser)]
#[command(name = "tcptrace", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live terminal UI: states, CLOSE_WAIT holders, TIME_WAIT by peer, connections, histograms, listeners (accept queues, dropped SYNs).
    Top(TopArgs),
    /// Stream every TCP state transition, TIME_WAIT begin/end, and connection attempts dropped at listeners.
    Trace(TraceArgs),
    /// Live summary every --interval: states, CLOSE_WAIT holders, TIME_WAIT by peer, durations, listeners' drops.
    Stats(StatsArgs),
    /// Record transitions to a file (replay, report or `top --from` it later).
    Record(RecordArgs),
    /// Print a recording as `trace` would have (same text and JSON).
    Replay(ReplayArgs),
    /// Postmortem of a recording: who held CLOSE_WAIT and TIME_WAIT and when,
    /// a timeline, the state at any moment (--at) or over a window.
    Report(ReportArgs),
    /// Alert on CLOSE_WAIT growth, TIME_WAIT port exhaustion, SYNs dropped at listeners and lost events.
    Watch(WatchArgs),
    /// Observe for a short window and diagnose: CLOSE_WAIT leaks, who makes
    /// TIME_WAIT, ephemeral port pressure, SYNs dropped at full accept queues, risky sysctls. Exit 1 on a warning.
    Doctor(DoctorArgs),
    /// Print the man page or a shell completion script (used by packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to print on stdout.
    #[arg(value_enum)]
    pub kind: GenerateKind,
}

/// Files generated from this very command line, so they never drift from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GenerateKind {
    /// The man page, roff (`tcptrace.1`).
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[command(flatten)]
    pub stacks: StackArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Rules from a TOML file (names as in the README); flags override it. SIGHUP reloads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// One JSON object per alert on stdout (else text lines on stderr).
    #[arg(long)]
    pub json: bool,
    /// Seconds between rule evaluations.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub interval: f64,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Exit 1 at the first firing alert (health checks, CI).
    #[arg(long)]
    pub exit_on_alert: bool,
    /// Run `sh -c CMD` per alert (firing or resolved): the alert as JSON on stdin
    /// and in TCPTRACE_ALERT_* variables; killed after 10 s; never blocks tracing.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// CLOSE_WAIT sockets per process [default 100].
    #[arg(long, value_name = "N")]
    pub close_wait: Option<u64>,
    /// CLOSE_WAIT sockets on the host, 0 = off [default 1000].
    #[arg(long, value_name = "N")]
    pub close_wait_host: Option<u64>,
    /// CLOSE_WAIT growth per process, sockets/min [default 10].
    #[arg(long, value_name = "PER_MIN")]
    pub close_wait_growth: Option<f64>,
    /// Minutes the growth is averaged over: 1, 5 or 15 [default 5].
    #[arg(long, value_name = "MIN")]
    pub growth_window: Option<u64>,
    /// Age of the oldest CLOSE_WAIT socket of a process, seconds [default 300].
    #[arg(long, value_name = "SECS")]
    pub close_wait_age: Option<u64>,
    /// Share of ip_local_port_range in TIME_WAIT to one peer, 0..1 [default 0.5].
    #[arg(long, value_name = "SHARE")]
    pub time_wait_share: Option<f64>,
    /// Lost events within a minute, 0 = off [default 1].
    #[arg(long, value_name = "N")]
    pub lost: Option<u64>,
    /// Seconds between repeats of an alert that still holds [default 600].
    #[arg(long, value_name = "SECS")]
    pub repeat: Option<u64>,
    /// CLOSE_WAIT count and age rules per `process` or per `workload`
    /// (unit, container, pod) [default process; TOML `group_by`].
    #[arg(long, value_name = "process|workload")]
    pub group_by: Option<String>,
}

#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub load: LoadOptions,
    pub user_filter: tcptrace_core::filter::UserFilter,
    pub json: bool,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub seed: bool,
    pub reconcile: Option<Duration>,
    pub max_conns: usize,
    pub metrics: Option<crate::http::ServerOptions>,
    pub exit_on_alert: bool,
    pub exec: Option<String>,
    pub config: Option<std::path::PathBuf>,
    /// The flags given, applied over the file's rules (on every reload too).
    pub overrides: RuleOverrides,
    pub rules: tcptrace_core::alerts::Rules,
}

/// Rule flags given on the command line.
#[derive(Clone, Debug, Default)]
pub struct RuleOverrides {
    pub close_wait: Option<u64>,
    pub close_wait_host: Option<u64>,
    pub close_wait_growth: Option<f64>,
    pub growth_window: Option<u64>,
    pub close_wait_age: Option<u64>,
    pub time_wait_share: Option<f64>,
    pub lost: Option<u64>,
    pub repeat: Option<u64>,
    pub group_by: Option<tcptrace_core::alerts::GroupBy>,
}

impl RuleOverrides {
    /// The rules of `file` (defaults without one) with these flags applied.
    /// Who can change the file is checked as it is read ([`read_config`]):
    /// refused when `exec` (its alerts run commands as root), warned otherwise.
    pub fn rules(
        &self,
        file: Option<&std::path::Path>,
        exec: bool,
    ) -> Result<tcptrace_core::alerts::Rules, UsageError> {
        let mut r: tcptrace_core::alerts::Rules = match file {
            None => tcptrace_core::alerts::Rules::default(),
            Some(f) => {
                let text = read_config(f, exec)?;
                toml::from_str(&text).map_err(|e| {
                    usage(format!(
                        "{}: {}",
                        f.display(),
                        e.message().lines().next().unwrap_or("invalid TOML")
                    ))
                })?
            }
        };
        let set = |v: &mut u64, o: Option<u64>| {
            if let Some(o) = o {
                *v = o;
            }
        };
        set(&mut r.close_wait_per_process, self.close_wait);
        set(&mut r.close_wait_host, self.close_wait_host);
        set(&mut r.close_wait_growth_window_min, self.growth_window);
        set(&mut r.close_wait_oldest_secs, self.close_wait_age);
        set(&mut r.lost_events, self.lost);
        set(&mut r.repeat_secs, self.repeat);
        if let Some(g) = self.close_wait_growth {
            r.close_wait_growth_per_min = g;
        }
        if let Some(s) = self.time_wait_share {
            r.time_wait_port_share = s;
        }
        if let Some(g) = self.group_by {
            r.group_by = g;
        }
        r.check().map_err(usage)?;
        Ok(r)
    }
}

/// What lets someone other than root (or the user tcptrace runs as) change
/// the file at `path`, or `None` when nobody else can; and its contents,
/// read from the very file that was checked. Checked: every directory on
/// the path as given and on the path it resolves to (owned by another user,
/// or writable by group or others without the sticky bit of `/tmp`), every
/// symbolic link on the way (owned by another user), and the file itself
/// (owned by another user, writable by group or others), from the open
/// file's own `fstat`.
pub fn config_writers(path: &std::path::Path) -> std::io::Result<(Option<String>, String)> {
    use std::{io::Read, os::unix::fs::MetadataExt};
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let trusted_owner = |uid: u32| uid == 0 || uid == me;
    let dir_problem = |dir: &std::path::Path| -> std::io::Result<Option<String>> {
        let link = std::fs::symlink_metadata(dir)?;
        if link.file_type().is_symlink() && !trusted_owner(link.uid()) {
            return Ok(Some(format!(
                "goes through the link {}, owned by uid {}",
                dir.display(),
                link.uid()
            )));
        }
        let d = std::fs::metadata(dir)?;
        let sticky = d.mode() & 0o1000 != 0;
        Ok(if !trusted_owner(d.uid()) {
            Some(format!("is in {}, owned by uid {}", dir.display(), d.uid()))
        } else if d.mode() & 0o022 != 0 && !sticky {
            Some(format!(
                "is in {}, writable by group or others (mode {:04o})",
                dir.display(),
                d.mode() & 0o7777
            ))
        } else {
            None
        })
    };
    let given = std::path::absolute(path)?;
    let mut file = std::fs::File::open(&given)?;
    let resolved = std::fs::canonicalize(&given)?;
    let mut problem = None;
    let last = std::fs::symlink_metadata(&given)?;
    if last.file_type().is_symlink() && !trusted_owner(last.uid()) {
        problem = Some(format!("is a link owned by uid {}", last.uid()));
    }
    for dir in given
        .ancestors()
        .skip(1)
        .chain(resolved.ancestors().skip(1))
    {
        if problem.is_some() {
            break;
        }
        problem = dir_problem(dir)?;
    }
    let m = file.metadata()?;
    if problem.is_none() {
        problem = if !m.is_file() {
            Some("is not a regular file".into())
        } else if !trusted_owner(m.uid()) {
            Some(format!("is owned by uid {}", m.uid()))
        } else if m.mode() & 0o022 != 0 {
            Some(format!(
                "is writable by group or others (mode {:04o})",
                m.mode() & 0o7777
            ))
        } else {
            None
        };
    }
    let mut text = String::new();
    file.by_ref().take(1 << 20).read_to_string(&mut text)?;
    Ok((problem, text))
}

/// Reads `watch --config`: refused (exit 2) when others could change the
/// rules and `--exec` runs commands as root on their alerts; a warning
/// otherwise.
fn read_config(path: &std::path::Path, exec: bool) -> Result<String, UsageError> {
    let shown = tcptrace_core::output::escape(&path.display().to_string()).into_owned();
    let (problem, text) =
        config_writers(path).map_err(|e| usage(format!("cannot read {shown}: {e}")))?;
    match problem {
        None => Ok(text),
        Some(problem) if exec => Err(usage(format!(
            "--config {shown} {problem}: with --exec its rules decide when commands run as root; make it root's alone (chown root; chmod go-w) or drop --exec"
        ))),
        Some(problem) => {
            crate::say!(
                "warning: --config {shown} {problem}: others can change the rules (chown root; chmod go-w)"
            );
            Ok(text)
        }
    }
}

impl WatchArgs {
    pub fn validate(&self) -> Result<WatchConfig, UsageError> {
        let filter = self.filter.to_filter()?;
        let engine = self.engine.validate()?;
        let overrides = RuleOverrides {
            close_wait: self.close_wait,
            close_wait_host: self.close_wait_host,
            close_wait_growth: self.close_wait_growth,
            growth_window: self.growth_window,
            close_wait_age: self.close_wait_age,
            time_wait_share: self.time_wait_share,
            lost: self.lost,
            repeat: self.repeat,
            group_by: self
                .group_by
                .as_deref()
                .map(|g| {
                    tcptrace_core::alerts::GroupBy::parse(g).ok_or_else(|| {
                        usage(format!(
                            "--group-by {:?}: give process or workload",
                            tcptrace_core::output::escape(g)
                        ))
                    })
                })
                .transpose()?,
        };
        let rules = overrides.rules(self.config.as_deref(), self.exec.is_some())?;
        Ok(WatchConfig {
            load: self
                .kernel
                .to_load_options(filter)?
                .with_stacks(&self.stacks)?
                .with_workloads(self.filter.workloads()?),
            user_filter: tcptrace_core::filter::UserFilter(filter),
            json: self.json,
            interval: interval(self.interval)?,
            duration: duration(self.duration)?,
            seed: engine.seed,
            reconcile: engine.reconcile,
            max_conns: engine.max_conns,
            metrics: engine.metrics,
            exit_on_alert: self.exit_on_alert,
            exec: self.exec.clone(),
            config: self.config.clone(),
            overrides,
            rules,
        })
    }
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[command(flatten)]
    pub stacks: StackArgs,
    /// One JSON object per interval (schema in the README).
    #[arg(long)]
    pub json: bool,
    /// Seconds between summaries.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub interval: f64,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Also report duration histograms per owning process or per remote endpoint.
    #[arg(long, value_enum, default_value = "none")]
    pub histograms_by: HistogramsByArg,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Seconds to observe before diagnosing.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,
    /// The findings as a JSON array (`id`, `severity`, `title`, `evidence`,
    /// `advice`, `sysctls`, `workload`).
    #[arg(long)]
    pub json: bool,
    /// Diagnose a recording (`tcptrace record`) instead of the live host:
    /// the same findings, from the sysctls and counters it carries.
    #[arg(long, value_name = "FILE", conflicts_with = "duration")]
    pub from: Option<std::path::PathBuf>,
    /// `--cgroup`, `--container`, `--unit`: diagnose only the sockets of
    /// these workloads (live runs).
    #[command(flatten)]
    pub workload: WorkloadFilterArgs,
    /// Diagnose only a network namespace: its inode, or an `ip netns`
    /// name (repeatable, up to 8; live runs).
    #[arg(long = "netns", value_name = "INODE|NAME")]
    pub netns: Vec<String>,
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[command(flatten)]
    pub stacks: StackArgs,
}

/// [`DoctorArgs`], validated.
#[derive(Clone, Debug)]
pub struct DoctorConfig {
    pub load: LoadOptions,
    pub duration: Duration,
    pub json: bool,
    /// `--from`: a recording instead of the kernel.
    pub from: Option<std::path::PathBuf>,
}

impl DoctorArgs {
    pub fn validate(&self) -> Result<DoctorConfig, UsageError> {
        let workloads = self.workload.options(&self.netns, None)?;
        if self.from.is_some() && workloads.narrows() {
            return Err(usage(format!(
                "{}: doctor --from diagnoses the whole recording; `tcptrace report --unit/--container/--cgroup FILE` shows one workload's holders",
                workloads.described
            )));
        }
        if self.from.is_some() && self.stacks.stacks {
            return Err(usage(STACKS_LIVE_ONLY));
        }
        Ok(DoctorConfig {
            load: self
                .kernel
                .to_load_options(Filter::default())?
                .with_workloads(workloads)
                .with_stacks(&self.stacks)?,
            duration: seconds("--duration", self.duration, DURATION_SECS, "")?,
            json: self.json,
            from: self.from.clone(),
        })
    }
}

/// Options of the userspace lifecycle engine (`stats`, `top`).
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Skip the startup snapshot of existing sockets (sock_diag).
    #[arg(long)]
    pub no_seed: bool,
    /// Seconds between reconciliations with sock_diag (0 = never).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub reconcile: f64,
    /// Most live sockets tracked in userspace; beyond it, entries are evicted (counted).
    #[arg(long, value_name = "N", default_value_t = tcptrace_core::conn::DEFAULT_CAP)]
    pub max_conns: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// With --metrics: only clients in CIDR may connect (repeatable; an
    /// address alone is one host), e.g. 10.0.0.0/8.
    #[arg(long = "metrics-allow", value_name = "CIDR", requires = "metrics")]
    pub metrics_allow: Vec<String>,
}

/// [`EngineArgs`], validated.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub seed: bool,
    pub reconcile: Option<Duration>,
    pub max_conns: usize,
    pub metrics: Option<crate::http::ServerOptions>,
}

impl EngineArgs {
    pub fn validate(&self) -> Result<EngineOptions, UsageError> {
        let reconcile = if self.reconcile == 0.0 {
            None
        } else {
            Some(seconds(
                "--reconcile",
                self.reconcile,
                RECONCILE_SECS,
                " (or 0 for never)",
            )?)
        };
        bounded("--max-conns", self.max_conns as u64, MAX_CONNS)?;
        let allow = self
            .metrics_allow
            .iter()
            .map(|s| parse_cidr(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EngineOptions {
            seed: !self.no_seed,
            reconcile,
            max_conns: self.max_conns,
            metrics: self
                .metrics
                .map(|addr| crate::http::ServerOptions { addr, allow }),
        })
    }
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[command(flatten)]
    pub stacks: StackArgs,
    /// Seconds between screen refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Show a recording (from `tcptrace record`) instead of the live kernel;
    /// needs no root. `space` plays/pauses, `[`/`]` step, `+`/`-` change speed.
    #[arg(long, value_name = "FILE")]
    pub from: Option<std::path::PathBuf>,
    /// With --from: playback speed relative to the recording.
    #[arg(long, value_name = "X", default_value_t = 1.0, requires = "from")]
    pub speed: f64,
    /// With --from: seconds of recording per `[`/`]` step (`{`/`}` step ten times as far).
    #[arg(long, value_name = "SECS", default_value_t = 10.0, requires = "from")]
    pub step: f64,
}

/// `top --from FILE`: what to replay and how.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub file: std::path::PathBuf,
    pub speed: f64,
    pub step: Duration,
}

#[derive(Clone, Debug)]
pub struct TopConfig {
    pub load: LoadOptions,
    pub user_filter: tcptrace_core::filter::UserFilter,
    pub interval: Duration,
    pub seed: bool,
    pub reconcile: Option<Duration>,
    pub max_conns: usize,
    pub metrics: Option<crate::http::ServerOptions>,
    /// A recording to show instead of the live kernel.
    pub replay: Option<ReplayOptions>,
}

impl TopArgs {
    pub fn validate(&self) -> Result<TopConfig, UsageError> {
        let filter = self.filter.to_filter()?;
        let engine = self.engine.validate()?;
        let replay = match &self.from {
            None => None,
            Some(file) => {
                if self.stacks.stacks {
                    return Err(usage(STACKS_LIVE_ONLY));
                }
                if !self.filter.as_args().is_empty() {
                    return Err(usage(
                        "filters apply when recording, not with --from: filter the replay with / inside top",
                    ));
                }
                Some(ReplayOptions {
                    file: file.clone(),
                    speed: speed("--speed", self.speed)?,
                    step: seconds("--step", self.step, STEP_SECS, "")?,
                })
            }
        };
        Ok(TopConfig {
            load: self
                .kernel
                .to_load_options(filter)?
                .with_stacks(&self.stacks)?
                .with_workloads(self.filter.workloads()?),
            user_filter: tcptrace_core::filter::UserFilter(filter),
            interval: interval(self.interval)?,
            seed: engine.seed,
            // A recording reconciles at its own snapshots.
            reconcile: engine.reconcile.filter(|_| replay.is_none()),
            max_conns: engine.max_conns,
            metrics: engine.metrics,
            replay,
        })
    }
}

/// The range of each numeric argument, checked before anything touches
/// the kernel: a value outside it is one line and exit 2, never a panic, a
/// core burnt by a 1-ns tick, or a deadline that overflows.
pub mod limits {
    /// `--duration` (a year at most).
    pub const DURATION_SECS: (f64, f64) = (0.001, 31_536_000.0);
    /// `--interval` of `stats`, `watch`, `top`.
    pub const INTERVAL_SECS: (f64, f64) = (0.1, 86_400.0);
    /// `--reconcile` (or 0).
    pub const RECONCILE_SECS: (f64, f64) = (1.0, 86_400.0);
    /// `record --rotate-time`.
    pub const ROTATE_SECS: (f64, f64) = (1.0, 31_536_000.0);
    /// `record --snapshot-every`.
    pub const SNAPSHOT_SECS: (f64, f64) = (1.0, 86_400.0);
    /// `top --from --step`.
    pub const STEP_SECS: (f64, f64) = (0.001, 31_536_000.0);
    /// `--speed` of `replay` and `top --from`.
    pub const SPEED: (f64, f64) = (0.001, 1_000_000.0);
    /// `--max-conns`.
    pub const MAX_CONNS: (u64, u64) = (1_000, 100_000_000);
    /// `--owner-map-size`.
    pub const OWNER_MAP: (u64, u64) = (1_024, 1 << 24);
    /// `record --keep`.
    pub const KEEP: (u64, u64) = (1, 1_000);
    /// `--stack-map-size` (a power of two; ids must fit 15 bits).
    pub const STACK_MAP: (u64, u64) = (64, 32_768);
}
use limits::*;

/// `secs` as a duration when it lies in `[min, max]`; else the one-line
/// error naming `flag` and the range (`extra` is appended to it).
fn seconds(
    flag: &str,
    secs: f64,
    (min, max): (f64, f64),
    extra: &str,
) -> Result<Duration, UsageError> {
    if secs.is_finite() && (min..=max).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else if secs <= 0.0 {
        Err(usage(format!(
            "{flag} {secs} must be a positive number of seconds: give {min} to {max}{extra}"
        )))
    } else {
        Err(usage(format!(
            "{flag} {secs} is out of range: give {min} to {max} seconds{extra}"
        )))
    }
}

/// A count in `[min, max]`.
fn bounded(flag: &str, value: u64, (min, max): (u64, u64)) -> Result<(), UsageError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(usage(format!(
            "{flag} {value} is out of range: give {min} to {max}"
        )))
    }
}

/// A playback speed in [`limits::SPEED`].
pub fn speed(flag: &str, x: f64) -> Result<f64, UsageError> {
    let (min, max) = SPEED;
    if x.is_finite() && (min..=max).contains(&x) {
        Ok(x)
    } else if x <= 0.0 {
        Err(usage(format!(
            "{flag} {x} must be a positive number: give {min} to {max}"
        )))
    } else {
        Err(usage(format!(
            "{flag} {x} is out of range: give {min} to {max}"
        )))
    }
}

/// `--metrics-allow`: a network (`10.0.0.0/8`) or one address.
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, UsageError> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            usage(format!(
                "--metrics-allow '{s}' is not a network: give e.g. 10.0.0.0/8 or 192.0.2.7"
            ))
        })
}

/// Validates `--interval`.
fn interval(secs: f64) -> Result<Duration, UsageError> {
    seconds("--interval", secs, INTERVAL_SECS, "")
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[command(flatten)]
    pub stacks: StackArgs,
    /// The recording to write (rotated files get .1, .2, ...).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: std::path::PathBuf,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// No status line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Start a new file once this one reaches SIZE (e.g. 100M, 2G).
    #[arg(long, value_name = "SIZE")]
    pub rotate_size: Option<String>,
    /// Start a new file every SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub rotate_time: Option<f64>,
    /// Rotated files kept (FILE.1 .. FILE.N); older ones are deleted.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub keep: usize,
    /// Seconds between sock_diag snapshots written into the file (so a
    /// reader can start mid-file).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    pub snapshot_every: f64,
    /// Replace FILE if it exists (a regular file; a symbolic link is never
    /// followed).
    #[arg(long)]
    pub force: bool,
}

#[derive(Clone, Debug)]
pub struct RecordConfig {
    pub load: LoadOptions,
    pub user_filter: tcptrace_core::filter::UserFilter,
    /// The filter flags as given, stored in the file's header.
    pub filter_args: Vec<String>,
    pub output: std::path::PathBuf,
    pub duration: Option<Duration>,
    pub quiet: bool,
    pub rotate_size: Option<u64>,
    pub rotate_time: Option<Duration>,
    pub keep: usize,
    pub snapshot_every: Duration,
    /// Replace an existing regular file.
    pub force: bool,
}

/// `record -o FILE`, checked before anything touches the kernel: never a
/// symbolic link, never a directory, never an existing file without
/// `--force` (which replaces only a regular file, or writes into a
/// character device such as `/dev/null`; never a FIFO, which would block),
/// and its directory must exist.
fn check_output(path: &std::path::Path, force: bool) -> Result<(), UsageError> {
    let shown = tcptrace_core::output::escape(&path.display().to_string()).into_owned();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(usage(format!(
            "-o {shown} is a symbolic link: refusing to follow it; give the real path"
        ))),
        Ok(m) if m.is_dir() => Err(usage(format!(
            "-o {shown} is a directory: give a file name inside it"
        ))),
        Ok(_) if !force => Err(usage(format!(
            "-o {shown} exists: choose a new name, or add --force to replace it"
        ))),
        Ok(m)
            if !(m.is_file() || std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type())) =>
        {
            Err(usage(format!(
                "-o {shown} is not a regular file or a device: refusing to replace it"
            )))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            if dir.is_dir() {
                Ok(())
            } else {
                Err(usage(format!(
                    "-o {shown}: directory {} does not exist",
                    tcptrace_core::output::escape(&dir.display().to_string())
                )))
            }
        }
        Err(e) => Err(usage(format!("-o {shown}: {e}"))),
    }
}

/// Parses a size: bytes, or with a K/M/G suffix (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

impl FilterArgs {
    /// The flags as they were given, for the recording's header.
    pub fn as_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (flag, list) in [
            ("--port", &self.port),
            ("--lport", &self.lport),
            ("--rport", &self.rport),
        ] {
            for p in list {
                out.extend([flag.to_string(), p.to_string()]);
            }
        }
        if let Some(pid) = self.pid {
            out.extend(["--pid".to_string(), pid.to_string()]);
        }
        if let Some(c) = &self.comm {
            out.extend(["--comm".to_string(), c.clone()]);
        }
        for s in &self.state {
            out.extend(["--state".to_string(), s.clone()]);
        }
        if self.ipv4 {
            out.push("-4".into());
        }
        if self.ipv6 {
            out.push("-6".into());
        }
        for (flag, list) in [
            ("--cgroup", &self.workload.cgroup),
            ("--container", &self.workload.container),
            ("--unit", &self.workload.unit),
            ("--netns", &self.netns),
        ] {
            for v in list {
                out.extend([flag.to_string(), v.clone()]);
            }
        }
        out
    }
}

impl RecordArgs {
    pub fn validate(&self) -> Result<RecordConfig, UsageError> {
        let filter = self.filter.to_filter()?;
        let rotate_size = self
            .rotate_size
            .as_deref()
            .map(|s| {
                parse_size(s).filter(|&n| n >= 1 << 16).ok_or_else(|| {
                    usage(format!(
                        "--rotate-size '{s}' is not a size of at least 64K (e.g. 100M, 2G)"
                    ))
                })
            })
            .transpose()?;
        let rotate_time = self
            .rotate_time
            .map(|t| seconds("--rotate-time", t, ROTATE_SECS, ""))
            .transpose()?;
        if self.keep == 0 && (rotate_size.is_some() || rotate_time.is_some()) {
            return Err(usage(
                "--keep 0 would delete every rotated file: keep at least 1",
            ));
        }
        bounded("--keep", self.keep as u64, (0, KEEP.1))?;
        let snapshot_every = seconds("--snapshot-every", self.snapshot_every, SNAPSHOT_SECS, "")?;
        check_output(&self.output, self.force)?;
        Ok(RecordConfig {
            force: self.force,
            load: self
                .kernel
                .to_load_options(filter)?
                .with_stacks(&self.stacks)?
                .with_workloads(self.filter.workloads()?),
            user_filter: tcptrace_core::filter::UserFilter(filter),
            filter_args: self.filter.as_args(),
            output: self.output.clone(),
            duration: duration(self.duration)?,
            quiet: self.quiet,
            rotate_size,
            rotate_time,
            keep: self.keep,
            snapshot_every,
        })
    }
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A recording made by `tcptrace record`.
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// One JSON object per line (the `trace --json` schema).
    #[arg(long)]
    pub json: bool,
    /// Replay speed relative to the recording (2 = twice as fast).
    #[arg(
        long,
        value_name = "X",
        default_value_t = 1.0,
        conflicts_with = "as_fast_as_possible"
    )]
    pub speed: f64,
    /// Print everything at once, without pacing.
    #[arg(long)]
    pub as_fast_as_possible: bool,
    #[command(flatten)]
    pub workload: WorkloadFilterArgs,
    /// Keep the events of a network namespace, by the inode the recording
    /// stores (repeatable, up to 8).
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<String>,
}

impl ReplayArgs {
    /// `--netns` inodes, validated (names mean this host's namespaces,
    /// not the recording's: refused).
    pub fn netns(&self) -> Result<Vec<u32>, UsageError> {
        recorded_netns(&self.netns)
    }
}

/// `--netns` of `report`/`replay`: inodes only, at most 8.
fn recorded_netns(values: &[String]) -> Result<Vec<u32>, UsageError> {
    if values.len() > crate::workloads::MAX_NETNS {
        return Err(usage(format!(
            "--netns given {} times: at most {}",
            values.len(),
            crate::workloads::MAX_NETNS
        )));
    }
    values
        .iter()
        .map(|v| {
            v.parse::<u32>().ok().filter(|&i| i != 0).ok_or_else(|| {
                usage(format!(
                    "--netns {}: give the namespace's inode as the recording stores it (1 to 4294967295; `ip netns` names are this host's)",
                    tcptrace_core::output::escape(v)
                ))
            })
        })
        .collect()
}

#[derive(Debug, Args)]
#[command(after_help = TIME_FORMATS)]
pub struct ReportArgs {
    /// A recording made by `tcptrace record`.
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// One JSON object (the `stats --json` schema plus recording, gaps,
    /// timeline, window and holders).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV rows (section,key,field,value,workload) for spreadsheets.
    #[arg(long)]
    pub csv: bool,
    /// The state at TIME: the summary then; holders and timeline up to it.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, conflicts_with_all = ["from", "to"])]
    pub at: Option<String>,
    /// Start the window at TIME (holders, timeline, gaps and counts from
    /// there; the state before it still counts).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// End the window at TIME (the summary is the state then).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub to: Option<String>,
    /// Timeline step, e.g. 10s, 1m, 500ms (default: about 60 points over
    /// the recording or window).
    #[arg(long, value_name = "DURATION")]
    pub step: Option<String>,
    /// Show the code paths that opened the CLOSE_WAIT sockets and their full
    /// stacks in the text (a recording made with --stacks; its JSON has
    /// them either way).
    #[arg(long)]
    pub stacks: bool,
    #[command(flatten)]
    pub workload: WorkloadFilterArgs,
    /// Report one network namespace: only its events and sockets, by the
    /// inode the recording stores (repeatable, up to 8).
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<String>,
}

/// What TIME may be, for `report --help` and every error about one.
const TIME_FORMATS: &str = "TIME: an offset from the recording's start (90, 90s, 1m30s, +5s), \
a UTC time of day on the recording's day (16:05:03, 16:05:03.250) or an RFC 3339 time \
(2026-12-01T16:05:03Z)";

/// How `report` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Text,
    Json,
    Csv,
}

#[derive(Clone, Debug)]
pub struct ReportConfig {
    pub file: std::path::PathBuf,
    pub format: ReportFormat,
    /// The window (or moment) and the timeline's step.
    pub options: tcptrace_core::report::Options,
}

impl ReportArgs {
    pub fn validate(&self) -> Result<ReportConfig, UsageError> {
        let time =
            |flag: &str, v: &Option<String>| v.as_deref().map(|s| parse_time(flag, s)).transpose();
        let step_ns = self
            .step
            .as_deref()
            .map(|s| {
                let ns = parse_duration(s).ok_or_else(|| {
                    usage(format!(
                        "--step '{s}' is not a duration: give e.g. 10s, 1m, 500ms or 1m30s"
                    ))
                })?;
                seconds("--step", ns as f64 / 1e9, STEP_SECS, "")?;
                Ok::<u64, UsageError>(ns)
            })
            .transpose()?;
        Ok(ReportConfig {
            file: self.file.clone(),
            format: if self.json {
                ReportFormat::Json
            } else if self.csv {
                ReportFormat::Csv
            } else {
                ReportFormat::Text
            },
            options: tcptrace_core::report::Options {
                from: time("--from", &self.from)?,
                to: time("--to", &self.to)?,
                at: time("--at", &self.at)?,
                step_ns,
                workloads: self.workload.to_filter()?,
                netns: recorded_netns(&self.netns)?,
                stacks: self.stacks,
            },
        })
    }
}

/// A non-negative duration in ns: plain seconds (`90`, `2.5`) or a friendly
/// or ISO 8601 duration (`90s`, `1m30s`, `500ms`, `PT1M`), `+` allowed.
fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && (0.0..1e12).contains(&secs))
            .then(|| (secs * 1e9).round() as u64);
    }
    let d: jiff::SignedDuration = s.parse().ok()?;
    u64::try_from(d.as_nanos()).ok()
}

/// A moment of a recording (see [`TIME_FORMATS`]).
fn parse_time(flag: &str, s: &str) -> Result<tcptrace_core::report::TimeArg, UsageError> {
    use tcptrace_core::report::{TimeArg, TimeSpec};
    let text = s.trim();
    let spec = if let Ok(t) = text.parse::<jiff::Timestamp>() {
        u64::try_from(t.as_nanosecond()).ok().map(TimeSpec::Wall)
    } else if text.contains(':') && !text.contains(['-', 'T', 't', ' ']) {
        // A time of day alone (a date without an offset is refused: UTC
        // or not, it cannot be told).
        text.parse::<jiff::civil::Time>().ok().map(|t| {
            let secs = u64::from(t.hour().unsigned_abs()) * 3_600
                + u64::from(t.minute().unsigned_abs()) * 60
                + u64::from(t.second().unsigned_abs());
            TimeSpec::TimeOfDay(
                secs * 1_000_000_000 + u64::from(t.subsec_nanosecond().unsigned_abs()),
            )
        })
    } else {
        parse_duration(text).map(TimeSpec::Offset)
    };
    spec.map(|spec| TimeArg {
        text: text.to_string(),
        spec,
    })
    .ok_or_else(|| {
        usage(format!(
            "{flag} '{s}' is not a time: give {}",
            &TIME_FORMATS[6..]
        ))
    })
}

/// `--histograms-by` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HistogramsByArg {
    None,
    Process,
    Peer,
}

impl From<HistogramsByArg> for tcptrace_core::stats::HistogramsBy {
    fn from(a: HistogramsByArg) -> Self {
        match a {
            HistogramsByArg::None => Self::None,
            HistogramsByArg::Process => Self::Process,
            HistogramsByArg::Peer => Self::Peer,
        }
    }
}

#[derive(Clone, Debug)]
pub struct StatsConfig {
    pub load: LoadOptions,
    pub user_filter: tcptrace_core::filter::UserFilter,
    pub json: bool,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub seed: bool,
    pub reconcile: Option<Duration>,
    pub max_conns: usize,
    pub metrics: Option<crate::http::ServerOptions>,
    pub histograms_by: tcptrace_core::stats::HistogramsBy,
}

impl StatsArgs {
    pub fn validate(&self) -> Result<StatsConfig, UsageError> {
        let filter = self.filter.to_filter()?;
        let engine = self.engine.validate()?;
        Ok(StatsConfig {
            load: self
                .kernel
                .to_load_options(filter)?
                .with_stacks(&self.stacks)?
                .with_workloads(self.filter.workloads()?),
            user_filter: tcptrace_core::filter::UserFilter(filter),
            json: self.json,
            interval: interval(self.interval)?,
            duration: duration(self.duration)?,
            seed: engine.seed,
            reconcile: engine.reconcile,
            max_conns: engine.max_conns,
            metrics: engine.metrics,
            histograms_by: self.histograms_by.into(),
        })
    }
}

/// Filters shared by every live command. Applied in the kernel.
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Local or remote port (repeatable, up to 8).
    #[arg(long = "port", value_name = "N")]
    pub port: Vec<u16>,
    /// Local port (repeatable, up to 8).
    #[arg(long = "lport", value_name = "N")]
    pub lport: Vec<u16>,
    /// Remote port (repeatable, up to 8).
    #[arg(long = "rport", value_name = "N")]
    pub rport: Vec<u16>,
    /// Owning process id.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Owning process name (first 15 characters, as the kernel keeps it).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Keep events whose old or new state is S (repeatable), e.g. CLOSE_WAIT.
    #[arg(long = "state", value_name = "S")]
    pub state: Vec<String>,
    /// IPv4 only.
    #[arg(short = '4', long = "ipv4")]
    pub ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// `--cgroup`, `--container`, `--unit`: the live commands apply them in
    /// the session's workload wiring (the resolver's names at run time).
    #[command(flatten)]
    pub workload: WorkloadFilterArgs,
    /// Keep a network namespace: its inode, or an `ip netns` name (looked
    /// up in /run/netns; repeatable, up to 8).
    #[arg(long = "netns", value_name = "INODE|NAME")]
    pub netns: Vec<String>,
    /// Tests only: the root under which runtime state is read for names
    /// (`var/lib/docker`, `var/log/containers`, ...) instead of `/`.
    #[arg(long = "workload-roots", value_name = "DIR", hide = true)]
    pub workload_roots: Option<std::path::PathBuf>,
}

/// Workload filters: `--cgroup PATH`, `--container ID|NAME`, `--unit NAME`
/// (each repeatable, up to 8; a workload matching any value is kept).
/// `report` and `replay` match them against the names the recording
/// stores, never against this host.
#[derive(Debug, Args, Clone, Default)]
pub struct WorkloadFilterArgs {
    /// Keep workloads whose cgroup v2 path is PATH or below it (absolute,
    /// e.g. /system.slice/api.service; repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroup: Vec<String>,
    /// Keep a container: an id prefix (hex) or a name (Docker/Podman name,
    /// Kubernetes container name, or ns/pod/container; repeatable).
    #[arg(long = "container", value_name = "ID|NAME")]
    pub container: Vec<String>,
    /// Keep a systemd unit (`.service` appended when no suffix is given;
    /// repeatable). A slice matches its own processes only: for everything
    /// below it, use `--cgroup /NAME.slice`.
    #[arg(long = "unit", value_name = "NAME")]
    pub unit: Vec<String>,
}

impl WorkloadFilterArgs {
    /// The validated filter; a malformed value is a usage error (one line).
    pub fn to_filter(&self) -> Result<tcptrace_core::workload::WorkloadFilter, UsageError> {
        tcptrace_core::workload::WorkloadFilter::parse(&self.cgroup, &self.container, &self.unit)
            .map_err(|e| usage(e.0))
    }

    /// The flags as given, for messages (`--unit x.service --cgroup /a`).
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        for (flag, list) in [
            ("--cgroup", &self.cgroup),
            ("--container", &self.container),
            ("--unit", &self.unit),
        ] {
            for v in list {
                out.push(format!("{flag} {}", tcptrace_core::output::escape(v)));
            }
        }
        out.join(" ")
    }
}

impl FilterArgs {
    /// The live commands' workload and netns filters, validated (a
    /// malformed value: exit 2, one line).
    pub fn workloads(&self) -> Result<crate::workloads::WorkloadOptions, UsageError> {
        self.workload
            .options(&self.netns, self.workload_roots.clone())
    }
}

impl WorkloadFilterArgs {
    /// These flags and `--netns` values as a live run's workload options,
    /// validated (a malformed value: exit 2, one line).
    pub fn options(
        &self,
        netns_values: &[String],
        roots: Option<std::path::PathBuf>,
    ) -> Result<crate::workloads::WorkloadOptions, UsageError> {
        let filter = self.to_filter()?;
        let (netns, netns_missing) = crate::workloads::parse_netns(netns_values).map_err(usage)?;
        let mut described = self.describe();
        for n in netns_values {
            if !described.is_empty() {
                described.push(' ');
            }
            described.push_str(&format!("--netns {}", tcptrace_core::output::escape(n)));
        }
        Ok(crate::workloads::WorkloadOptions {
            filter,
            netns,
            netns_missing,
            described,
            roots,
        })
    }
}

/// `--stacks` (top, stats, watch, record, doctor).
#[derive(Debug, Args, Clone)]
pub struct StackArgs {
    /// Name the code that opened each connection: the user stack at
    /// connect(), accept() and listen(), symbolized (needs frame pointers:
    /// README, "Stacks").
    #[arg(long)]
    pub stacks: bool,
    /// With --stacks: distinct stacks the kernel keeps (power of two,
    /// 64 to 32768; about 1 KiB each).
    #[arg(long, value_name = "N", default_value_t = crate::ebpf::DEFAULT_STACK_ENTRIES)]
    pub stack_map_size: u32,
}

/// What `--stacks` with `--from` says: the stacks of a recording are the
/// ones it was made with.
const STACKS_LIVE_ONLY: &str =
    "--stacks applies when tracing live: a recording shows the stacks it was made with";

impl StackArgs {
    /// `--stack-map-size` checked (also without `--stacks`: a typo is
    /// reported either way).
    fn check(&self) -> Result<(), UsageError> {
        let n = u64::from(self.stack_map_size);
        if !n.is_power_of_two() || !(STACK_MAP.0..=STACK_MAP.1).contains(&n) {
            return Err(usage(format!(
                "--stack-map-size {n} is out of range: give a power of two from {} to {}",
                STACK_MAP.0, STACK_MAP.1
            )));
        }
        if !self.stacks && self.stack_map_size != crate::ebpf::DEFAULT_STACK_ENTRIES {
            return Err(usage(format!(
                "--stack-map-size {n} sizes the map of --stacks: add --stacks"
            )));
        }
        Ok(())
    }
}

impl LoadOptions {
    /// `--stacks` and its map size into the load options.
    pub fn with_stacks(mut self, stacks: &StackArgs) -> Result<Self, UsageError> {
        stacks.check()?;
        self.stacks = stacks.stacks;
        self.stack_entries = stacks.stack_map_size;
        Ok(self)
    }
}

/// Kernel-side knobs shared by live commands.
#[derive(Debug, Args, Clone)]
pub struct KernelArgs {
    /// Which hook carries inet_sock_set_state.
    #[arg(long, value_enum, default_value = "auto")]
    pub hook: HookChoice,
    /// How TIME_WAIT is observed: fentry where it loads, else the timer
    /// tracepoints (tp_btf where it loads, else classic).
    #[arg(long, value_enum, default_value = "auto")]
    pub timewait_hook: TimewaitChoice,
    /// Ring buffer size in MiB (power of two).
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub ring_size: u32,
    /// Capacity of the in-kernel socket owner map (LRU).
    #[arg(long, value_name = "N", default_value_t = 1 << 18)]
    pub owner_map_size: u32,
    /// Drain the ring buffer at normal priority instead of SCHED_RR 1 (events
    /// may then be lost when the host's CPUs are saturated).
    #[arg(long)]
    pub no_realtime: bool,
    /// Benchmarks only (`cargo xtask bench`'s limit): attach programs that
    /// return at once to the same hooks instead of the real ones.
    #[arg(long, hide = true)]
    pub bench_empty_programs: bool,
    /// Do not attach skb:kfree_skb: no connection attempts reported with the
    /// kernel's drop reason (per-listener drop counts still come from
    /// sock_diag and the namespace's counters).
    #[arg(long)]
    pub no_drop_reasons: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// One JSON object per line (schema in the README).
    #[arg(long)]
    pub json: bool,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// A command-line mistake: exit code 2, one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

#[derive(Clone, Debug)]
pub struct TraceConfig {
    pub load: LoadOptions,
    pub user_filter: tcptrace_core::filter::UserFilter,
    pub json: bool,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
}

fn ports(list: &[u16], flag: &str) -> Result<([u16; MAX_FILTER_PORTS], u32), UsageError> {
    if list.len() > MAX_FILTER_PORTS {
        return Err(usage(format!(
            "too many --{flag} values ({}): at most {MAX_FILTER_PORTS}",
            list.len()
        )));
    }
    let mut out = [0u16; MAX_FILTER_PORTS];
    out[..list.len()].copy_from_slice(list);
    Ok((out, list.len() as u32))
}

impl FilterArgs {
    pub fn to_filter(&self) -> Result<Filter, UsageError> {
        let mut f = Filter::default();
        (f.ports, f.n_ports) = ports(&self.port, "port")?;
        (f.lports, f.n_lports) = ports(&self.lport, "lport")?;
        (f.rports, f.n_rports) = ports(&self.rport, "rport")?;
        if let Some(pid) = self.pid {
            if pid == 0 {
                return Err(usage("--pid 0 matches nothing: give a process id"));
            }
            f.tgid = pid;
        }
        if let Some(comm) = &self.comm {
            if comm.is_empty() {
                return Err(usage("--comm needs a process name"));
            }
            f.comm = Comm::from_name(comm).0;
            f.comm_set = 1;
        }
        for s in &self.state {
            let st = TcpState::parse(s).ok_or_else(|| {
                usage(format!(
                    "unknown state '{s}': use one of {}",
                    TcpState::ALL.map(|s| s.name()).join(", ")
                ))
            })?;
            f.state_mask |= 1 << st as u32;
        }
        if self.ipv4 != self.ipv6 {
            f.family_mask = if self.ipv4 {
                Filter::FAMILY_INET
            } else {
                Filter::FAMILY_INET6
            };
        }
        Ok(f)
    }
}

impl KernelArgs {
    /// `filter` is the user's; the kernel gets
    /// [`tcptrace_core::filter::UserFilter::kernel_filter`] of it.
    pub fn to_load_options(&self, filter: Filter) -> Result<LoadOptions, UsageError> {
        let filter = tcptrace_core::filter::UserFilter(filter).kernel_filter();
        if self.ring_size == 0 || !self.ring_size.is_power_of_two() || self.ring_size > 1024 {
            return Err(usage(format!(
                "--ring-size {} is not a power of two between 1 and 1024 (MiB)",
                self.ring_size
            )));
        }
        bounded(
            "--owner-map-size",
            u64::from(self.owner_map_size),
            OWNER_MAP,
        )?;
        Ok(LoadOptions {
            filter,
            ring_bytes: self.ring_size << 20,
            owner_entries: self.owner_map_size,
            hook: self.hook,
            timewait: self.timewait_hook,
            realtime_drain: !self.no_realtime,
            empty_programs: self.bench_empty_programs,
            drop_reasons: !self.no_drop_reasons,
            ..LoadOptions::default()
        })
    }
}

fn duration(secs: Option<f64>) -> Result<Option<Duration>, UsageError> {
    secs.map(|s| seconds("--duration", s, DURATION_SECS, ""))
        .transpose()
}

impl TraceArgs {
    pub fn validate(&self) -> Result<TraceConfig, UsageError> {
        let filter = self.filter.to_filter()?;
        if self.count == Some(0) {
            return Err(usage(
                "--count 0 would print nothing: give a positive count",
            ));
        }
        Ok(TraceConfig {
            load: self
                .kernel
                .to_load_options(filter)?
                .with_workloads(self.filter.workloads()?),
            user_filter: tcptrace_core::filter::UserFilter(filter),
            json: self.json,
            duration: duration(self.duration)?,
            count: self.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(args: &[&str]) -> Result<TraceConfig, UsageError> {
        let mut full = vec!["tcptrace", "trace"];
        full.extend_from_slice(args);
        let Command::Trace(t) = Cli::try_parse_from(full).expect("parses").command else {
            panic!("trace subcommand");
        };
        t.validate()
    }

    #[test]
    fn filters_become_kernel_filter() {
        let c = trace(&[
            "--port",
            "80",
            "--port",
            "443",
            "--lport",
            "8080",
            "--state",
            "close-wait",
            "-4",
            "--comm",
            "a-very-long-process-name",
        ])
        .unwrap();
        let f = c.load.filter;
        assert_eq!((f.n_ports, f.ports[0], f.ports[1]), (2, 80, 443));
        assert_eq!((f.n_lports, f.lports[0]), (1, 8080));
        assert_eq!(f.state_mask, 1 << 8);
        assert_eq!(f.family_mask, Filter::FAMILY_INET);
        assert_eq!(&f.comm[..15], b"a-very-long-pro");
        assert_eq!(f.comm[15], 0);
    }

    #[test]
    fn both_families_means_no_family_filter() {
        assert_eq!(trace(&["-4", "-6"]).unwrap().load.filter.family_mask, 0);
    }

    fn report(args: &[&str]) -> Result<ReportConfig, UsageError> {
        let mut full = vec!["tcptrace", "report", "f.tcptrace"];
        full.extend_from_slice(args);
        let Command::Report(r) = Cli::try_parse_from(full).expect("parses").command else {
            panic!("report subcommand");
        };
        r.validate()
    }

    #[test]
    fn report_times_are_offsets_times_of_day_or_rfc3339() {
        use tcptrace_core::report::TimeSpec::*;
        const S: u64 = 1_000_000_000;
        let at = |t: &str| report(&["--at", t]).map(|c| c.options.at.unwrap().spec);
        assert_eq!(at("90").unwrap(), Offset(90 * S));
        assert_eq!(at("90s").unwrap(), Offset(90 * S));
        assert_eq!(at("1m30s").unwrap(), Offset(90 * S));
        assert_eq!(at("+5s").unwrap(), Offset(5 * S));
        assert_eq!(at("2.5").unwrap(), Offset(2_500_000_000));
        assert_eq!(at("500ms").unwrap(), Offset(S / 2));
        assert_eq!(
            at("16:05:03").unwrap(),
            TimeOfDay((16 * 3600 + 5 * 60 + 3) * S)
        );
        assert_eq!(
            at("16:05:03.250").unwrap(),
            TimeOfDay((16 * 3600 + 5 * 60 + 3) * S + 250_000_000)
        );
        let wall: jiff::Timestamp = "2026-12-01T16:05:03Z".parse().unwrap();
        assert_eq!(
            at("2026-12-01T16:05:03Z").unwrap(),
            Wall(wall.as_nanosecond() as u64)
        );
        assert_eq!(
            at("2026-12-01T17:05:03+01:00").unwrap(),
            Wall(wall.as_nanosecond() as u64)
        );
        for bad in [
            "-5s",
            "yesterday",
            "25:00:00",
            "2026-12-01T16:05:03",
            "1x",
            "",
        ] {
            let e = at(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--at '{bad}' is not a time: give an offset")),
                "{e}"
            );
            assert!(e.contains("16:05:03.250") && e.contains("RFC 3339"), "{e}");
            assert_eq!(e.lines().count(), 1);
        }
        let c = report(&[
            "--from", "10s", "--to", "16:05:09", "--step", "1m30s", "--json",
        ])
        .unwrap();
        assert_eq!(c.format, ReportFormat::Json);
        assert_eq!(c.options.from.unwrap().spec, Offset(10 * S));
        assert_eq!(c.options.step_ns, Some(90 * S));
        assert_eq!(
            report(&["--step", "10"]).unwrap().options.step_ns,
            Some(10 * S)
        );
        assert!(report(&["--step", "0s"]).is_err());
        assert!(
            report(&["--step", "1us"])
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
        assert!(
            report(&["--step", "soon"])
                .unwrap_err()
                .to_string()
                .contains("not a duration")
        );
        // --at is a moment, not a window.
        assert!(
            Cli::try_parse_from(["tcptrace", "report", "f", "--at", "1", "--from", "0"]).is_err()
        );
        assert_eq!(report(&[]).unwrap().format, ReportFormat::Text);
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        let e = trace(&["--state", "BOGUS"]).unwrap_err().to_string();
        assert!(
            e.contains("unknown state 'BOGUS'") && e.contains("CLOSE_WAIT"),
            "{e}"
        );
        assert!(trace(&["--duration=-1"]).is_err());
        assert!(trace(&["--count", "0"]).is_err());
        assert!(trace(&["--ring-size", "3"]).is_err());
        let nine: Vec<&str> = (0..9).flat_map(|_| ["--port", "1"]).collect();
        assert!(trace(&nine).unwrap_err().to_string().contains("at most 8"));
    }

    #[test]
    fn stacks_set_the_load_options_and_are_checked() {
        let parse = |args: &[&str]| {
            let mut full = vec!["tcptrace"];
            full.extend_from_slice(args);
            Cli::try_parse_from(full).expect("parses").command
        };
        let Command::Stats(s) = parse(&["stats", "--stacks", "--stack-map-size", "1024"]) else {
            panic!("stats")
        };
        let load = s.validate().unwrap().load;
        assert!(load.stacks);
        assert_eq!(load.stack_entries, 1024);
        let Command::Stats(s) = parse(&["stats"]) else {
            panic!("stats")
        };
        let load = s.validate().unwrap().load;
        assert!(!load.stacks);
        assert_eq!(load.stack_entries, crate::ebpf::DEFAULT_STACK_ENTRIES);
        for bad in ["100", "32", "65536", "0"] {
            let Command::Stats(r) = parse(&["stats", "--stacks", "--stack-map-size", bad]) else {
                panic!("stats")
            };
            let e = r.validate().unwrap_err().to_string();
            assert!(
                e.contains("--stack-map-size") && e.contains("out of range"),
                "{e}"
            );
        }
        let Command::Top(t) = parse(&["top", "--from", "x.tcptrace", "--stacks"]) else {
            panic!("top")
        };
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("--stacks applies when tracing live"), "{e}");
        let Command::Doctor(d) = parse(&["doctor", "--from", "x.tcptrace", "--stacks"]) else {
            panic!("doctor")
        };
        assert!(d.validate().is_err());
        let Command::Watch(w) = parse(&["watch", "--stacks"]) else {
            panic!("watch")
        };
        assert!(w.validate().unwrap().load.stacks);
        let Command::Doctor(d) = parse(&["doctor", "--stacks"]) else {
            panic!("doctor")
        };
        assert!(d.validate().unwrap().load.stacks);
    }

    /// Drop reasons are on unless `--no-drop-reasons`, on every live command.
    #[test]
    fn no_drop_reasons_turns_the_kfree_skb_hook_off() {
        let parse = |args: &[&str]| {
            let mut full = vec!["tcptrace"];
            full.extend_from_slice(args);
            Cli::try_parse_from(full).expect("parses").command
        };
        let load = |args: &[&str]| match parse(args) {
            Command::Stats(s) => s.validate().unwrap().load,
            Command::Trace(t) => t.validate().unwrap().load,
            Command::Top(t) => t.validate().unwrap().load,
            Command::Watch(w) => w.validate().unwrap().load,
            Command::Record(r) => r.validate().unwrap().load,
            Command::Doctor(d) => d.validate().unwrap().load,
            _ => panic!("not a live command"),
        };
        for cmd in ["stats", "trace", "top", "watch", "doctor"] {
            assert!(load(&[cmd]).drop_reasons, "{cmd}");
            assert!(!load(&[cmd, "--no-drop-reasons"]).drop_reasons, "{cmd}");
        }
        assert!(load(&["record", "--force", "-o", "/tmp/x.tcptrace"]).drop_reasons);
        assert!(
            !load(&[
                "record",
                "--force",
                "-o",
                "/tmp/x.tcptrace",
                "--no-drop-reasons"
            ])
            .drop_reasons
        );
    }
}
