//! The timewait-socket state the three timer hooks share (`timer_start.rs`,
//! `timer_cancel.rs`, `timer_expire_entry.rs`: the path for kernels where
//! fentry does not load), and the event builder the fentry hooks use too. A
//! timewait socket (`struct inet_timewait_sock`) is a separate object from
//! the full socket it replaces; its life is its timer `tw->tw_timer`, whose
//! function is `tw_timer_handler`:
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
//! So a cancel is parked per CPU (`TwScratch::cancelled`) and decided by the
//! next event on that CPU; a begun timewait socket is parked
//! (`TwScratch::begun`) until the full socket it replaces goes to CLOSE.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use tcptrace_common::{Counter, EventKind, RawEvent, TwEndReason, event_flags, family, tcp_state};

use crate::{
    maps::{OWNERS, Prog, busy, busy_in, count, global, prog_scratch, tw_scratch},
    probes::{Drop, emit},
    sock::{self, apply_owner, read_tuple},
};

/// What the next event on this CPU is, for deciding a parked cancel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Start,
    Expire,
    Other,
}

/// A field of a timer tracepoint's record (the timer and its function: read
/// before anything says it is a timewait timer, so a failure is
/// [`Drop::Unattributed`]).
#[inline(always)]
pub fn ctx_read<T>(ctx: &TracePointContext, off: u32) -> Result<T, Drop> {
    unsafe { ctx.read_at::<T>(off as usize) }.map_err(|_| Drop::Unattributed)
}

#[inline(always)]
pub fn is_tw_timer(function: u64) -> bool {
    let handler = global!(OFFSETS.tw_timer_handler);
    handler != 0 && function == handler
}

/// The timewait socket whose `tw_timer` is `timer`.
#[inline(always)]
pub fn tw_of(timer: u64) -> u64 {
    timer - global!(OFFSETS.tw_timer) as u64
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
    let _ = emit(cancelled);
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
/// Returns the substate. On failure the slot is left empty (`sk == 0`), so
/// a half-built event is never parked and emitted later.
#[inline(always)]
pub fn build(ev: &mut RawEvent, tw: u64, ts: u64, kind: EventKind) -> Result<u8, Drop> {
    let built = build_into(ev, tw, ts, kind);
    if built.is_err() {
        ev.sk = 0;
    }
    built
}

#[inline(always)]
fn build_into(ev: &mut RawEvent, tw: u64, ts: u64, kind: EventKind) -> Result<u8, Drop> {
    *ev = RawEvent::zeroed();
    ev.ts_ns = ts;
    ev.kind = kind as u32;
    ev.sk = tw;
    let head = &mut prog_scratch(Prog::Timer).ok_or(Drop::Scratch)?.head;
    let net = read_tuple(tw, head, ev, false).ok_or(Drop::ProbeRead)?;
    let substate: u8 = sock::read(tw, global!(OFFSETS.tw_substate)).ok_or(Drop::ProbeRead)?;
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
    Ok(substate)
}

/// The function a timer will call, read from the timer itself (tp_btf
/// programs get only the `struct timer_list *`).
#[inline(always)]
pub fn timer_function(timer: u64) -> Result<u64, Drop> {
    sock::read(timer, global!(OFFSETS.timer_function)).ok_or(Drop::Unattributed)
}

/// Whether a timer event that interrupted `inet_sock_set_state` or
/// `timer_expire_entry` on this CPU (possible with tp_btf, where recursion is
/// checked per program) should be skipped: only timewait timers matter to the
/// parked state, and the interrupted program owns it until it returns.
#[inline(always)]
pub fn skip_nested(function: u64) -> bool {
    busy_in(busy::SET_STATE | busy::EXPIRE) && !is_tw_timer(function)
}

/// fentry: the end of timewait socket `tw` (`tw_timer_handler`,
/// `inet_twsk_deschedule_put`), built and emitted at once.
#[inline(always)]
pub fn end(tw: u64, reason: TwEndReason) -> Result<(), Drop> {
    let ts = unsafe { bpf_ktime_get_ns() };
    let mut ev = RawEvent::zeroed();
    let substate = build(&mut ev, tw, ts, EventKind::TwEnd)?;
    ev.old = substate;
    ev.new = tcp_state::CLOSE;
    ev.reason = reason as u8;
    let _ = OWNERS.remove(tw);
    emit(&ev)
}
