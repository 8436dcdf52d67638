//! Prometheus metrics of `--metrics ADDR` (`top`, `stats`, `watch`): what the
//! engine knows at scrape time, written with prometheus-client's text
//! (OpenMetrics) encoder. Pure: an [`Exposition`] is plain data built from a
//! snapshot and the aggregates; the HTTP edge is [`crate::http`].
//!
//! # Metrics
//!
//! | name | type | labels |
//! |------|------|--------|
//! | `tcptrace_connections` | gauge | `state` (every TCP state; TIME_WAIT counts timewait sockets) |
//! | `tcptrace_transitions_total` | counter | `old`, `new` (pairs seen at least once) |
//! | `tcptrace_time_wait_begun_total` | counter | |
//! | `tcptrace_connections_ended_total` | counter | `reason` (as `stats --json` `ended`) |
//! | `tcptrace_closes_total` | counter | `closer` (`active`, `passive`, `simultaneous`) |
//! | `tcptrace_close_wait_sockets` | gauge | `pid`, `comm`, `workload` |
//! | `tcptrace_close_wait_oldest_seconds` | gauge | `pid`, `comm`, `workload` |
//! | `tcptrace_close_wait_growth_per_minute` | gauge | `pid`, `comm`, `workload`, `window` (`1m`, `5m`, `15m`) |
//! | `tcptrace_workload_close_wait_sockets` | gauge | `workload`, `workload_kind` |
//! | `tcptrace_workload_close_wait_oldest_seconds` | gauge | `workload`, `workload_kind` |
//! | `tcptrace_workload_close_wait_growth_per_minute` | gauge | `workload`, `workload_kind`, `window` (`1m`, `5m`, `15m`) |
//! | `tcptrace_workload_time_wait_sockets` | gauge | `workload`, `workload_kind` |
//! | `tcptrace_time_wait_sockets` | gauge | `peer` (remote `ip:port` of connections opened here) |
//! | `tcptrace_time_wait_service_sockets` | gauge | `service` (local `ip:port` of connections accepted here: the server closed first), `comm` |
//! | `tcptrace_ephemeral_port_use_ratio` | gauge | `netns`, `local` (address), `peer`: share of the port budget connect() cannot pick (TIME_WAIT not reusable + open) |
//! | `tcptrace_ephemeral_port_time_wait_ratio` | gauge | `netns`, `local`, `peer`: TIME_WAIT over the ports of the budget |
//! | `tcptrace_ephemeral_ports` | gauge | (size of `ip_local_port_range`) |
//! | `tcptrace_time_wait_overflow_total` | counter | (TcpExt TCPTimeWaitOverflow since boot) |
//! | `tcptrace_state_duration_seconds` | histogram | `state` (time spent in it, per finished stay) |
//! | `tcptrace_handshake_duration_seconds` | histogram | `side` (`connect`, `accept`) |
//! | `tcptrace_connection_lifetime_seconds` | histogram | |
//! | `tcptrace_lost_events_total` | counter | `source` (as `stats --json` `lost`) |
//! | `tcptrace_events_total` | counter | (events applied) |
//! | `tcptrace_tracked_connections` | gauge | |
//! | `tcptrace_listen_drops_total` | counter | `listener` (local `ip:port`, `0.0.0.0:port` and `[::]:port` for the wildcards; `none`: drops to destinations nobody listens on), `netns`, `reason` (a `DropReason` name: `accept_queue_full`, `syn_queue_full`, `paws`, `timewait_paws`, `no_listener`, ...) |
//! | `tcptrace_accept_queue` | gauge | `listener`, `netns`: connections waiting to be accepted |
//! | `tcptrace_accept_queue_limit` | gauge | `listener`, `netns`: the accept queue's limit, min(backlog, net.core.somaxconn) |
//! | `tcptrace_alerts_firing` | gauge | `rule` (`watch`: its rules; `top`: watch's default rules; absent from `stats`) |
//!
//! Cardinality is capped: at most [`MAX_PROCESS_SERIES`] processes (those
//! holding the most CLOSE_WAIT sockets), [`MAX_PEER_SERIES`] peers and
//! services (most TIME_WAIT sockets) get their own series; the rest are
//! summed into one series labelled `pid="other"` / `peer="other"` /
//! `service="other"`, so totals stay exact. Port budgets (ratios, which do
//! not add up) keep the [`MAX_PEER_SERIES`] fullest only. Listeners: at
//! most [`MAX_LISTENER_SERIES`] (most drops first, then the fullest
//! queues), the rest summed into `listener="other"` (`netns=""`); closed
//! listeners keep their drop counters but have no queue series. The
//! listener families have no samples when no listener data came (a source
//! without the sampler, a recording without listener records).
//! Sockets with no known owner have `pid="unknown"`. Workloads likewise:
//! at most [`MAX_WORKLOAD_SERIES`], the rest in `workload="other"`; a
//! process whose workload is not known has `workload="unknown"`. The
//! labels are not `pod`/`namespace`/`container`: Kubernetes service
//! discovery gives those to tcptrace's own pod, and a clash would rename
//! ours to `exported_*`; `workload` carries `ns/pod/container`.
//!
//! Histograms come from the HDR histograms of `stats` (2 significant
//! digits): bucket counts are exact to the HDR bucket holding a bound, and
//! `_sum` is accurate to about 1%.

