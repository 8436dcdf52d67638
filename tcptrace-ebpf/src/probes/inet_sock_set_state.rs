//! `sock:inet_sock_set_state`, fired by `inet_sk_set_state()` /
//! `inet_sk_state_store()` on every state change of a full socket:
//!
//! ```c
//! TRACE_EVENT(inet_sock_set_state,
//!     TP_PROTO(const struct sock *sk, const int oldstate, const int newstate), ...)
//! ```
//!
//! It exists because every TCP state transition passes through it. Three
//! entry points feed one handler: the tp_btf program and its twin (for a
//! transition that interrupts it on the same CPU) read the socket through BTF
//! offsets, the classic tracepoint reads the record. Both paths see the same
//! events. This is also where owners are captured (connect and listen
//! run in the owner's process context), with their user stack under
//! `--stacks` (`stacks::capture`: never by the twin, which runs in softirq
//! where the user stack is an innocent task's; a child socket carries its
//! listener's listen() stack until accept()), where a connect is remembered for
//! telling a timewait socket's reuse (`timewait::note_connect`), where a
//! timewait socket is linked to the full socket it replaces, and where a
//! socket that should have been replaced by one and was not is marked
//! overflow ([`no_error`]).

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tcptrace_common::{
    Counter, EventKind, IPPROTO_TCP, OwnerEntry, RawEvent, TwEndReason, event_flags, family,
    tcp_state,
};

use crate::{
    maps::{
        Handled, LISTENERS, ListenKey, ListenerEntry, OWNERS, Prog, RECORD_WORDS, busy, count,
        global, guarded, prog_scratch, remember_owner, scratch, tw_scratch,
    },
    probes::{Drop, emit, settle, timewait},
    sock::{self, apply_owner, capture_current, empty_owner, field, same_tuple},
};

/// `sock:inet_sock_set_state` as a BTF-enabled raw tracepoint (preferred).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    // First of all, so the twin knows this transition is taken.
    if let Some(s) = scratch() {
        let sk: u64 = ctx.arg(0);
        let new: i32 = ctx.arg(2);
        unsafe { (*s).handled.record(Handled::key(sk, new as u32)) };
    }
    settle(guarded(busy::SET_STATE, || try_btf(&ctx, false)));
    0
}

/// The twin of `inet_sock_set_state_btf`, attached beside it: the kernel
/// skips a program that is already running on the CPU, so a transition in a
/// softirq that interrupted it would be lost; this one handles exactly
/// those (the transitions the main program did not record as taken: see
/// `maps::Handled`) and returns at once otherwise.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let new: i32 = ctx.arg(2);
    let taken =
        scratch().is_none_or(|s| unsafe { (*s).handled.take(Handled::key(sk, new as u32)) });
    if !taken {
        count(Counter::NestedRecovered);
        settle(try_btf(&ctx, true));
    }
    0
}

/// `sock:inet_sock_set_state` as a classic tracepoint (fallback).
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state_tp(ctx: TracePointContext) -> u32 {
    settle(guarded(busy::SET_STATE, || try_classic(&ctx)));
    0
}

/// tp_btf: `(const struct sock *sk, int oldstate, int newstate)`. `nested`:
/// called by the twin program for a transition that interrupted this one on
/// the same CPU (its own scratch).
#[inline(always)]
pub fn try_btf(ctx: &BtfTracePointContext, nested: bool) -> Result<(), Drop> {
    // Straight from the context: a BTF pointer read with plain loads.
    let sk_ptr: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if sock::direct::protocol(sk_ptr) != IPPROTO_TCP {
        return Err(Drop::NotTcp);
    }
    let ev = &mut prog_scratch(if nested {
        Prog::SetStateNested
    } else {
        Prog::SetState
    })
    .ok_or(Drop::Scratch)?
    .event;
    crate::words::zero(ev);
    let net = sock::direct::read_tuple(sk_ptr, ev);
    let sk = sk_ptr as u64;
    if new as u8 == tcp_state::CLOSE {
        // Unhashed by now (`skc_num` is 0): the port stays in inet_sport,
        // beyond `struct sock` (not a direct load).
        ev.sport =
            u16::from_be(sock::read(sk, global!(OFFSETS.inet_sport)).ok_or(Drop::ProbeRead)?);
    }
    handle(
        unsafe { bpf_ktime_get_ns() },
        sk,
        || sock::direct::netns_of(net),
        |owner| {
            if !nested {
                crate::stacks::capture(ctx, owner)
            }
        },
        old as u8,
        new as u8,
        ev,
    )
}

const RECORD_BYTES: usize = RECORD_WORDS * 8;

