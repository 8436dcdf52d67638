//! CLOSE_WAIT and TIME_WAIT by workload: the snapshot counts sockets by
//! the owner's cgroup id ([`WorkloadKey`], no string on the per-event path;
//! a pid when the owner's cgroup is unknown, as for sockets older than the
//! tracer), and [`fold`] turns those counts into rows by workload at the
//! edge, with the names its resolver knows (the closure), so that a
//! restarted container (a new cgroup id, the same name) stays one row.
//!
//! # `stats --json` fields (added by this module)
//! - `close_wait_by_workload[]`: `workload`, `workload_kind`, `unit`,
//!   `container`, `container_id`, `pod`, `pod_uid`, `namespace`, `qos`,
//!   `count`, `growth_per_min` (1 min window), `growth_per_min_5m`,
//!   `growth_per_min_15m` and what each was measured on (`growth_delta`,
//!   `growth_span_ms` and their `_5m`, `_15m`), as per process but keyed
//!   by the workload's name (a restarted unit or container keeps its
//!   history), `oldest_age_ms`, `oldest_age_is_lower_bound`, `pids` (at
//!   most 5, most sockets first), `peers` (at most 5 `ip:port`, most first).
//! - `time_wait_by_workload[]`: `workload`, `workload_kind`, `count`.
//! - `by_workload[]`: `workload`, `workload_kind`, `total`, `states` (live
//!   sockets per state, as `by_process`), most sockets first; owners not
//!   known are one row `workload: "unknown"`. Capped like every list (at
//!   most 50 rows, then the `{"other": true}` row).
//! - `close_wait_by_process[]`, `by_process[]` and `listeners[]` rows
//!   (a listener by the cgroup sock_diag reported, else its owner's pid): `workload`,
//!   `workload_kind`, `cgroup_path`, `unit`, `container`, `pod`,
//!   `namespace` (null when unknown).
//! - `workloads`: `method` (`handle`, `walk` or `unavailable`), `cgroup2`
//!   (the mount used), `resolved`, `unresolved`, `read_errors`.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use super::{Aggregates, Growth, Snapshot, StateCounts, StateMap};
use crate::workload::Workload;

const MIN: u64 = 60 * 1_000_000_000;

/// Rows of each by-workload list a snapshot keeps (the JSON printers cap
/// them further with an `other` row).
pub const WORKLOAD_ROWS: usize = 1_000;
/// Pids and peers named per workload.
pub const NAMED_PER_WORKLOAD: usize = 5;

/// Whose sockets, before any name is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKey {
    /// The owner's cgroup v2 id (the kernel's, captured with the owner).
    Cgroup(u64),
    /// The owner is known by pid only (its cgroup was not captured): the
    /// edge reads `/proc/PID/cgroup`.
    Pid(u32),
    /// No owner.
    #[default]
    Unknown,
}

impl WorkloadKey {
    /// The key of a socket owned by `owner`.
    pub fn of(owner: Option<crate::model::Owner>) -> Self {
        match owner {
            Some(o) if o.cgroup != 0 => Self::Cgroup(o.cgroup),
            Some(o) => Self::Pid(o.pid),
            None => Self::Unknown,
        }
    }
}

/// CLOSE_WAIT sockets of one key (one cgroup), as the snapshot counted them.
#[derive(Clone, Debug, Default)]
pub struct KeyCloseWait {
    pub key: WorkloadKey,
    pub count: u64,
    pub oldest_age_ms: u64,
    pub oldest_age_is_lower_bound: bool,
    /// (pid, sockets).
    pub pids: Vec<(u32, u64)>,
    /// (peer, sockets).
    pub peers: Vec<(String, u64)>,
}

/// The workload fields of a process row (null when unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkloadRef {
    pub workload: Option<String>,
    pub workload_kind: Option<&'static str>,
    pub cgroup_path: Option<String>,
    pub unit: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
}

fn s(v: &Option<Box<str>>) -> Option<String> {
    v.as_deref().map(str::to_string)
}

impl WorkloadRef {
    pub fn of(w: &Workload) -> Self {
        Self {
            workload: Some(w.display.to_string()),
            workload_kind: Some(w.kind.as_str()),
            cgroup_path: s(&w.cgroup_path),
            unit: s(&w.unit),
            container: s(&w.container),
            pod: s(&w.pod),
            namespace: s(&w.namespace),
        }
    }
}

