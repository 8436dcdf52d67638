//! `cargo xtask install`: build the release binary and install it with its
//! man page, shell completions, systemd unit and example config.
//!
//! `cargo install` only copies binaries. The man page and completions are
//! made by the just-built binary (`tcptrace generate ...`) so they always
//! match it, the unit must name the path the binary was installed to, and
//! an admin's `/etc/tcptrace/watch.toml` must never be overwritten. Every
//! file is replaced atomically (write + rename) and only when it differs, so
//! re-running is safe, even while `tcptrace watch` runs from the old binary.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::setup;
use crate::util::{self, say};

/// Options for `cargo xtask install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Installation prefix: PREFIX/bin, PREFIX/share/{man,bash-completion,zsh,fish},
    /// PREFIX/lib/systemd/system.
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    prefix: PathBuf,
    /// Staging root put in front of every path (for packagers); the installed
    /// unit still names PREFIX/bin/tcptrace.
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
}

/// The unit template, relative to the workspace root. It names the Debian
/// package's binary path, which `install` rewrites for its prefix.
pub const UNIT_TEMPLATE: &str = "packaging/tcptrace-watch.service";
/// The example rules, relative to the workspace root.
pub const EXAMPLE_CONFIG: &str = "packaging/watch.toml";
/// Where the unit's `--config` points; fixed, whatever the prefix.
const CONFIG_PATH: &str = "/etc/tcptrace/watch.toml";
/// The binary path in [`UNIT_TEMPLATE`].
const TEMPLATE_BIN: &str = "/usr/bin/tcptrace";

/// The `tcptrace generate` kinds, with where each goes under `PREFIX/share`.
pub const GENERATED: &[(&str, &str)] = &[
    ("man", "man/man1/tcptrace.1"),
    ("complete-bash", "bash-completion/completions/tcptrace"),
    ("complete-zsh", "zsh/site-functions/_tcptrace"),
    ("complete-fish", "fish/vendor_completions.d/tcptrace.fish"),
];

pub fn main(args: &InstallArgs) -> Result<()> {
    if !args.prefix.is_absolute() {
        bail!(
            "--prefix {} must be an absolute path",
            args.prefix.display()
        );
    }
    let binary = build_release()?;
    let stage = |path: &Path| match &args.destdir {
        // `join` would discard the destdir for an absolute path.
        Some(destdir) => destdir.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    };
    let bin_path = args.prefix.join("bin/tcptrace");

    let mut changed = 0;
    let mut put = |path: &Path, contents: &[u8], mode: u32| -> Result<()> {
        let staged = stage(path);
        if install_file(&staged, contents, mode)? {
            changed += 1;
            say(format!("installed: {}", staged.display()));
        } else {
            say(format!("unchanged: {}", staged.display()));
        }
        Ok(())
    };

    let exe = fs::read(&binary).with_context(|| format!("read {}", binary.display()))?;
    put(&bin_path, &exe, 0o755)?;
    for &(kind, rel) in GENERATED {
        put(
            &args.prefix.join("share").join(rel),
            &generate(&binary, kind)?,
            0o644,
        )?;
    }
    let unit_path = args
        .prefix
        .join("lib/systemd/system/tcptrace-watch.service");
    put(
        &unit_path,
        unit_for(&bin_path, &args.prefix)?.as_bytes(),
        0o644,
    )?;

    let config = stage(Path::new(CONFIG_PATH));
    if config.exists() {
        say(format!(
            "kept: {} (exists; never overwritten)",
            config.display()
        ));
    } else {
        let example = util::workspace_root().join(EXAMPLE_CONFIG);
        let text = fs::read(&example).with_context(|| format!("read {}", example.display()))?;
        put(Path::new(CONFIG_PATH), &text, 0o644)?;
    }

    if args.destdir.is_some() {
        say(format!("done: {changed} file(s) changed"));
        return Ok(());
    }
    let standard = ["/usr", "/usr/local"].map(Path::new);
    if !standard.contains(&args.prefix.as_path()) {
        say(format!(
            "note: systemd does not look in {}; run: systemctl link {}",
            unit_path
                .parent()
                .map(Path::display)
                .unwrap_or(unit_path.display()),
            unit_path.display()
        ));
    }
    // Like a package's postinst: make a running systemd see the new unit.
    if changed > 0 && Path::new("/run/systemd/system").is_dir() {
        util::run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    say(format!(
        "done: {changed} file(s) changed; start the alerting service with: systemctl enable --now tcptrace-watch"
    ));
    Ok(())
}

/// Run setup, build `tcptrace` in release and return the binary's path.
pub fn build_release() -> Result<PathBuf> {
    setup::ensure(true)?;
    util::run(util::cargo().args(["build", "--release", "-p", "tcptrace"]))?;
    let binary = util::target_dir().join("release/tcptrace");
    if !binary.is_file() {
        bail!(
            "{} was not produced by the build; check CARGO_TARGET_DIR and the build output",
            binary.display()
        );
    }
    Ok(binary)
}

/// `tcptrace generate <kind>`: the man page or a completion script.
pub fn generate(binary: &Path, kind: &str) -> Result<Vec<u8>> {
    let mut cmd = Command::new(binary);
    cmd.args(["generate", kind]);
    let out = util::capture(&mut cmd)?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "`{}` failed ({}): {}",
            util::display(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The unit template with `ExecStart` pointing at `bin`.
fn unit_for(bin: &Path, prefix: &Path) -> Result<String> {
    let path = util::workspace_root().join(UNIT_TEMPLATE);
    let template = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let bin = bin.to_str().context("the prefix must be valid UTF-8")?;
    let mut unit = format!(
        "# Installed by `cargo xtask install --prefix {}`.\n",
        prefix.display()
    );
    let mut exec_start = false;
    for line in template.lines() {
        // Only ExecStart lines: the comments describe the template itself.
        if line.contains("ExecStart=") {
            exec_start |= line.starts_with("ExecStart=") && line.contains(TEMPLATE_BIN);
            unit.push_str(&line.replace(TEMPLATE_BIN, bin));
        } else {
            unit.push_str(line);
        }
        unit.push('\n');
    }
    if !exec_start {
        bail!(
            "{} has no `ExecStart={TEMPLATE_BIN} ...` line to rewrite",
            path.display()
        );
    }
    Ok(unit)
}

/// Write `contents` to `path` with `mode` unless it is already exactly that.
/// Returns whether anything changed. The new file is written next to the old
/// one and renamed over it, so a running binary is never modified in place.
fn install_file(path: &Path, contents: &[u8], mode: u32) -> Result<bool> {
    let same = fs::metadata(path).is_ok_and(|meta| {
        meta.is_file()
            && meta.permissions().mode() & 0o7777 == mode
            && fs::read(path).is_ok_and(|old| old == contents)
    });
    if same {
        return Ok(false);
    }
    let dir = path.parent().context("install path has no parent")?;
    let name = path
        .file_name()
        .context("install path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.xtask-install"));
    let written = fs::create_dir_all(dir)
        .and_then(|()| fs::write(&tmp, contents))
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        let hint = if err.kind() == ErrorKind::PermissionDenied {
            "; run as root (sudo -E cargo xtask install) or stage it with --destdir"
        } else {
            ""
        };
        return Err(anyhow::Error::new(err).context(format!("install {}{hint}", path.display())));
    }
    Ok(true)
}
