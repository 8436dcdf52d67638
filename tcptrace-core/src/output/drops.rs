//! `drop` lines for `trace` and `replay`: connection attempts the kernel
//! dropped, one line each as text or JSON Lines, from two sources:
//!
//! - **kernel** drops ([`SynDrop`], the `skb:kfree_skb` tracepoint): one
//!   line per drop, rate-limited per key (the listener the packet was
//!   for, or its destination when nothing listens there, and the reason):
//!   at most [`LINES_PER_SEC`] lines per key in a second (from its first
//!   drop); the rest are summed into one more line at the end of that
//!   second, whose `count` says how many drops it stands for;
//! - **sock_diag** samples (about once a second): each listener's drop
//!   count went up by more than the kernel reported one by one (a SYN
//!   dropped because the accept queue was full is consumed, never freed
//!   with a reason): one line per listener and reason per sample, `count`
//!   the drops it stands for, the reason from the namespace's counters
//!   ([`ListenerTable::apply_sample`]).
//!
//! [`DropFeed`] keeps the listener table (`trace` and `replay` have no
//! engine) and the rate limiter; it is pure: times are the records'
//! (CLOCK_MONOTONIC ns), the caller turns them to wall-clock time.
//!
//! # JSON (`trace --json`, `replay --json`)
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `ts_ns` | u64 | wall-clock time, Unix epoch ns (of the last drop the line stands for) |
//! | `kind`, `event` | string | `"drop"` |
//! | `source` | string | `"kernel"` (reported one by one) or `"sock_diag"` (a listener's count delta between samples) |
//! | `listener` | string \| null | the listener the packet was for (`"127.0.0.1:8080"`, `"[::1]:443"`, `"0.0.0.0:80"`, `"[::]:80"`); null when none was known |
//! | `destination` | string | the packet's destination (this host's address and port) |
//! | `family` | string | `"ipv4"` or `"ipv6"` |
//! | `netns` | u32 \| null | network namespace inode |
//! | `reason` | string | [`DropReason::name`]: `accept_queue_full`, `syn_queue_full`, `paws`, `timewait_paws`, `timestamp_echo`, `invalid_syn`, `no_listener`, `bad_flags`, `netfilter`, `socket_filter`, `auth`, `listen_drop`, `other` |
//! | `kernel_reason` | string | kernel lines, when the tracer knows the name: the kernel's own `skb_drop_reason` name (`"TCP_LISTEN_OVERFLOW"`); absent otherwise |
//! | `kernel_reason_id` | u16 | kernel lines: the kernel's `skb_drop_reason` value (numbers change between kernels); absent on sock_diag lines |
//! | `remote` | string \| null | the packet's source (`"10.0.0.2:51234"`); null on sock_diag lines |
//! | `syn`, `ack` | bool \| null | the segment's SYN and ACK flags; null on sock_diag lines |
//! | `rx_state` | string \| null | the state of the socket that received it (`"LISTEN"`, `"TIME_WAIT"`, `"NEW_SYN_RECV"`); null when none did |
//! | `pid`, `comm` | u32, string \| null | the listener's owner, when known |
//! | `count` | u64 | drops this line stands for (more than 1: the rate limit summed them, or a sample's delta) |
//! | `kernel_suppressed` | u64 | kernel lines: drops the kernel's own rate limit counted on that CPU without reporting them (any listener); 0 otherwise |
//! | `accept_queue`, `accept_queue_limit` | u32 \| null | sock_diag lines: the listener's queue depth and limit at the sample |

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    clock::hms_millis,
    listeners::{
        DropReason, ListenerKey, ListenerSample, ListenerTable, NetnsDropCounters, ReasonCounts,
        SynDrop, endpoint,
    },
    model::{Family, SeenOwner, TcpState},
};