/// One workload's CLOSE_WAIT sockets.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CloseWaitByWorkload {
    pub workload: String,
    pub workload_kind: &'static str,
    pub unit: Option<String>,
    pub container: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub namespace: Option<String>,
    pub qos: Option<&'static str>,
    pub cgroup_path: Option<String>,
    pub count: u64,
    /// Per minute over the last minute, 5 and 15 minutes, or over the
    /// history available when shorter (see the matching `growth_span*`).
    pub growth_per_min: f64,
    pub growth_per_min_5m: f64,
    pub growth_per_min_15m: f64,
    /// What was measured for each window: the change in sockets and the
    /// span it was measured over.
    pub growth_delta: i64,
    pub growth_span_ms: u64,
    pub growth_delta_5m: i64,
    pub growth_span_5m_ms: u64,
    pub growth_delta_15m: i64,
    pub growth_span_15m_ms: u64,
    pub oldest_age_ms: u64,
    pub oldest_age_is_lower_bound: bool,
    pub pids: Vec<u32>,
    pub peers: Vec<String>,
}

impl CloseWaitByWorkload {
    /// Fills the growth fields from the 1, 5 and 15 min growths.
    fn set_growth(&mut self, [g1, g5, g15]: [Growth; 3]) {
        self.growth_per_min = g1.per_min;
        self.growth_per_min_5m = g5.per_min;
        self.growth_per_min_15m = g15.per_min;
        self.growth_delta = g1.delta;
        self.growth_span_ms = g1.span_ns / 1_000_000;
        self.growth_delta_5m = g5.delta;
        self.growth_span_5m_ms = g5.span_ns / 1_000_000;
        self.growth_delta_15m = g15.delta;
        self.growth_span_15m_ms = g15.span_ns / 1_000_000;
    }

    /// The growth over a window of `minutes` (1, 5 or 15; else 5): (per
    /// minute, delta, span in ms), as watch's growth rule reads it.
    pub fn growth_over(&self, minutes: u64) -> (f64, i64, u64) {
        match minutes {
            1 => (self.growth_per_min, self.growth_delta, self.growth_span_ms),
            15 => (
                self.growth_per_min_15m,
                self.growth_delta_15m,
                self.growth_span_15m_ms,
            ),
            _ => (
                self.growth_per_min_5m,
                self.growth_delta_5m,
                self.growth_span_5m_ms,
            ),
        }
    }
}

/// One workload's live sockets per state (`stats --json` `by_workload`).
#[derive(Clone, Debug, Serialize)]
pub struct ByWorkload {
    pub workload: String,
    pub workload_kind: &'static str,
    #[serde(flatten)]
    pub counts: StateCounts,
}

/// The `by_workload` row of sockets whose owner is not known.
pub const UNKNOWN_WORKLOAD: &str = "unknown";

/// One workload's TIME_WAIT sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TimeWaitByWorkload {
    pub workload: String,
    pub workload_kind: &'static str,
    pub count: u64,
}

/// How attribution works on this host (the edge's resolver status).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkloadStatus {
    pub method: &'static str,
    pub cgroup2: Option<String>,
    pub resolved: u64,
    pub unresolved: u64,
    pub read_errors: u64,
}

fn top_named<K: Clone + Ord + std::hash::Hash>(m: HashMap<K, u64>) -> Vec<K> {
    let mut v: Vec<(K, u64)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(NAMED_PER_WORKLOAD);
    v.into_iter().map(|(k, _)| k).collect()
}

