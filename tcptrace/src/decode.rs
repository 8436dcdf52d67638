//! Bytes from the ring buffer -> [`Event`] or a typed [`DecodeError`]. Pure.
//!
//! The wire format is [`tcptrace_common::RawEvent`]: fixed 120-byte records,
//! native endian, documented there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcptrace_common::{RawEvent, event_flags, family};

use crate::model::{Comm, Event, EventKind, Family, Owner, TcpState, TwEndReason};

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

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    from_raw(&raw(bytes)?)
}

fn state(v: u8) -> Result<TcpState, DecodeError> {
    TcpState::from_u8(v).ok_or(DecodeError::State(v))
}

pub fn from_raw(r: &RawEvent) -> Result<Event, DecodeError> {
    let kind = EventKind::from_u32(r.kind).ok_or(DecodeError::Kind(r.kind))?;
    if kind == EventKind::Lost {
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
    let reason = match kind {
        EventKind::TwEnd => match TwEndReason::from_u8(r.reason) {
            Some(TwEndReason::None) | None => return Err(DecodeError::Reason(r.reason)),
            Some(reason) => Some(reason),
        },
        _ => None,
    };
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
    })
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
    r.reason = e.reason.map_or(0, |x| x as u8);
    r
}

/// The bytes of a raw event, as the kernel writes them.
pub fn raw_bytes(r: &RawEvent) -> [u8; RawEvent::SIZE] {
    // SAFETY: RawEvent is repr(C) plain data of exactly SIZE bytes with
    // explicit padding fields, so every byte is initialised.
    unsafe { std::mem::transmute_copy(r) }
}
