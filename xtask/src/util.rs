//! Helpers shared by the xtask commands.
//!
//! Every command shells out to cargo, rustup, apt and friends; routing them
//! through these helpers keeps the printed command lines, the error messages
//! and the root/PATH handling identical across `setup`, `test` and `run`.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, Result, bail};

/// Print a status line. xtask chatter goes to stderr (like cargo's) so that
/// `cargo xtask run -- ... | jq` only sees tcptrace's own stdout.
pub fn say(msg: impl AsRef<str>) {
    eprintln!("{}", msg.as_ref());
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}

/// The cargo target directory: `$CARGO_TARGET_DIR` (relative paths are taken
/// relative to the workspace root, as cargo does when run from there), else
/// `<workspace root>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// A `cargo` command that runs from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// Whether this process runs with effective uid 0.
///
/// Reads the `Uid:` line of `/proc/self/status` (real, effective, saved, fs)
/// and falls back to `id -u`, so no libc binding is needed.
pub fn is_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status")
        && let Some(euid) = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
    {
        return euid == "0";
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Quote one word for display the way a POSIX shell would need it.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Render a command (with its explicitly set environment) as a shell line.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!(
                "{}={}",
                key.to_string_lossy(),
                shell_quote(&value.to_string_lossy())
            ));
        }
    }
    words.push(shell_quote(&cmd.get_program().to_string_lossy()));
    words.extend(
        cmd.get_args()
            .map(|arg| shell_quote(&arg.to_string_lossy())),
    );
    words.join(" ")
}

/// Print `+ <command>`, run it with inherited stdio and fail if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    say(format!("+ {line}"));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`; is it installed and on PATH?"))?;
    if !status.success() {
        bail!("`{line}` failed ({status}); fix the problem reported above and re-run");
    }
    Ok(())
}

/// Run a command silently and capture its output; only a failure to start it
/// is an error (a non-zero exit is left to the caller to interpret).
pub fn capture(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| {
        format!(
            "could not start `{}`; is it installed and on PATH?",
            display(cmd)
        )
    })
}

/// Like [`capture`] but requires success and returns trimmed stdout.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = capture(cmd)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("").trim();
        bail!("`{}` failed ({}): {first}", display(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Look up an executable on `PATH` (what `which` does).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn cargo_bin_dir() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| OsString::from("/root")))
                .join(".cargo")
        });
    home.join("bin")
}

/// Make sure the cargo bin directory is on `PATH` for our child processes.
///
/// Returns `false` when it had to be prepended, i.e. the user's own shell
/// will not find `bpf-linker` and should be told to fix their `PATH`.
pub fn ensure_cargo_bin_on_path() -> bool {
    let bin = cargo_bin_dir();
    let current = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&current).any(|dir| dir == bin) {
        return true;
    }
    let mut dirs = vec![bin];
    dirs.extend(env::split_paths(&current));
    if let Ok(joined) = env::join_paths(dirs) {
        // SAFETY: xtask never spawns threads, so nothing can read the
        // environment concurrently with this write.
        unsafe { env::set_var("PATH", joined) };
    }
    false
}
