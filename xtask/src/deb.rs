//! `cargo xtask deb`: build the Debian package with cargo-deb.
//!
//! cargo-deb packages what `[package.metadata.deb]` in tcptrace/Cargo.toml
//! lists, but cannot run the built binary to make the man page and the
//! completions; this task installs a pinned cargo-deb, builds, generates those
//! files where the metadata expects them and runs `cargo deb`. With
//! `--install-test` it then installs the package with dpkg, checks every file
//! and that the installed binary runs, and purges it again, so CI proves the
//! .deb works rather than just that it was written.
//!
//! The package is `tcptrace-ebpf`, not `tcptrace`: Debian already has a
//! `tcptrace` (6.6.7, a pcap analyser that also installs /usr/bin/tcptrace),
//! which apt took for a newer version of ours and installed over it on
//! `apt upgrade`. Ours now `Conflicts:`/`Replaces:` it, and the install test
//! asks apt itself, with Debian's lists, that no upgrade replaces ours and
//! that installing Debian's package explicitly would remove ours first.

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
/// The crate `cargo deb -p` packages.
const CRATE: &str = "tcptrace";
/// Debian package name (`name` in `[package.metadata.deb]`).
const PACKAGE: &str = "tcptrace-ebpf";
/// Debian's unrelated package that ships the same /usr/bin/tcptrace (and the
/// name this tool's package had before it was renamed).
const DEBIAN_NAMESAKE: &str = "tcptrace";

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
    "/usr/share/doc/tcptrace-ebpf/README.md",
    "/usr/share/doc/tcptrace-ebpf/copyright",
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
    cmd.args(["deb", "-p", CRATE, "--no-build"]);
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

/// Whether dpkg has `package` installed (not merely known or config-files).
fn package_installed(package: &str) -> Result<bool> {
    let out = util::capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).ends_with(" installed"))
}

/// `dpkg -i`, check, `dpkg --purge`; the purge runs even when a check fails.
fn install_test(deb: &Path, binary: &Path) -> Result<()> {
    say("==> install test");
    if package_installed(PACKAGE)? {
        bail!(
            "the {PACKAGE} package is installed already; --install-test would replace and then purge it: run `dpkg -r {PACKAGE}` first"
        );
    }
    if package_installed(DEBIAN_NAMESAKE)? {
        bail!(
            "a package named {DEBIAN_NAMESAKE} is installed (Debian's pcap analyser, or this tool's package from before it was renamed {PACKAGE}); installing {PACKAGE} would remove it: run `dpkg -r {DEBIAN_NAMESAKE}` first"
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
    let checked = installed.and_then(|()| check_installed(deb, binary));
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
    if package_installed(PACKAGE)? || Path::new("/usr/bin/tcptrace").exists() {
        bail!("{PACKAGE} is still installed after `dpkg --purge {PACKAGE}`");
    }
    say("==> install test passed (installed, checked, purged)");
    Ok(())
}

/// Every check of the installed package; all run, failures are listed together.
fn check_installed(deb: &Path, binary: &Path) -> Result<()> {
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
    check(
        &format!("the .deb declares Conflicts/Replaces: {DEBIAN_NAMESAKE}"),
        control_fields(deb),
    );
    check(
        &format!("apt never upgrades {PACKAGE} to Debian's {DEBIAN_NAMESAKE}"),
        apt_keeps_package(),
    );

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

/// The control fields that keep apt and dpkg from mixing the two packages up.
fn control_fields(deb: &Path) -> Result<()> {
    let fields = util::stdout_of(Command::new("dpkg-deb").arg("-f").arg(deb).args([
        "Package",
        "Conflicts",
        "Replaces",
    ]))?;
    let want =
        format!("Package: {PACKAGE}\nConflicts: {DEBIAN_NAMESAKE}\nReplaces: {DEBIAN_NAMESAKE}");
    if fields.trim() != want {
        bail!("dpkg-deb -f says {fields:?}, want {want:?}");
    }
    Ok(())
}

/// `apt-get -s ARGS`: a simulation (changes nothing, takes no lock), in the C locale.
fn apt_simulate(args: &[&str]) -> Result<String> {
    util::stdout_of(
        Command::new("apt-get")
            .env("LC_ALL", "C")
            .args(["-s", "-o", "Debug::NoLocking=1"])
            .args(args),
    )
}

/// Debian's candidate version of its `tcptrace`, if the lists know one.
fn namesake_candidate() -> Result<Option<String>> {
    let policy = util::stdout_of(
        Command::new("apt-cache")
            .env("LC_ALL", "C")
            .args(["policy", DEBIAN_NAMESAKE]),
    )?;
    Ok(policy
        .lines()
        .find_map(|line| line.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|version| !version.is_empty() && *version != "(none)")
        .map(str::to_owned))
}

/// With Debian's lists present, asks apt what it would do with our package
/// installed: `apt upgrade` (= `upgrade --with-new-pkgs`) and `dist-upgrade`
/// must leave it alone, and `apt-get install tcptrace` must remove ours
/// first (so apt asks before replacing it). Without a candidate for Debian's
/// package the check would prove nothing, so it runs `apt-get update` once
/// and fails if there is still none.
fn apt_keeps_package() -> Result<()> {
    let candidate = match namesake_candidate()? {
        Some(version) => version,
        None => {
            say(format!(
                "apt-cache policy {DEBIAN_NAMESAKE} shows no candidate; running apt-get update"
            ));
            util::run(Command::new("apt-get").args(["update", "-qq"]))?;
            namesake_candidate()?.with_context(|| {
                format!(
                    "apt-cache policy {DEBIAN_NAMESAKE} shows no candidate even after apt-get update: the check needs Debian's package lists (a Debian mirror in sources.list)"
                )
            })?
        }
    };
    say(format!(
        "apt: Debian's {DEBIAN_NAMESAKE} candidate is {candidate}"
    ));
    let replaces_ours = |line: &str| {
        line.starts_with(&format!("Inst {DEBIAN_NAMESAKE} "))
            || line.starts_with(&format!("Remv {PACKAGE} "))
    };
    for args in [&["upgrade", "--with-new-pkgs"][..], &["dist-upgrade"][..]] {
        let plan = apt_simulate(args)?;
        if let Some(line) = plan.lines().find(|line| replaces_ours(line)) {
            bail!(
                "`apt-get -s {}` would replace {PACKAGE} with Debian's {DEBIAN_NAMESAKE}: {line}",
                args.join(" ")
            );
        }
    }
    let plan = apt_simulate(&["install", DEBIAN_NAMESAKE])?;
    if !plan
        .lines()
        .any(|line| line.starts_with(&format!("Remv {PACKAGE} ")))
    {
        bail!(
            "`apt-get -s install {DEBIAN_NAMESAKE}` does not remove {PACKAGE} first (no `Remv {PACKAGE}` line): the Conflicts is not in effect"
        );
    }
    Ok(())
}
