//! tcptrace's eBPF program: entry points only. Each one calls a `try_*`
//! function in `probes/`, one file per kernel hook.
#![no_std]
#![no_main]

mod filter;
mod maps;
mod probes;
mod sock;

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, TracePointContext},
};

/// `sock:inet_sock_set_state` as a BTF-enabled raw tracepoint (preferred).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    maps::guarded(maps::busy::SET_STATE, || {
        probes::inet_sock_set_state::try_btf(&ctx, false);
    });
    0
}

/// The twin of `inet_sock_set_state_btf`, attached beside it: the kernel
/// skips a program that is already running on the CPU, so a transition in a
/// softirq that interrupted it would be lost; this one handles exactly those
/// and returns at once otherwise.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: BtfTracePointContext) -> i32 {
    if maps::busy_in(maps::busy::SET_STATE) {
        maps::count(tcptrace_common::Counter::NestedRecovered);
        probes::inet_sock_set_state::try_btf(&ctx, true);
    }
    0
}

/// `sock:inet_sock_set_state` as a classic tracepoint (fallback).
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state_tp(ctx: TracePointContext) -> u32 {
    maps::guarded(maps::busy::SET_STATE, || {
        probes::inet_sock_set_state::try_classic(&ctx);
    });
    0
}

/// `timer:timer_start` as a BTF-enabled raw tracepoint (preferred: no trace
/// record is built, and recursion is checked per program).
#[btf_tracepoint(function = "timer_start")]
pub fn timer_start_btf(ctx: BtfTracePointContext) -> i32 {
    probes::timer::try_timer_start_btf(&ctx);
    0
}

/// `timer:timer_cancel` as a BTF-enabled raw tracepoint.
#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel_btf(ctx: BtfTracePointContext) -> i32 {
    probes::timer::try_timer_cancel_btf(&ctx);
    0
}

/// `timer:timer_expire_entry` as a BTF-enabled raw tracepoint.
#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry_btf(ctx: BtfTracePointContext) -> i32 {
    maps::guarded(maps::busy::EXPIRE, || {
        probes::timer::try_timer_expire_entry_btf(&ctx);
    });
    0
}

/// `timer:timer_start`: a timewait socket's timer armed (begin) or re-armed.
#[tracepoint(category = "timer", name = "timer_start")]
pub fn timer_start(ctx: TracePointContext) -> u32 {
    probes::timer::try_timer_start(&ctx);
    0
}

/// `timer:timer_cancel`: a timewait socket's timer detached (kill, re-arm or expiry).
#[tracepoint(category = "timer", name = "timer_cancel")]
pub fn timer_cancel(ctx: TracePointContext) -> u32 {
    probes::timer::try_timer_cancel(&ctx);
    0
}

/// `timer:timer_expire_entry`: a timewait socket's timer ran out.
#[tracepoint(category = "timer", name = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: TracePointContext) -> u32 {
    maps::guarded(maps::busy::EXPIRE, || {
        probes::timer::try_timer_expire_entry(&ctx);
    });
    0
}

/// `syscalls:sys_exit_accept4`: the accepting process owns the child socket.
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    probes::accept::try_sys_exit_accept(&ctx);
    0
}

/// `syscalls:sys_exit_accept`: as `sys_exit_accept4`.
#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    probes::accept::try_sys_exit_accept(&ctx);
    0
}

/// fentry `inet_twsk_hashdance_schedule`: a timewait socket replaces a full socket.
#[fentry(function = "inet_twsk_hashdance_schedule")]
pub fn tw_begin_fentry(ctx: FEntryContext) -> u32 {
    probes::timewait_fentry::try_hashdance(&ctx);
    0
}

/// fentry `__inet_twsk_schedule`: a timewait socket's timer re-armed.
#[fentry(function = "__inet_twsk_schedule")]
pub fn tw_rearm_fentry(ctx: FEntryContext) -> u32 {
    probes::timewait_fentry::try_schedule(&ctx);
    0
}

/// fentry `tw_timer_handler`: a timewait socket expired.
#[fentry(function = "tw_timer_handler")]
pub fn tw_expire_fentry(ctx: FEntryContext) -> u32 {
    probes::timewait_fentry::try_timer_handler(&ctx);
    0
}

/// fentry `inet_twsk_deschedule_put`: a timewait socket killed early.
#[fentry(function = "inet_twsk_deschedule_put")]
pub fn tw_kill_fentry(ctx: FEntryContext) -> u32 {
    probes::timewait_fentry::try_deschedule_put(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
