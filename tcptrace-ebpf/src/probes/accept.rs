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

use aya_ebpf::{helpers::bpf_get_current_task, programs::TracePointContext};

use crate::{
    maps::{OWNERS, global},
    sock::{capture_current, read},
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
    let entry = OWNERS.get_ptr_mut(sk)?;
    capture_current(unsafe { &mut *entry });
    Some(())
}
