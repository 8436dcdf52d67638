//! Listeners and the connection attempts dropped at them: a SYN (or the
//! handshake's last ACK) the kernel throws away never changes a socket's
//! state, so no transition shows it. Two sources tell, and this module
//! joins them per listener (ip:port in a network namespace):
//!
//! - **samples** ([`ListenerSample`], about once a second, from sock_diag):
//!   each listener's accept queue (depth and limit: a LISTEN socket's
//!   rqueue and wqueue) and its drop count (`SK_MEMINFO_DROPS`: the kernel's
//!   `tcp_listendrop()` bumps it with `ListenDrops` for every SYN or ACK the
//!   listener dropped), with the namespace's counters ([`DropCounters`]:
//!   `ListenOverflows`, `TCPReqQFullDrop`, PAWS...) to tell why. On this
//!   kernel a SYN dropped because the accept queue is full is *consumed*,
//!   not freed with a reason (`tcp_rcv_state_process` calls `consume_skb`),
//!   so the per-listener count and the namespace's counters are the only
//!   witnesses of the commonest case;
//! - **kernel drops** ([`SynDrop`], from the `skb:kfree_skb` tracepoint with
//!   its `reason`): the packet's addresses and the kernel's own reason for
//!   the drops that have one (the handshake's ACK at a full queue, PAWS and
//!   timestamp rejects, SYNs to a port nobody listens on, netfilter...),
//!   rate-limited in the kernel with the count of those not reported one by
//!   one.
//!
//! A listener's count delta that its kernel-reported drops do not explain
//! is given a reason from its namespace's counter deltas over the same
//! interval ([`ListenerTable::apply_sample`]): `ListenOverflows` first (to
//! listeners whose queue was full), then `TCPReqQFullDrop`, the rest as
//! [`DropReason::ListenDrop`]. Pure: no kernel, no I/O; fed by the live
//! source and by recordings alike.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;

use crate::model::{Family, SeenOwner, TcpState};

/// Why a connection attempt was dropped. Ids are stable (recordings keep
/// them): retire, never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// The accept queue was full (`ListenOverflows`; the kernel's
    /// `TCP_LISTEN_OVERFLOW`): the application does not accept() fast
    /// enough, or its backlog is too small.
    AcceptQueueFull = 1,
    /// The SYN queue was full and SYN cookies are off (`TCPReqQFullDrop`).
    SynQueueFull = 2,
    /// A PAWS (timestamp) check rejected the segment (`TCP_RFC7323_PAWS`,
    /// `TCP_RFC7323_PAWS_ACK`; `PAWSPassive`/`PAWSEstab`): behind NAT,
    /// clients with unrelated timestamp clocks.
    Paws = 3,
    /// A SYN hit a TIME_WAIT socket of the same 4-tuple and failed its PAWS
    /// check (`TCP_RFC7323_TW_PAWS`).
    TimewaitPaws = 4,
    /// The echoed timestamp was wrong (`TCP_RFC7323_TSECR`).
    TimestampEcho = 5,
    /// An invalid SYN (`TCP_INVALID_SYN`).
    InvalidSyn = 6,
    /// Nobody listens on that address and port (`NO_SOCKET`): the kernel
    /// answers with a reset.
    NoListener = 7,
    /// Flags no state accepts (`TCP_FLAGS`, e.g. SYN+FIN).
    BadFlags = 8,
    /// A firewall rule dropped it (`NETFILTER_DROP`).
    Netfilter = 9,
    /// A socket filter (BPF/`SO_ATTACH_FILTER`) dropped it (`SOCKET_FILTER`).
    SocketFilter = 10,
    /// TCP-MD5 or TCP-AO authentication failed (`TCP_MD5*`, `TCP_AO*`,
    /// `TCP_AUTH_HDR`).
    Auth = 11,
    /// Counted by the listener (`ListenDrops`) with no finer reason in its
    /// namespace's counters.
    ListenDrop = 12,
    /// Another reason the kernel names (see the event's `kernel_reason`).
    Other = 13,
}

impl DropReason {
    pub const ALL: [DropReason; 13] = [
        Self::AcceptQueueFull,
        Self::SynQueueFull,
        Self::Paws,
        Self::TimewaitPaws,
        Self::TimestampEcho,
        Self::InvalidSyn,
        Self::NoListener,
        Self::BadFlags,
        Self::Netfilter,
        Self::SocketFilter,
        Self::Auth,
        Self::ListenDrop,
        Self::Other,
    ];
    /// How many reasons there are ([`ReasonCounts`] has one slot each).
    pub const COUNT: usize = Self::ALL.len();

