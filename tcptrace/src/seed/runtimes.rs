//! Container and pod names read from the host's disk, with no network and
//! no runtime client: a cgroup path gives only ids (`docker-<64hex>.scope`,
//! `kubepods-…-pod<uid>.slice`), and "which of forty pods leaks" needs
//! `shop/payments-7d9f-abcde/app` or `docker/web-1`.
//!
//! Sources, in the order they are asked (the first answer wins, each answer
//! is cached by container id):
//! 1. `/var/log/containers/<pod>_<ns>_<container>-<64hex>.log` (kubelet's
//!    links, any runtime): names of entries only, never followed.
//! 2. `/var/log/pods/<ns>_<pod>_<uid>/`: pod uid -> namespace and pod.
//! 3. containerd's task bundles
//!    `/run/containerd/io.containerd.runtime.v2.task/<ns>/<id>/config.json`
//!    (OCI spec; `io.kubernetes.cri.*` annotations, `nerdctl/name`).
//! 4. Docker's `/var/lib/docker/containers/<id>/config.v2.json` (`Name`,
//!    compose and cri-dockerd labels).
//! 5. CRI-O's `…/overlay-containers/<id>/userdata/config.json` under
//!    `/var/lib/containers/storage` then `/run/containers/storage`
//!    (`io.kubernetes.*` annotations).
//! 6. containers/storage's `containers.json` (Podman names; one file for
//!    all containers: read at most once per 10 s, only for Podman).
//!
//! The files are root-owned but their content is input. Ids are validated
//! (`^[0-9a-f]{64}$`, pod uids, containerd namespaces) before any path is
//! built, and nothing read is ever joined into a path. Below each trusted
//! root every component is opened with `O_NOFOLLOW`; a file must be a
//! regular file owned by root and not world-writable, at most 1 MiB (16 MiB
//! for `containers.json`), nested at most 64 deep. Directory scans stop at
//! 20 000 entries and run at most every 5 s; at most 200 files are read per
//! second. Whatever is skipped is counted by source and reason, never fatal.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::Read,
    os::{
        fd::AsFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Deserialize;
use tcptrace_core::workload::{Names, Runtime, Shape, is_container_id, valid_pod_uid};

use super::cgroupfs::{open_below, open_dir_below};

/// Cap of one runtime state file.
pub const MAX_STATE_FILE: u64 = 1 << 20;
/// Cap of containers/storage's `containers.json`.
pub const MAX_STORAGE_FILE: u64 = 16 << 20;
/// Deepest JSON nesting accepted.
pub const MAX_JSON_DEPTH: usize = 64;
/// Entries read per directory scan.
pub const MAX_DIR_ENTRIES: usize = 20_000;
/// Files read per second, all sources together.
pub const MAX_READS_PER_SEC: u32 = 200;
/// Directory indexes are rescanned on a miss at most this often.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(5);
/// `containers.json` is read at most this often.
pub const STORAGE_INTERVAL: Duration = Duration::from_secs(10);
/// Containerd namespaces tried at most.
const MAX_CONTAINERD_NAMESPACES: usize = 16;
/// Cached answers at most (cleared when full: they are cheap to find again).
const MAX_CACHED: usize = 16_384;

const LOG_CONTAINERS: &str = "var/log/containers";
const LOG_PODS: &str = "var/log/pods";
const CONTAINERD_TASKS: &str = "run/containerd/io.containerd.runtime.v2.task";
const DOCKER_CONTAINERS: &str = "var/lib/docker/containers";
const STORAGE_DIRS: [&str; 2] = [
    "var/lib/containers/storage/overlay-containers",
    "run/containers/storage/overlay-containers",
];

/// Where the runtimes' directories are: `prefix` joined to the standard
/// paths (`/` on a host; the host's root mounted elsewhere, or a test's
/// fixture directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeRoots {
    pub prefix: PathBuf,
}

impl Default for RuntimeRoots {
    fn default() -> Self {
        Self {
            prefix: PathBuf::from("/"),
        }
    }
}

impl RuntimeRoots {
    pub fn new(prefix: impl Into<PathBuf>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    fn dir(&self, rel: &str) -> PathBuf {
        self.prefix.join(rel)
    }
}

/// Why a file gave no names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    /// Absent: not an error (that runtime is not used here).
    Missing,
    /// A symlink, not a regular file, not root's, or world-writable.
    Unsafe,
    Oversize,
    Io,
}

