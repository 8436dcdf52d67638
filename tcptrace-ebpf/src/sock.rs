//! Reading sockets: 4-tuples from `struct sock_common` (full and timewait
//! sockets share it), the network namespace, and the current task as owner.
//! Offsets come from the running kernel's BTF via `OFFSETS`.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_probe_read_kernel, generated,
    generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
};
use tcptrace_common::{
    OwnerEntry, RawEvent,
    config::{MAX_FILTER_CGROUPS, SOCK_HEAD_BYTES},
    event_flags, family,
};

use crate::maps::{FILTER, global, read_global};

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// The head of a `sock_common`, copied in one probe read (see [`read_head`]).
pub type SockHead = [u64; HEAD_WORDS];
pub const HEAD_WORDS: usize = SOCK_HEAD_BYTES as usize / 8;

/// A `T` at byte offset `off` of words copied from the kernel (a record or a
/// [`SockHead`]); `None` past the end. Offsets are checked for natural
/// alignment in userspace.
#[inline(always)]
pub fn field<T: Copy, const W: usize>(words: &[u64; W], off: u32) -> Option<T> {
    let off = off as usize;
    if off + core::mem::size_of::<T>() > W * 8 {
        return None;
    }
    Some(unsafe { core::ptr::read((words.as_ptr() as *const u8).add(off) as *const T) })
}

/// An IPv6 address at byte offset `off` of `head` (4-aligned: checked in
/// userspace) into `dst`, as four 32-bit words (a 16-byte array copy would
/// be a byte-loop `memmove` call on BPF).
#[inline(always)]
fn field_addr16(head: &SockHead, off: u32, dst: &mut [u8; 16]) -> Option<()> {
    let off = off as usize;
    if off + 16 > HEAD_WORDS * 8 {
        return None;
    }
    let src = unsafe { (head.as_ptr() as *const u8).add(off) } as *const u32;
    let dst = dst.as_mut_ptr() as *mut u32;
    let mut i = 0;
    while i < 4 {
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
    Some(())
}

/// Copies the head of `sk`'s `sock_common` into `head`: the 4-tuple, family
/// and netns pointer in one probe read instead of six.
#[inline(always)]
pub fn read_head(sk: u64, head: &mut SockHead) -> Option<()> {
    let ret = unsafe {
        generated::bpf_probe_read_kernel(
            head.as_mut_ptr().cast(),
            SOCK_HEAD_BYTES,
            sk as *const core::ffi::c_void,
        )
    };
    (ret == 0).then_some(())
}

/// Fills `ev`'s family, ports and addresses from a `sock_common` (through
/// `head`, the caller's per-program scratch). `sport_from_inet` reads the
/// local port from `inet_sock.inet_sport` (full sockets: `skc_num` is already
/// 0 once unhashed at FIN_WAIT2 -> CLOSE); timewait sockets keep it in
/// `skc_num`. Returns the socket's `struct net *` (0 if unknown).
#[inline(always)]
pub fn read_tuple(
    sk: u64,
    head: &mut SockHead,
    ev: &mut RawEvent,
    sport_from_inet: bool,
) -> Option<u64> {
    read_head(sk, head)?;
    let head = &*head;
    let fam: u16 = field(head, global!(OFFSETS.skc_family))?;
    ev.family = fam as u8;
    ev.sport = if sport_from_inet {
        u16::from_be(read(sk, global!(OFFSETS.inet_sport))?)
    } else {
        field(head, global!(OFFSETS.skc_num))?
    };
    ev.dport = u16::from_be(field(head, global!(OFFSETS.skc_dport))?);
    if ev.family == family::INET6 {
        field_addr16(head, global!(OFFSETS.skc_v6_rcv_saddr), &mut ev.saddr)?;
        field_addr16(head, global!(OFFSETS.skc_v6_daddr), &mut ev.daddr)?;
    } else {
        let s: [u8; 4] = field(head, global!(OFFSETS.skc_rcv_saddr))?;
        let d: [u8; 4] = field(head, global!(OFFSETS.skc_daddr))?;
        crate::words::zero16(&mut ev.saddr);
        crate::words::zero16(&mut ev.daddr);
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    }
    Some(field(head, global!(OFFSETS.skc_net)).unwrap_or(0))
}

/// The inode number of the socket's network namespace.
#[inline(always)]
pub fn netns(sk: u64) -> Option<u32> {
    netns_of(read(sk, global!(OFFSETS.skc_net))?)
}

/// The inode number of a `struct net`.
#[inline(always)]
pub fn netns_of(net: u64) -> Option<u32> {
    if net == 0 {
        return None;
    }
    read(net, global!(OFFSETS.net_ns_inum))
}

/// Records the current task as the owner (call only in the owner's process
/// context); returns its `pid_tgid`. With the filter's cgroup part on, also
/// whether the task is below one of its ancestors ([`in_filter_cgroups`]).
/// A stack from an earlier owner is dropped: `stacks::capture` takes the
/// new one.
#[inline(always)]
pub fn capture_current(owner: &mut OwnerEntry) -> u64 {
    let pid_tgid = bpf_get_current_pid_tgid();
    owner.tgid = (pid_tgid >> 32) as u32;
    owner.tid = pid_tgid as u32;
    // Straight into the entry (NUL-padded by the kernel; zeroed on error).
    unsafe { generated::bpf_get_current_comm(owner.comm.as_mut_ptr().cast(), 16) };
    owner.cgroup = unsafe { bpf_get_current_cgroup_id() };
    owner.flags = (owner.flags | event_flags::OWNER_KNOWN)
        & !(event_flags::OWNER_FROM_LISTENER
            | event_flags::CGROUP_MATCH
            | event_flags::STACK_KNOWN);
    // A load-time constant: with no cgroup filter the verifier drops the
    // loop (one load and a hard-wired branch stay).
    let n = global!(FILTER.n_cgroups);
    if n != 0 && in_filter_cgroups(n) {
        owner.flags |= event_flags::CGROUP_MATCH;
    }
    pid_tgid
}

/// Whether the current task's cgroup is, or is below, one of the filter's
/// `cgroup_ids[..n]` (each compared with the task's ancestor at its level:
/// one helper call per id, at most [`MAX_FILTER_CGROUPS`]).
#[inline(always)]
fn in_filter_cgroups(n: u32) -> bool {
    let mut i = 0;
    while i < MAX_FILTER_CGROUPS {
        if i as u32 >= n {
            break;
        }
        let level = read_global(&FILTER.cgroup_levels[i]);
        let id = read_global(&FILTER.cgroup_ids[i]);
        if unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) } == id {
            return true;
        }
        i += 1;
    }
    false
}

