//! fentry `inet_twsk_deschedule_put`: a timewait socket taken down before its
//! timer ran out (RST, reuse, netns teardown). Where fentry loads, this
//! reports the early end, told apart as the timer path does
//! (`timewait::classify_kill`: reused, purged or killed); otherwise a
//! `timer_cancel` followed by nothing that explains it does.
//!
//! ```c
//! void inet_twsk_deschedule_put(struct inet_timewait_sock *tw);
//! ```

use aya_ebpf::{macros::fentry, programs::FEntryContext};
use tcptrace_common::TwEndReason;

use crate::{
    maps::global,
    probes::{Drop, settle, timewait::end},
    sock,
};

/// fentry `inet_twsk_deschedule_put`: a timewait socket killed early.
#[fentry(function = "inet_twsk_deschedule_put")]
pub fn tw_kill_fentry(ctx: FEntryContext) -> u32 {
    settle(try_deschedule_put(&ctx));
    0
}

/// Early kill (RST, reuse, purge) — only while the timer is still pending;
/// if it already fired, `tw_timer_handler` reports the expiry.
#[inline(always)]
pub fn try_deschedule_put(ctx: &FEntryContext) -> Result<(), Drop> {
    let tw: u64 = ctx.arg(0);
    let timer = tw + global!(OFFSETS.tw_timer) as u64;
    let pprev: u64 =
        sock::read(timer, global!(OFFSETS.timer_entry_pprev)).ok_or(Drop::ProbeRead)?;
    if pprev == 0 {
        return Err(Drop::NotPending);
    }
    end(tw, TwEndReason::Killed)
}
