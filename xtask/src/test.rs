//! `cargo xtask test`: the single command CI and contributors run.
//!
//! It installs the prerequisites, then checks formatting, lints and runs the
//! test suite, stopping at the first failure; in CI it also builds the
//! Debian package and installs, checks and purges it. The kernel tests load eBPF
//! programs and therefore need root, so `cargo test` is run through `sudo`
//! when we are not root already.

use std::env;
use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::setup;
use crate::util::{self, say};

/// The eBPF crate only builds for the BPF target (tcptrace's build.rs builds
/// it); host-side clippy and tests must leave it out.
const EBPF_CRATE: &str = "tcptrace-ebpf";

/// How long CI fuzzes the recording reader (`fuzz_the_reader_for_a_bounded_time`;
/// 5 s elsewhere unless `TCPTRACE_FUZZ_SECS` says otherwise).
const FUZZ_SECS_IN_CI: &str = "20";

/// Options for `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Extra arguments passed to the test binaries (after `cargo test --`).
    #[arg(last = true)]
    extra: Vec<String>,
}

pub fn main(args: &TestArgs) -> Result<()> {
    say("==> cargo xtask setup");
    setup::ensure(false)?;

    say("==> cargo fmt --check");
    util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))?;

    say("==> cargo clippy");
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    say("==> cargo clippy (eBPF crate, nightly, bpfel-unknown-none)");
    let mut ebpf_clippy = Command::new("cargo");
    ebpf_clippy
        .current_dir(util::workspace_root().join(EBPF_CRATE))
        .env_remove("RUSTUP_TOOLCHAIN")
        .args([
            "+nightly",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]);
    util::run(&mut ebpf_clippy)?;

    say("==> cargo test");
    let test_args = ["test", "--workspace", "--exclude", EBPF_CRATE];
    let mut cmd = if util::is_root() {
        let mut cmd = util::cargo();
        cmd.args(test_args);
        if env::var_os("CI").is_some() {
            cmd.env("TCPTRACE_CI", "1");
            cmd.env("TCPTRACE_FUZZ_SECS", FUZZ_SECS_IN_CI);
        }
        cmd
    } else {
        // sudo resets PATH (secure_path), which would lose cargo and
        // bpf-linker; pass it explicitly through `env`.
        let mut cmd = Command::new("sudo");
        cmd.current_dir(util::workspace_root()).arg("-E").arg("env");
        let mut path = std::ffi::OsString::from("PATH=");
        path.push(env::var_os("PATH").unwrap_or_default());
        cmd.arg(path);
        if env::var_os("CI").is_some() {
            cmd.arg("TCPTRACE_CI=1");
            cmd.arg(format!("TCPTRACE_FUZZ_SECS={FUZZ_SECS_IN_CI}"));
        }
        cmd.arg("cargo").args(test_args);
        cmd
    };
    if !args.extra.is_empty() {
        cmd.arg("--").args(&args.extra);
    }
    util::run(&mut cmd)?;

    // The package, installed for real: only in CI (a fresh machine of its
    // own), as it installs to /usr/bin and purges again.
    if env::var_os("CI").is_some() && util::is_root() {
        say("==> cargo xtask deb --install-test");
        crate::deb::main(&crate::deb::DebArgs { install_test: true })?;
    }

    say("==> all checks passed");
    Ok(())
}
