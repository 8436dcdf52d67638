//! The `stats` summary as text and as one JSON object (lists capped:
//! [`crate::stats::cap_lists`]); `report` prints the same.

use std::io::{self, Write};

use crate::{
    clock::{fmt_age, hms_millis},
    output::escape,
    stats::{HistKind, Snapshot},
};

/// One JSON object per line, lists capped.
pub fn write_json(w: &mut impl Write, snap: &Snapshot) -> io::Result<()> {
    let mut v = serde_json::to_value(snap)?;
    crate::stats::cap_lists(&mut v);
    serde_json::to_writer(&mut *w, &v)?;
    w.write_all(b"\n")
}

/// The human summary; names from outside escaped.
pub fn write_text(w: &mut impl Write, snap: &Snapshot) -> io::Result<()> {
    let lost = snap.lost.values().fold(0u64, |a, n| a.saturating_add(*n));
    writeln!(
        w,
        "== {}  tracked {}  transitions {:.0}/s  lost {}{}",
        hms_millis(snap.ts_ns),
        snap.tracked,
        snap.transitions_per_sec,
        lost,
        if lost > 0 {
            format!(
                " {:?}",
                snap.lost
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .collect::<Vec<_>>()
            )
        } else {
            String::new()
        }
    )?;
    let states: Vec<String> = snap
        .states
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    writeln!(w, "states: {}", states.join("  "))?;
    if !snap.close_wait_by_process.is_empty() {
        writeln!(
            w,
            "CLOSE_WAIT by process:\n  {:<8} {:<16} {:>7} {:>22} {:>10}  PEERS",
            "PID", "COMM", "COUNT", "GROWTH/MIN 1m/5m/15m", "OLDEST"
        )?;
        for p in snap.close_wait_by_process.iter().take(10) {
            writeln!(
                w,
                "  {:<8} {:<16} {:>7} {:>22} {:>10}  {}",
                p.pid.map_or("-".into(), |p| p.to_string()),
                escape(p.comm.as_deref().unwrap_or("-")),
                p.count,
                format!(
                    "{:.1}/{:.1}/{:.1}",
                    p.growth_per_min, p.growth_per_min_5m, p.growth_per_min_15m
                ),
                fmt_age(p.oldest_age_ms, p.oldest_age_is_lower_bound),
                p.peers.join(" ")
            )?;
        }
    }
    if !snap.time_wait_by_peer.is_empty() {
        writeln!(
            w,
            "TIME_WAIT by peer:\n  {:<40} {:>7} {:>16}",
            "PEER", "COUNT", "PORT RANGE USED"
        )?;
        for p in snap.time_wait_by_peer.iter().take(10) {
            writeln!(
                w,
                "  {:<40} {:>7} {:>15.1}%",
                std::net::SocketAddr::new(p.daddr, p.dport).to_string(),
                p.count,
                p.port_range_ratio * 100.0
            )?;
        }
    }
    let hists: Vec<String> = HistKind::ALL
        .iter()
        .filter_map(|k| {
            let h = snap.histograms.get(k.name())?;
            (h.count > 0).then(|| {
                format!(
                    "  {:<18} n={:<8} p50 {:>9.3}  p90 {:>9.3}  p99 {:>9.3}  max {:>9.3} ms",
                    k.name(),
                    h.count,
                    h.p50_ms,
                    h.p90_ms,
                    h.p99_ms,
                    h.max_ms
                )
            })
        })
        .collect();
    if !hists.is_empty() {
        writeln!(w, "durations:\n{}", hists.join("\n"))?;
    }
    for k in snap.histograms_by.iter().take(10) {
        let who = match (k.pid, &k.comm, k.daddr, k.dport) {
            (Some(pid), Some(comm), ..) => format!("{pid} {}", escape(comm)),
            (_, _, Some(ip), Some(port)) => std::net::SocketAddr::new(ip, port).to_string(),
            _ => "?".into(),
        };
        let parts: Vec<String> = k
            .histograms
            .iter()
            .map(|(name, h)| {
                format!(
                    "{name} n={} p50 {:.3} p99 {:.3}",
                    h.count, h.p50_ms, h.p99_ms
                )
            })
            .collect();
        writeln!(w, "  [{who}] {}", parts.join("; "))?;
    }
    writeln!(w)
}
