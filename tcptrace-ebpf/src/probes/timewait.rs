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
//! - `timer_cancel` followed by anything else: ended early
//!   (`inet_twsk_deschedule_put()`), and why is decided at the cancel
//!   ([`classify_kill`]): reused when the task cancelling is the one whose
//!   connect() on this CPU is hashing a socket with the timewait socket's
//!   4-tuple (`tcp_tw_reuse`, see `maps::Connecting`); purged when its
//!   network namespace's reference count is 0 (`inet_twsk_purge()` at
//!   teardown); killed otherwise (an RST, a SYN answered).
//!
//! So a cancel is parked per CPU (`TwScratch::cancelled`) and decided by the
//! next event on that CPU; a begun timewait socket is parked
//! (`TwScratch::begun`) until the full socket it replaces goes to CLOSE.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    programs::TracePointContext,
};
use tcptrace_common::{Counter, EventKind, RawEvent, TwEndReason, event_flags, family, tcp_state};

use crate::{
    maps::{OWNERS, Prog, ProgScratch, busy, busy_in, count, global, prog_scratch, tw_scratch},
    probes::{Drop, emit},
    sock::{self, SockHead, apply_owner, eq16, field, read_tuple},
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

/// What [`build`] read besides the event.
#[derive(Clone, Copy)]
pub struct Built {
    /// `tw_substate`: TIME_WAIT, or FIN_WAIT2 for an orphan.
    pub substate: u8,
    /// The timewait socket's `struct net *` (0 if unknown).
    pub net: u64,
}

/// Builds the common part of a timewait event: tuple, substate, owner.
/// On failure the slot is left empty (`sk == 0`), so a half-built event is
/// never parked and emitted later.
#[inline(always)]
pub fn build(ev: &mut RawEvent, tw: u64, ts: u64, kind: EventKind) -> Result<Built, Drop> {
    let built = build_into(ev, tw, ts, kind);
    if built.is_err() {
        ev.sk = 0;
    }
    built
}

#[inline(always)]
fn build_into(ev: &mut RawEvent, tw: u64, ts: u64, kind: EventKind) -> Result<Built, Drop> {
    crate::words::zero(ev);
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
    Ok(Built { substate, net })
}

/// CLOSE -> SYN_SENT in connect(), in the connecting task: remembered on
/// this CPU for [`classify_kill`]. One per-CPU store.
#[inline(always)]
pub fn note_connect(sk: u64, pid_tgid: u64) {
    if let Some(scratch) = tw_scratch() {
        let connect = unsafe { &mut (*scratch).connect };
        connect.sk = sk;
        connect.pid_tgid = pid_tgid;
    }
}

/// `sk` left SYN_SENT: its connect() has hashed it (or failed), so a later
/// timewait cancel on this CPU is not its reuse.
#[inline(always)]
pub fn forget_connect(sk: u64) {
    if let Some(scratch) = tw_scratch() {
        let connect = unsafe { &mut (*scratch).connect };
        if connect.sk == sk {
            connect.sk = 0;
        }
    }
}

/// Why the timewait socket `ev` (a `TwEnd` being built, its `struct net *`
/// `net`) ends if its timer's cancel is neither a re-arm nor an expiry:
/// sets `reason` to reused (with `link` the connecting socket and
/// `reused_by` its task), purged or killed. See the module docs.
#[inline(always)]
pub fn classify_kill(ev: &mut RawEvent, net: u64) {
    ev.reason = TwEndReason::Killed as u8;
    if let Some((sk, tgid)) = reused_by(ev, net) {
        ev.reason = TwEndReason::Reused as u8;
        ev.link = sk;
        ev.flags |= event_flags::LINKED;
        ev.reused_by = tgid;
    } else if namespace_dying(net) {
        ev.reason = TwEndReason::Purged as u8;
    }
}

/// Undoes what [`classify_kill`] set, for a parked cancel that turned out
/// to be an expiry.
#[inline(always)]
pub fn unclassify(ev: &mut RawEvent) {
    ev.link = 0;
    ev.flags &= !event_flags::LINKED;
    ev.reused_by = 0;
}

/// The connecting socket and its task's tgid when the current task is the
/// one whose connect() on this CPU is hashing a socket with `tw`'s 4-tuple
/// in `tw`'s namespace. Reads the connecting socket only when the task
/// matches.
#[inline(always)]
fn reused_by(tw: &RawEvent, tw_net: u64) -> Option<(u64, u32)> {
    let scratch = tw_scratch()?;
    let connect = unsafe { (*scratch).connect };
    if connect.sk == 0 || bpf_get_current_pid_tgid() != connect.pid_tgid {
        return None;
    }
    // The timer program's event slot is free: its timewait events are
    // built in `TwScratch` (or on the stack, with fentry).
    let ProgScratch {
        event: sk_tuple,
        head,
    } = prog_scratch(Prog::Timer)?;
    crate::words::zero(sk_tuple);
    // The port is hashed by now: skc_num holds it.
    let net = read_tuple(connect.sk, head, sk_tuple, false)?;
    (net == tw_net && same_endpoints(sk_tuple, head, tw))
        .then_some((connect.sk, (connect.pid_tgid >> 32) as u32))
}

/// Whether the connecting socket `sk` (its tuple, and its `sock_common`
/// head) has the timewait socket `tw`'s 4-tuple. An IPv6 socket connecting
/// to a v4-mapped address (`tcp_v6_connect()` hands over to
/// `tcp_v4_connect()`) sets its v6 source only once connected: compare its
/// IPv4 fields with the mapped addresses of the timewait socket then.
#[inline(always)]
fn same_endpoints(sk: &RawEvent, head: &SockHead, tw: &RawEvent) -> bool {
    if sk.family != tw.family || sk.sport != tw.sport || sk.dport != tw.dport {
        return false;
    }
    if eq16(&sk.saddr, &tw.saddr) && eq16(&sk.daddr, &tw.daddr) {
        return true;
    }
    if sk.family != family::INET6 || !v4_mapped(&tw.saddr) || !v4_mapped(&tw.daddr) {
        return false;
    }
    let saddr: Option<[u8; 4]> = field(head, global!(OFFSETS.skc_rcv_saddr));
    let daddr: Option<[u8; 4]> = field(head, global!(OFFSETS.skc_daddr));
    saddr.is_some_and(|a| tw.saddr[12..] == a) && daddr.is_some_and(|a| tw.daddr[12..] == a)
}

/// `::ffff:a.b.c.d`.
#[inline(always)]
fn v4_mapped(a: &[u8; 16]) -> bool {
    let head = unsafe { core::ptr::read_unaligned(a.as_ptr() as *const u64) };
    let mid = unsafe { core::ptr::read_unaligned(a.as_ptr().add(8) as *const u32) };
    head == 0 && mid == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// Whether the network namespace `net` is being torn down: its reference
/// count is 0 while `cleanup_net()` runs the exit methods, among them
/// `inet_twsk_purge()` (`check_net()` is how it picks the timewait sockets
/// to kill). False when BTF did not give the offset.
#[inline(always)]
fn namespace_dying(net: u64) -> bool {
    let off = global!(OFFSETS.net_ns_ref);
    off != 0 && net != 0 && sock::read::<u32>(net, off) == Some(0)
}

/// The function a timer will call, read from the timer itself (tp_btf
/// programs get only the `struct timer_list *`, a BTF pointer: one plain
/// load, no helper call, on the millions of timers that are not ours).
#[inline(always)]
pub fn timer_function(timer: *const u8) -> u64 {
    unsafe { sock::direct::load(timer, global!(OFFSETS.timer_function)) }
}

/// Whether a timer event that is not a timewait timer's has anything to
/// do: only a cancel parked on this CPU to decide (as killed), and not
/// when it interrupted a guarded program (`respect_busy`), which owns the
/// parked state until it returns. One per-CPU lookup (inlined by the
/// verifier) and two loads: what every unrelated timer costs.
#[inline(always)]
pub fn other_timer_pending(respect_busy: bool) -> bool {
    let Some(s) = crate::maps::scratch() else {
        return false;
    };
    unsafe {
        (*s).tw.cancelled.sk != 0
            && !(respect_busy && (*s).busy & (busy::SET_STATE | busy::EXPIRE) != 0)
    }
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
/// `inet_twsk_deschedule_put`), built and emitted at once. `reason`
/// [`TwEndReason::Killed`] is refined by [`classify_kill`].
#[inline(always)]
pub fn end(tw: u64, reason: TwEndReason) -> Result<(), Drop> {
    let ts = unsafe { bpf_ktime_get_ns() };
    let mut ev: RawEvent = crate::words::zeroed();
    let built = build(&mut ev, tw, ts, EventKind::TwEnd)?;
    ev.old = built.substate;
    ev.new = tcp_state::CLOSE;
    ev.reason = reason as u8;
    if reason == TwEndReason::Killed {
        classify_kill(&mut ev, built.net);
    }
    let _ = OWNERS.remove(tw);
    emit(&ev)
}
