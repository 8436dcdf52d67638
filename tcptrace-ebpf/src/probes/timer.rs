//! TIME_WAIT through the timer tracepoints (the path for kernels where fentry
//! does not load). A timewait socket (`struct inet_timewait_sock`) is a
//! separate object from the full socket it replaces; its life is its timer
//! `tw->tw_timer`, whose function is `tw_timer_handler`:
//!
//! ```c
//! TRACE_EVENT(timer_start, TP_PROTO(struct timer_list *timer, unsigned long bucket_expiry), ...)
//! TRACE_EVENT(timer_expire_entry, TP_PROTO(struct timer_list *timer, unsigned long baseclk), ...)
//! DEFINE_EVENT(timer_class, timer_cancel, TP_PROTO(struct timer_list *timer), ...)
//! ```
//!
//! - first `timer_start` of a tw: it begins (`inet_twsk_hashdance_schedule()`,
//!   just before `tcp_done()` moves the full socket to CLOSE on this CPU, which
//!   is where it gets linked: see `inet_sock_set_state.rs`);
//! - `timer_cancel` then, with nothing in between on this CPU (the timer base
//!   lock is held with irqs off), `timer_start` of the same timer: re-armed.
//!   The tuple must match too: a tw killed (`tcp_tw_reuse`, a SYN or RST in
//!   softirq) can be freed and its memory handed to the next tw (the slab is
//!   `SLAB_TYPESAFE_BY_RCU`) with no hooked event in between on this CPU, so
//!   the same timer address can be a kill followed by a new tw;
//! - `timer_cancel` then `timer_expire_entry` of the same timer: expired
//!   (`expire_timers()` detaches before calling `tw_timer_handler`);
//! - `timer_cancel` followed by anything else: killed early (RST, reuse,
//!   netns teardown: `inet_twsk_deschedule_put()`).
//!
//! So a cancel is parked per CPU and decided by the next event on that CPU.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_ktime_get_ns,
    programs::{BtfTracePointContext, TracePointContext},
};
use tcptrace_common::{Counter, EventKind, RawEvent, TwEndReason, event_flags, family, tcp_state};

use crate::{
    filter,
    maps::{OWNERS, Prog, busy, busy_in, count, global, output, prog_scratch, tw_scratch},
    sock::{self, apply_owner, read_tuple},
};

/// What the next event on this CPU is, for deciding a parked cancel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Start,
    Expire,
    Other,
}

#[inline(always)]
fn ctx_read<T>(ctx: &TracePointContext, off: u32) -> Option<T> {
    unsafe { ctx.read_at::<T>(off as usize).ok() }
}

#[inline(always)]
fn is_tw_timer(function: u64) -> bool {
    let handler = global!(OFFSETS.tw_timer_handler);
    handler != 0 && function == handler
}

/// Decides a parked cancel given the next timer event on this CPU (`timer`
/// is 0 for non-timer events). Returns true when the parked cancel belonged
/// to `timer` and is consumed by the caller (re-arm or expiry); emits it as
/// killed when the next event is anything else.
#[inline(always)]
pub fn resolve_pending_cancel(timer: u64, next: Next) -> bool {
    let Some(scratch) = tw_scratch() else {
        return false;
    };
    let cancelled = unsafe { &mut (*scratch).cancelled };
    if cancelled.sk == 0 {
        return false;
    }
    let same = timer != 0 && cancelled.sk + global!(OFFSETS.tw_timer) as u64 == timer;
    let consumed = match next {
        Next::Other => false,
        Next::Expire => same,
        // A re-arm keeps the socket; a new tw in the freed memory does not.
        Next::Start => {
            let rearm = same && same_tuple(cancelled);
            if same && !rearm {
                count(Counter::TwMemoryReused);
            }
            rearm
        }
    };
    if consumed {
        return true;
    }
    let _ = OWNERS.remove(cancelled.sk);
    if filter::passes(cancelled) {
        output(cancelled);
    }
    cancelled.sk = 0;
    false
}

