//! Reading the clocks (an edge): CLOCK_MONOTONIC, the base of the kernel's
//! `bpf_ktime_get_ns`, and the offset to wall-clock time, measured once.

use std::time::{SystemTime, UNIX_EPOCH};

pub use tcptrace_core::clock::*;

/// Measures the offset between CLOCK_REALTIME and CLOCK_MONOTONIC now.
pub fn measure_wall_clock() -> WallClock {
    let mono = monotonic_ns() as i128;
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    WallClock {
        offset_ns: wall - mono,
    }
}

/// CLOCK_MONOTONIC now, in the kernel's `bpf_ktime_get_ns` base.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
