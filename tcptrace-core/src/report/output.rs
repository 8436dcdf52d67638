//! A report as text (for people: holders first, then the timeline, then the
//! `stats` summary) and as long-format CSV (`section,key,field,value,workload`,
//! one fact per row; `workload` names the row's workload where it has one,
//! else it is empty). Names from outside are escaped in both.

use std::{
    io::{self, Write},
    net::SocketAddr,
};

use super::{Held, Report, TimelinePoint, WorkloadFields, timeline::text_top, window::fmt_ns};
use crate::{
    clock::{fmt_age, fmt_ms, hms_millis},
    output::escape,
    stats::HistKind,
};

/// Holder rows printed per text section (JSON and CSV list them all).
const TEXT_ROWS: usize = 20;
/// Timeline lines printed at most (JSON and CSV have every point).
const TEXT_POINTS: usize = 120;

/// "1234 nginx", escaped; "-" when unknown.
fn owner(pid: Option<u32>, comm: Option<&str>) -> String {
    match (pid, comm) {
        (Some(pid), Some(comm)) => format!("{pid} {}", escape(comm)),
        (Some(pid), None) => pid.to_string(),
        _ => "-".into(),
    }
}

/// Width of the text WORKLOAD column.
const WORKLOAD_WIDTH: usize = 24;

/// A workload for a text column: escaped, cut in the middle to
/// [`WORKLOAD_WIDTH`] characters (`first11…last12`); "-" when unknown.
fn workload_cell(w: &WorkloadFields) -> String {
    let Some(name) = w.workload.as_deref() else {
        return "-".into();
    };
    let name = escape(name);
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= WORKLOAD_WIDTH {
        return name.into_owned();
    }
    let head: String = chars[..11].iter().collect();
    let tail: String = chars[chars.len() - 12..].iter().collect();
    format!("{head}…{tail}")
}

/// "1234 nginx (payments.service)": the owner and its workload when known.
fn owner_with_workload(pid: Option<u32>, comm: Option<&str>, w: &WorkloadFields) -> String {
    let o = owner(pid, comm);
    match w.workload.as_deref() {
        Some(name) => format!("{o} ({})", escape(name)),
        None => o,
    }
}

fn ms(v: u64) -> String {
    fmt_ms(v as f64)
}

fn more(w: &mut impl Write, n: usize) -> io::Result<()> {
    if n > TEXT_ROWS {
        writeln!(
            w,
            "  ... {} more (--json or --csv lists them all)",
            n - TEXT_ROWS
        )?;
    }
    Ok(())
}

/// What the summary is the state of.
fn summary_title(r: &Report) -> String {
    let when = hms_millis(r.window.to_ns);
    if r.window.at_ns.is_some() {
        format!("state at {when} (--at)")
    } else if r.window.to_ns < r.recording.end_ns {
        format!("state at {when} (end of the window)")
    } else {
        format!("state at {when} (end of the recording)")
    }
}

