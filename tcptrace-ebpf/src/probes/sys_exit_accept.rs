//! `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept`: the task that
//! accept()s a child socket owns it. The child was created in softirq with the
//! listener's owner; here, in the acceptor's process context, we find the
//! socket behind the returned fd and record the real owner (when that is
//! the thread that listened, only the name is read again: same task, same
//! cgroup).
//!
//! ```c
//! SYSCALL_DEFINE4(accept4, int, fd, struct sockaddr __user *, upeer_sockaddr,
//!                 int __user *, upeer_addrlen, int, flags)   /* exit: long ret */
//! SYSCALL_DEFINE3(accept, int, fd, struct sockaddr __user *, upeer_sockaddr,
//!                 int __user *, upeer_addrlen)               /* exit: long ret */
//! /* the exit record (kernel/trace/trace.h; `ret` offset from the format file) */
//! struct syscall_trace_exit { struct trace_entry ent; int nr; long ret; };
//! ```
//!
//! fd -> `current->files->fdt->fd[fd]` -> `file->private_data` (struct socket)
//! -> `socket->sk`.
//!
//! When that changes the owner userspace knows (none before, or another
//! process), an [`EventKind::Accept`] tells it: a socket whose peer closed
//! before accept() returned makes no further transition that would.
//!
//! Under `--stacks` the acceptor's user stack is captured here too
//! (`stacks::capture`), replacing the listen() stack the child inherited.
//! An accept by the same thread or the same process emits no event: its
//! stack reaches userspace with the socket's next event (from the owner
//! map) — except for a socket already in CLOSE_WAIT at accept, which has
//! no next event to carry it: with `--stacks` that one gets its Accept.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_current_task_btf},
    macros::tracepoint,
    programs::TracePointContext,
};
use tcptrace_common::{EventKind, OwnerEntry, event_flags, tcp_state};

use crate::{
    maps::{OWNERS, Prog, ProgScratch, global, prog_scratch},
    probes::{Drop, emit, settle},
    sock::{apply_owner, capture_current, direct, read, read_tuple},
};

/// `syscalls:sys_exit_accept4`: the accepting process owns the child socket.
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    settle(try_sys_exit_accept(&ctx));
    0
}

/// `syscalls:sys_exit_accept`: as `sys_exit_accept4`.
#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    settle(try_sys_exit_accept(&ctx));
    0
}

/// Where `struct syscall_trace_exit` keeps `ret` (after the 8-byte
/// `trace_entry` and the `int nr`, aligned).
const RET_OFFSET: u32 = 16;

/// With `--stacks`, whether the accepted socket is already in CLOSE_WAIT
/// (its peer closed before `accept()`: a health check, a full backlog).
/// No later transition would carry the accept's stack to userspace until
/// the process closes the socket (which a leak never does), so the Accept
/// event goes out even when the owner did not change. Without `--stacks`
/// a load-time constant makes it `false`.
#[inline(always)]
fn closed_before_accept(entry: &OwnerEntry) -> bool {
    global!(FEATURES.user_stacks) != 0 && entry.state == tcp_state::CLOSE_WAIT
}

#[inline(always)]
pub fn try_sys_exit_accept(ctx: &TracePointContext) -> Result<(), Drop> {
    // Until the socket is found in the owner map (TCP, traced), a failed
    // read is not a lost event: accept() runs on every kind of socket.
    // `ret` sits at 16 in every kernel's `struct syscall_trace_exit`: a
    // plain load from the record (the verifier only takes a constant offset
    // in the instruction itself); the format file said otherwise, a read
    // (the verifier drops the branch not taken: the offset is a load-time
    // constant).
    let off = global!(OFFSETS.tp_accept_ret);
    let ret: i64 = if off == RET_OFFSET {
        unsafe {
            (ctx.as_ptr() as *const u8)
                .add(RET_OFFSET as usize)
                .cast::<i64>()
                .read_volatile()
        }
    } else {
        unsafe { ctx.read_at(off as usize) }.map_err(|_| Drop::Unattributed)?
    };
    if ret < 0 {
        return Err(Drop::AcceptFailed);
    }
    let fd = ret as u64;
    // The task as a BTF pointer: task -> files -> fdt are plain loads (a
    // faulting one reads 0, and 0 max_fds rejects below); the fd array's
    // slot (a variable index) and the untyped `private_data` need reads.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let (fdt, max_fds) = unsafe {
        let files: *const u8 = direct::load(task, global!(OFFSETS.task_files));
        let fdt: *const u8 = direct::load(files, global!(OFFSETS.files_fdt));
        (
            fdt,
            direct::load::<u32>(fdt, global!(OFFSETS.fdtable_max_fds)),
        )
    };
    if fd >= max_fds as u64 {
        // The fd table read does not hold the fd accept() returned.
        return Err(Drop::Unattributed);
    }
    let fd_array: u64 = unsafe { direct::load(fdt, global!(OFFSETS.fdtable_fd)) };
    let file: u64 = read(fd_array + fd * 8, 0).ok_or(Drop::Unattributed)?;
    let socket: u64 = read(file, global!(OFFSETS.file_private_data)).ok_or(Drop::Unattributed)?;
    let sk: u64 = read(socket, global!(OFFSETS.socket_sk)).ok_or(Drop::Unattributed)?;
    let entry = unsafe { &mut *OWNERS.get_ptr_mut(sk).ok_or(Drop::Untracked)? };
    // Accepted by the very thread that owns it already (a single-threaded
    // server that listens and accepts): the owner is confirmed (no longer
    // the listener's guess) and its name read again (a thread may rename
    // itself); its task, and so its cgroup, are the same: no event.
    let pid_tgid = bpf_get_current_pid_tgid();
    let known = entry.flags & event_flags::OWNER_KNOWN != 0;
    if known && entry.tgid == (pid_tgid >> 32) as u32 && entry.tid == pid_tgid as u32 {
        entry.flags &= !event_flags::OWNER_FROM_LISTENER;
        unsafe {
            aya_ebpf::helpers::generated::bpf_get_current_comm(entry.comm.as_mut_ptr().cast(), 16)
        };
        crate::stacks::capture(ctx, entry);
        if !closed_before_accept(entry) {
            return Ok(());
        }
    } else {
        let was_tgid = entry.tgid;
        capture_current(entry);
        crate::stacks::capture(ctx, entry);
        if known && was_tgid == entry.tgid && !closed_before_accept(entry) {
            // Another thread of the same process: its thread recorded, no event.
            return Ok(());
        }
    }
    let ProgScratch { event: ev, head } = prog_scratch(Prog::Accept).ok_or(Drop::Scratch)?;
    crate::words::zero(ev);
    read_tuple(sk, head, ev, true).ok_or(Drop::ProbeRead)?;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.kind = EventKind::Accept as u32;
    ev.sk = sk;
    ev.old = entry.state;
    ev.new = entry.state;
    apply_owner(ev, entry);
    emit(ev)
}
