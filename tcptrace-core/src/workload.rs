//! Workloads: what a cgroup v2 path *means* to an operator. A pid changes at
//! every restart and says nothing about which of forty pods leaks; the
//! cgroup every event carries does. This module turns a cgroup path into a
//! systemd unit, a container (Docker, containerd, CRI-O, Podman) or a
//! Kubernetes pod (with its QoS class), names it for people, caches the
//! answers per cgroup id, and matches the `--cgroup`/`--container`/`--unit`
//! filters.
//!
//! Pure: no file is read here. The edge (`tcptrace::seed::workloads`) turns
//! an id into a path and reads runtime names from disk ([`Names`]); this
//! module decides what they add up to, so every shape is table-tested.
//!
//! Path rules ([`classify`]), searching components from the leaf up (so a
//! prefix such as kind's `/kubelet.slice/…` or a test's
//! `/tcptrace-test-123/…` does not matter):
//! 1. `/` is the host.
//! 2. The deepest container component: `docker-<64hex>.scope`, `<64hex>`
//!    under `docker`, `cri-containerd-<64hex>.scope`, `crio-<64hex>.scope`,
//!    `libpod-<64hex>.scope`, `nerdctl-<64hex>.scope`, or `<64hex>` under a
//!    pod. `crio-conmon-*`/`libpod-conmon-*` scopes are monitors, not
//!    containers. Anything below a container belongs to it.
//! 3. A pod: `kubepods[-QOS]-pod<uid>.slice` (optionally `kubelet-`
//!    prefixed; the uid has `_` for `-`) or `pod<uid>` under `kubepods`,
//!    `burstable` or `besteffort`. QoS from the slice or parent name,
//!    `guaranteed` directly under kubepods.
//! 4. systemd: the innermost `*.service`/`*.scope` is the unit
//!    (`user@UID.service/<unit>` below a user manager, `session-N.scope` a
//!    session); else the innermost `*.slice`.
//! 5. Anything else is a plain cgroup, shown by its path.

use std::{collections::VecDeque, fmt, sync::Arc};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::output::escape;

/// The longest display string, in bytes (labels, columns and JSON stay
/// bounded whatever a runtime named a container).
pub const MAX_DISPLAY_BYTES: usize = 200;
/// The longest name taken from a runtime's files, in bytes.
pub const MAX_NAME_BYTES: usize = 253;
/// Entries of [`WorkloadTable`] by default.
pub const TABLE_CAPACITY: usize = 16_384;
/// Ids remembered as gone by default.
pub const GONE_CAPACITY: usize = 4_096;
/// Misses queued for the edge at most (more are dropped and queued again
/// at their next sight).
pub const PENDING_CAPACITY: usize = 4_096;
/// Values each workload filter flag takes at most.
pub const MAX_FILTER_VALUES: usize = 8;

/// What kind of thing a cgroup is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    /// The root cgroup.
    Host,
    /// A systemd service, scope or slice.
    Unit,
    /// A login session (`session-N.scope`).
    Session,
    /// A unit of a user's systemd manager (`user@UID.service/…`).
    UserUnit,
    Container,
    /// A Kubernetes pod's own cgroup (no container below it in the path).
    Pod,
    /// A cgroup with no recognised shape, shown by its path.
    Cgroup,
    /// An id whose path is not known (gone, or not resolved yet); also a
    /// kind a newer tcptrace wrote that this one does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Unit => "unit",
            Self::Session => "session",
            Self::UserUnit => "user_unit",
            Self::Container => "container",
            Self::Pod => "pod",
            Self::Cgroup => "cgroup",
            Self::Unknown => "unknown",
        }
    }
}

/// The container runtime a cgroup shape (or a names source) reveals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Runtime {
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    #[serde(rename = "podman")]
    Podman,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
        }
    }
}

/// A Kubernetes pod's QoS class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }
}

/// What the path alone says (no names read): the result of [`classify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    pub kind: WorkloadKind,
    /// The innermost systemd unit (`payments.service`, `docker-<id>.scope`).
    pub unit: Option<String>,
    /// From `user-UID.slice` or `user@UID.service`.
    pub user: Option<u32>,
    pub runtime: Option<Runtime>,
    /// 64 lowercase hex.
    pub container_id: Option<String>,
    /// With `-` (the systemd slice name has `_`).
    pub pod_uid: Option<String>,
    pub qos: Option<Qos>,
}

/// Names read on the host by the edge (kubelet's log directories, runtime
/// state files), merged into a [`Workload`] by [`Workload::new`]. Every
/// field is optional: whatever was found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// The runtime's own container name (Docker's `Name` without the `/`,
    /// Podman's name).
    pub container_name: Option<String>,
    /// The Kubernetes container name.
    pub k8s_container: Option<String>,
    pub pod: Option<String>,
    /// The Kubernetes namespace.
    pub namespace: Option<String>,
    /// A pod uid learned from the names (cri-dockerd labels, annotations).
    pub pod_uid: Option<String>,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    /// The containerd namespace (`k8s.io`, `default`, …).
    pub containerd_namespace: Option<String>,
    /// The runtime whose files answered (for paths that do not say it).
    pub runtime: Option<Runtime>,
}

impl Names {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Fills what `self` lacks from `other` (the first source wins).
    pub fn fill_from(&mut self, other: Names) {
        fn fill(a: &mut Option<String>, b: Option<String>) {
            if a.is_none() {
                *a = b;
            }
        }
        fill(&mut self.container_name, other.container_name);
        fill(&mut self.k8s_container, other.k8s_container);
        fill(&mut self.pod, other.pod);
        fill(&mut self.namespace, other.namespace);
        fill(&mut self.pod_uid, other.pod_uid);
        fill(&mut self.compose_project, other.compose_project);
        fill(&mut self.compose_service, other.compose_service);
        fill(&mut self.containerd_namespace, other.containerd_namespace);
        if self.runtime.is_none() {
            self.runtime = other.runtime;
        }
    }
}

/// One cgroup, attributed. The serde names are the JSON field names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Workload {
    pub cgroup_path: Option<Box<str>>,
    #[serde(rename = "workload_kind")]
    pub kind: WorkloadKind,
    pub unit: Option<Box<str>>,
    #[serde(rename = "uid")]
    pub user: Option<u32>,
    /// (A runtime a newer tcptrace wrote that this one does not know
    /// reads as none, as does an unknown QoS class.)
    #[serde(deserialize_with = "lenient")]
    pub runtime: Option<Runtime>,
    pub container_id: Option<Box<str>>,
    /// The container's name when one was read, else its 12-hex short id.
    pub container: Option<Box<str>>,
    pub pod_uid: Option<Box<str>>,
    pub pod: Option<Box<str>>,
    /// The Kubernetes namespace (not the network namespace).
    pub namespace: Option<Box<str>>,
    #[serde(deserialize_with = "lenient")]
    pub qos: Option<Qos>,
    /// The containerd namespace of a containerd container outside
    /// Kubernetes (`default` for nerdctl).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containerd_namespace: Option<Box<str>>,
    /// What people see: see [`display`]. Escaped, at most
    /// [`MAX_DISPLAY_BYTES`].
    #[serde(rename = "workload")]
    pub display: Box<str>,
}

