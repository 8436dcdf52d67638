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

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

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
        match mounted_namespace_inode(&std::path::Path::new(NETNS_RUN_DIR).join(v)) {
            Some(ino) => inodes.push(ino),
            None => missing.push(v.clone()),
        }
    }
    Ok((inodes, missing))
}

/// The inode of the network namespace bind-mounted at `path`, when one is
/// (the file system there is nsfs); `None` for a missing name or the
/// plain file `ip netns add` creates before it mounts.
fn mounted_namespace_inode(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    /// `NSFS_MAGIC` of <linux/magic.h>.
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated path and a zeroed statfs the kernel fills.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut fs) } != 0 || fs.f_type != NSFS_MAGIC {
        return None;
    }
    let ino = crate::seed::netns::namespace_inode(path).ok()?;
    u32::try_from(ino).ok()
}

/// The live source's workload state: the resolver and the filter's
/// verdicts by cgroup id.
#[derive(Debug)]
pub struct Workloads {
    pub resolver: WorkloadResolver,
    opts: WorkloadOptions,
    verdicts: FxHashMap<u64, Verdict>,
    pid_verdicts: FxHashMap<u32, bool>,
    /// When `--netns` names not found at start were last looked for.
    netns_checked: Option<Instant>,
}

/// A filter's verdict on one cgroup id.
#[derive(Clone, Copy, Debug)]
enum Verdict {
    /// From a workload the resolver cached (or an id it knows is gone):
    /// it stands for the run.
    Final(bool),
    /// From a lookup that was not final (the tree walk not due yet, names
    /// not readable yet): asked again after [`RECHECK`].
    Until(bool, Instant),
}

/// Verdicts cached at most (then the cache starts again).
const VERDICTS: usize = 1 << 16;
/// How long a verdict from a lookup that was not final stands, and how
/// often `--netns` names that did not exist are looked for again.
const RECHECK: Duration = Duration::from_secs(1);

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
            netns_checked: None,
        }
    }

    pub fn narrows(&self) -> bool {
        self.opts.narrows()
    }

    fn cgroup_kept(&mut self, id: u64) -> bool {
        match self.verdicts.get(&id) {
            Some(&Verdict::Final(v)) => return v,
            Some(&Verdict::Until(v, until)) if Instant::now() < until => return v,
            _ => {}
        }
        // First sight of this id (or a verdict due again): resolved now
        // (one handle lookup). The verdict stands for the run only when the
        // resolver cached the workload or knows the id is gone; a lookup
        // that could not finish (the walk not due, names not readable yet)
        // is asked again a second later, so a workload started while
        // tracing is never dropped for the whole run.
        let w = self.resolver.resolve(id);
        let v = self.opts.filter.matches(&w);
        let table = self.resolver.table();
        let verdict = if table.get(id).is_some() || table.is_gone(id) {
            Verdict::Final(v)
        } else {
            Verdict::Until(v, Instant::now() + RECHECK)
        };
        if self.verdicts.len() >= VERDICTS {
            self.verdicts.clear();
        }
        self.verdicts.insert(id, verdict);
        v
    }

    /// Looks again (at most once per [`RECHECK`]) for `--netns` names that
    /// did not exist: `ip netns add NAME` after the start is kept from then
    /// on. Only a mounted namespace counts (the file `ip` creates before it
    /// bind-mounts would give a wrong inode).
    fn recheck_missing_netns(&mut self) {
        if self.opts.netns_missing.is_empty()
            || self.netns_checked.is_some_and(|t| t.elapsed() < RECHECK)
        {
            return;
        }
        self.netns_checked = Some(Instant::now());
        let opts = &mut self.opts;
        opts.netns_missing.retain(|name| {
            match mounted_namespace_inode(&std::path::Path::new(NETNS_RUN_DIR).join(name)) {
                Some(ino) => {
                    log::info!("--netns {}: namespace {ino} exists now", escape(name));
                    opts.netns.push(ino);
                    false
                }
                None => true,
            }
        });
    }

    /// Whether the `--netns` values keep namespace `ns`.
    fn netns_kept(&mut self, ns: Option<u32>) -> bool {
        if self.opts.netns.is_empty() && self.opts.netns_missing.is_empty() {
            return true;
        }
        self.recheck_missing_netns();
        ns.is_some_and(|ns| self.opts.netns.contains(&ns))
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
        if !self.netns_kept(e.netns) {
            return false;
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

    /// Whether namespace `netns` passes the `--netns` filter.
    pub fn keeps_netns(&mut self, netns: u32) -> bool {
        self.netns_kept(Some(netns))
    }

    /// Whether a socket of a sock_diag snapshot passes them: judged by the
    /// cgroup sock_diag reported for the socket (the one its workload is
    /// counted under, see `ConnTable::seed`), else by its owner's
    /// `/proc/PID/cgroup` (timewait sockets, kernels before 5.7).
    pub fn keeps_seen(&mut self, s: &SeenSocket) -> bool {
        if !self.netns_kept(s.netns) {
            return false;
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
                "warning: --netns {} names no namespace in {NETNS_RUN_DIR} yet; its events show once it exists (looked for every second)",
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