/// Folds the snapshot's counts by key into rows by workload, names the
/// owners of the process rows, and stores `status`. `resolve` gives a
/// key's workload (the edge's cache; `cgroup:<id>` when unknown). With
/// `aggs`, each workload's CLOSE_WAIT count is sampled at the snapshot's
/// time and the rows get their growth rates (the same ring as per
/// process, keyed by the workload's name). Called once per snapshot,
/// O(keys + process rows); a snapshot not folded has empty by-workload
/// lists.
pub fn fold(
    snap: &mut Snapshot,
    resolve: &mut dyn FnMut(WorkloadKey) -> Option<Arc<Workload>>,
    status: Option<WorkloadStatus>,
    aggs: Option<&mut Aggregates>,
) {
    struct Acc {
        w: Arc<Workload>,
        count: u64,
        oldest: u64,
        lower: bool,
        pids: HashMap<u32, u64>,
        peers: HashMap<String, u64>,
    }
    let mut by: HashMap<Box<str>, Acc> = HashMap::new();
    let mut names: HashMap<WorkloadKey, Option<Arc<Workload>>> = HashMap::new();
    let mut name = |k: WorkloadKey| names.entry(k).or_insert_with(|| resolve(k)).clone();
    for k in &snap.close_wait_keys {
        let Some(w) = name(k.key) else { continue };
        let acc = by.entry(w.display.clone()).or_insert_with(|| Acc {
            w: Arc::clone(&w),
            count: 0,
            oldest: 0,
            lower: false,
            pids: HashMap::new(),
            peers: HashMap::new(),
        });
        acc.count += k.count;
        if k.oldest_age_ms > acc.oldest {
            acc.oldest = k.oldest_age_ms;
            acc.lower = k.oldest_age_is_lower_bound;
        } else if k.oldest_age_ms == acc.oldest {
            acc.lower |= k.oldest_age_is_lower_bound;
        }
        for (p, n) in &k.pids {
            *acc.pids.entry(*p).or_default() += n;
        }
        for (p, n) in &k.peers {
            *acc.peers.entry(p.clone()).or_default() += n;
        }
    }
    let mut rows: Vec<CloseWaitByWorkload> = by
        .into_values()
        .map(|a| CloseWaitByWorkload {
            workload: a.w.display.to_string(),
            workload_kind: a.w.kind.as_str(),
            unit: s(&a.w.unit),
            container: s(&a.w.container),
            container_id: s(&a.w.container_id),
            pod: s(&a.w.pod),
            pod_uid: s(&a.w.pod_uid),
            namespace: s(&a.w.namespace),
            qos: a.w.qos.map(|q| q.as_str()),
            cgroup_path: s(&a.w.cgroup_path),
            count: a.count,
            oldest_age_ms: a.oldest,
            oldest_age_is_lower_bound: a.lower,
            pids: top_named(a.pids),
            peers: top_named(a.peers),
            ..CloseWaitByWorkload::default()
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.workload.cmp(&b.workload)));
    rows.truncate(WORKLOAD_ROWS);
    if let Some(aggs) = aggs {
        let now = snap.mono_ns;
        let counts: HashMap<Box<str>, u64> = rows
            .iter()
            .map(|r| (Box::from(r.workload.as_str()), r.count))
            .collect();
        aggs.sample_close_wait_by_workload(now, &counts);
        for r in &mut rows {
            r.set_growth(
                [MIN, 5 * MIN, 15 * MIN]
                    .map(|w| aggs.close_wait_growth_of_workload(&r.workload, now, w)),
            );
        }
    }
    snap.close_wait_by_workload = rows;

    let mut tw: HashMap<Box<str>, TimeWaitByWorkload> = HashMap::new();
    for &(key, count) in &snap.time_wait_keys {
        let Some(w) = name(key) else { continue };
        tw.entry(w.display.clone())
            .or_insert_with(|| TimeWaitByWorkload {
                workload: w.display.to_string(),
                workload_kind: w.kind.as_str(),
                count: 0,
            })
            .count += count;
    }
    let mut tw: Vec<TimeWaitByWorkload> = tw.into_values().collect();
    tw.sort_by(|a, b| b.count.cmp(&a.count).then(a.workload.cmp(&b.workload)));
    tw.truncate(WORKLOAD_ROWS);
    snap.time_wait_by_workload = tw;

    if let Some(listeners) = &mut snap.listeners {
        for row in listeners {
            let key = match (row.cgroup, row.pid) {
                (Some(id), _) if id != 0 => WorkloadKey::Cgroup(id),
                (_, Some(pid)) => WorkloadKey::Pid(pid),
                _ => WorkloadKey::Unknown,
            };
            if let Some(w) = name(key) {
                row.workload = WorkloadRef::of(&w);
            }
        }
    }
    for row in &mut snap.close_wait_by_process {
        if let Some(w) = name(row.key) {
            row.workload = WorkloadRef::of(&w);
        }
    }
    let mut by: HashMap<Box<str>, ByWorkload> = HashMap::new();
    for row in &mut snap.by_process {
        let w = name(row.key);
        if let Some(w) = &w {
            row.workload = WorkloadRef::of(w);
        }
        let (display, kind) = w
            .as_ref()
            .map_or((UNKNOWN_WORKLOAD, UNKNOWN_WORKLOAD), |w| {
                (&*w.display, w.kind.as_str())
            });
        let into = by.entry(Box::from(display)).or_insert_with(|| ByWorkload {
            workload: display.to_string(),
            workload_kind: kind,
            counts: StateCounts {
                total: 0,
                states: StateMap::default(),
            },
        });
        into.counts.total += row.counts.total;
        for (slot, n) in into.counts.states.0.iter_mut().zip(row.counts.states.0) {
            *slot += n;
        }
    }
    let mut by: Vec<ByWorkload> = by.into_values().collect();
    by.sort_by(|a, b| {
        b.counts
            .total
            .cmp(&a.counts.total)
            .then(a.workload.cmp(&b.workload))
    });
    by.truncate(WORKLOAD_ROWS);
    snap.by_workload = by;
    snap.workloads = status;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{engine::Engine, stats::HostFacts};

    #[test]
    fn keys_fold_into_workloads_by_name() {
        let mut e = Engine::new(16);
        let mut snap = e.scrape_snapshot(0, 0, HostFacts::default());
        let key = |count, age, pid| KeyCloseWait {
            key: WorkloadKey::Cgroup(u64::from(pid)),
            count,
            oldest_age_ms: age,
            oldest_age_is_lower_bound: false,
            pids: vec![(pid, count)],
            peers: vec![("127.0.0.1:80".into(), count)],
        };
        // Two cgroup ids with one name (a restarted unit), one other.
        snap.close_wait_keys = vec![key(3, 10, 7), key(2, 50, 8), key(4, 5, 9)];
        snap.time_wait_keys = vec![(WorkloadKey::Cgroup(9), 11), (WorkloadKey::Unknown, 2)];
        fold(
            &mut snap,
            &mut |k| match k {
                WorkloadKey::Cgroup(7 | 8) => Some(Arc::new(Workload::new(
                    "/system.slice/payments.service",
                    Default::default(),
                ))),
                WorkloadKey::Cgroup(id) => Some(Arc::new(Workload::unknown(id))),
                _ => None,
            },
            None,
            None,
        );
        let rows = &snap.close_wait_by_workload;
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].workload, "payments.service");
        assert_eq!(rows[0].workload_kind, "unit");
        assert_eq!(rows[0].count, 5);
        assert_eq!(rows[0].oldest_age_ms, 50);
        assert_eq!(rows[0].pids, vec![7, 8]);
        assert_eq!(rows[0].peers, vec!["127.0.0.1:80".to_string()]);
        assert_eq!(rows[1].workload, "cgroup:9");
        assert_eq!(snap.time_wait_by_workload.len(), 1);
        assert_eq!(snap.time_wait_by_workload[0].count, 11);
    }

    fn payments(k: WorkloadKey) -> Option<Arc<Workload>> {
        match k {
            WorkloadKey::Cgroup(7 | 8) => Some(Arc::new(Workload::new(
                "/system.slice/payments.service",
                Default::default(),
            ))),
            WorkloadKey::Cgroup(id) => Some(Arc::new(Workload::unknown(id))),
            _ => None,
        }
    }

    fn cw(key: u64, count: u64) -> KeyCloseWait {
        KeyCloseWait {
            key: WorkloadKey::Cgroup(key),
            count,
            ..KeyCloseWait::default()
        }
    }

    /// The same ring as per process, keyed by the workload's name: a
    /// restarted unit (a new cgroup id) keeps its history.
    #[test]
    fn growth_is_measured_per_workload_across_cgroup_ids() {
        let mut e = Engine::new(16);
        let mut aggs = Aggregates::default();
        let mut at = |t_s: u64, keys: Vec<KeyCloseWait>| {
            let mut snap = e.scrape_snapshot(t_s * 1_000_000_000, 0, HostFacts::default());
            snap.close_wait_keys = keys;
            fold(&mut snap, &mut payments, None, Some(&mut aggs));
            snap.close_wait_by_workload
        };
        let rows = at(0, vec![cw(7, 4), cw(9, 1)]);
        assert_eq!(rows[0].growth_per_min, 0.0, "no history yet");
        // A minute later: the unit restarted (id 8) and holds 10.
        let rows = at(60, vec![cw(8, 10), cw(9, 1)]);
        let unit = rows
            .iter()
            .find(|r| r.workload == "payments.service")
            .unwrap();
        assert_eq!(unit.growth_delta, 6);
        assert_eq!(unit.growth_span_ms, 60_000);
        assert!((unit.growth_per_min - 6.0).abs() < 1e-9, "{unit:?}");
        assert!((unit.growth_per_min_5m - 6.0).abs() < 1e-9, "{unit:?}");
        let other = rows.iter().find(|r| r.workload == "cgroup:9").unwrap();
        assert_eq!(other.growth_per_min, 0.0);
        // A workload first seen now grew from 0 since the last sample.
        let rows = at(120, vec![cw(8, 10), cw(9, 1), cw(11, 3)]);
        let new = rows.iter().find(|r| r.workload == "cgroup:11").unwrap();
        assert_eq!(new.growth_delta, 3);
        assert_eq!(rows.len(), 3);
        // Without aggregates (a recording's snapshot): no rates, no panic.
        let mut snap = Engine::new(16).scrape_snapshot(0, 0, HostFacts::default());
        snap.close_wait_keys = vec![cw(7, 2)];
        fold(&mut snap, &mut payments, None, None);
        assert_eq!(snap.close_wait_by_workload[0].growth_per_min, 0.0);
    }

    #[test]
    fn by_workload_sums_process_rows_per_state_most_first() {
        use crate::{model::TcpState, stats::ByProcess};
        let mut e = Engine::new(16);
        let mut snap = e.scrape_snapshot(0, 0, HostFacts::default());
        let row = |pid, key, est: u64, cw: u64| {
            let mut states = StateMap::default();
            states.0[TcpState::Established as usize] = est;
            states.0[TcpState::CloseWait as usize] = cw;
            ByProcess {
                pid,
                comm: None,
                counts: StateCounts {
                    total: est + cw,
                    states,
                },
                key,
                workload: WorkloadRef::default(),
            }
        };
        snap.by_process = vec![
            row(Some(1), WorkloadKey::Cgroup(7), 1, 2),
            row(Some(2), WorkloadKey::Cgroup(8), 3, 0),
            row(Some(3), WorkloadKey::Cgroup(9), 2, 0),
            row(None, WorkloadKey::Unknown, 1, 0),
        ];
        fold(&mut snap, &mut payments, None, None);
        let rows = &snap.by_workload;
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows[0].workload, "payments.service");
        assert_eq!(rows[0].workload_kind, "unit");
        assert_eq!(rows[0].counts.total, 6);
        assert_eq!(rows[0].counts.states.get("ESTABLISHED"), 4);
        assert_eq!(rows[0].counts.states.get("CLOSE_WAIT"), 2);
        assert_eq!(rows[1].workload, "cgroup:9");
        assert_eq!(rows[2].workload, UNKNOWN_WORKLOAD);
        assert_eq!(rows[2].workload_kind, "unknown");
        // The process rows are named, with the kind.
        assert_eq!(snap.by_process[0].workload.workload_kind, Some("unit"));
        // Serialized as by_process's counts: total and states.
        let v = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(v["total"], 6);
        assert_eq!(v["states"]["CLOSE_WAIT"], 2);
        // Capped like every list: 50 rows and an `other` row.
        let mut big = serde_json::json!({
            "by_workload": (0..60).map(|i| serde_json::json!({
                "workload": format!("w{i}"), "workload_kind": "unit",
                "total": 1, "states": {"ESTABLISHED": 1}
            })).collect::<Vec<_>>()
        });
        super::super::cap_lists(&mut big);
        let rows = big["by_workload"].as_array().unwrap();
        assert_eq!(rows.len(), super::super::JSON_ROWS + 1);
        assert_eq!(rows[super::super::JSON_ROWS]["other"], true);
        assert_eq!(rows[super::super::JSON_ROWS]["states"]["ESTABLISHED"], 10);
    }
}
