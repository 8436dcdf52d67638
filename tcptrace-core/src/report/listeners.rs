//! The report's listeners section (`listeners_in_window`): per listener,
//! the connection attempts dropped at it in the window (the whole recording
//! without `--from`/`--to`), by reason, when, and its accept queue; the
//! destinations that got drops with no listener; each namespace's drop
//! counters over the window. From the engine's listener table
//! ([`crate::listeners::ListenerTable`], fed by the recording's listener
//! samples and kernel-reported drops, format 6): its counts at the window's
//! start are subtracted from those at its end, and the records in the
//! window are watched for the moments (first and last drop, the deepest
//! queue). Absent when the recording has no listener records (format 5 and
//! older, or recorded without them).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::WorkloadFields;
use crate::{
    clock::WallClock,
    listeners::{DropCounters, DropReason, ListenerKey, ListenerTable, ReasonCounts, endpoint},
    record::Record,
};

/// Listener rows (and unmatched destinations) a report shows at most.
pub const MAX_ROWS: usize = 500;

/// `listeners_in_window` of `report --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenersSection {
    /// Listener samples in the window.
    pub samples: u64,
    /// Drops at listeners in the window, and by reason.
    pub drops_total: u64,
    pub drops_by_reason: BTreeMap<&'static str, u64>,
    /// Drops the kernel reported one by one in the window (matched to a
    /// listener or not), and those its rate limit only counted.
    pub kernel_reported: u64,
    pub kernel_suppressed: u64,
    /// Listeners, most drops in the window first (at most [`MAX_ROWS`]).
    pub listeners: Vec<ListenerWindowRow>,
    /// Listeners past [`MAX_ROWS`], not shown (the quietest).
    pub listeners_omitted: u64,
    /// Destinations with drops and no listener, most first.
    pub unmatched: Vec<UnmatchedWindowRow>,
    /// Each sampled namespace's drop counters over the window.
    pub namespaces: Vec<NamespaceWindow>,
}

/// One listener in the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerWindowRow {
    pub listener: String,
    pub netns: Option<u32>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    #[serde(flatten)]
    pub workload: WorkloadFields,
    /// The queue at the window's end (0 once closed), its limit, and the
    /// deepest a sample in the window saw.
    pub accept_queue: u32,
    pub accept_queue_limit: u32,
    pub accept_queue_peak: u32,
    pub drops_total: u64,
    pub drops_by_reason: BTreeMap<&'static str, u64>,
    /// The kernel's count of its drops from before the recording began
    /// (when first seen; reason unknown).
    pub drops_before_recording: u64,
    /// `drops_total` over the window's length.
    pub drops_per_sec: f64,
    pub main_reason: Option<&'static str>,
    /// Wall clock of the first and last drop seen in the window (a
    /// sample's time for drops only its count showed).
    pub first_drop_ns: Option<u64>,
    pub last_drop_ns: Option<u64>,
    /// Gone from its namespace's samples by the window's end.
    pub closed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnmatchedWindowRow {
    pub destination: String,
    pub netns: Option<u32>,
    pub drops_total: u64,
    pub drops_by_reason: BTreeMap<&'static str, u64>,
}

/// A namespace's counters over the window (`None`: not on that kernel, or
/// not in the recording): `listen_overflows`, `listen_drops`,
/// `req_qfull_drop`, `req_qfull_cookies`, `paws_passive`, `paws_active`,
/// `paws_estab`, `syncookies_sent`, `syncookies_failed`, `paws_timewait`,
/// `tsecr_rejected`, `paws_old_ack` (the last three: PAWSTimewait,
/// TSEcrRejected, PAWSOldAck).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamespaceWindow {
    pub netns: u32,
    #[serde(flatten)]
    pub counters: DropCounters,
}

/// What the window's start was, and what happened in it.
#[derive(Debug, Default)]
pub(super) struct ListenerWindow {
    opened: bool,
    samples_at_open: u64,
    kernel_at_open: u64,
    suppressed_at_open: u64,
    listeners_at_open: HashMap<ListenerKey, ReasonCounts>,
    unmatched_at_open: HashMap<(Option<u32>, std::net::IpAddr, u16), ReasonCounts>,
    namespaces_at_open: BTreeMap<u32, DropCounters>,
    /// Per listener: (first, last) drop and the deepest queue in the window.
    moments: HashMap<ListenerKey, Moments>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Moments {
    first_drop: Option<u64>,
    last_drop: Option<u64>,
    peak_queue: u32,
    /// The listener's drop total when last looked at.
    seen_total: u64,
}

impl ListenerWindow {
    /// The window opens: the table's counts now are its baseline.
    pub(super) fn open(&mut self, t: &ListenerTable) {
        self.opened = true;
        self.samples_at_open = t.samples;
        self.kernel_at_open = t.kernel_drops.total();
        self.suppressed_at_open = t.kernel_suppressed;
        self.listeners_at_open = t.listeners.iter().map(|(k, l)| (*k, l.drops)).collect();
        self.unmatched_at_open = t.unmatched.iter().map(|(k, u)| (*k, u.drops)).collect();
        self.namespaces_at_open = t
            .namespaces
            .iter()
            .map(|(ns, d)| (*ns, d.since_start))
            .collect();
        self.moments = t
            .listeners
            .iter()
            .map(|(k, l)| {
                (
                    *k,
                    Moments {
                        seen_total: l.drops.total(),
                        ..Moments::default()
                    },
                )
            })
            .collect();
    }

