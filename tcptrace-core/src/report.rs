//! A recording summarised (`tcptrace report`): run through the same engine
//! as `stats` (seeded from the file's first snapshot, reconciled at the
//! later ones), summarised at its end: the `stats` aggregates plus where
//! events were lost and how CLOSE_WAIT grew, as text, JSON or CSV.

use std::{
    io::{self, Write},
    net::SocketAddr,
};

use serde::Serialize;

use crate::{
    clock::{WallClock, hms_millis},
    conn::DEFAULT_CAP,
    engine::Engine,
    model::Lost,
    output::escape,
    record::{Reader, Record, RecordApplier},
    stats::{HistKind, HostFacts, Snapshot},
};

/// Blocks decoded ahead of the engine.
const READ_AHEAD: usize = 4;

/// How often (recording time) CLOSE_WAIT is sampled for the timeline.
const SAMPLE_NS: u64 = 60 * 1_000_000_000;

#[derive(Clone, Debug, Serialize)]
pub struct RecordingInfo {
    pub file: String,
    pub host: String,
    pub kernel: String,
    pub hook: String,
    pub timewait_hook: String,
    pub filters: Vec<String>,
    /// Wall clock, Unix epoch ns, of the first and last record.
    pub start_ns: u64,
    pub end_ns: u64,
    pub events: u64,
    /// Set when the file ends early: offset and reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
    /// Damaged stretches skipped (their events are missing): reason,
    /// offset and length of each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// Events lost at one moment of the recording.
#[derive(Clone, Debug, Serialize)]
pub struct Gap {
    pub ts_ns: u64,
    pub ring_full: u64,
    pub recursion_misses: u64,
    pub map_full: u64,
    pub probe_failed: u64,
}

/// CLOSE_WAIT at one sample time.
#[derive(Clone, Debug, Serialize)]
pub struct TimelinePoint {
    pub ts_ns: u64,
    pub close_wait: u64,
    pub time_wait: u64,
    /// The largest holders then: (pid, comm, count).
    pub top: Vec<(Option<u32>, Option<String>, u64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub recording: RecordingInfo,
    #[serde(flatten)]
    pub summary: Snapshot,
    pub gaps: Vec<Gap>,
    pub close_wait_timeline: Vec<TimelinePoint>,
}

/// Runs a recording's records through the engine.
pub fn build<R: io::Read + Send>(reader: &mut Reader<R>, file: &str) -> Report {
    let header = reader.header.clone();
    let clock = WallClock {
        offset_ns: header.clock_offset_ns as i128,
    };
    let mut engine = Engine::new(DEFAULT_CAP);
    let host = |lost: Lost| HostFacts {
        port_range: header.port_range,
        tw_overflow: 0,
        lost,
        decode_errors: 0,
    };
    let mut applier = RecordApplier::default();
    let mut gaps = Vec::new();
    let mut timeline = Vec::new();
    let (mut first, mut last) = (None::<u64>, header.start_mono_ns);
    let mut next_sample = None::<u64>;
    let mut events = 0u64;
    // Reading (decompress, decode) runs on its own thread, a few blocks
    // ahead of the engine; blocks go back and forth without copying.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<Record>>(READ_AHEAD);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<Record>>();
    let reading = &mut *reader;
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut spare = Vec::new();
            while let Some(block) = reading.next_block_owned(spare) {
                if full_tx.send(block).is_err() {
                    break;
                }
                spare = empty_rx.try_recv().unwrap_or_default();
            }
        });
        for mut block in full_rx {
            for rec in &block {
                match rec {
                    Record::Event(_) => events += 1,
                    Record::Lost { ts_ns, lost: l } => gaps.push(Gap {
                        ts_ns: clock.wall_ns(*ts_ns),
                        ring_full: l.ring_full,
                        recursion_misses: l.recursion_misses,
                        map_full: l.map_full,
                        probe_failed: l.probe_failed,
                    }),
                    Record::Snapshot { .. } => {}
                }
                let ts = applier.apply(&mut engine, rec);
                first.get_or_insert(ts);
                last = last.max(ts);
                let due = *next_sample.get_or_insert(ts + SAMPLE_NS);
                if ts >= due {
                    let snap = engine.snapshot(ts, clock.wall_ns(ts), host(applier.lost));
                    timeline.push(point(&snap));
                    next_sample = Some(due + SAMPLE_NS * ((ts - due) / SAMPLE_NS + 1));
                }
            }
            block.clear();
            let _ = empty_tx.send(block);
        }
    });
    let mut summary = engine.snapshot(last, clock.wall_ns(last), host(applier.lost));
    timeline.push(point(&summary));
    let first = first.unwrap_or(last);
    let span_s = (last.saturating_sub(first)) as f64 / 1e9;
    summary.transitions_per_sec = if span_s > 0.0 {
        summary.transitions_total as f64 / span_s
    } else {
        0.0
    };
    Report {
        recording: RecordingInfo {
            file: file.to_string(),
            host: header.host,
            kernel: header.kernel,
            hook: header.hook,
            timewait_hook: header.timewait_hook,
            filters: header.filters,
            start_ns: clock.wall_ns(first),
            end_ns: clock.wall_ns(last),
            events,
            cut: reader
                .cut
                .as_ref()
                .map(|c| format!("{} at byte {}", c.error, c.offset)),
            skipped: {
                let mut v: Vec<String> = reader
                    .skipped
                    .iter()
                    .take(crate::stats::JSON_ROWS)
                    .map(|s| {
                        format!(
                            "{} at byte {}: {} bytes skipped",
                            s.error, s.offset, s.bytes
                        )
                    })
                    .collect();
                if reader.skipped.len() > crate::stats::JSON_ROWS {
                    v.push(format!(
                        "{} more damaged stretches",
                        reader.skipped.len() - crate::stats::JSON_ROWS
                    ));
                }
                v
            },
        },
        summary,
        gaps,
        close_wait_timeline: timeline,
    }
}

