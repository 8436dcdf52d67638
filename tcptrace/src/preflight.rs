//! Checks that turn the kernel's cryptic refusals into one line with the fix:
//! privileges, BTF, tracefs. Run before loading anything.

use std::path::Path;

/// An environment problem the user must fix: exit code 2, one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability bits of this process (`CapEff` in /proc/self/status).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn check() -> Result<(), EnvError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let caps = effective_caps();
    let has = |cap: u32| caps & (1 << cap) != 0;
    if euid != 0 && !(has(CAP_BPF) && has(CAP_PERFMON)) {
        return Err(EnvError(
            "tcptrace needs root (or CAP_BPF and CAP_PERFMON) to load eBPF: run it with sudo"
                .into(),
        ));
    }
    if !Path::new(crate::ebpf::btf::VMLINUX).exists() {
        return Err(EnvError(format!(
            "{} is missing: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF=y is required)",
            crate::ebpf::btf::VMLINUX
        )));
    }
    crate::ebpf::tracefs::root().map_err(|e| EnvError(format!("{e:#}")))?;
    Ok(())
}