/// The report as text (names escaped).
pub fn write_text(w: &mut impl Write, r: &Report) -> io::Result<()> {
    let i = &r.recording;
    writeln!(
        w,
        "recording {}: host {}, kernel {}, {} -> {} ({:.0} s), {} events, hooks {}+{}{}",
        escape(&i.file),
        escape(&i.host),
        escape(&i.kernel),
        hms_millis(i.start_ns),
        hms_millis(i.end_ns),
        i.end_ns.saturating_sub(i.start_ns) as f64 / 1e9,
        i.events,
        escape(&i.hook),
        escape(&i.timewait_hook),
        if i.filters.is_empty() {
            String::new()
        } else {
            format!(", filters {}", escape(&i.filters.join(" ")))
        }
    )?;
    let win = &r.window;
    if win.from_ns != i.start_ns || win.to_ns != i.end_ns {
        writeln!(
            w,
            "window {} -> {} ({}), {} events{}",
            hms_millis(win.from_ns),
            hms_millis(win.to_ns),
            fmt_ns(win.to_ns.saturating_sub(win.from_ns)),
            win.events,
            if win.at_ns.is_some() {
                ": holders and timeline up to --at, the summary at it"
            } else {
                ""
            }
        )?;
    }
    write_holders(w, r)?;
    write_listeners(w, r)?;
    write_timeline(w, r)?;
    writeln!(w, "{}:", summary_title(r))?;
    crate::output::stats::write_text(w, &r.summary)?;
    if r.show_stacks {
        write_leading_stacks(w, r)?;
    }
    if r.gaps.is_empty() {
        writeln!(w, "gaps: none (no event was lost)")?;
    } else {
        writeln!(w, "gaps (events lost):")?;
        for g in &r.gaps {
            writeln!(
                w,
                "  {}  ring_full {}  recursion_misses {}  map_full {}  probe_failed {}",
                hms_millis(g.ts_ns),
                g.ring_full,
                g.recursion_misses,
                g.map_full,
                g.probe_failed
            )?;
        }
    }
    Ok(())
}

/// `--stacks`: the full stack of each process's leading code path (its
/// largest row with a named stack) at the summary's moment.
fn write_leading_stacks(w: &mut impl Write, r: &Report) -> io::Result<()> {
    let Some(rows) = r.summary.close_wait_by_stack.as_deref() else {
        return Ok(());
    };
    // Rows are sorted by count: a process's first named row leads.
    let mut seen = std::collections::HashSet::new();
    let leading: Vec<_> = rows
        .iter()
        .filter(|row| !row.frames.is_empty() && seen.insert(row.pid))
        .take(TEXT_ROWS)
        .collect();
    if leading.is_empty() {
        return writeln!(w, "stacks: none named in the recording at this moment");
    }
    for row in leading {
        writeln!(
            w,
            "stack of {} ({} of {} in CLOSE_WAIT): {}",
            owner(row.pid, row.comm.as_deref()),
            row.count,
            row.process_count,
            escape(&row.code_path)
        )?;
        crate::output::stats::write_stack(w, &row.frames, row.stack_quality)?;
    }
    Ok(())
}

/// "5.0s" or "5.0s (3.2s held)" when it came and went.
fn held_for(h: &Held) -> String {
    let total = h.held_for_ms;
    if h.held_total_ms + 1 < total {
        format!("{} ({} held)", ms(total), ms(h.held_total_ms))
    } else {
        ms(total)
    }
}

/// The columns every CLOSE_WAIT holder row ends with: PEAK, WHEN, HELD FOR,
/// OLDEST, END, PEERS.
fn held_cells(h: &Held, oldest_age_ms: u64, lower_bound: bool, peers: &[String]) -> String {
    format!(
        "{:>6}  {:<12}  {:<20} {:>10} {:>6}  {}",
        h.peak,
        hms_millis(h.peak_ns),
        held_for(h),
        fmt_age(oldest_age_ms, lower_bound),
        h.count_at_end,
        escape(&peers.join(" "))
    )
}

