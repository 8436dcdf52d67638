//! The workload resolver: cgroup id -> [`Workload`], for every place a
//! process is shown (a pid changes at every restart; the unit, container or
//! pod does not). It joins the three parts: [`cgroupfs`](super::cgroupfs)
//! (id -> path), `tcptrace_core::workload` (path -> shape, names -> display)
//! and [`runtimes`](super::runtimes) (names read on disk), over the core's
//! bounded [`WorkloadTable`].
//!
//! Bounded work: a call resolves at most one id (one handle lookup, or a
//! walk that is itself rate-limited and time-boxed) and reads at most a few
//! small files (the readers' global budget is 200 files per second).
//! [`resolve_pending`](WorkloadResolver::resolve_pending) drains queued misses
//! within a count and a time budget, for the loop to call after each drain.
//!
//! Public API (what the commands use):
//! - [`WorkloadResolver::new`] with [`RuntimeRoots`] (`/` on a host);
//! - [`resolve`](WorkloadResolver::resolve): an id's workload now (cache,
//!   else one lookup; `cgroup:<id>` when it cannot be known);
//! - [`lookup`](WorkloadResolver::lookup): the cache only, queueing a miss,
//!   and [`resolve_pending`](WorkloadResolver::resolve_pending) to answer
//!   the queue later;
//! - [`from_pid`](WorkloadResolver::from_pid): a live process's workload from
//!   `/proc/PID/cgroup`, when its socket's owner cgroup is unknown;
//! - [`status`](WorkloadResolver::status): method, mount and counters for
//!   `doctor` and `stats --json`.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tcptrace_core::workload::{Lookup as Cached, Workload, WorkloadKind, WorkloadTable, classify};

use super::{
    cgroupfs::{Cgroup2Root, Lookup},
    host,
    runtimes::{RuntimeNames, RuntimeRoots},
};

/// How attribution works on this host, and how well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// `handle`, `walk` or `unavailable` (no cgroup2 mount found).
    pub method: &'static str,
    /// The cgroup2 mount in use.
    pub cgroup2: Option<PathBuf>,
    /// Why there is none.
    pub unavailable: Option<String>,
    /// Workloads cached.
    pub resolved: usize,
    /// Lookups that ended as `cgroup:<id>` (gone, or not found yet).
    pub unresolved: u64,
    /// Runtime files skipped (symlinks, oversize, bad JSON, …).
    pub read_errors: u64,
}

/// cgroup id -> workload, cached and bounded.
#[derive(Debug)]
pub struct WorkloadResolver {
    cgroups: Result<Cgroup2Root, String>,
    names: RuntimeNames,
    table: WorkloadTable,
    epoch: Instant,
    unresolved: u64,
}

impl WorkloadResolver {
    /// Finds the host's cgroup2 tree (see [`Cgroup2Root::discover`]); names
    /// are read below `roots`. Without a cgroup2 mount every id shows as
    /// `cgroup:<id>` and [`status`](Self::status) says why.
    pub fn new(roots: RuntimeRoots) -> Self {
        Self::with_cgroups(Cgroup2Root::discover().map_err(|e| format!("{e:#}")), roots)
    }

    /// With a given tree (or the reason there is none).
    pub fn with_cgroups(cgroups: Result<Cgroup2Root, String>, roots: RuntimeRoots) -> Self {
        Self {
            cgroups,
            names: RuntimeNames::new(roots),
            table: WorkloadTable::default(),
            epoch: Instant::now(),
            unresolved: 0,
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The workload of cgroup `id`: from the cache, else looked up now (a
    /// workload that vanished keeps the name it had when first seen).
    pub fn resolve(&mut self, id: u64) -> Arc<Workload> {
        match self.table.resolve(id, self.now_ns()) {
            Cached::Known(w) => w,
            Cached::Gone => self.unknown(id),
            Cached::Queued => self.lookup_now(id),
        }
    }

    /// The cached workload of `id`, with no I/O; a miss is queued for
    /// [`resolve_pending`](Self::resolve_pending).
    pub fn lookup(&mut self, id: u64) -> Option<Arc<Workload>> {
        match self.table.resolve(id, self.now_ns()) {
            Cached::Known(w) => Some(w),
            Cached::Gone | Cached::Queued => None,
        }
    }

    /// Resolves queued misses, at most `max` of them and for about
    /// `budget` of wall time. Returns how many were answered.
    pub fn resolve_pending(&mut self, max: usize, budget: Duration) -> usize {
        let started = Instant::now();
        let mut answered = 0;
        while answered < max && started.elapsed() < budget {
            let Some(id) = self.table.take_pending(1).pop() else {
                break;
            };
            if self.table.get(id).is_some() || self.table.is_gone(id) {
                continue;
            }
            let w = self.lookup_now(id);
            if w.kind != WorkloadKind::Unknown {
                answered += 1;
            }
        }
        answered
    }

    /// One lookup: path, shape, names. Cached when final.
    fn lookup_now(&mut self, id: u64) -> Arc<Workload> {
        let Ok(cgroups) = &mut self.cgroups else {
            return self.unknown(id);
        };
        match cgroups.path_of(id) {
            Lookup::Found(path) => {
                let (names, complete) = self.names.names_for(&classify(&path));
                let w = Workload::new(&path, names);
                if complete {
                    self.table.insert(id, w, self.now_ns())
                } else {
                    Arc::new(w)
                }
            }
            Lookup::Gone => {
                self.table.mark_gone(id);
                self.unknown(id)
            }
            Lookup::Later => self.unknown(id),
        }
    }

    fn unknown(&mut self, id: u64) -> Arc<Workload> {
        self.unresolved += 1;
        Arc::new(Workload::unknown(id))
    }

    /// The workload of live process `pid` (the `0::` line of
    /// `/proc/PID/cgroup`): through its cgroup id when the tree shows it,
    /// else from the path alone. `None` when the process is gone.
    pub fn from_pid(&mut self, pid: u32) -> Option<Arc<Workload>> {
        let path = host::cgroup_path(pid)?;
        let id = self.cgroups.as_ref().ok().and_then(|c| c.id_of(&path).ok());
        if let Some(id) = id {
            let w = self.resolve(id);
            if w.kind != WorkloadKind::Unknown {
                return Some(w);
            }
        }
        let (names, _) = self.names.names_for(&classify(&path));
        Some(Arc::new(Workload::new(&path, names)))
    }

    /// The cgroup id of cgroup `path` (for `--cgroup`/`--unit` filters).
    pub fn id_of(&self, path: &str) -> Option<u64> {
        self.cgroups.as_ref().ok()?.id_of(path).ok()
    }

    /// The cache (read-only: to fold counts by id into workloads).
    pub fn table(&self) -> &WorkloadTable {
        &self.table
    }

    /// The id -> path part, when there is a cgroup2 tree.
    pub fn cgroups_mut(&mut self) -> Option<&mut Cgroup2Root> {
        self.cgroups.as_mut().ok()
    }

    /// The names reader (its counters per source).
    pub fn names(&self) -> &RuntimeNames {
        &self.names
    }

    pub fn status(&self) -> Status {
        let (method, cgroup2, unavailable) = match &self.cgroups {
            Ok(c) => (
                c.method().as_str(),
                Some(c.mount_point().to_path_buf()),
                None,
            ),
            Err(why) => ("unavailable", None, Some(why.clone())),
        };
        Status {
            method,
            cgroup2,
            unavailable,
            resolved: self.table.len(),
            unresolved: self.unresolved,
            read_errors: self.names.error_count(),
        }
    }
}
