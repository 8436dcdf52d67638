//! The `stats` summary as text and as one JSON object (lists capped:
//! [`crate::stats::cap_lists`]); `report` prints the same.

use std::io::{self, Write};

use crate::{
    clock::{fmt_age, hms_millis},
    listeners::ListenerRow,
    output::escape,
    stacks::{Frame, StackQuality},
    stats::{CloseWaitByStack, HistKind, Snapshot},
};

/// Code-path rows printed in text (JSON has them all, capped).
pub const TEXT_CODE_PATHS: usize = 10;

/// A short note for a row whose stack is not complete ("" otherwise).
fn quality_tag(quality: &str) -> String {
    match StackQuality::from_name(quality) {
        Some(StackQuality::Complete) | None => String::new(),
        Some(StackQuality::Truncated) => "  [truncated: outermost callers cut]".into(),
        Some(StackQuality::Cut) => "  [cut: no frame pointers below]".into(),
        Some(StackQuality::NoFramePointers) => "  [no frame pointers: one frame]".into(),
        Some(StackQuality::ProcessGone) => "  [process gone: addresses only]".into(),
        Some(StackQuality::Unsymbolized) => "  [unsymbolized: addresses only]".into(),
    }
}

/// "CLOSE_WAIT by code path" (`--stacks`): the `limit` largest rows, COUNT
/// as "of the path/of the process"; names escaped.
pub fn write_code_paths(
    w: &mut impl Write,
    rows: &[CloseWaitByStack],
    limit: usize,
) -> io::Result<()> {
    writeln!(
        w,
        "CLOSE_WAIT by code path:\n  {:<8} {:<16} {:>11} {:>10}  OPENED AT",
        "PID", "COMM", "COUNT", "OLDEST"
    )?;
    for r in rows.iter().take(limit) {
        writeln!(
            w,
            "  {:<8} {:<16} {:>11} {:>10}  {}{}",
            r.pid.map_or("-".into(), |p| p.to_string()),
            escape(r.comm.as_deref().unwrap_or("-")),
            format!("{}/{}", r.count, r.process_count),
            fmt_age(r.oldest_age_ms, r.oldest_age_is_lower_bound),
            escape(&r.code_path),
            quality_tag(r.stack_quality)
        )?;
    }
    if rows.len() > limit {
        writeln!(w, "  ... {} more", rows.len() - limit)?;
    }
    Ok(())
}

