//! Bytes from the ring buffer -> [`Event`] or a typed [`DecodeError`]. Pure.
//!
//! The wire format is [`tcptrace_common::RawEvent`]: fixed 120-byte records,
//! native endian, documented there. A record names the process that reused
//! a timewait socket by pid only; [`ReuserNames`] adds its name.
//!
//! A [`EventKind::Drop`] record is no socket's transition: [`syn_drop`]
//! turns it into a [`SynDrop`], naming the kernel's drop reason with
//! [`KernelDropReasons`] (the running kernel's table, parsed from the
//! `skb:kfree_skb` format file: reason numbers change between kernels).

use std::{
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use rustc_hash::FxHashMap;
use tcptrace_common::{
    RawEvent, TwEndReason as WireReason, config::DROP_REASON_WORDS, event_flags, family, tcp_flags,
};

use crate::{
    listeners::{DropReason, SynDrop},
    model::{Comm, Event, EventKind, Family, Owner, Reuser, TcpState, TwEndReason},
};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {got} bytes, expected {expected}")]
    Length { got: usize, expected: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("event kind {0:?} is never written by the kernel")]
    UserspaceKind(EventKind),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown TCP state {0}")]
    State(u8),
    #[error("unknown timewait end reason {0}")]
    Reason(u8),
    /// A record of kind `Drop` given to [`from_raw`] (it is no socket's
    /// event: [`syn_drop`] reads it), or another kind to [`syn_drop`].
    #[error("event kind {0:?} read as the wrong record (drops are not transitions)")]
    DropKind(EventKind),
    /// A drop's kernel reason does not fit the 16 bits kept.
    #[error("kernel drop reason {0} out of range")]
    DropReason(u32),
}

/// Reinterprets ring-buffer bytes as a [`RawEvent`] (length-checked, unaligned-safe).
pub fn raw(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    if bytes.len() != RawEvent::SIZE {
        return Err(DecodeError::Length {
            got: bytes.len(),
            expected: RawEvent::SIZE,
        });
    }
    // SAFETY: RawEvent is repr(C) plain data, valid for every bit pattern; the
    // length is checked above and read_unaligned tolerates any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) })
}

/// Decodes a record in place when its bytes are aligned as the ring
/// keeps them (8 bytes); else through an aligned copy ([`raw`]).
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    match in_place(bytes) {
        Some(r) => from_raw(r),
        None => from_raw(&raw(bytes)?),
    }
}

/// The record in `bytes` itself, when they are exactly one record and
/// aligned for it.
fn in_place(bytes: &[u8]) -> Option<&RawEvent> {
    let aligned = bytes.as_ptr().align_offset(mem::align_of::<RawEvent>()) == 0;
    if bytes.len() != RawEvent::SIZE || !aligned {
        return None;
    }
    // SAFETY: RawEvent is repr(C) plain data, valid for every bit pattern;
    // the bytes are exactly its size and aligned for it, and the reference
    // borrows them.
    Some(unsafe { &*bytes.as_ptr().cast::<RawEvent>() })
}

fn state(v: u8) -> Result<TcpState, DecodeError> {
    TcpState::from_u8(v).ok_or(DecodeError::State(v))
}

pub fn from_raw(r: &RawEvent) -> Result<Event, DecodeError> {
    let kind = EventKind::from_u32(r.kind).ok_or(DecodeError::Kind(r.kind))?;
    if matches!(kind, EventKind::Lost | EventKind::TwSubstate) {
        return Err(DecodeError::UserspaceKind(kind));
    }
    if kind == EventKind::Drop {
        return Err(DecodeError::DropKind(kind));
    }
    let (fam, saddr, daddr) = addresses(r)?;
    let old = match r.old {
        0 => None,
        v => Some(state(v)?),
    };
    let new = state(r.new)?;
    let reason = reason(kind, new, r)?;
    let owner = (r.flags & event_flags::OWNER_KNOWN != 0).then_some(Owner {
        pid: r.tgid,
        tid: r.tid,
        comm: Comm(r.comm),
        cgroup: r.cgroup,
        from_listener: r.flags & event_flags::OWNER_FROM_LISTENER != 0,
    });
    Ok(Event {
        ts_ns: r.ts_ns,
        kind,
        sk: r.sk,
        link: (r.flags & event_flags::LINKED != 0).then_some(r.link),
        owner,
        netns: (r.flags & event_flags::NETNS_KNOWN != 0).then_some(r.netns),
        family: fam,
        saddr,
        sport: r.sport,
        daddr,
        dport: r.dport,
        old,
        new,
        prev_ns: (r.flags & event_flags::PREV_KNOWN != 0).then_some(r.prev_ns),
        reason,
        stack: (r.flags & event_flags::STACK_KNOWN != 0).then_some(u32::from(r.stack_id)),
    })
}

/// Decodes a [`EventKind::Drop`] record (fields: see
/// [`tcptrace_common::RawEvent`]) with the running kernel's reason table.
/// A reason the table does not know is [`DropReason::Other`].
pub fn syn_drop(r: &RawEvent, reasons: &KernelDropReasons) -> Result<SynDrop, DecodeError> {
    let kind = EventKind::from_u32(r.kind).ok_or(DecodeError::Kind(r.kind))?;
    if kind != EventKind::Drop {
        return Err(DecodeError::DropKind(kind));
    }
    let (fam, local, remote) = addresses(r)?;
    let rx_state = match r.old {
        0 => None,
        v => Some(state(v)?),
    };
    let kernel_reason = u16::try_from(r.tid).map_err(|_| DecodeError::DropReason(r.tid))?;
    Ok(SynDrop {
        ts_ns: r.ts_ns,
        netns: (r.flags & event_flags::NETNS_KNOWN != 0).then_some(r.netns),
        family: fam,
        local,
        local_port: r.sport,
        remote,
        remote_port: r.dport,
        reason: reasons.reason(kernel_reason),
        kernel_reason,
        syn: r.new & tcp_flags::SYN != 0,
        ack: r.new & tcp_flags::ACK != 0,
        rx_state,
        suppressed: r.prev_ns,
    })
}

