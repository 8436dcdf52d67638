//! One module per kernel hook, each with its entry points, plus `timewait`:
//! the timewait-socket state the timer hooks share (and the event builder
//! the fentry hooks use too).
//!
//! Every `try_*` returns `Result<(), Drop>`; its entry point hands that to
//! [`settle`], which counts the failures ([`Drop::is_failure`]) as
//! [`Counter::ProbeFailed`].

pub mod empty;
pub mod inet_sock_set_state;
pub mod inet_twsk_deschedule_put;
pub mod inet_twsk_hashdance_schedule;
pub mod inet_twsk_schedule;
pub mod kfree_skb;
pub mod sys_exit_accept;
pub mod timer_cancel;
pub mod timer_expire_entry;
pub mod timer_start;
pub mod timewait;
pub mod tw_timer_handler;

use tcptrace_common::{Counter, RawEvent};

use crate::{
    filter,
    maps::{count, output},
};

/// Why a probe emitted nothing (or not its main event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    // Nothing to emit, on purpose: not a loss.
    /// The socket is not TCP.
    NotTcp,
    /// A freed packet that is not a traced connection attempt (another
    /// reason, not IP, not TCP, neither a SYN nor at a listener).
    NotTraced,
    /// The timer is not a timewait socket's (`tw_timer_handler`).
    NotTimewait,
    /// The event did not pass the user's in-kernel filter (counted as
    /// [`Counter::Filtered`] by the filter itself).
    Filtered,
    /// The nesting guard says skip: a timer event that interrupted a guarded
    /// program and is not a timewait timer's.
    Nested,
    /// accept() failed: no socket.
    AcceptFailed,
    /// The accepted socket is not in the owner map (not TCP, or never seen).
    Untracked,
    /// `__inet_twsk_schedule` arming a timer for the first time (the begin is
    /// reported by `inet_twsk_hashdance_schedule`).
    NotRearm,
    /// `inet_twsk_deschedule_put` on a timer that already fired (the expiry
    /// is reported by `tw_timer_handler`).
    NotPending,
    /// A read failed before the program could tell the event was one it
    /// traces (a timer's function, the socket behind an accepted fd): most
    /// such events are not ours (every timer of the system, accept() on
    /// every kind of socket), so they are not counted as lost.
    Unattributed,

    // An event lost because something failed: counted as
    // [`Counter::ProbeFailed`].
    /// A read of kernel memory failed (`bpf_probe_read_kernel`, a context
    /// read), a field lay outside the bytes copied, or what was read is
    /// inconsistent (an fd beyond its fd table).
    ProbeRead,
    /// The per-CPU scratch lookup failed.
    Scratch,
}

impl Drop {
    /// True for an event lost because something failed; false when there was
    /// nothing to emit on purpose.
    #[inline(always)]
    pub const fn is_failure(self) -> bool {
        matches!(self, Drop::ProbeRead | Drop::Scratch)
    }
}

/// Consumes a probe's result: counts a failure as [`Counter::ProbeFailed`].
#[inline(always)]
pub fn settle(result: Result<(), Drop>) {
    if let Err(drop) = result
        && drop.is_failure()
    {
        count(Counter::ProbeFailed);
    }
}

/// Submits `ev` if it passes the user's filter.
#[inline(always)]
pub fn emit(ev: &RawEvent) -> Result<(), Drop> {
    if !filter::passes(ev) {
        return Err(Drop::Filtered);
    }
    output(ev);
    Ok(())
}