/// Copies an owner into an event (the owner's own flags come along).
#[inline(always)]
pub fn apply_owner(ev: &mut RawEvent, owner: &OwnerEntry) {
    ev.tgid = owner.tgid;
    ev.tid = owner.tid;
    crate::words::copy16(&mut ev.comm, &owner.comm);
    ev.cgroup = owner.cgroup;
    ev.netns = owner.netns;
    ev.stack_id = owner.stack_id;
    ev.flags |= owner.flags
        & (event_flags::OWNER_KNOWN
            | event_flags::OWNER_FROM_LISTENER
            | event_flags::NETNS_KNOWN
            | event_flags::CGROUP_MATCH
            | event_flags::STACK_KNOWN);
}

/// An empty owner entry in `slot` (zeroed word by word in place: see
/// `words`; returning one by value is a `memset` call again).
#[inline(always)]
pub fn empty_owner(slot: &mut core::mem::MaybeUninit<OwnerEntry>) -> &mut OwnerEntry {
    crate::words::zero(slot.as_mut_ptr());
    unsafe { slot.assume_init_mut() }
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

/// tp_btf programs only: reads through a `struct sock *` taken straight from
/// the program's context, with plain loads the verifier checks against the
/// kernel's BTF (each at a member's exact offset and size) instead of
/// `bpf_probe_read_kernel` calls. Offsets are load-time constants (frozen
/// `.rodata`), as the verifier requires. A load that faults reads 0.
pub mod direct {
    use tcptrace_common::{RawEvent, family};

    use crate::maps::global;

    /// A `T` at `base + off`.
    ///
    /// # Safety
    /// `base` must be a BTF pointer from the context (or loaded through
    /// one), and `off` a member of its type of `T`'s size.
    #[inline(always)]
    pub unsafe fn load<T: Copy>(base: *const u8, off: u32) -> T {
        unsafe { (base.add(off as usize) as *const T).read_volatile() }
    }

    /// `sk->sk_protocol`.
    #[inline(always)]
    pub fn protocol(sk: *const u8) -> u16 {
        unsafe { load(sk, global!(OFFSETS.sk_protocol)) }
    }

    /// Fills `ev`'s family, ports and addresses as [`super::read_tuple`]
    /// does (the local port from `skc_num`: callers read `inet_sport` where
    /// that is already 0); returns the socket's `struct net *` (a BTF
    /// pointer too).
    #[inline(always)]
    pub fn read_tuple(sk: *const u8, ev: &mut RawEvent) -> *const u8 {
        unsafe {
            ev.family = load::<u16>(sk, global!(OFFSETS.skc_family)) as u8;
            ev.sport = load(sk, global!(OFFSETS.skc_num));
            ev.dport = u16::from_be(load(sk, global!(OFFSETS.skc_dport)));
            if ev.family == family::INET6 {
                addr16(sk, global!(OFFSETS.skc_v6_rcv_saddr), &mut ev.saddr);
                addr16(sk, global!(OFFSETS.skc_v6_daddr), &mut ev.daddr);
            } else {
                let s = ev.saddr.as_mut_ptr() as *mut u32;
                let d = ev.daddr.as_mut_ptr() as *mut u32;
                s.write_volatile(load(sk, global!(OFFSETS.skc_rcv_saddr)));
                d.write_volatile(load(sk, global!(OFFSETS.skc_daddr)));
                let mut i = 1;
                while i < 4 {
                    s.add(i).write_volatile(0);
                    d.add(i).write_volatile(0);
                    i += 1;
                }
            }
            load(sk, global!(OFFSETS.skc_net))
        }
    }

    /// An `in6_addr` at `off`, as its four 32-bit words.
    #[inline(always)]
    unsafe fn addr16(sk: *const u8, off: u32, dst: &mut [u8; 16]) {
        let d = dst.as_mut_ptr() as *mut u32;
        let mut i = 0;
        while i < 4 {
            unsafe { d.add(i).write_volatile(load(sk, off + 4 * i as u32)) };
            i += 1;
        }
    }

    /// The inode number of `net`'s namespace (None for a null `net`).
    #[inline(always)]
    pub fn netns_of(net: *const u8) -> Option<u32> {
        (!net.is_null()).then(|| unsafe { load(net, global!(OFFSETS.net_ns_inum)) })
    }
}