/// Classic tracepoint: fields at the offsets of its `format` file.
#[inline(always)]
pub fn try_classic(ctx: &TracePointContext) -> Result<(), Drop> {
    let scratch = scratch().ok_or(Drop::Scratch)?;
    let rec = unsafe { &mut (*scratch).record };
    unsafe {
        let src = ctx.as_ptr() as *const u8;
        let dst = rec.as_mut_ptr() as *mut u8;
        let len = RECORD_BYTES as u32;
        if aya_ebpf::helpers::generated::bpf_probe_read_kernel(dst.cast(), len, src.cast()) != 0 {
            return Err(Drop::ProbeRead);
        }
    }
    let rec = &*rec;
    let protocol: u16 = rec_field(rec, global!(OFFSETS.tp_protocol))?;
    if protocol != IPPROTO_TCP {
        return Err(Drop::NotTcp);
    }
    let sk: u64 = rec_field(rec, global!(OFFSETS.tp_skaddr))?;
    let old: i32 = rec_field(rec, global!(OFFSETS.tp_oldstate))?;
    let new: i32 = rec_field(rec, global!(OFFSETS.tp_newstate))?;
    let tuple = &mut prog_scratch(Prog::SetState).ok_or(Drop::Scratch)?.event;
    crate::words::zero(tuple);
    let fam: u16 = rec_field(rec, global!(OFFSETS.tp_family))?;
    tuple.family = fam as u8;
    tuple.sport = rec_field(rec, global!(OFFSETS.tp_sport))?;
    tuple.dport = rec_field(rec, global!(OFFSETS.tp_dport))?;
    if tuple.family == family::INET6 {
        tuple.saddr = rec_field(rec, global!(OFFSETS.tp_saddr_v6))?;
        tuple.daddr = rec_field(rec, global!(OFFSETS.tp_daddr_v6))?;
    } else {
        let s: [u8; 4] = rec_field(rec, global!(OFFSETS.tp_saddr))?;
        let d: [u8; 4] = rec_field(rec, global!(OFFSETS.tp_daddr))?;
        tuple.saddr[..4].copy_from_slice(&s);
        tuple.daddr[..4].copy_from_slice(&d);
    }
    handle(
        unsafe { bpf_ktime_get_ns() },
        sk,
        || sock::netns(sk),
        |owner| crate::stacks::capture(ctx, owner),
        old as u8,
        new as u8,
        tuple,
    )
}

/// A field of the copied record (out of range: [`Drop::ProbeRead`]).
#[inline(always)]
fn rec_field<T: Copy>(rec: &[u64; RECORD_WORDS], off: u32) -> Result<T, Drop> {
    field(rec, off).ok_or(Drop::ProbeRead)
}

/// A new lifecycle starts on this socket address: connect(), listen(), or a
/// child socket cloned from a listener.
#[inline(always)]
fn starts_lifecycle(old: u8, new: u8) -> bool {
    old == tcp_state::CLOSE || (old == tcp_state::LISTEN && new == tcp_state::SYN_RECV)
}

/// `netns` reads the socket's network namespace (asked only for a socket
/// the owner map does not know); `stack` captures the user stack into an
/// owner just captured in process context (connect(), listen()).
#[inline(always)]
fn handle(
    ts: u64,
    sk: u64,
    netns: impl FnOnce() -> Option<u32>,
    stack: impl FnOnce(&mut OwnerEntry),
    old: u8,
    new: u8,
    ev: &mut RawEvent,
) -> Result<(), Drop> {
    // A transition can't fall between a re-arm's cancel and start: any
    // pending cancel on this CPU was a kill.
    timewait::resolve_pending_cancel(0, timewait::Next::Other);

    let mut owner_slot = core::mem::MaybeUninit::uninit();
    let owner = empty_owner(&mut owner_slot);
    let mut prev_ns = 0u64;
    let mut flags = 0u8;
    let known = if starts_lifecycle(old, new) {
        None
    } else {
        OWNERS.get_ptr_mut(sk)
    };
    match known {
        Some(entry) => {
            let entry = unsafe { &mut *entry };
            crate::words::copy(owner, entry);
            if ts >= entry.state_ts {
                prev_ns = ts - entry.state_ts;
                flags |= event_flags::PREV_KNOWN;
            }
            entry.state_ts = ts;
            entry.state = new;
        }
        None => {
            if let Some(ns) = netns() {
                owner.netns = ns;
                owner.flags |= event_flags::NETNS_KNOWN;
            }
            if old == tcp_state::CLOSE && (new == tcp_state::SYN_SENT || new == tcp_state::LISTEN) {
                // connect() / listen(): we are in the owner's process context.
                let pid_tgid = capture_current(owner);
                stack(owner);
                if new == tcp_state::SYN_SENT {
                    timewait::note_connect(sk, pid_tgid);
                }
            } else if old == tcp_state::LISTEN && new == tcp_state::SYN_RECV {
                let key = ListenKey {
                    netns: owner.netns,
                    port: ev.sport as u32,
                };
                if let Some(listener) = unsafe { LISTENERS.get(key) } {
                    let netns = owner.netns;
                    let ns_flags = owner.flags;
                    crate::words::copy(owner, &listener.owner);
                    owner.netns = netns;
                    // The listener's cgroup verdict and listen() stack
                    // travel with its owner (the stack until accept()).
                    owner.flags = (owner.flags
                        & (event_flags::OWNER_KNOWN
                            | event_flags::CGROUP_MATCH
                            | event_flags::STACK_KNOWN))
                        | event_flags::OWNER_FROM_LISTENER
                        | ns_flags;
                }
            } else {
                count(Counter::OwnerMiss);
            }
            owner.state_ts = ts;
            owner.state = new;
            if new != tcp_state::CLOSE {
                remember_owner(sk, owner);
            }
            if new == tcp_state::LISTEN {
                let key = ListenKey {
                    netns: owner.netns,
                    port: ev.sport as u32,
                };
                let entry = ListenerEntry { sk, owner: *owner };
                if LISTENERS.insert(key, entry, 0).is_err() {
                    count(Counter::MapFull);
                }
            }
        }
    }

    if old == tcp_state::SYN_SENT {
        timewait::forget_connect(sk);
    }
    if new == tcp_state::CLOSE {
        let handed_over = link_timewait(sk, old, ev, owner);
        if !handed_over
            && (old == tcp_state::FIN_WAIT2 || old == tcp_state::CLOSING)
            && no_error(sk)
        {
            ev.reason = TwEndReason::Overflow as u8;
        }
        let _ = OWNERS.remove(sk);
        if old == tcp_state::LISTEN {
            let key = ListenKey {
                netns: owner.netns,
                port: ev.sport as u32,
            };
            if let Some(listener) = unsafe { LISTENERS.get(key) }
                && listener.sk == sk
            {
                let _ = LISTENERS.remove(key);
            }
        }
    }

    ev.ts_ns = ts;
    ev.kind = EventKind::Transition as u32;
    ev.sk = sk;
    ev.old = old;
    ev.new = new;
    ev.prev_ns = prev_ns;
    ev.flags = flags;
    apply_owner(ev, owner);
    emit(ev)
}

