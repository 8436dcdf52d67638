//! Dumps every TCP socket of the calling thread's network namespace through
//! `NETLINK_SOCK_DIAG`, the interface `ss` uses. Sockets that existed before
//! the probes attached never produce events; this dump is how they become
//! known (at startup and on each reconciliation).
//!
//! It also answers narrower questions cheaply, for the timewait check of the
//! live source (`source/timewait_check.rs`): one socket by its 4-tuple (a
//! request without `NLM_F_DUMP`, many of them in one datagram), or a dump of
//! some states only. For a timewait socket the kernel reports its substate
//! (`tw_substate`) as the state, with `idiag_timer` 3.
//!
//! For the listener sampler (`seed/listeners.rs`) it dumps LISTEN sockets
//! only, with `INET_DIAG_SKMEMINFO`: a listener's `idiag_rqueue` is its
//! accept queue's depth, `idiag_wqueue` its limit, and `SK_MEMINFO_DROPS`
//! the connection attempts it dropped (`tcp_listendrop()`).

use std::{
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
};

use anyhow::{Context, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use tcptrace_core::{
    listeners::ListenerSample,
    model::{Family, SeenSocket, TcpState},
};

/// Receive buffer size. The kernel fills dump datagrams up to 32 KiB when
/// the reader offers that much; more room only avoids truncation.
const RECV_BUF: usize = 64 * 1024;

/// Offset of `idiag_expires` in `struct inet_diag_msg`: family, state, timer,
/// retrans (1 byte each), then the 48-byte `inet_diag_sockid`. Read raw
/// because the crate drops the value for the TIME_WAIT timer.
const EXPIRES_OFFSET: usize = 4 + 48;

/// Lookups sent in one datagram. Each answer is a datagram of its own that
/// waits in the socket's receive buffer (`net.core.rmem_default`, 208 KiB,
/// holds about 100 of them at ~2 KiB of kernel memory each) until read: 64
/// stays well inside it, and already turns 64 system calls into one.
pub const LOOKUP_BATCH: usize = 64;

/// How long a reply may take before the request is given up (the kernel
/// answers within microseconds; this only keeps a lost reply from stopping
/// the loop).
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `INET_DIAG_CGROUP_ID` (`include/uapi/linux/inet_diag.h`, Linux >= 5.7):
/// a u64 in host order, the cgroup v2 id of the socket
/// (`cgroup_id(sock_cgroup_ptr(&sk->sk_cgrp_data))`), sent for every full
/// socket with no extension asked for; timewait and request sockets have
/// none.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// `INET_DIAG_NOCOOKIE`: a lookup that does not name a socket by cookie.
const NO_COOKIE: u64 = u64::MAX;

/// One socket to look up by its 4-tuple (local first, as sock_diag reports
/// it), and optionally the cookie it had when last found: a socket with the
/// same tuple but another cookie is a new one, reported [`Lookup::Gone`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TupleQuery {
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub cookie: Option<u64>,
}

/// What the kernel said about one [`TupleQuery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No socket has that tuple (`ENOENT`), or another socket than the
    /// cookie names has it (`ESTALE`).
    Gone,
    /// The socket: its state (a timewait socket's substate), whether it is a
    /// timewait socket, and its cookie.
    Found {
        state: TcpState,
        timewait: bool,
        cookie: u64,
    },
}

/// A `NETLINK_SOCK_DIAG` socket. It answers for the network namespace it was
/// opened in, whichever thread uses it later.
pub struct DiagSocket {
    socket: Socket,
    netns: u32,
    buf: Vec<u8>,
    request: Vec<u8>,
    seq: u32,
}

