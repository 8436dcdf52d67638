//! `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept`: the task that
//! accept()s a child socket owns it. The child was created in softirq with the
//! listener's owner; here, in the acceptor's process context, we find the
//! socket behind the returned fd and record the real owner.
//!
//! ```c
//! SYSCALL_DEFINE4(accept4, int, fd, struct sockaddr __user *, upeer_sockaddr,
//!                 int __user *, upeer_addrlen, int, flags)   /* exit: long ret */
//! ```
//!
//! fd -> `current->files->fdt->fd[fd]` -> `file->private_data` (struct socket)
//! -> `socket->sk`.
//!
//! When that changes the owner userspace knows (none before, or another
//! process), an [`EventKind::Accept`] tells it: a socket whose peer closed
//! before accept() returned makes no further transition that would.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_ns},
    programs::TracePointContext,
};
use tcptrace_common::{EventKind, RawEvent, event_flags};

use crate::{
    filter,
    maps::{OWNERS, Prog, ProgScratch, global, output, prog_scratch},
    sock::{apply_owner, capture_current, read, read_tuple},
};

#[inline(always)]
pub fn try_sys_exit_accept(ctx: &TracePointContext) -> Option<()> {
    let ret: i64 = unsafe { ctx.read_at(global!(OFFSETS.tp_accept_ret) as usize).ok()? };
    if ret < 0 {
        return None;
    }
    let fd = ret as u64;
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, global!(OFFSETS.task_files))?;
    let fdt: u64 = read(files, global!(OFFSETS.files_fdt))?;
    let max_fds: u32 = read(fdt, global!(OFFSETS.fdtable_max_fds))?;
    if fd >= max_fds as u64 {
        return None;
    }
    let fd_array: u64 = read(fdt, global!(OFFSETS.fdtable_fd))?;
    let file: u64 = read(fd_array + fd * 8, 0)?;
    let socket: u64 = read(file, global!(OFFSETS.file_private_data))?;
    let sk: u64 = read(socket, global!(OFFSETS.socket_sk))?;
    let entry = unsafe { &mut *OWNERS.get_ptr_mut(sk)? };
    let was_known = entry.flags & event_flags::OWNER_KNOWN != 0;
    let was_tgid = entry.tgid;
    capture_current(entry);
    if was_known && was_tgid == entry.tgid {
        return Some(());
    }
    let ProgScratch { event: ev, head } = prog_scratch(Prog::Accept)?;
    *ev = RawEvent::zeroed();
    read_tuple(sk, head, ev, true)?;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.kind = EventKind::Accept as u32;
    ev.sk = sk;
    ev.old = entry.state;
    ev.new = entry.state;
    apply_owner(ev, entry);
    if filter::passes(ev) {
        output(ev);
    }
    Some(())
}
