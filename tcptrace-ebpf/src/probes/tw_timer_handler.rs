//! fentry `tw_timer_handler`: a timewait socket's timer ran out. Where fentry
//! loads, this reports the end of the timewait socket by expiry; otherwise
//! `timer_expire_entry` does.
//!
//! ```c
//! static void tw_timer_handler(struct timer_list *t);
//! ```

use aya_ebpf::{macros::fentry, programs::FEntryContext};
use tcptrace_common::TwEndReason;

use crate::probes::{
    Drop, settle,
    timewait::{end, tw_of},
};

/// fentry `tw_timer_handler`: a timewait socket expired.
#[fentry(function = "tw_timer_handler")]
pub fn tw_expire_fentry(ctx: FEntryContext) -> u32 {
    settle(try_timer_handler(&ctx));
    0
}

/// Expiry: the timer ran out.
#[inline(always)]
pub fn try_timer_handler(ctx: &FEntryContext) -> Result<(), Drop> {
    let timer: u64 = ctx.arg(0);
    end(tw_of(timer), TwEndReason::Expired)
}