/// An optional value read from a recording: one this version does not
/// know is `None`, not damage (the workload record can grow).
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

impl Workload {
    /// The workload of cgroup `path` (as [`classify`] sees it) with the
    /// `names` the edge read.
    pub fn new(path: &str, names: Names) -> Self {
        let shape = classify(path);
        Self::from_shape(Some(path), shape, names)
    }

    /// An id whose path is unknown: `cgroup:<id>`.
    pub fn unknown(id: u64) -> Self {
        Self {
            display: format!("cgroup:{id}").into(),
            ..Self::default()
        }
    }

    fn from_shape(path: Option<&str>, shape: Shape, names: Names) -> Self {
        let names = Names {
            container_name: names.container_name.map(cap_name),
            k8s_container: names.k8s_container.map(cap_name),
            pod: names.pod.map(cap_name),
            namespace: names.namespace.map(cap_name),
            pod_uid: names.pod_uid.filter(|u| valid_pod_uid(u)),
            compose_project: names.compose_project.map(cap_name),
            compose_service: names.compose_service.map(cap_name),
            containerd_namespace: names.containerd_namespace.map(cap_name),
            runtime: names.runtime,
        };
        let is_container = shape.kind == WorkloadKind::Container;
        let k8s = names.pod.is_some() && names.namespace.is_some();
        let short_id = shape
            .container_id
            .as_deref()
            .map(|id| short(id).to_string());
        // In a pod the name is Kubernetes' (a runtime's own name there is
        // generated, like cri-dockerd's `k8s_app_pod_…`).
        let container = if !is_container {
            None
        } else if k8s || shape.pod_uid.is_some() {
            names.k8s_container.clone().or(short_id)
        } else {
            names.container_name.clone().or(short_id)
        };
        let pod_uid = shape
            .pod_uid
            .or(if is_container { names.pod_uid } else { None });
        let in_pod = pod_uid.is_some() || (is_container && k8s);
        let mut w = Workload {
            cgroup_path: path.map(Into::into),
            kind: shape.kind,
            unit: shape.unit.map(Into::into),
            user: shape.user,
            runtime: shape
                .runtime
                .or(if is_container { names.runtime } else { None }),
            container_id: shape.container_id.map(Into::into),
            container: container.map(Into::into),
            pod_uid: pod_uid.map(Into::into),
            pod: if in_pod {
                names.pod.map(Into::into)
            } else {
                None
            },
            namespace: if in_pod {
                names.namespace.map(Into::into)
            } else {
                None
            },
            qos: shape.qos,
            containerd_namespace: if is_container && !in_pod {
                names.containerd_namespace.map(Into::into)
            } else {
                None
            },
            display: Box::from(""),
        };
        w.display = display(&w).into();
        w
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// The string people see for `w` (the `workload` JSON field, the metric
/// label, the column): k8s `ns/pod/container`, `ns/pod`, `pod/<uid>/<id12>`;
/// `docker/<name>`, `podman/<name>`, `containerd/<ns>/<name or id12>`, `cri-o/<name or id12>`;
/// units by name (`user@UID.service/<unit>` for a user manager's); the path
/// for other cgroups; `cgroup:<id>` when unknown. Control characters are
/// escaped and the result is cut to [`MAX_DISPLAY_BYTES`].
pub fn display(w: &Workload) -> String {
    let raw = match w.kind {
        WorkloadKind::Host => "/".to_string(),
        WorkloadKind::Unknown => {
            if w.display.is_empty() {
                "cgroup:?".to_string()
            } else {
                w.display.to_string()
            }
        }
        WorkloadKind::Cgroup => w.cgroup_path.as_deref().unwrap_or("?").to_string(),
        WorkloadKind::Unit | WorkloadKind::Session => w.unit.as_deref().unwrap_or("?").to_string(),
        WorkloadKind::UserUnit => match (w.user, w.unit.as_deref()) {
            (Some(uid), Some(unit)) => format!("user@{uid}.service/{unit}"),
            (_, unit) => unit.unwrap_or("?").to_string(),
        },
        WorkloadKind::Pod => match (&w.namespace, &w.pod, &w.pod_uid) {
            (Some(ns), Some(pod), _) => format!("{ns}/{pod}"),
            (_, _, Some(uid)) => format!("pod/{uid}"),
            _ => "pod/?".to_string(),
        },
        WorkloadKind::Container => container_display(w),
    };
    cap_display(&raw)
}

fn container_display(w: &Workload) -> String {
    let id12 = w.container_id.as_deref().map(short).unwrap_or("?");
    let named = w.container.as_deref().filter(|c| *c != id12);
    if let (Some(ns), Some(pod)) = (&w.namespace, &w.pod) {
        return match named {
            Some(c) => format!("{ns}/{pod}/{c}"),
            None => format!("{ns}/{pod}"),
        };
    }
    if let Some(uid) = &w.pod_uid {
        return format!("pod/{uid}/{id12}");
    }
    let name = named.unwrap_or(id12);
    match w.runtime {
        Some(Runtime::Docker) => format!("docker/{name}"),
        Some(Runtime::Podman) => format!("podman/{name}"),
        Some(Runtime::CriO) => format!("cri-o/{name}"),
        Some(Runtime::Containerd) => match w.containerd_namespace.as_deref() {
            Some(ns) => format!("containerd/{ns}/{name}"),
            None => format!("containerd/{name}"),
        },
        None => format!("container/{name}"),
    }
}

/// Escapes control characters, then cuts at a character boundary.
fn cap_display(raw: &str) -> String {
    let escaped = escape(raw);
    let mut s = escaped.into_owned();
    if s.is_empty() {
        s.push('?');
    }
    truncate_at_char(&mut s, MAX_DISPLAY_BYTES);
    s
}

fn cap_name(mut s: String) -> String {
    truncate_at_char(&mut s, MAX_NAME_BYTES);
    s
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The 12-character short id Docker prints.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `^[0-9a-f]{64}$`: a container id (safe to build a path from).
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A pod uid: 32 to 36 of `[0-9a-f-]` (a UUID, or a static pod's hash).
pub fn valid_pod_uid(s: &str) -> bool {
    (32..=36).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-'))
}

/// What a cgroup v2 path says on its own. Never fails: an odd path is a
/// [`WorkloadKind::Cgroup`].
pub fn classify(path: &str) -> Shape {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if comps.is_empty() {
        return Shape {
            kind: WorkloadKind::Host,
            ..Shape::default()
        };
    }
    let user = user_of(&comps);
    let container = (0..comps.len())
        .rev()
        .find_map(|i| container_at(&comps, i).map(|(rt, id)| (i, rt, id)));
    // The pod must be above the container (or anywhere when there is none).
    let pod_limit = container.as_ref().map_or(comps.len(), |(i, _, _)| *i);
    let pod = (0..pod_limit).rev().find_map(|i| pod_at(&comps, i));

    if let Some((i, runtime, id)) = container {
        let leaf = comps[i];
        let unit = leaf.ends_with(".scope").then(|| leaf.to_string());
        let (pod_uid, qos) = pod.unzip();
        return Shape {
            kind: WorkloadKind::Container,
            unit,
            user,
            runtime,
            container_id: Some(id),
            pod_uid,
            qos,
        };
    }
    let unit = unit_of(&comps);
    if let Some((uid, qos)) = pod {
        return Shape {
            kind: WorkloadKind::Pod,
            unit: unit.map(|(u, _)| u.to_string()),
            user,
            pod_uid: Some(uid),
            qos: Some(qos),
            ..Shape::default()
        };
    }
    match unit {
        Some((unit, i)) => {
            let under_user_manager = comps[..i].iter().any(|c| user_manager_uid(c).is_some());
            let kind = if under_user_manager {
                WorkloadKind::UserUnit
            } else if unit.starts_with("session-") && unit.ends_with(".scope") {
                WorkloadKind::Session
            } else {
                WorkloadKind::Unit
            };
            Shape {
                kind,
                unit: Some(unit.to_string()),
                user,
                ..Shape::default()
            }
        }
        None => Shape {
            kind: WorkloadKind::Cgroup,
            user,
            ..Shape::default()
        },
    }
}

/// The runtime (when the shape says it) and id of a container component.
fn container_at(comps: &[&str], i: usize) -> Option<(Option<Runtime>, String)> {
    let c = comps[i];
    let parent = i.checked_sub(1).map(|p| comps[p]);
    let scoped = |prefix: &str| {
        c.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(".scope"))
            .filter(|id| is_container_id(id))
    };
    let found = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
        ("nerdctl-", Runtime::Containerd),
    ]
    .into_iter()
    .find_map(|(prefix, rt)| scoped(prefix).map(|id| (Some(rt), id.to_string())));
    if found.is_some() {
        return found;
    }
    if is_container_id(c) {
        if parent == Some("docker") {
            return Some((Some(Runtime::Docker), c.to_string()));
        }
        if i > 0 && pod_at(comps, i - 1).is_some() {
            return Some((None, c.to_string()));
        }
    }
    None
}

/// The pod uid (with `-`) and QoS of a pod component.
fn pod_at(comps: &[&str], i: usize) -> Option<(String, Qos)> {
    let c = comps[i];
    // systemd driver: [kubelet-]kubepods[-burstable|-besteffort]-pod<uid>.slice
    if let Some(stem) = c.strip_suffix(".slice") {
        let stem = stem.strip_prefix("kubelet-").unwrap_or(stem);
        let rest = stem.strip_prefix("kubepods-")?;
        let (qos, uid) = if let Some(u) = rest.strip_prefix("burstable-pod") {
            (Qos::Burstable, u)
        } else if let Some(u) = rest.strip_prefix("besteffort-pod") {
            (Qos::BestEffort, u)
        } else if let Some(u) = rest.strip_prefix("pod") {
            (Qos::Guaranteed, u)
        } else {
            return None;
        };
        let uid = uid.replace('_', "-");
        return valid_pod_uid(&uid).then_some((uid, qos));
    }
    // cgroupfs driver: pod<uid> under kubepods, burstable or besteffort.
    let uid = c.strip_prefix("pod")?;
    let qos = match i.checked_sub(1).map(|p| comps[p]) {
        Some("kubepods") => Qos::Guaranteed,
        Some("burstable") => Qos::Burstable,
        Some("besteffort") => Qos::BestEffort,
        _ => return None,
    };
    valid_pod_uid(uid).then(|| (uid.to_string(), qos))
}

/// The innermost `*.service`/`*.scope`, else the innermost `*.slice`, with
/// its index.
fn unit_of<'a>(comps: &[&'a str]) -> Option<(&'a str, usize)> {
    let named = |c: &str, suffix: &str| c.strip_suffix(suffix).is_some_and(|s| !s.is_empty());
    comps
        .iter()
        .enumerate()
        .rev()
        .find(|(_, c)| named(c, ".service") || named(c, ".scope"))
        .or_else(|| {
            comps
                .iter()
                .enumerate()
                .rev()
                .find(|(_, c)| named(c, ".slice"))
        })
        .map(|(i, c)| (*c, i))
}