impl DiagSocket {
    /// Opens one in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let netns = current_netns()?;
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).context(
            "opening a NETLINK_SOCK_DIAG socket: load the diag modules (`modprobe inet_diag tcp_diag`)",
        )?;
        socket.bind_auto().context(
            "binding the NETLINK_SOCK_DIAG socket: check netlink is not restricted (seccomp/LSM)",
        )?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context("connecting the NETLINK_SOCK_DIAG socket to the kernel: check netlink is not restricted (seccomp/LSM)")?;
        set_recv_timeout(&socket, REPLY_TIMEOUT)?;
        Ok(Self {
            socket,
            netns,
            buf: Vec::with_capacity(RECV_BUF),
            request: Vec::new(),
            seq: 0,
        })
    }

    /// Inode of the network namespace it answers for.
    pub fn netns(&self) -> u32 {
        self.netns
    }

    fn next_seq(&mut self, n: usize) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(n as u32);
        first
    }

    /// Every TCP socket of `family` whose state (a timewait socket's
    /// substate) is in `states` (bit `1 << state`), appended to `out`.
    pub fn dump(&mut self, family: u8, states: u32, out: &mut Vec<SeenSocket>) -> Result<()> {
        let seq = self.next_seq(1);
        let request = request_bytes(family, seq, states, ExtensionFlags::empty());
        self.socket.send(&request, 0).context(
            "sending the sock_diag dump request: check netlink is not restricted (seccomp/LSM)",
        )?;
        let netns = Some(self.netns);
        loop {
            self.recv("dump")?;
            if parse_datagram(&self.buf, seq, netns, out)? {
                return Ok(());
            }
        }
    }

    /// The LISTEN sockets of `family` with their accept queues and drop
    /// counts, appended to `out` while it holds fewer than `max`; the
    /// rest of the dump is read and counted, not kept. Returns how many
    /// were left out.
    pub fn dump_listeners(
        &mut self,
        family: u8,
        max: usize,
        out: &mut Vec<ListenerSample>,
    ) -> Result<usize> {
        let seq = self.next_seq(1);
        let request = request_bytes(
            family,
            seq,
            1 << TcpState::Listen as u32,
            ExtensionFlags::SKMEMINFO,
        );
        self.socket.send(&request, 0).context(
            "sending the sock_diag listener dump request: check netlink is not restricted (seccomp/LSM)",
        )?;
        let netns = Some(self.netns);
        let mut left_out = 0;
        loop {
            self.recv("listener dump")?;
            let done = parse_datagram_with(&self.buf, seq, &mut |resp, _| {
                if let Some(l) = to_listener(resp, netns) {
                    if out.len() < max {
                        out.push(l);
                    } else {
                        left_out += 1;
                    }
                }
            })?;
            if done {
                return Ok(left_out);
            }
        }
    }

    /// Looks up each query by its tuple (requests without `NLM_F_DUMP`,
    /// [`LOOKUP_BATCH`] to a datagram); `out` gets one answer per query, in
    /// order.
    pub fn lookup(&mut self, queries: &[TupleQuery], out: &mut Vec<Lookup>) -> Result<()> {
        out.reserve(queries.len());
        for batch in queries.chunks(LOOKUP_BATCH) {
            let first = self.next_seq(batch.len());
            self.request.clear();
            for (i, q) in batch.iter().enumerate() {
                append_lookup(&mut self.request, q, first.wrapping_add(i as u32));
            }
            self.socket.send(&self.request, 0).context(
                "sending sock_diag lookups: check netlink is not restricted (seccomp/LSM)",
            )?;
            let base = out.len();
            out.resize(base + batch.len(), Lookup::Gone);
            let mut answered = 0;
            while answered < batch.len() {
                self.recv("lookup")?;
                answered += parse_lookups(&self.buf, first, &mut out[base..])?;
            }
        }
        Ok(())
    }

    /// One datagram into `self.buf`.
    fn recv(&mut self, what: &str) -> Result<()> {
        loop {
            self.buf.clear();
            let n = match self.socket.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "reading the sock_diag {what} reply: retry; check netlink is not restricted (seccomp/LSM)"
                        )
                    });
                }
            };
            if n > self.buf.len() {
                bail!(
                    "sock_diag reply of {n} bytes truncated to {}: this is a tcptrace bug, please report it",
                    self.buf.len()
                );
            }
            return Ok(());
        }
    }
}

/// `SO_RCVTIMEO` on a netlink socket.
fn set_recv_timeout(socket: &Socket, timeout: std::time::Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid descriptor and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("setting a receive timeout on the NETLINK_SOCK_DIAG socket");
    }
    Ok(())
}

/// All TCP sockets (IPv4, then IPv6; every state) of the calling thread's
/// network namespace, without owners.
pub fn dump_tcp() -> Result<Vec<SeenSocket>> {
    let mut socket = DiagSocket::open()?;
    let mut out = Vec::new();
    // Separate AF_INET and AF_INET6 requests: each only reports sockets of
    // its own family, so nothing is listed twice. Every state bit, like
    // `ss -a`: includes NEW_SYN_RECV and any future state.
    for family in [AF_INET, AF_INET6] {
        socket.dump(family, u32::MAX, &mut out)?;
    }
    Ok(out)
}

/// Inode of the calling thread's network namespace.
pub fn current_netns() -> Result<u32> {
    let md = std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading /proc/thread-self/ns/net: mount /proc (Linux >= 3.17)")?;
    Ok(md.ino() as u32)
}

/// The `AF_INET`/`AF_INET6` constant of a family.
pub fn family_constant(family: Family) -> u8 {
    match family {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    }
}

/// Appends one exact-lookup request (no `NLM_F_DUMP`) for `q`.
fn append_lookup(out: &mut Vec<u8>, q: &TupleQuery, seq: u32) {
    let cookie = q.cookie.unwrap_or(NO_COOKIE);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: family_constant(q.family),
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_retain(u32::MAX),
            socket_id: SocketId {
                source_port: q.sport,
                destination_port: q.dport,
                source_address: q.saddr,
                destination_address: q.daddr,
                interface_id: 0,
                cookie: cookie_bytes(cookie),
            },
        })
        .into(),
    );
    packet.finalize();
    let at = out.len();
    out.resize(at + packet.buffer_len(), 0);
    packet.serialize(&mut out[at..]);
}

/// `idiag_cookie[2]`: two host-order u32 words, low word first.
fn cookie_bytes(cookie: u64) -> [u8; 8] {
    let mut c = [0u8; 8];
    c[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
    c[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    c
}

fn cookie_of(c: &[u8; 8]) -> u64 {
    u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        | u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]])) << 32
}