    pub const fn id(self) -> u8 {
        self as u8
    }

    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.get(usize::from(id).checked_sub(1)?).copied()
    }

    /// Slot in a [`ReasonCounts`].
    const fn slot(self) -> usize {
        self as usize - 1
    }

    /// The name in JSON, metrics labels and rules (snake_case).
    pub const fn name(self) -> &'static str {
        match self {
            Self::AcceptQueueFull => "accept_queue_full",
            Self::SynQueueFull => "syn_queue_full",
            Self::Paws => "paws",
            Self::TimewaitPaws => "timewait_paws",
            Self::TimestampEcho => "timestamp_echo",
            Self::InvalidSyn => "invalid_syn",
            Self::NoListener => "no_listener",
            Self::BadFlags => "bad_flags",
            Self::Netfilter => "netfilter",
            Self::SocketFilter => "socket_filter",
            Self::Auth => "auth",
            Self::ListenDrop => "listen_drop",
            Self::Other => "other",
        }
    }

    /// What it means, in a few words (text output, `top`).
    pub const fn label(self) -> &'static str {
        match self {
            Self::AcceptQueueFull => "accept queue full",
            Self::SynQueueFull => "SYN queue full",
            Self::Paws => "PAWS/timestamp reject",
            Self::TimewaitPaws => "PAWS reject at a TIME_WAIT socket",
            Self::TimestampEcho => "bad timestamp echo",
            Self::InvalidSyn => "invalid SYN",
            Self::NoListener => "no listener (reset)",
            Self::BadFlags => "bad TCP flags",
            Self::Netfilter => "firewall (netfilter)",
            Self::SocketFilter => "socket filter",
            Self::Auth => "MD5/AO authentication",
            Self::ListenDrop => "listen drop (no finer reason)",
            Self::Other => "other kernel reason",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
    }

    /// The reason for one of the kernel's `enum skb_drop_reason` names (as
    /// the `skb:kfree_skb` format file prints them, without the
    /// `SKB_DROP_REASON_` prefix).
    pub fn from_kernel_name(name: &str) -> Self {
        let name = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(name);
        match name {
            "TCP_LISTEN_OVERFLOW" => Self::AcceptQueueFull,
            "TCP_RFC7323_PAWS" | "TCP_RFC7323_PAWS_ACK" => Self::Paws,
            "TCP_RFC7323_TW_PAWS" => Self::TimewaitPaws,
            "TCP_RFC7323_TSECR" => Self::TimestampEcho,
            "TCP_INVALID_SYN" => Self::InvalidSyn,
            "NO_SOCKET" => Self::NoListener,
            "TCP_FLAGS" => Self::BadFlags,
            "NETFILTER_DROP" => Self::Netfilter,
            "SOCKET_FILTER" => Self::SocketFilter,
            n if n.starts_with("TCP_MD5") || n.starts_with("TCP_AO") || n == "TCP_AUTH_HDR" => {
                Self::Auth
            }
            _ => Self::Other,
        }
    }

    /// Whether the kernel's program reports drops of this kernel reason
    /// (the ones about connection attempts). Userspace turns the names of
    /// the running kernel's format file into the program's reason mask
    /// with it.
    pub fn traced_kernel_name(name: &str) -> bool {
        let name = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(name);
        matches!(
            name,
            "TCP_LISTEN_OVERFLOW"
                | "TCP_RFC7323_PAWS"
                | "TCP_RFC7323_PAWS_ACK"
                | "TCP_RFC7323_TW_PAWS"
                | "TCP_RFC7323_TSECR"
                | "TCP_INVALID_SYN"
                | "NO_SOCKET"
                | "TCP_FLAGS"
                | "NETFILTER_DROP"
                | "SOCKET_FILTER"
                | "TCP_MINTTL"
                | "TCP_AUTH_HDR"
                | "TCP_REQQFULLDROP"
                | "TCP_OLD_ACK"
                | "TCP_TOO_OLD_ACK"
        ) || name.starts_with("TCP_MD5")
            || name.starts_with("TCP_AO")
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// One count per [`DropReason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasonCounts(pub [u64; DropReason::COUNT]);

impl ReasonCounts {
    pub fn add(&mut self, reason: DropReason, n: u64) {
        let slot = &mut self.0[reason.slot()];
        *slot = slot.saturating_add(n);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.slot()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// `self - earlier`, per reason (saturating).
    pub fn since(&self, earlier: &Self) -> Self {
        let mut out = Self::default();
        for i in 0..DropReason::COUNT {
            out.0[i] = self.0[i].saturating_sub(earlier.0[i]);
        }
        out
    }

    /// The non-zero counts, by name (JSON).
    pub fn by_name(&self) -> BTreeMap<&'static str, u64> {
        DropReason::ALL
            .into_iter()
            .filter(|r| self.get(*r) > 0)
            .map(|r| (r.name(), self.get(r)))
            .collect()
    }

    /// The reason with the most drops (ties: the first in
    /// [`DropReason::ALL`]); `None` when all are zero.
    pub fn main_reason(&self) -> Option<DropReason> {
        DropReason::ALL
            .into_iter()
            .filter(|r| self.get(*r) > 0)
            .max_by(|a, b| self.get(*a).cmp(&self.get(*b)).then(b.cmp(a)))
    }
}

/// A connection attempt the kernel dropped and reported (`skb:kfree_skb`),
/// decoded: the packet's destination is `local` (this host's address and
/// port), its source `remote`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynDrop {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// The namespace of the socket that received it, or of the device it
    /// arrived on; `None` when neither could be read.
    pub netns: Option<u32>,
    pub family: Family,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub reason: DropReason,
    /// The running kernel's `enum skb_drop_reason` value (its name: the
    /// live tracer's table; numbers change between kernels).
    pub kernel_reason: u16,
    /// The segment's SYN and ACK flags.
    pub syn: bool,
    pub ack: bool,
    /// The state of the socket that received it (LISTEN, TIME_WAIT,
    /// NEW_SYN_RECV...), `None` when no socket did.
    pub rx_state: Option<TcpState>,
    /// Drops the kernel counted on the same CPU since the previous one it
    /// reported, without reporting them one by one (its rate limit).
    pub suppressed: u64,
}