/// Whether the timewait socket at `ev.sk` still has the tuple `ev` was built
/// with (false when it cannot be read).
#[inline(always)]
fn same_tuple(ev: &RawEvent) -> bool {
    let tw = ev.sk;
    let ports = sock::read::<u16>(tw, global!(OFFSETS.skc_num)) == Some(ev.sport)
        && sock::read::<u16>(tw, global!(OFFSETS.skc_dport)).map(u16::from_be) == Some(ev.dport);
    if !ports {
        return false;
    }
    if ev.family == family::INET6 {
        sock::read::<[u8; 16]>(tw, global!(OFFSETS.skc_v6_rcv_saddr)) == Some(ev.saddr)
            && sock::read::<[u8; 16]>(tw, global!(OFFSETS.skc_v6_daddr)) == Some(ev.daddr)
    } else {
        sock::read::<[u8; 4]>(tw, global!(OFFSETS.skc_rcv_saddr))
            .is_some_and(|a| ev.saddr[..4] == a)
            && sock::read::<[u8; 4]>(tw, global!(OFFSETS.skc_daddr))
                .is_some_and(|a| ev.daddr[..4] == a)
    }
}

/// Builds the common part of a timewait event: tuple, substate, owner.
#[inline(always)]
pub fn build(ev: &mut RawEvent, tw: u64, ts: u64, kind: EventKind) -> Option<u8> {
    *ev = RawEvent::zeroed();
    ev.ts_ns = ts;
    ev.kind = kind as u32;
    ev.sk = tw;
    let net = read_tuple(tw, &mut prog_scratch(Prog::Timer)?.head, ev, false)?;
    let substate: u8 = sock::read(tw, global!(OFFSETS.tw_substate))?;
    if let Some(owner) = unsafe { OWNERS.get(tw) } {
        apply_owner(ev, owner);
        if ts >= owner.state_ts {
            ev.prev_ns = ts - owner.state_ts;
            ev.flags |= event_flags::PREV_KNOWN;
        }
    }
    // Timewait sockets carry their netns in the same sock_common field; an
    // owner entry may not have had it.
    if ev.flags & event_flags::NETNS_KNOWN == 0
        && let Some(ns) = sock::netns_of(net)
    {
        ev.netns = ns;
        ev.flags |= event_flags::NETNS_KNOWN;
    }
    Some(substate)
}

/// The function a timer will call, read from the timer itself (tp_btf
/// programs get only the `struct timer_list *`).
#[inline(always)]
fn timer_function(timer: u64) -> Option<u64> {
    sock::read(timer, global!(OFFSETS.timer_function))
}

/// Whether a timer event that interrupted `inet_sock_set_state` or
/// `timer_expire_entry` on this CPU (possible with tp_btf, where recursion is
/// checked per program) should be skipped: only timewait timers matter to the
/// parked state, and the interrupted program owns it until it returns.
#[inline(always)]
fn skip_nested(function: u64) -> bool {
    busy_in(busy::SET_STATE | busy::EXPIRE) && !is_tw_timer(function)
}

/// tp_btf `timer_start(struct timer_list *timer, unsigned long bucket_expiry)`.
#[inline(always)]
pub fn try_timer_start_btf(ctx: &BtfTracePointContext) -> Option<()> {
    let timer: u64 = ctx.arg(0);
    timer_start(ctx, timer, timer_function(timer)?)
}

/// Classic `timer:timer_start`: the record carries the function.
#[inline(always)]
pub fn try_timer_start(ctx: &TracePointContext) -> Option<()> {
    let timer: u64 = ctx_read(ctx, global!(OFFSETS.tp_start_timer))?;
    let function: u64 = ctx_read(ctx, global!(OFFSETS.tp_start_function))?;
    timer_start(ctx, timer, function)
}