impl Skip {
    fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Unsafe => "unsafe",
            Self::Oversize => "oversize",
            Self::Io => "io",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct K8sRef {
    pod: String,
    namespace: String,
    container: String,
}

/// The names reader, with its caches, indexes and counters.
#[derive(Debug)]
pub struct RuntimeNames {
    roots: RuntimeRoots,
    by_container: HashMap<String, Names>,
    k8s_logs: HashMap<String, K8sRef>,
    k8s_logs_scanned: Option<Instant>,
    pods: HashMap<String, (String, String)>,
    pods_scanned: Option<Instant>,
    storage: HashMap<String, String>,
    storage_read: Option<Instant>,
    window: (Instant, u32),
    errors: BTreeMap<(&'static str, &'static str), u64>,
    reads: u64,
}

impl RuntimeNames {
    pub fn new(roots: RuntimeRoots) -> Self {
        Self {
            roots,
            by_container: HashMap::new(),
            k8s_logs: HashMap::new(),
            k8s_logs_scanned: None,
            pods: HashMap::new(),
            pods_scanned: None,
            storage: HashMap::new(),
            storage_read: None,
            window: (Instant::now(), 0),
            errors: BTreeMap::new(),
            reads: 0,
        }
    }

    pub fn roots(&self) -> &RuntimeRoots {
        &self.roots
    }

    /// Files skipped, by `(source, reason)`: `reason` is `unsafe`
    /// (symlink, not a regular root-owned file, world-writable),
    /// `oversize`, `json` (malformed or nested too deep) or `io`.
    pub fn errors(&self) -> &BTreeMap<(&'static str, &'static str), u64> {
        &self.errors
    }

    /// All skipped files.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Files opened for reading so far.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// The names of the workload `shape` describes, and whether the answer
    /// is final (`false` when the read budget ran out: ask again later).
    pub fn names_for(&mut self, shape: &Shape) -> (Names, bool) {
        let mut names = Names::default();
        let mut complete = true;
        if let Some(id) = shape
            .container_id
            .as_deref()
            .filter(|id| is_container_id(id))
        {
            if let Some(cached) = self.by_container.get(id) {
                names = cached.clone();
            } else {
                complete = self.container_names(id, shape.runtime, &mut names);
                if complete && !names.is_empty() {
                    if self.by_container.len() >= MAX_CACHED {
                        self.by_container.clear();
                    }
                    self.by_container.insert(id.to_string(), names.clone());
                }
            }
        }
        let uid = shape.pod_uid.clone().or_else(|| names.pod_uid.clone());
        if let Some(uid) = uid.filter(|u| valid_pod_uid(u))
            && (names.pod.is_none() || names.namespace.is_none())
            && let Some((ns, pod)) = self.pod_by_uid(&uid)
        {
            names.fill_from(Names {
                namespace: Some(ns),
                pod: Some(pod),
                ..Names::default()
            });
        }
        (names, complete)
    }

    /// Sources 1 and 3–6 for one container; false when the budget ran out.
    fn container_names(&mut self, id: &str, runtime: Option<Runtime>, names: &mut Names) -> bool {
        if let Some(k) = self.k8s_log(id) {
            names.fill_from(Names {
                pod: Some(k.pod),
                namespace: Some(k.namespace),
                k8s_container: Some(k.container),
                ..Names::default()
            });
        }
        let k8s_complete = names.k8s_container.is_some();
        if k8s_complete && runtime.is_some() {
            return true;
        }
        let order: &[Runtime] = match runtime {
            Some(Runtime::Containerd) => &[Runtime::Containerd],
            Some(Runtime::Docker) => &[Runtime::Docker],
            Some(Runtime::CriO) => &[Runtime::CriO],
            Some(Runtime::Podman) => &[Runtime::Podman],
            None => &[Runtime::Containerd, Runtime::CriO, Runtime::Docker],
        };
        for rt in order {
            let found = match rt {
                Runtime::Containerd => self.containerd(id),
                Runtime::Docker => self.docker(id),
                Runtime::CriO => self.crio(id),
                Runtime::Podman => self.podman(id),
            };
            match found {
                Some(Some(n)) => {
                    names.fill_from(n);
                    return true;
                }
                Some(None) => {}
                None => return false,
            }
        }
        true
    }

    /// Source 1: `<pod>_<ns>_<container>-<id>.log`, rescanned on a miss.
    fn k8s_log(&mut self, id: &str) -> Option<K8sRef> {
        if !self.k8s_logs.contains_key(id) && due(self.k8s_logs_scanned, RESCAN_INTERVAL) {
            self.k8s_logs_scanned = Some(Instant::now());
            let mut index = HashMap::new();
            for name in scan_names(&self.roots.dir(LOG_CONTAINERS)) {
                if let Some((id, k)) = parse_container_log_name(&name) {
                    index.insert(id, k);
                }
            }
            self.k8s_logs = index;
        }
        self.k8s_logs.get(id).cloned()
    }

