//! User stacks for `--stacks`: which code opened a connection.
//!
//! Where a lifecycle starts in the owner's process context (connect() and
//! listen() in `inet_sock_set_state`, the accept() exit), the current task's
//! user stack goes into the kernel's stack map (`maps::STACKS`), and its id
//! into the owner entry ([`OwnerEntry::stack_id`] with
//! [`event_flags::STACK_KNOWN`]), so it travels with the owner into every
//! event of the socket. Userspace reads and names the stack later.
//!
//! Flags: `BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP`, with no
//! `BPF_F_REUSE_STACKID`: an id handed out then never changes meaning while
//! the tracer runs. A stack whose bucket another stack holds, a full map, or
//! a task with no user stack (a kernel thread, an io_uring worker) is an
//! error, counted as [`Counter::StackMiss`]: a socket with no stack rather
//! than one with the wrong code. Never call this in softirq: the "user
//! stack" there is whichever task was interrupted.
//!
//! `FEATURES.user_stacks` is a load-time constant: without `--stacks` the
//! verifier drops the helper call, and the map has a single entry.

use aya_ebpf::{
    bindings::{BPF_F_FAST_STACK_CMP, BPF_F_USER_STACK},
    programs::tracing::StackIdContext,
};
use tcptrace_common::{Counter, OwnerEntry, event_flags};

use crate::{
    filter,
    maps::{STACKS, count, global},
};

/// Captures the current task's user stack into `owner` (call right after
/// `sock::capture_current`, in the owner's process context). Without
/// `--stacks` it does nothing (and costs nothing); with it, an owner whose
/// events the filter's owner part drops anyway keeps no stack, and a miss
/// leaves `owner` with no stack and is counted.
#[inline(always)]
pub fn capture<C: StackIdContext>(ctx: &C, owner: &mut OwnerEntry) {
    if global!(FEATURES.user_stacks) == 0 {
        return;
    }
    if !filter::owner_may_pass(owner) {
        owner.flags &= !event_flags::STACK_KNOWN;
        return;
    }
    match ctx.get_stackid(&STACKS, (BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP) as u64) {
        Ok(id) => {
            owner.stack_id = id as u16;
            owner.flags |= event_flags::STACK_KNOWN;
        }
        Err(_) => {
            owner.flags &= !event_flags::STACK_KNOWN;
            count(Counter::StackMiss);
        }
    }
}