/// Lines a key gets in one second; the rest are summed.
pub const LINES_PER_SEC: u32 = 5;
/// Keys the rate limiter follows at once; drops of more are summed under
/// one `other` key per reason.
pub const MAX_KEYS: usize = 1024;
const SEC: u64 = 1_000_000_000;

/// Where a drop line comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropSource {
    /// Reported one by one by the kernel (`skb:kfree_skb`).
    Kernel,
    /// A listener's drop count delta between two sock_diag samples.
    SockDiag,
}

impl DropSource {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::SockDiag => "sock_diag",
        }
    }
}

/// One `drop` line.
#[derive(Clone, Debug, PartialEq)]
pub struct DropLine {
    /// CLOCK_MONOTONIC ns of the (last) drop it stands for.
    pub mono_ns: u64,
    pub source: DropSource,
    /// The listener's endpoint, when one was known.
    pub listener: Option<String>,
    /// The packet's destination (the listener's endpoint for sock_diag).
    pub destination: String,
    pub family: Family,
    pub netns: Option<u32>,
    pub reason: DropReason,
    /// The kernel's name of its reason (kernel lines, when known).
    pub kernel_reason: Option<String>,
    pub kernel_reason_id: Option<u16>,
    pub remote: Option<String>,
    pub syn: Option<bool>,
    pub ack: Option<bool>,
    pub rx_state: Option<TcpState>,
    pub owner: Option<SeenOwner>,
    pub count: u64,
    pub kernel_suppressed: u64,
    /// sock_diag lines: (depth, limit) of the accept queue.
    pub queue: Option<(u32, u32)>,
}

#[derive(Serialize)]
struct JsonDrop<'a> {
    ts_ns: u64,
    kind: &'static str,
    event: &'static str,
    source: &'static str,
    listener: Option<&'a str>,
    destination: &'a str,
    family: &'static str,
    netns: Option<u32>,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_reason_id: Option<u16>,
    remote: Option<&'a str>,
    syn: Option<bool>,
    ack: Option<bool>,
    rx_state: Option<&'static str>,
    pid: Option<u32>,
    comm: Option<String>,
    count: u64,
    kernel_suppressed: u64,
    accept_queue: Option<u32>,
    accept_queue_limit: Option<u32>,
}

/// One drop line as JSON (`wall_ns`: its wall-clock time).
pub fn write_json(w: &mut impl io::Write, d: &DropLine, wall_ns: u64) -> io::Result<()> {
    let j = JsonDrop {
        ts_ns: wall_ns,
        kind: "drop",
        event: "drop",
        source: d.source.name(),
        listener: d.listener.as_deref(),
        destination: &d.destination,
        family: d.family.name(),
        netns: d.netns,
        reason: d.reason.name(),
        kernel_reason: d.kernel_reason.as_deref(),
        kernel_reason_id: d.kernel_reason_id,
        remote: d.remote.as_deref(),
        syn: d.syn,
        ack: d.ack,
        rx_state: d.rx_state.map(|s| s.name()),
        pid: d.owner.map(|o| o.pid),
        comm: d.owner.map(|o| o.comm.to_str_lossy().into_owned()),
        count: d.count,
        kernel_suppressed: d.kernel_suppressed,
        accept_queue: d.queue.map(|q| q.0),
        accept_queue_limit: d.queue.map(|q| q.1),
    };
    serde_json::to_writer(&mut *w, &j)?;
    w.write_all(b"\n")
}

/// The EVENT column of a drop line: `DROP accept queue full
/// [TCP_LISTEN_OVERFLOW] ACK x12`.
pub fn describe(d: &DropLine) -> String {
    let mut s = format!("DROP {}", d.reason.label());
    if let Some(k) = &d.kernel_reason {
        s.push_str(&format!(" [{}]", super::escape(k)));
    }
    match (d.syn, d.ack) {
        (Some(true), Some(true)) => s.push_str(" SYN+ACK"),
        (Some(true), _) => s.push_str(" SYN"),
        (_, Some(true)) => s.push_str(" ACK"),
        _ => {}
    }
    if d.count > 1 {
        s.push_str(&format!(" x{}", d.count));
    }
    if let Some((q, l)) = d.queue {
        s.push_str(&format!(" (sock_diag, queue {q}/{l})"));
    }
    if d.kernel_suppressed > 0 {
        s.push_str(&format!(" (+{} unreported)", d.kernel_suppressed));
    }
    s
}

