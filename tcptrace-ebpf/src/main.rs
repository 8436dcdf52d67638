//! tcptrace's eBPF program. Each entry point lives in `probes/`, in the file
//! of its kernel hook (userspace loads and attaches them by these names):
//!
//! - `probes/inet_sock_set_state.rs`: `inet_sock_set_state_btf` (tp_btf,
//!   preferred), `inet_sock_set_state_nested` (its twin, for transitions that
//!   interrupt it), `inet_sock_set_state_tp` (classic tracepoint, fallback);
//! - `probes/timer_start.rs`: `timer_start_btf`, `timer_start`;
//! - `probes/timer_cancel.rs`: `timer_cancel_btf`, `timer_cancel`;
//! - `probes/timer_expire_entry.rs`: `timer_expire_entry_btf`,
//!   `timer_expire_entry` (the three timer hooks share the timewait state in
//!   `probes/timewait.rs`);
//! - `probes/sys_exit_accept.rs`: `sys_exit_accept4`, `sys_exit_accept`;
//! - `probes/kfree_skb.rs`: `kfree_skb` (classic tracepoint): connection
//!   attempts the kernel dropped, with its reason (unless
//!   `--no-drop-reasons`);
//! - fentry, where the kernel allows it: `tw_begin_fentry`
//!   (`probes/inet_twsk_hashdance_schedule.rs`), `tw_rearm_fentry`
//!   (`probes/inet_twsk_schedule.rs`), `tw_expire_fentry`
//!   (`probes/tw_timer_handler.rs`), `tw_kill_fentry`
//!   (`probes/inet_twsk_deschedule_put.rs`);
//! - `stacks.rs` (no entry point): the user stack captured with an owner
//!   in process context (`--stacks`), by the transition and accept hooks;
//! - benchmarks only: `empty_*` (`probes/empty.rs`), programs that return at
//!   once on the same hooks, to measure what merely attaching costs.
#![no_std]
#![no_main]

mod filter;
mod maps;
mod probes;
mod sock;
mod stacks;
mod words;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
