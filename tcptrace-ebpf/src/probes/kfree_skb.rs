//! `skb:kfree_skb`: connection attempts the kernel dropped, with its reason.
//! A SYN (or the handshake's last ACK) thrown away never changes a socket's
//! state, so no transition shows it; this tracepoint does, for every packet
//! of every protocol freed with a reason. The program keeps the few that
//! matter here and reports them as [`EventKind::Drop`]:
//!
//! ```c
//! /* include/trace/events/skb.h (6.8+: rx_sk) */
//! TRACE_EVENT(kfree_skb,
//!     TP_PROTO(struct sk_buff *skb, void *location,
//!              enum skb_drop_reason reason, struct sock *rx_sk),
//!     TP_STRUCT__entry(__field(void *, skbaddr) __field(void *, location)
//!                      __field(void *, rx_sk) __field(unsigned short, protocol)
//!                      __field(enum skb_drop_reason, reason)), ...);
//! /* net/core/skbuff.c */
//! void sk_skb_reason_drop(struct sock *sk, struct sk_buff *skb,
//!                         enum skb_drop_reason reason);
//! ```
//!
//! Two entry points share one body ([`try_drop`]): `kfree_skb_btf` (tp_btf,
//! preferred: the kernel hands it the arguments and builds no trace record
//! for each packet freed with a reason; `skb->protocol` is read at its BTF
//! offset, `OFFSETS.skb_protocol`) and `kfree_skb` (the classic tracepoint,
//! reading the record the kernel fills first; its offsets come from the
//! format file, `OFFSETS.tp_skb_*`), attached where the tp_btf one does not
//! load or the kernel's prototype has no `rx_sk` (before 6.8).
//!
//! Reason numbers come from the format file (they change between
//! kernels): userspace turns the names it traces into the 256-bit mask
//! [`DropConfig::reasons`]. In order, each
//! step cheaper than the next and leaving most packets early:
//! 1. the reason's bit in the mask (one load from the record, one from
//!    `.rodata`; tp_btf: the argument): every other drop of the system
//!    stops here;
//! 2. `skb->protocol` is IPv4 or IPv6 (the record's; tp_btf: one read);
//! 3. the IP header (`skb->head + skb->network_header`; IPv4 with its
//!    `ihl`, IPv6 only with `nexthdr` TCP: no extension headers) says TCP;
//! 4. the TCP header: ports and flags; kept when SYN is set, or when the
//!    socket that received it (`rx_sk`) is a listener or a request socket
//!    (the handshake's ACK at a full accept queue: `TCP_LISTEN_OVERFLOW`);
//! 5. a per-CPU rate limit ([`DropConfig::per_cpu_per_sec`] a second):
//!    drops over it are counted ([`Counter::DropsSuppressed`]) and their
//!    number carried in the CPU's next reported drop (`prev_ns`).
//!
//! The namespace is `rx_sk`'s, else the receiving device's
//! (`skb->dev->nd_net`). The user's filter applies (`filter::passes`, before
//! the rate limit: drops it leaves out never spend the budget): ports
//! (the local side is the segment's destination), families, `--netns`; a
//! drop has no owner, so `--pid`/`--comm` leave every drop out, and
//! `--state` keeps those received by a socket in one of its states (state
//! 0, no socket, never matches: bit 0 is no state).

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tcptrace_common::{
    Counter, ETH_P_IP, ETH_P_IPV6, EventKind, IPPROTO_TCP, event_flags, family, tcp_flags,
    tcp_state,
};

use crate::{
    filter,
    maps::{DROPS, Prog, ProgScratch, count, global, output, prog_scratch, read_global, scratch},
    probes::{Drop, settle},
    sock::{netns_of, read},
};

/// `skb:kfree_skb` (tp_btf, 6.8+ prototype): a connection attempt dropped
/// with a traced reason. Arguments: `skb`, `location`, `reason`, `rx_sk`.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_btf(ctx: BtfTracePointContext) -> i32 {
    let reason: u32 = ctx.arg(2);
    settle(try_drop(reason, || {
        let skb: u64 = ctx.arg(0);
        let protocol: u16 = read(skb, global!(OFFSETS.skb_protocol)).ok_or(Drop::Unattributed)?;
        Ok(Freed {
            skb,
            // Network order in the skb; the record's is host order.
            protocol: u16::from_be(protocol),
            rx_sk: ctx.arg(3),
        })
    }));
    0
}