/// One drop line in `trace`'s text columns (TIME PID COMM WORKLOAD IP
/// LOCAL REMOTE EVENT MS): PID and COMM the listener's owner, LOCAL the
/// listener (or the destination), REMOTE the packet's source.
pub fn write_text(w: &mut impl io::Write, d: &DropLine, wall_ns: u64) -> io::Result<()> {
    let (pid, comm) = match d.owner {
        Some(o) => (
            o.pid.to_string(),
            super::escape(&o.comm.to_str_lossy()).into_owned(),
        ),
        None => ("-".to_string(), "-".to_string()),
    };
    writeln!(
        w,
        "{:<13} {:<7} {:<16} {:<24} {:<2} {:<21} {:<21} {:<31} -",
        hms_millis(wall_ns),
        pid,
        comm,
        "-",
        match d.family {
            Family::V4 => "4",
            Family::V6 => "6",
        },
        d.listener.as_deref().unwrap_or(&d.destination),
        d.remote.as_deref().unwrap_or("-"),
        describe(d),
    )
}

/// A rate limiter's key: where (netns, listener or destination) and why.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LimitKey {
    netns: Option<u32>,
    place: String,
    reason: DropReason,
}

/// One key's current second.
#[derive(Clone, Debug)]
struct Window {
    start_ns: u64,
    printed: u32,
    /// Drops not printed in this second, and the last of them (its line
    /// is printed with their count when the second ends).
    pending: u64,
    pending_line: Option<DropLine>,
}

/// The listener table and the rate limiter of a `drop` line stream; see
/// the module docs.
#[derive(Debug, Default)]
pub struct DropFeed {
    pub table: ListenerTable,
    windows: HashMap<LimitKey, Window>,
    /// Drops reported by the kernel, and lines printed for them.
    pub kernel_drops: u64,
    pub kernel_lines: u64,
    /// Drops shown by sock_diag lines.
    pub sampled_drops: u64,
}

impl DropFeed {
    /// A kernel-reported drop: its line unless its key printed
    /// [`LINES_PER_SEC`] this second; first the summary lines of the
    /// seconds that ended before it. `kernel_name`: the kernel's name of
    /// `d.kernel_reason`, when the source knows it.
    pub fn drop(&mut self, d: &SynDrop, kernel_name: Option<String>) -> Vec<DropLine> {
        let mut out = self.due(d.ts_ns);
        self.table.apply_drop(d);
        self.kernel_drops = self.kernel_drops.saturating_add(1);
        let listener = self.table.find(d.netns, d.local, d.local_port);
        let owner = listener
            .and_then(|k| self.table.listeners.get(&k))
            .and_then(|l| l.owner);
        let destination = endpoint(d.local, d.local_port);
        let line = DropLine {
            mono_ns: d.ts_ns,
            source: DropSource::Kernel,
            listener: listener.map(|k| k.endpoint()),
            destination: destination.clone(),
            family: d.family,
            netns: d.netns,
            reason: d.reason,
            kernel_reason: kernel_name,
            kernel_reason_id: Some(d.kernel_reason),
            remote: Some(remote_endpoint(d.remote, d.remote_port)),
            syn: Some(d.syn),
            ack: Some(d.ack),
            rx_state: d.rx_state,
            owner,
            count: 1,
            kernel_suppressed: d.suppressed,
            queue: None,
        };
        let mut key = LimitKey {
            netns: d.netns,
            place: line.listener.clone().unwrap_or(destination),
            reason: d.reason,
        };
        if !self.windows.contains_key(&key) && self.windows.len() >= MAX_KEYS {
            key = LimitKey {
                netns: None,
                place: "other".into(),
                reason: d.reason,
            };
        }
        let w = self.windows.entry(key).or_insert(Window {
            start_ns: d.ts_ns,
            printed: 0,
            pending: 0,
            pending_line: None,
        });
        if w.printed < LINES_PER_SEC {
            w.printed += 1;
            self.kernel_lines += 1;
            out.push(line);
        } else {
            w.pending = w.pending.saturating_add(1);
            let suppressed = w
                .pending_line
                .as_ref()
                .map_or(0, |l| l.kernel_suppressed)
                .saturating_add(line.kernel_suppressed);
            w.pending_line = Some(DropLine {
                kernel_suppressed: suppressed,
                ..line
            });
        }
        out
    }