/// One listening socket as sock_diag showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSample {
    pub netns: Option<u32>,
    pub family: Family,
    pub addr: IpAddr,
    pub port: u16,
    /// Socket inode (what /proc/PID/fd links name).
    pub inode: u64,
    /// The process holding it, when known.
    pub owner: Option<SeenOwner>,
    /// `INET_DIAG_CGROUP_ID`: the cgroup v2 id it was created in.
    pub cgroup: Option<u64>,
    /// Connections waiting in the accept queue (rqueue).
    pub queue: u32,
    /// The accept queue's limit (wqueue: min(backlog, net.core.somaxconn)).
    pub limit: u32,
    /// The kernel's drop count of this socket (`SK_MEMINFO_DROPS`,
    /// cumulative since it was created); `None` if not reported.
    pub drops: Option<u64>,
}

/// A network namespace's counters of dropped connection attempts
/// (`/proc/net/netstat` TcpExt, cumulative; `None`: not on this kernel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounters {
    pub listen_overflows: Option<u64>,
    pub listen_drops: Option<u64>,
    pub req_qfull_drop: Option<u64>,
    pub req_qfull_cookies: Option<u64>,
    pub paws_passive: Option<u64>,
    pub paws_active: Option<u64>,
    pub paws_estab: Option<u64>,
    pub syncookies_sent: Option<u64>,
    pub syncookies_failed: Option<u64>,
    /// `PAWSTimewait`: segments (SYNs) a TIME_WAIT socket rejected by PAWS
    /// — the NAT-with-timestamps case (6.x; older kernels: `PAWSPassive`).
    pub paws_timewait: Option<u64>,
    /// `TSEcrRejected`: segments rejected for a bad timestamp echo.
    pub tsecr_rejected: Option<u64>,
    /// `PAWSOldAck`: old ACKs rejected by PAWS.
    pub paws_old_ack: Option<u64>,
}

impl DropCounters {
    /// The TcpExt fields of a `/proc/net/netstat` text (pairs of header and
    /// value lines). Unparsable text gives all `None`.
    pub fn from_netstat(text: &str) -> Self {
        let mut out = Self::default();
        let mut lines = text.lines();
        while let (Some(head), Some(vals)) = (lines.next(), lines.next()) {
            let mut h = head.split_whitespace();
            let mut v = vals.split_whitespace();
            if h.next() != Some("TcpExt:") || v.next() != Some("TcpExt:") {
                continue;
            }
            for (name, val) in h.zip(v) {
                let Ok(val) = val.parse::<u64>() else {
                    continue;
                };
                let slot = match name {
                    "ListenOverflows" => &mut out.listen_overflows,
                    "ListenDrops" => &mut out.listen_drops,
                    "TCPReqQFullDrop" => &mut out.req_qfull_drop,
                    "TCPReqQFullDoCookies" => &mut out.req_qfull_cookies,
                    "PAWSPassive" => &mut out.paws_passive,
                    "PAWSActive" => &mut out.paws_active,
                    "PAWSEstab" => &mut out.paws_estab,
                    "SyncookiesSent" => &mut out.syncookies_sent,
                    "SyncookiesFailed" => &mut out.syncookies_failed,
                    "PAWSTimewait" => &mut out.paws_timewait,
                    "TSEcrRejected" => &mut out.tsecr_rejected,
                    "PAWSOldAck" => &mut out.paws_old_ack,
                    _ => continue,
                };
                *slot = Some(val);
            }
        }
        out
    }

