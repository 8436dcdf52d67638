//! `timer:timer_cancel`: a timer detached. For a timewait socket's timer that
//! is an early end, a re-arm or an expiry, which only the next timer event on
//! this CPU tells apart: the cancel is built here as an early end (reused,
//! purged or killed, decided now while the cancelling task and the namespace
//! can be seen) and parked (see `timewait.rs`), and any cancel parked before
//! it ended early.
//!
//! ```c
//! DEFINE_EVENT(timer_class, timer_cancel, TP_PROTO(struct timer_list *timer), ...)
//! ```

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tcptrace_common::{EventKind, tcp_state};

use crate::{
    maps::{global, tw_scratch},
    probes::{
        Drop, settle,
        timewait::{
            self, Next, build, classify_kill, ctx_read, is_tw_timer, other_timer_pending,
            skip_nested, timer_function, tw_of,
        },
    },
};

/// `timer:timer_cancel` as a BTF-enabled raw tracepoint.
#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel_btf(ctx: BtfTracePointContext) -> i32 {
    settle(try_timer_cancel_btf(&ctx));
    0
}

/// `timer:timer_cancel`: a timewait socket's timer detached (kill, re-arm or expiry).
#[tracepoint(category = "timer", name = "timer_cancel")]
pub fn timer_cancel(ctx: TracePointContext) -> u32 {
    settle(try_timer_cancel(&ctx));
    0
}

/// tp_btf `timer_cancel(struct timer_list *timer)`.
#[inline(always)]
pub fn try_timer_cancel_btf(ctx: &BtfTracePointContext) -> Result<(), Drop> {
    let timer: *const u8 = ctx.arg(0);
    let function = timer_function(timer);
    if !is_tw_timer(function) && !other_timer_pending(true) {
        // Not ours, and no parked cancel to decide: the common case, first.
        return Err(Drop::NotTimewait);
    }
    cancel(timer as u64, function)
}

/// Classic `timer:timer_cancel`: the record has only the timer.
#[inline(always)]
pub fn try_timer_cancel(ctx: &TracePointContext) -> Result<(), Drop> {
    let timer: u64 = ctx_read(ctx, global!(OFFSETS.tp_cancel_timer))?;
    // The classic record has no function: read it from the timer.
    let function: u64 =
        crate::sock::read(timer, global!(OFFSETS.timer_function)).ok_or(Drop::Unattributed)?;
    cancel(timer, function)
}

#[inline(always)]
fn cancel(timer: u64, function: u64) -> Result<(), Drop> {
    if skip_nested(function) {
        return Err(Drop::Nested);
    }
    // A cancel right after a cancel: the first one was a kill.
    timewait::resolve_pending_cancel(timer, Next::Other);
    if !is_tw_timer(function) {
        return Err(Drop::NotTimewait);
    }
    let tw = tw_of(timer);
    let ts = unsafe { bpf_ktime_get_ns() };
    let scratch = tw_scratch().ok_or(Drop::Scratch)?;
    let ev = unsafe { &mut (*scratch).cancelled };
    match build(ev, tw, ts, EventKind::TwEnd) {
        Ok(built) => {
            ev.old = built.substate;
            ev.new = tcp_state::CLOSE;
            classify_kill(ev, built.net);
            Ok(())
        }
        Err(drop) => {
            ev.sk = 0;
            Err(drop)
        }
    }
}