/// `UID` of `user@UID.service`.
fn user_manager_uid(c: &str) -> Option<u32> {
    c.strip_prefix("user@")?
        .strip_suffix(".service")?
        .parse()
        .ok()
}

/// The uid of the innermost `user-UID.slice` or `user@UID.service`.
fn user_of(comps: &[&str]) -> Option<u32> {
    comps.iter().rev().find_map(|c| {
        user_manager_uid(c).or_else(|| {
            c.strip_prefix("user-")?
                .strip_suffix(".slice")?
                .parse()
                .ok()
        })
    })
}

/// What [`WorkloadTable::resolve`] knows about an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Known(Arc<Workload>),
    /// The cgroup is gone and was never resolved (or id 0: no owner).
    Gone,
    /// Not known yet: queued for the edge ([`WorkloadTable::take_pending`]).
    Queued,
}

impl Lookup {
    /// The workload, or `cgroup:<id>` when there is none.
    pub fn into_workload(self, id: u64) -> Arc<Workload> {
        match self {
            Self::Known(w) => w,
            Self::Gone | Self::Queued => Arc::new(Workload::unknown(id)),
        }
    }
}

#[derive(Debug)]
struct Entry {
    workload: Arc<Workload>,
    last_seen_ns: u64,
}

/// The bounded cache cgroup id -> workload. Kernfs ids are not reused on
/// 64-bit hosts, so an entry (and a gone id) stays right forever; a
/// workload that vanished keeps its name as long as it is cached.
///
/// When full, the least recently seen eighth is evicted at once (amortised
/// O(1) per insert). Gone ids are a FIFO of [`GONE_CAPACITY`]. A miss is
/// queued once for the edge, which drains [`take_pending`](Self::take_pending)
/// within its own time budget.
#[derive(Debug)]
pub struct WorkloadTable {
    entries: FxHashMap<u64, Entry>,
    capacity: usize,
    gone: FxHashSet<u64>,
    gone_order: VecDeque<u64>,
    gone_capacity: usize,
    pending: VecDeque<u64>,
    queued: FxHashSet<u64>,
    evicted: u64,
}

impl Default for WorkloadTable {
    fn default() -> Self {
        Self::with_capacity(TABLE_CAPACITY, GONE_CAPACITY)
    }
}

impl WorkloadTable {
    pub fn with_capacity(capacity: usize, gone_capacity: usize) -> Self {
        Self {
            entries: FxHashMap::default(),
            capacity: capacity.max(1),
            gone: FxHashSet::default(),
            gone_order: VecDeque::new(),
            gone_capacity: gone_capacity.max(1),
            pending: VecDeque::new(),
            queued: FxHashSet::default(),
            evicted: 0,
        }
    }