/// `skb:kfree_skb` (classic tracepoint): a connection attempt dropped with
/// a traced reason.
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let reason = record_field(&ctx, global!(OFFSETS.tp_skb_reason), REASON_OFFSET);
    settle(reason.and_then(|reason| {
        try_drop(reason, || {
            let rx_off = global!(OFFSETS.tp_skb_rx_sk);
            Ok(Freed {
                protocol: record_field(&ctx, global!(OFFSETS.tp_skb_protocol), PROTOCOL_OFFSET)?,
                skb: record_field(&ctx, global!(OFFSETS.tp_skb_skbaddr), 8)?,
                rx_sk: if rx_off == 0 {
                    0
                } else {
                    record_field(&ctx, rx_off, RX_SK_OFFSET)?
                },
            })
        })
    }));
    0
}

/// The packet freed with a traced reason, as either entry point reads it.
struct Freed {
    /// The `struct sk_buff *`.
    skb: u64,
    /// `skb->protocol` in host order (`ETH_P_*`).
    protocol: u16,
    /// The socket that received it (`struct sock *`, 0: none or before 6.8).
    rx_sk: u64,
}

/// Where the 6.x record keeps `rx_sk`, `protocol` and `reason` (plain
/// loads from the record at these constant offsets; the verifier takes a
/// context offset only in the instruction itself). Other offsets from the
/// format file are read with a helper (the branch not taken is dropped:
/// the offsets are load-time constants).
const RX_SK_OFFSET: u32 = 24;
const PROTOCOL_OFFSET: u32 = 32;
const REASON_OFFSET: u32 = 36;

/// A `T` of the record at `off` (see [`REASON_OFFSET`]).
#[inline(always)]
fn record_field<T: Copy>(ctx: &TracePointContext, off: u32, usual: u32) -> Result<T, Drop> {
    if off == usual {
        Ok(unsafe {
            (ctx.as_ptr() as *const u8)
                .add(usual as usize)
                .cast::<T>()
                .read_volatile()
        })
    } else {
        unsafe { ctx.read_at(off as usize) }.map_err(|_| Drop::Unattributed)
    }
}

/// Whether kernel reason `reason` is one userspace asked for.
#[inline(always)]
fn traced(reason: u32) -> bool {
    let bits = match reason / 64 {
        0 => read_global(&DROPS.reasons[0]),
        1 => read_global(&DROPS.reasons[1]),
        2 => read_global(&DROPS.reasons[2]),
        3 => read_global(&DROPS.reasons[3]),
        _ => return false,
    };
    bits & (1u64 << (reason % 64)) != 0
}

