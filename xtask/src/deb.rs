//! `cargo xtask deb`: build the Debian package with cargo-deb.
//!
//! cargo-deb packages what `[package.metadata.deb]` in tcptrace/Cargo.toml
//! lists, but cannot run the built binary to make the man page and the
//! completions; this task installs a pinned cargo-deb, builds, generates those
//! files where the metadata expects them and runs `cargo deb`. With
//! `--install-test` it then installs the package with dpkg, checks every file
//! and that the installed binary runs, and purges it again, so CI proves the
//! .deb works rather than just that it was written.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::install;
use crate::util::{self, say};

/// Options for `cargo xtask deb`.
#[derive(Debug, Args)]
pub struct DebArgs {
    /// Then install the package (dpkg -i), check what it installed and that it
    /// runs, and purge it again; fails on any problem. Needs root.
    #[arg(long)]
    pub install_test: bool,
}

/// cargo-deb release known to build with our toolchain and to understand the
/// metadata (3.x: `systemd-units`, `target/release/` assets, `$auto`).
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Debian package name (= crate name).
const PACKAGE: &str = "tcptrace";

/// `tcptrace generate` kind -> file name in `<target>/release/packaging/`
/// (the `assets` of `[package.metadata.deb]` name these files).
const GENERATED: &[(&str, &str)] = &[
    ("man", "tcptrace.1"),
    ("complete-bash", "tcptrace.bash"),
    ("complete-zsh", "_tcptrace"),
    ("complete-fish", "tcptrace.fish"),
];

/// What the package must install; `--install-test` checks each one.
const EXPECTED_FILES: &[&str] = &[
    "/usr/bin/tcptrace",
    "/usr/share/man/man1/tcptrace.1.gz",
    "/usr/share/bash-completion/completions/tcptrace",
    "/usr/share/zsh/vendor-completions/_tcptrace",
    "/usr/share/fish/vendor_completions.d/tcptrace.fish",
    "/usr/lib/systemd/system/tcptrace-watch.service",
    "/etc/tcptrace/watch.toml",
    "/usr/share/doc/tcptrace/README.md",
    "/usr/share/doc/tcptrace/copyright",
];
const CONFFILE: &str = "/etc/tcptrace/watch.toml";

pub fn main(args: &DebArgs) -> Result<()> {
    if args.install_test && !util::is_root() {
        bail!(
            "--install-test runs dpkg -i / dpkg --purge and needs root: sudo -E cargo xtask deb --install-test"
        );
    }
    ensure_tools()?;
    let binary = install::build_release()?;

    let dir = util::target_dir().join("release/packaging");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for &(kind, name) in GENERATED {
        let path = dir.join(name);
        fs::write(&path, install::generate(&binary, kind)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    // cargo-deb only gzips man pages it did not find under target/; Debian
    // wants them compressed. -n: no name/time stamp, so builds are repeatable.
    util::run(
        Command::new("gzip")
            .args(["-9", "-n", "-f"])
            .arg(dir.join("tcptrace.1")),
    )?;

    let mut cmd = util::cargo();
    cmd.args(["deb", "-p", PACKAGE, "--no-build"]);
    say(format!("+ {}", util::display(&cmd)));
    // cargo-deb prints the .deb path on stdout, its progress on stderr.
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("could not start `cargo deb`")?;
    if !out.status.success() {
        bail!("`cargo deb` failed ({}); see its output above", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .map(str::trim)
        .rfind(|line| line.ends_with(".deb"))
        .map(PathBuf::from)
        .filter(|path| path.is_file())
        .with_context(|| format!("cargo deb did not report a .deb file: {stdout}"))?;
    say(format!("built: {}", deb.display()));
    // The path alone on stdout, for `dpkg -i "$(cargo xtask deb)"`.
    println!("{}", deb.display());

    if args.install_test {
        install_test(&deb, &binary)?;
    }
    Ok(())
}

/// cargo-deb (pinned) and dpkg-shlibdeps (for `depends = "$auto"`).
fn ensure_tools() -> Result<()> {
    util::ensure_cargo_bin_on_path();
    let version = util::capture(util::cargo().args(["deb", "--version"]))?;
    if version.status.success() {
        say(format!(
            "ok: {} already installed",
            String::from_utf8_lossy(&version.stdout).trim()
        ));
    } else {
        util::run(util::cargo().args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            &format!("={CARGO_DEB_VERSION}"),
        ]))?;
        say(format!("installed: cargo-deb {CARGO_DEB_VERSION}"));
    }
    if util::find_in_path("dpkg-shlibdeps").is_none() {
        if !util::is_root() {
            bail!("dpkg-shlibdeps is missing; run: sudo apt-get install -y dpkg-dev");
        }
        util::run(Command::new("apt-get").args(["update", "-qq"]))?;
        util::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "dpkg-dev"]),
        )?;
        say("installed: dpkg-dev (dpkg-shlibdeps)");
    }
    Ok(())
}

/// Whether dpkg has the package installed (not merely known or config-files).
fn package_installed() -> Result<bool> {
    let out = util::capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", PACKAGE]))?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).ends_with(" installed"))
}

