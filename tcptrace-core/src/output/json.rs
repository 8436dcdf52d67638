//! JSON Lines printer; the schema is documented in [`crate::output`].

use std::{fmt, io, net::IpAddr};

use serde::{Serialize, Serializer};

use super::{kind_name, no_time_wait, reason_name, reuser, tw_end_reason};
use crate::{
    model::{Comm, Event, EventKind, Lost},
    workload::Workload,
};

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
struct JsonEvent<'a> {
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
    reused_by_pid: Option<u32>,
    reused_by_comm: Option<CommStr>,
    no_time_wait: Option<&'static str>,
    /// tw_substate only: how it was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    found_by: Option<&'static str>,
    /// tw_substate only: wall-clock time it was last known in `old`.
    #[serde(skip_serializing_if = "Option::is_none")]
    changed_after_ns: Option<u64>,
    cgroup_path: Option<&'a str>,
    workload: Option<&'a str>,
    workload_kind: Option<&'static str>,
    unit: Option<&'a str>,
    container: Option<&'a str>,
    container_id: Option<&'a str>,
    pod: Option<&'a str>,
    pod_uid: Option<&'a str>,
    namespace: Option<&'a str>,
    qos: Option<&'static str>,
}

/// Writes one event as a JSON line. `wall_ns` is the event's wall-clock time.
pub fn write_event(w: &mut impl io::Write, e: &Event, wall_ns: u64) -> io::Result<()> {
    write_event_with(w, e, wall_ns, None)
}

/// [`write_event`] naming the owner's `workload` (its fields are null when
/// it is `None`).
pub fn write_event_with(
    w: &mut impl io::Write,
    e: &Event,
    wall_ns: u64,
    workload: Option<&Workload>,
) -> io::Result<()> {
    let found = e.kind == EventKind::TwSubstate;
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
        reason: tw_end_reason(e).map(reason_name),
        sk: Hex(e.sk),
        link: e.link.map(Hex),
        owner_from_listener: e.owner.is_some_and(|o| o.from_listener),
        reused_by_pid: reuser(e).map(|r| r.pid),
        reused_by_comm: reuser(e).and_then(|r| r.comm).map(CommStr),
        no_time_wait: no_time_wait(e).map(reason_name),
        found_by: found.then_some("reconciliation"),
        changed_after_ns: found.then(|| wall_ns.saturating_sub(e.prev_ns.unwrap_or(0))),
        cgroup_path: workload.and_then(|w| w.cgroup_path.as_deref()),
        workload: workload.map(|w| &*w.display),
        workload_kind: workload.map(|w| w.kind.as_str()),
        unit: workload.and_then(|w| w.unit.as_deref()),
        container: workload.and_then(|w| w.container.as_deref()),
        container_id: workload.and_then(|w| w.container_id.as_deref()),
        pod: workload.and_then(|w| w.pod.as_deref()),
        pod_uid: workload.and_then(|w| w.pod_uid.as_deref()),
        namespace: workload.and_then(|w| w.namespace.as_deref()),
        qos: workload.and_then(|w| w.qos).map(|q| q.as_str()),
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
    probe_failed: u64,
    total: u64,
}