/// Parses the answers to lookups numbered from `first` in one datagram into
/// `answers` (indexed by sequence number - `first`); returns how many it
/// held. `ENOENT` and `ESTALE` are [`Lookup::Gone`]; another error fails.
fn parse_lookups(buf: &[u8], first: u32, answers: &mut [Lookup]) -> Result<usize> {
    let mut offset = 0;
    let mut got = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        let nl = NetlinkBuffer::new_checked(rest).context(
            "malformed sock_diag reply: this is a tcptrace or kernel bug, please report it",
        )?;
        let len = nl.length() as usize;
        let bytes = &rest[..len];
        offset += len.next_multiple_of(4);
        let index = nl.sequence_number().wrapping_sub(first) as usize;
        if index >= answers.len() {
            continue;
        }
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(bytes).context(
            "undecodable sock_diag reply: this is a tcptrace or kernel bug, please report it",
        )?;
        match message.payload {
            NetlinkPayload::Error(err) => match err.code.map(|c| -c.get()) {
                Some(libc::ENOENT | libc::ESTALE) => {
                    answers[index] = Lookup::Gone;
                    got += 1;
                }
                Some(_) => {
                    let io = err.to_io();
                    bail!(
                        "sock_diag lookup refused: {io}; load the TCP diag module (`modprobe tcp_diag`)"
                    );
                }
                // An acknowledgement (none is asked for): not an answer.
                None => {}
            },
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(resp)) => {
                let h = &resp.header;
                answers[index] = match TcpState::from_u8(h.state) {
                    Some(state) => Lookup::Found {
                        state,
                        timewait: h.timer == Some(Timer::TimeWait),
                        cookie: cookie_of(&h.socket_id.cookie),
                    },
                    None => Lookup::Gone,
                };
                got += 1;
            }
            _ => {}
        }
    }
    Ok(got)
}

/// An `inet_diag_req_v2` dump request for the TCP sockets of `family` whose
/// state is in `states` (bit `1 << state`).
/// `extensions` asks for attributes beyond the defaults.
fn request_bytes(family: u8, seq: u32, states: u32, extensions: ExtensionFlags) -> Vec<u8> {
    let socket_id = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions,
            states: StateFlags::from_bits_retain(states),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut bytes = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

/// Parses one datagram of a dump reply into `out`. Returns `true` once the
/// dump is complete (`NLMSG_DONE`). Messages for another sequence number are
/// ignored.
fn parse_datagram(
    buf: &[u8],
    seq: u32,
    netns: Option<u32>,
    out: &mut Vec<SeenSocket>,
) -> Result<bool> {
    parse_datagram_with(buf, seq, &mut |resp, payload| {
        let expires = payload
            .get(EXPIRES_OFFSET..EXPIRES_OFFSET + 4)
            .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        if let Some(s) = to_seen(resp, expires, netns) {
            out.push(s);
        }
    })
}

/// Parses one datagram of a dump reply, handing each socket (and its raw
/// `inet_diag_msg` bytes) to `each`. Returns `true` once the dump is
/// complete (`NLMSG_DONE`). Messages for another sequence number are
/// ignored.
fn parse_datagram_with(
    buf: &[u8],
    seq: u32,
    each: &mut dyn FnMut(&InetResponse, &[u8]),
) -> Result<bool> {
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        let nl = NetlinkBuffer::new_checked(rest).context(
            "malformed sock_diag reply: this is a tcptrace or kernel bug, please report it",
        )?;
        let len = nl.length() as usize;
        let bytes = &rest[..len];
        offset += len.next_multiple_of(4);
        if nl.sequence_number() != seq {
            continue;
        }
        let payload = nl.payload();
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(bytes).context(
            "undecodable sock_diag reply: this is a tcptrace or kernel bug, please report it",
        )?;
        match message.payload {
            NetlinkPayload::Done(done) => {
                if done.code != 0 {
                    let err = std::io::Error::from_raw_os_error(done.code.abs());
                    bail!("sock_diag dump failed: {err}; retry, the socket table changed too fast");
                }
                return Ok(true);
            }
            NetlinkPayload::Error(err) if err.code.is_some() => {
                let io = err.to_io();
                bail!(
                    "sock_diag dump refused: {io}; load the TCP diag module (`modprobe tcp_diag`)"
                );
            }
            NetlinkPayload::Overrun(_) => {
                bail!("sock_diag dump overran: retry with fewer sockets changing")
            }
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(resp)) => {
                each(&resp, payload);
            }
            _ => {}
        }
    }
    Ok(false)
}