    /// A sock_diag sample: the table takes it in, and each listener whose
    /// drops grew by more than the kernel reported gets a line per reason
    /// (the summaries of seconds that ended before it first).
    pub fn sample(
        &mut self,
        ts_ns: u64,
        listeners: &[ListenerSample],
        counters: &[NetnsDropCounters],
    ) -> Vec<DropLine> {
        let mut out = self.due(ts_ns);
        let reported: HashMap<ListenerKey, ReasonCounts> = self
            .table
            .listeners
            .iter()
            .map(|(k, l)| (*k, l.drops))
            .collect();
        self.table.apply_sample(ts_ns, listeners, counters);
        let mut grown: BTreeMap<ListenerKey, Vec<DropLine>> = BTreeMap::new();
        for (key, l) in &self.table.listeners {
            let delta = l
                .drops
                .since(&reported.get(key).copied().unwrap_or_default());
            for reason in DropReason::ALL {
                let n = delta.get(reason);
                if n == 0 {
                    continue;
                }
                self.sampled_drops = self.sampled_drops.saturating_add(n);
                grown.entry(*key).or_default().push(DropLine {
                    mono_ns: ts_ns,
                    source: DropSource::SockDiag,
                    listener: Some(key.endpoint()),
                    destination: key.endpoint(),
                    family: l.family,
                    netns: key.netns,
                    reason,
                    kernel_reason: None,
                    kernel_reason_id: None,
                    remote: None,
                    syn: None,
                    ack: None,
                    rx_state: Some(TcpState::Listen),
                    owner: l.owner,
                    count: n,
                    kernel_suppressed: 0,
                    queue: Some((l.queue, l.limit)),
                });
            }
        }
        out.extend(grown.into_values().flatten());
        out
    }

    /// The summary lines of the seconds that ended by `now_ns` (a tick,
    /// or the next record's time): one per key that had drops not
    /// printed, with their count, oldest first.
    pub fn due(&mut self, now_ns: u64) -> Vec<DropLine> {
        let mut out = Vec::new();
        self.windows.retain(|_, w| {
            if now_ns.saturating_sub(w.start_ns) < SEC {
                return true;
            }
            if let Some(mut line) = w.pending_line.take() {
                line.count = w.pending;
                out.push(line);
            }
            false
        });
        out.sort_by(|a, b| {
            a.mono_ns
                .cmp(&b.mono_ns)
                .then_with(|| a.destination.cmp(&b.destination))
        });
        self.kernel_lines += out.len() as u64;
        out
    }

    /// Every summary still pending (the stream ends).
    pub fn finish(&mut self) -> Vec<DropLine> {
        self.due(u64::MAX)
    }
}

