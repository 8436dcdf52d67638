//! fentry `inet_twsk_hashdance_schedule`: `tcp_time_wait()` puts a timewait
//! socket in the place of a full socket. Where fentry loads, this reports the
//! begin of the timewait socket exactly, linked to the full socket (both are
//! arguments), instead of guessing the link from `timer_start` and the CLOSE
//! transition. On kernels where fentry does not load (EPERM here) userspace
//! falls back to the timer tracepoints.
//!
//! ```c
//! void inet_twsk_hashdance_schedule(struct inet_timewait_sock *tw, struct sock *sk,
//!                                   struct inet_hashinfo *hashinfo, int timeo);
//! ```

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::fentry, programs::FEntryContext};
use tcptrace_common::{Counter, EventKind, RawEvent, event_flags};

use crate::{
    maps::{OWNERS, count, tw_scratch},
    probes::{Drop, emit, settle, timewait::build},
    sock::{self, apply_owner},
};

/// fentry `inet_twsk_hashdance_schedule`: a timewait socket replaces a full socket.
#[fentry(function = "inet_twsk_hashdance_schedule")]
pub fn tw_begin_fentry(ctx: FEntryContext) -> u32 {
    settle(try_hashdance(&ctx));
    0
}

/// Begin: `tcp_time_wait()` hands over the full socket `sk` and its timewait socket `tw`.
#[inline(always)]
pub fn try_hashdance(ctx: &FEntryContext) -> Result<(), Drop> {
    let tw: u64 = ctx.arg(0);
    let sk: u64 = ctx.arg(1);
    let ts = unsafe { bpf_ktime_get_ns() };
    let mut ev: RawEvent = crate::words::zeroed();
    let substate = build(&mut ev, tw, ts, EventKind::TwBegin)?.substate;
    // tcp_done() moves `sk` to CLOSE next, on this CPU: a hand-over, not
    // an overflow (see `inet_sock_set_state.rs`).
    if let Some(scratch) = tw_scratch() {
        unsafe { (*scratch).handed_over = sk };
    }
    ev.new = substate;
    ev.link = sk;
    ev.flags |= event_flags::LINKED;
    ev.flags &= !event_flags::PREV_KNOWN;
    ev.prev_ns = 0;
    let mut slot = core::mem::MaybeUninit::uninit();
    let entry = sock::empty_owner(&mut slot);
    if let Some(owner) = unsafe { OWNERS.get(sk) } {
        apply_owner(&mut ev, owner);
        ev.old = owner.state;
        crate::words::copy(entry, owner);
    } else {
        count(Counter::TwUnlinked);
    }
    entry.state_ts = ts;
    entry.state = substate;
    crate::maps::remember_owner(tw, entry);
    emit(&ev)
}