pub fn write_lost(w: &mut impl io::Write, lost: &Lost, wall_ns: u64) -> io::Result<()> {
    let j = JsonLost {
        ts_ns: wall_ns,
        kind: "lost",
        ring_full: lost.ring_full,
        recursion_misses: lost.recursion_misses,
        map_full: lost.map_full,
        probe_failed: lost.probe_failed,
        total: lost.total(),
    };
    serde_json::to_writer(&mut *w, &j)?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use serde_json::{Value, json};

    use super::*;
    use crate::model::{EventKind, Family, Owner, Reuser, TcpState, TwEndReason};

    const EVENT_FIELDS: [&str; 32] = [
        "ts_ns",
        "kind",
        "pid",
        "tid",
        "comm",
        "family",
        "saddr",
        "sport",
        "daddr",
        "dport",
        "old",
        "new",
        "prev_state_ns",
        "netns",
        "cgroup",
        "reason",
        "sk",
        "link",
        "owner_from_listener",
        "reused_by_pid",
        "reused_by_comm",
        "no_time_wait",
        "cgroup_path",
        "workload",
        "workload_kind",
        "unit",
        "container",
        "container_id",
        "pod",
        "pod_uid",
        "namespace",
        "qos",
    ];

    fn transition() -> Event {
        Event {
            ts_ns: 5,
            kind: EventKind::Transition,
            sk: 0xffff_8880_0abc_d000,
            link: None,
            owner: Some(Owner {
                pid: 1234,
                tid: 1240,
                comm: Comm::from_name("nginx"),
                cgroup: 98_765,
                from_listener: true,
            }),
            netns: Some(4_026_531_840),
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            sport: 443,
            daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            dport: 50_000,
            old: Some(TcpState::Established),
            new: TcpState::CloseWait,
            prev_ns: Some(1_500_000),
            reason: None,
            stack: None,
        }
    }

    fn tw_end(reason: TwEndReason) -> Event {
        Event {
            ts_ns: 6,
            kind: EventKind::TwEnd,
            sk: 0x1f,
            link: None,
            owner: None,
            netns: None,
            family: Family::V6,
            saddr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            sport: 8080,
            daddr: IpAddr::V6("2001:db8::2".parse().unwrap()),
            dport: 40_000,
            old: Some(TcpState::TimeWait),
            new: TcpState::Close,
            prev_ns: None,
            reason: Some(reason),
            stack: None,
        }
    }

    fn write(e: &Event, wall_ns: u64) -> String {
        let mut out = Vec::new();
        write_event(&mut out, e, wall_ns).expect("write to Vec");
        String::from_utf8(out).expect("UTF-8")
    }

    /// Parses one output line, checking it is a single '\n'-terminated line.
    fn parse_line(s: &str) -> serde_json::Map<String, Value> {
        assert!(s.ends_with('\n'), "{s:?}");
        assert!(!s.ends_with("\n\n"), "{s:?}");
        assert_eq!(s.matches('\n').count(), 1, "{s:?}");
        match serde_json::from_str::<Value>(s).expect("valid JSON") {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn keys(m: &serde_json::Map<String, Value>) -> Vec<&str> {
        let mut k: Vec<&str> = m.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    fn sorted(fields: &[&'static str]) -> Vec<&'static str> {
        let mut v = fields.to_vec();
        v.sort_unstable();
        v
    }

    #[test]
    fn the_workload_fields_name_the_owner_or_are_null() {
        let m = parse_line(&write(&transition(), 1));
        for f in ["workload", "workload_kind", "unit", "cgroup_path", "qos"] {
            assert!(m[f].is_null(), "{f}");
        }
        let w = crate::workload::Workload::new(
            "/system.slice/payments.service",
            crate::workload::Names::default(),
        );
        let mut out = Vec::new();
        write_event_with(&mut out, &transition(), 1, Some(&w)).unwrap();
        let m = parse_line(&String::from_utf8(out).unwrap());
        assert_eq!(keys(&m), sorted(&EVENT_FIELDS));
        assert_eq!(m["workload"], "payments.service");
        assert_eq!(m["workload_kind"], "unit");
        assert_eq!(m["unit"], "payments.service");
        assert_eq!(m["cgroup_path"], "/system.slice/payments.service");
        assert!(m["container"].is_null());
        assert_eq!(m["cgroup"].as_u64(), Some(98765), "cgroup stays the id");
    }

    #[test]
    fn transition_has_every_documented_field_with_its_value() {
        let m = parse_line(&write(&transition(), 1_700_000_000_123_456_789));
        assert_eq!(keys(&m), sorted(&EVENT_FIELDS));
        assert_eq!(m["ts_ns"], json!(1_700_000_000_123_456_789u64));
        assert_eq!(m["kind"], "transition");
        assert_eq!(m["pid"], 1234);
        assert_eq!(m["tid"], 1240);
        assert_eq!(m["comm"], "nginx");
        assert_eq!(m["family"], "ipv4");
        assert_eq!(m["saddr"], "10.0.0.1");
        assert_eq!(m["sport"], 443);
        assert_eq!(m["daddr"], "10.0.0.2");
        assert_eq!(m["dport"], 50_000);
        assert_eq!(m["old"], "ESTABLISHED");
        assert_eq!(m["new"], "CLOSE_WAIT");
        assert_eq!(m["prev_state_ns"], 1_500_000);
        assert_eq!(m["netns"], 4_026_531_840u32);
        assert_eq!(m["cgroup"], 98_765);
        assert_eq!(m["reason"], Value::Null);
        assert_eq!(m["sk"], "0xffff88800abcd000");
        assert_eq!(m["link"], Value::Null);
        assert_eq!(m["owner_from_listener"], true);
        assert_eq!(m["reused_by_pid"], Value::Null);
        assert_eq!(m["reused_by_comm"], Value::Null);
        assert_eq!(m["no_time_wait"], Value::Null);
    }

    #[test]
    fn ts_ns_is_the_wall_clock_argument_not_the_monotonic_time() {
        let m = parse_line(&write(&transition(), 42));
        assert_eq!(m["ts_ns"], 42);
    }

    #[test]
    fn numeric_fields_are_json_numbers_and_u64_max_is_exact() {
        let mut e = transition();
        e.prev_ns = Some(u64::MAX);
        e.owner.as_mut().unwrap().cgroup = u64::MAX;
        let m = parse_line(&write(&e, u64::MAX));
        for f in [
            "ts_ns",
            "pid",
            "tid",
            "sport",
            "dport",
            "prev_state_ns",
            "netns",
            "cgroup",
        ] {
            assert!(m[f].is_u64(), "{f} = {}", m[f]);
        }
        assert_eq!(m["ts_ns"].as_u64(), Some(u64::MAX));
        assert_eq!(m["prev_state_ns"].as_u64(), Some(u64::MAX));
        assert_eq!(m["cgroup"].as_u64(), Some(u64::MAX));
    }

    #[test]
    fn tw_end_with_unknown_owner_has_nulls_and_reason() {
        let m = parse_line(&write(&tw_end(TwEndReason::Expired), 99));
        assert_eq!(keys(&m), sorted(&EVENT_FIELDS));
        assert_eq!(m["ts_ns"], 99);
        assert_eq!(m["kind"], "tw_end");
        for f in [
            "pid",
            "tid",
            "comm",
            "cgroup",
            "prev_state_ns",
            "netns",
            "link",
            "reused_by_pid",
            "reused_by_comm",
            "no_time_wait",
        ] {
            assert_eq!(m[f], Value::Null, "{f}");
        }
        assert_eq!(m["owner_from_listener"], false);
        assert_eq!(m["family"], "ipv6");
        assert_eq!(m["saddr"], "::1");
        assert_eq!(m["sport"], 8080);
        assert_eq!(m["daddr"], "2001:db8::2");
        assert_eq!(m["dport"], 40_000);
        assert_eq!(m["old"], "TIME_WAIT");
        assert_eq!(m["new"], "CLOSE");
        assert_eq!(m["reason"], "expired");
        assert_eq!(m["sk"], "0x1f");
    }

    #[test]
    fn tw_end_killed_reason_is_killed() {
        let m = parse_line(&write(&tw_end(TwEndReason::Killed), 0));
        assert_eq!(m["reason"], "killed");
    }

    #[test]
    fn tw_end_purged_reason_is_purged() {
        let m = parse_line(&write(&tw_end(TwEndReason::Purged), 0));
        assert_eq!(m["reason"], "purged");
        assert_eq!(m["reused_by_pid"], Value::Null);
    }

    #[test]
    fn tw_end_reused_names_the_reusing_process_and_socket() {
        let mut e = tw_end(TwEndReason::Reused {
            by: Some(Reuser {
                pid: 4_242,
                comm: Some(Comm::from_name("pool\"w")),
            }),
        });
        e.link = Some(0xffff_8880_0000_0def);
        e.prev_ns = Some(1_500_000_000);
        let m = parse_line(&write(&e, 0));
        assert_eq!(keys(&m), sorted(&EVENT_FIELDS));
        assert_eq!(m["reason"], "reused");
        assert_eq!(m["reused_by_pid"], 4_242);
        assert_eq!(m["reused_by_comm"], "pool\"w");
        assert_eq!(m["link"], "0xffff888000000def");
        assert_eq!(m["prev_state_ns"], 1_500_000_000u64);
        assert_eq!(m["no_time_wait"], Value::Null);

        // A reuser without a name, and a reuse without a reuser.
        e.reason = Some(TwEndReason::Reused {
            by: Some(Reuser { pid: 7, comm: None }),
        });
        let m = parse_line(&write(&e, 0));
        assert_eq!(m["reused_by_pid"], 7);
        assert_eq!(m["reused_by_comm"], Value::Null);
        e.reason = Some(TwEndReason::REUSED);
        let m = parse_line(&write(&e, 0));
        assert_eq!(m["reason"], "reused");
        assert_eq!(m["reused_by_pid"], Value::Null);
    }

    #[test]
    fn overflow_transition_has_no_time_wait_and_no_reason() {
        let mut e = transition();
        e.old = Some(TcpState::FinWait2);
        e.new = TcpState::Close;
        e.reason = Some(TwEndReason::Overflow);
        let m = parse_line(&write(&e, 0));
        assert_eq!(keys(&m), sorted(&EVENT_FIELDS));
        assert_eq!(m["kind"], "transition");
        assert_eq!(m["no_time_wait"], "overflow");
        assert_eq!(
            m["reason"],
            Value::Null,
            "reason stays a tw_end field: consumers key tw_end on it"
        );
    }

    #[test]
    fn unknown_old_state_is_null() {
        let mut e = transition();
        e.old = None;
        let m = parse_line(&write(&e, 0));
        assert_eq!(m["old"], Value::Null);
    }

    #[test]
    fn tw_begin_and_tw_rearm_kind_names_and_link_hex() {
        let mut e = transition();
        e.kind = EventKind::TwBegin;
        e.old = Some(TcpState::FinWait2);
        e.new = TcpState::TimeWait;
        e.link = Some(0xffff_8880_0000_0abc);
        let m = parse_line(&write(&e, 0));
        assert_eq!(m["kind"], "tw_begin");
        assert_eq!(m["link"], "0xffff888000000abc");
        assert_eq!(m["new"], "TIME_WAIT");
        assert_eq!(m["reason"], Value::Null);

        e.kind = EventKind::TwRearm;
        e.link = None;
        let m = parse_line(&write(&e, 0));
        assert_eq!(m["kind"], "tw_rearm");
        assert_eq!(m["link"], Value::Null);
    }

    /// A substate change found by asking the kernel: every field of the other
    /// timewait events, plus how it was found and since when it can have
    /// happened (wall clock: `ts_ns` - `prev_state_ns`).
    #[test]
    fn tw_substate_has_every_field_and_says_how_it_was_found() {
        let mut e = transition();
        e.kind = EventKind::TwSubstate;
        e.old = Some(TcpState::FinWait2);
        e.new = TcpState::TimeWait;
        e.prev_ns = Some(900_000_000);
        let m = parse_line(&write(&e, 1_700_000_001_000_000_000));
        let mut fields = EVENT_FIELDS.to_vec();
        fields.extend(["found_by", "changed_after_ns"]);
        assert_eq!(keys(&m), sorted(&fields));
        assert_eq!(m["kind"], "tw_substate");
        assert_eq!(m["old"], "FIN_WAIT2");
        assert_eq!(m["new"], "TIME_WAIT");
        assert_eq!(m["found_by"], "reconciliation");
        assert_eq!(m["prev_state_ns"], 900_000_000);
        assert_eq!(m["changed_after_ns"], json!(1_700_000_000_100_000_000u64));
        assert_eq!(m["pid"], 1234);
        assert_eq!(m["netns"], 4_026_531_840u32);
        assert_eq!(m["reason"], Value::Null);
        // Other kinds do not carry them.
        let m = parse_line(&write(&transition(), 0));
        assert!(m.get("found_by").is_none() && m.get("changed_after_ns").is_none());
    }

    #[test]
    fn sk_zero_is_0x0() {
        let mut e = transition();
        e.sk = 0;
        assert_eq!(parse_line(&write(&e, 0))["sk"], "0x0");
    }

    #[test]
    fn comm_with_quotes_and_control_bytes_is_escaped() {
        let mut e = transition();
        e.owner.as_mut().unwrap().comm = Comm::from_name("a\"b\\c\td\n");
        let m = parse_line(&write(&e, 0));
        assert_eq!(m["comm"], "a\"b\\c\td\n");
    }

    #[test]
    fn comm_with_invalid_utf8_is_replaced_not_an_error() {
        let mut raw = [0u8; 16];
        raw[..3].copy_from_slice(&[b'x', 0xff, b'y']);
        let mut e = transition();
        e.owner.as_mut().unwrap().comm = Comm(raw);
        let m = parse_line(&write(&e, 0));
        assert_eq!(m["comm"], "x\u{fffd}y");
    }

    #[test]
    fn consecutive_events_are_one_object_per_line() {
        let mut out = Vec::new();
        write_event(&mut out, &transition(), 1).unwrap();
        write_event(&mut out, &tw_end(TwEndReason::Killed), 2).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            assert!(serde_json::from_str::<Value>(line).unwrap().is_object());
        }
    }

    #[test]
    fn write_lost_has_kind_lost_counts_and_total() {
        let lost = Lost {
            ring_full: 3,
            recursion_misses: 4,
            map_full: 5,
            probe_failed: 6,
        };
        let mut out = Vec::new();
        write_lost(&mut out, &lost, 777).unwrap();
        let m = parse_line(&String::from_utf8(out).unwrap());
        assert_eq!(
            keys(&m),
            sorted(&[
                "ts_ns",
                "kind",
                "ring_full",
                "recursion_misses",
                "map_full",
                "probe_failed",
                "total"
            ])
        );
        assert_eq!(m["ts_ns"], 777);
        assert_eq!(m["kind"], "lost");
        assert_eq!(m["ring_full"], 3);
        assert_eq!(m["recursion_misses"], 4);
        assert_eq!(m["map_full"], 5);
        assert_eq!(m["probe_failed"], 6);
        assert_eq!(m["total"], 18);
    }
}