use hdrhistogram::Histogram;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use crate::{
    alerts::Rule,
    model::TcpState,
    stats::{Aggregates, HistKind, Snapshot},
};

/// Processes with their own CLOSE_WAIT series, at most.
pub const MAX_PROCESS_SERIES: usize = 50;
/// Workloads with their own series, at most.
pub const MAX_WORKLOAD_SERIES: usize = 50;
/// Listeners with their own series, at most.
pub const MAX_LISTENER_SERIES: usize = 50;
/// Peers with their own TIME_WAIT series, at most.
pub const MAX_PEER_SERIES: usize = 50;

/// Upper bounds of the duration buckets, seconds (+Inf is added).
pub const BUCKETS_SECS: [f64; 20] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The content type of [`Exposition::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A histogram as Prometheus wants it: per-bucket counts (not cumulative;
/// the encoder accumulates), the last bound `+Inf`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

impl Buckets {
    /// Every bucket at zero.
    pub fn empty() -> Self {
        Self {
            sum: 0.0,
            count: 0,
            buckets: BUCKETS_SECS
                .iter()
                .map(|&b| (b, 0))
                .chain([(f64::INFINITY, 0)])
                .collect(),
        }
    }

    /// Buckets of an HDR histogram of microseconds.
    pub fn from_hdr_us(h: &Histogram<u32>) -> Self {
        let Self { mut buckets, .. } = Self::empty();
        let mut sum = 0.0;
        for v in h.iter_recorded() {
            let n = u64::from(v.count_at_value());
            let secs = h.median_equivalent(v.value_iterated_to()) as f64 / 1e6;
            sum += secs * n as f64;
            let slot = BUCKETS_SECS
                .iter()
                .position(|&b| secs <= b)
                .unwrap_or(BUCKETS_SECS.len());
            buckets[slot].1 += n;
        }
        Self {
            sum,
            count: h.len(),
            buckets,
        }
    }
}

/// CLOSE_WAIT of one process (or of the capped rest).
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessSeries {
    pub pid: String,
    pub comm: String,
    /// The process's workload (`unknown` when not known).
    pub workload: String,
    pub count: u64,
    pub oldest_secs: f64,
    /// Growth per minute over 1, 5 and 15 min.
    pub growth_per_min: [f64; 3],
}

/// One workload's series.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSeries {
    pub workload: String,
    pub kind: String,
    pub count: u64,
    pub oldest_secs: f64,
    /// CLOSE_WAIT growth per minute over 1, 5 and 15 min (0 for TIME_WAIT
    /// rows; summed into `other`, as per process).
    pub growth_per_min: [f64; 3],
}

/// The first [`MAX_WORKLOAD_SERIES`] rows, the rest summed into `other`.
fn capped_workloads(rows: impl ExactSizeIterator<Item = WorkloadSeries>) -> Vec<WorkloadSeries> {
    let mut out = Vec::new();
    let mut other: Option<WorkloadSeries> = None;
    for (i, r) in rows.enumerate() {
        if i < MAX_WORKLOAD_SERIES {
            out.push(r);
        } else {
            let o = other.get_or_insert_with(|| WorkloadSeries {
                workload: "other".into(),
                kind: "other".into(),
                count: 0,
                oldest_secs: 0.0,
                growth_per_min: [0.0; 3],
            });
            o.count += r.count;
            o.oldest_secs = o.oldest_secs.max(r.oldest_secs);
            for (sum, g) in o.growth_per_min.iter_mut().zip(r.growth_per_min) {
                *sum += g;
            }
        }
    }
    out.extend(other);
    out
}

/// One port budget's ratios and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetSeries {
    pub netns: String,
    pub local: String,
    pub peer: String,
    /// Share connect() cannot pick.
    pub use_ratio: f64,
    /// TIME_WAIT over the ports.
    pub time_wait_ratio: f64,
}

/// One listener's (or the capped rest's) accept queue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSeries {
    pub listener: String,
    pub netns: String,
    pub queue: u64,
    pub limit: u64,
}

/// Drops of one listener (`none`: no listener; `other`: the capped rest)
/// for one reason.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenDropSeries {
    pub listener: String,
    pub netns: String,
    pub reason: &'static str,
    pub count: u64,
}

fn netns_label(n: Option<u32>) -> String {
    n.map_or_else(String::new, |n| n.to_string())
}

/// The listener series of `snap`: `None` without listener data.
fn listener_series(snap: &Snapshot) -> Option<(Vec<ListenDropSeries>, Vec<QueueSeries>)> {
    use crate::listeners::{DropReason, ListenerRow};
    let rows = snap.listeners.as_ref()?;
    let mut order: Vec<&ListenerRow> = rows.iter().collect();
    let fill = |r: &ListenerRow| {
        if r.accept_queue_limit == 0 {
            0.0
        } else {
            f64::from(r.accept_queue) / f64::from(r.accept_queue_limit)
        }
    };
    order.sort_by(|a, b| {
        b.drops_total
            .cmp(&a.drops_total)
            .then(fill(b).total_cmp(&fill(a)))
            .then(a.listener.cmp(&b.listener))
            .then(a.netns.cmp(&b.netns))
    });
    let (shown, rest) = order.split_at(order.len().min(MAX_LISTENER_SERIES));
    let mut drops = Vec::new();
    let mut queues = Vec::new();
    for r in shown {
        for reason in DropReason::ALL {
            let n = r.drops.get(reason);
            if n > 0 {
                drops.push(ListenDropSeries {
                    listener: r.listener.clone(),
                    netns: netns_label(r.netns),
                    reason: reason.name(),
                    count: n,
                });
            }
        }
        if r.closed_age_ms.is_none() {
            queues.push(QueueSeries {
                listener: r.listener.clone(),
                netns: netns_label(r.netns),
                queue: u64::from(r.accept_queue),
                limit: u64::from(r.accept_queue_limit),
            });
        }
    }
    if !rest.is_empty() {
        let mut other = crate::listeners::ReasonCounts::default();
        let (mut queue, mut limit) = (0u64, 0u64);
        for r in rest {
            for reason in DropReason::ALL {
                other.add(reason, r.drops.get(reason));
            }
            if r.closed_age_ms.is_none() {
                queue += u64::from(r.accept_queue);
                limit += u64::from(r.accept_queue_limit);
            }
        }
        for reason in DropReason::ALL {
            if other.get(reason) > 0 {
                drops.push(ListenDropSeries {
                    listener: "other".into(),
                    netns: String::new(),
                    reason: reason.name(),
                    count: other.get(reason),
                });
            }
        }
        queues.push(QueueSeries {
            listener: "other".into(),
            netns: String::new(),
            queue,
            limit,
        });
    }
    // Destinations without a listener, per namespace and reason.
    let mut none: std::collections::BTreeMap<(String, &'static str), u64> = Default::default();
    for u in snap.listen_drops.iter().flat_map(|d| &d.unmatched) {
        for (&reason, &n) in &u.drops_by_reason {
            *none.entry((netns_label(u.netns), reason)).or_default() += n;
        }
    }
    for ((netns, reason), count) in none {
        drops.push(ListenDropSeries {
            listener: "none".into(),
            netns,
            reason,
            count,
        });
    }
    Some((drops, queues))
}

/// Everything one scrape shows, as plain data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    pub states: Vec<(&'static str, u64)>,
    pub transitions: Vec<(&'static str, &'static str, u64)>,
    pub time_wait_begun: u64,
    pub ended: Vec<(&'static str, u64)>,
    pub closers: Vec<(&'static str, u64)>,
    pub close_wait: Vec<ProcessSeries>,
    pub close_wait_by_workload: Vec<WorkloadSeries>,
    pub time_wait_by_workload: Vec<WorkloadSeries>,
    pub time_wait_by_peer: Vec<(String, u64)>,
    /// (service ip:port, netns, comm, count).
    pub time_wait_by_service: Vec<(String, String, String, u64)>,
    pub port_budgets: Vec<BudgetSeries>,
    pub ephemeral_ports: u64,
    pub tw_overflow: u64,
    /// (label name, label value or "" for none, metric, buckets).
    pub durations: Vec<(&'static str, &'static str, &'static str, Buckets)>,
    pub lost: Vec<(&'static str, u64)>,
    pub events_total: u64,
    pub tracked: u64,
    /// Drops per listener and reason; `None` without listener data.
    pub listen_drops: Option<Vec<ListenDropSeries>>,
    /// Accept queues per listener; `None` without listener data.
    pub accept_queues: Option<Vec<QueueSeries>>,
    /// Firing count per rule; `None` when no rules are evaluated.
    pub alerts_firing: Option<Vec<(&'static str, u64)>>,
}

const STATE_DURATION: &str = "tcptrace_state_duration";
const HANDSHAKE: &str = "tcptrace_handshake_duration";
const LIFETIME: &str = "tcptrace_connection_lifetime";

/// Which metric (and label) each HDR histogram is exported as.
fn duration_metric(kind: HistKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        HistKind::HandshakeConnect => (HANDSHAKE, "side", "connect"),
        HistKind::HandshakeAccept => (HANDSHAKE, "side", "accept"),
        HistKind::Lifetime => (LIFETIME, "", ""),
        HistKind::Established => (STATE_DURATION, "state", "ESTABLISHED"),
        HistKind::CloseWait => (STATE_DURATION, "state", "CLOSE_WAIT"),
        HistKind::FinWait1 => (STATE_DURATION, "state", "FIN_WAIT1"),
        HistKind::FinWait2 => (STATE_DURATION, "state", "FIN_WAIT2"),
        HistKind::LastAck => (STATE_DURATION, "state", "LAST_ACK"),
        HistKind::TimeWait => (STATE_DURATION, "state", "TIME_WAIT"),
    }
}

impl Exposition {
    /// What a scrape shows of `snap` (built at scrape time) and `aggs`;
    /// `firing` holds the rule name of each firing alert when rules run.
    pub fn new(snap: &Snapshot, aggs: &Aggregates, firing: Option<&[&'static str]>) -> Self {
        // Every state a socket lives in, always (stable series); CLOSE and
        // NEW_SYN_RECV only if ever non-zero.
        let states = TcpState::ALL
            .iter()
            .map(|s| (s.name(), snap.states.get(s.name()).copied().unwrap_or(0)))
            .filter(|&(name, n)| n > 0 || !matches!(name, "CLOSE" | "NEW_SYN_RECV"))
            .collect();
        let mut transitions = Vec::new();
        for old in TcpState::ALL {
            for new in TcpState::ALL {
                let n = aggs.transitions[old as usize][new as usize];
                if n > 0 {
                    transitions.push((old.name(), new.name(), n));
                }
            }
        }
        let mut close_wait: Vec<ProcessSeries> = snap
            .close_wait_by_process
            .iter()
            .take(MAX_PROCESS_SERIES)
            .map(|p| ProcessSeries {
                pid: p.pid.map_or_else(|| "unknown".into(), |p| p.to_string()),
                comm: p.comm.clone().unwrap_or_default(),
                workload: p
                    .workload
                    .workload
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
                count: p.count,
                oldest_secs: p.oldest_age_ms as f64 / 1e3,
                growth_per_min: [p.growth_per_min, p.growth_per_min_5m, p.growth_per_min_15m],
            })
            .collect();
        let rest = &snap.close_wait_by_process[close_wait.len()..];
        if !rest.is_empty() {
            close_wait.push(ProcessSeries {
                pid: "other".into(),
                comm: String::new(),
                workload: "other".into(),
                count: rest.iter().map(|p| p.count).sum(),
                oldest_secs: rest.iter().map(|p| p.oldest_age_ms).max().unwrap_or(0) as f64 / 1e3,
                growth_per_min: [0, 1, 2].map(|i| {
                    rest.iter()
                        .map(|p| [p.growth_per_min, p.growth_per_min_5m, p.growth_per_min_15m][i])
                        .sum()
                }),
            });
        }
        let close_wait_by_workload =
            capped_workloads(snap.close_wait_by_workload.iter().map(|w| WorkloadSeries {
                workload: w.workload.clone(),
                kind: w.workload_kind.into(),
                count: w.count,
                oldest_secs: w.oldest_age_ms as f64 / 1e3,
                growth_per_min: [w.growth_per_min, w.growth_per_min_5m, w.growth_per_min_15m],
            }));
        let time_wait_by_workload =
            capped_workloads(snap.time_wait_by_workload.iter().map(|w| WorkloadSeries {
                workload: w.workload.clone(),
                kind: w.workload_kind.into(),
                count: w.count,
                oldest_secs: 0.0,
                growth_per_min: [0.0; 3],
            }));
        let mut time_wait_by_peer: Vec<(String, u64)> = snap
            .time_wait_by_peer
            .iter()
            .take(MAX_PEER_SERIES)
            .map(|p| {
                (
                    std::net::SocketAddr::new(p.daddr, p.dport).to_string(),
                    p.count,
                )
            })
            .collect();
        let rest: u64 = snap
            .time_wait_by_peer
            .iter()
            .skip(MAX_PEER_SERIES)
            .map(|p| p.count)
            .sum();
        if snap.time_wait_by_peer.len() > MAX_PEER_SERIES {
            time_wait_by_peer.push(("other".into(), rest));
        }
        let mut time_wait_by_service: Vec<(String, String, String, u64)> = snap
            .time_wait_by_service
            .iter()
            .take(MAX_PEER_SERIES)
            .map(|s| {
                (
                    std::net::SocketAddr::new(s.saddr, s.sport).to_string(),
                    s.netns.to_string(),
                    s.comm.clone().unwrap_or_default(),
                    s.count,
                )
            })
            .collect();
        if snap.time_wait_by_service.len() > MAX_PEER_SERIES {
            let rest = snap.time_wait_by_service[MAX_PEER_SERIES..]
                .iter()
                .map(|s| s.count)
                .sum();
            time_wait_by_service.push(("other".into(), String::new(), String::new(), rest));
        }
        let port_budgets = snap
            .port_budgets
            .iter()
            .take(MAX_PEER_SERIES)
            .map(|b| BudgetSeries {
                netns: b.netns.to_string(),
                local: b.saddr.to_string(),
                peer: std::net::SocketAddr::new(b.daddr, b.dport).to_string(),
                use_ratio: b.in_use_ratio,
                time_wait_ratio: b.port_range_ratio,
            })
            .collect();
        let durations = HistKind::ALL
            .iter()
            .map(|&k| {
                let (metric, label, value) = duration_metric(k);
                let buckets = aggs
                    .all
                    .get(k)
                    .map_or_else(Buckets::empty, Buckets::from_hdr_us);
                (metric, label, value, buckets)
            })
            .collect();
        let alerts_firing = firing.map(|names| {
            Rule::ALL
                .iter()
                .map(|r| {
                    let n = names.iter().filter(|&&f| f == r.name()).count() as u64;
                    (r.name(), n)
                })
                .collect()
        });
        let (listen_drops, accept_queues) = listener_series(snap).unzip();
        let (lo, hi) = snap.port_range;
        Self {
            listen_drops,
            accept_queues,
            states,
            transitions,
            time_wait_begun: aggs.timewait_total,
            ended: snap.ended.iter().map(|(&k, &v)| (k, v)).collect(),
            closers: snap.closers.iter().map(|(&k, &v)| (k, v)).collect(),
            close_wait,
            close_wait_by_workload,
            time_wait_by_workload,
            time_wait_by_peer,
            time_wait_by_service,
            port_budgets,
            ephemeral_ports: if hi >= lo { (hi - lo) as u64 + 1 } else { 0 },
            tw_overflow: snap.tw_overflow,
            durations,
            lost: snap.lost.iter().map(|(&k, &v)| (k, v)).collect(),
            events_total: aggs.events_total,
            tracked: snap.tracked,
            alerts_firing,
        }
    }

    /// The text exposition (OpenMetrics, served as [`CONTENT_TYPE`]).
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// One labelled value of a family: label pairs and the value.
type Labelled<'a, V> = (Vec<(&'static str, &'a str)>, V);

fn gauges<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: &[Labelled<'_, V>],
) -> std::fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in values {
        if labels.is_empty() {
            metric.encode_gauge(v)?;
        } else {
            metric.encode_family(labels)?.encode_gauge(v)?;
        }
    }
    Ok(())
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[Labelled<'_, u64>],
) -> std::fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in values {
        if labels.is_empty() {
            metric.encode_counter::<NoLabelSet, _, u64>(v, None)?;
        } else {
            metric
                .encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
    }
    Ok(())
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let one = |name: &'static str, v: &'static str| vec![(name, v)];
        gauges(
            &mut enc,
            "tcptrace_connections",
            "Live TCP sockets by state (TIME_WAIT: timewait sockets).",
            None,
            &self
                .states
                .iter()
                .map(|&(s, n)| (one("state", s), n as i64))
                .collect::<Vec<_>>(),
        )?;
        counters(
            &mut enc,
            "tcptrace_transitions",
            "TCP state transitions seen, by old and new state.",
            &self
                .transitions
                .iter()
                .map(|&(o, n, c)| (vec![("old", o), ("new", n)], c))
                .collect::<Vec<_>>(),
        )?;
        counters(
            &mut enc,
            "tcptrace_time_wait_begun",
            "Timewait sockets created.",
            &[(vec![], self.time_wait_begun)],
        )?;
        counters(
            &mut enc,
            "tcptrace_connections_ended",
            "Connections ended, by how they ended.",
            &self
                .ended
                .iter()
                .map(|&(r, n)| (one("reason", r), n))
                .collect::<Vec<_>>(),
        )?;
        counters(
            &mut enc,
            "tcptrace_closes",
            "Connections closed, by which side sent FIN first.",
            &self
                .closers
                .iter()
                .map(|&(c, n)| (one("closer", c), n))
                .collect::<Vec<_>>(),
        )?;
        let by_process = |f: &dyn Fn(&ProcessSeries) -> f64| -> Vec<Labelled<'_, f64>> {
            self.close_wait
                .iter()
                .map(|p| {
                    (
                        vec![
                            ("pid", p.pid.as_str()),
                            ("comm", p.comm.as_str()),
                            ("workload", p.workload.as_str()),
                        ],
                        f(p),
                    )
                })
                .collect()
        };
        gauges(
            &mut enc,
            "tcptrace_close_wait_sockets",
            "CLOSE_WAIT sockets held, by process (capped; the rest in pid=\"other\").",
            None,
            &self
                .close_wait
                .iter()
                .map(|p| {
                    (
                        vec![
                            ("pid", p.pid.as_str()),
                            ("comm", p.comm.as_str()),
                            ("workload", p.workload.as_str()),
                        ],
                        p.count as i64,
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        gauges(
            &mut enc,
            "tcptrace_close_wait_oldest",
            "Age of the process's oldest CLOSE_WAIT socket.",
            Some(&Unit::Seconds),
            &by_process(&|p| p.oldest_secs),
        )?;
        let mut growth = Vec::new();
        for p in &self.close_wait {
            for (i, window) in ["1m", "5m", "15m"].into_iter().enumerate() {
                growth.push((
                    vec![
                        ("pid", p.pid.as_str()),
                        ("comm", p.comm.as_str()),
                        ("workload", p.workload.as_str()),
                        ("window", window),
                    ],
                    p.growth_per_min[i],
                ));
            }
        }
        gauges(
            &mut enc,
            "tcptrace_close_wait_growth_per_minute",
            "CLOSE_WAIT growth of the process, sockets per minute over the window.",
            None,
            &growth,
        )?;
        fn by_workload(rows: &[WorkloadSeries]) -> Vec<Labelled<'_, i64>> {
            rows.iter()
                .map(|w| {
                    (
                        vec![
                            ("workload", w.workload.as_str()),
                            ("workload_kind", w.kind.as_str()),
                        ],
                        w.count as i64,
                    )
                })
                .collect()
        }
        gauges(
            &mut enc,
            "tcptrace_workload_close_wait_sockets",
            "CLOSE_WAIT sockets held, by workload (unit, container, pod; capped; the rest in workload=\"other\").",
            None,
            &by_workload(&self.close_wait_by_workload),
        )?;
        gauges(
            &mut enc,
            "tcptrace_workload_close_wait_oldest",
            "Age of the workload's oldest CLOSE_WAIT socket.",
            Some(&Unit::Seconds),
            &self
                .close_wait_by_workload
                .iter()
                .map(|w| {
                    (
                        vec![
                            ("workload", w.workload.as_str()),
                            ("workload_kind", w.kind.as_str()),
                        ],
                        w.oldest_secs,
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        let mut growth = Vec::new();
        for w in &self.close_wait_by_workload {
            for (i, window) in ["1m", "5m", "15m"].into_iter().enumerate() {
                growth.push((
                    vec![
                        ("workload", w.workload.as_str()),
                        ("workload_kind", w.kind.as_str()),
                        ("window", window),
                    ],
                    w.growth_per_min[i],
                ));
            }
        }
        gauges(
            &mut enc,
            "tcptrace_workload_close_wait_growth_per_minute",
            "CLOSE_WAIT growth of the workload, sockets per minute over the window (capped; the rest in workload=\"other\").",
            None,
            &growth,
        )?;
        gauges(
            &mut enc,
            "tcptrace_workload_time_wait_sockets",
            "TIME_WAIT sockets by the workload that owned them (capped; the rest in workload=\"other\").",
            None,
            &by_workload(&self.time_wait_by_workload),
        )?;
        gauges(
            &mut enc,
            "tcptrace_time_wait_sockets",
            "TIME_WAIT sockets by remote ip:port (capped; the rest in peer=\"other\").",
            None,
            &self
                .time_wait_by_peer
                .iter()
                .map(|(peer, n)| (vec![("peer", peer.as_str())], *n as i64))
                .collect::<Vec<_>>(),
        )?;
        gauges(
            &mut enc,
            "tcptrace_time_wait_service_sockets",
            "TIME_WAIT sockets on connections a local service accepted (the server closed first), by service ip:port and network namespace (capped; the rest in service=\"other\").",
            None,
            &self
                .time_wait_by_service
                .iter()
                .map(|(service, netns, comm, n)| {
                    (
                        vec![
                            ("service", service.as_str()),
                            ("netns", netns.as_str()),
                            ("comm", comm.as_str()),
                        ],
                        *n as i64,
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        let budget = |f: &dyn Fn(&BudgetSeries) -> f64| {
            self.port_budgets
                .iter()
                .map(|b| {
                    (
                        vec![
                            ("netns", b.netns.as_str()),
                            ("local", b.local.as_str()),
                            ("peer", b.peer.as_str()),
                        ],
                        f(b),
                    )
                })
                .collect::<Vec<_>>()
        };
        gauges(
            &mut enc,
            "tcptrace_ephemeral_port_use_ratio",
            "Share of the ephemeral ports of (netns, local address, peer) that connect() cannot pick: open sockets and TIME_WAIT not reusable (the fullest budgets only).",
            None,
            &budget(&|b| b.use_ratio),
        )?;
        gauges(
            &mut enc,
            "tcptrace_ephemeral_port_time_wait_ratio",
            "TIME_WAIT sockets over the ephemeral ports of (netns, local address, peer), tcp_tw_reuse ignored.",
            None,
            &budget(&|b| b.time_wait_ratio),
        )?;
        gauges(
            &mut enc,
            "tcptrace_ephemeral_ports",
            "Size of net.ipv4.ip_local_port_range.",
            None,
            &[(vec![], self.ephemeral_ports as i64)],
        )?;
        counters(
            &mut enc,
            "tcptrace_time_wait_overflow",
            "TcpExt TCPTimeWaitOverflow since boot (timewait sockets not created).",
            &[(vec![], self.tw_overflow)],
        )?;
        for (metric, help) in [
            (
                STATE_DURATION,
                "Time spent in a state, per finished stay in it.",
            ),
            (HANDSHAKE, "SYN to ESTABLISHED, by side."),
            (LIFETIME, "Whole connection lifetime, first state to CLOSE."),
        ] {
            let mut m =
                enc.encode_descriptor(metric, help, Some(&Unit::Seconds), MetricType::Histogram)?;
            for (_, label, value, b) in self.durations.iter().filter(|d| d.0 == metric) {
                if label.is_empty() {
                    m.encode_histogram::<NoLabelSet>(b.sum, b.count, &b.buckets, None)?;
                } else {
                    m.encode_family(&[(*label, *value)])?
                        .encode_histogram::<NoLabelSet>(b.sum, b.count, &b.buckets, None)?;
                }
            }
        }
        counters(
            &mut enc,
            "tcptrace_lost_events",
            "Events lost, by where they were lost. Non-zero means counts may be low.",
            &self
                .lost
                .iter()
                .map(|&(s, n)| (one("source", s), n))
                .collect::<Vec<_>>(),
        )?;
        counters(
            &mut enc,
            "tcptrace_events",
            "Events applied (transitions and timewait begin, re-arm, end).",
            &[(vec![], self.events_total)],
        )?;
        gauges(
            &mut enc,
            "tcptrace_tracked_connections",
            "Connections the engine tracks now.",
            None,
            &[(vec![], self.tracked as i64)],
        )?;
        // Described always (rules may name them); samples only with
        // listener data.
        {
            let drops = self.listen_drops.as_deref().unwrap_or(&[]);
            counters(
                &mut enc,
                "tcptrace_listen_drops",
                "Connection attempts (SYNs, handshake ACKs) dropped, by listener ip:port, network namespace and reason (capped; the rest in listener=\"other\"; listener=\"none\": nobody listens there).",
                &drops
                    .iter()
                    .map(|d| {
                        (
                            vec![
                                ("listener", d.listener.as_str()),
                                ("netns", d.netns.as_str()),
                                ("reason", d.reason),
                            ],
                            d.count,
                        )
                    })
                    .collect::<Vec<_>>(),
            )?;
        }
        {
            let queues = self.accept_queues.as_deref().unwrap_or(&[]);
            let by_listener = |f: &dyn Fn(&QueueSeries) -> u64| {
                queues
                    .iter()
                    .map(|q| {
                        (
                            vec![
                                ("listener", q.listener.as_str()),
                                ("netns", q.netns.as_str()),
                            ],
                            f(q) as i64,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            gauges(
                &mut enc,
                "tcptrace_accept_queue",
                "Connections waiting in the listener's accept queue (capped; the rest summed in listener=\"other\").",
                None,
                &by_listener(&|q| q.queue),
            )?;
            gauges(
                &mut enc,
                "tcptrace_accept_queue_limit",
                "The listener's accept queue limit: min(listen() backlog, net.core.somaxconn).",
                None,
                &by_listener(&|q| q.limit),
            )?;
        }
        if let Some(firing) = &self.alerts_firing {
            gauges(
                &mut enc,
                "tcptrace_alerts_firing",
                "Alerts firing now, by rule (tcptrace watch).",
                None,
                &firing
                    .iter()
                    .map(|&(r, n)| (one("rule", r), n as i64))
                    .collect::<Vec<_>>(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
