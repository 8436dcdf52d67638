//! `cargo xtask setup`: install the build and test prerequisites.
//!
//! The eBPF half of tcptrace is built by aya-build with `cargo +nightly
//! -Z build-std`, which needs nightly's `rust-src` and a `bpf-linker` linked
//! against the *same* LLVM as that nightly; loading the programs needs
//! tracefs; the tests compare against `tcpstates`, `ss` and `ip` and drive
//! `tmux`, and check the shipped Prometheus rules with `promtool`; the
//! benchmark reads programs' costs with `bpftool`. Every step
//! checks first and only acts when needed, so this is safe to run (and is
//! run by `test` and `run`) every time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::util::{self, say};

/// Options for `cargo xtask setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Do not check or install the Debian packages (libbpf-tools, tmux,
    /// iproute2, nginx-light, bpftool, prometheus).
    #[arg(long)]
    no_apt: bool,
}

/// Debian packages the tests and benchmarks use as oracles/drivers
/// (nginx: a real server that closes first, started by the tests on a
/// loopback port of their own namespace; bpftool: the live benchmark reads
/// each program's bpf_stats with it; prometheus: its `promtool` checks and
/// unit-tests the shipped alerting rules, and the tests start their own
/// server on a loopback port when they need one; gcc and golang-go: the
/// stack tests build their leaking services, in C and in Go, with them).
const APT_PACKAGES: &[&str] = &[
    "libbpf-tools",
    "tmux",
    "iproute2",
    "nginx-light",
    "bpftool",
    "prometheus",
    "gcc",
    "golang-go",
];

/// Installed without their Recommends: prometheus's would bring
/// prometheus-node-exporter (another service, on :9100), smartmontools,
/// ipmitool, nvme-cli... none of which a test uses.
const NO_RECOMMENDS: &[&str] = &["prometheus"];

/// Packages whose distro service must not stay enabled once installed:
/// the tests run their own instance, and Debian's prometheus would hold
/// :9090 and scrape on its own from the next boot on.
const NO_SERVICE: &[&str] = &["prometheus"];

/// Debian's way to keep maintainer scripts from starting services: the
/// tests start nginx themselves; installing it must not start one on :80.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

const TRACEFS: &str = "/sys/kernel/tracing";

pub fn main(args: &SetupArgs) -> Result<()> {
    let pending = setup(false, !args.no_apt)?;
    if pending > 0 {
        bail!(
            "{pending} item(s) need root; run the `todo:` commands above, then `cargo xtask setup` again"
        );
    }
    Ok(())
}

/// Bring the machine up to date; used by `test` and `run` before they build.
///
/// With `quiet`, items that are already fine are not reported. Items that
/// need root while we are not root are reported as `todo:` lines but are not
/// an error here (the user may not need them for what they are doing).
pub fn ensure(quiet: bool) -> Result<()> {
    setup(quiet, true).map(|_| ())
}

/// Prints one status line per item; returns how many items are left to do.
fn setup(quiet: bool, apt: bool) -> Result<usize> {
    let mut report = Report { quiet, pending: 0 };
    if !util::ensure_cargo_bin_on_path() {
        report.warn(format!(
            "{} is not on PATH; using it for this run, add it to PATH in your shell profile",
            util::cargo_bin_dir().display()
        ));
    }
    rust_src(&mut report)?;
    bpf_linker(&mut report)?;
    tracefs(&mut report)?;
    if apt {
        apt_packages(&mut report)?;
    } else {
        report.skipped("Debian packages not checked (--no-apt)");
    }
    Ok(report.pending)
}

struct Report {
    quiet: bool,
    pending: usize,
}

impl Report {
    fn ok(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            say(format!("ok: {}", msg.as_ref()));
        }
    }
    fn skipped(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            say(format!("skipped: {}", msg.as_ref()));
        }
    }
    fn installed(&self, msg: impl AsRef<str>) {
        say(format!("installed: {}", msg.as_ref()));
    }
    fn warn(&self, msg: impl AsRef<str>) {
        say(format!("warning: {}", msg.as_ref()));
    }
    fn todo(&mut self, msg: impl AsRef<str>) {
        self.pending += 1;
        say(format!("todo: {}", msg.as_ref()));
    }
}

// ---------------------------------------------------------------- rust-src

