//! Converting kernel timestamps (CLOCK_MONOTONIC, `bpf_ktime_get_ns`) to wall
//! clock. The offset is measured once; the clock itself stays at the edge.

use std::time::{SystemTime, UNIX_EPOCH};

/// `wall_ns = mono_ns + offset_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    pub offset_ns: i128,
}

impl WallClock {
    /// Measures the offset between CLOCK_REALTIME and CLOCK_MONOTONIC now.
    pub fn measure() -> Self {
        let mono = monotonic_ns() as i128;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Self {
            offset_ns: wall - mono,
        }
    }

    /// Unix-epoch nanoseconds for a monotonic timestamp.
    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
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

/// "HH:MM:SS.mmm" (UTC) for a Unix-epoch nanosecond time.
pub fn hms_millis(wall_ns: u64) -> String {
    let secs = wall_ns / 1_000_000_000;
    let ms = (wall_ns / 1_000_000) % 1000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3600,
        (day / 60) % 60,
        day % 60,
        ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time_of_day() {
        let ns = (3 * 3600 + 4 * 60 + 5) * 1_000_000_000 + 678_000_000;
        assert_eq!(hms_millis(ns), "03:04:05.678");
    }

    #[test]
    fn wall_clock_is_offset() {
        let c = WallClock { offset_ns: 1_000 };
        assert_eq!(c.wall_ns(5), 1_005);
        let neg = WallClock { offset_ns: -10 };
        assert_eq!(neg.wall_ns(5), 0);
    }
}
