//! The in-kernel filter (`--port`, `--lport`, `--rport`, `--pid`, `--comm`,
//! `--state`, `-4`/`-6`, and the workload part of `--cgroup`, `--unit`,
//! `--container`, `--netns`): dropping here is cheaper than in userspace.
//!
//! The workload part is a superset of what userspace keeps: an event is
//! dropped only when the kernel knows its owner and that owner was not
//! below one of the filter's cgroup ancestors when captured
//! ([`event_flags::CGROUP_MATCH`], set by `sock::capture_current`), or
//! when its namespace is known and not in the list. Everything else goes
//! on to userspace, which matches exactly.

use tcptrace_common::{
    Counter, EventKind, Filter, OwnerEntry, RawEvent,
    config::{MAX_FILTER_NETNS, MAX_FILTER_PORTS},
    event_flags, family,
};

use crate::{
    maps::{FILTER, count, global, read_global},
    sock::eq16,
};

#[inline(always)]
fn in_list(list: &[u16; MAX_FILTER_PORTS], n: u32, port: u16, port2: Option<u16>) -> bool {
    let mut i = 0;
    while i < MAX_FILTER_PORTS {
        if (i as u32) >= n {
            break;
        }
        let p = list[i];
        if p == port || Some(p) == port2 {
            return true;
        }
        i += 1;
    }
    false
}

/// True when the event passes the filter; counts it as filtered otherwise
/// (and as filtered by the workload part when that dropped it).
#[inline(always)]
pub fn passes(ev: &RawEvent) -> bool {
    if !check(ev) {
        count(Counter::Filtered);
        return false;
    }
    if !check_workload(ev) {
        count(Counter::Filtered);
        count(Counter::FilteredWorkload);
        return false;
    }
    true
}

/// Whether events with this owner can pass the filter's owner part
/// (`--pid`, `--comm`, the cgroup ancestors), judged on an owner just
/// captured in process context (ports are not known yet at connect()).
/// `stacks::capture` keeps no stack for an owner this drops, so `--pid` or
/// `--comm` does not fill the stack map with other processes' stacks. All
/// load-time constants: with none of them set it is `true`.
#[inline(always)]
pub fn owner_may_pass(owner: &OwnerEntry) -> bool {
    let tgid = global!(FILTER.tgid);
    if tgid != 0 && owner.tgid != tgid {
        return false;
    }
    if global!(FILTER.comm_set) != 0 && !eq16(&global!(FILTER.comm), &owner.comm) {
        return false;
    }
    !(global!(FILTER.n_cgroups) != 0
        && owner.flags & event_flags::CGROUP_MATCH == 0
        && owner.cgroup != 0)
}

/// The workload part (see the module docs). Both counts are load-time
/// constants: with no workload filter the verifier drops all of it.
#[inline(always)]
fn check_workload(ev: &RawEvent) -> bool {
    if global!(FILTER.n_cgroups) != 0
        && ev.flags & event_flags::OWNER_KNOWN != 0
        && ev.flags & event_flags::CGROUP_MATCH == 0
        // No cgroup read at capture: userspace judges it by pid.
        && ev.cgroup != 0
    {
        return false;
    }
    let n = global!(FILTER.n_netns);
    if n != 0 && ev.flags & event_flags::NETNS_KNOWN != 0 && !in_netns(n, ev.netns) {
        return false;
    }
    true
}

#[inline(always)]
fn in_netns(n: u32, netns: u32) -> bool {
    let mut i = 0;
    while i < MAX_FILTER_NETNS {
        if (i as u32) >= n {
            break;
        }
        if read_global(&FILTER.netns[i]) == netns {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn check(ev: &RawEvent) -> bool {
    let family_mask = global!(FILTER.family_mask);
    if family_mask != 0 {
        let bit = if ev.family == family::INET6 {
            Filter::FAMILY_INET6
        } else {
            Filter::FAMILY_INET
        };
        if family_mask & bit == 0 {
            return false;
        }
    }
    let state_mask = global!(FILTER.state_mask);
    if state_mask != 0 {
        // A drop's `new` is the TCP flags, not a state: only the state of
        // the socket that received it (`old`, 0 for none) counts.
        let new = if ev.kind == EventKind::Drop as u32 {
            0
        } else {
            ev.new
        };
        if state_mask & (1u32 << (ev.old & 31)) == 0 && state_mask & (1u32 << (new & 31)) == 0 {
            return false;
        }
    }
    let tgid = global!(FILTER.tgid);
    if tgid != 0 && (ev.flags & event_flags::OWNER_KNOWN == 0 || ev.tgid != tgid) {
        return false;
    }
    if global!(FILTER.comm_set) != 0 {
        let comm = global!(FILTER.comm);
        if ev.flags & event_flags::OWNER_KNOWN == 0 || !eq16(&comm, &ev.comm) {
            return false;
        }
    }
    let n = global!(FILTER.n_ports);
    if n != 0 && !in_list(&global!(FILTER.ports), n, ev.sport, Some(ev.dport)) {
        return false;
    }
    let n = global!(FILTER.n_lports);
    if n != 0 && !in_list(&global!(FILTER.lports), n, ev.sport, None) {
        return false;
    }
    let n = global!(FILTER.n_rports);
    if n != 0 && !in_list(&global!(FILTER.rports), n, ev.dport, None) {
        return false;
    }
    true
}