impl DropFeed {
    /// The end-of-run line of `trace` and `replay`: the drops in all, those
    /// the kernel reported (and how many lines showed them: past the rate
    /// limit they are summed into fewer lines), those only listeners'
    /// counts showed. Nothing says "0 ... (0 lines)".
    pub fn summary(&self) -> String {
        let total = self.kernel_drops.saturating_add(self.sampled_drops);
        if total == 0 {
            return "no connection attempt dropped (none reported by the kernel, none in listeners' counts)".into();
        }
        let plural = |n: u64, one: &str, many: &str| {
            if n == 1 {
                format!("{n} {one}")
            } else {
                format!("{n} {many}")
            }
        };
        let kernel = match (self.kernel_drops, self.kernel_lines) {
            (0, _) => "none reported by the kernel".to_string(),
            (n, lines) if lines >= n => format!("{n} reported by the kernel, one line each"),
            (n, lines) => format!(
                "{n} reported by the kernel ({}, the rest summed into them)",
                plural(lines, "line", "lines")
            ),
        };
        let sampled = match self.sampled_drops {
            0 => "none from listeners' counts (sock_diag)".to_string(),
            n => format!("{n} from listeners' counts (sock_diag)"),
        };
        format!(
            "{} dropped: {kernel}, {sampled}",
            plural(total, "connection attempt", "connection attempts")
        )
    }
}

