//! The kernel part of the workload filters (`--cgroup`, `--unit`,
//! `--container`, `--netns`): what [`Filter`]'s `cgroup_ids`/`netns` get at
//! load time, so that the program drops other workloads' events before they
//! cost a ring-buffer record, a wakeup and a decode.
//!
//! The kernel part is a **superset** of what userspace keeps (userspace
//! still matches exactly, in `crate::workloads`): the kernel must never
//! drop an event userspace would keep. A unit's, container's or pod's own
//! cgroup is removed and made again, with a new id, at every restart, so the
//! kernel gets the nearest *stable* ancestor of what a flag names
//! ([`stable_ancestor`]: a plain `*.slice`, `/docker`, a kubepods QoS
//! level, a plain cgroup) with its level below the root, and the program
//! compares `bpf_get_current_ancestor_cgroup_id(level)` with its id when it
//! captures an owner. Per flag value:
//!
//! * `--cgroup PATH`: the stable ancestor of PATH (PATH itself when it is
//!   stable), or the nearest existing directory above it when it does not
//!   exist yet (what is made below it later is below that one too);
//! * `--unit`, `--container`: the stable ancestor of every cgroup (of a
//!   live process, a bounded scan of `/proc`) the value matches at start;
//! * `--netns NAME`: its inode (names looked up in `/run/netns` at start).
//!
//! The values are OR'ed, so the whole cgroup part is off (userspace alone
//! filters) when one value has no ancestor below the root, matches nothing
//! running at start, or the ancestors are more than [`MAX_FILTER_CGROUPS`];
//! the netns part is off when a name does not exist yet. Ids are the cgroup
//! directories' inodes under the discovered cgroup2 mount
//! (`seed::cgroupfs`), never an assumed `/sys/fs/cgroup`.

use std::collections::BTreeSet;

use tcptrace_common::{
    Filter,
    config::{MAX_FILTER_CGROUPS, MAX_FILTER_NETNS},
};
use tcptrace_core::workload::{WorkloadFilter, WorkloadKind, classify};

use crate::{
    seed::{runtimes::RuntimeRoots, workloads::WorkloadResolver},
    workloads::WorkloadOptions,
};

/// A cgroup the kernel checks owners against (ordered by level, then id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelCgroup {
    /// Components below the root (`/system.slice` is 1).
    pub level: u32,
    /// The directory's inode: the id `bpf_get_current_ancestor_cgroup_id` returns.
    pub id: u64,
    /// The path, for messages.
    pub path: String,
}

/// What the kernel filters of the workload flags, and why a part is off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelPart {
    pub cgroups: Vec<KernelCgroup>,
    pub netns: Vec<u32>,
    /// Why the cgroup part is off while a cgroup flag was given.
    pub cgroups_off: Option<String>,
    /// Why the netns part is off while `--netns` was given.
    pub netns_off: Option<String>,
}

impl KernelPart {
    /// Whether the kernel filters any workload.
    pub fn is_on(&self) -> bool {
        !self.cgroups.is_empty() || !self.netns.is_empty()
    }

    /// `filter` with this part in it.
    pub fn apply(&self, mut filter: Filter) -> Filter {
        for (i, c) in self.cgroups.iter().take(MAX_FILTER_CGROUPS).enumerate() {
            filter.cgroup_levels[i] = c.level;
            filter.cgroup_ids[i] = c.id;
        }
        filter.n_cgroups = self.cgroups.len().min(MAX_FILTER_CGROUPS) as u32;
        for (i, ns) in self.netns.iter().take(MAX_FILTER_NETNS).enumerate() {
            filter.netns[i] = *ns;
        }
        filter.n_netns = self.netns.len().min(MAX_FILTER_NETNS) as u32;
        filter
    }