fn rust_src(report: &mut Report) -> Result<()> {
    let list = || {
        let mut cmd = Command::new("rustup");
        cmd.args(["component", "list", "--toolchain", "nightly", "--installed"]);
        cmd
    };
    let out = util::capture(&mut list())
        .context("rustup is required; install it from https://rustup.rs")?;
    let components = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        // The only usual reason for this to fail is a missing toolchain.
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        report.installed("nightly toolchain (minimal profile)");
        util::stdout_of(&mut list())?
    };
    if components.lines().any(|line| line.trim() == "rust-src") {
        report.ok("rust-src already installed for nightly");
    } else {
        util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        report.installed("rust-src for nightly");
    }
    Ok(())
}

// -------------------------------------------------------------- bpf-linker

/// The LLVM shared library shipped with the nightly toolchain.
struct NightlyLlvm {
    /// `<nightly sysroot>/lib`.
    lib_dir: PathBuf,
    /// `-l dylib=` name, e.g. `LLVM-22-rust-1.97.0-nightly`.
    dylib: String,
    /// LLVM major version, e.g. 22 (selects bpf-linker's `llvm-22` feature).
    major: u32,
    /// File names a correctly linked bpf-linker may show in `ldd`: the
    /// `lib<dylib>.so` itself and, when that is a linker script
    /// (`INPUT(libLLVM.so.22.1-rust-…)`, as in recent nightlies), its target.
    sonames: Vec<String>,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let sysroot = util::stdout_of(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = Path::new(&sysroot).join("lib");
    let mut names: Vec<String> = fs::read_dir(&lib_dir)
        .with_context(|| {
            format!(
                "cannot read {}; reinstall nightly: rustup toolchain install nightly --force",
                lib_dir.display()
            )
        })?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("libLLVM"))
        .collect();
    names.sort();

    // Prefer `libLLVM-<major>-rust-*.so`, else any `libLLVM*.so`.
    let file = names
        .iter()
        .find(|n| n.starts_with("libLLVM-") && n.contains("-rust-") && n.ends_with(".so"))
        .or_else(|| names.iter().find(|n| n.ends_with(".so")))
        .with_context(|| {
            format!(
                "no libLLVM*.so in {}; reinstall nightly: rustup toolchain install nightly --force",
                lib_dir.display()
            )
        })?
        .clone();
    let dylib = file
        .strip_prefix("lib")
        .and_then(|n| n.strip_suffix(".so"))
        .unwrap_or(&file)
        .to_owned();
    let major = dylib
        .trim_start_matches("LLVM")
        .trim_start_matches(['-', '.', 's', 'o'])
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|digits| digits.parse().ok())
        .with_context(|| {
            format!("cannot tell the LLVM major version from {file}; set up bpf-linker by hand")
        })?;

    let mut sonames = vec![file.clone()];
    if let Some(target) = linker_script_input(&lib_dir.join(&file)) {
        sonames.push(target);
    }
    Ok(NightlyLlvm {
        lib_dir,
        dylib,
        major,
        sonames,
    })
}

/// If `path` is a small GNU ld script `INPUT(name)`, return `name`.
fn linker_script_input(path: &Path) -> Option<String> {
    if fs::metadata(path).ok()?.len() > 4096 {
        return None;
    }
    let text = fs::read_to_string(path).ok()?;
    let inner = text.trim().strip_prefix("INPUT(")?.strip_suffix(')')?;
    let name = inner.split_whitespace().next()?;
    Some(Path::new(name).file_name()?.to_string_lossy().into_owned())
}

/// Why the installed bpf-linker is unusable, or `None` if it is fine.
fn bpf_linker_problem(llvm: &NightlyLlvm) -> Result<Option<String>> {
    let Some(path) = util::find_in_path("bpf-linker") else {
        return Ok(Some("not installed".into()));
    };
    let runs = Command::new(&path)
        .arg("--version")
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if !runs {
        return Ok(Some(format!("`{} --version` fails", path.display())));
    }
    let out = util::capture(Command::new("ldd").arg(&path))
        .context("ldd is required to check bpf-linker; install it: apt-get install libc-bin")?;
    let ldd = String::from_utf8_lossy(&out.stdout);
    if ldd.contains("not found") {
        return Ok(Some("it has unresolved shared libraries".into()));
    }
    if !llvm.sonames.iter().any(|name| ldd.contains(name.as_str())) {
        return Ok(Some(format!(
            "it is not linked against nightly's {}",
            llvm.sonames.join(" / ")
        )));
    }
    Ok(None)
}