/// One LISTEN socket's `inet_diag_msg` as a [`ListenerSample`] (no owner
/// yet); `None` for another state or an unknown family. The drop count is
/// `SK_MEMINFO_DROPS` of its `INET_DIAG_SKMEMINFO` attribute, `None`
/// without one.
fn to_listener(resp: &InetResponse, netns: Option<u32>) -> Option<ListenerSample> {
    let h = &resp.header;
    if TcpState::from_u8(h.state)? != TcpState::Listen {
        return None;
    }
    let family = match h.family {
        AF_INET => Family::V4,
        AF_INET6 => Family::V6,
        _ => return None,
    };
    let drops = resp.nlas.iter().find_map(|nla| match nla {
        Nla::MemInfo(m) => Some(u64::from(m.drops)),
        _ => None,
    });
    Some(ListenerSample {
        netns,
        family,
        addr: h.socket_id.source_address,
        port: h.socket_id.source_port,
        inode: u64::from(h.inode),
        owner: None,
        cgroup: cgroup_of(&resp.nlas),
        queue: h.recv_queue,
        limit: h.send_queue,
        drops,
    })
}

/// One `inet_diag_msg` as a [`SeenSocket`]; `None` for an unknown state or
/// family. `expires_ms` is the raw `idiag_expires`.
fn to_seen(resp: &InetResponse, expires_ms: u32, netns: Option<u32>) -> Option<SeenSocket> {
    let h = &resp.header;
    let state = TcpState::from_u8(h.state)?;
    let family = match h.family {
        AF_INET => Family::V4,
        AF_INET6 => Family::V6,
        _ => return None,
    };
    let id = &h.socket_id;
    let cookie = cookie_of(&id.cookie);
    // `Timer::TimeWait` is `idiag_timer == 3`, set for every timewait socket
    // (substate TIME_WAIT or FIN_WAIT2).
    let timer_left_ms = (h.timer == Some(Timer::TimeWait)).then_some(expires_ms);
    let cgroup = cgroup_of(&resp.nlas);
    Some(SeenSocket {
        netns,
        family,
        saddr: id.source_address,
        sport: id.source_port,
        daddr: id.destination_address,
        dport: id.destination_port,
        state,
        inode: u64::from(h.inode),
        owner: None,
        timer_left_ms,
        cookie,
        cgroup,
    })
}

