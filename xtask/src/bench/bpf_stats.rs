//! What each eBPF program costs per run, from the kernel's own accounting:
//! with `kernel.bpf_stats_enabled=1` the kernel times every run of every
//! program (`run_time_ns`, `run_cnt`) and counts the runs it skipped because
//! the program was already active on the CPU (`recursion_misses`);
//! `bpftool prog show --json` lists them.
//!
//! The live benchmark turns the accounting on for its whole run and puts the
//! previous value back at the end, on error, and on SIGINT/SIGTERM/SIGHUP
//! ([`StatsGuard`]): the accounting costs a clock read per run on every
//! program of the host, and must not outlive the benchmark. It adds to what
//! it measures: the limit's empty programs show how much.
//!
//! A tracer's programs are the ones its process holds (`prog_id` in
//! `/proc/PID/fdinfo`), so tracers of other sessions running at the same
//! time are not mixed in; when those cannot be read, programs are selected
//! by name, the highest id of each name (the newest load).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, AtomicU8, Ordering},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::util;

/// The sysctl, as a file.
const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// The same path for the signal handler (no allocation there).
const SYSCTL_C: &std::ffi::CStr = c"/proc/sys/kernel/bpf_stats_enabled";

/// The byte to write back (`b'0'`, `b'1'`), 0 when there is nothing to restore.
static PREVIOUS: AtomicU8 = AtomicU8::new(0);
/// Set by the signal handler; the benchmark stops at its next step.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A hook the tracers attach to, with the names its programs go by and the
/// issue's target per run.
#[derive(Debug)]
pub struct Hook {
    /// Row name in the tables.
    pub name: &'static str,
    /// Program names (as bpftool shows them, from BTF): tcptrace's
    /// (preferred and fallback attachments), the limit's empty ones,
    /// libbpf-tools tcpstates'.
    pub programs: &'static [&'static str],
    /// Target, ns per run (issue 19).
    pub target_ns: Option<f64>,
}

/// Every hook, in table order.
pub const HOOKS: [Hook; 8] = [
    Hook {
        name: "inet_sock_set_state",
        programs: &[
            "inet_sock_set_state_btf",
            "inet_sock_set_state_tp",
            "empty_set_state",
            "handle_set_state",
        ],
        target_ns: Some(250.0),
    },
    Hook {
        name: "inet_sock_set_state (twin)",
        programs: &["inet_sock_set_state_nested", "empty_set_state_nested"],
        target_ns: Some(250.0),
    },
    Hook {
        name: "timer_start",
        programs: &["timer_start_btf", "timer_start", "empty_timer_start"],
        target_ns: Some(40.0),
    },
    Hook {
        name: "timer_cancel",
        programs: &["timer_cancel_btf", "timer_cancel", "empty_timer_cancel"],
        target_ns: Some(40.0),
    },
    Hook {
        name: "timer_expire_entry",
        programs: &[
            "timer_expire_entry_btf",
            "timer_expire_entry",
            "empty_timer_expire_entry",
        ],
        target_ns: Some(40.0),
    },
    Hook {
        name: "sys_exit_accept4",
        programs: &["sys_exit_accept4", "empty_sys_exit_accept4"],
        target_ns: Some(150.0),
    },
    Hook {
        name: "sys_exit_accept",
        programs: &["sys_exit_accept", "empty_sys_exit_accept"],
        target_ns: Some(150.0),
    },
    Hook {
        // Every packet freed with a reason, of every protocol: most leave
        // at the reason mask (issue 22).
        name: "kfree_skb",
        programs: &[
            "kfree_skb_btf",
            "kfree_skb",
            "empty_kfree_skb_btf",
            "empty_kfree_skb",
        ],
        target_ns: None,
    },
];

/// The row of program `name`: its hook's, or its own name for a program
/// the table does not know (shown, without a target).
pub fn hook_of(name: &str) -> &str {
    HOOKS
        .iter()
        .find(|h| h.programs.contains(&name))
        .map_or(name, |h| h.name)
}

pub fn target_of(hook: &str) -> Option<f64> {
    HOOKS
        .iter()
        .find(|h| h.name == hook)
        .and_then(|h| h.target_ns)
}

/// One program's counters at the end of a run (cumulative since it was
/// loaded, i.e. since the tracer attached).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgStat {
    /// Row of the tables ([`hook_of`]).
    pub hook: String,
    pub name: String,
    pub id: u64,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub recursion_misses: u64,
    /// `run_time_ns / run_cnt`; `None` before the first run.
    pub ns_per_run: Option<f64>,
}

/// Turns `kernel.bpf_stats_enabled` on; dropping it (or a signal) puts the
/// previous value back.
#[derive(Debug)]
pub struct StatsGuard {
    previous: u8,
}