fn bpf_linker(report: &mut Report) -> Result<()> {
    let llvm = nightly_llvm()?;
    let Some(reason) = bpf_linker_problem(&llvm)? else {
        report.ok(format!(
            "bpf-linker already installed and linked against {}",
            llvm.dylib
        ));
        return Ok(());
    };
    say(format!(
        "bpf-linker: {reason}; building it against {}",
        llvm.dylib
    ));
    let nl = llvm.lib_dir.display();
    let feature = format!("llvm-{},no-llvm-linking", llvm.major);
    util::run(
        Command::new("cargo")
            .env(
                "RUSTFLAGS",
                format!(
                    "-L {nl} -C link-arg=-Wl,-rpath,{nl} -l dylib={}",
                    llvm.dylib
                ),
            )
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                &feature,
                "--force",
            ]),
    )?;
    if let Some(reason) = bpf_linker_problem(&llvm)? {
        bail!(
            "bpf-linker is still unusable after installing ({reason}); check that {} comes first on PATH",
            util::cargo_bin_dir().display()
        );
    }
    report.installed(format!(
        "bpf-linker (feature llvm-{}, linked against {})",
        llvm.major, llvm.dylib
    ));
    Ok(())
}

// ----------------------------------------------------------------- tracefs

fn tracefs_mounted() -> bool {
    // Non-root users usually cannot look inside /sys/kernel/tracing, so also
    // consult the mount table.
    Path::new(TRACEFS).join("events").exists()
        || fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
            mounts.lines().any(|line| {
                let mut fields = line.split_whitespace();
                let _source = fields.next();
                fields.next() == Some(TRACEFS) && fields.next() == Some("tracefs")
            })
        })
}

fn tracefs(report: &mut Report) -> Result<()> {
    if tracefs_mounted() {
        report.ok(format!("tracefs already mounted at {TRACEFS}"));
    } else if util::is_root() {
        util::run(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))?;
        report.installed(format!("tracefs mounted at {TRACEFS}"));
    } else {
        report.todo(format!(
            "tracefs is not mounted; run: sudo mount -t tracefs tracefs {TRACEFS}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------- apt packages

fn apt_packages(report: &mut Report) -> Result<()> {
    if util::find_in_path("dpkg-query").is_none() {
        report.warn(format!(
            "dpkg-query not found (not Debian?); install {} with your package manager",
            APT_PACKAGES.join(" ")
        ));
        return Ok(());
    }
    let mut missing = Vec::new();
    for &pkg in APT_PACKAGES {
        let out = util::capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))?;
        if out.status.success()
            && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed"
        {
            report.ok(format!("{pkg} already installed"));
        } else {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        report.todo(format!(
            "missing Debian packages; run: sudo apt-get update && sudo apt-get install -y {}",
            missing.join(" ")
        ));
        return Ok(());
    }
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    // Only ours to remove if it was not there.
    let guard = !std::path::Path::new(POLICY_RC_D).exists();
    if guard {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# tcptrace setup: no service starts during install\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
    }
    let (bare, usual): (Vec<&str>, Vec<&str>) =
        missing.iter().partition(|pkg| NO_RECOMMENDS.contains(pkg));
    let install = |pkgs: &[&str], extra: &[&str]| {
        if pkgs.is_empty() {
            return Ok(());
        }
        util::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq"])
                .args(extra)
                .args(pkgs),
        )
    };
    let installed =
        install(&usual, &[]).and_then(|()| install(&bare, &["--no-install-recommends"]));
    if guard {
        let _ = std::fs::remove_file(POLICY_RC_D);
    }
    installed?;
    for pkg in &missing {
        report.installed(pkg);
    }
    // policy-rc.d kept them from starting, but the package enabled them for
    // the next boot; under systemd, disable them (and stop any that started
    // because the policy file was someone else's). Without systemd nothing
    // starts them.
    let systemd = Path::new("/run/systemd/system").is_dir();
    for &service in NO_SERVICE.iter().filter(|s| missing.contains(s)) {
        if systemd {
            util::run(Command::new("systemctl").args(["disable", "--now", service]))?;
            report.installed(format!("{service}: its service disabled and stopped"));
        } else {
            report.ok(format!(
                "{service}: installed with its service not started; no systemd here to start it at boot"
            ));
        }
    }
    Ok(())
}