/// Whether a socket leaving FIN_WAIT2 or CLOSING for CLOSE with no timewait
/// socket in its place went without an error: then `tcp_time_wait()` could
/// not allocate the timewait socket (`inet_twsk_alloc()` fails past
/// `tcp_max_tw_buckets`, or without memory; the kernel counts
/// TCPTimeWaitOverflow and calls `tcp_done()`). An RST (`tcp_reset()`), a
/// write timeout and `tcp_abort()` set `sk_err` before `tcp_done()`. Read only
/// on this rare path. Closes it cannot tell apart (no error either, each
/// with a counter of its own the kernel bumps): `TCP_LINGER2` < 0, or
/// `tcp_fin_timeout` > 60 s and the keepalive timer's reset
/// (TCPAbortOnLinger); close() with unread data, or SO_LINGER 0, on a
/// socket already shut down for writing (TCPAbortOnClose); data for an
/// orphan that acknowledges its FIN (TCPAbortOnData); orphans killed for
/// memory (TCPAbortOnMemory). The namespace's TCPTimeWaitOverflow is the
/// cross-check.
#[inline(always)]
fn no_error(sk: u64) -> bool {
    let off = global!(OFFSETS.sk_err);
    off != 0 && sock::read::<i32>(sk, off) == Some(0)
}

/// `tcp_time_wait()` armed a timewait socket's timer on this CPU just before
/// `tcp_done()` moved the full socket to CLOSE: if the 4-tuples match, the
/// timewait socket replaced this one. Emit its `TwBegin` with this socket's
/// owner, and carry the owner to the timewait socket's map entry. Returns
/// whether a timewait socket took this one's place (with fentry, the
/// hand-over `inet_twsk_hashdance_schedule` marked).
#[inline(always)]
fn link_timewait(sk: u64, old: u8, tuple: &RawEvent, owner: &tcptrace_common::OwnerEntry) -> bool {
    let Some(scratch) = tw_scratch() else {
        // A timewait begin may be parked there: it is lost.
        count(Counter::ProbeFailed);
        return false;
    };
    let handed_over = unsafe { &mut (*scratch).handed_over };
    if *handed_over != 0 {
        let ours = *handed_over == sk;
        *handed_over = 0;
        if ours {
            return true;
        }
    }
    let begun = unsafe { &mut (*scratch).begun };
    if begun.sk == 0 || !same_tuple(begun, tuple) {
        return false;
    }
    begun.link = sk;
    begun.old = old;
    begun.flags |= event_flags::LINKED;
    let netns_known = begun.flags & event_flags::NETNS_KNOWN != 0;
    let tw_netns = begun.netns;
    apply_owner(begun, owner);
    if netns_known {
        begun.netns = tw_netns;
    }
    let mut tw_slot = core::mem::MaybeUninit::uninit();
    let tw_owner = empty_owner(&mut tw_slot);
    crate::words::copy(tw_owner, owner);
    tw_owner.state_ts = begun.ts_ns;
    tw_owner.state = begun.new;
    tw_owner.netns = begun.netns;
    remember_owner(begun.sk, tw_owner);
    let _ = emit(begun);
    begun.sk = 0;
    true
}