/// The socket's cgroup id from its `INET_DIAG_CGROUP_ID` attribute: `None`
/// without one, or when it is not exactly 8 bytes (a short or long value
/// is ignored, never read past), or 0 (no cgroup id is 0: the root's is 1).
fn cgroup_of(nlas: &[Nla]) -> Option<u64> {
    use netlink_packet_core::Nla as _;
    nlas.iter().find_map(|nla| match nla {
        Nla::Other(attr) if attr.kind() == INET_DIAG_CGROUP_ID && attr.value_len() == 8 => {
            let mut value = [0u8; 8];
            attr.emit_value(&mut value);
            Some(u64::from_ne_bytes(value)).filter(|&id| id != 0)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::testutil::{Conns, cost, state_counts};
    use std::{collections::BTreeMap, process::Command};

    /// A reply datagram: one TIME_WAIT socket with a raw expires value, then
    /// NLMSG_DONE.
    fn fake_reply(seq: u32, expires: u32) -> Vec<u8> {
        fake_reply_with(seq, expires, TcpState::TimeWait, Vec::new())
    }

    /// A reply datagram: one socket in `state` with attributes `nlas`
    /// (a timewait socket for TIME_WAIT), then NLMSG_DONE.
    fn fake_reply_with(seq: u32, expires: u32, state: TcpState, nlas: Vec<Nla>) -> Vec<u8> {
        use netlink_packet_core::DoneMessage;
        use netlink_packet_sock_diag::inet::InetResponseHeader;

        let resp = InetResponse {
            header: InetResponseHeader {
                family: AF_INET,
                state: state as u8,
                timer: (state == TcpState::TimeWait).then_some(Timer::TimeWait),
                socket_id: SocketId {
                    source_port: 40000,
                    destination_port: 80,
                    source_address: "10.0.0.1".parse().unwrap(),
                    destination_address: "10.0.0.2".parse().unwrap(),
                    interface_id: 0,
                    cookie: cookie_words(1, 2),
                },
                recv_queue: 0,
                send_queue: 0,
                uid: 0,
                inode: 0,
            },
            nlas: nlas.into_iter().collect(),
        };
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(Box::new(resp))),
        );
        msg.finalize();
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        let at = 16 + EXPIRES_OFFSET;
        out[at..at + 4].copy_from_slice(&expires.to_ne_bytes());

        let mut done = NetlinkMessage::<SockDiagMessage>::new(
            header,
            NetlinkPayload::Done(DoneMessage::default()),
        );
        done.finalize();
        let start = out.len();
        out.resize(start + done.buffer_len(), 0);
        done.serialize(&mut out[start..]);
        out
    }

    /// `idiag_cookie[2]`: host-order words, low first.
    fn cookie_words(lo: u32, hi: u32) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..4].copy_from_slice(&lo.to_ne_bytes());
        c[4..].copy_from_slice(&hi.to_ne_bytes());
        c
    }

    #[test]
    fn parses_timewait_expiry_cookie_and_done() {
        let buf = fake_reply(7, 12_345);
        let mut out = Vec::new();
        assert!(parse_datagram(&buf, 7, Some(99), &mut out).unwrap());
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(s.state, TcpState::TimeWait);
        assert_eq!(s.timer_left_ms, Some(12_345));
        assert_eq!((s.sport, s.dport), (40000, 80));
        assert_eq!(s.family, Family::V4);
        assert_eq!(s.netns, Some(99));
        assert_eq!(s.cookie, (2 << 32) | 1);
    }

    fn attr(kind: u16, value: &[u8]) -> Nla {
        Nla::Other(netlink_packet_core::DefaultNla::new(kind, value.to_vec()))
    }

    /// The one socket a fake reply with `nlas` parses to.
    fn parsed_with(nlas: Vec<Nla>) -> SeenSocket {
        let buf = fake_reply_with(3, 0, TcpState::CloseWait, nlas);
        let mut out = Vec::new();
        assert!(parse_datagram(&buf, 3, None, &mut out).unwrap());
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    #[test]
    fn parses_the_cgroup_id_attribute() {
        let id: u64 = 0x0000_0001_0000_2a3f;
        // As the kernel lays it out: INET_DIAG_PAD (empty) before the u64,
        // among other attributes (INET_DIAG_SHUTDOWN, INET_DIAG_SOCKOPT).
        let s = parsed_with(vec![
            Nla::Shutdown(0),
            attr(20, &[]),
            attr(INET_DIAG_CGROUP_ID, &id.to_ne_bytes()),
            attr(22, &[0, 0]),
        ]);
        assert_eq!(s.cgroup, Some(id));
        assert_eq!(s.state, TcpState::CloseWait);
        assert_eq!(s.timer_left_ms, None);
    }

    #[test]
    fn a_socket_without_the_attribute_has_no_cgroup() {
        assert_eq!(parsed_with(Vec::new()).cgroup, None);
        // A timewait socket never has one.
        let buf = fake_reply(7, 1);
        let mut out = Vec::new();
        parse_datagram(&buf, 7, None, &mut out).unwrap();
        assert_eq!(out[0].cgroup, None);
    }

    #[test]
    fn a_cgroup_attribute_of_the_wrong_size_or_zero_is_ignored() {
        for value in [
            &[][..],
            &[1, 2, 3, 4][..],
            &[1; 7][..],
            &[1; 9][..],
            &[1; 16][..],
        ] {
            let s = parsed_with(vec![attr(INET_DIAG_CGROUP_ID, value)]);
            assert_eq!(s.cgroup, None, "{value:?}");
            assert_eq!((s.sport, s.dport), (40000, 80), "the socket still reads");
        }
        assert_eq!(
            parsed_with(vec![attr(INET_DIAG_CGROUP_ID, &[0; 8])]).cgroup,
            None
        );
        // The first well-formed one counts, a malformed one before it is skipped.
        let s = parsed_with(vec![
            attr(INET_DIAG_CGROUP_ID, &[9; 4]),
            attr(INET_DIAG_CGROUP_ID, &77u64.to_ne_bytes()),
        ]);
        assert_eq!(s.cgroup, Some(77));
    }

    #[test]
    fn a_damaged_attribute_never_panics() {
        let good = fake_reply_with(
            3,
            0,
            TcpState::Established,
            vec![attr(INET_DIAG_CGROUP_ID, &5u64.to_ne_bytes())],
        );
        // The attribute's header follows the 16-byte netlink header and the
        // 72-byte inet_diag_msg: every length it could claim, and every
        // message cut short, is an error or a socket, never a panic.
        let nla = 16 + 72;
        for claimed in [0u16, 1, 3, 4, 5, 8, 11, 12, 13, 200, u16::MAX] {
            let mut buf = good.clone();
            buf[nla..nla + 2].copy_from_slice(&claimed.to_ne_bytes());
            let mut out = Vec::new();
            if parse_datagram(&buf, 3, None, &mut out).is_ok() {
                assert!(out.len() <= 1);
                if claimed != 12 {
                    assert!(out.iter().all(|s| s.cgroup.is_none()), "{claimed}: {out:?}");
                }
            }
        }
        let len = u32::from_ne_bytes(good[..4].try_into().unwrap()) as usize;
        for cut in nla..len {
            let mut buf = good[..len].to_vec();
            buf[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            buf.truncate(cut);
            let mut out = Vec::new();
            let _ = parse_datagram(&buf, 3, None, &mut out);
        }
    }

    /// The listeners a fake reply of one socket in `state` with `nlas`
    /// parses to.
    fn listeners_of(state: TcpState, nlas: Vec<Nla>) -> Vec<ListenerSample> {
        let buf = fake_reply_with(4, 0, state, nlas);
        let mut out = Vec::new();
        let done = parse_datagram_with(&buf, 4, &mut |resp, _| {
            out.extend(to_listener(resp, Some(12)));
        })
        .unwrap();
        assert!(done);
        out
    }

    #[test]
    fn a_listener_takes_its_drops_from_skmeminfo() {
        use netlink_packet_sock_diag::inet::nlas::MemInfo;
        let meminfo = MemInfo {
            receive_queue: 0,
            receive_queue_max: 131_072,
            bottom_send_queues: 0,
            send_queue_max: 16_384,
            cache: 0,
            send_queue: 0,
            options: 0,
            backlog_queue_length: 0,
            drops: 76,
        };
        let got = listeners_of(
            TcpState::Listen,
            vec![
                Nla::MemInfo(meminfo),
                attr(INET_DIAG_CGROUP_ID, &9u64.to_ne_bytes()),
            ],
        );
        assert_eq!(got.len(), 1);
        let l = &got[0];
        assert_eq!((l.port, l.family, l.netns), (40000, Family::V4, Some(12)));
        assert_eq!(l.drops, Some(76));
        assert_eq!(l.cgroup, Some(9));
        assert_eq!(l.owner, None);
        // Without the attribute the count is unknown, not zero.
        assert_eq!(listeners_of(TcpState::Listen, Vec::new())[0].drops, None);
        // Only LISTEN sockets are listeners.
        assert!(listeners_of(TcpState::Established, Vec::new()).is_empty());
    }

    #[test]
    fn the_listener_request_asks_for_listen_and_skmeminfo() {
        let bytes = request_bytes(
            AF_INET6,
            5,
            1 << TcpState::Listen as u32,
            ExtensionFlags::SKMEMINFO,
        );
        // nlmsghdr (16), then inet_diag_req_v2: family, protocol, ext, pad,
        // states (u32).
        assert_eq!(bytes[16], AF_INET6);
        assert_eq!(bytes[17], IPPROTO_TCP);
        assert_eq!(bytes[18], 1 << (7 - 1), "INET_DIAG_SKMEMINFO");
        assert_eq!(
            u32::from_ne_bytes(bytes[20..24].try_into().unwrap()),
            1 << 10
        );
    }

    #[test]
    fn ignores_other_sequence_numbers() {
        let buf = fake_reply(7, 1);
        let mut out = Vec::new();
        assert!(!parse_datagram(&buf, 8, None, &mut out).unwrap());
        assert!(out.is_empty());
    }

    /// `ss -Htan` lines as (state, local port, peer port).
    fn ss_sockets() -> Vec<(TcpState, u16, u16)> {
        let out = Command::new("ss").arg("-Htan").output().expect("run ss");
        assert!(out.status.success(), "ss: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let state = ss_state(f.first()?)?;
                let port = |a: &str| {
                    a.rsplit_once(':')
                        .and_then(|(_, p)| p.parse().ok())
                        .unwrap_or(0)
                };
                Some((state, port(f.get(3)?), port(f.get(4)?)))
            })
            .collect()
    }

    fn ss_state(s: &str) -> Option<TcpState> {
        Some(match s {
            "ESTAB" => TcpState::Established,
            "UNCONN" => TcpState::Close,
            "FIN-WAIT-1" => TcpState::FinWait1,
            "FIN-WAIT-2" => TcpState::FinWait2,
            other => TcpState::parse(other)?,
        })
    }

    fn check_family(conns: &Conns, family: Family) {
        let all = dump_tcp().unwrap();
        let mine = conns.matching(&all);
        assert_eq!(state_counts(&mine), Conns::expected_counts(), "{mine:#?}");
        assert!(mine.iter().all(|s| s.family == family), "{mine:#?}");
        let own_ns = current_netns().unwrap();
        assert!(mine.iter().all(|s| s.netns == Some(own_ns)));

        let find = |state, sport, dport| {
            let hits: Vec<_> = mine
                .iter()
                .filter(|s| s.state == state && s.sport == sport && s.dport == dport)
                .collect();
            assert_eq!(hits.len(), 1, "{state} {sport}->{dport} in {mine:#?}");
            *hits[0]
        };
        let p = conns.port;
        let listen = find(TcpState::Listen, p, 0);
        assert_ne!(listen.inode, 0);
        find(TcpState::Established, p, conns.est_client);
        find(TcpState::Established, conns.est_client, p);
        let cw = find(TcpState::CloseWait, p, conns.close_wait_client);
        assert_eq!(cw.timer_left_ms, None);
        let tw = find(TcpState::TimeWait, conns.time_wait_client, p);
        let left = tw.timer_left_ms.expect("TIME_WAIT reports its timer");
        assert!((50_000..=60_500).contains(&left), "timer_left_ms {left}");
        assert_eq!(tw.inode, 0);
        assert_ne!(tw.cookie, 0);
        // The orphaned client of the CLOSE_WAIT pair is a timewait socket in
        // FIN_WAIT2, also on the timewait timer.
        let fw2 = find(TcpState::FinWait2, conns.close_wait_client, p);
        assert!(fw2.timer_left_ms.is_some(), "{fw2:?}");

        // Oracle: ss sees the same sockets on these ports.
        let mut ours: Vec<(TcpState, u16, u16)> =
            mine.iter().map(|s| (s.state, s.sport, s.dport)).collect();
        let mut theirs: Vec<(TcpState, u16, u16)> = ss_sockets()
            .into_iter()
            .filter(|&(_, l, r)| l == p || r == p)
            .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
        let mut by_state = BTreeMap::new();
        for (st, _, _) in &theirs {
            *by_state.entry(*st).or_insert(0usize) += 1;
        }
        assert_eq!(by_state, Conns::expected_counts());
    }

    #[test]
    fn dump_matches_ss_for_ipv4_loopback() {
        let conns = Conns::build_v4();
        check_family(&conns, Family::V4);
    }

    #[test]
    fn dump_matches_ss_for_ipv6_loopback() {
        let conns = Conns::build_v6();
        check_family(&conns, Family::V6);
    }

    #[test]
    fn dump_has_no_duplicates() {
        let _conns = Conns::build_v4();
        let all = dump_tcp().unwrap();
        let mut keys: Vec<_> = all.iter().map(|s| (s.cookie, s.state)).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    /// Looks `q` up until `ok` holds (2 s at most); the last answer.
    fn lookup_until(sock: &mut DiagSocket, q: TupleQuery, ok: impl Fn(&Lookup) -> bool) -> Lookup {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let mut out = Vec::new();
            sock.lookup(&[q], &mut out).unwrap();
            if ok(&out[0]) || std::time::Instant::now() > deadline {
                return out[0];
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn query_of(client: &std::net::TcpStream, cookie: Option<u64>) -> TupleQuery {
        let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        TupleQuery {
            family: if local.is_ipv4() {
                Family::V4
            } else {
                Family::V6
            },
            saddr: local.ip(),
            sport: local.port(),
            daddr: peer.ip(),
            dport: peer.port(),
            cookie,
        }
    }

    /// The client closes first: its socket becomes an orphan, then a
    /// timewait socket in FIN_WAIT2; the server closes: the same timewait
    /// socket (same cookie) is now TIME_WAIT. Another cookie, or a tuple
    /// nobody has, is gone.
    fn check_lookup_follows_an_orphan(ip: &str) {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let mut sock = DiagSocket::open().unwrap();
        assert_eq!(sock.netns(), current_netns().unwrap());
        // An orphan whose ACK arrived while close() still held its lock
        // stays a full socket in FIN_WAIT2 (rarely): take another one.
        let (q, server, cookie) = (0..10)
            .find_map(|_| {
                let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                let (server, _) = listener.accept().unwrap();
                let q = query_of(&client, None);
                let open = lookup_until(&mut sock, q, |_| true);
                assert!(
                    matches!(
                        open,
                        Lookup::Found {
                            state: TcpState::Established,
                            timewait: false,
                            ..
                        }
                    ),
                    "{open:?}"
                );
                drop(client);
                let fw2 = lookup_until(&mut sock, q, |l| {
                    matches!(
                        l,
                        Lookup::Found {
                            state: TcpState::FinWait2,
                            ..
                        }
                    )
                });
                match fw2 {
                    Lookup::Found {
                        state: TcpState::FinWait2,
                        timewait: true,
                        cookie,
                    } => Some((q, server, cookie)),
                    _ => None,
                }
            })
            .expect("an orphan in FIN_WAIT2 as a timewait socket");
        drop(server);
        let named = TupleQuery {
            cookie: Some(cookie),
            ..q
        };
        let tw = lookup_until(&mut sock, named, |l| {
            matches!(
                l,
                Lookup::Found {
                    state: TcpState::TimeWait,
                    ..
                }
            )
        });
        assert_eq!(
            tw,
            Lookup::Found {
                state: TcpState::TimeWait,
                timewait: true,
                cookie
            },
            "the same timewait socket, now TIME_WAIT"
        );
        let other = TupleQuery {
            cookie: Some(cookie ^ 1),
            ..q
        };
        let nobody = TupleQuery { sport: 1, ..q };
        let mut out = Vec::new();
        sock.lookup(&[other, nobody], &mut out).unwrap();
        assert_eq!(out, [Lookup::Gone, Lookup::Gone]);

        // More queries than one datagram holds: every answer in its place.
        let queries: Vec<TupleQuery> = (0..LOOKUP_BATCH * 2 + 7)
            .map(|i| if i % 3 == 0 { named } else { nobody })
            .collect();
        let mut out = Vec::new();
        sock.lookup(&queries, &mut out).unwrap();
        assert_eq!(out.len(), queries.len());
        for (i, a) in out.iter().enumerate() {
            if i % 3 == 0 {
                assert!(
                    matches!(
                        a,
                        Lookup::Found {
                            state: TcpState::TimeWait,
                            ..
                        }
                    ),
                    "{i}: {a:?}"
                );
            } else {
                assert_eq!(*a, Lookup::Gone, "{i}");
            }
        }
    }

    #[test]
    fn lookup_follows_an_orphan_ipv4() {
        check_lookup_follows_an_orphan("127.0.0.1");
    }

    #[test]
    fn lookup_follows_an_orphan_ipv6() {
        check_lookup_follows_an_orphan("::1");
    }

    #[test]
    fn dump_of_one_state_keeps_only_that_state() {
        let conns = Conns::build_v4();
        let mut sock = DiagSocket::open().unwrap();
        let mut out = Vec::new();
        sock.dump(AF_INET, 1 << TcpState::FinWait2 as u32, &mut out)
            .unwrap();
        assert!(out.iter().all(|s| s.state == TcpState::FinWait2), "{out:?}");
        let mine = conns.matching(&out);
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0].sport, conns.close_wait_client);
    }

    /// `n` orphans in FIN_WAIT2 (client closed first, server holds its
    /// end), in a namespace of their own: the cost of asking after them by
    /// tuple and by a dump of the FIN_WAIT2 state, then with every other
    /// server closed, so about half moved to TIME_WAIT (the dump then leaves
    /// those to look up). Numbers for docs/benchmarks.md.
    fn measure(n: usize) {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut servers = Vec::with_capacity(n);
        let mut queries = Vec::with_capacity(n);
        for _ in 0..n {
            let c = TcpStream::connect(addr).unwrap();
            let (s, _) = listener.accept().unwrap();
            queries.push(query_of(&c, None));
            servers.push(s);
        }
        let mut sock = DiagSocket::open().unwrap();
        let mut answers = Vec::with_capacity(n);
        // Settled: every client in FIN_WAIT2. Most are timewait sockets; an
        // orphan whose ACK arrived while close() still held its lock stays a
        // full socket (`sock_owned_by_user()` in tcp_rcv_state_process).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            answers.clear();
            sock.lookup(&queries, &mut answers).unwrap();
            let settled = in_state(&answers, TcpState::FinWait2);
            if settled == n {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{settled} of {n} in FIN_WAIT2"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let timewait = answers
            .iter()
            .filter(|a| matches!(a, Lookup::Found { timewait: true, .. }))
            .count();
        let fw2 = 1u32 << TcpState::FinWait2 as u32;
        let mut dumped = Vec::with_capacity(n);
        let runs = 9;
        let lookup_all = cost(runs, || {
            answers.clear();
            sock.lookup(&queries, &mut answers).unwrap();
        });
        let dump_fw2 = cost(runs, || {
            dumped.clear();
            sock.dump(AF_INET, fw2, &mut dumped).unwrap();
        });
        // Every other server closes: those orphans go to TIME_WAIT.
        for s in servers.iter().step_by(2) {
            s.shutdown(std::net::Shutdown::Both).unwrap();
        }
        let moved = |answers: &[Lookup]| in_state(answers, TcpState::TimeWait);
        loop {
            answers.clear();
            sock.lookup(&queries, &mut answers).unwrap();
            let still = in_state(&answers, TcpState::FinWait2);
            if still == n / 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{still} still in FIN_WAIT2"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let lookup_half = cost(runs, || {
            answers.clear();
            sock.lookup(&queries, &mut answers).unwrap();
        });
        let moved = moved(&answers);
        // The dump, then lookups of those it did not list.
        let hybrid = cost(runs, || {
            dumped.clear();
            sock.dump(AF_INET, fw2, &mut dumped).unwrap();
            let listed: std::collections::HashSet<(u16, u16)> =
                dumped.iter().map(|s| (s.sport, s.dport)).collect();
            let absent: Vec<TupleQuery> = queries
                .iter()
                .filter(|q| !listed.contains(&(q.sport, q.dport)))
                .copied()
                .collect();
            answers.clear();
            sock.lookup(&absent, &mut answers).unwrap();
        });
        println!(
            "n={n:>6} ({timewait} timewait)  all FIN_WAIT2: lookups cpu {} us wall {} us | dump(FIN_WAIT2) cpu {} us wall {} us  \
             || {moved} moved to TIME_WAIT: lookups cpu {} us wall {} us | dump + lookups of the rest cpu {} us wall {} us",
            lookup_all.0,
            lookup_all.1,
            dump_fw2.0,
            dump_fw2.1,
            lookup_half.0,
            lookup_half.1,
            hybrid.0,
            hybrid.1
        );
        drop(servers);
    }

    /// Sockets found in `state` among the answers.
    fn in_state(answers: &[Lookup], state: TcpState) -> usize {
        answers
            .iter()
            .filter(|a| matches!(a, Lookup::Found { state: s, .. } if *s == state))
            .count()
    }

    #[test]
    #[ignore = "measurement: cargo test -p tcptrace --lib -- --ignored --nocapture measure_"]
    fn measure_lookup_and_dump_costs() {
        let name = format!("tcptrace-measure-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "delete", &name]).status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new("ip")
                .args(["-n", &name, "link", "set", "lo", "up"])
                .status()
                .unwrap()
                .success()
        );
        // A new namespace keeps at most half the ehash size of timewait
        // sockets (orphans beyond are destroyed): the host's cap instead.
        assert!(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &name,
                    "sysctl",
                    "-qw",
                    "net.ipv4.tcp_max_tw_buckets=131072"
                ])
                .status()
                .unwrap()
                .success()
        );
        // The servers hold 10,000 descriptors: the soft limit up to the hard one.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid rlimit pointers; our own descriptor limit.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        assert!(
            limit.rlim_cur > 10_100,
            "needs 10,100 descriptors: {limit:?}"
        );
        let path = std::path::PathBuf::from(format!("/run/netns/{name}"));
        for n in [100, 1_000, 10_000] {
            crate::seed::in_namespace(&path, move || measure(n)).unwrap();
        }
        let _ = Command::new("ip").args(["netns", "delete", &name]).status();
    }
}
