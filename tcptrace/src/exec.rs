//! `watch --exec`: a command per alert, on a thread of its own, bounded in
//! time and in number, each in a process group of its own (an edge:
//! processes). A slow or hanging command never delays tracing, and nothing
//! it starts outlives it.

use std::{
    io::{self, Write},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tcptrace_core::alerts::{Alert, AlertState};

/// Longest an `--exec` command may run before it is killed.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// `--exec` commands running at once, at most; more alerts are logged, not run.
pub const EXEC_MAX_RUNNING: usize = 4;

/// What became of one `--exec` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exec {
    /// Started on its own thread.
    Started,
    /// Not run: [`EXEC_MAX_RUNNING`] commands were still running.
    Skipped,
}

/// The `--exec` commands running now, by process group. Each command runs
/// in a process group of its own, so everything it starts (`sleep 100;
/// echo after` included) is killed with it: at its timeout, when its shell
/// exits (nothing it left behind outlives it), and when `watch` stops
/// ([`ExecHooks::finish`]: the commands still running get the rest of their
/// time, so the alert that made `--exit-on-alert` exit is still delivered,
/// then whatever is left is killed). A group is taken off this list, under
/// the lock, before its leader is reaped, so a group id is never signalled
/// once the kernel could have reused it.
#[derive(Clone, Debug, Default)]
pub struct ExecHooks {
    groups: Arc<Mutex<Vec<i32>>>,
}

impl ExecHooks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<i32>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commands running now.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    /// Kills every running command's process group.
    pub fn kill_all(&self) {
        for &group in self.lock().iter() {
            kill_group(group);
        }
    }

    /// `watch` is stopping: waits until the running commands are done, at
    /// most `limit` (their own timeout kills them by then), then kills what
    /// is left.
    pub fn finish(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.running() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_all();
    }

    /// A guard that finishes the running commands when dropped: on every
    /// way out of `watch` (signal, `--duration`, `--exit-on-alert`, an error).
    pub fn finish_on_drop(&self) -> FinishHooksOnDrop {
        FinishHooksOnDrop(self.clone())
    }
}

/// See [`ExecHooks::finish_on_drop`].
#[derive(Debug)]
pub struct FinishHooksOnDrop(ExecHooks);

impl Drop for FinishHooksOnDrop {
    fn drop(&mut self) {
        // A little past the commands' own timeout, which kills them first.
        self.0.finish(EXEC_TIMEOUT + Duration::from_secs(1));
    }
}

fn kill_group(group: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; `group`
    // is the id of a group whose leader has not been reaped yet.
    unsafe { libc::kill(-group, libc::SIGKILL) };
}

/// Whether process `pid` (our child) has exited, without reaping it: its
/// pid, and so its group id, stay reserved until it is waited for.
fn exited_unreaped(pid: i32) -> io::Result<bool> {
    // SAFETY: an all-zero siginfo_t is a valid value; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid siginfo pointer.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: si_pid is set by waitid when a child changed state (0 otherwise).
    Ok(unsafe { info.si_pid() } != 0)
}