    /// The workload of `id`, marking it seen at `now_ns`; a miss is queued
    /// (once) for the edge.
    pub fn resolve(&mut self, id: u64, now_ns: u64) -> Lookup {
        if let Some(e) = self.entries.get_mut(&id) {
            e.last_seen_ns = e.last_seen_ns.max(now_ns);
            return Lookup::Known(Arc::clone(&e.workload));
        }
        if id == 0 || self.gone.contains(&id) {
            return Lookup::Gone;
        }
        if self.pending.len() < PENDING_CAPACITY && self.queued.insert(id) {
            self.pending.push_back(id);
        }
        Lookup::Queued
    }

    /// The workload of `id` if cached, without touching or queueing.
    pub fn get(&self, id: u64) -> Option<&Arc<Workload>> {
        self.entries.get(&id).map(|e| &e.workload)
    }

    /// Stores (or replaces) `id`'s workload, seen at `now_ns`.
    pub fn insert(&mut self, id: u64, workload: Workload, now_ns: u64) -> Arc<Workload> {
        let workload = Arc::new(workload);
        self.queued.remove(&id);
        if self.gone.remove(&id) {
            self.gone_order.retain(|g| *g != id);
        }
        if !self.entries.contains_key(&id) && self.entries.len() >= self.capacity {
            self.evict_oldest();
        }
        self.entries.insert(
            id,
            Entry {
                workload: Arc::clone(&workload),
                last_seen_ns: now_ns,
            },
        );
        workload
    }

    /// Remembers that `id` has no cgroup any more (never resolved).
    pub fn mark_gone(&mut self, id: u64) {
        self.queued.remove(&id);
        if self.entries.contains_key(&id) || !self.gone.insert(id) {
            return;
        }
        self.gone_order.push_back(id);
        while self.gone_order.len() > self.gone_capacity {
            if let Some(old) = self.gone_order.pop_front() {
                self.gone.remove(&old);
            }
        }
    }

    /// Whether `id` is in the negative cache.
    pub fn is_gone(&self, id: u64) -> bool {
        self.gone.contains(&id)
    }

    /// Up to `max` queued misses, oldest first, for the edge to resolve.
    /// An id taken and not answered (neither inserted nor marked gone) is
    /// queued again at its next [`resolve`](Self::resolve).
    pub fn take_pending(&mut self, max: usize) -> Vec<u64> {
        let n = max.min(self.pending.len());
        let taken: Vec<u64> = self.pending.drain(..n).collect();
        for id in &taken {
            self.queued.remove(id);
        }
        taken
    }

    /// Misses waiting.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries evicted for room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Every cached id and workload (any order).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Arc<Workload>)> {
        self.entries.iter().map(|(id, e)| (*id, &e.workload))
    }

    /// Drops the least recently seen eighth of the entries.
    fn evict_oldest(&mut self) {
        let n = (self.capacity / 8).max(1);
        let mut seen: Vec<(u64, u64)> = self
            .entries
            .iter()
            .map(|(id, e)| (e.last_seen_ns, *id))
            .collect();
        if n < seen.len() {
            seen.select_nth_unstable(n - 1);
        }
        for (_, id) in seen.into_iter().take(n) {
            self.entries.remove(&id);
            self.evicted += 1;
        }
    }
}

/// A malformed workload filter value: the one line to print (exit 2).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
enum ContainerSelector {
    /// 4 to 64 hex: an id prefix (or, as well, an exact name).
    IdPrefix(String),
    Name(String),
}

/// `--cgroup PATH`, `--container ID|NAME`, `--unit NAME`: a workload is
/// kept when it matches any value of any flag (OR); an empty filter keeps
/// everything. Workloads whose path is unknown match no non-empty filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadFilter {
    cgroups: Vec<String>,
    containers: Vec<ContainerSelector>,
    units: Vec<String>,
}

const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".scope",
    ".slice",
    ".socket",
    ".mount",
    ".timer",
    ".target",
    ".path",
    ".swap",
    ".device",
    ".automount",
];

impl WorkloadFilter {
    /// Validates the flags' values (each at most [`MAX_FILTER_VALUES`]).
    ///
    /// `--cgroup`: absolute, with no empty, `.` or `..` component (a
    /// trailing `/` is dropped). `--container`: 4–64 lowercase hex is an id
    /// prefix (and an exact name); otherwise a name (Docker/Podman name,
    /// k8s container name, or `ns/pod/container`). `--unit`: `.service` is
    /// appended when the name has no unit suffix; `user@UID.service/NAME`
    /// names a user manager's unit.
    pub fn parse(
        cgroups: &[String],
        containers: &[String],
        units: &[String],
    ) -> Result<Self, FilterError> {
        for (flag, values) in [
            ("--cgroup", cgroups),
            ("--container", containers),
            ("--unit", units),
        ] {
            if values.len() > MAX_FILTER_VALUES {
                return Err(FilterError(format!(
                    "{flag} given {} times: at most {MAX_FILTER_VALUES}",
                    values.len()
                )));
            }
        }
        let cgroups = cgroups
            .iter()
            .map(|p| normalize_cgroup(p))
            .collect::<Result<_, _>>()?;
        let containers = containers
            .iter()
            .map(|c| parse_container(c))
            .collect::<Result<_, _>>()?;
        let units = units
            .iter()
            .map(|u| parse_unit(u))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            cgroups,
            containers,
            units,
        })
    }

    /// Whether any value was given.
    pub fn narrows(&self) -> bool {
        !(self.cgroups.is_empty() && self.containers.is_empty() && self.units.is_empty())
    }

    /// Whether `w` is kept.
    pub fn matches(&self, w: &Workload) -> bool {
        if !self.narrows() {
            return true;
        }
        let Some(path) = w.cgroup_path.as_deref() else {
            return false;
        };
        self.cgroups.iter().any(|p| path_has_prefix(path, p))
            || self.containers.iter().any(|c| container_matches(c, w))
            || self.units.iter().any(|u| unit_matches(u, w))
    }

    /// One filter per value given (`--unit a --unit b` gives two), each
    /// matching what that value matches: the filter is their OR.
    pub fn each(&self) -> Vec<WorkloadFilter> {
        let one = |f: &dyn Fn(&mut WorkloadFilter)| {
            let mut w = WorkloadFilter::default();
            f(&mut w);
            w
        };
        let mut out = Vec::new();
        out.extend(
            self.cgroups
                .iter()
                .map(|c| one(&|w| w.cgroups.push(c.clone()))),
        );
        out.extend(
            self.containers
                .iter()
                .map(|c| one(&|w| w.containers.push(c.clone()))),
        );
        out.extend(self.units.iter().map(|u| one(&|w| w.units.push(u.clone()))));
        out
    }

    /// The `--cgroup` paths, normalized.
    pub fn cgroups(&self) -> &[String] {
        &self.cgroups
    }

    /// The `--unit` names, with their suffix.
    pub fn units(&self) -> &[String] {
        &self.units
    }
}