    /// One line for the log: what the kernel filters.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.cgroups.is_empty() {
            let list: Vec<String> = self
                .cgroups
                .iter()
                .map(|c| format!("{} (id {}, level {})", c.path, c.id, c.level))
                .collect();
            parts.push(format!("owners below {}", list.join(", ")));
        }
        if let Some(why) = &self.cgroups_off {
            parts.push(format!("cgroups in userspace only ({why})"));
        }
        if !self.netns.is_empty() {
            let list: Vec<String> = self.netns.iter().map(u32::to_string).collect();
            parts.push(format!("namespaces {}", list.join(", ")));
        }
        if let Some(why) = &self.netns_off {
            parts.push(format!("namespaces in userspace only ({why})"));
        }
        parts.join("; ")
    }
}

/// Whether the cgroup at `path` outlives restarts of what runs below it:
/// the root, a plain cgroup, a slice (systemd's, or a kubepods QoS level).
/// A unit, session, container or pod cgroup (and anything below one) is
/// made again with a new id when it restarts.
pub fn is_stable(path: &str) -> bool {
    let shape = classify(path);
    match shape.kind {
        WorkloadKind::Host | WorkloadKind::Cgroup => true,
        WorkloadKind::Unit | WorkloadKind::UserUnit => {
            shape.unit.as_deref().is_some_and(|u| u.ends_with(".slice"))
        }
        WorkloadKind::Session
        | WorkloadKind::Container
        | WorkloadKind::Pod
        | WorkloadKind::Unknown => false,
    }
}

/// The deepest prefix of `path` (absolute; `path` itself included) whose
/// every prefix is stable ([`is_stable`]), with its level (components
/// below the root). `None` when that is the root: nothing to check in the
/// kernel.
pub fn stable_ancestor(path: &str) -> Option<(String, u32)> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut best = None;
    let mut prefix = String::new();
    for (i, c) in comps.iter().enumerate() {
        if *c == "." || *c == ".." {
            return None;
        }
        prefix.push('/');
        prefix.push_str(c);
        if !is_stable(&prefix) {
            break;
        }
        best = Some((prefix.clone(), i as u32 + 1));
    }
    best
}

/// The nearest directory at or above `path` (a stable ancestor) that
/// exists, by `id_of`; `None` at the root.
pub fn existing_ancestor(
    path: &str,
    id_of: &mut dyn FnMut(&str) -> Option<u64>,
) -> Option<KernelCgroup> {
    let mut p = path.trim_end_matches('/').to_string();
    while !p.is_empty() {
        if let Some(id) = id_of(&p) {
            let level = p.split('/').filter(|c| !c.is_empty()).count() as u32;
            return Some(KernelCgroup { level, id, path: p });
        }
        p.truncate(p.rfind('/').unwrap_or(0));
    }
    None
}

/// The kernel's cgroups for the filter's values (see the module docs):
/// `live` are the cgroups of running processes with what each one is
/// (`Workload` paths); `id_of` gives a path's id. `Err` says why the part
/// is off.
pub fn kernel_cgroups(
    filter: &WorkloadFilter,
    live: &[tcptrace_core::workload::Workload],
    id_of: &mut dyn FnMut(&str) -> Option<u64>,
) -> Result<Vec<KernelCgroup>, String> {
    let mut out = BTreeSet::new();
    for value in filter.each() {
        if let [path] = value.cgroups() {
            let (anc, _) = stable_ancestor(path)
                .ok_or_else(|| format!("--cgroup {path}: no stable ancestor below the root"))?;
            let found = existing_ancestor(&anc, id_of)
                .ok_or_else(|| format!("--cgroup {path}: nothing of it exists yet"))?;
            out.insert(found);
            continue;
        }
        let mut matched = false;
        for w in live.iter().filter(|w| value.matches(w)) {
            matched = true;
            let path = w.cgroup_path.as_deref().unwrap_or("/");
            let (anc, _) = stable_ancestor(path)
                .ok_or_else(|| format!("{path}: no stable ancestor below the root"))?;
            let found = existing_ancestor(&anc, id_of)
                .ok_or_else(|| format!("{anc}: not found under the cgroup2 mount"))?;
            out.insert(found);
        }
        if !matched {
            return Err("a --unit or --container value matches nothing running yet".into());
        }
    }
    if out.len() > MAX_FILTER_CGROUPS {
        return Err(format!(
            "{} ancestors, more than the kernel's {MAX_FILTER_CGROUPS}",
            out.len()
        ));
    }
    Ok(out.into_iter().collect())
}