fn point(s: &Snapshot) -> TimelinePoint {
    TimelinePoint {
        ts_ns: s.ts_ns,
        close_wait: s.states.get("CLOSE_WAIT").copied().unwrap_or(0),
        time_wait: s.states.get("TIME_WAIT").copied().unwrap_or(0),
        top: s
            .close_wait_by_process
            .iter()
            .take(3)
            .map(|p| (p.pid, p.comm.clone(), p.count))
            .collect(),
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
    crate::output::stats::write_text(w, &r.summary)?;
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
    writeln!(w, "CLOSE_WAIT over time:")?;
    let step = r.close_wait_timeline.len().div_ceil(30).max(1);
    for p in r.close_wait_timeline.iter().step_by(step) {
        let top: Vec<String> = p
            .top
            .iter()
            .map(|(pid, comm, n)| {
                format!(
                    "{}/{} {n}",
                    pid.map_or("-".into(), |p| p.to_string()),
                    escape(comm.as_deref().unwrap_or("?"))
                )
            })
            .collect();
        writeln!(
            w,
            "  {}  CLOSE_WAIT {:>7}  TIME_WAIT {:>7}  {}",
            hms_millis(p.ts_ns),
            p.close_wait,
            p.time_wait,
            top.join("  ")
        )?;
    }
    Ok(())
}

/// Long-format CSV: `section,key,field,value`, one fact per row.
pub fn write_csv(w: &mut impl Write, r: &Report) -> io::Result<()> {
    let mut c = csv::Writer::from_writer(w);
    // Names from outside (process names, the host) escaped like every
    // other text sink: a quoted newline is valid CSV, not a safe terminal.
    let mut row = |section: &str, key: &str, field: &str, value: String| {
        c.write_record([
            section,
            escape(key).as_ref(),
            field,
            escape(&value).as_ref(),
        ])
    };
    row("section", "key", "field", "value".into()).map_err(io::Error::other)?;
    let s = &r.summary;
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut push = |a: &str, b: String, f: &str, v: String| rows.push((a.into(), b, f.into(), v));
    for (k, v) in &s.states {
        push("states", k.to_string(), "count", v.to_string());
    }
    for p in &s.close_wait_by_process {
        let key = format!(
            "{} {}",
            p.pid.map_or("-".into(), |p| p.to_string()),
            p.comm.as_deref().unwrap_or("?")
        );
        push(
            "close_wait_by_process",
            key.clone(),
            "count",
            p.count.to_string(),
        );
        push(
            "close_wait_by_process",
            key.clone(),
            "growth_per_min",
            p.growth_per_min.to_string(),
        );
        push(
            "close_wait_by_process",
            key,
            "oldest_age_ms",
            p.oldest_age_ms.to_string(),
        );
    }
    for p in &s.time_wait_by_peer {
        let key = SocketAddr::new(p.daddr, p.dport).to_string();
        push(
            "time_wait_by_peer",
            key.clone(),
            "count",
            p.count.to_string(),
        );
        push(
            "time_wait_by_peer",
            key,
            "port_range_ratio",
            p.port_range_ratio.to_string(),
        );
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
                push("histograms", k.name().into(), f, v.to_string());
            }
        }
    }
    for (k, v) in &s.lost {
        push("lost", k.to_string(), "count", v.to_string());
    }
    for g in &r.gaps {
        let key = g.ts_ns.to_string();
        push("gaps", key.clone(), "ring_full", g.ring_full.to_string());
        push(
            "gaps",
            key.clone(),
            "recursion_misses",
            g.recursion_misses.to_string(),
        );
        push("gaps", key.clone(), "map_full", g.map_full.to_string());
        push("gaps", key, "probe_failed", g.probe_failed.to_string());
    }
    for p in &r.close_wait_timeline {
        push(
            "close_wait_timeline",
            p.ts_ns.to_string(),
            "close_wait",
            p.close_wait.to_string(),
        );
        push(
            "close_wait_timeline",
            p.ts_ns.to_string(),
            "time_wait",
            p.time_wait.to_string(),
        );
    }
    for (a, b, f, v) in rows {
        row(&a, &b, &f, v).map_err(io::Error::other)?;
    }
    c.flush()
}