fn normalize_cgroup(p: &str) -> Result<String, FilterError> {
    let bad = || {
        FilterError(format!(
            "--cgroup {:?}: give an absolute cgroup v2 path like /system.slice/api.service",
            escape(p)
        ))
    };
    if !p.starts_with('/') || p.len() > 4096 || p.chars().any(char::is_control) || p.contains("//")
    {
        return Err(bad());
    }
    let trimmed = if p.len() > 1 {
        p.strip_suffix('/').unwrap_or(p)
    } else {
        p
    };
    if trimmed == "/" {
        return Ok("/".into());
    }
    if trimmed[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad());
    }
    Ok(trimmed.to_string())
}

fn parse_container(c: &str) -> Result<ContainerSelector, FilterError> {
    let c = c.strip_prefix('/').unwrap_or(c);
    if c.is_empty() || c.len() > 512 || c.chars().any(char::is_control) {
        return Err(FilterError(format!(
            "--container {:?}: give a container id (at least 4 hex digits) or a name",
            escape(c)
        )));
    }
    let hex =
        (4..=64).contains(&c.len()) && c.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    Ok(if hex {
        ContainerSelector::IdPrefix(c.to_string())
    } else {
        ContainerSelector::Name(c.to_string())
    })
}

fn parse_unit(u: &str) -> Result<String, FilterError> {
    let bad = || {
        FilterError(format!(
            "--unit {:?}: give a systemd unit name like payments.service",
            escape(u)
        ))
    };
    if u.is_empty() || u.len() > 512 || u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad());
    }
    let (manager, unit) = match u.split_once('/') {
        Some((m, rest)) if user_manager_uid(m).is_some() => (Some(m), rest),
        Some(_) => return Err(bad()),
        None => (None, u),
    };
    if unit.is_empty() || unit.contains('/') || unit.starts_with('.') {
        return Err(bad());
    }
    let unit = if UNIT_SUFFIXES.iter().any(|s| unit.ends_with(s)) {
        unit.to_string()
    } else {
        format!("{unit}.service")
    };
    Ok(match manager {
        Some(m) => format!("{m}/{unit}"),
        None => unit,
    })
}

/// `/a/b` is a prefix of `/a/b` and `/a/b/c`, not of `/a/bc`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn container_matches(sel: &ContainerSelector, w: &Workload) -> bool {
    if w.kind != WorkloadKind::Container {
        return false;
    }
    let name_is = |n: &str| w.container.as_deref() == Some(n) || *w.display == *n;
    match sel {
        ContainerSelector::IdPrefix(p) => {
            w.container_id
                .as_deref()
                .is_some_and(|id| id.starts_with(p.as_str()))
                || name_is(p)
        }
        ContainerSelector::Name(n) => name_is(n),
    }
}