    /// How many counters there are ([`Self::fields`]).
    pub const FIELDS: usize = 12;

    /// The counters in a fixed order (recordings keep them in it): the
    /// fields in their declaration order.
    pub fn fields(&self) -> [Option<u64>; Self::FIELDS] {
        [
            self.listen_overflows,
            self.listen_drops,
            self.req_qfull_drop,
            self.req_qfull_cookies,
            self.paws_passive,
            self.paws_active,
            self.paws_estab,
            self.syncookies_sent,
            self.syncookies_failed,
            self.paws_timewait,
            self.tsecr_rejected,
            self.paws_old_ack,
        ]
    }

    /// The counters from [`Self::fields`]' order.
    pub fn from_fields(v: [Option<u64>; Self::FIELDS]) -> Self {
        let [
            listen_overflows,
            listen_drops,
            req_qfull_drop,
            req_qfull_cookies,
            paws_passive,
            paws_active,
            paws_estab,
            syncookies_sent,
            syncookies_failed,
            paws_timewait,
            tsecr_rejected,
            paws_old_ack,
        ] = v;
        Self {
            listen_overflows,
            listen_drops,
            req_qfull_drop,
            req_qfull_cookies,
            paws_passive,
            paws_active,
            paws_estab,
            syncookies_sent,
            syncookies_failed,
            paws_timewait,
            tsecr_rejected,
            paws_old_ack,
        }
    }

    /// `self - earlier` per counter (`None` unless both are known).
    pub fn since(&self, earlier: &Self) -> Self {
        let (now, then) = (self.fields(), earlier.fields());
        Self::from_fields(std::array::from_fn(|i| {
            Some(now[i]?.saturating_sub(then[i]?))
        }))
    }
}

/// One namespace's counters at a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsDropCounters {
    pub netns: u32,
    pub counters: DropCounters,
}

/// Which listener: the namespace, the bound address (unspecified for a
/// wildcard) and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub netns: Option<u32>,
    pub addr: IpAddr,
    pub port: u16,
}

impl ListenerKey {
    /// "127.0.0.1:8080", "[::1]:443", "0.0.0.0:80", "[::]:80".
    pub fn endpoint(&self) -> String {
        endpoint(self.addr, self.port)
    }
}

/// "127.0.0.1:8080", "[::1]:443"; the wildcards "0.0.0.0:80" and "[::]:80"
/// (as `ss` prints them: nginx's `listen 80; listen [::]:80;` are two
/// listeners, and two names).
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{port}"),
            None => format!("[{a}]:{port}"),
        },
    }
}

/// Listeners kept at most (closed ones go first, then the quietest).
pub const MAX_LISTENERS: usize = 4096;
/// Namespaces a sample is taken in for at most (more is damage).
pub const MAX_NAMESPACES: usize = 256;
/// Destinations without a listener kept at most.
pub const MAX_UNMATCHED: usize = 256;
/// How long history is kept for rates (the rate window and one sample
/// more: nothing reads further back).
const HISTORY_NS: u64 = RATE_WINDOW_NS + NS;
/// The window of `drops_per_sec`.
pub const RATE_WINDOW_NS: u64 = 10 * NS;
/// A closed listener is forgotten after this long.
const CLOSED_KEPT_NS: u64 = 600 * NS;
const NS: u64 = 1_000_000_000;

/// What the table knows of one listener.
#[derive(Clone, Debug)]
pub struct Listener {
    pub key: ListenerKey,
    pub family: Family,
    pub inode: u64,
    pub owner: Option<SeenOwner>,
    pub cgroup: Option<u64>,
    pub queue: u32,
    pub limit: u32,
    /// The deepest queue seen in a sample.
    pub peak_queue: u32,
    /// Drops by reason since tracing began.
    pub drops: ReasonCounts,
    /// The kernel's count at the last sample (deltas are taken from it).
    last_kernel_drops: Option<u64>,
    /// The kernel's count when first seen, in its namespace's first sample:
    /// drops from before tracing began (reason unknown).
    pub drops_before_tracing: u64,
    /// Kernel-reported accept-queue drops since the last sample (already in
    /// the kernel's count).
    reported_overflows: u64,
    /// Every kernel-reported drop the listener (or one of its pending
    /// handshakes) received since the last sample, whatever its reason:
    /// the kernel counts those in the listener's own count too.
    reported_at_listener: u64,
    /// (sample time, cumulative `drops`) for rates, oldest first.
    history: VecDeque<(u64, ReasonCounts)>,
    pub first_seen_ns: u64,
    pub last_drop_ns: Option<u64>,
    /// When the listener was last missing from its namespace's sample.
    pub closed_ns: Option<u64>,
}