/// A full stack, one frame a line (`#i  function+0xOFF  file:line
/// (module)`), then what its quality means when it is not complete; names
/// escaped. `quality` is a `stack_quality` name.
pub fn write_stack(w: &mut impl Write, frames: &[Frame], quality: &str) -> io::Result<()> {
    for (i, f) in frames.iter().enumerate() {
        writeln!(w, "    #{i:<3} {}", escape(&f.describe()))?;
    }
    if let Some(note) = StackQuality::from_name(quality).and_then(StackQuality::note) {
        writeln!(w, "    ({note})")?;
    }
    Ok(())
}

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
                [
                    (p.growth_delta, p.growth_span_ms, 60_000),
                    (p.growth_delta_5m, p.growth_span_5m_ms, 300_000),
                    (p.growth_delta_15m, p.growth_span_15m_ms, 900_000),
                ]
                .map(|(d, s, w)| crate::clock::fmt_growth_short(d, s, w))
                .join("/"),
                fmt_age(p.oldest_age_ms, p.oldest_age_is_lower_bound),
                p.peers.join(" ")
            )?;
        }
    }
    if let Some(rows) = snap
        .close_wait_by_stack
        .as_deref()
        .filter(|r| !r.is_empty())
    {
        write_code_paths(w, rows, TEXT_CODE_PATHS)?;
    }
    if !snap.close_wait_by_workload.is_empty() {
        writeln!(
            w,
            "CLOSE_WAIT by workload:\n  {:<40} {:<10} {:>7} {:>22} {:>10}  PIDS",
            "WORKLOAD", "KIND", "COUNT", "GROWTH/MIN 1m/5m/15m", "OLDEST"
        )?;
        for r in snap.close_wait_by_workload.iter().take(5) {
            writeln!(
                w,
                "  {:<40} {:<10} {:>7} {:>22} {:>10}  {}",
                escape(&r.workload),
                r.workload_kind,
                r.count,
                [
                    (r.growth_delta, r.growth_span_ms, 60_000),
                    (r.growth_delta_5m, r.growth_span_5m_ms, 300_000),
                    (r.growth_delta_15m, r.growth_span_15m_ms, 900_000),
                ]
                .map(|(d, s, w)| crate::clock::fmt_growth_short(d, s, w))
                .join("/"),
                fmt_age(r.oldest_age_ms, r.oldest_age_is_lower_bound),
                r.pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            )?;
        }
    }
    if !snap.time_wait_by_peer.is_empty() {
        // PORTS HELD: the fullest (namespace, local address) budget to the
        // destination, less what tcp_tw_reuse may take back (what doctor
        // judges); OF WHICH TW: that budget's share held by TIME_WAIT alone.
        let mut fullest: std::collections::HashMap<_, (f64, f64)> =
            std::collections::HashMap::new();
        for b in &snap.port_budgets {
            let e = fullest.entry((b.daddr, b.dport)).or_insert((0.0, 0.0));
            if b.in_use_ratio >= e.0 {
                *e = (b.in_use_ratio, b.port_range_ratio);
            }
        }
        writeln!(
            w,
            "TIME_WAIT by destination (connections opened here):\n  {:<40} {:>7} {:>8} {:>10} {:>10}  OWNER",
            "PEER", "COUNT", "RATE/s", "PORTS HELD", "BY TW"
        )?;
        for p in snap.time_wait_by_peer.iter().take(10) {
            let (held, tw) = fullest
                .get(&(p.daddr, p.dport))
                .copied()
                .unwrap_or((0.0, p.port_range_ratio));
            writeln!(
                w,
                "  {:<40} {:>7} {:>8.1} {:>9.1}% {:>9.1}%  {}",
                std::net::SocketAddr::new(p.daddr, p.dport).to_string(),
                p.count,
                p.rate_per_sec,
                held * 100.0,
                tw * 100.0,
                owner(p.pid, p.comm.as_deref()),
            )?;
        }
    }
    if !snap.time_wait_by_service.is_empty() {
        writeln!(
            w,
            "TIME_WAIT by service (connections accepted here: the server closed first):\n  {:<40} {:>7} {:>8} {:>8}  OWNER",
            "SERVICE", "COUNT", "RATE/s", "CLIENTS"
        )?;
        for s in snap.time_wait_by_service.iter().take(10) {
            writeln!(
                w,
                "  {:<40} {:>7} {:>8.1} {:>8}  {}",
                std::net::SocketAddr::new(s.saddr, s.sport).to_string(),
                s.count,
                s.rate_per_sec,
                s.clients,
                owner(s.pid, s.comm.as_deref()),
            )?;
        }
    }
    write_listeners(w, snap, TEXT_LISTENERS)?;
    if let Some(b) = snap.port_budgets.first() {
        writeln!(
            w,
            "fullest port budget: {} -> {} (netns {}): {} TIME_WAIT ({} reusable), {} open, of {} ports: {:.1}% unavailable",
            b.saddr,
            std::net::SocketAddr::new(b.daddr, b.dport),
            b.netns,
            b.time_wait,
            b.reusable,
            b.open,
            b.ports,
            b.in_use_ratio * 100.0
        )?;
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

/// Listener rows printed in text (JSON has them all, capped).
pub const TEXT_LISTENERS: usize = 10;

/// Whether a listener is worth a line in text: it dropped something, or its
/// accept queue is over half its limit.
pub fn listener_notable(r: &ListenerRow) -> bool {
    r.drops_total > 0 || (r.accept_queue_limit > 0 && r.accept_queue * 2 > r.accept_queue_limit)
}

/// "accept_queue_full 3.2/s, paws 0.1/s" (the recent rates), or the
/// totals' reasons when nothing was dropped recently.
fn reasons_line(r: &ListenerRow) -> String {
    if r.drops_per_sec_by_reason.is_empty() {
        return r
            .drops_by_reason
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
    }
    r.drops_per_sec_by_reason
        .iter()
        .map(|(k, n)| format!("{k} {n:.1}/s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "Listeners": the listeners that dropped connection attempts or whose
/// accept queue is over half full (nothing when none); then the
/// destinations with drops and no listener. Names escaped.
pub fn write_listeners(w: &mut impl Write, snap: &Snapshot, limit: usize) -> io::Result<()> {
    let notable: Vec<&ListenerRow> = snap
        .listeners
        .iter()
        .flatten()
        .filter(|r| listener_notable(r))
        .collect();
    if !notable.is_empty() {
        writeln!(
            w,
            "Listeners (dropped connection attempts, accept queues):\n  {:<28} {:>10} {:<22} {:>9} {:>8} {:>8}  REASONS",
            "LISTENER", "NETNS", "OWNER", "QUEUE", "DROPS", "DROPS/s"
        )?;
        for r in notable.iter().take(limit) {
            writeln!(
                w,
                "  {:<28} {:>10} {:<22} {:>9} {:>8} {:>8.1}  {}",
                r.listener,
                r.netns.map_or("-".into(), |n| n.to_string()),
                owner(r.pid, r.comm.as_deref()),
                format!("{}/{}", r.accept_queue, r.accept_queue_limit),
                r.drops_total,
                r.drops_per_sec,
                reasons_line(r)
            )?;
        }
        if notable.len() > limit {
            writeln!(w, "  ... {} more", notable.len() - limit)?;
        }
    }
    if let Some(d) = &snap.listen_drops
        && !d.unmatched.is_empty()
    {
        let parts: Vec<String> = d
            .unmatched
            .iter()
            .take(5)
            .map(|u| {
                let reasons: Vec<String> = u
                    .drops_by_reason
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                format!("{} ({})", u.destination, reasons.join(", "))
            })
            .collect();
        writeln!(
            w,
            "dropped with no listener: {}{}",
            parts.join("  "),
            if d.unmatched.len() > 5 {
                format!("  ... {} more", d.unmatched.len() - 5)
            } else {
                String::new()
            }
        )?;
    }
    Ok(())
}

/// "1234 nginx", escaped; "-" when unknown.
fn owner(pid: Option<u32>, comm: Option<&str>) -> String {
    match (pid, comm) {
        (Some(pid), Some(comm)) => format!("{pid} {}", escape(comm)),
        (Some(pid), None) => pid.to_string(),
        _ => "-".into(),
    }
}
