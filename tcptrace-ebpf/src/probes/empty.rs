//! Programs that return at once, attached (by `tcptrace --bench-empty-programs`)
//! to the very hooks the real ones use: what merely attaching costs, the
//! limit `cargo xtask bench` reports every tracer against. Never attached
//! beside the real programs.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

/// `sock:inet_sock_set_state` (tp_btf), as `inet_sock_set_state_btf`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn empty_set_state(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// `sock:inet_sock_set_state` (tp_btf), as the twin `inet_sock_set_state_nested`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn empty_set_state_nested(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// `timer:timer_start` (tp_btf).
#[btf_tracepoint(function = "timer_start")]
pub fn empty_timer_start(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// `timer:timer_cancel` (tp_btf).
#[btf_tracepoint(function = "timer_cancel")]
pub fn empty_timer_cancel(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// `timer:timer_expire_entry` (tp_btf).
#[btf_tracepoint(function = "timer_expire_entry")]
pub fn empty_timer_expire_entry(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// `syscalls:sys_exit_accept4`.
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn empty_sys_exit_accept4(_ctx: TracePointContext) -> u32 {
    0
}

/// `syscalls:sys_exit_accept`.
#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn empty_sys_exit_accept(_ctx: TracePointContext) -> u32 {
    0
}

/// `skb:kfree_skb` (classic), as `kfree_skb` (with drop reasons on, where
/// the tp_btf twin does not load).
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn empty_kfree_skb(_ctx: TracePointContext) -> u32 {
    0
}

/// `skb:kfree_skb` (tp_btf), as `kfree_skb_btf` (with drop reasons on,
/// where it loads).
#[btf_tracepoint(function = "kfree_skb")]
pub fn empty_kfree_skb_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}
