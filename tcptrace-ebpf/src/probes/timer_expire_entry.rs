//! `timer:timer_expire_entry`: a timer about to run its function. For a
//! timewait socket's timer that is the end of its life by timeout: it
//! completes the cancel `expire_timers()` parked just before (see
//! `timewait.rs`), or builds the end itself.
//!
//! ```c
//! TRACE_EVENT(timer_expire_entry,
//!     TP_PROTO(struct timer_list *timer, unsigned long baseclk), ...)
//! ```

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tcptrace_common::{EventKind, TwEndReason, event_flags, tcp_state};

use crate::{
    maps::{OWNERS, busy, global, guarded, tw_scratch},
    probes::{
        Drop, emit, settle,
        timewait::{
            self, Next, build, ctx_read, is_tw_timer, other_timer_pending, timer_function, tw_of,
        },
    },
};

/// `timer:timer_expire_entry` as a BTF-enabled raw tracepoint:
/// `timer_expire_entry(struct timer_list *timer, unsigned long baseclk)`.
#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry_btf(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let function = timer_function(timer);
    // Not ours, and no parked cancel to decide: the common case, first.
    if is_tw_timer(function) || other_timer_pending(false) {
        settle(guarded(busy::EXPIRE, || expire(timer as u64, function)));
    }
    0
}

/// `timer:timer_expire_entry`: a timewait socket's timer ran out.
#[tracepoint(category = "timer", name = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: TracePointContext) -> u32 {
    settle(guarded(busy::EXPIRE, || try_timer_expire_entry(&ctx)));
    0
}

/// Classic `timer:timer_expire_entry`: the record carries the function.
#[inline(always)]
pub fn try_timer_expire_entry(ctx: &TracePointContext) -> Result<(), Drop> {
    let timer: u64 = ctx_read(ctx, global!(OFFSETS.tp_expire_timer))?;
    let function: u64 = ctx_read(ctx, global!(OFFSETS.tp_expire_function))?;
    expire(timer, function)
}

#[inline(always)]
fn expire(timer: u64, function: u64) -> Result<(), Drop> {
    let parked = timewait::resolve_pending_cancel(timer, Next::Expire);
    if !is_tw_timer(function) {
        return Err(Drop::NotTimewait);
    }
    let tw = tw_of(timer);
    let ts = unsafe { bpf_ktime_get_ns() };
    let scratch = tw_scratch().ok_or(Drop::Scratch)?;
    let ev = unsafe { &mut (*scratch).cancelled };
    if parked {
        // Re-time the parked end at the expiry itself.
        if ev.flags & event_flags::PREV_KNOWN != 0 {
            ev.prev_ns += ts.saturating_sub(ev.ts_ns);
        }
        ev.ts_ns = ts;
        // Built as an early end at the cancel: it was not one.
        timewait::unclassify(ev);
    } else {
        ev.old = build(ev, tw, ts, EventKind::TwEnd)?.substate;
        ev.new = tcp_state::CLOSE;
    }
    ev.reason = TwEndReason::Expired as u8;
    let _ = OWNERS.remove(tw);
    let result = emit(ev);
    ev.sk = 0;
    result
}