    /// Source 2: `<ns>_<pod>_<uid>`, rescanned on a miss.
    fn pod_by_uid(&mut self, uid: &str) -> Option<(String, String)> {
        if !self.pods.contains_key(uid) && due(self.pods_scanned, RESCAN_INTERVAL) {
            self.pods_scanned = Some(Instant::now());
            let mut index = HashMap::new();
            for name in scan_names(&self.roots.dir(LOG_PODS)) {
                if let Some((ns, pod, uid)) = parse_pod_dir_name(&name) {
                    index.insert(uid, (ns, pod));
                }
            }
            self.pods = index;
        }
        self.pods.get(uid).cloned()
    }

    /// Source 3. `None`: out of budget; `Some(None)`: nothing there.
    fn containerd(&mut self, id: &str) -> Option<Option<Names>> {
        let root = self.roots.dir(CONTAINERD_TASKS);
        let mut namespaces = vec!["k8s.io".to_string()];
        namespaces.extend(
            scan_names(&root)
                .into_iter()
                .filter(|n| n != "k8s.io" && valid_containerd_namespace(n))
                .take(MAX_CONTAINERD_NAMESPACES - 1),
        );
        for ns in namespaces {
            let bytes = match self.read(
                "containerd",
                &root,
                &[&ns, id, "config.json"],
                MAX_STATE_FILE,
            )? {
                Some(b) => b,
                None => continue,
            };
            let Some(spec) = self.parse::<OciSpec>("containerd", &bytes) else {
                return Some(None);
            };
            let a = spec.annotations.unwrap_or_default();
            let sandbox = a
                .get("io.kubernetes.cri.container-type")
                .map(String::as_str)
                == Some("sandbox");
            return Some(Some(Names {
                k8s_container: if sandbox {
                    None
                } else {
                    a.get("io.kubernetes.cri.container-name").cloned()
                },
                pod: a.get("io.kubernetes.cri.sandbox-name").cloned(),
                namespace: a.get("io.kubernetes.cri.sandbox-namespace").cloned(),
                pod_uid: a.get("io.kubernetes.cri.sandbox-uid").cloned(),
                container_name: a.get("nerdctl/name").cloned(),
                containerd_namespace: Some(ns),
                runtime: Some(Runtime::Containerd),
                ..Names::default()
            }));
        }
        Some(None)
    }

    /// Source 4.
    fn docker(&mut self, id: &str) -> Option<Option<Names>> {
        let root = self.roots.dir(DOCKER_CONTAINERS);
        let Some(bytes) = self.read("docker", &root, &[id, "config.v2.json"], MAX_STATE_FILE)?
        else {
            return Some(None);
        };
        let Some(config) = self.parse::<DockerConfig>("docker", &bytes) else {
            return Some(None);
        };
        let labels = config.config.and_then(|c| c.labels).unwrap_or_default();
        let label = |k: &str| labels.get(k).cloned();
        Some(Some(Names {
            container_name: config
                .name
                .map(|n| n.trim_start_matches('/').to_string())
                .filter(|n| !n.is_empty()),
            k8s_container: label("io.kubernetes.container.name"),
            pod: label("io.kubernetes.pod.name"),
            namespace: label("io.kubernetes.pod.namespace"),
            pod_uid: label("io.kubernetes.pod.uid"),
            compose_project: label("com.docker.compose.project"),
            compose_service: label("com.docker.compose.service"),
            runtime: Some(Runtime::Docker),
            ..Names::default()
        }))
    }

    /// Source 5.
    fn crio(&mut self, id: &str) -> Option<Option<Names>> {
        for dir in STORAGE_DIRS {
            let root = self.roots.dir(dir);
            let Some(bytes) = self.read(
                "cri-o",
                &root,
                &[id, "userdata", "config.json"],
                MAX_STATE_FILE,
            )?
            else {
                continue;
            };
            let Some(spec) = self.parse::<OciSpec>("cri-o", &bytes) else {
                return Some(None);
            };
            let a = spec.annotations.unwrap_or_default();
            let crio = a.keys().any(|k| k.starts_with("io.kubernetes.cri-o."));
            return Some(Some(Names {
                k8s_container: a.get("io.kubernetes.container.name").cloned(),
                pod: a.get("io.kubernetes.pod.name").cloned(),
                namespace: a.get("io.kubernetes.pod.namespace").cloned(),
                pod_uid: a.get("io.kubernetes.pod.uid").cloned(),
                runtime: crio.then_some(Runtime::CriO),
                ..Names::default()
            }));
        }
        Some(None)
    }

