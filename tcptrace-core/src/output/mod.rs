//! Printers for the event stream: human text and JSON Lines. They write to any
//! `io::Write` (a 64 KiB `BufWriter` on stdout in practice) and never allocate
//! per event beyond what `serde_json` needs.
//!
//! # JSON Lines schema (`tcptrace trace --json`)
//!
//! One object per line. Field names are a stable contract:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `ts_ns` | u64 | wall-clock time, Unix epoch nanoseconds |
//! | `kind` | string | `"transition"`, `"tw_begin"`, `"tw_rearm"`, `"tw_end"`, `"tw_substate"`, `"lost"` |
//! | `pid` | u32 \| null | owning process (tgid); null when unknown (socket predates the tracer) |
//! | `tid` | u32 \| null | owning thread |
//! | `comm` | string \| null | owning task's command name |
//! | `family` | string | `"ipv4"` or `"ipv6"` |
//! | `saddr`, `sport` | string, u16 | local address and port |
//! | `daddr`, `dport` | string, u16 | remote address and port |
//! | `old` | string \| null | state left (kernel names: `"ESTABLISHED"`, `"CLOSE_WAIT"`, ...); tw_begin: the full socket's last state; tw_end: the timewait substate; tw_substate: `"FIN_WAIT2"` |
//! | `new` | string | state entered; tw_begin/tw_rearm/tw_substate: the timewait substate (`"TIME_WAIT"` or `"FIN_WAIT2"`); tw_end: `"CLOSE"` |
//! | `prev_state_ns` | u64 \| null | time spent in `old`; for tw_end, time spent as a timewait socket; for tw_substate, time since it was last known in `old` (the change happened within it); null when unknown |
//! | `netns` | u32 \| null | network namespace inode |
//! | `cgroup` | u64 \| null | owner's cgroup v2 id |
//! | `cgroup_path` | string \| null | that cgroup's v2 path (`trace`: from the edge's resolver) |
//! | `workload`, `workload_kind` | string \| null | the owner's workload and its kind ([`crate::workload`]) |
//! | `unit`, `container`, `container_id` | string \| null | systemd unit; container name (or short id) and id |
//! | `pod`, `pod_uid`, `namespace`, `qos` | string \| null | Kubernetes pod, uid, namespace (not the netns), QoS class |
//! | `reason` | string \| null | tw_end: `"expired"` (timer ran out), `"reused"` (a connect() took the 4-tuple over: `tcp_tw_reuse`), `"purged"` (its network namespace was deleted) or `"killed"` (any other early end: RST, ...); null otherwise |
//! | `sk` | string | kernel socket address (hex); the timewait socket for tw_* events |
//! | `link` | string \| null | tw_begin: the full socket the timewait socket replaced; tw_end reused: the socket whose connect() reused it |
//! | `owner_from_listener` | bool | owner inherited from the listening socket (accept() not seen yet) |
//! | `found_by` | string | tw_substate only: `"reconciliation"` (found by asking the kernel; no hook showed it) |
//! | `changed_after_ns` | u64 | tw_substate only: wall-clock time it was last known in `old`: the change happened between it and `ts_ns` |
//! | `reused_by_pid` | u32 \| null | tw_end reused: the process whose connect() reused it |
//! | `reused_by_comm` | string \| null | tw_end reused: that process's command name, when known |
//! | `no_time_wait` | string \| null | transition FIN_WAIT2/CLOSING -> CLOSE: `"overflow"` when the kernel made no timewait socket (`tcp_max_tw_buckets` reached, TcpExt TCPTimeWaitOverflow); null otherwise |
//!
//! A `"lost"` object has `ts_ns`, `kind`, and the counts since the previous
//! one: `ring_full`, `recursion_misses`, `map_full`, `probe_failed` (a probe
//! read, scratch lookup or helper failed in the kernel), `total`.
//!
//! A `"drop"` object (`kind` and `event` both `"drop"`) is a connection
//! attempt the kernel dropped, or a listener's drops between two samples;
//! its fields are in [`drops`].

pub mod drops;
pub mod escape;
pub mod json;
pub mod stats;
pub mod text;

pub use escape::{EscapeWriter, escape};

use crate::model::{EventKind, TwEndReason};

pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Transition => "transition",
        EventKind::TwBegin => "tw_begin",
        EventKind::TwRearm => "tw_rearm",
        EventKind::TwEnd => "tw_end",
        EventKind::Lost => "lost",
        EventKind::Drop => "drop",
        EventKind::Accept => "accept",
        EventKind::TwSubstate => "tw_substate",
    }
}

/// A tw_end's `reason` (and, for overflow, a transition's `no_time_wait`).
pub fn reason_name(reason: TwEndReason) -> &'static str {
    match reason {
        TwEndReason::Expired => "expired",
        TwEndReason::Killed => "killed",
        TwEndReason::Reused { .. } => "reused",
        TwEndReason::Purged => "purged",
        TwEndReason::Overflow => "overflow",
    }
}

/// The reason of a tw_end (`None` for other kinds).
pub fn tw_end_reason(e: &crate::model::Event) -> Option<TwEndReason> {
    e.reason.filter(|_| e.kind == EventKind::TwEnd)
}

/// `Some(Overflow)` for a transition to CLOSE that got no timewait socket.
pub fn no_time_wait(e: &crate::model::Event) -> Option<TwEndReason> {
    e.reason
        .filter(|r| e.kind == EventKind::Transition && *r == TwEndReason::Overflow)
}

/// The process that reused a timewait socket (tw_end reused only).
pub fn reuser(e: &crate::model::Event) -> Option<crate::model::Reuser> {
    match tw_end_reason(e)? {
        TwEndReason::Reused { by } => by,
        _ => None,
    }
}
