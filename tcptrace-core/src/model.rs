//! The decoded event model every command works with: TCP states, families,
//! owners and events in std types. Pure: no kernel, no I/O.

use std::{fmt, net::IpAddr};

pub use tcptrace_common::EventKind;

/// A TCP state, numbered as in the kernel (`include/net/tcp_states.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get((v as usize).checked_sub(1)?).copied()
    }

    /// The name the kernel uses, without its `TCP_` prefix ("ESTABLISHED", ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    /// Parses a state name: kernel spelling, any case, `-` or `_`, optional
    /// `TCP_` prefix ("close-wait", "TCP_CLOSE_WAIT", "CLOSE_WAIT").
    pub fn parse(s: &str) -> Option<Self> {
        let norm = s.trim().to_ascii_uppercase().replace('-', "_");
        let norm = norm.strip_prefix("TCP_").unwrap_or(&norm);
        Self::ALL.into_iter().find(|st| st.name() == norm)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The JSON/text spelling: "ipv4" / "ipv6".
    pub const fn name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }
}

/// A task command name (`TASK_COMM_LEN` bytes, NUL padded). Kept inline so the
/// per-event path never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    pub fn as_bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        &self.0[..len]
    }

    /// Lossy UTF-8 view.
    pub fn to_str_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }

    /// From a name, truncated to the kernel's 15 characters.
    pub fn from_name(name: &str) -> Self {
        let mut out = [0u8; 16];
        let bytes = name.as_bytes();
        let n = bytes.len().min(15);
        out[..n].copy_from_slice(&bytes[..n]);
        Self(out)
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_str_lossy())
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.to_str_lossy())
    }
}

/// The process that owns a socket (captured at connect/listen/accept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub comm: Comm,
    /// cgroup v2 id.
    pub cgroup: u64,
    /// Inherited from the listening socket; the accepting process is not known yet.
    pub from_listener: bool,
}

/// Why a timewait socket ended ([`Event::reason`] of a `TwEnd`), or, on the
/// transition to CLOSE of a socket that should have become one, that none
/// was made ([`TwEndReason::Overflow`]). The wire form is
/// [`tcptrace_common::TwEndReason`] (see [`crate::decode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwEndReason {
    /// The timer ran out: the normal end after ~60 s.
    Expired,
    /// Ended early for none of the reasons below: an RST or a SYN it answered.
    Killed,
    /// A connect() took its 4-tuple over (`tcp_tw_reuse`): `Event::link` is
    /// the connecting socket; `by` the process that called connect().
    Reused { by: Option<Reuser> },
    /// Its network namespace was deleted (`inet_twsk_purge()`).
    Purged,
    /// Transitions only (FIN_WAIT2 or CLOSING -> CLOSE): no timewait socket
    /// was made (`tcp_max_tw_buckets` reached, or no memory: the kernel
    /// counts TCPTimeWaitOverflow).
    Overflow,
}

impl TwEndReason {
    /// `Reused` with no process known.
    pub const REUSED: Self = Self::Reused { by: None };
}

/// The process whose connect() reused a timewait socket's 4-tuple: its pid
/// (tgid) from the kernel, its name when known (from the reusing socket's
/// CLOSE -> SYN_SENT, or `/proc` right after).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reuser {
    pub pid: u32,
    pub comm: Option<Comm>,
}

/// One decoded kernel event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub kind: EventKind,
    /// Address of the socket (the timewait socket for `Tw*` events).
    pub sk: u64,
    /// For `TwBegin`: the full socket the timewait socket replaced. For a
    /// `TwEnd` reused: the socket whose connect() took its 4-tuple over.
    pub link: Option<u64>,
    pub owner: Option<Owner>,
    /// Network namespace inode.
    pub netns: Option<u32>,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Transition: state left. TwBegin: the full socket's last state. TwEnd: the
    /// timewait substate. `None` when unknown.
    pub old: Option<TcpState>,
    /// Transition: state entered. Tw*: substate (TIME_WAIT / FIN_WAIT2). TwEnd: CLOSE.
    pub new: TcpState,
    /// Time spent in `old` (TwEnd: time as a timewait socket), when known.
    pub prev_ns: Option<u64>,
    /// TwEnd: why it ended. Transition to CLOSE: `Some(Overflow)` when no
    /// timewait socket could be made. `None` otherwise.
    pub reason: Option<TwEndReason>,
    /// The kernel's id of the user stack captured when the owner opened this
    /// socket (connect, listen, accept) with `--stacks`; meaningful with
    /// `owner.pid` ([`crate::stacks::StackKey`]). `None` without `--stacks`,
    /// for sockets opened before tracing, and when the kernel missed it.
    pub stack: Option<u32>,
}

