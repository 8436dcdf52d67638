//! The live commands' workload wiring: which workloads the user asked for
//! (`--cgroup`, `--container`, `--unit`, `--netns`), matched in userspace
//! against the [`WorkloadResolver`]'s names, with one verdict cached per
//! cgroup id so that an event costs one hash lookup when a filter is set
//! and nothing when none is; and the one warning line when a well-formed
//! filter matches nothing running yet.
//!
//! Events whose owner's cgroup is unknown (owner not captured, or a socket
//! older than the tracer whose owner is known by pid only) are judged by
//! the owner's `/proc/PID/cgroup` when there is a pid, else dropped while a
//! workload filter is set. Sockets of a sock_diag snapshot are judged by
//! the cgroup the kernel reported for each (its creator's), so an orphan
//! or a socket whose process is out of sight still matches its workload.

use std::{path::PathBuf, sync::Arc};

use rustc_hash::FxHashMap;
use tcptrace_core::{
    model::{Event, SeenSocket},
    output::escape,
    workload::{Workload, WorkloadFilter},
};

use crate::seed::{runtimes::RuntimeRoots, workloads::WorkloadResolver};

/// `--netns NAME` names: `ip netns add NAME` bind-mounts the namespace here.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// Values `--netns` takes at most.
pub const MAX_NETNS: usize = 8;

/// What the user asked for, validated (built by `cli`).
#[derive(Clone, Debug, Default)]
pub struct WorkloadOptions {
    pub filter: WorkloadFilter,
    /// `--netns` inodes (names already looked up).
    pub netns: Vec<u32>,
    /// `--netns` names that do not exist yet (one warning at start).
    pub netns_missing: Vec<String>,
    /// The flags as given, for the warning.
    pub described: String,
    /// Where runtime names are read (hidden `--workload-roots`; `/`).
    pub roots: Option<PathBuf>,
}

impl WorkloadOptions {
    /// Whether any workload or netns filter was given.
    pub fn narrows(&self) -> bool {
        self.filter.narrows() || !self.netns.is_empty() || !self.netns_missing.is_empty()
    }
}

/// `--netns INODE|NAME` values: digits are an inode; a name is looked up
/// in [`NETNS_RUN_DIR`]. Malformed: the one line to print (exit 2).
/// Returns the inodes and the names not found.
pub fn parse_netns(values: &[String]) -> Result<(Vec<u32>, Vec<String>), String> {
    if values.len() > MAX_NETNS {
        return Err(format!(
            "--netns given {} times: at most {MAX_NETNS}",
            values.len()
        ));
    }
    let mut inodes = Vec::new();
    let mut missing = Vec::new();
    for v in values {
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            let ino =
                v.parse::<u32>().ok().filter(|&i| i != 0).ok_or_else(|| {
                    format!("--netns {v}: not a namespace inode (1 to 4294967295)")
                })?;
            inodes.push(ino);
            continue;
        }
        let valid = (1..=64).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && v != "."
            && v != "..";
        if !valid {
            return Err(format!(
                "--netns {:?}: give a namespace inode or an `ip netns` name ([A-Za-z0-9_.-], up to 64)",
                escape(v)
            ));
        }
        let path = std::path::Path::new(NETNS_RUN_DIR).join(v);
        match crate::seed::netns::namespace_inode(&path) {
            Ok(ino) => inodes.push(u32::try_from(ino).unwrap_or(u32::MAX)),
            Err(_) => missing.push(v.clone()),
        }
    }
    Ok((inodes, missing))
}

/// The live source's workload state: the resolver and the filter's
/// verdicts by cgroup id.
#[derive(Debug)]
pub struct Workloads {
    pub resolver: WorkloadResolver,
    opts: WorkloadOptions,
    verdicts: FxHashMap<u64, bool>,
    pid_verdicts: FxHashMap<u32, bool>,
}

/// Verdicts cached at most (then the cache starts again).
const VERDICTS: usize = 1 << 16;

impl Workloads {
    pub fn new(opts: WorkloadOptions) -> Self {
        let roots = opts
            .roots
            .clone()
            .map_or_else(RuntimeRoots::default, RuntimeRoots::new);
        Self {
            resolver: WorkloadResolver::new(roots),
            opts,
            verdicts: FxHashMap::default(),
            pid_verdicts: FxHashMap::default(),
        }
    }

    pub fn narrows(&self) -> bool {
        self.opts.narrows()
    }

    fn cgroup_kept(&mut self, id: u64) -> bool {
        if let Some(&v) = self.verdicts.get(&id) {
            return v;
        }
        // First sight of this id: resolved now (one handle lookup), so the
        // verdict is final; an id not resolvable is not kept.
        let w = self.resolver.resolve(id);
        let v = self.opts.filter.matches(&w);
        if self.verdicts.len() >= VERDICTS {
            self.verdicts.clear();
        }
        self.verdicts.insert(id, v);
        v
    }

    fn pid_kept(&mut self, pid: u32) -> bool {
        if let Some(&v) = self.pid_verdicts.get(&pid) {
            return v;
        }
        let v = self
            .resolver
            .from_pid(pid)
            .is_some_and(|w| self.opts.filter.matches(&w));
        if self.pid_verdicts.len() >= VERDICTS {
            self.pid_verdicts.clear();
        }
        self.pid_verdicts.insert(pid, v);
        v
    }

