//! Bytes from the ring buffer -> [`Event`] or a typed [`DecodeError`]. Pure.
//!
//! The wire format is [`tcptrace_common::RawEvent`]: fixed 120-byte records,
//! native endian, documented there. A record names the process that reused
//! a timewait socket by pid only; [`ReuserNames`] adds its name.

use std::{
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use rustc_hash::FxHashMap;
use tcptrace_common::{RawEvent, TwEndReason as WireReason, event_flags, family};

use crate::model::{Comm, Event, EventKind, Family, Owner, Reuser, TcpState, TwEndReason};

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
    let (fam, saddr, daddr) = match r.family {
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
    };
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
}