impl Listener {
    fn new(key: ListenerKey, family: Family, now: u64) -> Self {
        Self {
            key,
            family,
            inode: 0,
            owner: None,
            cgroup: None,
            queue: 0,
            limit: 0,
            peak_queue: 0,
            drops: ReasonCounts::default(),
            last_kernel_drops: None,
            drops_before_tracing: 0,
            reported_overflows: 0,
            reported_at_listener: 0,
            history: VecDeque::new(),
            first_seen_ns: now,
            last_drop_ns: None,
            closed_ns: None,
        }
    }

    fn add(&mut self, reason: DropReason, n: u64, now: u64) {
        if n > 0 {
            self.drops.add(reason, n);
            self.last_drop_ns = Some(now);
        }
    }

    /// Drops per second by reason over the last `window` ns (or since the
    /// first sample, when shorter).
    pub fn rates(&self, now: u64, window: u64) -> (ReasonCounts, f64) {
        let since = now.saturating_sub(window);
        let base = self
            .history
            .iter()
            .find(|(t, _)| *t >= since)
            .or(self.history.front());
        match base {
            Some(&(t, counts)) if now > t => {
                (self.drops.since(&counts), (now - t) as f64 / NS as f64)
            }
            _ => (ReasonCounts::default(), 0.0),
        }
    }
}

/// A destination that got drops with no listener on it (SYNs to a closed
/// port, firewall drops...).
#[derive(Clone, Debug)]
pub struct Unmatched {
    pub netns: Option<u32>,
    pub addr: IpAddr,
    pub port: u16,
    pub drops: ReasonCounts,
    pub last_drop_ns: u64,
}

/// Per namespace: the counters at the previous sample, and their deltas
/// since tracing began.
#[derive(Clone, Debug, Default)]
pub struct NetnsDrops {
    last: Option<DropCounters>,
    /// Counter deltas since the first sample.
    pub since_start: DropCounters,
    first: Option<DropCounters>,
    /// Listen drops the namespace counted (`ListenDrops` delta) that no
    /// listener's own count shows (a listener that closed in between).
    pub unattributed: u64,
    /// Overflows and SYN-queue drops of the last interval not given to a
    /// listener: a drop between a listener's dump and the counters' read
    /// shows in the counters one sample before the listener's count.
    overflow_credit: u64,
    synq_credit: u64,
    /// ListenDrops of the last interval no listener's count showed yet.
    drops_credit: u64,
    /// The last sample that had it (a namespace gone for
    /// [`CLOSED_KEPT_NS`] is forgotten).
    last_sampled_ns: u64,
}

/// Listeners, their queues and drops; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct ListenerTable {
    pub listeners: HashMap<ListenerKey, Listener>,
    pub unmatched: HashMap<(Option<u32>, IpAddr, u16), Unmatched>,
    pub namespaces: BTreeMap<u32, NetnsDrops>,
    /// Every reported kernel drop by reason, matched or not.
    pub kernel_drops: ReasonCounts,
    /// Drops the kernel counted without reporting them one by one.
    pub kernel_suppressed: u64,
    /// Samples taken in.
    pub samples: u64,
    pub last_sample_ns: Option<u64>,
}

/// Whether `netns` was sampled before (its counters were taken in).
fn ns_sampled_before(namespaces: &BTreeMap<u32, NetnsDrops>, netns: Option<u32>) -> bool {
    netns
        .and_then(|n| namespaces.get(&n))
        .is_some_and(|n| n.last.is_some())
}