/// "accept_queue_full 37, no_listener 1".
fn by_reason(m: &std::collections::BTreeMap<&'static str, u64>) -> String {
    let mut v: Vec<(&&str, &u64)> = m.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The listeners section (recordings with listener records only).
fn write_listeners(w: &mut impl Write, r: &Report) -> io::Result<()> {
    let Some(l) = &r.listeners_in_window else {
        return Ok(());
    };
    writeln!(
        w,
        "Listeners in the window: {} connection attempts dropped{}; {} reported by the kernel ({} more it only counted); {} samples",
        l.drops_total,
        if l.drops_total > 0 {
            format!(" ({})", by_reason(&l.drops_by_reason))
        } else {
            String::new()
        },
        l.kernel_reported,
        l.kernel_suppressed,
        l.samples
    )?;
    if !l.listeners.is_empty() {
        writeln!(
            w,
            "  {:<24} {:<11} {:<24} {:<24} {:>11} {:>5} {:>8} {:>8}  {:<25}  REASONS",
            "LISTENER",
            "NETNS",
            "OWNER",
            "WORKLOAD",
            "QUEUE/LIMIT",
            "PEAK",
            "DROPS",
            "DROPS/S",
            "FIRST -> LAST DROP"
        )?;
        for row in l.listeners.iter().take(TEXT_ROWS) {
            let when = match (row.first_drop_ns, row.last_drop_ns) {
                (Some(a), Some(b)) => format!("{} -> {}", hms_millis(a), hms_millis(b)),
                _ => "-".into(),
            };
            writeln!(
                w,
                "  {:<24} {:<11} {:<24} {:<24} {:>11} {:>5} {:>8} {:>8.1}  {:<25}  {}{}",
                row.listener,
                row.netns.map_or("-".into(), |n| n.to_string()),
                owner(row.pid, row.comm.as_deref()),
                workload_cell(&row.workload),
                format!("{}/{}", row.accept_queue, row.accept_queue_limit),
                row.accept_queue_peak,
                row.drops_total,
                row.drops_per_sec,
                when,
                by_reason(&row.drops_by_reason),
                if row.closed { " (closed)" } else { "" }
            )?;
        }
        more(w, l.listeners.len())?;
    }
    if !l.unmatched.is_empty() {
        writeln!(w, "  dropped with no listener:")?;
        for u in l.unmatched.iter().take(TEXT_ROWS) {
            writeln!(
                w,
                "    {:<24} netns {:<11} {:>8}  {}",
                u.destination,
                u.netns.map_or("-".into(), |n| n.to_string()),
                u.drops_total,
                by_reason(&u.drops_by_reason)
            )?;
        }
        more(w, l.unmatched.len())?;
    }
    Ok(())
}

fn write_holders(w: &mut impl Write, r: &Report) -> io::Result<()> {
    let dropped = &r.holders_dropped;
    if r.close_wait_holders.is_empty() {
        writeln!(w, "CLOSE_WAIT holders: none")?;
    } else {
        writeln!(
            w,
            "CLOSE_WAIT holders (every process that held CLOSE_WAIT):\n  {:<8} {:<16} {:<24} {:>6}  {:<12}  {:<20} {:>10} {:>6}  PEERS",
            "PID", "COMM", "WORKLOAD", "PEAK", "WHEN", "HELD FOR", "OLDEST", "END"
        )?;
        for h in r.close_wait_holders.iter().take(TEXT_ROWS) {
            writeln!(
                w,
                "  {:<8} {:<16} {:<24} {}",
                h.pid.map_or("-".into(), |p| p.to_string()),
                escape(h.comm.as_deref().unwrap_or("-")),
                workload_cell(&h.workload),
                held_cells(
                    &h.held,
                    h.oldest_age_ms,
                    h.oldest_age_is_lower_bound,
                    &h.peers
                )
            )?;
        }
        more(w, r.close_wait_holders.len())?;
    }
    if dropped.close_wait > 0 {
        writeln!(
            w,
            "  ({} more processes not kept: at most {} are)",
            dropped.close_wait,
            super::MAX_HOLDERS
        )?;
    }
    if !r.close_wait_workload_holders.is_empty() {
        writeln!(
            w,
            "CLOSE_WAIT by workload (the owners' units, containers and pods, as recorded):\n  {:<40} {:<10} {:>6}  {:<12}  {:<20} {:>10} {:>6}  PEERS",
            "WORKLOAD", "KIND", "PEAK", "WHEN", "HELD FOR", "OLDEST", "END"
        )?;
        for h in r.close_wait_workload_holders.iter().take(TEXT_ROWS) {
            writeln!(
                w,
                "  {:<40} {:<10} {}",
                escape(h.workload.workload.as_deref().unwrap_or("-")),
                h.workload.workload_kind.unwrap_or("-"),
                held_cells(
                    &h.held,
                    h.oldest_age_ms,
                    h.oldest_age_is_lower_bound,
                    &h.peers
                )
            )?;
        }
        more(w, r.close_wait_workload_holders.len())?;
    }
    if dropped.close_wait_workload > 0 {
        writeln!(
            w,
            "  ({} more cgroups not kept: at most {} are)",
            dropped.close_wait_workload,
            super::MAX_HOLDERS
        )?;
    }
    if r.time_wait_destination_holders.is_empty() {
        writeln!(w, "TIME_WAIT by destination: none")?;
    } else {
        writeln!(
            w,
            "TIME_WAIT by destination (connections opened here):\n  {:<40} {:>6}  {:<12}  {:<20} {:>6} {:>7} {:>8}  OWNER",
            "DESTINATION", "PEAK", "WHEN", "HELD FOR", "END", "BEGUN", "PORTS%"
        )?;
        for h in r.time_wait_destination_holders.iter().take(TEXT_ROWS) {
            writeln!(
                w,
                "  {:<40} {:>6}  {:<12}  {:<20} {:>6} {:>7} {:>7.1}%  {}",
                SocketAddr::new(h.daddr, h.dport).to_string(),
                h.held.peak,
                hms_millis(h.held.peak_ns),
                held_for(&h.held),
                h.held.count_at_end,
                h.begun,
                h.port_share_at_peak * 100.0,
                owner_with_workload(h.pid, h.comm.as_deref(), &h.workload)
            )?;
        }
        more(w, r.time_wait_destination_holders.len())?;
    }
    if dropped.time_wait_destination > 0 {
        writeln!(
            w,
            "  ({} more destinations not kept)",
            dropped.time_wait_destination
        )?;
    }
    if r.time_wait_service_holders.is_empty() {
        writeln!(w, "TIME_WAIT by service: none")?;
    } else {
        writeln!(
            w,
            "TIME_WAIT by service (connections accepted here: the server closed first):\n  {:<40} {:>10} {:>6}  {:<12}  {:<20} {:>6} {:>7} {:>8}  OWNER",
            "SERVICE", "NETNS", "PEAK", "WHEN", "HELD FOR", "END", "BEGUN", "RATE/s"
        )?;
        for h in r.time_wait_service_holders.iter().take(TEXT_ROWS) {
            writeln!(
                w,
                "  {:<40} {:>10} {:>6}  {:<12}  {:<20} {:>6} {:>7} {:>8.1}  {}",
                SocketAddr::new(h.saddr, h.sport).to_string(),
                h.netns,
                h.held.peak,
                hms_millis(h.held.peak_ns),
                held_for(&h.held),
                h.held.count_at_end,
                h.begun,
                h.rate_per_sec,
                owner_with_workload(h.pid, h.comm.as_deref(), &h.workload)
            )?;
        }
        more(w, r.time_wait_service_holders.len())?;
    }
    if dropped.time_wait_service > 0 {
        writeln!(
            w,
            "  ({} more services not kept)",
            dropped.time_wait_service
        )?;
    }
    Ok(())
}

fn write_timeline(w: &mut impl Write, r: &Report) -> io::Result<()> {
    let points = &r.close_wait_timeline;
    let every = points.len().div_ceil(TEXT_POINTS).max(1);
    writeln!(
        w,
        "timeline (step {}, {} points{}):\n  {:<12}  {:>17}  {:>17}  TOP",
        fmt_ns(r.window.step_ns),
        points.len(),
        if every > 1 {
            format!("; every {every}th shown, --json or --csv has all")
        } else {
            String::new()
        },
        "TIME",
        "CLOSE_WAIT (MAX)",
        "TIME_WAIT (MAX)"
    )?;
    let last = points.len().saturating_sub(1);
    let shown: Vec<(&TimelinePoint, String)> = points
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0 || *i == last)
        .map(|(_, p)| {
            let line = format!(
                "{:>17}  {:>17}  {}",
                format!("{} ({})", p.close_wait, p.close_wait_max),
                format!("{} ({})", p.time_wait, p.time_wait_max),
                text_top(p)
            );
            (p, line)
        })
        .collect();
    // A run of identical points is its first line and how long it lasted.
    let mut i = 0;
    while i < shown.len() {
        let (p, line) = &shown[i];
        writeln!(w, "  {:<12}  {}", hms_millis(p.ts_ns), line.trim_end())?;
        let run = shown[i + 1..].iter().take_while(|(_, l)| l == line).count();
        if run >= 2 {
            writeln!(
                w,
                "  {:<12}  (the same for {} more points, to {})",
                "",
                run,
                hms_millis(shown[i + run].0.ts_ns)
            )?;
            i += run + 1;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Long-format CSV: `section,key,field,value,workload`, one fact per row.
pub fn write_csv(w: &mut impl Write, r: &Report) -> io::Result<()> {
    let mut c = csv::Writer::from_writer(w);
    // Names from outside (process names, the host) escaped like every
    // other text sink: a quoted newline is valid CSV, not a safe terminal.
    let mut row = |section: &str, key: &str, field: &str, value: String, workload: &str| {
        c.write_record([
            section,
            escape(key).as_ref(),
            field,
            escape(&value).as_ref(),
            escape(workload).as_ref(),
        ])
    };
    row("section", "key", "field", "value".into(), "workload").map_err(io::Error::other)?;
    let s = &r.summary;
    // (section, key, field, value, workload): the workload column is empty
    // for rows with none; it is set for holder rows below.
    let mut rows = CsvRows::default();
    for (k, v) in &s.states {
        rows.add("states", k.to_string(), "count", v.to_string());
    }
    for p in &s.close_wait_by_process {
        let key = format!(
            "{} {}",
            p.pid.map_or("-".into(), |p| p.to_string()),
            p.comm.as_deref().unwrap_or("?")
        );
        rows.add(
            "close_wait_by_process",
            key.clone(),
            "count",
            p.count.to_string(),
        );
        rows.add(
            "close_wait_by_process",
            key.clone(),
            "growth_per_min",
            p.growth_per_min.to_string(),
        );
        rows.add(
            "close_wait_by_process",
            key,
            "oldest_age_ms",
            p.oldest_age_ms.to_string(),
        );
    }
    for p in &s.time_wait_by_peer {
        let key = SocketAddr::new(p.daddr, p.dport).to_string();
        rows.add(
            "time_wait_by_peer",
            key.clone(),
            "count",
            p.count.to_string(),
        );
        rows.add(
            "time_wait_by_peer",
            key,
            "port_range_ratio",
            p.port_range_ratio.to_string(),
        );
    }
    for v in &s.time_wait_by_service {
        let key = format!("{} {}", v.netns, SocketAddr::new(v.saddr, v.sport));
        rows.add(
            "time_wait_by_service",
            key.clone(),
            "count",
            v.count.to_string(),
        );
        rows.add(
            "time_wait_by_service",
            key,
            "comm",
            v.comm.clone().unwrap_or_default(),
        );
    }
    for b in &s.port_budgets {
        let key = format!(
            "{} {} {}",
            b.netns,
            b.saddr,
            SocketAddr::new(b.daddr, b.dport)
        );
        for (field, value) in [
            ("time_wait", b.time_wait.to_string()),
            ("open", b.open.to_string()),
            ("ports", b.ports.to_string()),
            ("in_use_ratio", b.in_use_ratio.to_string()),
            ("port_range_ratio", b.port_range_ratio.to_string()),
        ] {
            rows.add("port_budgets", key.clone(), field, value);
        }
    }
    for k in HistKind::ALL {
        if let Some(h) = s.histograms.get(k.name()) {
            for (f, v) in [
                ("count", h.count as f64),
                ("p50_ms", h.p50_ms),
                ("p90_ms", h.p90_ms),
                ("p99_ms", h.p99_ms),
                ("max_ms", h.max_ms),
            ] {
                rows.add("histograms", k.name().into(), f, v.to_string());
            }
        }
    }
    for (k, v) in &s.lost {
        rows.add("lost", k.to_string(), "count", v.to_string());
    }
    for g in &r.gaps {
        let key = g.ts_ns.to_string();
        rows.add("gaps", key.clone(), "ring_full", g.ring_full.to_string());
        rows.add(
            "gaps",
            key.clone(),
            "recursion_misses",
            g.recursion_misses.to_string(),
        );
        rows.add("gaps", key.clone(), "map_full", g.map_full.to_string());
        rows.add("gaps", key, "probe_failed", g.probe_failed.to_string());
    }
    for p in &r.close_wait_timeline {
        let key = p.ts_ns.to_string();
        for (f, v) in [
            ("close_wait", p.close_wait),
            ("time_wait", p.time_wait),
            ("close_wait_max", p.close_wait_max),
            ("time_wait_max", p.time_wait_max),
        ] {
            rows.add("close_wait_timeline", key.clone(), f, v.to_string());
        }
    }
    let win = &r.window;
    for (f, v) in [
        ("from_ns", Some(win.from_ns)),
        ("to_ns", Some(win.to_ns)),
        ("at_ns", win.at_ns),
        ("events", Some(win.events)),
        ("step_ns", Some(win.step_ns)),
        ("points", Some(win.points)),
    ] {
        if let Some(v) = v {
            rows.add("window", "window".into(), f, v.to_string());
        }
    }
    let held_rows = |rows: &mut CsvRows, section: &str, key: &str, h: &Held| {
        for (f, v) in [
            ("peak", h.peak),
            ("peak_ns", h.peak_ns),
            ("first_ns", h.first_ns),
            ("last_ns", h.last_ns),
            ("held_for_ms", h.held_for_ms),
            ("held_total_ms", h.held_total_ms),
            ("count_at_end", h.count_at_end),
        ] {
            rows.add(section, key.to_string(), f, v.to_string());
        }
    };
    // Holder rows: `name` sets their workload column.
    for h in &r.close_wait_holders {
        rows.name(&h.workload);
        let key = format!(
            "{} {}",
            h.pid.map_or("-".into(), |p| p.to_string()),
            h.comm.as_deref().unwrap_or("?")
        );
        held_rows(&mut rows, "close_wait_holders", &key, &h.held);
        rows.add(
            "close_wait_holders",
            key.clone(),
            "oldest_age_ms",
            h.oldest_age_ms.to_string(),
        );
        rows.add("close_wait_holders", key, "peers", h.peers.join(" "));
    }
    for h in &r.close_wait_workload_holders {
        rows.name(&h.workload);
        let key = h.workload.workload.clone().unwrap_or_default();
        let section = "close_wait_workload_holders";
        rows.add(
            section,
            key.clone(),
            "workload_kind",
            h.workload.workload_kind.unwrap_or_default().to_string(),
        );
        for (f, v) in [
            ("cgroup_path", &h.workload.cgroup_path),
            ("unit", &h.workload.unit),
            ("container", &h.workload.container),
            ("pod", &h.workload.pod),
            ("namespace", &h.workload.namespace),
        ] {
            if let Some(v) = v {
                rows.add(section, key.clone(), f, v.clone());
            }
        }
        held_rows(&mut rows, section, &key, &h.held);
        rows.add(
            section,
            key.clone(),
            "oldest_age_ms",
            h.oldest_age_ms.to_string(),
        );
        rows.add(section, key, "peers", h.peers.join(" "));
    }
    for h in &r.time_wait_destination_holders {
        rows.name(&h.workload);
        let key = SocketAddr::new(h.daddr, h.dport).to_string();
        let section = "time_wait_destination_holders";
        rows.add(section, key.clone(), "owner", owner_plain(h.pid, &h.comm));
        held_rows(&mut rows, section, &key, &h.held);
        rows.add(section, key.clone(), "begun", h.begun.to_string());
        rows.add(section, key.clone(), "ports", h.ports.to_string());
        rows.add(
            section,
            key,
            "port_share_at_peak",
            h.port_share_at_peak.to_string(),
        );
    }
    for h in &r.time_wait_service_holders {
        rows.name(&h.workload);
        let key = format!("{} {}", h.netns, SocketAddr::new(h.saddr, h.sport));
        let section = "time_wait_service_holders";
        rows.add(section, key.clone(), "owner", owner_plain(h.pid, &h.comm));
        held_rows(&mut rows, section, &key, &h.held);
        rows.add(section, key.clone(), "begun", h.begun.to_string());
        rows.add(section, key, "rate_per_sec", h.rate_per_sec.to_string());
    }
    rows.workload.clear();
    let d = &r.holders_dropped;
    for (f, v) in [
        ("close_wait", d.close_wait),
        ("close_wait_workload", d.close_wait_workload),
        ("time_wait_destination", d.time_wait_destination),
        ("time_wait_service", d.time_wait_service),
    ] {
        rows.add("holders_dropped", f.into(), "count", v.to_string());
    }
    if let Some(l) = &r.listeners_in_window {
        // Key `netns listener` (`-` for no namespace).
        for row in &l.listeners {
            let key = format!(
                "{} {}",
                row.netns.map_or("-".into(), |n| n.to_string()),
                row.listener
            );
            rows.workload = row.workload.workload.clone().unwrap_or_default();
            let section = "listeners";
            rows.add(
                section,
                key.clone(),
                "comm",
                row.comm.clone().unwrap_or_default(),
            );
            rows.add(
                section,
                key.clone(),
                "accept_queue",
                row.accept_queue.to_string(),
            );
            rows.add(
                section,
                key.clone(),
                "accept_queue_limit",
                row.accept_queue_limit.to_string(),
            );
            rows.add(
                section,
                key.clone(),
                "accept_queue_peak",
                row.accept_queue_peak.to_string(),
            );
            rows.add(
                section,
                key.clone(),
                "drops_total",
                row.drops_total.to_string(),
            );
            for (reason, n) in &row.drops_by_reason {
                rows.add(
                    section,
                    key.clone(),
                    &format!("drops_{reason}"),
                    n.to_string(),
                );
            }
        }
        rows.workload.clear();
        for u in &l.unmatched {
            let key = format!(
                "{} {}",
                u.netns.map_or("-".into(), |n| n.to_string()),
                u.destination
            );
            for (reason, n) in &u.drops_by_reason {
                rows.add(
                    "listener_drops_unmatched",
                    key.clone(),
                    &format!("drops_{reason}"),
                    n.to_string(),
                );
            }
        }
    }
    for (a, b, f, v, wl) in rows.rows {
        row(&a, &b, &f, v, &wl).map_err(io::Error::other)?;
    }
    c.flush()
}

/// One CSV row: section, key, field, value, workload.
type CsvRow = (String, String, String, String, String);

/// The rows so far, and the workload column of the next ones.
#[derive(Default)]
struct CsvRows {
    rows: Vec<CsvRow>,
    /// Set while a holder's rows are added; empty otherwise.
    workload: String,
}

impl CsvRows {
    fn add(&mut self, section: &str, key: String, field: &str, value: String) {
        self.rows.push((
            section.into(),
            key,
            field.into(),
            value,
            self.workload.clone(),
        ));
    }

    /// The workload column of the rows that follow.
    fn name(&mut self, w: &WorkloadFields) {
        self.workload = w.workload.clone().unwrap_or_default();
    }
}

/// "1234 nginx" unescaped (the CSV writer escapes); "-" when unknown.
fn owner_plain(pid: Option<u32>, comm: &Option<String>) -> String {
    match (pid, comm) {
        (Some(pid), Some(comm)) => format!("{pid} {comm}"),
        (Some(pid), None) => pid.to_string(),
        _ => "-".into(),
    }
}