/// Processes looked at, at most, for `--unit`/`--container` at start.
const PROC_SCAN: usize = 20_000;

/// Computes the kernel part for `opts` on this host (once, at load).
pub fn kernel_part(opts: &WorkloadOptions) -> KernelPart {
    let mut part = KernelPart::default();
    if !opts.netns_missing.is_empty() {
        part.netns_off = Some(format!(
            "--netns {} does not exist yet",
            opts.netns_missing.join(",")
        ));
    } else {
        part.netns = opts.netns.clone();
    }
    if !opts.filter.narrows() {
        return part;
    }
    let roots = opts
        .roots
        .clone()
        .map_or_else(RuntimeRoots::default, RuntimeRoots::new);
    let mut resolver = WorkloadResolver::new(roots);
    if resolver.cgroups_mut().is_none() {
        part.cgroups_off = Some("no cgroup2 mount".into());
        return part;
    }
    let needs_live = opts.filter.each().iter().any(|v| v.cgroups().is_empty());
    let live = if needs_live {
        live_workloads(&mut resolver)
    } else {
        Vec::new()
    };
    match kernel_cgroups(&opts.filter, &live, &mut |p| resolver.id_of(p)) {
        Ok(cgroups) => part.cgroups = cgroups,
        Err(why) => part.cgroups_off = Some(why),
    }
    part
}

