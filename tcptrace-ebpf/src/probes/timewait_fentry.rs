//! TIME_WAIT through fentry, for kernels that allow it (faster and exact: the
//! functions hand us the timewait socket and, at creation, the full socket).
//! On kernels where fentry does not load (e.g. lockdown, no BPF trampoline),
//! userspace falls back to the timer tracepoints in `timer.rs`.
//!
//! ```c
//! void inet_twsk_hashdance_schedule(struct inet_timewait_sock *tw, struct sock *sk,
//!                                   struct inet_hashinfo *hashinfo, int timeo);
//! void __inet_twsk_schedule(struct inet_timewait_sock *tw, int timeo, bool rearm);
//! static void tw_timer_handler(struct timer_list *t);
//! void inet_twsk_deschedule_put(struct inet_timewait_sock *tw);
//! ```

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::FEntryContext};
use tcptrace_common::{EventKind, RawEvent, TwEndReason, event_flags, tcp_state};

use crate::{
    filter,
    maps::{OWNERS, count, global, output},
    probes::timer::build,
    sock::{self, apply_owner},
};

/// Begin: `tcp_time_wait()` hands over the full socket `sk` and its timewait socket `tw`.
#[inline(always)]
pub fn try_hashdance(ctx: &FEntryContext) -> Option<()> {
    let tw: u64 = ctx.arg(0);
    let sk: u64 = ctx.arg(1);
    let ts = unsafe { bpf_ktime_get_ns() };
    let mut ev = RawEvent::zeroed();
    let substate = build(&mut ev, tw, ts, EventKind::TwBegin)?;
    ev.new = substate;
    ev.link = sk;
    ev.flags |= event_flags::LINKED;
    ev.flags &= !event_flags::PREV_KNOWN;
    ev.prev_ns = 0;
    let mut entry = sock::empty_owner();
    if let Some(owner) = unsafe { OWNERS.get(sk) } {
        apply_owner(&mut ev, owner);
        ev.old = owner.state;
        entry = *owner;
    } else {
        count(tcptrace_common::Counter::TwUnlinked);
    }
    entry.state_ts = ts;
    entry.state = substate;
    if OWNERS.insert(tw, entry, 0).is_err() {
        count(tcptrace_common::Counter::MapFull);
    }
    if filter::passes(&ev) {
        output(&ev);
    }
    Some(())
}

/// Re-arm (`rearm == true`): e.g. substate FIN_WAIT2 -> TIME_WAIT.
#[inline(always)]
pub fn try_schedule(ctx: &FEntryContext) -> Option<()> {
    let tw: u64 = ctx.arg(0);
    let rearm: u8 = ctx.arg(2);
    if rearm == 0 {
        return None;
    }
    let ts = unsafe { bpf_ktime_get_ns() };
    let mut ev = RawEvent::zeroed();
    let substate = build(&mut ev, tw, ts, EventKind::TwRearm)?;
    ev.new = substate;
    if let Some(owner) = OWNERS.get_ptr_mut(tw) {
        unsafe {
            ev.old = (*owner).state;
            (*owner).state = substate;
        }
    }
    if filter::passes(&ev) {
        output(&ev);
    }
    Some(())
}

#[inline(always)]
fn end(tw: u64, reason: TwEndReason) -> Option<()> {
    let ts = unsafe { bpf_ktime_get_ns() };
    let mut ev = RawEvent::zeroed();
    let substate = build(&mut ev, tw, ts, EventKind::TwEnd)?;
    ev.old = substate;
    ev.new = tcp_state::CLOSE;
    ev.reason = reason as u8;
    let _ = OWNERS.remove(tw);
    if filter::passes(&ev) {
        output(&ev);
    }
    Some(())
}

/// Expiry: the timer ran out.
#[inline(always)]
pub fn try_timer_handler(ctx: &FEntryContext) -> Option<()> {
    let timer: u64 = ctx.arg(0);
    end(
        timer - global!(OFFSETS.tw_timer) as u64,
        TwEndReason::Expired,
    )
}

/// Early kill (RST, reuse, purge) — only while the timer is still pending;
/// if it already fired, `tw_timer_handler` reports the expiry.
#[inline(always)]
pub fn try_deschedule_put(ctx: &FEntryContext) -> Option<()> {
    let tw: u64 = ctx.arg(0);
    let timer = tw + global!(OFFSETS.tw_timer) as u64;
    let pprev: u64 = sock::read(timer, global!(OFFSETS.timer_entry_pprev))?;
    if pprev == 0 {
        return None;
    }
    end(tw, TwEndReason::Killed)
}
