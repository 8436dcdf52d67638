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
//!   `count`, `oldest_age_ms`, `oldest_age_is_lower_bound`, `pids` (at most
//!   5, most sockets first), `peers` (at most 5 `ip:port`, most first).
//! - `time_wait_by_workload[]`: `workload`, `workload_kind`, `count`.
//! - `close_wait_by_process[]` and `by_process[]` rows: `workload`,
//!   `cgroup_path`, `unit`, `container`, `pod`, `namespace` (null when
//!   unknown).
//! - `workloads`: `method` (`handle`, `walk` or `unavailable`), `cgroup2`
//!   (the mount used), `resolved`, `unresolved`, `read_errors`.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use super::Snapshot;
use crate::workload::Workload;

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
    pub oldest_age_ms: u64,
    pub oldest_age_is_lower_bound: bool,
    pub pids: Vec<u32>,
    pub peers: Vec<String>,
}

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
/// key's workload (the edge's cache; `cgroup:<id>` when unknown). Called
/// once per snapshot, O(keys + process rows); a snapshot not folded has
/// empty by-workload lists.
pub fn fold(
    snap: &mut Snapshot,
    resolve: &mut dyn FnMut(WorkloadKey) -> Option<Arc<Workload>>,
    status: Option<WorkloadStatus>,
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
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.workload.cmp(&b.workload)));
    rows.truncate(WORKLOAD_ROWS);
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

    for row in &mut snap.close_wait_by_process {
        if let Some(w) = name(row.key) {
            row.workload = WorkloadRef::of(&w);
        }
    }
    for row in &mut snap.by_process {
        if let Some(w) = name(row.key) {
            row.workload = WorkloadRef::of(&w);
        }
    }
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
}