    /// Source 6: one file for every container, read at most every 10 s.
    fn podman(&mut self, id: &str) -> Option<Option<Names>> {
        if !self.storage.contains_key(id) && due(self.storage_read, STORAGE_INTERVAL) {
            self.storage_read = Some(Instant::now());
            let mut index = HashMap::new();
            for dir in STORAGE_DIRS {
                let root = self.roots.dir(dir);
                for file in ["containers.json", "volatile-containers.json"] {
                    let Some(bytes) = self.read("storage", &root, &[file], MAX_STORAGE_FILE)?
                    else {
                        continue;
                    };
                    let Some(list) = self.parse::<Vec<StorageContainer>>("storage", &bytes) else {
                        continue;
                    };
                    for c in list.into_iter().take(100_000) {
                        if let (true, Some(name)) =
                            (is_container_id(&c.id), c.names.into_iter().next())
                        {
                            index.insert(c.id, name);
                        }
                    }
                }
            }
            self.storage = index;
        }
        Some(self.storage.get(id).map(|name| Names {
            container_name: Some(name.clone()),
            runtime: Some(Runtime::Podman),
            ..Names::default()
        }))
    }

    /// A capped, checked read of `root/rel…`. `None`: out of budget;
    /// `Some(None)`: no usable file (counted unless simply absent).
    fn read(
        &mut self,
        source: &'static str,
        root: &Path,
        rel: &[&str],
        cap: u64,
    ) -> Option<Option<Vec<u8>>> {
        if !self.take_budget() {
            return None;
        }
        self.reads += 1;
        match read_checked(root, rel, cap) {
            Ok(bytes) => Some(Some(bytes)),
            Err(Skip::Missing) => Some(None),
            Err(skip) => {
                log::debug!(
                    "{source}: skipped {}/{}: {}",
                    root.display(),
                    rel.join("/"),
                    skip.reason()
                );
                *self.errors.entry((source, skip.reason())).or_default() += 1;
                Some(None)
            }
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &mut self,
        source: &'static str,
        bytes: &[u8],
    ) -> Option<T> {
        let parsed = json_depth_ok(bytes, MAX_JSON_DEPTH)
            .then(|| serde_json::from_slice(bytes).ok())
            .flatten();
        if parsed.is_none() {
            *self.errors.entry((source, "json")).or_default() += 1;
        }
        parsed
    }

    fn take_budget(&mut self) -> bool {
        let (start, used) = &mut self.window;
        if start.elapsed() >= Duration::from_secs(1) {
            *start = Instant::now();
            *used = 0;
        }
        if *used >= MAX_READS_PER_SEC {
            return false;
        }
        *used += 1;
        true
    }
}

fn due(last: Option<Instant>, every: Duration) -> bool {
    last.is_none_or(|t| t.elapsed() >= every)
}

#[derive(Deserialize)]
struct OciSpec {
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "Config", default)]
    config: Option<DockerInner>,
}

#[derive(Deserialize)]
struct DockerInner {
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
struct StorageContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// Opens `root` (trusted: it may be a symlink the admin made), then each
/// component of `rel` with `O_NOFOLLOW`; the file must be a regular file of
/// root's, not world-writable, and at most `cap` bytes.
fn read_checked(root: &Path, rel: &[&str], cap: u64) -> Result<Vec<u8>, Skip> {
    let io_skip = |e: std::io::Error| match e.raw_os_error() {
        Some(libc::ENOENT) => Skip::Missing,
        Some(libc::ELOOP | libc::ENOTDIR) => Skip::Unsafe,
        _ => Skip::Io,
    };
    let (last, dirs) = rel.split_last().ok_or(Skip::Io)?;
    let mut dir: std::os::fd::OwnedFd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)
        .map_err(io_skip)?
        .into();
    for comp in dirs {
        dir = open_dir_below(dir.as_fd(), comp).map_err(io_skip)?;
    }
    let file = fs::File::from(open_below(dir.as_fd(), last, 0).map_err(io_skip)?);
    let meta = file.metadata().map_err(io_skip)?;
    if !meta.file_type().is_file() || meta.uid() != 0 || meta.mode() & 0o002 != 0 {
        return Err(Skip::Unsafe);
    }
    if meta.len() > cap {
        return Err(Skip::Oversize);
    }
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(io_skip)?;
    if bytes.len() as u64 > cap {
        return Err(Skip::Oversize);
    }
    Ok(bytes)
}