/// The body both entry points share: `reason` first (most drops stop
/// there), then `freed()` reads the packet's pointer, protocol and socket.
#[inline(always)]
fn try_drop(reason: u32, freed: impl FnOnce() -> Result<Freed, Drop>) -> Result<(), Drop> {
    if !traced(reason) {
        return Err(Drop::NotTraced);
    }
    let Freed {
        skb,
        protocol,
        rx_sk,
    } = freed()?;
    let fam = match protocol {
        ETH_P_IP => family::INET,
        ETH_P_IPV6 => family::INET6,
        _ => return Err(Drop::NotTraced),
    };
    // Not ours until the headers say TCP: a failed read is not a loss.
    let head: u64 = read(skb, global!(OFFSETS.skb_head)).ok_or(Drop::Unattributed)?;
    let network: u16 = read(skb, global!(OFFSETS.skb_network_header)).ok_or(Drop::Unattributed)?;
    if network == 0xffff {
        // `~0U`: no network header set.
        return Err(Drop::NotTraced);
    }
    let ip = head + u64::from(network);

    let ProgScratch { event: ev, .. } = prog_scratch(Prog::Drop).ok_or(Drop::Scratch)?;
    crate::words::zero(ev);
    let tcp = if fam == family::INET {
        // version/ihl, ..., protocol at 9, saddr at 12, daddr at 16.
        let h: [u32; 5] = read(ip, 0).ok_or(Drop::Unattributed)?;
        let first = h[0].to_le_bytes();
        let ihl = u64::from(first[0] & 0x0f) * 4;
        let proto = h[2].to_le_bytes()[1];
        if first[0] >> 4 != 4 || ihl < 20 || u16::from(proto) != IPPROTO_TCP {
            return Err(Drop::NotTraced);
        }
        // The segment's destination is the local side.
        let s = ev.saddr.as_mut_ptr() as *mut u32;
        let d = ev.daddr.as_mut_ptr() as *mut u32;
        unsafe {
            s.write_volatile(h[4]);
            d.write_volatile(h[3]);
        }
        ip + ihl
    } else {
        // version/class/flow, payload length, nexthdr at 6, hop limit,
        // saddr at 8, daddr at 24.
        let h: [u32; 10] = read(ip, 0).ok_or(Drop::Unattributed)?;
        let nexthdr = h[1].to_le_bytes()[2];
        if h[0].to_le_bytes()[0] >> 4 != 6 || u16::from(nexthdr) != IPPROTO_TCP {
            return Err(Drop::NotTraced);
        }
        let s = ev.saddr.as_mut_ptr() as *mut u32;
        let d = ev.daddr.as_mut_ptr() as *mut u32;
        let mut i = 0;
        while i < 4 {
            unsafe {
                s.add(i).write_volatile(h[6 + i]);
                d.add(i).write_volatile(h[2 + i]);
            }
            i += 1;
        }
        ip + 40
    };
    // Ports (network order) and, at 13, the flags.
    let t: [u32; 4] = read(tcp, 0).ok_or(Drop::Unattributed)?;
    let ports = t[0].to_le_bytes();
    let flags = t[3].to_le_bytes()[1];

    let rx_state: u8 = if rx_sk == 0 {
        0
    } else {
        read(rx_sk, global!(OFFSETS.skc_state)).unwrap_or(0)
    };
    if flags & tcp_flags::SYN == 0
        && rx_state != tcp_state::LISTEN
        && rx_state != tcp_state::NEW_SYN_RECV
    {
        // Not a connection attempt: established traffic dropped.
        return Err(Drop::NotTraced);
    }
    count(Counter::DropsSeen);

    ev.kind = EventKind::Drop as u32;
    ev.sk = rx_sk;
    ev.family = fam;
    ev.sport = u16::from_be_bytes([ports[2], ports[3]]);
    ev.dport = u16::from_be_bytes([ports[0], ports[1]]);
    ev.old = rx_state;
    ev.new = flags;
    ev.tid = reason;
    let net: u64 = if rx_sk != 0 {
        read(rx_sk, global!(OFFSETS.skc_net)).unwrap_or(0)
    } else {
        0
    };
    let net = if net != 0 {
        net
    } else {
        read::<u64>(skb, global!(OFFSETS.skb_dev))
            .filter(|dev| *dev != 0)
            .and_then(|dev| read(dev, global!(OFFSETS.dev_nd_net)))
            .unwrap_or(0)
    };
    if let Some(ns) = netns_of(net) {
        ev.netns = ns;
        ev.flags |= event_flags::NETNS_KNOWN;
    }
    // The user's filter before the rate limit: drops it leaves out (another
    // namespace being port-scanned) never spend the budget of those kept.
    if !filter::passes(ev) {
        return Err(Drop::Filtered);
    }

    // The rate limit: a window of one second per CPU.
    let now = unsafe { bpf_ktime_get_ns() };
    let s = scratch().ok_or(Drop::Scratch)?;
    let rate = unsafe { &mut (*s).drops };
    if now.wrapping_sub(rate.window_start_ns) >= 1_000_000_000 {
        rate.window_start_ns = now;
        rate.reported = 0;
    }
    if rate.reported >= global!(DROPS.per_cpu_per_sec) {
        rate.suppressed += 1;
        count(Counter::DropsSuppressed);
        return Ok(());
    }
    rate.reported += 1;
    ev.prev_ns = rate.suppressed;
    rate.suppressed = 0;
    ev.ts_ns = now;
    output(ev);
    Ok(())
}
