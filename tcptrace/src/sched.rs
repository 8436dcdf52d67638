//! Scheduling of the thread that drains the ring buffer. On a saturated host
//! the kernel keeps producing events whether or not the reader runs, and
//! group scheduling (autogroups, cgroup CPU weights) can keep a
//! normal-priority reader off the CPU for seconds: measured here, `top`
//! started from its own session (tmux) waited 3.6 s on the run queue while a
//! load generator saturated both cores, and its 64 MiB ring overflowed (900k
//! events lost in 6 s; none with autogroups off). So the thread that drains
//! runs `SCHED_RR` at the lowest real-time priority: it is picked as soon as
//! it wakes. So do the thread copying records out of the ring
//! (`ebpf::reader`, about 0.1 µs per event) and the consumer applying them
//! (about 0.3 µs per event, plus the periodic refresh that grows with the
//! sockets tracked: 0.24 s at 1M sockets, which the copying thread covers).
//! A normal-priority consumer would be starved in the same way and let the
//! queue grow. Threads and processes they create start at normal priority.
//! `--no-realtime` turns it off.

/// Makes the calling thread `SCHED_RR` priority 1, with threads and
/// processes it creates reset to normal. Returns why not when the kernel
/// refuses (no CAP_SYS_NICE, or a cgroup without a real-time budget).
pub fn enter_realtime() -> Result<(), std::io::Error> {
    set(libc::SCHED_RR, 1)
}

/// [`enter_realtime`] when `wanted`, logging the outcome.
pub fn drain_priority(wanted: bool) {
    if !wanted {
        return;
    }
    match enter_realtime() {
        Ok(()) => log::info!("draining the ring buffer at real-time priority (SCHED_RR 1)"),
        Err(e) => log::info!("draining at normal priority: SCHED_RR refused ({e})"),
    }
}

fn set(policy: libc::c_int, priority: libc::c_int) -> Result<(), std::io::Error> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, policy | libc::SCHED_RESET_ON_FORK, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: pid 0 is the calling thread.
        let policy = unsafe { libc::sched_getscheduler(0) };
        policy & !libc::SCHED_RESET_ON_FORK
    }

    /// Runs as root in CI: the thread goes real-time, and a thread it spawns
    /// (an `--exec` hook's, the metrics server) starts normal.
    #[test]
    fn realtime_thread_spawns_normal_threads() {
        std::thread::spawn(|| {
            if let Err(e) = enter_realtime() {
                // SAFETY: geteuid has no preconditions.
                assert_ne!(unsafe { libc::geteuid() }, 0, "root must get SCHED_RR: {e}");
                return;
            }
            assert_eq!(policy(), libc::SCHED_RR);
            let child = std::thread::spawn(policy).join().unwrap();
            assert_eq!(child, libc::SCHED_OTHER, "reset on fork");
        })
        .join()
        .unwrap();
    }
}
