//! The one record the eBPF program writes to the ring buffer.
//!
//! # Wire format
//!
//! Every ring-buffer record is exactly `size_of::<RawEvent>()` (120) bytes, laid out
//! as [`RawEvent`] in native (little-endian on x86_64) byte order. A record of any
//! other length, or with an unknown [`EventKind`], is a decode error in userspace.
//! Ports are host order; addresses are network order, IPv4 in the first 4 bytes
//! of the 16-byte fields. Timestamps are `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).

/// What a [`RawEvent`] describes. Ids are never reused: retire, don't renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A full socket changed state (`sock:inet_sock_set_state`).
    Transition = 1,
    /// A timewait socket was created and its timer armed (TIME_WAIT or FIN_WAIT2 substate).
    TwBegin = 2,
    /// A timewait socket's timer was re-armed (e.g. substate FIN_WAIT2 -> TIME_WAIT).
    TwRearm = 3,
    /// A timewait socket ended: its timer expired or it was killed early.
    TwEnd = 4,
    /// Userspace only: events were lost (never written by the kernel).
    Lost = 5,
    /// accept() returned this socket to a process other than the one known
    /// (or to anyone, when the owner was unknown): the new owner, with the
    /// socket's tuple and current state in `old` and `new`. Without it a
    /// child socket of a listener that predates tracing stays ownerless when
    /// its peer closes before accept() returns.
    Accept = 6,
    /// Userspace only: a timewait socket found in a new substate (FIN_WAIT2
    /// -> TIME_WAIT) by asking the kernel (sock_diag), because the re-arm
    /// that goes with it fired no timer tracepoint (same timer-wheel
    /// bucket). `ts_ns` is when it was found; `prev_ns` the time since it
    /// was last known in `old` (its begin, or the previous check): the
    /// change happened within it.
    TwSubstate = 7,
    /// A TCP segment about a connection attempt (a SYN, or a segment that
    /// reached a listener or a request socket) the kernel freed with a
    /// drop reason (`skb:kfree_skb`), one of the reasons userspace asked
    /// for. Not a socket's transition: decoded apart
    /// (`tcptrace_core::decode::syn_drop`). See [`RawEvent`] for its fields.
    Drop = 8,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Transition,
            2 => Self::TwBegin,
            3 => Self::TwRearm,
            4 => Self::TwEnd,
            5 => Self::Lost,
            6 => Self::Accept,
            7 => Self::TwSubstate,
            8 => Self::Drop,
            _ => return None,
        })
    }
}

/// Why a timewait socket ended ([`RawEvent::reason`] of a [`EventKind::TwEnd`]),
/// or, in a [`EventKind::Transition`] to CLOSE, that none was made
/// ([`TwEndReason::Overflow`]). Ids are never reused: retire, don't renumber.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TwEndReason {
    /// Not a `TwEnd` event (and a transition with nothing to tell).
    None = 0,
    /// The timer ran out (`tw_timer_handler`): the normal end after ~60 s.
    Expired = 1,
    /// The timer was cancelled and not re-armed, for none of the reasons
    /// below: an RST or a SYN the timewait socket answered, for instance.
    Killed = 2,
    /// A connect() took the timewait socket's 4-tuple over (`tcp_tw_reuse`):
    /// `link` is the connecting socket, [`RawEvent::reused_by`] its task.
    Reused = 3,
    /// The network namespace is being torn down (`inet_twsk_purge()`).
    Purged = 4,
    /// Transitions only: the socket left FIN_WAIT2 or CLOSING for CLOSE
    /// with no timewait socket in its place and no error: `tcp_time_wait()`
    /// could not allocate one (`tcp_max_tw_buckets` reached, or out of
    /// memory; the kernel counts TCPTimeWaitOverflow).
    Overflow = 5,
}

impl TwEndReason {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::None,
            1 => Self::Expired,
            2 => Self::Killed,
            3 => Self::Reused,
            4 => Self::Purged,
            5 => Self::Overflow,
            _ => return None,
        })
    }
}