fn unit_matches(unit: &str, w: &Workload) -> bool {
    match unit.split_once('/') {
        Some((manager, inner)) => {
            w.kind == WorkloadKind::UserUnit
                && w.unit.as_deref() == Some(inner)
                && user_manager_uid(manager) == w.user
        }
        None => w.unit.as_deref() == Some(unit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_newer_recordings_unknown_kind_runtime_and_qos_read_as_unknown_not_damage() {
        let w: Workload = serde_json::from_str(
            r#"{"workload":"x","workload_kind":"vm","runtime":"kata","qos":"premium","container":"c","new_field":1}"#,
        )
        .unwrap();
        assert_eq!(w.kind, WorkloadKind::Unknown);
        assert_eq!((w.runtime, w.qos), (None, None));
        assert_eq!((&*w.display, w.container.as_deref()), ("x", Some("c")));
        let known: Workload =
            serde_json::from_str(r#"{"runtime":"cri-o","qos":"burstable","workload_kind":"pod"}"#)
                .unwrap();
        assert_eq!(
            (known.kind, known.runtime, known.qos),
            (WorkloadKind::Pod, Some(Runtime::CriO), Some(Qos::Burstable))
        );
    }

    #[test]
    fn each_value_is_a_filter_of_its_own() {
        let f = WorkloadFilter::parse(
            &["/shop.slice".into()],
            &["web".into()],
            &["api".into(), "db".into()],
        )
        .unwrap();
        let each = f.each();
        assert_eq!(each.len(), 4);
        assert_eq!(each[0].cgroups(), ["/shop.slice"]);
        assert_eq!(each[2].units(), ["api.service"]);
        assert_eq!(each[3].units(), ["db.service"]);
        assert!(each.iter().all(WorkloadFilter::narrows));
        assert!(WorkloadFilter::default().each().is_empty());
    }

    const UID: &str = "1d2c3b4a-0000-1111-2222-333344445555";
    const UID_: &str = "1d2c3b4a_0000_1111_2222_333344445555";

    fn a() -> String {
        "a".repeat(64)
    }
    fn b() -> String {
        "b".repeat(64)
    }
    fn c() -> String {
        "c".repeat(64)
    }

    struct Row {
        path: String,
        kind: WorkloadKind,
        unit: Option<&'static str>,
        user: Option<u32>,
        runtime: Option<Runtime>,
        container_id: Option<String>,
        pod_uid: bool,
        qos: Option<Qos>,
        display: String,
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        path: impl Into<String>,
        kind: WorkloadKind,
        unit: Option<&'static str>,
        user: Option<u32>,
        runtime: Option<Runtime>,
        container_id: Option<String>,
        pod_uid: bool,
        qos: Option<Qos>,
        display: impl Into<String>,
    ) -> Row {
        Row {
            path: path.into(),
            kind,
            unit,
            user,
            runtime,
            container_id,
            pod_uid,
            qos,
            display: display.into(),
        }
    }

    fn table() -> Vec<Row> {
        use Qos::*;
        use Runtime::*;
        use WorkloadKind as K;
        let (a, b, c) = (a(), b(), c());
        let burst =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        let best = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        );
        let docker_a: &'static str = Box::leak(format!("docker-{a}.scope").into_boxed_str());
        let libpod_a: &'static str = Box::leak(format!("libpod-{a}.scope").into_boxed_str());
        let conmon_a: &'static str = Box::leak(format!("libpod-conmon-{a}.scope").into_boxed_str());
        let cri_b: &'static str = Box::leak(format!("cri-containerd-{b}.scope").into_boxed_str());
        let crio_c: &'static str = Box::leak(format!("crio-{c}.scope").into_boxed_str());
        let crio_conmon_c: &'static str =
            Box::leak(format!("crio-conmon-{c}.scope").into_boxed_str());
        let burst_slice: &'static str =
            Box::leak(format!("kubepods-burstable-pod{UID_}.slice").into_boxed_str());
        // One row per line: the table of the design (issue 20, §2).
        #[rustfmt::skip]
        let rows = vec![
            row("/", K::Host, None, None, None, None, false, None, "/"),
            row("/init.scope", K::Unit, Some("init.scope"), None, None, None, false, None, "init.scope"),
            row("/system.slice/payments.service", K::Unit, Some("payments.service"), None, None, None, false, None, "payments.service"),
            row("/system.slice/system-getty.slice/getty@tty1.service", K::Unit, Some("getty@tty1.service"), None, None, None, false, None, "getty@tty1.service"),
            row("/system.slice/foo.service/worker", K::Unit, Some("foo.service"), None, None, None, false, None, "foo.service"),
            row("/system.slice", K::Unit, Some("system.slice"), None, None, None, false, None, "system.slice"),
            row("/user.slice/user-1000.slice/session-3.scope", K::Session, Some("session-3.scope"), Some(1000), None, None, false, None, "session-3.scope"),
            row("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service", K::UserUnit, Some("foo.service"), Some(1000), None, None, false, None, "user@1000.service/foo.service"),
            row(format!("/system.slice/docker-{a}.scope"), K::Container, Some(docker_a), None, Some(Docker), Some(a.clone()), false, None, "docker/aaaaaaaaaaaa"),
            row(format!("/docker/{a}"), K::Container, None, None, Some(Docker), Some(a.clone()), false, None, "docker/aaaaaaaaaaaa"),
            row("/system.slice/containerd.service", K::Unit, Some("containerd.service"), None, None, None, false, None, "containerd.service"),
            row(format!("/machine.slice/libpod-{a}.scope"), K::Container, Some(libpod_a), None, Some(Podman), Some(a.clone()), false, None, "podman/aaaaaaaaaaaa"),
            row(format!("/machine.slice/libpod-conmon-{a}.scope"), K::Unit, Some(conmon_a), None, None, None, false, None, conmon_a),
            row(format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{a}.scope"), K::Container, Some(libpod_a), Some(1000), Some(Podman), Some(a.clone()), false, None, "podman/aaaaaaaaaaaa"),
            row(format!("{burst}/cri-containerd-{b}.scope"), K::Container, Some(cri_b), None, Some(Containerd), Some(b.clone()), true, Some(Burstable), format!("pod/{UID}/bbbbbbbbbbbb")),
            row(format!("{best}/crio-{c}.scope"), K::Container, Some(crio_c), None, Some(CriO), Some(c.clone()), true, Some(BestEffort), format!("pod/{UID}/cccccccccccc")),
            row(format!("{best}/crio-conmon-{c}.scope"), K::Pod, Some(crio_conmon_c), None, None, None, true, Some(BestEffort), format!("pod/{UID}")),
            row(format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{b}.scope"), K::Container, Some(cri_b), None, Some(Containerd), Some(b.clone()), true, Some(Guaranteed), format!("pod/{UID}/bbbbbbbbbbbb")),
            row(burst.clone(), K::Pod, Some(burst_slice), None, None, None, true, Some(Burstable), format!("pod/{UID}")),
            row(format!("{burst}/docker-{a}.scope"), K::Container, Some(docker_a), None, Some(Docker), Some(a.clone()), true, Some(Burstable), format!("pod/{UID}/aaaaaaaaaaaa")),
            row(format!("/kubepods/burstable/pod{UID}/{b}"), K::Container, None, None, None, Some(b.clone()), true, Some(Burstable), format!("pod/{UID}/bbbbbbbbbbbb")),
            row(format!("/kubepods/pod{UID}/{b}"), K::Container, None, None, None, Some(b.clone()), true, Some(Guaranteed), format!("pod/{UID}/bbbbbbbbbbbb")),
            row(format!("/kubepods/besteffort/pod{UID}"), K::Pod, None, None, None, None, true, Some(BestEffort), format!("pod/{UID}")),
            row(format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{b}.scope"), K::Container, Some(cri_b), None, Some(Containerd), Some(b.clone()), true, Some(BestEffort), format!("pod/{UID}/bbbbbbbbbbbb")),
            row(format!("/tcptrace-test-77/system.slice/docker-{a}.scope"), K::Container, Some(docker_a), None, Some(Docker), Some(a.clone()), false, None, "docker/aaaaaaaaaaaa"),
            row("/docker-notahexid.scope", K::Unit, Some("docker-notahexid.scope"), None, None, None, false, None, "docker-notahexid.scope"),
            row("/foo/bar", K::Cgroup, None, None, None, None, false, None, "/foo/bar"),
        ];
        rows
    }

    #[test]
    fn classify_table() {
        for r in table() {
            let s = classify(&r.path);
            let ctx = &r.path;
            assert_eq!(s.kind, r.kind, "{ctx}");
            assert_eq!(s.unit.as_deref(), r.unit, "{ctx}");
            assert_eq!(s.user, r.user, "{ctx}");
            assert_eq!(s.runtime, r.runtime, "{ctx}");
            assert_eq!(s.container_id, r.container_id, "{ctx}");
            assert_eq!(s.pod_uid.as_deref(), r.pod_uid.then_some(UID), "{ctx}");
            assert_eq!(s.qos, r.qos, "{ctx}");
            let w = Workload::new(&r.path, Names::default());
            assert_eq!(&*w.display, r.display, "{ctx}");
            assert_eq!(w.cgroup_path.as_deref(), Some(r.path.as_str()));
            assert_eq!(display(&w), r.display, "{ctx}");
        }
    }

    #[test]
    fn an_unresolvable_id_is_unknown() {
        let w = Workload::unknown(4711);
        assert_eq!(w.kind, WorkloadKind::Unknown);
        assert_eq!(&*w.display, "cgroup:4711");
        assert_eq!(display(&w), "cgroup:4711");
        assert_eq!(w.cgroup_path, None);
    }

    #[test]
    fn names_read_on_the_host_name_the_workload() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{}.scope",
            b()
        );
        let names = Names {
            pod: Some("payments-7d9f-abcde".into()),
            namespace: Some("shop".into()),
            k8s_container: Some("app".into()),
            ..Names::default()
        };
        let w = Workload::new(&path, names);
        assert_eq!(&*w.display, "shop/payments-7d9f-abcde/app");
        assert_eq!(w.container.as_deref(), Some("app"));
        assert_eq!(w.namespace.as_deref(), Some("shop"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));

        // The pod known, the container's name not: ns/pod.
        let names = Names {
            pod: Some("payments-7d9f-abcde".into()),
            namespace: Some("shop".into()),
            ..Names::default()
        };
        let w = Workload::new(&path, names);
        assert_eq!(&*w.display, "shop/payments-7d9f-abcde");
        assert_eq!(w.container.as_deref(), Some("bbbbbbbbbbbb"));

        let docker = format!("/system.slice/docker-{}.scope", a());
        let w = Workload::new(
            &docker,
            Names {
                container_name: Some("web-1".into()),
                ..Names::default()
            },
        );
        assert_eq!(&*w.display, "docker/web-1");
        assert_eq!(w.container.as_deref(), Some("web-1"));

        let podman = format!("/machine.slice/libpod-{}.scope", a());
        let w = Workload::new(
            &podman,
            Names {
                container_name: Some("db".into()),
                ..Names::default()
            },
        );
        assert_eq!(&*w.display, "podman/db");

        // The runtime learned from the names (cgroupfs kubelet paths).
        let w = Workload::new(
            &format!("/kubepods/pod{UID}/{}", b()),
            Names {
                runtime: Some(Runtime::CriO),
                ..Names::default()
            },
        );
        assert_eq!(w.runtime, Some(Runtime::CriO));

        // Pod names on a pod cgroup.
        let w = Workload::new(
            &format!("/kubepods/besteffort/pod{UID}"),
            Names {
                pod: Some("p".into()),
                namespace: Some("ns".into()),
                ..Names::default()
            },
        );
        assert_eq!(&*w.display, "ns/p");

        // Names never attach to a unit.
        let w = Workload::new(
            "/system.slice/payments.service",
            Names {
                pod: Some("p".into()),
                namespace: Some("ns".into()),
                ..Names::default()
            },
        );
        assert_eq!(w.pod, None);
        assert_eq!(&*w.display, "payments.service");
    }

    #[test]
    fn other_runtimes_without_names() {
        let w = Workload::new(
            &format!("/system.slice/crio-{}.scope", c()),
            Names::default(),
        );
        assert_eq!(&*w.display, "cri-o/cccccccccccc");
        let w = Workload::new(
            &format!("/system.slice/nerdctl-{}.scope", b()),
            Names {
                containerd_namespace: Some("default".into()),
                ..Names::default()
            },
        );
        assert_eq!(&*w.display, "containerd/default/bbbbbbbbbbbb");
        let w = Workload::new(
            &format!("/system.slice/nerdctl-{}.scope", b()),
            Names::default(),
        );
        assert_eq!(&*w.display, "containerd/bbbbbbbbbbbb");
    }

    #[test]
    fn a_cgroup_below_a_container_belongs_to_it() {
        let path = format!("/system.slice/docker-{}.scope/init.scope", a());
        let s = classify(&path);
        assert_eq!(s.kind, WorkloadKind::Container);
        assert_eq!(s.container_id, Some(a()));
        // A 64-hex directory below a container scope is not another one.
        let path = format!("/system.slice/docker-{}.scope/{}", a(), b());
        assert_eq!(classify(&path).container_id, Some(a()));
        // Docker in Docker: the deepest container wins.
        let path = format!("/docker/{}/docker/{}", a(), b());
        assert_eq!(classify(&path).container_id, Some(b()));
    }

    #[test]
    fn display_escapes_and_caps() {
        let w = Workload::new(
            &format!("/system.slice/docker-{}.scope", a()),
            Names {
                container_name: Some("evil\x1b[2Jname\n".into()),
                ..Names::default()
            },
        );
        assert_eq!(&*w.display, "docker/evil\\x1b[2Jname\\x0a");
        let long = "é".repeat(300);
        let w = Workload::new(&format!("/{long}"), Names::default());
        assert!(w.display.len() <= MAX_DISPLAY_BYTES);
        assert!(w.display.starts_with("/é"));
        // Names are cut to 253 bytes before they are stored.
        let w = Workload::new(
            &format!("/system.slice/docker-{}.scope", a()),
            Names {
                container_name: Some("x".repeat(1000)),
                ..Names::default()
            },
        );
        assert_eq!(w.container.as_deref().map(str::len), Some(MAX_NAME_BYTES));
    }

    #[test]
    fn serde_names_are_the_json_field_names() {
        let w = Workload::new(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{}.scope",
                c()
            ),
            Names::default(),
        );
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(json["workload_kind"], "container");
        assert_eq!(json["runtime"], "cri-o");
        assert_eq!(json["qos"], "besteffort");
        assert_eq!(json["workload"], format!("pod/{UID}/cccccccccccc"));
        assert_eq!(json["pod_uid"], UID);
        let back: Workload = serde_json::from_value(json).unwrap();
        assert_eq!(back, w);
        let user: Workload = serde_json::from_str(
            r#"{"workload_kind":"user_unit","uid":7,"workload":"x","future":1}"#,
        )
        .unwrap();
        assert_eq!(user.kind, WorkloadKind::UserUnit);
        assert_eq!(user.user, Some(7));
    }

    #[test]
    fn names_fill_keeps_the_first_answer() {
        let mut n = Names {
            pod: Some("first".into()),
            ..Names::default()
        };
        n.fill_from(Names {
            pod: Some("second".into()),
            namespace: Some("ns".into()),
            runtime: Some(Runtime::Docker),
            ..Names::default()
        });
        assert_eq!(n.pod.as_deref(), Some("first"));
        assert_eq!(n.namespace.as_deref(), Some("ns"));
        assert_eq!(n.runtime, Some(Runtime::Docker));
        assert!(!n.is_empty());
        assert!(Names::default().is_empty());
    }

    fn unit(name: &str) -> Workload {
        Workload::new(&format!("/system.slice/{name}"), Names::default())
    }

    #[test]
    fn table_hits_misses_and_the_queue() {
        let mut t = WorkloadTable::default();
        assert_eq!(t.resolve(7, 1), Lookup::Queued);
        assert_eq!(t.resolve(7, 2), Lookup::Queued);
        assert_eq!(t.resolve(8, 3), Lookup::Queued);
        assert_eq!(t.pending_len(), 2, "a miss is queued once");
        assert_eq!(t.take_pending(1), vec![7]);
        assert_eq!(t.take_pending(10), vec![8]);
        assert!(t.take_pending(10).is_empty());
        t.insert(7, unit("a.service"), 4);
        match t.resolve(7, 5) {
            Lookup::Known(w) => assert_eq!(&*w.display, "a.service"),
            other => panic!("{other:?}"),
        }
        // Taken and not answered: queued again at the next sight.
        assert_eq!(t.resolve(8, 6), Lookup::Queued);
        t.mark_gone(8);
        assert_eq!(t.resolve(8, 7), Lookup::Gone);
        assert!(t.is_gone(8));
        assert_eq!(
            t.pending_len(),
            1,
            "a gone id stays in the queue until taken"
        );
        assert_eq!(t.take_pending(10), vec![8]);
        assert_eq!(
            t.resolve(0, 8),
            Lookup::Gone,
            "id 0 (no owner) is never queued"
        );
        assert_eq!(t.pending_len(), 0);
        assert_eq!(&*t.resolve(0, 8).into_workload(0).display, "cgroup:0");
        // Found after all: it leaves the negative cache.
        t.insert(8, unit("b.service"), 9);
        assert!(!t.is_gone(8));
        assert_eq!(t.len(), 2);
        // A known workload never becomes gone.
        t.mark_gone(7);
        assert!(matches!(t.resolve(7, 10), Lookup::Known(_)));
        assert_eq!(t.iter().count(), 2);
        assert!(t.get(8).is_some() && t.get(9).is_none());
    }

    #[test]
    fn table_evicts_the_least_recently_seen() {
        let mut t = WorkloadTable::with_capacity(16, 4);
        for id in 1..=16 {
            t.insert(id, unit("x.service"), id);
        }
        // Ids 1 and 2 are seen again: they are recent now.
        t.resolve(1, 100);
        t.resolve(2, 100);
        t.insert(17, unit("y.service"), 101);
        assert_eq!(t.len(), 15, "an eighth (2) went, one came");
        assert_eq!(t.evicted(), 2);
        assert!(t.get(1).is_some() && t.get(2).is_some());
        assert!(
            t.get(3).is_none() && t.get(4).is_none(),
            "the two oldest went"
        );
        for id in 100..10_000 {
            t.insert(id, unit("z.service"), id);
            assert!(t.len() <= 16);
        }
        // The negative cache is bounded too, oldest out first.
        for id in 20_000..20_010 {
            t.mark_gone(id);
        }
        assert!(!t.is_gone(20_005));
        assert!(t.is_gone(20_006) && t.is_gone(20_009));
    }

    #[test]
    fn the_pending_queue_is_bounded() {
        let mut t = WorkloadTable::default();
        for id in 1..=(PENDING_CAPACITY as u64 + 100) {
            t.resolve(id, 0);
        }
        assert_eq!(t.pending_len(), PENDING_CAPACITY);
    }

    fn filter(cg: &[&str], ct: &[&str], un: &[&str]) -> Result<WorkloadFilter, FilterError> {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        WorkloadFilter::parse(&v(cg), &v(ct), &v(un))
    }

    #[test]
    fn filters_match_paths_containers_and_units() {
        let payments = Workload::new(
            "/tcptrace-test-1/system.slice/payments.service",
            Names::default(),
        );
        let docker = Workload::new(
            &format!("/tcptrace-test-1/system.slice/docker-{}.scope", a()),
            Names {
                container_name: Some("web-1".into()),
                ..Names::default()
            },
        );
        let k8s = Workload::new(
            &format!(
                "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{}.scope",
                b()
            ),
            Names {
                pod: Some("pay".into()),
                namespace: Some("shop".into()),
                k8s_container: Some("app".into()),
                ..Names::default()
            },
        );
        let user = Workload::new(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
            Names::default(),
        );
        let unknown = Workload::unknown(3);

        let none = filter(&[], &[], &[]).unwrap();
        assert!(!none.narrows());
        assert!(none.matches(&unknown) && none.matches(&payments));

        let f = filter(&["/tcptrace-test-1/system.slice/"], &[], &[]).unwrap();
        assert_eq!(f.cgroups(), ["/tcptrace-test-1/system.slice"]);
        assert!(f.matches(&payments) && f.matches(&docker));
        assert!(!f.matches(&k8s) && !f.matches(&unknown));
        let f = filter(&["/tcptrace-test-1/system.sl"], &[], &[]).unwrap();
        assert!(
            !f.matches(&payments),
            "prefixes stop at component boundaries"
        );
        assert!(filter(&["/"], &[], &[]).unwrap().matches(&k8s));
        assert!(!filter(&["/"], &[], &[]).unwrap().matches(&unknown));

        for (value, hit) in [
            ("aaaa", &docker),
            ("web-1", &docker),
            ("/web-1", &docker),
            ("app", &k8s),
            ("shop/pay/app", &k8s),
            ("bbbbbbbbbbbb", &k8s),
        ] {
            let f = filter(&[], &[value], &[]).unwrap();
            assert!(f.matches(hit), "{value}");
            assert!(!f.matches(&payments), "{value}");
        }
        assert!(!filter(&[], &["aaab"], &[]).unwrap().matches(&docker));
        assert!(
            !filter(&[], &["web"], &[]).unwrap().matches(&docker),
            "names are exact"
        );

        let f = filter(&[], &[], &["payments"]).unwrap();
        assert_eq!(f.units(), ["payments.service"]);
        assert!(f.matches(&payments) && !f.matches(&docker));
        assert!(filter(&[], &[], &["foo.service"]).unwrap().matches(&user));
        assert!(
            filter(&[], &[], &["user@1000.service/foo"])
                .unwrap()
                .matches(&user)
        );
        assert!(
            !filter(&[], &[], &["user@1001.service/foo"])
                .unwrap()
                .matches(&user)
        );
        let dscope = format!("docker-{}.scope", a());
        assert!(
            filter(&[], &[], &[dscope.as_str()])
                .unwrap()
                .matches(&docker)
        );

        // OR across flags.
        let f = filter(&[], &["web-1"], &["payments.service"]).unwrap();
        assert!(f.matches(&payments) && f.matches(&docker) && !f.matches(&k8s));
    }

    #[test]
    fn malformed_filters_are_one_line_errors() {
        for bad in [
            "relative", "/a//b", "/a/./b", "/a/../b", "", "/a\nb", "//", "/a/b//",
        ] {
            let e = filter(&[bad], &[], &[]).unwrap_err();
            assert!(e.0.starts_with("--cgroup"), "{bad}: {e}");
            assert!(!e.0.contains('\n'), "{bad}");
        }
        for bad in ["", "/", "a\x1bb"] {
            assert!(filter(&[], &[bad], &[]).is_err(), "{bad:?}");
        }
        for bad in ["", "a b", "x/y.service", ".service", "user@1000.service/"] {
            assert!(filter(&[], &[], &[bad]).is_err(), "{bad:?}");
        }
        let nine: Vec<&str> = vec!["/a"; 9];
        assert!(filter(&nine, &[], &[]).unwrap_err().0.contains("at most 8"));
    }

    proptest! {
        #[test]
        fn classify_never_panics(s in any::<String>()) {
            let _ = classify(&s);
            let w = Workload::new(&s, Names::default());
            prop_assert!(!w.display.is_empty());
            prop_assert!(w.display.len() <= MAX_DISPLAY_BYTES);
            prop_assert!(!w.display.chars().any(char::is_control));
        }

        #[test]
        fn shaped_paths_never_panic(parts in proptest::collection::vec(
            prop_oneof![
                Just("kubepods".to_string()), Just("burstable".to_string()),
                Just("kubepods.slice".to_string()), Just("docker".to_string()),
                Just(format!("pod{UID}")), Just(format!("kubepods-pod{UID_}.slice")),
                Just("a".repeat(64)), Just(format!("docker-{}.scope", "a".repeat(64))),
                Just("user@1000.service".to_string()), Just("user-1000.slice".to_string()),
                Just("x.service".to_string()), Just("session-1.scope".to_string()),
                "\\PC{0,12}",
            ], 0..8),
            name in any::<String>(), pod in any::<String>(), ns in any::<String>())
        {
            let path = format!("/{}", parts.join("/"));
            let names = Names {
                container_name: Some(name),
                pod: Some(pod),
                namespace: Some(ns),
                ..Names::default()
            };
            let w = Workload::new(&path, names);
            prop_assert!(!w.display.is_empty());
            prop_assert!(w.display.len() <= MAX_DISPLAY_BYTES);
            prop_assert!(!w.display.chars().any(char::is_control));
            prop_assert_eq!(display(&w), w.display.to_string());
        }

        #[test]
        fn filter_parse_never_panics(c in any::<String>(), k in any::<String>(), u in any::<String>()) {
            let _ = WorkloadFilter::parse(std::slice::from_ref(&c), &[], &[]);
            let _ = WorkloadFilter::parse(&[], &[k], &[]);
            let _ = WorkloadFilter::parse(&[], &[], &[u]);
            if let Ok(f) = WorkloadFilter::parse(std::slice::from_ref(&c), &[], &[]) {
                prop_assert!(f.matches(&Workload::new(&c, Names::default())));
            }
        }
    }
}