    /// A listener sample or a kernel drop in the window, once the table
    /// took it in.
    pub(super) fn observe(&mut self, t: &ListenerTable, rec: &Record) {
        match rec {
            Record::Listeners {
                ts_ns, listeners, ..
            } => {
                for s in listeners {
                    let key = ListenerKey {
                        netns: s.netns,
                        addr: s.addr,
                        port: s.port,
                    };
                    let m = self.moments.entry(key).or_default();
                    m.peak_queue = m.peak_queue.max(s.queue);
                }
                // Drops the sample gave out.
                for (key, l) in &t.listeners {
                    self.note(*key, l.drops.total(), *ts_ns);
                }
            }
            Record::Drop(d) => {
                if let Some(key) = t.find(d.netns, d.local, d.local_port)
                    && let Some(l) = t.listeners.get(&key)
                {
                    self.note(key, l.drops.total(), d.ts_ns);
                }
            }
            _ => {}
        }
    }

    fn note(&mut self, key: ListenerKey, total: u64, ts: u64) {
        let m = self.moments.entry(key).or_default();
        if total > m.seen_total {
            m.first_drop.get_or_insert(ts);
            m.last_drop = Some(ts);
        }
        m.seen_total = total;
    }

    /// The section at the window's end; `None` when the table never had
    /// anything (no listener records).
    pub(super) fn finish(
        &self,
        t: &ListenerTable,
        clock: &WallClock,
        span_ns: u64,
        workload: impl Fn(Option<u64>) -> WorkloadFields,
    ) -> Option<ListenersSection> {
        if !t.is_active() {
            return None;
        }
        let secs = span_ns as f64 / 1e9;
        let mut total = ReasonCounts::default();
        let mut listeners: Vec<ListenerWindowRow> = t
            .listeners
            .values()
            .filter_map(|l| {
                let base = self.listeners_at_open.get(&l.key).copied();
                let drops = l.drops.since(&base.unwrap_or_default());
                let m = self.moments.get(&l.key).copied().unwrap_or_default();
                for r in DropReason::ALL {
                    total.add(r, drops.get(r));
                }
                // A listener closed before the window, with nothing in it:
                // not the window's.
                if l.closed_ns.is_some() && drops.total() == 0 && m.peak_queue == 0 {
                    return None;
                }
                Some(ListenerWindowRow {
                    listener: l.key.endpoint(),
                    netns: l.key.netns,
                    pid: l.owner.map(|o| o.pid),
                    comm: l.owner.map(|o| o.comm.to_str_lossy().into_owned()),
                    workload: workload(l.cgroup),
                    accept_queue: l.queue,
                    accept_queue_limit: l.limit,
                    accept_queue_peak: m.peak_queue,
                    drops_total: drops.total(),
                    drops_by_reason: drops.by_name(),
                    drops_before_recording: l.drops_before_tracing,
                    drops_per_sec: if secs > 0.0 {
                        drops.total() as f64 / secs
                    } else {
                        0.0
                    },
                    main_reason: drops.main_reason().map(DropReason::name),
                    first_drop_ns: m.first_drop.map(|t| clock.wall_ns(t)),
                    last_drop_ns: m.last_drop.map(|t| clock.wall_ns(t)),
                    closed: l.closed_ns.is_some(),
                })
            })
            .collect();
        listeners.sort_by(|a, b| {
            b.drops_total
                .cmp(&a.drops_total)
                .then_with(|| a.listener.cmp(&b.listener))
                .then(a.netns.cmp(&b.netns))
        });
        let listeners_omitted = listeners.len().saturating_sub(MAX_ROWS) as u64;
        listeners.truncate(MAX_ROWS);
        let mut unmatched: Vec<UnmatchedWindowRow> = t
            .unmatched
            .iter()
            .filter_map(|(k, u)| {
                let drops = u
                    .drops
                    .since(&self.unmatched_at_open.get(k).copied().unwrap_or_default());
                (drops.total() > 0).then(|| UnmatchedWindowRow {
                    destination: endpoint(u.addr, u.port),
                    netns: u.netns,
                    drops_total: drops.total(),
                    drops_by_reason: drops.by_name(),
                })
            })
            .collect();
        unmatched.sort_by(|a, b| {
            b.drops_total
                .cmp(&a.drops_total)
                .then_with(|| a.destination.cmp(&b.destination))
        });
        unmatched.truncate(MAX_ROWS);
        let namespaces = t
            .namespaces
            .iter()
            .map(|(ns, d)| NamespaceWindow {
                netns: *ns,
                counters: match self.namespaces_at_open.get(ns) {
                    Some(base) => d.since_start.since(base),
                    None => d.since_start,
                },
            })
            .collect();
        let (kernel_at_open, suppressed_at_open, samples_at_open) = if self.opened {
            (
                self.kernel_at_open,
                self.suppressed_at_open,
                self.samples_at_open,
            )
        } else {
            (0, 0, 0)
        };
        Some(ListenersSection {
            samples: t.samples.saturating_sub(samples_at_open),
            drops_total: total.total(),
            drops_by_reason: total.by_name(),
            kernel_reported: t.kernel_drops.total().saturating_sub(kernel_at_open),
            kernel_suppressed: t.kernel_suppressed.saturating_sub(suppressed_at_open),
            listeners,
            listeners_omitted,
            unmatched,
            namespaces,
        })
    }
}