/// Bits of [`RawEvent::flags`].
pub mod event_flags {
    /// `tgid`, `tid`, `comm` and `cgroup` describe the socket's owner.
    pub const OWNER_KNOWN: u8 = 1 << 0;
    /// `prev_ns` is valid (the socket was seen entering its previous state).
    pub const PREV_KNOWN: u8 = 1 << 1;
    /// `link` holds the address of the related socket (a `TwBegin`'s full socket).
    pub const LINKED: u8 = 1 << 2;
    /// The owner was inherited from the listening socket and no accept() was seen yet.
    pub const OWNER_FROM_LISTENER: u8 = 1 << 3;
    /// `netns` is valid.
    pub const NETNS_KNOWN: u8 = 1 << 4;
    /// The owner's task was below one of the in-kernel filter's cgroup
    /// ancestors when it was captured (set only while that filter is on;
    /// an owner inherited from a listener carries the listener's).
    pub const CGROUP_MATCH: u8 = 1 << 5;
    /// `stack_id` holds the kernel's id (in the `STACKS` map) of the user
    /// stack captured when the owner opened the socket (connect, listen,
    /// accept; with `--stacks`). Travels with the owner.
    pub const STACK_KNOWN: u8 = 1 << 6;
}

/// One event, as written by the kernel. See the module docs for the wire format.
///
/// Field meaning by kind:
/// - `Transition`: `old` -> `new` state of the full socket `sk`; `prev_ns` = time spent in `old`.
/// - `TwBegin`: `sk` is the timewait socket, `new` its substate (TIME_WAIT or FIN_WAIT2),
///   `old` the state of the full socket `link` it replaced (0 if not linked).
/// - `TwRearm`: `new` the substate now; `prev_ns` time since `TwBegin`.
/// - `TwEnd`: `old` the substate at the end, `new` = CLOSE, `reason` why,
///   `prev_ns` = time spent as a timewait socket; when `reason` is
///   [`TwEndReason::Reused`], `link` the connecting socket (LINKED) and
///   `reused_by` the tgid of the task whose connect() reused it.
/// - `Transition` to CLOSE: `reason` is [`TwEndReason::Overflow`] when the
///   socket should have become a timewait socket and none was made.
/// - `Drop`: `sk` the socket that received the segment (`rx_sk`: a
///   listener, a request or timewait socket; 0 when none did), `old` its
///   state (0 when none), `saddr`/`sport` the segment's DESTINATION (the
///   local side, where a listener would be), `daddr`/`dport` its source
///   (the remote peer), `family`, `netns` (with
///   [`event_flags::NETNS_KNOWN`]) from `rx_sk`'s namespace or else the
///   receiving device's, `tid` the kernel's `enum skb_drop_reason` value
///   (numbers change between kernels: the names are in the tracepoint's
///   format file), `new` the TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04,
///   PSH 0x08, ACK 0x10), `prev_ns` the drops of traced reasons this CPU did
///   not report (its rate limit) since the previous one it reported. No
///   owner.
/// - Any kind with an owner: `stack_id` with [`event_flags::STACK_KNOWN`] is
///   the user stack captured with the owner (connect, listen, accept;
///   `--stacks` only). It takes 2 of the 3 bytes of padding after `reason`,
///   so the record stays 120 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    pub ts_ns: u64,
    pub sk: u64,
    pub prev_ns: u64,
    pub cgroup: u64,
    pub link: u64,
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub netns: u32,
    pub sport: u16,
    pub dport: u16,
    pub old: u8,
    pub new: u8,
    pub family: u8,
    pub flags: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
    pub reason: u8,
    pub _pad: u8,
    /// With [`event_flags::STACK_KNOWN`]: the owner's user stack id (an id
    /// in the `STACKS` map, meaningful in the process `tgid`; 0 otherwise).
    pub stack_id: u16,
    /// `TwEnd` with [`TwEndReason::Reused`]: tgid of the reusing task (0 otherwise).
    pub reused_by: u32,
}

impl RawEvent {
    pub const SIZE: usize = core::mem::size_of::<Self>();

    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            sk: 0,
            prev_ns: 0,
            cgroup: 0,
            link: 0,
            kind: 0,
            tgid: 0,
            tid: 0,
            netns: 0,
            sport: 0,
            dport: 0,
            old: 0,
            new: 0,
            family: 0,
            flags: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; 16],
            reason: 0,
            _pad: 0,
            stack_id: 0,
            reused_by: 0,
        }
    }
}

const _: () = assert!(RawEvent::SIZE == 120);
const _: () = assert!(core::mem::offset_of!(RawEvent, stack_id) == 114);
const _: () = assert!(core::mem::offset_of!(RawEvent, reused_by) == 116);

#[cfg(feature = "user")]
unsafe impl aya::Pod for RawEvent {}