/// The inverse of [`syn_drop`] (for tests and synthetic sources): the
/// segment's flags are SYN and ACK only, `sk` is 0.
pub fn drop_to_raw(d: &SynDrop) -> RawEvent {
    let mut r = RawEvent::zeroed();
    r.kind = EventKind::Drop as u32;
    r.ts_ns = d.ts_ns;
    if let Some(ns) = d.netns {
        r.netns = ns;
        r.flags |= event_flags::NETNS_KNOWN;
    }
    r.family = match d.family {
        Family::V4 => family::INET,
        Family::V6 => family::INET6,
    };
    put_addr(&mut r.saddr, d.local);
    put_addr(&mut r.daddr, d.remote);
    r.sport = d.local_port;
    r.dport = d.remote_port;
    r.tid = u32::from(d.kernel_reason);
    r.old = d.rx_state.map_or(0, |s| s as u8);
    r.new = if d.syn { tcp_flags::SYN } else { 0 } | if d.ack { tcp_flags::ACK } else { 0 };
    r.prev_ns = d.suppressed;
    r
}

fn put_addr(dst: &mut [u8; 16], ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => dst[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => *dst = a.octets(),
    }
}

/// The running kernel's `enum skb_drop_reason`: number -> name, as the
/// `skb:kfree_skb` tracepoint's format file prints them
/// (`__print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, ...)`).
/// Numbers change between kernels (a reason added in the middle shifts the
/// rest), so they are always read from the running kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelDropReasons {
    /// Sorted by number.
    names: Vec<(u16, String)>,
}

impl KernelDropReasons {
    /// Most reasons kept (a hostile or broken file cannot make it grow
    /// without bound).
    pub const MAX: usize = 4096;

    /// Parses a format file's text; empty when it has no reason table.
    pub fn parse_format(text: &str) -> Self {
        let mut names = Vec::new();
        let Some(start) = text.find("__print_symbolic(REC->reason") else {
            return Self { names };
        };
        let mut rest = &text[start..];
        // `{ 3, "NO_SOCKET" }` pairs, up to the closing parenthesis.
        while let Some(open) = rest.find(['{', ')']) {
            if rest.as_bytes()[open] == b')' {
                break;
            }
            rest = &rest[open + 1..];
            let Some(close) = rest.find('}') else { break };
            let pair = &rest[..close];
            rest = &rest[close + 1..];
            let Some((num, name)) = pair.split_once(',') else {
                continue;
            };
            let (Ok(num), Some(name)) = (
                num.trim().parse::<u16>(),
                name.trim()
                    .strip_prefix('"')
                    .and_then(|n| n.strip_suffix('"')),
            ) else {
                continue;
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            names.push((num, name.to_string()));
            if names.len() >= Self::MAX {
                break;
            }
        }
        names.sort_by_key(|(n, _)| *n);
        names.dedup_by_key(|(n, _)| *n);
        Self { names }
    }

    /// A table from (number, name) pairs (tests, synthetic sources).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (u16, &'a str)>) -> Self {
        let mut names: Vec<(u16, String)> =
            pairs.into_iter().map(|(n, s)| (n, s.to_string())).collect();
        names.sort_by_key(|(n, _)| *n);
        names.dedup_by_key(|(n, _)| *n);
        Self { names }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// The kernel's name of reason `id` (without `SKB_DROP_REASON_`).
    pub fn name(&self, id: u16) -> Option<&str> {
        self.names
            .binary_search_by_key(&id, |(n, _)| *n)
            .ok()
            .map(|i| self.names[i].1.as_str())
    }

    /// The number of the kernel's reason `name` (with or without the
    /// `SKB_DROP_REASON_` prefix).
    pub fn id(&self, name: &str) -> Option<u16> {
        let name = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(name);
        self.names
            .iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| *id)
    }

    /// tcptrace's reason for kernel reason `id` ([`DropReason::Other`] when
    /// unknown).
    pub fn reason(&self, id: u16) -> DropReason {
        self.name(id)
            .map_or(DropReason::Other, DropReason::from_kernel_name)
    }

    /// The eBPF program's reason mask ([`tcptrace_common::DropConfig::reasons`]):
    /// the reasons [`DropReason::traced_kernel_name`] keeps, numbered below 256.
    pub fn mask(&self) -> [u64; DROP_REASON_WORDS] {
        let mut mask = [0u64; DROP_REASON_WORDS];
        for (id, name) in &self.names {
            let word = usize::from(*id / 64);
            if word < DROP_REASON_WORDS && DropReason::traced_kernel_name(name) {
                mask[word] |= 1 << (id % 64);
            }
        }
        mask
    }

    /// The names of the traced reasons (in number order), for logs.
    pub fn traced_names(&self) -> Vec<&str> {
        self.names
            .iter()
            .filter(|(id, name)| *id < 256 && DropReason::traced_kernel_name(name))
            .map(|(_, n)| n.as_str())
            .collect()
    }
}

/// Family and the two addresses of a record (`saddr`, `daddr`).
fn addresses(r: &RawEvent) -> Result<(Family, IpAddr, IpAddr), DecodeError> {
    Ok(match r.family {
        family::INET => {
            let s: [u8; 4] = r.saddr[..4].try_into().expect("4 bytes");
            let d: [u8; 4] = r.daddr[..4].try_into().expect("4 bytes");
            (
                Family::V4,
                IpAddr::V4(Ipv4Addr::from(s)),
                IpAddr::V4(Ipv4Addr::from(d)),
            )
        }
        family::INET6 => (
            Family::V6,
            IpAddr::V6(Ipv6Addr::from(r.saddr)),
            IpAddr::V6(Ipv6Addr::from(r.daddr)),
        ),
        other => return Err(DecodeError::Family(other)),
    })
}

/// The reason byte of a record of `kind` entering `new`: required in a
/// `TwEnd` (expired, killed, reused with its process, purged), optional in a
/// transition to CLOSE (overflow), ignored in other kinds.
fn reason(
    kind: EventKind,
    new: TcpState,
    r: &RawEvent,
) -> Result<Option<TwEndReason>, DecodeError> {
    let bad = DecodeError::Reason(r.reason);
    let wire = match kind {
        EventKind::TwEnd | EventKind::Transition => WireReason::from_u8(r.reason).ok_or(bad)?,
        _ => return Ok(None),
    };
    Ok(match (kind, wire) {
        (EventKind::TwEnd, WireReason::Expired) => Some(TwEndReason::Expired),
        (EventKind::TwEnd, WireReason::Killed) => Some(TwEndReason::Killed),
        (EventKind::TwEnd, WireReason::Reused) => Some(TwEndReason::Reused {
            by: (r.reused_by != 0).then_some(Reuser {
                pid: r.reused_by,
                comm: None,
            }),
        }),
        (EventKind::TwEnd, WireReason::Purged) => Some(TwEndReason::Purged),
        (EventKind::Transition, WireReason::None) => None,
        (EventKind::Transition, WireReason::Overflow) if new == TcpState::Close => {
            Some(TwEndReason::Overflow)
        }
        _ => return Err(DecodeError::Reason(r.reason)),
    })
}

