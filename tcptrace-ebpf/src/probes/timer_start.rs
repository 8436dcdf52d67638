//! `timer:timer_start`: a timer armed. For a timewait socket's timer the
//! first arming begins its life (parked until the full socket it replaces
//! goes to CLOSE, see `inet_sock_set_state.rs`), and an arming right after a
//! parked cancel of the same timer and tuple is a re-arm (e.g. substate
//! FIN_WAIT2 -> TIME_WAIT). See `timewait.rs` for the state this shares.
//!
//! ```c
//! TRACE_EVENT(timer_start,
//!     TP_PROTO(struct timer_list *timer, unsigned long bucket_expiry), ...)
//! ```

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tcptrace_common::{Counter, EventKind, event_flags};

use crate::{
    maps::{OWNERS, count, global, tw_scratch},
    probes::{
        Drop, emit, settle,
        timewait::{
            self, Next, build, ctx_read, is_tw_timer, other_timer_pending, skip_nested,
            timer_function, tw_of,
        },
    },
    sock,
};

/// `timer:timer_start` as a BTF-enabled raw tracepoint (preferred: no trace
/// record is built, and recursion is checked per program).
#[btf_tracepoint(function = "timer_start")]
pub fn timer_start_btf(ctx: BtfTracePointContext) -> i32 {
    settle(try_timer_start_btf(&ctx));
    0
}

/// `timer:timer_start`: a timewait socket's timer armed (begin) or re-armed.
#[tracepoint(category = "timer", name = "timer_start")]
pub fn timer_start(ctx: TracePointContext) -> u32 {
    settle(try_timer_start(&ctx));
    0
}

/// tp_btf `timer_start(struct timer_list *timer, unsigned long bucket_expiry)`.
#[inline(always)]
pub fn try_timer_start_btf(ctx: &BtfTracePointContext) -> Result<(), Drop> {
    let timer: *const u8 = ctx.arg(0);
    let function = timer_function(timer);
    if !is_tw_timer(function) && !other_timer_pending(true) {
        // Not ours, and no parked cancel to decide: the common case, first.
        return Err(Drop::NotTimewait);
    }
    start(ctx, timer as u64, function)
}

/// Classic `timer:timer_start`: the record carries the function.
#[inline(always)]
pub fn try_timer_start(ctx: &TracePointContext) -> Result<(), Drop> {
    let timer: u64 = ctx_read(ctx, global!(OFFSETS.tp_start_timer))?;
    let function: u64 = ctx_read(ctx, global!(OFFSETS.tp_start_function))?;
    start(ctx, timer, function)
}

#[inline(always)]
fn start<C: EbpfContext>(ctx: &C, timer: u64, function: u64) -> Result<(), Drop> {
    if skip_nested(function) {
        return Err(Drop::Nested);
    }
    let rearm = timewait::resolve_pending_cancel(timer, Next::Start);
    if !is_tw_timer(function) {
        return Err(Drop::NotTimewait);
    }
    let tw = tw_of(timer);
    let ts = unsafe { bpf_ktime_get_ns() };
    let scratch = tw_scratch().ok_or(Drop::Scratch)?;
    if rearm {
        let ev = unsafe { &mut (*scratch).cancelled };
        let old = ev.old;
        let substate = build(ev, tw, ts, EventKind::TwRearm)?.substate;
        ev.old = old;
        ev.new = substate;
        if let Some(owner) = OWNERS.get_ptr_mut(tw) {
            unsafe { (*owner).state = substate };
        }
        let result = emit(ev);
        ev.sk = 0;
        return result;
    }
    let begun = unsafe { &mut (*scratch).begun };
    if begun.sk != 0 {
        // The previous timewait socket on this CPU was never matched to a full
        // socket (the task migrated between arming and tcp_done()): emit it
        // unlinked, with no owner.
        count(Counter::TwUnlinked);
        aya_log_ebpf::debug!(
            ctx,
            "timewait socket {:x} not linked to a full socket (port {})",
            begun.sk,
            begun.sport
        );
        let mut slot = core::mem::MaybeUninit::uninit();
        let entry = sock::empty_owner(&mut slot);
        entry.state_ts = begun.ts_ns;
        entry.state = begun.new;
        entry.netns = begun.netns;
        entry.flags = begun.flags & event_flags::NETNS_KNOWN;
        crate::maps::remember_owner(begun.sk, entry);
        let _ = emit(begun);
        begun.sk = 0;
    }
    begun.new = build(begun, tw, ts, EventKind::TwBegin)?.substate;
    begun.old = 0;
    Ok(())
}