    /// Whether `e` passes the workload and netns filters.
    pub fn keeps_event(&mut self, e: &Event) -> bool {
        if !self.opts.netns.is_empty() || !self.opts.netns_missing.is_empty() {
            let Some(ns) = e.netns else { return false };
            if !self.opts.netns.contains(&ns) {
                return false;
            }
        }
        if !self.opts.filter.narrows() {
            return true;
        }
        match e.owner {
            Some(o) if o.cgroup != 0 => self.cgroup_kept(o.cgroup),
            Some(o) => self.pid_kept(o.pid),
            None => false,
        }
    }

    /// Whether a socket of a sock_diag snapshot passes them: judged by the
    /// cgroup sock_diag reported for the socket (the one its workload is
    /// counted under, see `ConnTable::seed`), else by its owner's
    /// `/proc/PID/cgroup` (timewait sockets, kernels before 5.7).
    pub fn keeps_seen(&mut self, s: &SeenSocket) -> bool {
        if !self.opts.netns.is_empty() || !self.opts.netns_missing.is_empty() {
            let Some(ns) = s.netns else { return false };
            if !self.opts.netns.contains(&ns) {
                return false;
            }
        }
        if !self.opts.filter.narrows() {
            return true;
        }
        match (s.cgroup, s.owner) {
            (Some(id), _) => self.cgroup_kept(id),
            (None, Some(o)) => self.pid_kept(o.pid),
            (None, None) => false,
        }
    }

    /// The one warning line when a filter names nothing running now (or
    /// `None`): `--cgroup` paths that do not exist, a `--netns` name not
    /// in /run/netns, `--unit`/`--container` matching no live process's
    /// cgroup (a bounded scan of /proc).
    pub fn nothing_matches_warning(&mut self) -> Option<String> {
        if !self.narrows() {
            return None;
        }
        if !self.opts.netns_missing.is_empty() {
            return Some(format!(
                "warning: --netns {} names no namespace in {NETNS_RUN_DIR} yet; its events show once it exists",
                self.opts.netns_missing.join(",")
            ));
        }
        if !self.opts.filter.narrows() {
            return None;
        }
        let cgroup_exists = self
            .opts
            .filter
            .cgroups()
            .iter()
            .any(|p| self.resolver.id_of(p).is_some());
        if cgroup_exists {
            return None;
        }
        if self.any_process_matches() {
            return None;
        }
        Some(format!(
            "warning: {} matches no running workload yet; events show once it starts",
            self.opts.described
        ))
    }

    /// Whether any live process (at most 20 000 looked at) is in a
    /// matching workload.
    fn any_process_matches(&mut self) -> bool {
        crate::seed::host::one_pid_per_cgroup(20_000)
            .into_iter()
            .any(|(pid, _)| self.pid_kept(pid))
    }

    /// The workload of cgroup `id` from the cache (a miss is queued).
    pub fn cached(&mut self, id: u64) -> Option<Arc<Workload>> {
        if id == 0 {
            return None;
        }
        self.resolver.lookup(id)
    }
}

/// Misses resolved after each drain at most, and for how long.
pub const PENDING_PER_DRAIN: usize = 64;
pub const PENDING_BUDGET: std::time::Duration = std::time::Duration::from_millis(20);

impl Workloads {
    /// After a drain: queued misses answered within the budget.
    pub fn after_drain(&mut self) {
        self.resolver
            .resolve_pending(PENDING_PER_DRAIN, PENDING_BUDGET);
    }

    /// The status object of `stats --json` (`workloads`).
    pub fn status(&self) -> tcptrace_core::stats::workloads::WorkloadStatus {
        let s = self.resolver.status();
        tcptrace_core::stats::workloads::WorkloadStatus {
            method: s.method,
            cgroup2: s.cgroup2.map(|p| p.display().to_string()),
            resolved: s.resolved as u64,
            unresolved: s.unresolved,
            read_errors: s.read_errors,
        }
    }

    /// Names the snapshot's workloads (see
    /// [`tcptrace_core::stats::workloads::fold`]): cgroup ids through the
    /// resolver (one lookup per id not cached yet, bounded by the ids in
    /// the snapshot), owners known by pid through `/proc/PID/cgroup`; with
    /// the engine's aggregates, the workloads' CLOSE_WAIT growth too.
    pub fn fold(
        &mut self,
        snap: &mut tcptrace_core::stats::Snapshot,
        aggs: Option<&mut tcptrace_core::stats::Aggregates>,
    ) {
        use tcptrace_core::stats::workloads::{WorkloadKey, fold};
        let status = self.status();
        let resolver = &mut self.resolver;
        fold(
            snap,
            &mut |key| match key {
                WorkloadKey::Cgroup(id) => Some(resolver.resolve(id)),
                WorkloadKey::Pid(pid) => resolver.from_pid(pid),
                WorkloadKey::Unknown => None,
            },
            Some(status),
            aggs,
        );
    }
}

impl Workloads {
    /// The workload of an event's owner, for printing: its cgroup resolved
    /// now on first sight (one handle lookup, cached after), so that a
    /// short-lived container still gets its name; `None` with no owner
    /// cgroup.
    pub fn of_owner(
        &mut self,
        owner: Option<tcptrace_core::model::Owner>,
    ) -> Option<Arc<Workload>> {
        let id = owner?.cgroup;
        (id != 0).then(|| self.resolver.resolve(id))
    }
}

impl crate::ebpf::LoadOptions {
    /// With the workload filters (applied by the live source).
    pub fn with_workloads(mut self, workloads: WorkloadOptions) -> Self {
        self.workloads = workloads;
        self
    }
}
