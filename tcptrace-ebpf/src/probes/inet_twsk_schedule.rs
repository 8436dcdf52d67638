//! fentry `__inet_twsk_schedule`: a timewait socket's timer (re-)armed. Where
//! fentry loads, a call with `rearm` set reports a re-arm (e.g. substate
//! FIN_WAIT2 -> TIME_WAIT); the first arming is reported by
//! `inet_twsk_hashdance_schedule`. Otherwise the timer tracepoints do it.
//!
//! ```c
//! void __inet_twsk_schedule(struct inet_timewait_sock *tw, int timeo, bool rearm);
//! ```

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::fentry, programs::FEntryContext};
use tcptrace_common::{EventKind, RawEvent};

use crate::{
    maps::OWNERS,
    probes::{Drop, emit, settle, timewait::build},
};

/// fentry `__inet_twsk_schedule`: a timewait socket's timer re-armed.
#[fentry(function = "__inet_twsk_schedule")]
pub fn tw_rearm_fentry(ctx: FEntryContext) -> u32 {
    settle(try_schedule(&ctx));
    0
}

/// Re-arm (`rearm == true`): e.g. substate FIN_WAIT2 -> TIME_WAIT.
#[inline(always)]
pub fn try_schedule(ctx: &FEntryContext) -> Result<(), Drop> {
    let tw: u64 = ctx.arg(0);
    let rearm: u8 = ctx.arg(2);
    if rearm == 0 {
        return Err(Drop::NotRearm);
    }
    let ts = unsafe { bpf_ktime_get_ns() };
    let mut ev: RawEvent = crate::words::zeroed();
    let substate = build(&mut ev, tw, ts, EventKind::TwRearm)?.substate;
    ev.new = substate;
    if let Some(owner) = OWNERS.get_ptr_mut(tw) {
        unsafe {
            ev.old = (*owner).state;
            (*owner).state = substate;
        }
    }
    emit(&ev)
}
