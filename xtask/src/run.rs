//! `cargo xtask run`: build tcptrace and run it with the needed privileges.
//!
//! Loading eBPF programs needs root and the eBPF object needs the nightly
//! toolchain and bpf-linker, so this runs setup quietly, builds the user-space
//! binary (whose build.rs builds the eBPF side) and runs it under `sudo -E`
//! when we are not root.

use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{Result, bail};
use clap::Args;

use crate::setup;
use crate::util::{self, say};

/// Options for `cargo xtask run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Build and run the release profile (the default).
    #[arg(long, conflicts_with = "debug")]
    release: bool,
    /// Build and run the debug (dev) profile.
    #[arg(long)]
    debug: bool,
    /// Arguments for tcptrace, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn main(args: &RunArgs) -> Result<()> {
    setup::ensure(true)?;

    let release = !args.debug;
    let mut build = util::cargo();
    build.arg("build");
    if release {
        build.arg("--release");
    }
    util::run(build.args(["-p", "tcptrace"]))?;

    let profile = if release { "release" } else { "debug" };
    let binary = util::target_dir().join(profile).join("tcptrace");
    if !binary.is_file() {
        bail!(
            "{} was not produced by the build; check CARGO_TARGET_DIR and the build output",
            binary.display()
        );
    }

    let mut cmd = if util::is_root() {
        Command::new(&binary)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(&binary);
        cmd
    };
    cmd.args(&args.args).current_dir(util::workspace_root());
    say(format!("+ {}", util::display(&cmd)));
    // Replace this process rather than spawn-and-wait: the exit code is then
    // tcptrace's own, and Ctrl-C reaches tcptrace without killing a parent
    // that would otherwise return to the shell while tcptrace still prints.
    let err = cmd.exec();
    bail!("could not start `{}`: {err}", util::display(&cmd))
}