/// The unspecified address of `addr`'s family.
fn wildcard(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

impl ListenerTable {
    /// Whether anything was ever sampled or reported (a source without
    /// listener data leaves the outputs' listener parts out).
    pub fn is_active(&self) -> bool {
        self.samples > 0 || self.kernel_drops.total() > 0 || self.kernel_suppressed > 0
    }

    /// The listener a packet to `addr:port` in `netns` reached: bound to
    /// that address, else a wildcard of its family, else an IPv6 wildcard
    /// (which takes IPv4 too unless v6only).
    pub fn find(&self, netns: Option<u32>, addr: IpAddr, port: u16) -> Option<ListenerKey> {
        let v4_mapped = match addr {
            IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let addr = v4_mapped.unwrap_or(addr);
        let mut candidates = vec![addr, wildcard(addr)];
        if let IpAddr::V4(a) = addr {
            candidates.push(IpAddr::V6(a.to_ipv6_mapped()));
            candidates.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        }
        candidates.into_iter().find_map(|a| {
            let key = ListenerKey {
                netns,
                addr: a,
                port,
            };
            self.listeners
                .get(&key)
                .filter(|l| l.closed_ns.is_none())
                .map(|_| key)
        })
    }

    /// A kernel-reported drop: to its listener, or to the destinations
    /// without one.
    pub fn apply_drop(&mut self, d: &SynDrop) {
        self.kernel_drops.add(d.reason, 1);
        self.kernel_suppressed = self.kernel_suppressed.saturating_add(d.suppressed);
        if let Some(key) = self.find(d.netns, d.local, d.local_port)
            && let Some(l) = self.listeners.get_mut(&key)
        {
            l.add(d.reason, 1, d.ts_ns);
            if d.reason == DropReason::AcceptQueueFull {
                l.reported_overflows = l.reported_overflows.saturating_add(1);
            }
            if d.reason == DropReason::AcceptQueueFull
                || matches!(d.rx_state, Some(TcpState::Listen | TcpState::NewSynRecv))
            {
                l.reported_at_listener = l.reported_at_listener.saturating_add(1);
            }
            return;
        }
        let key = (d.netns, d.local, d.local_port);
        if !self.unmatched.contains_key(&key) && self.unmatched.len() >= MAX_UNMATCHED {
            // The quietest goes.
            if let Some(old) = self
                .unmatched
                .iter()
                .min_by_key(|(_, u)| (u.last_drop_ns, u.drops.total()))
                .map(|(k, _)| *k)
            {
                self.unmatched.remove(&old);
            }
        }
        let u = self.unmatched.entry(key).or_insert_with(|| Unmatched {
            netns: d.netns,
            addr: d.local,
            port: d.local_port,
            drops: ReasonCounts::default(),
            last_drop_ns: d.ts_ns,
        });
        u.drops.add(d.reason, 1);
        u.last_drop_ns = d.ts_ns;
    }

    /// One sample of every listener of the namespaces in `counters` (a
    /// namespace absent from `counters` was not sampled: its listeners are
    /// left alone). See the module docs for how reasons are given.
    pub fn apply_sample(
        &mut self,
        ts_ns: u64,
        listeners: &[ListenerSample],
        counters: &[NetnsDropCounters],
    ) {
        self.samples = self.samples.saturating_add(1);
        self.last_sample_ns = Some(ts_ns);
        // Bounded whatever the record says (a recording may be hostile):
        // the live sampler never sends more.
        let listeners = &listeners[..listeners.len().min(MAX_LISTENERS)];
        let counters = &counters[..counters.len().min(MAX_NAMESPACES)];
        let sampled: std::collections::HashSet<Option<u32>> =
            counters.iter().map(|c| Some(c.netns)).collect();
        // Unexplained count deltas per listener, by namespace.
        let mut unexplained: BTreeMap<Option<u32>, Vec<(ListenerKey, u64, bool)>> = BTreeMap::new();
        let mut seen: std::collections::HashSet<ListenerKey> = Default::default();
        // Kernel-reported accept-queue drops per namespace since the last
        // sample: in ListenOverflows too, so not given out again.
        let mut reported_by_ns: BTreeMap<Option<u32>, u64> = BTreeMap::new();
        for s in listeners {
            let key = ListenerKey {
                netns: s.netns,
                addr: s.addr,
                port: s.port,
            };
            seen.insert(key);
            if !self.listeners.contains_key(&key) {
                self.make_room();
            }
            let l = self
                .listeners
                .entry(key)
                .or_insert_with(|| Listener::new(key, s.family, ts_ns));
            if l.closed_ns.is_some() || (l.inode != 0 && s.inode != 0 && l.inode != s.inode) {
                // Reopened: a new socket, a new kernel count.
                l.last_kernel_drops = None;
                l.closed_ns = None;
            }
            l.family = s.family;
            l.inode = s.inode;
            if s.owner.is_some() {
                l.owner = s.owner;
            }
            if s.cgroup.is_some() {
                l.cgroup = s.cgroup;
            }
            let was_full = l.limit > 0 && l.queue >= l.limit;
            l.queue = s.queue;
            l.limit = s.limit;
            l.peak_queue = l.peak_queue.max(s.queue);
            let full = was_full || (s.limit > 0 && s.queue >= s.limit);
            let reported = std::mem::take(&mut l.reported_overflows);
            *reported_by_ns.entry(s.netns).or_default() += reported;
            let reported = std::mem::take(&mut l.reported_at_listener);
            if let Some(now) = s.drops {
                // A listener first seen in a namespace sampled before
                // opened since: its whole count is new. One in its
                // namespace's first sample: its count is history.
                let prev = match l.last_kernel_drops {
                    Some(prev) => Some(prev),
                    None if ns_sampled_before(&self.namespaces, s.netns) => Some(0),
                    None => {
                        l.drops_before_tracing = l.drops_before_tracing.max(now);
                        None
                    }
                };
                if let Some(prev) = prev {
                    let delta = now.saturating_sub(prev).saturating_sub(reported);
                    if delta > 0 {
                        unexplained
                            .entry(s.netns)
                            .or_default()
                            .push((key, delta, full));
                    }
                }
                l.last_kernel_drops = Some(now);
            }
        }
        // Listeners of sampled namespaces that are gone.
        for l in self.listeners.values_mut() {
            if l.closed_ns.is_none() && sampled.contains(&l.key.netns) && !seen.contains(&l.key) {
                l.closed_ns = Some(ts_ns);
                l.queue = 0;
            }
        }
        for c in counters {
            let ns = self.namespaces.entry(c.netns).or_default();
            ns.last_sampled_ns = ts_ns;
            let delta = ns.last.map(|last| c.counters.since(&last));
            ns.last = Some(c.counters);
            let first = *ns.first.get_or_insert(c.counters);
            ns.since_start = c.counters.since(&first);
            let mut rows = unexplained.remove(&Some(c.netns)).unwrap_or_default();
            // The listeners' count deltas: the unexplained ones and the
            // overflows the kernel reported (ListenDrops has both).
            let reported_here = reported_by_ns.get(&Some(c.netns)).copied().unwrap_or(0);
            let shown: u64 = rows
                .iter()
                .map(|r| r.1)
                .sum::<u64>()
                .saturating_add(reported_here);
            if let Some(d) = delta {
                // A drop between a dump and the counters' read shows in
                // ListenDrops one sample before the listener's count: the
                // excess waits one sample before it is unattributed.
                let listen_drops = d.listen_drops.unwrap_or(0);
                let beyond = shown.saturating_sub(listen_drops);
                ns.unattributed = ns
                    .unattributed
                    .saturating_add(ns.drops_credit.saturating_sub(beyond));
                ns.drops_credit = listen_drops.saturating_sub(shown);
            }
            let d = delta.unwrap_or_default();
            // The kernel-reported overflows of this namespace are in
            // ListenOverflows too.
            let fresh_overflows = d
                .listen_overflows
                .unwrap_or(0)
                .saturating_sub(reported_here);
            let fresh_synq = d.req_qfull_drop.unwrap_or(0);
            let mut overflows = fresh_overflows.saturating_add(ns.overflow_credit);
            let mut synq = fresh_synq.saturating_add(ns.synq_credit);
            let no_counters = c.counters.listen_overflows.is_none();
            // Full queues first, then the largest deltas.
            rows.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0)));
            for (key, mut n, full) in rows {
                let Some(l) = self.listeners.get_mut(&key) else {
                    continue;
                };
                if no_counters {
                    let reason = if full {
                        DropReason::AcceptQueueFull
                    } else {
                        DropReason::ListenDrop
                    };
                    l.add(reason, n, ts_ns);
                    continue;
                }
                let o = n.min(overflows);
                overflows -= o;
                n -= o;
                l.add(DropReason::AcceptQueueFull, o, ts_ns);
                let q = n.min(synq);
                synq -= q;
                n -= q;
                l.add(DropReason::SynQueueFull, q, ts_ns);
                l.add(DropReason::ListenDrop, n, ts_ns);
            }
            // What this interval's counters did not give out waits one
            // sample for the listener count that trails them.
            ns.overflow_credit = overflows.min(fresh_overflows);
            ns.synq_credit = synq.min(fresh_synq);
        }
        // Namespaces sampled without counters (none read): by queue alone.
        for (_, rows) in unexplained {
            for (key, n, full) in rows {
                if let Some(l) = self.listeners.get_mut(&key) {
                    let reason = if full {
                        DropReason::AcceptQueueFull
                    } else {
                        DropReason::ListenDrop
                    };
                    l.add(reason, n, ts_ns);
                }
            }
        }
        // Namespaces gone (pods come and go) are forgotten after a while.
        self.namespaces
            .retain(|_, n| ts_ns.saturating_sub(n.last_sampled_ns) < CLOSED_KEPT_NS);
        // History for rates; closed listeners forgotten after a while.
        self.listeners.retain(|_, l| {
            l.closed_ns
                .is_none_or(|c| ts_ns.saturating_sub(c) < CLOSED_KEPT_NS)
        });
        for l in self.listeners.values_mut() {
            l.history.push_back((ts_ns, l.drops));
            while l
                .history
                .front()
                .is_some_and(|(t, _)| ts_ns.saturating_sub(*t) > HISTORY_NS)
            {
                l.history.pop_front();
            }
        }
    }

    /// Room for one more listener: the oldest closed one goes, else the one
    /// with the fewest drops.
    fn make_room(&mut self) {
        if self.listeners.len() < MAX_LISTENERS {
            return;
        }
        let victim = self
            .listeners
            .values()
            .min_by_key(|l| (l.closed_ns.is_none(), l.drops.total(), l.first_seen_ns))
            .map(|l| l.key);
        if let Some(k) = victim {
            self.listeners.remove(&k);
        }
    }

    /// The listeners as rows: with drops first (most first), then by
    /// endpoint.
    pub fn rows(&self, now_ns: u64) -> Vec<ListenerRow> {
        let mut rows: Vec<ListenerRow> = self
            .listeners
            .values()
            .map(|l| ListenerRow::of(l, now_ns))
            .collect();
        rows.sort_by(|a, b| {
            b.drops_total
                .cmp(&a.drops_total)
                .then(a.listener.cmp(&b.listener))
                .then(a.netns.cmp(&b.netns))
        });
        rows
    }

    /// Destinations without a listener, most drops first.
    pub fn unmatched_rows(&self) -> Vec<UnmatchedRow> {
        let mut rows: Vec<UnmatchedRow> = self
            .unmatched
            .values()
            .map(|u| UnmatchedRow {
                destination: endpoint(u.addr, u.port),
                netns: u.netns,
                drops_total: u.drops.total(),
                drops_by_reason: u.drops.by_name(),
            })
            .collect();
        rows.sort_by(|a, b| {
            b.drops_total
                .cmp(&a.drops_total)
                .then(a.destination.cmp(&b.destination))
        });
        rows
    }

    /// Every listener's drops since tracing began, by reason.
    pub fn total(&self) -> ReasonCounts {
        let mut t = ReasonCounts::default();
        for l in self.listeners.values() {
            for r in DropReason::ALL {
                t.add(r, l.drops.get(r));
            }
        }
        t
    }
}