impl StatsGuard {
    pub fn enable() -> Result<Self> {
        let text = fs::read_to_string(SYSCTL).with_context(|| format!("read {SYSCTL}"))?;
        let previous = match text.trim() {
            "0" => b'0',
            "1" => b'1',
            other => bail!("{SYSCTL} holds {other:?}, expected 0 or 1"),
        };
        PREVIOUS.store(previous, Ordering::SeqCst);
        for sig in SIGNALS {
            // SAFETY: the handler only touches atomics and makes
            // async-signal-safe calls (open, write, close, signal).
            unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        }
        if let Err(e) = fs::write(SYSCTL, "1") {
            restore();
            return Err(e).with_context(|| format!("write 1 to {SYSCTL}"));
        }
        util::say(format!(
            "bpf_stats: kernel.bpf_stats_enabled=1 for the benchmark (was {})",
            previous as char
        ));
        Ok(Self { previous })
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        restore();
        for sig in SIGNALS {
            // SAFETY: back to the default disposition.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        util::say(format!(
            "bpf_stats: kernel.bpf_stats_enabled={} restored",
            self.previous as char
        ));
    }
}

/// Writes the saved value back, with async-signal-safe calls only.
fn restore() {
    let byte = PREVIOUS.load(Ordering::SeqCst);
    if byte == 0 {
        return;
    }
    // SAFETY: a NUL-terminated path; a one-byte buffer that outlives the call.
    unsafe {
        let fd = libc::open(SYSCTL_C.as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            let _ = libc::write(fd, (&byte as *const u8).cast(), 1);
            libc::close(fd);
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    restore();
    INTERRUPTED.store(true, Ordering::SeqCst);
    // A second one of the same kind ends the process at once.
    // SAFETY: signal() is async-signal-safe.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// Whether a signal asked the benchmark to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once a signal asked the benchmark to stop (checked between steps).
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted (bpf_stats setting restored)");
    }
    Ok(())
}

/// Program ids `pid` holds (its program and link fds both name one).
fn prog_ids_of(pid: u32) -> BTreeSet<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let Ok(entries) = fs::read_dir(&dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The programs of the tracer `pid` and their counters, now.
pub fn programs_of(pid: u32) -> Result<Vec<ProgStat>> {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("tracer {pid} is gone");
    }
    let out = util::stdout_of(Command::new("bpftool").args(["prog", "show", "--json"]))
        .context("bpftool (apt install bpftool)")?;
    let list: Value = serde_json::from_str(&out).context("bpftool's JSON")?;
    Ok(select(
        list.as_array().map_or(&[][..], |v| v),
        &prog_ids_of(pid),
    ))
}

/// The entries held (`held`), or when none could be read, the highest id of
/// each known name.
fn select(list: &[Value], held: &BTreeSet<u64>) -> Vec<ProgStat> {
    let stat = |v: &Value| -> Option<ProgStat> {
        let name = v.get("name")?.as_str()?.to_string();
        let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (run_time_ns, run_cnt) = (num("run_time_ns"), num("run_cnt"));
        Some(ProgStat {
            hook: hook_of(&name).to_string(),
            id: v.get("id")?.as_u64()?,
            run_time_ns,
            run_cnt,
            recursion_misses: num("recursion_misses"),
            ns_per_run: (run_cnt > 0).then(|| run_time_ns as f64 / run_cnt as f64),
            name,
        })
    };
    let all = list.iter().filter_map(stat);
    let mut picked: Vec<ProgStat> = if held.is_empty() {
        let mut newest: BTreeMap<String, ProgStat> = BTreeMap::new();
        for p in all.filter(|p| HOOKS.iter().any(|h| h.programs.contains(&p.name.as_str()))) {
            if newest.get(&p.name).is_none_or(|q| q.id < p.id) {
                newest.insert(p.name.clone(), p);
            }
        }
        newest.into_values().collect()
    } else {
        all.filter(|p| held.contains(&p.id)).collect()
    };
    let order = |p: &ProgStat| HOOKS.iter().position(|h| h.name == p.hook).unwrap_or(99);
    picked.sort_by(|a, b| order(a).cmp(&order(b)).then(a.name.cmp(&b.name)));
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, name: &str, rt: u64, cnt: u64) -> Value {
        serde_json::json!({"id": id, "name": name, "run_time_ns": rt, "run_cnt": cnt})
    }

    #[test]
    fn held_programs_are_taken_whatever_their_names() {
        let list = [
            entry(5, "inet_sock_set_state_btf", 1000, 4),
            entry(9, "inet_sock_set_state_btf", 2000, 4),
            entry(10, "something_new", 10, 1),
        ];
        let p = select(&list, &BTreeSet::from([5, 10]));
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].id, p[0].ns_per_run), (5, Some(250.0)));
        assert_eq!(p[1].hook, "something_new");
    }

    #[test]
    fn without_fdinfo_the_newest_of_each_known_name() {
        let list = [
            entry(5, "inet_sock_set_state_btf", 1000, 4),
            entry(9, "inet_sock_set_state_btf", 2000, 4),
            entry(7, "empty_timer_start", 0, 0),
            entry(10, "unrelated", 10, 1),
        ];
        let p = select(&list, &BTreeSet::new());
        assert_eq!(p.iter().map(|p| p.id).collect::<Vec<_>>(), [9, 7]);
        assert_eq!(p[1].hook, "timer_start");
        assert_eq!(p[1].ns_per_run, None);
    }
}