/// Lost events since the last report, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Dropped because the ring buffer was full.
    pub ring_full: u64,
    /// Hook invocations the kernel skipped because another BPF program was
    /// running on the same CPU (`bpf_prog_info.recursion_misses`).
    pub recursion_misses: u64,
    /// Failed inserts into the owner map.
    pub map_full: u64,
    /// Events a program dropped because a probe read, a scratch lookup or
    /// another helper failed in the kernel.
    pub probe_failed: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        // Saturating: counts read from a damaged recording may be anything.
        self.ring_full
            .saturating_add(self.recursion_misses)
            .saturating_add(self.map_full)
            .saturating_add(self.probe_failed)
    }

    pub fn is_zero(&self) -> bool {
        self.total() == 0
    }

    /// Both counts added (saturating).
    pub fn saturating_add(&self, other: &Lost) -> Lost {
        Lost {
            ring_full: self.ring_full.saturating_add(other.ring_full),
            recursion_misses: self.recursion_misses.saturating_add(other.recursion_misses),
            map_full: self.map_full.saturating_add(other.map_full),
            probe_failed: self.probe_failed.saturating_add(other.probe_failed),
        }
    }

    /// Difference from an earlier cumulative reading.
    pub fn since(&self, earlier: &Lost) -> Lost {
        Lost {
            ring_full: self.ring_full.saturating_sub(earlier.ring_full),
            recursion_misses: self
                .recursion_misses
                .saturating_sub(earlier.recursion_misses),
            map_full: self.map_full.saturating_sub(earlier.map_full),
            probe_failed: self.probe_failed.saturating_sub(earlier.probe_failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_kernel_names_in_any_spelling() {
        assert_eq!(TcpState::parse("close-wait"), Some(TcpState::CloseWait));
        assert_eq!(TcpState::parse("CLOSE_WAIT"), Some(TcpState::CloseWait));
        assert_eq!(TcpState::parse("tcp_close_wait"), Some(TcpState::CloseWait));
        assert_eq!(TcpState::parse("TCP-CLOSE-WAIT"), Some(TcpState::CloseWait));
        assert_eq!(
            TcpState::parse(" Established "),
            Some(TcpState::Established)
        );
        assert_eq!(TcpState::parse("new_syn_recv"), Some(TcpState::NewSynRecv));
    }

    #[test]
    fn parse_rejects_unknown_names() {
        for s in ["bogus", "", "TCP_", "CLOSEWAIT", "tcp_tcp_close", "7"] {
            assert_eq!(TcpState::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn parse_inverts_name_for_every_state() {
        for st in TcpState::ALL {
            assert_eq!(TcpState::parse(st.name()), Some(st));
            assert_eq!(TcpState::parse(&st.name().to_lowercase()), Some(st));
        }
    }

    #[test]
    fn from_u8_rejects_zero_and_thirteen() {
        assert_eq!(TcpState::from_u8(0), None);
        assert_eq!(TcpState::from_u8(13), None);
        assert_eq!(TcpState::from_u8(u8::MAX), None);
    }

    #[test]
    fn from_u8_maps_kernel_numbers_to_kernel_names_in_order() {
        let kernel_order = [
            "ESTABLISHED",
            "SYN_SENT",
            "SYN_RECV",
            "FIN_WAIT1",
            "FIN_WAIT2",
            "TIME_WAIT",
            "CLOSE",
            "CLOSE_WAIT",
            "LAST_ACK",
            "LISTEN",
            "CLOSING",
            "NEW_SYN_RECV",
        ];
        for (v, name) in (1u8..=12).zip(kernel_order) {
            let st = TcpState::from_u8(v).expect("valid state number");
            assert_eq!(st.name(), name);
            assert_eq!(st as u8, v);
            assert_eq!(st.to_string(), name);
        }
    }

    #[test]
    fn state_numbers_match_shared_kernel_constants() {
        use tcptrace_common::tcp_state as k;
        let pairs = [
            (TcpState::Established, k::ESTABLISHED),
            (TcpState::SynSent, k::SYN_SENT),
            (TcpState::SynRecv, k::SYN_RECV),
            (TcpState::FinWait1, k::FIN_WAIT1),
            (TcpState::FinWait2, k::FIN_WAIT2),
            (TcpState::TimeWait, k::TIME_WAIT),
            (TcpState::Close, k::CLOSE),
            (TcpState::CloseWait, k::CLOSE_WAIT),
            (TcpState::LastAck, k::LAST_ACK),
            (TcpState::Listen, k::LISTEN),
            (TcpState::Closing, k::CLOSING),
            (TcpState::NewSynRecv, k::NEW_SYN_RECV),
        ];
        for (st, v) in pairs {
            assert_eq!(st as u8, v, "{st}");
        }
        assert_eq!(TcpState::from_u8(k::MAX), None);
    }

    #[test]
    fn state_display_honours_width() {
        assert_eq!(format!("{:<8}|", TcpState::Close), "CLOSE   |");
    }

    #[test]
    fn family_names_are_ipv4_and_ipv6() {
        assert_eq!(Family::V4.name(), "ipv4");
        assert_eq!(Family::V6.name(), "ipv6");
    }

    #[test]
    fn comm_from_name_truncates_to_15_bytes() {
        let c = Comm::from_name("a-very-long-command-name");
        assert_eq!(c.as_bytes(), b"a-very-long-com");
        assert_eq!(c.0[15], 0, "last byte stays NUL like TASK_COMM_LEN");
        assert_eq!(c.to_string(), "a-very-long-com");
    }

    #[test]
    fn comm_short_name_displays_and_pads() {
        let c = Comm::from_name("curl");
        assert_eq!(c.as_bytes(), b"curl");
        assert_eq!(c.to_string(), "curl");
        assert_eq!(format!("{c:<6}|"), "curl  |");
        assert_eq!(format!("{c:?}"), "\"curl\"");
    }

    #[test]
    fn comm_without_nul_uses_all_16_bytes() {
        let c = Comm(*b"0123456789abcdef");
        assert_eq!(c.as_bytes(), b"0123456789abcdef");
    }

    #[test]
    fn comm_empty_and_default_are_empty_strings() {
        assert_eq!(Comm::from_name("").to_string(), "");
        assert_eq!(Comm::default().as_bytes(), b"");
    }

    #[test]
    fn comm_invalid_utf8_displays_lossily() {
        let mut raw = [0u8; 16];
        raw[..3].copy_from_slice(&[b'a', 0xff, b'b']);
        assert_eq!(Comm(raw).to_string(), "a\u{fffd}b");
    }

    #[test]
    fn lost_total_sums_causes() {
        let l = Lost {
            ring_full: 1,
            recursion_misses: 2,
            map_full: 3,
            probe_failed: 4,
        };
        assert_eq!(l.total(), 10);
        assert!(!l.is_zero());
        assert!(Lost::default().is_zero());
    }

    #[test]
    fn lost_since_subtracts_per_cause() {
        let now = Lost {
            ring_full: 10,
            recursion_misses: 20,
            map_full: 30,
            probe_failed: 0,
        };
        let earlier = Lost {
            ring_full: 1,
            recursion_misses: 2,
            map_full: 3,
            probe_failed: 0,
        };
        assert_eq!(
            now.since(&earlier),
            Lost {
                ring_full: 9,
                recursion_misses: 18,
                map_full: 27,
                probe_failed: 0,
            }
        );
    }

    #[test]
    fn lost_since_saturates_at_zero_when_counters_go_backwards() {
        let now = Lost {
            ring_full: 1,
            recursion_misses: 0,
            map_full: 5,
            probe_failed: 0,
        };
        let earlier = Lost {
            ring_full: 2,
            recursion_misses: u64::MAX,
            map_full: 5,
            probe_failed: 0,
        };
        assert_eq!(now.since(&earlier), Lost::default());
    }
}

/// A socket as `NETLINK_SOCK_DIAG` (what `ss` uses) reports it: the startup
/// snapshot and periodic reconciliation. Joined to kernel events by 4-tuple
/// and network namespace, since sock_diag does not reveal socket addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenSocket {
    /// Inode of the network namespace it was dumped from.
    pub netns: Option<u32>,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub state: TcpState,
    /// Socket inode (0 for TIME_WAIT and other sockets no file refers to).
    pub inode: u64,
    /// The process holding the socket's inode, from /proc/PID/fd.
    pub owner: Option<SeenOwner>,
    /// For TIME_WAIT (and FIN_WAIT2 orphans): time left on the timewait timer.
    pub timer_left_ms: Option<u32>,
    /// The kernel's socket cookie.
    pub cookie: u64,
    /// The cgroup v2 id the socket was created in (`INET_DIAG_CGROUP_ID`:
    /// the creating process's cgroup, a listener's for the sockets it
    /// accepted), whatever became of that process since. Every full socket
    /// has one; timewait and request sockets have none (`None`), nor do
    /// recordings made before it was kept. A seeded socket's workload
    /// comes from it (see [`crate::conn::ConnTable::seed`]).
    pub cgroup: Option<u64>,
}

/// A process holding a socket, from /proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeenOwner {
    pub pid: u32,
    pub comm: Comm,
}