/// `dpkg -i`, check, `dpkg --purge`; the purge runs even when a check fails.
fn install_test(deb: &Path, binary: &Path) -> Result<()> {
    say("==> install test");
    if package_installed()? {
        bail!(
            "the {PACKAGE} package is installed already; --install-test would replace and then purge it: run `dpkg -r {PACKAGE}` first"
        );
    }
    // Purging removes the conffile; put back a file that was there before
    // (e.g. from `cargo xtask install`).
    let saved_config = fs::read(CONFFILE).ok();

    let mut dpkg = Command::new("dpkg");
    dpkg.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["--force-confdef", "--force-confold", "-i"])
        .arg(deb)
        .stdin(Stdio::null());
    let installed = util::run(&mut dpkg);
    let checked = installed.and_then(|()| check_installed(binary));
    let purged = util::run(Command::new("dpkg").args(["--purge", PACKAGE]));
    if let Some(text) = saved_config {
        let restored = fs::create_dir_all("/etc/tcptrace")
            .and_then(|()| fs::write(CONFFILE, text))
            .and_then(|()| fs::set_permissions(CONFFILE, fs::Permissions::from_mode(0o644)));
        match restored {
            Ok(()) => say(format!("restored: {CONFFILE} (it existed before the test)")),
            Err(err) => say(format!("warning: could not restore {CONFFILE}: {err}")),
        }
    }
    checked?;
    purged?;
    if package_installed()? || Path::new("/usr/bin/tcptrace").exists() {
        bail!("{PACKAGE} is still installed after `dpkg --purge {PACKAGE}`");
    }
    say("==> install test passed (installed, checked, purged)");
    Ok(())
}

/// Every check of the installed package; all run, failures are listed together.
fn check_installed(binary: &Path) -> Result<()> {
    let mut failures: Vec<String> = Vec::new();
    let mut check = |what: &str, result: Result<()>| match result {
        Ok(()) => say(format!("ok: {what}")),
        Err(err) => {
            say(format!("FAILED: {what}: {err:#}"));
            failures.push(format!("{what}: {err:#}"));
        }
    };

    let listed = util::stdout_of(Command::new("dpkg").args(["-L", PACKAGE]))?;
    for &file in EXPECTED_FILES {
        check(
            &format!("{file} is in the package and on disk"),
            if !listed.lines().any(|line| line == file) {
                Err(anyhow::anyhow!("not listed by dpkg -L {PACKAGE}"))
            } else if !Path::new(file).is_file() {
                Err(anyhow::anyhow!("missing on disk"))
            } else {
                Ok(())
            },
        );
    }

    check(
        "/usr/bin/tcptrace --version matches the build",
        same_version(binary),
    );
    check(&format!("{CONFFILE} is a conffile"), is_conffile());
    if util::find_in_path("man").is_some() {
        check("man -a -w tcptrace finds the page", man_finds_page());
    } else {
        say("skipped: man -w (man-db is not installed)");
    }
    check("the bash completion loads", bash_completion_loads());
    check("the unit runs /usr/bin/tcptrace watch", unit_is_valid());
    check("tcptrace watch runs with the shipped config", watch_runs());

    if !failures.is_empty() {
        bail!(
            "{} install check(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

fn same_version(binary: &Path) -> Result<()> {
    let want = util::stdout_of(Command::new(binary).arg("--version"))?;
    let got = util::stdout_of(Command::new("/usr/bin/tcptrace").arg("--version"))?;
    if got != want {
        bail!("got `{got}`, built `{want}`");
    }
    Ok(())
}

fn is_conffile() -> Result<()> {
    let conffiles =
        util::stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]))?;
    if !conffiles
        .lines()
        .any(|line| line.split_whitespace().next() == Some(CONFFILE))
    {
        bail!("dpkg-query lists: {conffiles:?}");
    }
    Ok(())
}

fn man_finds_page() -> Result<()> {
    // -a: a `cargo xtask install` copy in /usr/local may come first.
    let pages = util::stdout_of(Command::new("man").args(["-a", "-w", "tcptrace"]))?;
    if !pages
        .lines()
        .any(|page| page == "/usr/share/man/man1/tcptrace.1.gz")
    {
        bail!("it finds only {pages:?}");
    }
    Ok(())
}

fn bash_completion_loads() -> Result<()> {
    util::stdout_of(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/tcptrace && complete -p tcptrace",
    ]))
    .map(drop)
}

fn unit_is_valid() -> Result<()> {
    let unit = "/usr/lib/systemd/system/tcptrace-watch.service";
    let text = fs::read_to_string(unit)?;
    if !text
        .lines()
        .any(|line| line.starts_with("ExecStart=/usr/bin/tcptrace watch "))
    {
        bail!("no `ExecStart=/usr/bin/tcptrace watch ...` line");
    }
    if util::find_in_path("systemd-analyze").is_some() {
        util::stdout_of(Command::new("systemd-analyze").args(["verify", unit]))?;
    }
    Ok(())
}

/// The installed binary loads its eBPF programs with the shipped config.
fn watch_runs() -> Result<()> {
    util::stdout_of(Command::new("/usr/bin/tcptrace").args([
        "watch",
        "--config",
        CONFFILE,
        "--duration",
        "1",
    ]))
    .map(drop)
}