/// One listener in a snapshot (`stats --json` `listeners[]`, `top`,
/// metrics, rules, doctor).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerRow {
    /// "127.0.0.1:8080", "[::1]:443", "0.0.0.0:80", "[::]:80".
    pub listener: String,
    pub addr: String,
    pub port: u16,
    pub netns: Option<u32>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The owner's cgroup (workload names are filled by the workload fold).
    #[serde(skip)]
    pub cgroup: Option<u64>,
    #[serde(flatten)]
    pub workload: crate::stats::workloads::WorkloadRef,
    /// Connections waiting to be accepted, and the limit.
    pub accept_queue: u32,
    pub accept_queue_limit: u32,
    pub accept_queue_peak: u32,
    /// Drops since tracing began (by reason below).
    pub drops_total: u64,
    /// The kernel's count of the listener's drops from before tracing
    /// began (when it was first seen), reason unknown: what happened
    /// before tcptrace was started (`ss -ltnm`'s `d`).
    pub drops_before_tracing: u64,
    pub drops_by_reason: BTreeMap<&'static str, u64>,
    /// Over the last [`RATE_WINDOW_NS`] (or since the first sample).
    pub drops_per_sec: f64,
    pub drops_per_sec_by_reason: BTreeMap<&'static str, f64>,
    /// The reason with the most drops.
    pub main_reason: Option<&'static str>,
    pub last_drop_age_ms: Option<u64>,
    /// Gone from the latest sample (closed) this long ago.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_age_ms: Option<u64>,
    /// Typed copies for the core's own readers.
    #[serde(skip)]
    pub drops: ReasonCounts,
    #[serde(skip)]
    pub recent: ReasonCounts,
}

