//! JSON Lines printer; the schema is documented in [`crate::output`].

use std::{fmt, io, net::IpAddr};

use serde::{Serialize, Serializer};

use super::{kind_name, reason_name};
use crate::model::{Comm, Event, Lost};

struct Hex(u64);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", self.0))
    }
}

struct CommStr(Comm);

impl Serialize for CommStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl fmt::Debug for CommStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Serialize)]
struct JsonEvent {
    ts_ns: u64,
    kind: &'static str,
    pid: Option<u32>,
    tid: Option<u32>,
    comm: Option<CommStr>,
    family: &'static str,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    old: Option<&'static str>,
    new: &'static str,
    prev_state_ns: Option<u64>,
    netns: Option<u32>,
    cgroup: Option<u64>,
    reason: Option<&'static str>,
    sk: Hex,
    link: Option<Hex>,
    owner_from_listener: bool,
}

/// Writes one event as a JSON line. `wall_ns` is the event's wall-clock time.
pub fn write_event(w: &mut impl io::Write, e: &Event, wall_ns: u64) -> io::Result<()> {
    let j = JsonEvent {
        ts_ns: wall_ns,
        kind: kind_name(e.kind),
        pid: e.owner.map(|o| o.pid),
        tid: e.owner.map(|o| o.tid),
        comm: e.owner.map(|o| CommStr(o.comm)),
        family: e.family.name(),
        saddr: e.saddr,
        sport: e.sport,
        daddr: e.daddr,
        dport: e.dport,
        old: e.old.map(|s| s.name()),
        new: e.new.name(),
        prev_state_ns: e.prev_ns,
        netns: e.netns,
        cgroup: e.owner.map(|o| o.cgroup),
        reason: e.reason.map(reason_name),
        sk: Hex(e.sk),
        link: e.link.map(Hex),
        owner_from_listener: e.owner.is_some_and(|o| o.from_listener),
    };
    serde_json::to_writer(&mut *w, &j)?;
    w.write_all(b"\n")
}

#[derive(Serialize)]
struct JsonLost {
    ts_ns: u64,
    kind: &'static str,
    ring_full: u64,
    recursion_misses: u64,
    map_full: u64,
    total: u64,
}

pub fn write_lost(w: &mut impl io::Write, lost: &Lost, wall_ns: u64) -> io::Result<()> {
    let j = JsonLost {
        ts_ns: wall_ns,
        kind: "lost",
        ring_full: lost.ring_full,
        recursion_misses: lost.recursion_misses,
        map_full: lost.map_full,
        total: lost.total(),
    };
    serde_json::to_writer(&mut *w, &j)?;
    w.write_all(b"\n")
}
