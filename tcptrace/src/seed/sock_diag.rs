//! Dumps every TCP socket of the calling thread's network namespace through
//! `NETLINK_SOCK_DIAG`, the interface `ss` uses. Sockets that existed before
//! the probes attached never produce events; this dump is how they become
//! known (at startup and on each reconciliation).

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use tcptrace_core::model::{Family, SeenSocket, TcpState};

/// Receive buffer size. The kernel fills dump datagrams up to 32 KiB when
/// the reader offers that much; more room only avoids truncation.
const RECV_BUF: usize = 64 * 1024;

/// Offset of `idiag_expires` in `struct inet_diag_msg`: family, state, timer,
/// retrans (1 byte each), then the 48-byte `inet_diag_sockid`. Read raw
/// because the crate drops the value for the TIME_WAIT timer.
const EXPIRES_OFFSET: usize = 4 + 48;

/// All TCP sockets (IPv4, then IPv6; every state) of the calling thread's
/// network namespace, without owners.
pub fn dump_tcp() -> Result<Vec<SeenSocket>> {
    let netns = Some(current_netns()?);
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context(
        "opening a NETLINK_SOCK_DIAG socket: load the diag modules (`modprobe inet_diag tcp_diag`)",
    )?;
    socket.bind_auto().context(
        "binding the NETLINK_SOCK_DIAG socket: check netlink is not restricted (seccomp/LSM)",
    )?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the NETLINK_SOCK_DIAG socket to the kernel: check netlink is not restricted (seccomp/LSM)")?;

    let mut out = Vec::new();
    // Separate AF_INET and AF_INET6 requests: each only reports sockets of
    // its own family, so nothing is listed twice.
    for (seq, family) in [(1u32, AF_INET), (2u32, AF_INET6)] {
        dump_family(&socket, family, seq, netns, &mut out)?;
    }
    Ok(out)
}

/// Inode of the calling thread's network namespace.
pub fn current_netns() -> Result<u32> {
    let md = std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading /proc/thread-self/ns/net: mount /proc (Linux >= 3.17)")?;
    Ok(md.ino() as u32)
}

fn dump_family(
    socket: &Socket,
    family: u8,
    seq: u32,
    netns: Option<u32>,
    out: &mut Vec<SeenSocket>,
) -> Result<()> {
    let request = request_bytes(family, seq);
    socket.send(&request, 0).context(
        "sending the sock_diag dump request: check netlink is not restricted (seccomp/LSM)",
    )?;

    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        let n = match socket.recv(&mut buf, libc::MSG_TRUNC) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).context(
                    "reading the sock_diag dump reply: retry; check netlink is not restricted (seccomp/LSM)",
                );
            }
        };
        if n > buf.len() {
            bail!(
                "sock_diag reply of {n} bytes truncated to {}: this is a tcptrace bug, please report it",
                buf.len()
            );
        }
        if parse_datagram(&buf, seq, netns, out)? {
            return Ok(());
        }
    }
}

/// An `inet_diag_req_v2` dump request for every TCP state of `family`.
fn request_bytes(family: u8, seq: u32) -> Vec<u8> {
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
            extensions: ExtensionFlags::empty(),
            // Every bit, like `ss -a`: includes NEW_SYN_RECV and any future state.
            states: StateFlags::from_bits_retain(u32::MAX),
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
                let expires = payload
                    .get(EXPIRES_OFFSET..EXPIRES_OFFSET + 4)
                    .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if let Some(s) = to_seen(&resp, expires, netns) {
                    out.push(s);
                }
            }
            _ => {}
        }
    }
    Ok(false)
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
    // `idiag_cookie` is two host-order u32 words, low word first.
    let c = id.cookie;
    let cookie = u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        | u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]])) << 32;
    // `Timer::TimeWait` is `idiag_timer == 3`, set for every timewait socket
    // (substate TIME_WAIT or FIN_WAIT2).
    let timer_left_ms = (h.timer == Some(Timer::TimeWait)).then_some(expires_ms);
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::testutil::{Conns, state_counts};
    use std::{collections::BTreeMap, process::Command};

    /// A reply datagram: one TIME_WAIT socket with a raw expires value, then
    /// NLMSG_DONE.
    fn fake_reply(seq: u32, expires: u32) -> Vec<u8> {
        use netlink_packet_core::DoneMessage;
        use netlink_packet_sock_diag::inet::InetResponseHeader;

        let resp = InetResponse {
            header: InetResponseHeader {
                family: AF_INET,
                state: TcpState::TimeWait as u8,
                timer: Some(Timer::TimeWait),
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
            nlas: Default::default(),
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
}