#[inline(always)]
fn timer_start<C: EbpfContext>(ctx: &C, timer: u64, function: u64) -> Option<()> {
    if skip_nested(function) {
        return None;
    }
    let rearm = resolve_pending_cancel(timer, Next::Start);
    if !is_tw_timer(function) {
        return None;
    }
    let tw = timer - global!(OFFSETS.tw_timer) as u64;
    let ts = unsafe { bpf_ktime_get_ns() };
    let scratch = tw_scratch()?;
    if rearm {
        let ev = unsafe { &mut (*scratch).cancelled };
        let old = ev.old;
        let substate = build(ev, tw, ts, EventKind::TwRearm)?;
        ev.old = old;
        ev.new = substate;
        if let Some(owner) = OWNERS.get_ptr_mut(tw) {
            unsafe { (*owner).state = substate };
        }
        if filter::passes(ev) {
            output(ev);
        }
        ev.sk = 0;
        return Some(());
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
        let mut entry = sock::empty_owner();
        entry.state_ts = begun.ts_ns;
        entry.state = begun.new;
        entry.netns = begun.netns;
        entry.flags = begun.flags & event_flags::NETNS_KNOWN;
        let _ = OWNERS.insert(begun.sk, entry, 0);
        if filter::passes(begun) {
            output(begun);
        }
        begun.sk = 0;
    }
    let substate = build(begun, tw, ts, EventKind::TwBegin)?;
    begun.new = substate;
    begun.old = 0;
    Some(())
}

/// tp_btf `timer_cancel(struct timer_list *timer)`.
#[inline(always)]
pub fn try_timer_cancel_btf(ctx: &BtfTracePointContext) -> Option<()> {
    timer_cancel(ctx.arg(0))
}

/// Classic `timer:timer_cancel`: the record has only the timer.
#[inline(always)]
pub fn try_timer_cancel(ctx: &TracePointContext) -> Option<()> {
    timer_cancel(ctx_read(ctx, global!(OFFSETS.tp_cancel_timer))?)
}

#[inline(always)]
fn timer_cancel(timer: u64) -> Option<()> {
    let function = timer_function(timer)?;
    if skip_nested(function) {
        return None;
    }
    // A cancel right after a cancel: the first one was a kill.
    resolve_pending_cancel(timer, Next::Other);
    if !is_tw_timer(function) {
        return None;
    }
    let tw = timer - global!(OFFSETS.tw_timer) as u64;
    let ts = unsafe { bpf_ktime_get_ns() };
    let scratch = tw_scratch()?;
    let ev = unsafe { &mut (*scratch).cancelled };
    let substate = build(ev, tw, ts, EventKind::TwEnd);
    match substate {
        Some(substate) => {
            ev.old = substate;
            ev.new = tcp_state::CLOSE;
            ev.reason = TwEndReason::Killed as u8;
        }
        None => ev.sk = 0,
    }
    Some(())
}

/// tp_btf `timer_expire_entry(struct timer_list *timer, unsigned long baseclk)`.
#[inline(always)]
pub fn try_timer_expire_entry_btf(ctx: &BtfTracePointContext) -> Option<()> {
    let timer: u64 = ctx.arg(0);
    timer_expire_entry(timer, timer_function(timer)?)
}

/// Classic `timer:timer_expire_entry`: the record carries the function.
#[inline(always)]
pub fn try_timer_expire_entry(ctx: &TracePointContext) -> Option<()> {
    let timer: u64 = ctx_read(ctx, global!(OFFSETS.tp_expire_timer))?;
    let function: u64 = ctx_read(ctx, global!(OFFSETS.tp_expire_function))?;
    timer_expire_entry(timer, function)
}

#[inline(always)]
fn timer_expire_entry(timer: u64, function: u64) -> Option<()> {
    let parked = resolve_pending_cancel(timer, Next::Expire);
    if !is_tw_timer(function) {
        return None;
    }
    let tw = timer - global!(OFFSETS.tw_timer) as u64;
    let ts = unsafe { bpf_ktime_get_ns() };
    let scratch = tw_scratch()?;
    let ev = unsafe { &mut (*scratch).cancelled };
    if parked {
        // Re-time the parked end at the expiry itself.
        if ev.flags & event_flags::PREV_KNOWN != 0 {
            ev.prev_ns += ts.saturating_sub(ev.ts_ns);
        }
        ev.ts_ns = ts;
    } else {
        let substate = build(ev, tw, ts, EventKind::TwEnd)?;
        ev.old = substate;
        ev.new = tcp_state::CLOSE;
    }
    ev.reason = TwEndReason::Expired as u8;
    let _ = OWNERS.remove(tw);
    if filter::passes(ev) {
        output(ev);
    }
    ev.sk = 0;
    Some(())
}