impl ListenerRow {
    fn of(l: &Listener, now: u64) -> Self {
        let (recent, secs) = l.rates(now, RATE_WINDOW_NS);
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let ms = |t: u64| now.saturating_sub(t) / 1_000_000;
        Self {
            listener: l.key.endpoint(),
            addr: l.key.addr.to_string(),
            port: l.key.port,
            netns: l.key.netns,
            pid: l.owner.map(|o| o.pid),
            comm: l.owner.map(|o| o.comm.to_str_lossy().into_owned()),
            cgroup: l.cgroup,
            workload: Default::default(),
            accept_queue: l.queue,
            accept_queue_limit: l.limit,
            accept_queue_peak: l.peak_queue,
            drops_total: l.drops.total(),
            drops_before_tracing: l.drops_before_tracing,
            drops_by_reason: l.drops.by_name(),
            drops_per_sec: per_sec(recent.total()),
            drops_per_sec_by_reason: DropReason::ALL
                .into_iter()
                .filter(|r| recent.get(*r) > 0)
                .map(|r| (r.name(), per_sec(recent.get(r))))
                .collect(),
            main_reason: l.drops.main_reason().map(DropReason::name),
            last_drop_age_ms: l.last_drop_ns.map(ms),
            closed_age_ms: l.closed_ns.map(ms),
            drops: l.drops,
            recent,
        }
    }
}

/// A destination with drops and no listener (`listener_drops_unmatched[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnmatchedRow {
    pub destination: String,
    pub netns: Option<u32>,
    pub drops_total: u64,
    pub drops_by_reason: BTreeMap<&'static str, u64>,
}

#[cfg(test)]
mod tests;