/// The names in directory `dir` (at most [`MAX_DIR_ENTRIES`]); none when
/// it is absent or unreadable.
fn scan_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .take(MAX_DIR_ENTRIES)
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}

/// `<pod>_<ns>_<container>-<64hex>.log` (kubelet's `/var/log/containers`
/// link names; DNS-1123 names have no `_`). Truncated names do not parse.
fn parse_container_log_name(name: &str) -> Option<(String, K8sRef)> {
    let stem = name.strip_suffix(".log")?;
    let split = stem.len().checked_sub(65)?;
    let (head, id) = (stem.get(..split)?, stem.get(split + 1..)?);
    if stem.as_bytes()[split] != b'-' || !is_container_id(id) {
        return None;
    }
    let parts: Vec<&str> = head.split('_').collect();
    let [pod, ns, container] = parts[..] else {
        return None;
    };
    if pod.is_empty() || ns.is_empty() || container.is_empty() {
        return None;
    }
    Some((
        id.to_string(),
        K8sRef {
            pod: pod.into(),
            namespace: ns.into(),
            container: container.into(),
        },
    ))
}

/// `<ns>_<pod>_<uid>` (kubelet's `/var/log/pods` directory names).
fn parse_pod_dir_name(name: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = name.split('_').collect();
    let [ns, pod, uid] = parts[..] else {
        return None;
    };
    (!ns.is_empty() && !pod.is_empty() && valid_pod_uid(uid))
        .then(|| (ns.into(), pod.into(), uid.into()))
}

/// `^[A-Za-z0-9._-]{1,76}$`, and not `.`/`..`.
fn valid_containerd_namespace(s: &str) -> bool {
    (1..=76).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `bytes` nests arrays/objects at most `max` deep (strings and
/// their escapes skipped), so no parser recursion is ever deep.
fn json_depth_ok(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_log_names() {
        let id = "b".repeat(64);
        let (got, k) =
            parse_container_log_name(&format!("payments-7d9f-abcde_shop_app-{id}.log")).unwrap();
        assert_eq!(got, id);
        assert_eq!(
            k,
            K8sRef {
                pod: "payments-7d9f-abcde".into(),
                namespace: "shop".into(),
                container: "app".into()
            }
        );
        for bad in [
            format!("pod_ns_ctr-{}.log", "B".repeat(64)),
            format!("pod_ns_ctr-{}.log", "b".repeat(63)),
            format!("pod_ns_ctr_{id}.log"),
            format!("pod_ctr-{id}.log"),
            format!("a_b_c_d-{id}.log"),
            format!("pod_ns_ctr-{id}"),
            format!("_ns_ctr-{id}.log"),
            "x.log".to_string(),
            "é".repeat(40),
        ] {
            assert_eq!(parse_container_log_name(&bad), None, "{bad}");
        }
    }

    #[test]
    fn pod_dir_names() {
        let uid = "1d2c3b4a-0000-1111-2222-333344445555";
        assert_eq!(
            parse_pod_dir_name(&format!("shop_payments-7d9f-abcde_{uid}")),
            Some(("shop".into(), "payments-7d9f-abcde".into(), uid.into()))
        );
        assert_eq!(parse_pod_dir_name("shop_p_not-a-uid"), None);
        assert_eq!(parse_pod_dir_name(&format!("p_{uid}")), None);
    }

    #[test]
    fn json_depth() {
        assert!(json_depth_ok(br#"{"a":[1,{"b":"[[[["}]}"#, 3));
        assert!(!json_depth_ok(br#"{"a":[1,{"b":[]}]}"#, 3));
        assert!(json_depth_ok(br#"{"a":"\"[[[[[["}"#, 1));
        assert!(!json_depth_ok(&[b'['; 100_000], MAX_JSON_DEPTH));
    }

    #[test]
    fn containerd_namespaces() {
        assert!(valid_containerd_namespace("k8s.io"));
        assert!(valid_containerd_namespace("default"));
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(77)] {
            assert!(!valid_containerd_namespace(bad), "{bad}");
        }
    }

    #[test]
    fn an_invalid_id_reads_nothing() {
        let mut names = RuntimeNames::new(RuntimeRoots::new("/nonexistent-tcptrace-root"));
        let shape = Shape {
            container_id: Some("../../../etc/passwd".into()),
            runtime: Some(Runtime::Docker),
            ..Shape::default()
        };
        let (n, complete) = names.names_for(&shape);
        assert!(n.is_empty() && complete);
        assert_eq!(names.reads(), 0);
    }
}
