//! Reading sockets: 4-tuples from `struct sock_common` (full and timewait
//! sockets share it), the network namespace, and the current task as owner.
//! Offsets come from the running kernel's BTF via `OFFSETS`.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
    generated::bpf_get_current_cgroup_id,
};
use tcptrace_common::{OwnerEntry, RawEvent, event_flags, family};

use crate::maps::global;

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// Fills `ev`'s family, ports and addresses from a `sock_common`.
/// `sport_from_inet` reads the local port from `inet_sock.inet_sport` (full
/// sockets: `skc_num` is already 0 once unhashed at FIN_WAIT2 -> CLOSE);
/// timewait sockets keep it in `skc_num`.
#[inline(always)]
pub fn read_tuple(sk: u64, ev: &mut RawEvent, sport_from_inet: bool) -> Option<()> {
    let fam: u16 = read(sk, global!(OFFSETS.skc_family))?;
    ev.family = fam as u8;
    ev.sport = if sport_from_inet {
        u16::from_be(read(sk, global!(OFFSETS.inet_sport))?)
    } else {
        read(sk, global!(OFFSETS.skc_num))?
    };
    ev.dport = u16::from_be(read(sk, global!(OFFSETS.skc_dport))?);
    if ev.family == family::INET6 {
        ev.saddr = read(sk, global!(OFFSETS.skc_v6_rcv_saddr))?;
        ev.daddr = read(sk, global!(OFFSETS.skc_v6_daddr))?;
    } else {
        let s: [u8; 4] = read(sk, global!(OFFSETS.skc_rcv_saddr))?;
        let d: [u8; 4] = read(sk, global!(OFFSETS.skc_daddr))?;
        ev.saddr = [0; 16];
        ev.daddr = [0; 16];
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    }
    Some(())
}

/// The inode number of the socket's network namespace.
#[inline(always)]
pub fn netns(sk: u64) -> Option<u32> {
    let net: u64 = read(sk, global!(OFFSETS.skc_net))?;
    read(net, global!(OFFSETS.net_ns_inum))
}

/// Records the current task as the owner (call only in the owner's process context).
#[inline(always)]
pub fn capture_current(owner: &mut OwnerEntry) {
    let pid_tgid = bpf_get_current_pid_tgid();
    owner.tgid = (pid_tgid >> 32) as u32;
    owner.tid = pid_tgid as u32;
    owner.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    owner.cgroup = unsafe { bpf_get_current_cgroup_id() };
    owner.flags = (owner.flags | event_flags::OWNER_KNOWN) & !event_flags::OWNER_FROM_LISTENER;
}

/// Copies an owner into an event (the owner's own flags come along).
#[inline(always)]
pub fn apply_owner(ev: &mut RawEvent, owner: &OwnerEntry) {
    ev.tgid = owner.tgid;
    ev.tid = owner.tid;
    ev.comm = owner.comm;
    ev.cgroup = owner.cgroup;
    ev.netns = owner.netns;
    ev.flags |= owner.flags
        & (event_flags::OWNER_KNOWN | event_flags::OWNER_FROM_LISTENER | event_flags::NETNS_KNOWN);
}

/// An empty owner entry.
#[inline(always)]
pub const fn empty_owner() -> OwnerEntry {
    OwnerEntry {
        state_ts: 0,
        cgroup: 0,
        tgid: 0,
        tid: 0,
        netns: 0,
        flags: 0,
        state: 0,
        _pad: [0; 2],
        comm: [0; 16],
    }
}

/// 16-byte equality without `memcmp` (BPF has none).
#[inline(always)]
pub fn eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let a = a.as_ptr() as *const u64;
    let b = b.as_ptr() as *const u64;
    unsafe {
        core::ptr::read_unaligned(a) == core::ptr::read_unaligned(b)
            && core::ptr::read_unaligned(a.add(1)) == core::ptr::read_unaligned(b.add(1))
    }
}

/// Same connection 4-tuple.
#[inline(always)]
pub fn same_tuple(a: &RawEvent, b: &RawEvent) -> bool {
    a.family == b.family
        && a.sport == b.sport
        && a.dport == b.dport
        && eq16(&a.saddr, &b.saddr)
        && eq16(&a.daddr, &b.daddr)
}