/// The workloads of live processes, one per distinct cgroup (at most
/// [`PROC_SCAN`] processes looked at).
fn live_workloads(resolver: &mut WorkloadResolver) -> Vec<tcptrace_core::workload::Workload> {
    crate::seed::host::one_pid_per_cgroup(PROC_SCAN)
        .into_iter()
        .filter_map(|(pid, _)| resolver.from_pid(pid))
        .map(|w| (*w).clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcptrace_core::workload::{Names, Workload};

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1d2c3b4a_0000_1111_2222_333344445555";

    fn anc(p: &str) -> Option<(String, u32)> {
        stable_ancestor(p)
    }

    #[test]
    fn units_containers_and_pods_give_their_stable_parent() {
        let cases = [
            ("/system.slice/api.service", Some(("/system.slice", 1))),
            (
                "/system.slice/api.service/worker",
                Some(("/system.slice", 1)),
            ),
            ("/shop.slice/pay.slice", Some(("/shop.slice/pay.slice", 2))),
            (
                "/shop.slice/pay.slice/pay.service",
                Some(("/shop.slice/pay.slice", 2)),
            ),
            (
                &format!("/system.slice/docker-{ID}.scope"),
                Some(("/system.slice", 1)),
            ),
            (&format!("/docker/{ID}"), Some(("/docker", 1))),
            (
                &format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice/cri-containerd-{ID}.scope"
                ),
                Some(("/kubepods.slice/kubepods-burstable.slice", 2)),
            ),
            (
                &format!("/kubepods/besteffort/pod{}/{ID}", UID.replace('_', "-")),
                Some(("/kubepods/besteffort", 2)),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service",
                Some(("/user.slice/user-1000.slice", 2)),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope",
                Some(("/user.slice/user-1000.slice", 2)),
            ),
            ("/tcptrace-test-1/a/b", Some(("/tcptrace-test-1/a/b", 3))),
            (
                "/tcptrace-test-1/shop.slice/api.service",
                Some(("/tcptrace-test-1/shop.slice", 2)),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(anc(path), want.map(|(p, l)| (p.to_string(), l)), "{path}");
        }
    }

    #[test]
    fn the_root_or_a_unit_at_the_top_gives_nothing_to_check() {
        assert_eq!(anc("/"), None);
        assert_eq!(anc("/init.scope"), None);
        assert_eq!(anc("/api.service"), None);
        assert_eq!(anc(&format!("/docker-{ID}.scope")), None);
        assert_eq!(anc("/a/../b"), None);
    }

    fn ids(known: &'static [(&'static str, u64)]) -> impl FnMut(&str) -> Option<u64> {
        move |p| known.iter().find(|(k, _)| *k == p).map(|(_, id)| *id)
    }

    fn kc(path: &str, level: u32, id: u64) -> KernelCgroup {
        KernelCgroup {
            level,
            id,
            path: path.into(),
        }
    }

    #[test]
    fn a_cgroup_not_made_yet_is_checked_at_its_nearest_existing_ancestor() {
        let mut id_of = ids(&[("/shop.slice", 7)]);
        let f =
            WorkloadFilter::parse(&["/shop.slice/pay.slice/api.service".into()], &[], &[]).unwrap();
        assert_eq!(
            kernel_cgroups(&f, &[], &mut id_of),
            Ok(vec![kc("/shop.slice", 1, 7)])
        );
        let f = WorkloadFilter::parse(&["/other.slice".into()], &[], &[]).unwrap();
        assert!(kernel_cgroups(&f, &[], &mut id_of).is_err());
    }

    #[test]
    fn units_are_checked_at_the_slices_they_run_in_and_all_values_must_be_found() {
        let live = [
            Workload::new("/shop.slice/api.service", Names::default()),
            Workload::new("/shop.slice/db.service", Names::default()),
            Workload::new("/other.slice/api.service", Names::default()),
            Workload::new("/system.slice/cron.service", Names::default()),
        ];
        let mut id_of = ids(&[
            ("/shop.slice", 7),
            ("/other.slice", 9),
            ("/system.slice", 3),
        ]);
        let f = WorkloadFilter::parse(&[], &[], &["api".into()]).unwrap();
        assert_eq!(
            kernel_cgroups(&f, &live, &mut id_of),
            Ok(vec![kc("/shop.slice", 1, 7), kc("/other.slice", 1, 9)])
        );
        let f = WorkloadFilter::parse(&[], &[], &["db".into(), "cron".into()]).unwrap();
        assert_eq!(
            kernel_cgroups(&f, &live, &mut id_of),
            Ok(vec![kc("/system.slice", 1, 3), kc("/shop.slice", 1, 7)])
        );
        // A unit not running at start: the kernel cannot know where it will.
        let f = WorkloadFilter::parse(&[], &[], &["api".into(), "mail".into()]).unwrap();
        assert!(kernel_cgroups(&f, &live, &mut id_of).is_err());
        // A unit directly under the root: nothing stable to check.
        let live = [Workload::new("/top.service", Names::default())];
        let f = WorkloadFilter::parse(&[], &[], &["top".into()]).unwrap();
        assert!(kernel_cgroups(&f, &live, &mut id_of).is_err());
    }

    #[test]
    fn the_part_fills_the_filter_and_an_empty_one_leaves_it_alone() {
        let part = KernelPart {
            cgroups: vec![kc("/shop.slice", 1, 7), kc("/a/b", 2, 11)],
            netns: vec![4026531840],
            ..KernelPart::default()
        };
        let f = part.apply(Filter::default());
        assert_eq!(
            (f.n_cgroups, f.cgroup_levels[1], f.cgroup_ids[1]),
            (2, 2, 11)
        );
        assert_eq!((f.n_netns, f.netns[0]), (1, 4026531840));
        assert_eq!(KernelPart::default().apply(Filter::NONE), Filter::NONE);
        assert!(!KernelPart::default().is_on());
    }
}
