//! The snapshot's `listeners` and `listen_drops` sections, fed as a live
//! source or a recording feeds an engine.

use std::sync::Arc;

use super::listener_fixture::*;
use crate::{
    engine::Engine,
    stats::workloads::{WorkloadKey, fold},
    workload::Workload,
};

#[test]
fn a_full_accept_queue_shows_per_listener_with_its_owner_and_reason() {
    let mut e = overflowing();
    let snap = snapshot(&mut e);
    let rows = snap.listeners.as_ref().expect("listeners section");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].listener, "127.0.0.1:8080");
    assert_eq!(rows[0].comm.as_deref(), Some("slowacceptd"));
    assert_eq!(rows[0].drops_total, 76);
    assert_eq!(rows[0].drops_by_reason.get("accept_queue_full"), Some(&76));
    assert_eq!(rows[0].accept_queue_limit, 128);
    assert_eq!(rows[1].listener, "127.0.0.1:9090");
    assert_eq!(rows[1].drops_total, 0);
    let d = snap.listen_drops.as_ref().expect("listen_drops section");
    assert_eq!(d.total, 76);
    assert_eq!(d.by_reason.get("accept_queue_full"), Some(&76));
    assert!((d.per_sec - 76.0).abs() < 1e-9);
    assert_eq!(d.kernel_reported, 2);
    assert_eq!(d.samples, 2);
    assert_eq!(d.namespaces.len(), 1);
    assert_eq!(d.namespaces[0].counters.listen_overflows, Some(76));
    assert_eq!(d.namespaces[0].unattributed, 0);
    assert_eq!(d.unmatched.len(), 1);
    assert_eq!(d.unmatched[0].destination, "127.0.0.1:7777");
    assert_eq!(d.unmatched[0].drops_by_reason.get("no_listener"), Some(&2));
}

#[test]
fn the_json_has_both_sections_and_their_documented_fields() {
    let mut e = overflowing();
    let snap = snapshot(&mut e);
    let mut out = Vec::new();
    crate::output::stats::write_json(&mut out, &snap).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let l = &v["listeners"][0];
    for f in [
        "listener",
        "addr",
        "port",
        "netns",
        "pid",
        "comm",
        "workload",
        "workload_kind",
        "accept_queue",
        "accept_queue_limit",
        "accept_queue_peak",
        "drops_total",
        "drops_by_reason",
        "drops_per_sec",
        "drops_per_sec_by_reason",
        "main_reason",
        "last_drop_age_ms",
    ] {
        assert!(l.get(f).is_some(), "listeners[] lacks {f}: {l}");
    }
    assert_eq!(l["main_reason"], "accept_queue_full");
    assert_eq!(l["netns"], NETNS);
    let d = &v["listen_drops"];
    for f in [
        "total",
        "by_reason",
        "per_sec",
        "kernel_reported",
        "kernel_suppressed",
        "samples",
        "namespaces",
        "unmatched",
    ] {
        assert!(d.get(f).is_some(), "listen_drops lacks {f}: {d}");
    }
    let ns = &d["namespaces"][0];
    assert_eq!(ns["netns"], NETNS);
    assert_eq!(ns["listen_overflows"], 76);
    assert_eq!(ns["unattributed"], 0);
    assert_eq!(d["unmatched"][0]["destination"], "127.0.0.1:7777");
}

#[test]
fn both_sections_are_absent_without_listener_data() {
    let mut e = Engine::new(16);
    let snap = snapshot(&mut e);
    assert!(snap.listeners.is_none() && snap.listen_drops.is_none());
    let v = serde_json::to_value(&snap).unwrap();
    assert!(v.get("listeners").is_none());
    assert!(v.get("listen_drops").is_none());
}

#[test]
fn many_listeners_are_capped_with_an_other_row_keeping_the_total() {
    let mut e = Engine::new(16);
    let first: Vec<_> = (0..80u16)
        .map(|i| sample(10_000 + i, "many", 0, 128, 0))
        .collect();
    let second: Vec<_> = (0..80u16)
        .map(|i| sample(10_000 + i, "many", 0, 128, u64::from(i) + 1))
        .collect();
    let total: u64 = (1..=80).sum();
    feed(
        &mut e,
        vec![
            listeners(S, first, netstat(0, 0)),
            listeners(2 * S, second, netstat(0, 0)),
        ],
    );
    let snap = snapshot(&mut e);
    let mut out = Vec::new();
    crate::output::stats::write_json(&mut out, &snap).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let rows = v["listeners"].as_array().unwrap();
    assert_eq!(rows.len(), crate::stats::JSON_ROWS + 1);
    assert_eq!(rows[0]["drops_total"], 80, "most drops first");
    let sum: u64 = rows
        .iter()
        .map(|r| r["drops_total"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, total);
    assert_eq!(v["listen_drops"]["total"], total);
    assert_eq!(v["capped"]["listeners"]["rows"], 80);
}

#[test]
fn listener_rows_get_their_owner_s_workload() {
    let mut e = overflowing();
    let mut snap = snapshot(&mut e);
    let mut resolve = |k: WorkloadKey| match k {
        WorkloadKey::Pid(pid) if pid == 42 + 80 => Some(Arc::new(Workload::new(
            "/system.slice/slowacceptd.service",
            Default::default(),
        ))),
        _ => None,
    };
    fold(&mut snap, &mut resolve, None, None);
    let rows = snap.listeners.as_ref().unwrap();
    assert_eq!(
        rows[0].workload.workload.as_deref(),
        Some("slowacceptd.service")
    );
    assert_eq!(rows[0].workload.workload_kind, Some("unit"));
    assert_eq!(rows[1].workload.workload, None);
}

#[test]
fn text_names_the_dropping_listener_and_not_the_quiet_one() {
    let mut e = overflowing();
    let snap = snapshot(&mut e);
    let mut out = Vec::new();
    crate::output::stats::write_text(&mut out, &snap).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Listeners"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("127.0.0.1:8080"))
        .expect("the listener's line");
    assert!(line.contains("slowacceptd"), "{line}");
    assert!(line.contains("129/128"), "{line}");
    assert!(line.contains("accept_queue_full 76.0/s"), "{line}");
    assert!(!text.contains("127.0.0.1:9090"), "{text}");
    assert!(text.contains("dropped with no listener: 127.0.0.1:7777 (no_listener 2)"));
}

#[test]
fn text_has_no_listeners_section_when_nothing_dropped() {
    let mut e = Engine::new(16);
    feed(
        &mut e,
        vec![
            listeners(S, vec![sample(9090, "fastd", 0, 128, 0)], netstat(0, 0)),
            listeners(2 * S, vec![sample(9090, "fastd", 0, 128, 0)], netstat(0, 0)),
        ],
    );
    let snap = snapshot(&mut e);
    let mut out = Vec::new();
    crate::output::stats::write_text(&mut out, &snap).unwrap();
    assert!(!String::from_utf8(out).unwrap().contains("Listeners"));
}

#[test]
fn kernel_reported_paws_drops_are_split_by_reason() {
    let mut e = paws();
    let snap = snapshot(&mut e);
    let d = snap.listen_drops.unwrap();
    assert_eq!(d.by_reason.get("timewait_paws"), Some(&20));
    assert_eq!(d.by_reason.get("paws"), Some(&10));
    assert_eq!(d.kernel_reported, 30);
    let rows = snap.listeners.unwrap();
    assert_eq!(rows[0].main_reason, Some("timewait_paws"));
}
