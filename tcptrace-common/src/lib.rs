//! Types shared by the eBPF program (`tcptrace-ebpf`) and userspace (`tcptrace`).
//!
//! Everything here crosses the kernel/userspace boundary, so it is `#![no_std]`,
//! `#[repr(C)]` and versioned by [`ABI_VERSION`]. The `user` feature adds the
//! `aya::Pod` impls userspace needs to pass globals and read maps.
#![no_std]

pub mod config;
pub mod event;
pub mod handled;

pub use config::{Counter, DropConfig, Features, Filter, KernelOffsets, OwnerEntry, Tuning};
pub use event::{EventKind, RawEvent, TwEndReason, event_flags};

/// Version of the event layout and of the globals handed to the eBPF program.
/// Bump it whenever a `#[repr(C)]` type in this crate changes shape.
pub const ABI_VERSION: u32 = 4;

/// TCP states, numbered as in the kernel (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    /// One past the largest state number; bit `1 << state` fits in a `u32` mask.
    pub const MAX: u8 = 13;
}

/// Address families as the kernel numbers them.
pub mod family {
    pub const INET: u8 = 2;
    pub const INET6: u8 = 10;
}

/// `ETH_P_IP` and `ETH_P_IPV6`: `skb->protocol` (the `skb:kfree_skb`
/// record gives it in host order).
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;

/// Bits of the TCP header's flags byte (a `Drop` event's `new`).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;

/// Length of a task's command name in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
