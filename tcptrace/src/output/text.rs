//! Human-readable lines for `trace`: one per transition or TIME_WAIT event,
//! aligned columns, `-` where a value is unknown.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use super::reason_name;
use crate::{
    clock::hms_millis,
    model::{Event, EventKind, Lost, TcpState},
};

pub const HEADER: &str = "TIME          PID     COMM             IP LOCAL                                         REMOTE                                        EVENT                           MS";

fn endpoint(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Milliseconds with 3 decimals, or "-".
pub fn millis(ns: Option<u64>) -> String {
    match ns {
        Some(ns) => format!("{}.{:03}", ns / 1_000_000, (ns / 1_000) % 1_000),
        None => "-".to_string(),
    }
}

/// The EVENT column.
pub fn describe(e: &Event) -> String {
    let old = e.old.map_or("?", |s| s.name());
    match e.kind {
        EventKind::Transition => format!("{old} -> {}", e.new),
        EventKind::TwBegin => {
            let sub = match e.new {
                TcpState::TimeWait => "",
                _ => " (FIN_WAIT2 orphan)",
            };
            format!("{old} -> TIME_WAIT begin{sub}")
        }
        EventKind::TwRearm => format!("TIME_WAIT rearm ({})", e.new),
        EventKind::TwEnd => format!(
            "TIME_WAIT end: {}",
            e.reason.map_or("?", reason_name)
        ),
        EventKind::Lost => "lost".to_string(),
    }
}

pub fn write_event(w: &mut impl io::Write, e: &Event, wall_ns: u64) -> io::Result<()> {
    let (pid, comm) = match &e.owner {
        Some(o) => (o.pid.to_string(), o.comm.to_str_lossy().into_owned()),
        None => ("-".to_string(), "-".to_string()),
    };
    writeln!(
        w,
        "{:<13} {:<7} {:<16} {:<2} {:<45} {:<45} {:<31} {}",
        hms_millis(wall_ns),
        pid,
        comm,
        match e.family {
            crate::model::Family::V4 => "4",
            crate::model::Family::V6 => "6",
        },
        endpoint(e.saddr, e.sport).to_string(),
        endpoint(e.daddr, e.dport).to_string(),
        describe(e),
        millis(e.prev_ns),
    )
}

pub fn write_lost(w: &mut impl io::Write, lost: &Lost, wall_ns: u64) -> io::Result<()> {
    writeln!(
        w,
        "{:<13} LOST {} events: ring buffer full {}, recursion misses {}, owner map full {}",
        hms_millis(wall_ns),
        lost.total(),
        lost.ring_full,
        lost.recursion_misses,
        lost.map_full
    )
}