/// The wire byte of a reason, and the reuser's pid (0 if none).
pub fn reason_to_wire(reason: Option<TwEndReason>) -> (u8, u32) {
    let wire = match reason {
        None => WireReason::None,
        Some(TwEndReason::Expired) => WireReason::Expired,
        Some(TwEndReason::Killed) => WireReason::Killed,
        Some(TwEndReason::Reused { by }) => {
            return (WireReason::Reused as u8, by.map_or(0, |b| b.pid));
        }
        Some(TwEndReason::Purged) => WireReason::Purged,
        Some(TwEndReason::Overflow) => WireReason::Overflow,
    };
    (wire as u8, 0)
}

/// The inverse of [`from_raw`], for tests and synthetic sources.
pub fn to_raw(e: &Event) -> RawEvent {
    let mut r = RawEvent::zeroed();
    r.ts_ns = e.ts_ns;
    r.kind = e.kind as u32;
    r.sk = e.sk;
    if let Some(link) = e.link {
        r.link = link;
        r.flags |= event_flags::LINKED;
    }
    if let Some(o) = e.owner {
        r.tgid = o.pid;
        r.tid = o.tid;
        r.comm = o.comm.0;
        r.cgroup = o.cgroup;
        r.flags |= event_flags::OWNER_KNOWN;
        if o.from_listener {
            r.flags |= event_flags::OWNER_FROM_LISTENER;
        }
    }
    if let Some(ns) = e.netns {
        r.netns = ns;
        r.flags |= event_flags::NETNS_KNOWN;
    }
    let put = |dst: &mut [u8; 16], ip: IpAddr| match ip {
        IpAddr::V4(a) => dst[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => *dst = a.octets(),
    };
    r.family = match e.family {
        Family::V4 => family::INET,
        Family::V6 => family::INET6,
    };
    put(&mut r.saddr, e.saddr);
    put(&mut r.daddr, e.daddr);
    r.sport = e.sport;
    r.dport = e.dport;
    r.old = e.old.map_or(0, |s| s as u8);
    r.new = e.new as u8;
    if let Some(p) = e.prev_ns {
        r.prev_ns = p;
        r.flags |= event_flags::PREV_KNOWN;
    }
    (r.reason, r.reused_by) = reason_to_wire(e.reason);
    if let Some(id) = e.stack {
        // Kernel ids fit 16 bits (the map has at most 32768 entries).
        r.stack_id = id as u16;
        r.flags |= event_flags::STACK_KNOWN;
    }
    r
}

/// Names the process in a reused timewait socket's
/// [`TwEndReason::Reused`], which a kernel record carries as a pid only:
/// the reusing socket's CLOSE -> SYN_SENT came first (connect() enters
/// SYN_SENT, then takes the 4-tuple over), and its owner is the task that
/// called connect(). Keeps the owners of the last connects (two generations
/// of at most [`ReuserNames::GENERATION`] sockets: bounded, O(1) per event).
#[derive(Debug, Default)]
pub struct ReuserNames {
    recent: FxHashMap<u64, (u32, Comm)>,
    older: FxHashMap<u64, (u32, Comm)>,
}

impl ReuserNames {
    pub const GENERATION: usize = 4096;

    /// Call with every event, in order: remembers connects and names the
    /// reuser of a reused timewait socket. Returns the pid of a reuser left
    /// unnamed (its connect was filtered out, or came before the tracer),
    /// for the caller to look up elsewhere (`/proc`) and [`name`](Self::name).
    pub fn observe(&mut self, e: &mut Event) -> Option<u32> {
        match (e.kind, e.old, e.new, &mut e.reason) {
            (EventKind::Transition, Some(TcpState::Close), TcpState::SynSent, _) => {
                if let Some(o) = e.owner {
                    if self.recent.len() >= Self::GENERATION {
                        // The older generation's map is emptied and
                        // reused (its room kept: no regrowing).
                        mem::swap(&mut self.older, &mut self.recent);
                        self.recent.clear();
                    }
                    self.recent.insert(e.sk, (o.pid, o.comm));
                }
                None
            }
            (
                EventKind::TwEnd,
                _,
                _,
                Some(TwEndReason::Reused {
                    by: Some(Reuser { pid, comm }),
                }),
            ) if comm.is_none() => {
                let connect = e
                    .link
                    .and_then(|sk| self.recent.get(&sk).or_else(|| self.older.get(&sk)));
                match connect {
                    Some(&(owner, name)) if owner == *pid => {
                        *comm = Some(name);
                        None
                    }
                    _ => Some(*pid),
                }
            }
            _ => None,
        }
    }

    /// Names the reuser of `e` (a reused `TwEnd` whose reuser has no name).
    pub fn name(e: &mut Event, comm: Comm) {
        if let Some(TwEndReason::Reused {
            by: Some(Reuser {
                comm: name @ None, ..
            }),
        }) = &mut e.reason
        {
            *name = Some(comm);
        }
    }
}

/// The bytes of a raw event, as the kernel writes them.
pub fn raw_bytes(r: &RawEvent) -> [u8; RawEvent::SIZE] {
    // SAFETY: RawEvent is repr(C) plain data of exactly SIZE bytes with
    // explicit padding fields, so every byte is initialised.
    unsafe { std::mem::transmute_copy(r) }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::{option, prelude::*, sample::select};
    use tcptrace_common::{RawEvent, TwEndReason as Wire, event_flags, family, tcp_state};

    use super::*;
    use crate::model::{Comm, Event, EventKind, Family, Owner, Reuser, TcpState, TwEndReason};

    /// A hand-built (not `to_raw`-built) IPv4 transition with every optional part known.
    fn raw_v4_transition() -> RawEvent {
        let mut r = RawEvent::zeroed();
        r.ts_ns = 1_000_000_123;
        r.sk = 0xffff_8880_1234_5600;
        r.prev_ns = 42_000;
        r.cgroup = 7777;
        r.link = 0xdead_beef;
        r.kind = EventKind::Transition as u32;
        r.tgid = 4321;
        r.tid = 4322;
        r.netns = 4_026_531_840;
        r.sport = 8080;
        r.dport = 51_000;
        r.old = tcp_state::ESTABLISHED;
        r.new = tcp_state::CLOSE_WAIT;
        r.family = family::INET;
        r.flags = event_flags::OWNER_KNOWN | event_flags::PREV_KNOWN | event_flags::NETNS_KNOWN;
        r.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[192, 168, 1, 20]);
        r.comm = Comm::from_name("nginx").0;
        r
    }

    fn decode_raw(r: &RawEvent) -> Result<Event, DecodeError> {
        decode(&raw_bytes(r))
    }

    #[test]
    fn decodes_the_same_in_place_and_from_unaligned_bytes() {
        let bytes = raw_bytes(&raw_v4_transition());
        // 8-aligned storage, then the record at offsets 0 (in place) and 4.
        #[repr(C, align(8))]
        struct Aligned([u8; RawEvent::SIZE + 8]);
        let mut aligned_store = Aligned([0; RawEvent::SIZE + 8]);
        let store = &mut aligned_store.0;
        store[..RawEvent::SIZE].copy_from_slice(&bytes);
        assert!(in_place(&store[..RawEvent::SIZE]).is_some());
        let aligned = decode(&store[..RawEvent::SIZE]);
        store[4..4 + RawEvent::SIZE].copy_from_slice(&bytes);
        assert!(in_place(&store[4..4 + RawEvent::SIZE]).is_none());
        let unaligned = decode(&store[4..4 + RawEvent::SIZE]);
        assert_eq!(aligned, unaligned);
        assert_eq!(aligned, decode_raw(&raw_v4_transition()));
    }

    #[test]
    fn decodes_ipv4_transition_fields() {
        let e = decode_raw(&raw_v4_transition()).expect("valid record");
        assert_eq!(e.ts_ns, 1_000_000_123);
        assert_eq!(e.kind, EventKind::Transition);
        assert_eq!(e.sk, 0xffff_8880_1234_5600);
        assert_eq!(e.family, Family::V4);
        assert_eq!(e.saddr, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(e.daddr, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20)));
        assert_eq!(e.sport, 8080);
        assert_eq!(e.dport, 51_000);
        assert_eq!(e.old, Some(TcpState::Established));
        assert_eq!(e.new, TcpState::CloseWait);
        assert_eq!(e.prev_ns, Some(42_000));
        assert_eq!(e.netns, Some(4_026_531_840));
        assert_eq!(
            e.link, None,
            "LINKED flag not set, so the link field is ignored"
        );
        assert_eq!(e.reason, None);
        assert_eq!(
            e.owner,
            Some(Owner {
                pid: 4321,
                tid: 4322,
                comm: Comm::from_name("nginx"),
                cgroup: 7777,
                from_listener: false,
            })
        );
    }

    #[test]
    fn decodes_ipv4_from_first_four_address_bytes_only() {
        let mut r = raw_v4_transition();
        r.saddr[4..].fill(0xaa);
        r.daddr[4..].fill(0xbb);
        let e = decode_raw(&r).expect("valid record");
        assert_eq!(e.saddr, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(e.daddr, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20)));
    }

    #[test]
    fn decodes_ipv6_addresses() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "fe80::abcd:ef01:2345:6789".parse().unwrap();
        let mut r = raw_v4_transition();
        r.family = family::INET6;
        r.saddr = src.octets();
        r.daddr = dst.octets();
        let e = decode_raw(&r).expect("valid record");
        assert_eq!(e.family, Family::V6);
        assert_eq!(e.saddr, IpAddr::V6(src));
        assert_eq!(e.daddr, IpAddr::V6(dst));
        assert_eq!(e.sport, 8080);
        assert_eq!(e.dport, 51_000);
    }

    #[test]
    fn owner_is_none_without_owner_known_flag() {
        let mut r = raw_v4_transition();
        r.flags &= !event_flags::OWNER_KNOWN;
        // Even with the listener bit set, no owner flag means no owner.
        r.flags |= event_flags::OWNER_FROM_LISTENER;
        let e = decode_raw(&r).expect("valid record");
        assert_eq!(e.owner, None);
    }

    #[test]
    fn owner_from_listener_flag_is_carried() {
        let mut r = raw_v4_transition();
        r.flags |= event_flags::OWNER_FROM_LISTENER;
        let owner = decode_raw(&r).expect("valid record").owner.expect("owner");
        assert!(owner.from_listener);
    }

    #[test]
    fn prev_and_netns_are_none_without_their_flags() {
        let mut r = raw_v4_transition();
        r.flags &= !(event_flags::PREV_KNOWN | event_flags::NETNS_KNOWN);
        let e = decode_raw(&r).expect("valid record");
        assert_eq!(e.prev_ns, None);
        assert_eq!(e.netns, None);
    }

    #[test]
    fn tw_begin_link_is_decoded_when_linked_flag_set() {
        let mut r = raw_v4_transition();
        r.kind = EventKind::TwBegin as u32;
        r.old = tcp_state::FIN_WAIT2;
        r.new = tcp_state::TIME_WAIT;
        r.flags |= event_flags::LINKED;
        let e = decode_raw(&r).expect("valid record");
        assert_eq!(e.kind, EventKind::TwBegin);
        assert_eq!(e.link, Some(0xdead_beef));
        assert_eq!(e.old, Some(TcpState::FinWait2));
        assert_eq!(e.new, TcpState::TimeWait);
    }

    #[test]
    fn old_state_zero_decodes_as_unknown() {
        let mut r = raw_v4_transition();
        r.old = 0;
        assert_eq!(decode_raw(&r).expect("valid record").old, None);
    }

    fn raw_tw_end(reason: Wire) -> RawEvent {
        let mut r = raw_v4_transition();
        r.kind = EventKind::TwEnd as u32;
        r.old = tcp_state::TIME_WAIT;
        r.new = tcp_state::CLOSE;
        r.reason = reason as u8;
        r
    }

    #[test]
    fn tw_end_decodes_expired_killed_and_purged_reasons() {
        for (wire, model) in [
            (Wire::Expired, TwEndReason::Expired),
            (Wire::Killed, TwEndReason::Killed),
            (Wire::Purged, TwEndReason::Purged),
        ] {
            let r = raw_tw_end(wire);
            assert_eq!(decode_raw(&r).unwrap().reason, Some(model), "{wire:?}");
            assert_eq!(to_raw(&decode_raw(&r).unwrap()).reason, wire as u8);
        }
    }

    #[test]
    fn tw_end_reused_carries_the_reusing_pid_and_socket() {
        let mut r = raw_tw_end(Wire::Reused);
        r.reused_by = 9_999;
        r.link = 0xffff_8880_0000_7000;
        r.flags |= event_flags::LINKED;
        let e = decode_raw(&r).unwrap();
        assert_eq!(
            e.reason,
            Some(TwEndReason::Reused {
                by: Some(Reuser {
                    pid: 9_999,
                    comm: None
                })
            })
        );
        assert_eq!(e.link, Some(0xffff_8880_0000_7000));
        let back = to_raw(&e);
        assert_eq!(back.reused_by, 9_999);
        assert_eq!(back.reason, Wire::Reused as u8);

        r.reused_by = 0;
        assert_eq!(decode_raw(&r).unwrap().reason, Some(TwEndReason::REUSED));
    }

    #[test]
    fn stack_id_is_read_with_its_flag_only_at_byte_114() {
        let mut r = raw_tw_end(Wire::Expired);
        r.stack_id = 0x1234;
        assert_eq!(decode_raw(&r).unwrap().stack, None);
        r.flags |= event_flags::STACK_KNOWN;
        let e = decode_raw(&r).unwrap();
        assert_eq!(e.stack, Some(0x1234));
        let bytes = raw_bytes(&to_raw(&e));
        assert_eq!(&bytes[114..116], &0x1234u16.to_le_bytes());
        assert_ne!(bytes[60 + 3] & event_flags::STACK_KNOWN, 0);
        assert_eq!(to_raw(&Event { stack: None, ..e }).stack_id, 0);
    }

    #[test]
    fn reused_by_is_ignored_unless_reused() {
        let mut r = raw_tw_end(Wire::Killed);
        r.reused_by = 77;
        assert_eq!(decode_raw(&r).unwrap().reason, Some(TwEndReason::Killed));
        assert_eq!(to_raw(&decode_raw(&r).unwrap()).reused_by, 0);
    }

    #[test]
    fn overflow_marks_a_transition_to_close_only() {
        let mut r = raw_v4_transition();
        r.old = tcp_state::FIN_WAIT2;
        r.new = tcp_state::CLOSE;
        r.reason = Wire::Overflow as u8;
        let e = decode_raw(&r).unwrap();
        assert_eq!(e.kind, EventKind::Transition);
        assert_eq!(e.reason, Some(TwEndReason::Overflow));
        assert_eq!(to_raw(&e).reason, Wire::Overflow as u8);
        // Not to CLOSE, not a transition's reason, not a timewait end's.
        r.new = tcp_state::TIME_WAIT;
        assert_eq!(decode_raw(&r), Err(DecodeError::Reason(5)));
        r.new = tcp_state::CLOSE;
        r.reason = Wire::Killed as u8;
        assert_eq!(decode_raw(&r), Err(DecodeError::Reason(2)));
        assert_eq!(
            decode_raw(&raw_tw_end(Wire::Overflow)),
            Err(DecodeError::Reason(5))
        );
    }

    #[test]
    fn other_kinds_ignore_the_reason_byte() {
        let mut r = raw_v4_transition();
        r.kind = EventKind::TwBegin as u32;
        r.reason = 200;
        assert_eq!(decode_raw(&r).unwrap().reason, None);
    }

    /// `reused_by` sits in the last 4 bytes, after the reason and 3 padding bytes.
    #[test]
    fn reused_by_is_at_wire_offset_116() {
        let mut r = raw_tw_end(Wire::Reused);
        r.reused_by = 0x0102_0304;
        let b = raw_bytes(&r);
        assert_eq!(b[112], Wire::Reused as u8);
        assert_eq!(&b[113..116], &[0, 0, 0]);
        assert_eq!(b[116..120], 0x0102_0304u32.to_ne_bytes());
    }

    fn connect(sk: u64, pid: u32, name: &str) -> Event {
        let mut r = raw_v4_transition();
        r.sk = sk;
        r.old = tcp_state::CLOSE;
        r.new = tcp_state::SYN_SENT;
        r.tgid = pid;
        r.comm = Comm::from_name(name).0;
        decode_raw(&r).unwrap()
    }

    fn reused(link: u64, pid: u32) -> Event {
        let mut r = raw_tw_end(Wire::Reused);
        r.link = link;
        r.flags |= event_flags::LINKED;
        r.reused_by = pid;
        decode_raw(&r).unwrap()
    }

    fn reuser_of(e: &Event) -> Option<Reuser> {
        match e.reason {
            Some(TwEndReason::Reused { by }) => by,
            _ => None,
        }
    }

    #[test]
    fn reuser_names_come_from_the_reusing_connect() {
        let mut names = ReuserNames::default();
        let mut c = connect(0x100, 42, "client");
        assert_eq!(names.observe(&mut c), None);
        let mut e = reused(0x100, 42);
        assert_eq!(names.observe(&mut e), None);
        assert_eq!(
            reuser_of(&e),
            Some(Reuser {
                pid: 42,
                comm: Some(Comm::from_name("client"))
            })
        );
        // Another process's connect on that socket address: not named from it.
        let mut e = reused(0x100, 43);
        assert_eq!(names.observe(&mut e), Some(43));
        ReuserNames::name(&mut e, Comm::from_name("from-proc"));
        assert_eq!(
            reuser_of(&e).unwrap().comm,
            Some(Comm::from_name("from-proc"))
        );
        // A connect never seen.
        let mut e = reused(0x200, 42);
        assert_eq!(names.observe(&mut e), Some(42));
    }

    #[test]
    fn reuser_names_stay_bounded_and_keep_the_previous_generation() {
        let mut names = ReuserNames::default();
        let n = ReuserNames::GENERATION as u64;
        for sk in 0..3 * n {
            names.observe(&mut connect(sk + 1, 7, "many"));
        }
        assert!(names.recent.len() + names.older.len() <= 2 * ReuserNames::GENERATION);
        let mut newest = reused(3 * n, 7);
        assert_eq!(names.observe(&mut newest), None);
        let mut one_generation_ago = reused(3 * n - n, 7);
        assert_eq!(names.observe(&mut one_generation_ago), None);
        let mut forgotten = reused(1, 7);
        assert_eq!(names.observe(&mut forgotten), Some(7));
    }

    #[test]
    fn tw_end_with_reason_none_is_reason_error() {
        let mut r = raw_v4_transition();
        r.kind = EventKind::TwEnd as u32;
        r.reason = 0;
        assert_eq!(decode_raw(&r), Err(DecodeError::Reason(0)));
    }

    #[test]
    fn tw_end_with_out_of_range_reason_is_reason_error() {
        let mut r = raw_v4_transition();
        r.kind = EventKind::TwEnd as u32;
        r.reason = 6;
        assert_eq!(decode_raw(&r), Err(DecodeError::Reason(6)));
        r.kind = EventKind::Transition as u32;
        assert_eq!(decode_raw(&r), Err(DecodeError::Reason(6)));
    }

    #[test]
    fn unknown_kind_is_kind_error() {
        let mut r = raw_v4_transition();
        r.kind = 99;
        assert_eq!(decode_raw(&r), Err(DecodeError::Kind(99)));
        r.kind = 0;
        assert_eq!(decode_raw(&r), Err(DecodeError::Kind(0)));
    }

    #[test]
    fn lost_kind_is_userspace_kind_error() {
        let mut r = raw_v4_transition();
        r.kind = 5;
        assert_eq!(
            decode_raw(&r),
            Err(DecodeError::UserspaceKind(EventKind::Lost))
        );
    }

    #[test]
    fn tw_substate_kind_is_userspace_kind_error() {
        let mut r = raw_v4_transition();
        r.kind = 7;
        assert_eq!(
            decode_raw(&r),
            Err(DecodeError::UserspaceKind(EventKind::TwSubstate))
        );
    }

    #[test]
    fn unknown_family_is_family_error() {
        let mut r = raw_v4_transition();
        r.family = 3;
        assert_eq!(decode_raw(&r), Err(DecodeError::Family(3)));
    }

    #[test]
    fn out_of_range_new_state_is_state_error() {
        let mut r = raw_v4_transition();
        r.new = 13;
        assert_eq!(decode_raw(&r), Err(DecodeError::State(13)));
        r.new = 0;
        assert_eq!(decode_raw(&r), Err(DecodeError::State(0)));
    }

    #[test]
    fn out_of_range_old_state_is_state_error() {
        let mut r = raw_v4_transition();
        r.old = 13;
        assert_eq!(decode_raw(&r), Err(DecodeError::State(13)));
    }

    #[test]
    fn wrong_record_length_is_length_error() {
        let good = raw_bytes(&raw_v4_transition());
        let mut long = good.to_vec();
        long.push(0);
        for bytes in [&good[..119], &long[..], &[][..]] {
            assert_eq!(
                decode(bytes),
                Err(DecodeError::Length {
                    got: bytes.len(),
                    expected: 120,
                })
            );
        }
    }

    #[test]
    fn decode_accepts_unaligned_record() {
        let r = raw_v4_transition();
        let mut buf = [0u8; RawEvent::SIZE + 1];
        buf[1..].copy_from_slice(&raw_bytes(&r));
        assert_eq!(decode(&buf[1..]), decode_raw(&r));
        assert!(decode(&buf[1..]).is_ok());
    }

    /// Pins the byte offsets the eBPF side writes (see `tcptrace_common::event`),
    /// independently of the `RawEvent` struct definition.
    #[test]
    fn decode_reads_fields_at_wire_offsets() {
        let mut b = [0u8; 120];
        b[0..8].copy_from_slice(&11u64.to_ne_bytes()); // ts_ns
        b[8..16].copy_from_slice(&22u64.to_ne_bytes()); // sk
        b[16..24].copy_from_slice(&33u64.to_ne_bytes()); // prev_ns
        b[24..32].copy_from_slice(&44u64.to_ne_bytes()); // cgroup
        b[32..40].copy_from_slice(&55u64.to_ne_bytes()); // link
        b[40..44].copy_from_slice(&2u32.to_ne_bytes()); // kind = TwBegin
        b[44..48].copy_from_slice(&66u32.to_ne_bytes()); // tgid
        b[48..52].copy_from_slice(&77u32.to_ne_bytes()); // tid
        b[52..56].copy_from_slice(&88u32.to_ne_bytes()); // netns
        b[56..58].copy_from_slice(&443u16.to_ne_bytes()); // sport
        b[58..60].copy_from_slice(&5555u16.to_ne_bytes()); // dport
        b[60] = tcp_state::FIN_WAIT1; // old
        b[61] = tcp_state::TIME_WAIT; // new
        b[62] = family::INET; // family
        b[63] = 0x1f; // flags: every bit
        b[64..68].copy_from_slice(&[127, 0, 0, 1]); // saddr
        b[80..84].copy_from_slice(&[127, 0, 0, 2]); // daddr
        b[96..100].copy_from_slice(b"curl"); // comm
        b[112] = 0; // reason
        let e = decode(&b).expect("valid record");
        assert_eq!(
            e,
            Event {
                ts_ns: 11,
                kind: EventKind::TwBegin,
                sk: 22,
                link: Some(55),
                owner: Some(Owner {
                    pid: 66,
                    tid: 77,
                    comm: Comm::from_name("curl"),
                    cgroup: 44,
                    from_listener: true,
                }),
                netns: Some(88),
                family: Family::V4,
                saddr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                sport: 443,
                daddr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
                dport: 5555,
                old: Some(TcpState::FinWait1),
                new: TcpState::TimeWait,
                prev_ns: Some(33),
                reason: None,
                stack: None,
            }
        );
        assert_eq!(raw_bytes(&to_raw(&e)), b);
    }

    #[test]
    fn to_raw_of_decoded_hand_built_record_is_identical() {
        let r = raw_v4_transition();
        let e = decode_raw(&r).expect("valid record");
        let mut expected = r;
        expected.link = 0; // not LINKED: the decoder drops it, to_raw writes 0
        assert_eq!(to_raw(&e), expected);
    }

    fn arb_state() -> impl Strategy<Value = TcpState> {
        select(TcpState::ALL.to_vec())
    }

    fn arb_kernel_kind() -> impl Strategy<Value = EventKind> {
        select(vec![
            EventKind::Transition,
            EventKind::TwBegin,
            EventKind::TwRearm,
            EventKind::TwEnd,
        ])
    }

    fn arb_addrs() -> impl Strategy<Value = (Family, IpAddr, IpAddr)> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(s, d)| (
                Family::V4,
                IpAddr::V4(Ipv4Addr::from(s)),
                IpAddr::V4(Ipv4Addr::from(d)),
            )),
            (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(s, d)| (
                Family::V6,
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
            )),
        ]
    }

    fn arb_owner() -> impl Strategy<Value = Owner> {
        (
            any::<u32>(),
            any::<u32>(),
            "[ -~]{0,20}",
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(|(pid, tid, name, cgroup, from_listener)| Owner {
                pid,
                tid,
                comm: Comm::from_name(&name),
                cgroup,
                from_listener,
            })
    }

    /// Every `Event` the decoder can produce (all kernel kinds, both families).
    fn arb_event() -> impl Strategy<Value = Event> {
        (
            (arb_kernel_kind(), any::<u64>(), any::<u64>()),
            (
                option::of(any::<u64>()),
                option::of(arb_owner()),
                option::of(any::<u32>()),
            ),
            (arb_addrs(), any::<u16>(), any::<u16>()),
            (
                option::of(arb_state()),
                arb_state(),
                option::of(any::<u64>()),
            ),
            (arb_tw_end_reason(), any::<bool>(), option::of(any::<u16>())),
        )
            .prop_map(
                |(
                    (kind, ts_ns, sk),
                    (link, owner, netns),
                    ((family, saddr, daddr), sport, dport),
                    (old, new, prev_ns),
                    (end_reason, overflow, stack),
                )| Event {
                    ts_ns,
                    kind,
                    sk,
                    link,
                    owner,
                    netns,
                    family,
                    saddr,
                    sport,
                    daddr,
                    dport,
                    old,
                    new,
                    prev_ns,
                    reason: match kind {
                        EventKind::TwEnd => Some(end_reason),
                        EventKind::Transition if overflow && new == TcpState::Close => {
                            Some(TwEndReason::Overflow)
                        }
                        _ => None,
                    },
                    stack: stack.map(u32::from),
                },
            )
    }

    /// Every reason a `TwEnd` record can carry (a reuser's name never: the
    /// kernel sends its pid only).
    fn arb_tw_end_reason() -> impl Strategy<Value = TwEndReason> {
        prop_oneof![
            Just(TwEndReason::Expired),
            Just(TwEndReason::Killed),
            Just(TwEndReason::Purged),
            option::of(1u32..).prop_map(|pid| TwEndReason::Reused {
                by: pid.map(|pid| Reuser { pid, comm: None }),
            }),
        ]
    }

    /// 120 random bytes with the validated fields steered into (and just past)
    /// their valid ranges, so every decode branch is reached.
    fn arb_near_valid_record() -> impl Strategy<Value = [u8; 120]> {
        (
            any::<[u8; 120]>(),
            0u32..=8,
            select(vec![0u8, 2, 3, 10, 255]),
            0u8..=13,
            0u8..=13,
            0u8..=6,
        )
            .prop_map(|(mut b, kind, fam, old, new, reason)| {
                b[40..44].copy_from_slice(&kind.to_ne_bytes());
                b[60] = old;
                b[61] = new;
                b[62] = fam;
                b[112] = reason;
                b
            })
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_any_length(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let got = decode(&bytes);
            if bytes.len() != RawEvent::SIZE {
                prop_assert_eq!(
                    got,
                    Err(DecodeError::Length { got: bytes.len(), expected: RawEvent::SIZE })
                );
            }
        }

        #[test]
        fn decode_never_panics_on_any_120_bytes(bytes in any::<[u8; 120]>()) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decoded_near_valid_records_reencode_to_the_same_event(bytes in arb_near_valid_record()) {
            if let Ok(e) = decode(&bytes) {
                prop_assert_ne!(e.kind, EventKind::Lost);
                prop_assert_ne!(e.kind, EventKind::TwSubstate);
                prop_assert!(
                    e.reason.is_some() == (e.kind == EventKind::TwEnd)
                        || e.reason == Some(TwEndReason::Overflow)
                );
                prop_assert_eq!(decode(&raw_bytes(&to_raw(&e))), Ok(e));
            }
        }

        #[test]
        fn valid_event_round_trips_through_raw_bytes(e in arb_event()) {
            prop_assert_eq!(decode(&raw_bytes(&to_raw(&e))), Ok(e));
        }
    }

    /// This kernel's (6.18) `skb:kfree_skb` format file, as read from
    /// `/sys/kernel/tracing/events/skb/kfree_skb/format`.
    const KFREE_SKB_6_18: &str = include_str!("decode/kfree_skb-6.18.format");

    #[test]
    fn kernel_drop_reasons_parse_this_kernels_format_file() {
        let k = KernelDropReasons::parse_format(KFREE_SKB_6_18);
        // 2 NOT_SPECIFIED .. 128 MAX.
        assert_eq!(k.len(), 127);
        assert_eq!(k.name(2), Some("NOT_SPECIFIED"));
        assert_eq!(k.name(3), Some("NO_SOCKET"));
        assert_eq!(k.name(36), Some("TCP_RFC7323_PAWS"));
        assert_eq!(k.name(38), Some("TCP_RFC7323_TW_PAWS"));
        assert_eq!(k.name(40), Some("TCP_LISTEN_OVERFLOW"));
        assert_eq!(k.name(128), Some("MAX"));
        assert_eq!(k.name(1), None);
        assert_eq!(k.name(129), None);
        assert_eq!(k.id("SKB_DROP_REASON_TCP_LISTEN_OVERFLOW"), Some(40));
        assert_eq!(k.id("NO_SOCKET"), Some(3));
        assert_eq!(k.reason(3), DropReason::NoListener);
        assert_eq!(k.reason(40), DropReason::AcceptQueueFull);
        assert_eq!(k.reason(36), DropReason::Paws);
        assert_eq!(k.reason(37), DropReason::Paws);
        assert_eq!(k.reason(38), DropReason::TimewaitPaws);
        assert_eq!(k.reason(12), DropReason::Netfilter);
        assert_eq!(k.reason(24), DropReason::Auth);
        assert_eq!(k.reason(64), DropReason::Other); // QDISC_DROP
        assert_eq!(k.reason(9999), DropReason::Other);
    }

    #[test]
    fn the_reason_mask_has_the_connection_attempt_reasons_only() {
        let k = KernelDropReasons::parse_format(KFREE_SKB_6_18);
        let mask = k.mask();
        let config = tcptrace_common::DropConfig {
            reasons: mask,
            ..tcptrace_common::DropConfig::NONE
        };
        for traced in [3, 5, 12, 21, 22, 28, 30, 36, 37, 38, 39, 40, 46, 49, 50, 97] {
            assert!(
                config.traces(traced),
                "{traced} {:?}",
                k.name(traced as u16)
            );
        }
        // NOT_SPECIFIED, SOCKET_CLOSE, TCP_CSUM, TCP_OLD_DATA, TCP_RESET,
        // QDISC_DROP, MAX: not about connection attempts.
        for untraced in [2, 4, 10, 33, 45, 64, 128, 255, 256, 1000] {
            assert!(
                !config.traces(untraced),
                "{untraced} {:?}",
                k.name(untraced as u16)
            );
        }
        assert!(k.traced_names().contains(&"TCP_LISTEN_OVERFLOW"));
        assert!(!k.traced_names().contains(&"TCP_RESET"));
    }

    #[test]
    fn kernel_drop_reasons_survive_bad_text() {
        assert!(KernelDropReasons::parse_format("").is_empty());
        assert!(KernelDropReasons::parse_format("print fmt: \"%s\", REC->x").is_empty());
        let k = KernelDropReasons::parse_format(
            "__print_symbolic(REC->reason, { 3, \"NO_SOCKET\" }, { x, \"BAD\" }, { 70000, \"BIG\" }, \
             { 4, \"we ird\" }, { 3, \"DUP\" }, { 5 }, { 6, \"LAST\" }) { 7, \"AFTER\" }",
        );
        assert_eq!(k.len(), 2, "{k:?}");
        assert_eq!(k.name(3), Some("NO_SOCKET"));
        assert_eq!(k.name(6), Some("LAST"));
        assert_eq!(k.name(7), None);
        // Unterminated.
        let k = KernelDropReasons::parse_format(
            "__print_symbolic(REC->reason, { 3, \"NO_SOCKET\" }, { 4, ",
        );
        assert_eq!(k.name(3), Some("NO_SOCKET"));
    }

    fn raw_drop_v4() -> RawEvent {
        let mut r = RawEvent::zeroed();
        r.kind = EventKind::Drop as u32;
        r.ts_ns = 5_000;
        r.family = family::INET;
        r.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        r.sport = 8080;
        r.dport = 40_000;
        r.netns = 4_026_532_000;
        r.flags = event_flags::NETNS_KNOWN;
        r.tid = 40;
        r.old = tcp_state::LISTEN;
        r.new = tcp_flags::ACK;
        r.prev_ns = 7;
        r.sk = 0xffff_8880_0000_1000;
        r
    }

    #[test]
    fn a_drop_record_decodes_with_the_kernels_reason() {
        let k = KernelDropReasons::parse_format(KFREE_SKB_6_18);
        let d = syn_drop(&raw_drop_v4(), &k).unwrap();
        assert_eq!(d.ts_ns, 5_000);
        assert_eq!(d.netns, Some(4_026_532_000));
        assert_eq!(d.family, Family::V4);
        assert_eq!(d.local, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(d.local_port, 8080);
        assert_eq!(d.remote, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(d.remote_port, 40_000);
        assert_eq!(d.reason, DropReason::AcceptQueueFull);
        assert_eq!(d.kernel_reason, 40);
        assert!(d.ack && !d.syn);
        assert_eq!(d.rx_state, Some(TcpState::Listen));
        assert_eq!(d.suppressed, 7);
        // Back and forth.
        let again = syn_drop(&drop_to_raw(&d), &k).unwrap();
        assert_eq!(again, d);

        // No socket received it (a SYN to a closed port), unknown namespace.
        let mut r = raw_drop_v4();
        r.old = 0;
        r.flags = 0;
        r.tid = 3;
        r.new = tcp_flags::SYN;
        let d = syn_drop(&r, &k).unwrap();
        assert_eq!((d.rx_state, d.netns), (None, None));
        assert_eq!(d.reason, DropReason::NoListener);
        assert!(d.syn && !d.ack);

        // IPv6, and a reason this table does not know.
        let mut r = raw_drop_v4();
        r.family = family::INET6;
        r.saddr = Ipv6Addr::LOCALHOST.octets();
        r.tid = 200;
        let d = syn_drop(&r, &k).unwrap();
        assert_eq!(d.local, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(d.reason, DropReason::Other);
        assert_eq!(d.kernel_reason, 200);
    }

    #[test]
    fn a_drop_record_is_no_event_and_an_event_no_drop() {
        let k = KernelDropReasons::default();
        let r = raw_drop_v4();
        assert_eq!(from_raw(&r), Err(DecodeError::DropKind(EventKind::Drop)));
        assert!(decode(&raw_bytes(&r)).is_err());
        let t = raw_v4_transition();
        assert_eq!(
            syn_drop(&t, &k),
            Err(DecodeError::DropKind(EventKind::Transition))
        );
        let mut bad = raw_drop_v4();
        bad.family = 99;
        assert_eq!(syn_drop(&bad, &k), Err(DecodeError::Family(99)));
        let mut bad = raw_drop_v4();
        bad.old = 99;
        assert_eq!(syn_drop(&bad, &k), Err(DecodeError::State(99)));
        let mut bad = raw_drop_v4();
        bad.tid = 70_000;
        assert_eq!(syn_drop(&bad, &k), Err(DecodeError::DropReason(70_000)));
        // Unknown reasons decode without a table.
        assert_eq!(syn_drop(&r, &k).unwrap().reason, DropReason::Other);
    }

    proptest! {
        /// Any 120 bytes: a drop decodes or errors, never panics.
        #[test]
        fn syn_drop_never_panics(bytes in proptest::collection::vec(any::<u8>(), RawEvent::SIZE)) {
            let k = KernelDropReasons::parse_format(KFREE_SKB_6_18);
            let mut r = raw(&bytes).unwrap();
            r.kind = EventKind::Drop as u32;
            let _ = syn_drop(&r, &k);
        }
    }
}