/// "10.0.0.2:51234", "[::1]:51234" (a source address).
fn remote_endpoint(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use serde_json::Value;

    use super::*;
    use crate::{listeners::DropCounters, model::Comm};

    const NS: u32 = 4026531840;

    fn drop_at(ts_ns: u64, port: u16, reason: DropReason) -> SynDrop {
        SynDrop {
            ts_ns,
            netns: Some(NS),
            family: Family::V4,
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: port,
            remote: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)),
            remote_port: 40_000,
            reason,
            kernel_reason: 3,
            syn: true,
            ack: false,
            rx_state: None,
            suppressed: 0,
        }
    }

    fn listener(drops: u64, queue: u32) -> ListenerSample {
        ListenerSample {
            netns: Some(NS),
            family: Family::V4,
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
            inode: 5,
            owner: Some(SeenOwner {
                pid: 31,
                comm: Comm::from_name("slowacceptd"),
            }),
            cgroup: None,
            queue,
            limit: 1,
            drops: Some(drops),
        }
    }

    fn overflows(n: u64) -> NetnsDropCounters {
        NetnsDropCounters {
            netns: NS,
            counters: DropCounters {
                listen_overflows: Some(n),
                listen_drops: Some(n),
                req_qfull_drop: Some(0),
                ..DropCounters::default()
            },
        }
    }

    #[test]
    fn five_lines_per_key_a_second_then_one_with_the_count() {
        let mut feed = DropFeed::default();
        let mut lines = Vec::new();
        // 12 drops to port 81 in 0.6 s, 2 to port 82.
        for i in 0..12 {
            lines.extend(feed.drop(&drop_at(i * 50_000_000, 81, DropReason::NoListener), None));
        }
        for i in 0..2 {
            lines.extend(feed.drop(
                &drop_at(i * 10_000_000, 82, DropReason::NoListener),
                Some("NO_SOCKET".into()),
            ));
        }
        assert_eq!(lines.len(), 5 + 2);
        assert!(lines.iter().all(|l| l.count == 1));
        // Not yet a second after the first drop: nothing due.
        assert!(feed.due(999_999_999).is_empty());
        let due = feed.due(SEC);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 7);
        assert_eq!(due[0].destination, "127.0.0.1:81");
        assert_eq!(due[0].mono_ns, 11 * 50_000_000, "the last drop's time");
        // A new second: five lines again; the end summarises the rest.
        let mut more = Vec::new();
        for i in 0..8 {
            more.extend(feed.drop(&drop_at(2 * SEC + i, 81, DropReason::NoListener), None));
        }
        assert_eq!(more.len(), 5);
        let end = feed.finish();
        assert_eq!(end.len(), 1);
        assert_eq!(end[0].count, 3);
        assert_eq!(feed.kernel_drops, 22);
        let shown: u64 = lines
            .iter()
            .chain(&due)
            .chain(&more)
            .chain(&end)
            .map(|l| l.count)
            .sum();
        assert_eq!(shown, 22, "every drop counted once");
    }

    #[test]
    fn keys_are_listener_or_destination_and_reason() {
        let mut feed = DropFeed::default();
        feed.sample(0, &[listener(0, 0)], &[overflows(0)]);
        let mut n = 0;
        for i in 0..6 {
            n += feed
                .drop(&drop_at(i, 8080, DropReason::AcceptQueueFull), None)
                .len();
            n += feed.drop(&drop_at(i, 8080, DropReason::Paws), None).len();
        }
        assert_eq!(n, 10, "two keys, five lines each");
        let l = feed.drop(&drop_at(SEC + 1, 8080, DropReason::Paws), None);
        // The two summaries of the first second, then the new drop.
        assert_eq!(l.len(), 3);
        assert_eq!(l[2].listener.as_deref(), Some("0.0.0.0:8080"));
        assert_eq!(l[2].destination, "127.0.0.1:8080");
        assert_eq!(l[2].owner.unwrap().pid, 31);
    }

    #[test]
    fn keys_past_the_cap_share_one_other_key_per_reason() {
        let mut feed = DropFeed::default();
        let mut lines = 0;
        for port in 0..(MAX_KEYS as u16 + 20) {
            lines += feed
                .drop(&drop_at(1, port, DropReason::NoListener), None)
                .len();
        }
        for port in 0..20u16 {
            lines += feed
                .drop(&drop_at(2, 50_000 + port, DropReason::NoListener), None)
                .len();
        }
        assert_eq!(feed.windows.len(), MAX_KEYS + 1);
        // MAX_KEYS keys of one line each, 5 of `other`, the rest summed.
        assert_eq!(lines, MAX_KEYS + 5);
        let end = feed.finish();
        assert_eq!(end.len(), 1);
        assert_eq!(end[0].count, 35);
    }

    #[test]
    fn sample_deltas_are_lines_with_the_reason_and_queue() {
        let mut feed = DropFeed::default();
        assert!(
            feed.sample(SEC, &[listener(10, 0)], &[overflows(100)])
                .is_empty()
        );
        // 37 more drops, 37 more ListenOverflows, the queue full: accept
        // queue full, 37.
        let lines = feed.sample(2 * SEC, &[listener(47, 2)], &[overflows(137)]);
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(l.source, DropSource::SockDiag);
        assert_eq!(l.reason, DropReason::AcceptQueueFull);
        assert_eq!(l.count, 37);
        assert_eq!(l.queue, Some((2, 1)));
        assert_eq!(feed.sampled_drops, 37);
        // A kernel-reported drop in between is not counted again.
        feed.drop(
            &drop_at(2 * SEC + 5, 8080, DropReason::AcceptQueueFull),
            None,
        );
        let lines = feed.sample(3 * SEC, &[listener(50, 2)], &[overflows(140)]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].count, 2);
        // Nothing new: no line.
        assert!(
            feed.sample(4 * SEC, &[listener(50, 0)], &[overflows(140)])
                .is_empty()
        );
    }

    #[test]
    fn json_has_every_documented_field_and_text_reads() {
        let mut feed = DropFeed::default();
        feed.sample(0, &[listener(0, 0)], &[overflows(0)]);
        let mut d = drop_at(5, 8080, DropReason::AcceptQueueFull);
        d.family = Family::V6;
        d.local = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        d.remote = IpAddr::V6(Ipv6Addr::LOCALHOST);
        d.syn = false;
        d.ack = true;
        d.rx_state = Some(TcpState::Listen);
        d.suppressed = 4;
        let line = feed.drop(&d, Some("TCP_LISTEN_OVERFLOW".into())).remove(0);
        let mut out = Vec::new();
        write_json(&mut out, &line, 1_700_000_000_000_000_000).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        let mut want = vec![
            "ts_ns",
            "kind",
            "event",
            "source",
            "listener",
            "destination",
            "family",
            "netns",
            "reason",
            "kernel_reason",
            "kernel_reason_id",
            "remote",
            "syn",
            "ack",
            "rx_state",
            "pid",
            "comm",
            "count",
            "kernel_suppressed",
            "accept_queue",
            "accept_queue_limit",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["event"], "drop");
        assert_eq!(v["kind"], "drop");
        assert_eq!(v["source"], "kernel");
        assert_eq!(v["listener"], "0.0.0.0:8080");
        assert_eq!(v["destination"], "127.0.0.1:8080");
        assert_eq!(v["reason"], "accept_queue_full");
        assert_eq!(v["kernel_reason"], "TCP_LISTEN_OVERFLOW");
        assert_eq!(v["kernel_reason_id"], 3);
        assert_eq!(v["remote"], "[::1]:40000");
        assert_eq!(v["ack"], true);
        assert_eq!(v["rx_state"], "LISTEN");
        assert_eq!(v["comm"], "slowacceptd");
        assert_eq!(v["kernel_suppressed"], 4);
        assert_eq!(v["accept_queue"], Value::Null);
        // Without the kernel's name: no kernel_reason field.
        let line = feed
            .drop(&drop_at(6, 9, DropReason::NoListener), None)
            .remove(0);
        let mut out = Vec::new();
        write_json(&mut out, &line, 1).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("kernel_reason").is_none());
        assert_eq!(v["listener"], Value::Null);
        let mut text = Vec::new();
        write_text(&mut text, &line, 1).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("127.0.0.1:9 "), "{text}");
        assert!(text.contains("DROP no listener (reset) SYN"), "{text}");
        // A sample line in text: the owner, the queue.
        let lines = feed.sample(SEC, &[listener(9, 2)], &[overflows(9)]);
        let mut text = Vec::new();
        write_text(&mut text, &lines[0], 1).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("slowacceptd"), "{text}");
        assert!(
            text.contains("DROP accept queue full x8 (sock_diag, queue 2/1)"),
            "{text}"
        );
    }

    #[test]
    fn process_names_are_escaped() {
        let mut feed = DropFeed::default();
        let mut s = listener(0, 0);
        s.owner = Some(SeenOwner {
            pid: 1,
            comm: Comm::from_name("a\x1b[31mb"),
        });
        feed.sample(0, &[s.clone()], &[overflows(0)]);
        s.drops = Some(3);
        let lines = feed.sample(SEC, &[s], &[overflows(3)]);
        let mut text = Vec::new();
        write_text(&mut text, &lines[0], 1).unwrap();
        assert!(!text.contains(&0x1b), "{}", String::from_utf8_lossy(&text));
    }

    #[test]
    fn the_summary_says_nothing_cleanly_and_counts_cleanly() {
        let mut feed = DropFeed::default();
        assert_eq!(
            feed.summary(),
            "no connection attempt dropped (none reported by the kernel, none in listeners' counts)"
        );
        feed.kernel_drops = 1;
        feed.kernel_lines = 1;
        assert_eq!(
            feed.summary(),
            "1 connection attempt dropped: 1 reported by the kernel, one line each, none from listeners' counts (sock_diag)"
        );
        feed.kernel_drops = 40;
        feed.kernel_lines = 7;
        feed.sampled_drops = 37;
        assert_eq!(
            feed.summary(),
            "77 connection attempts dropped: 40 reported by the kernel (7 lines, the rest summed into them), 37 from listeners' counts (sock_diag)"
        );
        feed.kernel_drops = 0;
        feed.kernel_lines = 0;
        assert_eq!(
            feed.summary(),
            "37 connection attempts dropped: none reported by the kernel, 37 from listeners' counts (sock_diag)"
        );
    }
}