/// Runs `sh -c cmd` for one alert on its own thread, in a process group of
/// its own: the alert as JSON on stdin and in `TCPTRACE_ALERT_*` variables,
/// the group killed after `timeout`; failures are logged on stderr. Returns
/// at once.
///
/// Every value passes through [`no_nul`]: a name read from a file on the
/// host could hold a NUL, which the environment cannot carry (the spawn
/// would fail and the hook would not run).
pub fn exec_alert(cmd: &str, a: &Alert, hooks: &ExecHooks, timeout: Duration) -> Exec {
    let json = serde_json::to_string(a).unwrap_or_default();
    let state = match a.state {
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .env("TCPTRACE_ALERT_RULE", no_nul(a.rule))
        .env("TCPTRACE_ALERT_STATE", no_nul(state))
        .env(
            "TCPTRACE_ALERT_PID",
            no_nul(a.pid.map(|p| p.to_string()).unwrap_or_default()),
        )
        .env(
            "TCPTRACE_ALERT_COMM",
            no_nul(a.comm.clone().unwrap_or_default()),
        )
        .env(
            "TCPTRACE_ALERT_CGROUP",
            no_nul(a.cgroup.clone().unwrap_or_default()),
        )
        .env(
            "TCPTRACE_ALERT_WORKLOAD",
            no_nul(a.workload.clone().unwrap_or_default()),
        )
        .env(
            "TCPTRACE_ALERT_WORKLOAD_KIND",
            no_nul(a.workload_kind.clone().unwrap_or_default()),
        )
        .env(
            "TCPTRACE_ALERT_UNIT",
            no_nul(a.unit.clone().unwrap_or_default()),
        )
        .env(
            "TCPTRACE_ALERT_CONTAINER",
            no_nul(a.container.clone().unwrap_or_default()),
        )
        .env(
            "TCPTRACE_ALERT_POD",
            no_nul(a.pod.clone().unwrap_or_default()),
        )
        .env(
            "TCPTRACE_ALERT_NAMESPACE",
            no_nul(a.namespace.clone().unwrap_or_default()),
        )
        .env("TCPTRACE_ALERT_COUNT", no_nul(a.count.to_string()))
        .env("TCPTRACE_ALERT_PEERS", no_nul(a.peers.join(" ")))
        .env(
            "TCPTRACE_ALERT_OPENED_AT",
            no_nul(a.opened_at.clone().unwrap_or_default()),
        )
        .env(
            "TCPTRACE_ALERT_LISTENER",
            no_nul(a.listener.clone().unwrap_or_default()),
        )
        .env(
            "TCPTRACE_ALERT_NETNS",
            no_nul(a.netns.map(|n| n.to_string()).unwrap_or_default()),
        )
        .env(
            "TCPTRACE_ALERT_REASON",
            no_nul(a.reason.unwrap_or_default()),
        )
        .env("TCPTRACE_ALERT_MESSAGE", no_nul(&a.message))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0);
    // tcptrace ignores SIGXFSZ (a file-size limit must be a write error, not
    // a silent death); the command gets the default back.
    // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            Ok(())
        });
    }
    let rule = a.rule;
    let mut child = {
        let mut groups = hooks.lock();
        if groups.len() >= EXEC_MAX_RUNNING {
            drop(groups);
            crate::say!("--exec skipped for {rule} ({EXEC_MAX_RUNNING} still running)");
            return Exec::Skipped;
        }
        match command.spawn() {
            Ok(child) => {
                groups.push(child.id() as i32);
                child
            }
            Err(e) => {
                drop(groups);
                crate::say!("--exec for {rule} failed: {e}");
                return Exec::Started;
            }
        }
    };
    let hooks = hooks.clone();
    std::thread::spawn(move || {
        let group = child.id() as i32;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read stdin is fine.
            let _ = stdin.write_all(json.as_bytes());
            let _ = stdin.write_all(b"\n");
        }
        let started = std::time::Instant::now();
        let problem = loop {
            match exited_unreaped(group) {
                Ok(false) if started.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(false) => break Some(format!("killed after {timeout:?}")),
                Ok(true) => break None,
                Err(e) => break Some(format!("failed: {e}")),
            }
        };
        {
            // The leader has exited (or timed out) but is not reaped yet:
            // its group id is still ours to signal.
            let mut groups = hooks.lock();
            kill_group(group);
            groups.retain(|&g| g != group);
        }
        let status = child.wait();
        match (problem, status) {
            (Some(problem), _) => crate::say!("--exec for {rule} {problem}"),
            (None, Ok(status)) if !status.success() => {
                crate::say!("--exec for {rule} exited with {status}")
            }
            (None, Ok(_)) => {}
            (None, Err(e)) => crate::say!("--exec for {rule} failed: {e}"),
        }
    });
    Exec::Started
}

/// `s` with each NUL written as `\x00`, so it fits in the environment.
fn no_nul(s: impl AsRef<str>) -> String {
    s.as_ref().replace('\0', "\\x00")
}

#[cfg(test)]
mod tests {
    use tcptrace_core::fixtures::alert;

    use super::*;

    fn wait_until(ok: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_hanging_command_is_killed_at_the_timeout_and_never_blocks_the_caller() {
        let hooks = ExecHooks::default();
        let started = std::time::Instant::now();
        let got = exec_alert("sleep 30", &alert(), &hooks, Duration::from_millis(300));
        assert_eq!(got, Exec::Started);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "exec blocked"
        );
        assert_eq!(hooks.running(), 1);
        wait_until(|| hooks.running() == 0);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[test]
    fn at_most_four_run_at_once_and_the_rest_are_skipped() {
        let hooks = ExecHooks::default();
        let a = alert();
        let got: Vec<Exec> = (0..6)
            .map(|_| exec_alert("sleep 30", &a, &hooks, Duration::from_millis(500)))
            .collect();
        assert_eq!(got[..EXEC_MAX_RUNNING], [Exec::Started; EXEC_MAX_RUNNING]);
        assert_eq!(got[EXEC_MAX_RUNNING..], [Exec::Skipped, Exec::Skipped]);
        wait_until(|| hooks.running() == 0);
        // Room again once they are gone.
        let text = hook_output(&hooks, &a, "env", |out| {
            format!(
                "cat > {out}; echo \"$TCPTRACE_ALERT_RULE $TCPTRACE_ALERT_PID $TCPTRACE_ALERT_CGROUP\" >> {out}"
            )
        });
        let mut lines = text.lines();
        let json: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(json["cgroup"], "/init.scope");
        assert_eq!(lines.next(), Some("close_wait_count 1 /init.scope"));
    }

    #[test]
    fn a_nul_in_a_name_read_from_the_host_still_runs_the_hook() {
        let hooks = ExecHooks::default();
        let mut a = alert();
        a.container = Some("web\0evil".into());
        let text = hook_output(&hooks, &a, "nul", |out| {
            format!("printf %s \"$TCPTRACE_ALERT_CONTAINER\" > {out}")
        });
        assert_eq!(text, "web\\x00evil");
    }

    /// Runs the hook `cmd(file)` for `a` and returns what it wrote to `file`.
    fn hook_output(
        hooks: &ExecHooks,
        a: &Alert,
        tag: &str,
        cmd: impl Fn(&str) -> String,
    ) -> String {
        let out = std::env::temp_dir().join(format!("tcptrace-exec-{tag}-{}", std::process::id()));
        let cmd = cmd(&out.display().to_string());
        assert_eq!(
            exec_alert(&cmd, a, hooks, Duration::from_secs(5)),
            Exec::Started
        );
        wait_until(|| hooks.running() == 0);
        let text = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        text
    }
}
