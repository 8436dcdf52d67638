//! Converting kernel timestamps (CLOCK_MONOTONIC, `bpf_ktime_get_ns`) to wall
//! clock, and durations for humans. The offset is measured once, by the
//! binary (reading clocks is an edge); this is the arithmetic.

/// `wall_ns = mono_ns + offset_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    pub offset_ns: i128,
}

impl WallClock {
    /// Unix-epoch nanoseconds for a monotonic timestamp.
    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }
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

/// A duration for people: 0.42ms, 12.3ms, 4.1s, 5m03s, 2h05m, 3d04h.
pub fn fmt_ms(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        return "-".into();
    }
    if ms < 1.0 {
        return format!("{ms:.2}ms");
    }
    if ms < 1000.0 {
        return format!("{ms:.1}ms");
    }
    let s = ms / 1000.0;
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let s = s as u64;
    if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m", s / 3600, (s / 60) % 60)
    } else {
        format!("{}d{:02}h", s / 86400, (s / 3600) % 24)
    }
}

/// A measured change as it was measured: "+41 in 0.8s" while the span is
/// shorter than the window it stands for, "+12.0/min" once the window is
/// full (no rate over minutes from seconds of data). "-" with nothing
/// measured yet.
pub fn fmt_growth(delta: i64, span_ms: u64, window_ms: u64) -> String {
    if span_ms == 0 {
        return "-".into();
    }
    // A sample interval of slack: the window is "full" a tick early.
    if span_ms + 1_500 >= window_ms {
        let per_min = delta as f64 * 60_000.0 / span_ms as f64;
        return format!("{per_min:+.1}/min");
    }
    format!("{delta:+} in {}", fmt_ms(span_ms as f64))
}

/// [`fmt_growth`] for a narrow column: "+41/0.8s", "+146/73s", "+900/4.2m",
/// "+12.0" (per minute, the window full).
pub fn fmt_growth_short(delta: i64, span_ms: u64, window_ms: u64) -> String {
    if span_ms == 0 {
        return "-".into();
    }
    if span_ms + 1_500 >= window_ms {
        return format!("{:+.1}", delta as f64 * 60_000.0 / span_ms as f64);
    }
    let s = span_ms as f64 / 1000.0;
    let span = if s < 10.0 {
        format!("{s:.1}s")
    } else if s < 100.0 {
        format!("{s:.0}s")
    } else {
        format!("{:.1}m", s / 60.0)
    };
    format!("{delta:+}/{span}")
}

/// An age, marked `>=` when it is a lower bound (the socket predates the trace).
pub fn fmt_age(ms: u64, lower_bound: bool) -> String {
    let t = fmt_ms(ms as f64);
    if lower_bound { format!(">={t}") } else { t }
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
    fn growth_says_what_was_measured() {
        assert_eq!(fmt_growth(41, 800, 300_000), "+41 in 800.0ms");
        assert_eq!(fmt_growth(20, 10_000, 60_000), "+20 in 10.0s");
        assert_eq!(fmt_growth(-3, 95_000, 300_000), "-3 in 1m35s");
        assert_eq!(fmt_growth(10, 60_000, 60_000), "+10.0/min");
        assert_eq!(fmt_growth(50, 299_000, 300_000), "+10.0/min");
        assert_eq!(fmt_growth(0, 0, 60_000), "-");
        assert_eq!(fmt_growth_short(20, 10_000, 60_000), "+20/10s");
        assert_eq!(fmt_growth_short(41, 800, 60_000), "+41/0.8s");
        assert_eq!(fmt_growth_short(900, 252_000, 300_000), "+900/4.2m");
        assert_eq!(fmt_growth_short(30, 60_000, 60_000), "+30.0");
    }

    #[test]
    fn wall_clock_is_offset() {
        let c = WallClock { offset_ns: 1_000 };
        assert_eq!(c.wall_ns(5), 1_005);
        let neg = WallClock { offset_ns: -10 };
        assert_eq!(neg.wall_ns(5), 0);
    }
}
