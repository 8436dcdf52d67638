//! The rules of `tcptrace watch`, evaluated against stats snapshots. Pure:
//! the clock comes in with every evaluation, so thresholds, slopes,
//! hysteresis, repeat and resolve are unit-tested without a kernel.
//!
//! A rule *fires* when its value reaches the threshold, *repeats* at most
//! every `repeat` while it holds, and *resolves* once the value falls below
//! [`CLEAR_RATIO`] of the threshold (hysteresis: a value hovering at the
//! threshold does not flap). Counter rules (TIME_WAIT bucket overflow, lost
//! events) hold while the counter rose within the last [`QUIET`].
//!
//! With `--stacks`, a per-process CLOSE_WAIT alert names the code that
//! opened most of the process's CLOSE_WAIT sockets (`opened_at`,
//! `opened_at_path`, `opened_at_count`, from `close_wait_by_stack`), and its
//! message ends `; opened at checkout_reserve_items (412 of 460)`.
//!
//! `listen_drops` fires per listener (its namespace and `ip:port`) whose
//! drops per second over the last 10 s (`listeners[].drops_per_sec`) reach
//! `listen_drops_per_sec`; the alert carries `listener`, `netns` and
//! `reason` (the main reason of the recent drops) besides the owner.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    clock::{fmt_age, hms_millis},
    stats::Snapshot,
};

/// A firing rule resolves below this share of its threshold.
pub const CLEAR_RATIO: f64 = 0.8;
/// A counter rule resolves after this long without the counter rising.
pub const QUIET: Duration = Duration::from_secs(60);

/// Thresholds; every field has a default that makes sense unconfigured
/// (the TOML file of `--config` uses these names).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// CLOSE_WAIT sockets held by one process.
    pub close_wait_per_process: u64,
    /// CLOSE_WAIT sockets on the host (0 = off).
    pub close_wait_host: u64,
    /// CLOSE_WAIT growth of one process, sockets per minute, averaged over
    /// `close_wait_growth_window_min` minutes (1, 5 or 15).
    pub close_wait_growth_per_min: f64,
    pub close_wait_growth_window_min: u64,
    /// Age of a process's oldest CLOSE_WAIT socket, seconds.
    pub close_wait_oldest_secs: u64,
    /// Share (0..1) of `ip_local_port_range` held in TIME_WAIT to one peer.
    pub time_wait_port_share: f64,
    /// Alert when TCPTimeWaitOverflow rises.
    pub time_wait_overflow: bool,
    /// Events lost (all sources) within a minute (0 = off).
    pub lost_events: u64,
    /// Connection attempts dropped at one listener, per second over the
    /// last 10 s (any reason: accept queue full, SYN queue full, PAWS...;
    /// 0 = off).
    pub listen_drops_per_sec: f64,
    /// Seconds between repeats of an alert that still holds.
    pub repeat_secs: u64,
    /// What the CLOSE_WAIT count, growth and age rules are about: each
    /// process (`"process"`, the default) or each workload (`"workload"`: a
    /// unit, container or pod, whatever its pids; `stats --json`
    /// `close_wait_by_workload`, whose growth history is the workload's, so
    /// a restarted process does not restart it).
    pub group_by: GroupBy,
}

/// What per-owner CLOSE_WAIT rules are evaluated on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    #[default]
    Process,
    Workload,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "process" => Some(Self::Process),
            "workload" => Some(Self::Workload),
            _ => None,
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            close_wait_per_process: 100,
            close_wait_host: 1000,
            close_wait_growth_per_min: 10.0,
            close_wait_growth_window_min: 5,
            close_wait_oldest_secs: 300,
            time_wait_port_share: 0.5,
            time_wait_overflow: true,
            lost_events: 1,
            listen_drops_per_sec: 1.0,
            repeat_secs: 600,
            group_by: GroupBy::Process,
        }
    }
}

impl Rules {
    /// Why these rules cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        const YEAR_SECS: u64 = 31_536_000;
        if ![1, 5, 15].contains(&self.close_wait_growth_window_min) {
            return Err(format!(
                "close_wait_growth_window_min = {} must be 1, 5 or 15",
                self.close_wait_growth_window_min
            ));
        }
        if !(self.time_wait_port_share > 0.0 && self.time_wait_port_share <= 1.0) {
            return Err(format!(
                "time_wait_port_share = {} must be in (0, 1]",
                self.time_wait_port_share
            ));
        }
        if !(self.close_wait_growth_per_min.is_finite() && self.close_wait_growth_per_min > 0.0) {
            return Err("close_wait_growth_per_min must be a positive number".into());
        }
        if !(self.listen_drops_per_sec.is_finite() && self.listen_drops_per_sec >= 0.0) {
            return Err("listen_drops_per_sec must be a number >= 0 (0 = off)".into());
        }
        if !(1..=YEAR_SECS).contains(&self.repeat_secs) {
            return Err(format!(
                "repeat_secs = {} is out of range: give 1 to {YEAR_SECS}",
                self.repeat_secs
            ));
        }
        if self.close_wait_oldest_secs > YEAR_SECS {
            return Err(format!(
                "close_wait_oldest_secs = {} is out of range: give 0 to {YEAR_SECS}",
                self.close_wait_oldest_secs
            ));
        }
        Ok(())
    }
}

/// The rules, by the name alerts carry in `rule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    CloseWaitCount,
    CloseWaitHost,
    CloseWaitGrowth,
    CloseWaitOldest,
    TimeWaitPorts,
    TimeWaitOverflow,
    LostEvents,
    ListenDrops,
}

impl Rule {
    pub const ALL: [Rule; 8] = [
        Rule::CloseWaitCount,
        Rule::CloseWaitHost,
        Rule::CloseWaitGrowth,
        Rule::CloseWaitOldest,
        Rule::TimeWaitPorts,
        Rule::TimeWaitOverflow,
        Rule::LostEvents,
        Rule::ListenDrops,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Rule::CloseWaitCount => "close_wait_count",
            Rule::CloseWaitHost => "close_wait_host",
            Rule::CloseWaitGrowth => "close_wait_growth",
            Rule::CloseWaitOldest => "close_wait_oldest",
            Rule::TimeWaitPorts => "time_wait_ports",
            Rule::TimeWaitOverflow => "time_wait_overflow",
            Rule::LostEvents => "lost_events",
            Rule::ListenDrops => "listen_drops",
        }
    }
}

/// What a rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Subject {
    Host,
    /// A process (`None`: sockets whose owner is unknown).
    Process(Option<u32>),
    /// A port budget: (namespace, local address, destination ip:port).
    Budget(u32, IpAddr, IpAddr, u16),
    /// A workload, by a hash of its name (`group_by = "workload"`).
    Workload(u64),
    /// A listener: its namespace and a hash of its `ip:port`.
    Listener(Option<u32>, u64),
}

fn name_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    name.hash(&mut h);
    h.finish()
}

fn workload_subject(name: &str) -> Subject {
    Subject::Workload(name_hash(name))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

/// One alert, as `watch --json` prints it (one object per line).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub rule: &'static str,
    pub state: AlertState,
    /// Wall clock, Unix epoch ns.
    pub ts_ns: u64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The process's cgroup v2 path (e.g. `/system.slice/api.service`),
    /// filled in by `watch` from the owner's cgroup id (`/proc/PID/cgroup`
    /// as a fallback); `None` when unknown.
    pub cgroup: Option<String>,
    /// The workload (unit, container, pod) holding the sockets, as
    /// `stats --json` names it (filled in by `watch`); null when unknown.
    pub workload: Option<String>,
    pub workload_kind: Option<String>,
    pub unit: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
    /// The Kubernetes namespace (not the network namespace).
    pub namespace: Option<String>,
    pub count: u64,
    pub growth_per_min: Option<f64>,
    pub oldest_age_ms: Option<u64>,
    pub peers: Vec<String>,
    /// `--stacks`: the function that opened most of the process's CLOSE_WAIT
    /// sockets (the top frame of its leading code path); null without
    /// stacks, or while that path is not named yet.
    pub opened_at: Option<String>,
    /// That code path (`close_wait_by_stack`'s `code_path`).
    pub opened_at_path: Option<String>,
    /// The process's CLOSE_WAIT sockets opened there.
    pub opened_at_count: Option<u64>,
    /// `listen_drops`: the listener (`ip:port`; `0.0.0.0:port`, `[::]:port` for the wildcards),
    /// its network namespace and the main reason of its recent drops (a
    /// `DropReason` name); null for other rules.
    pub listener: Option<String>,
    pub netns: Option<u32>,
    pub reason: Option<&'static str>,
    /// What the rule measured and its threshold.
    pub value: f64,
    pub threshold: f64,
    pub message: String,
}

/// A rule holding now, before hysteresis and repeat.
struct Holding {
    rule: Rule,
    subject: Subject,
    value: f64,
    threshold: f64,
    alert: Alert,
}

/// A firing alert: when it was last sent, and its latest details.
#[derive(Clone, Debug)]
struct Active {
    last_sent_ns: u64,
    last: Alert,
}

/// A counter behind a counter rule: its last value and when it last rose.
#[derive(Debug, Default)]
struct RisingCounter {
    last: Option<u64>,
    rose_ns: Option<u64>,
}

impl RisingCounter {
    /// Takes the counter's value at `now_ns`; true while it rose within [`QUIET`].
    fn rose_recently(&mut self, value: u64, now_ns: u64) -> bool {
        if self.last.is_some_and(|v| value > v) {
            self.rose_ns = Some(now_ns);
        }
        self.last = Some(value);
        self.rose_ns
            .is_some_and(|at| now_ns.saturating_sub(at) < QUIET.as_nanos() as u64)
    }
}

/// The rule engine: feed it a snapshot per evaluation.
#[derive(Debug, Default)]
pub struct Alerter {
    pub rules: Rules,
    active: HashMap<(Rule, Subject), Active>,
    overflow: RisingCounter,
    lost: RisingCounter,
    /// (ts, total lost) samples within the last minute.
    lost_window: std::collections::VecDeque<(u64, u64)>,
}

/// "comm (pid N)", "pid N", or "an unknown process".
pub(crate) fn who(pid: Option<u32>, comm: Option<&str>) -> String {
    match (pid, comm) {
        (Some(p), Some(c)) => format!("{c} (pid {p})"),
        (Some(p), None) => format!("pid {p}"),
        _ => "an unknown process".into(),
    }
}

impl Alerter {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            ..Self::default()
        }
    }

    /// Alerts firing now (for a status line or `top`'s alert strip).
    pub fn firing(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self.active.values().map(|a| &a.last).collect();
        v.sort_by(|a, b| (a.rule, a.pid).cmp(&(b.rule, b.pid)));
        v
    }

    /// The rule of each firing alert, in [`Self::firing`]'s order.
    pub fn firing_rules(&self) -> Vec<&'static str> {
        self.firing().iter().map(|a| a.rule).collect()
    }

    /// Evaluates every rule at monotonic `now_ns` (wall `wall_ns`); returns
    /// the alerts to send: new firings, due repeats, and resolutions.
    pub fn evaluate(&mut self, snap: &Snapshot, now_ns: u64, wall_ns: u64) -> Vec<Alert> {
        let holding = self.holding(snap, now_ns, wall_ns);
        let repeat_ns = self.rules.repeat_secs.saturating_mul(1_000_000_000);
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for h in holding {
            let key = (h.rule, h.subject);
            let clear = h.threshold * CLEAR_RATIO;
            match self.active.get_mut(&key) {
                Some(a) if h.value >= clear => {
                    seen.insert(key);
                    a.last = h.alert.clone();
                    if now_ns.saturating_sub(a.last_sent_ns) >= repeat_ns {
                        a.last_sent_ns = now_ns;
                        out.push(h.alert);
                    }
                }
                Some(_) => {}
                None if h.value >= h.threshold => {
                    seen.insert(key);
                    self.active.insert(
                        key,
                        Active {
                            last_sent_ns: now_ns,
                            last: h.alert.clone(),
                        },
                    );
                    out.push(h.alert);
                }
                None => {}
            }
        }
        let mut resolved: Vec<(Rule, Subject)> = self
            .active
            .keys()
            .filter(|k| !seen.contains(*k))
            .copied()
            .collect();
        resolved.sort_by_key(|(r, _)| *r);
        for key in resolved {
            let a = self.active.remove(&key).expect("present");
            let mut alert = a.last;
            alert.state = AlertState::Resolved;
            alert.ts_ns = wall_ns;
            alert.message = format!("resolved: {}", alert.message);
            out.push(alert);
        }
        out
    }

    /// Every rule's candidates with their values (threshold checks are in
    /// [`Alerter::evaluate`], to apply hysteresis).
    fn holding(&mut self, snap: &Snapshot, now_ns: u64, wall_ns: u64) -> Vec<Holding> {
        let r = self.rules.clone();
        let mut out = Vec::new();
        let alert = |rule: Rule, value: f64, threshold: f64, message: String| Alert {
            rule: rule.name(),
            state: AlertState::Firing,
            ts_ns: wall_ns,
            pid: None,
            comm: None,
            cgroup: None,
            workload: None,
            workload_kind: None,
            unit: None,
            container: None,
            pod: None,
            namespace: None,
            count: 0,
            growth_per_min: None,
            oldest_age_ms: None,
            peers: Vec::new(),
            opened_at: None,
            opened_at_path: None,
            opened_at_count: None,
            listener: None,
            netns: None,
            reason: None,
            value,
            threshold,
            message,
        };
        if r.group_by == GroupBy::Workload {
            for w in &snap.close_wait_by_workload {
                let name = crate::output::escape(&w.workload).into_owned();
                let cause = leak_cause(&format!("workload {name}"), &w.peers);
                let (growth, delta, span_ms) = w.growth_over(r.close_wait_growth_window_min);
                let detail = |mut a: Alert| {
                    a.pid = w.pids.first().copied();
                    a.growth_per_min = Some(growth);
                    a.count = w.count;
                    a.oldest_age_ms = Some(w.oldest_age_ms);
                    a.peers = w.peers.clone();
                    a.name_workload(w);
                    a
                };
                let subject = workload_subject(&w.workload);
                let mut push = |rule, value: f64, threshold: f64, what: String| {
                    out.push(Holding {
                        rule,
                        subject,
                        value,
                        threshold,
                        alert: detail(alert(rule, value, threshold, format!("{what}: {cause}"))),
                    });
                };
                push(
                    Rule::CloseWaitCount,
                    w.count as f64,
                    r.close_wait_per_process as f64,
                    format!("{} CLOSE_WAIT sockets held by workload {name}", w.count),
                );
                push(
                    Rule::CloseWaitGrowth,
                    growth,
                    r.close_wait_growth_per_min,
                    growth_message(
                        &format!("workload {name}"),
                        (growth, delta, span_ms),
                        r.close_wait_growth_window_min * 60_000,
                        w.count,
                    ),
                );
                push(
                    Rule::CloseWaitOldest,
                    w.oldest_age_ms as f64 / 1000.0,
                    r.close_wait_oldest_secs as f64,
                    format!(
                        "workload {name} has held a CLOSE_WAIT socket for {}{}",
                        if w.oldest_age_is_lower_bound {
                            "at least "
                        } else {
                            ""
                        },
                        fmt_age(w.oldest_age_ms, false)
                    ),
                );
            }
        }
        let by_process = if r.group_by == GroupBy::Workload {
            &[][..]
        } else {
            &snap.close_wait_by_process[..]
        };
        for p in by_process {
            let (growth, delta, span_ms) = match r.close_wait_growth_window_min {
                1 => (p.growth_per_min, p.growth_delta, p.growth_span_ms),
                15 => (
                    p.growth_per_min_15m,
                    p.growth_delta_15m,
                    p.growth_span_15m_ms,
                ),
                _ => (p.growth_per_min_5m, p.growth_delta_5m, p.growth_span_5m_ms),
            };
            let window_ms = r.close_wait_growth_window_min * 60_000;
            let whom = who(p.pid, p.comm.as_deref());
            let leading = leading_path(snap, p.pid);
            let opened = match leading.and_then(|row| Some((row.top_frame.as_deref()?, row))) {
                Some((f, row)) => format!("; opened at {f} ({} of {})", row.count, p.count),
                None => String::new(),
            };
            let cause = format!("{}{opened}", leak_cause(&whom, &p.peers));
            let detail = |mut a: Alert| {
                a.pid = p.pid;
                a.comm = p.comm.clone();
                a.count = p.count;
                a.growth_per_min = Some(growth);
                a.oldest_age_ms = Some(p.oldest_age_ms);
                a.peers = p.peers.clone();
                if let Some(row) = leading {
                    a.opened_at = row.top_frame.clone();
                    a.opened_at_path = Some(row.code_path.clone());
                    a.opened_at_count = Some(row.count);
                }
                a
            };
            let subject = Subject::Process(p.pid);
            let mut push = |rule, value: f64, threshold: f64, what: String| {
                out.push(Holding {
                    rule,
                    subject,
                    value,
                    threshold,
                    alert: detail(alert(rule, value, threshold, format!("{what}: {cause}"))),
                });
            };
            push(
                Rule::CloseWaitCount,
                p.count as f64,
                r.close_wait_per_process as f64,
                format!("{} CLOSE_WAIT sockets held by {whom}", p.count),
            );
            push(
                Rule::CloseWaitGrowth,
                growth,
                r.close_wait_growth_per_min,
                growth_message(&whom, (growth, delta, span_ms), window_ms, p.count),
            );
            push(
                Rule::CloseWaitOldest,
                p.oldest_age_ms as f64 / 1000.0,
                r.close_wait_oldest_secs as f64,
                format!(
                    "{whom} has held a CLOSE_WAIT socket for {}{}",
                    if p.oldest_age_is_lower_bound {
                        "at least "
                    } else {
                        ""
                    },
                    fmt_age(p.oldest_age_ms, false)
                ),
            );
        }
        let cw_total = snap.states.get("CLOSE_WAIT").copied().unwrap_or(0);
        if r.close_wait_host > 0 {
            let top = snap
                .close_wait_by_process
                .first()
                .map(|p| format!("; the most by {}", who(p.pid, p.comm.as_deref())))
                .unwrap_or_default();
            let mut a = alert(
                Rule::CloseWaitHost,
                cw_total as f64,
                r.close_wait_host as f64,
                format!(
                    "{cw_total} CLOSE_WAIT sockets on this host{top}: applications are not closing connections their peers closed (leaked connections)"
                ),
            );
            a.count = cw_total;
            out.push(Holding {
                rule: Rule::CloseWaitHost,
                subject: Subject::Host,
                value: cw_total as f64,
                threshold: r.close_wait_host as f64,
                alert: a,
            });
        }
        // Per port budget (namespace, local address, destination): the
        // share connect() cannot pick (TIME_WAIT that tcp_tw_reuse may take
        // over does not count).
        for b in &snap.port_budgets {
            let peer = std::net::SocketAddr::new(b.daddr, b.dport).to_string();
            let reuse = if b.reusable > 0 {
                format!(
                    " ({} more TIME_WAIT that tcp_tw_reuse may take over)",
                    b.reusable
                )
            } else {
                String::new()
            };
            let mut a = alert(
                Rule::TimeWaitPorts,
                b.in_use_ratio,
                r.time_wait_port_share,
                format!(
                    "{} TIME_WAIT and {} open sockets to {peer} from {} (netns {}) hold {:.0}% of the {} ephemeral ports connect() may pick there{reuse}: this host closes first on short connections and will run out of ports to it; use keep-alive or a connection pool (nginx: upstream keepalive with HTTP/1.1), or let the peer close first",
                    b.time_wait.saturating_sub(b.reusable),
                    b.open,
                    b.saddr,
                    b.netns,
                    b.in_use_ratio * 100.0,
                    b.ports,
                ),
            );
            a.count = b.time_wait;
            a.peers = vec![peer];
            a.pid = b.pid;
            a.comm = b.comm.clone();
            out.push(Holding {
                rule: Rule::TimeWaitPorts,
                subject: Subject::Budget(b.netns, b.saddr, b.daddr, b.dport),
                value: b.in_use_ratio,
                threshold: r.time_wait_port_share,
                alert: a,
            });
        }
        if r.listen_drops_per_sec > 0.0 {
            for l in snap.listeners.iter().flatten() {
                if l.drops_per_sec <= 0.0
                    && !self
                        .active
                        .contains_key(&(Rule::ListenDrops, listener_subject(l)))
                {
                    continue;
                }
                let reason = l.recent.main_reason().or(l.drops.main_reason());
                let mut a = alert(
                    Rule::ListenDrops,
                    l.drops_per_sec,
                    r.listen_drops_per_sec,
                    listen_drops_message(l, reason),
                );
                a.pid = l.pid;
                a.comm = l.comm.clone();
                a.count = l.drops_total;
                a.listener = Some(l.listener.clone());
                a.netns = l.netns;
                a.reason = reason.map(crate::listeners::DropReason::name);
                a.workload = l.workload.workload.clone();
                a.workload_kind = l.workload.workload_kind.map(str::to_string);
                a.unit = l.workload.unit.clone();
                a.container = l.workload.container.clone();
                a.pod = l.workload.pod.clone();
                a.namespace = l.workload.namespace.clone();
                a.cgroup = l.workload.cgroup_path.clone();
                out.push(Holding {
                    rule: Rule::ListenDrops,
                    subject: listener_subject(l),
                    value: l.drops_per_sec,
                    threshold: r.listen_drops_per_sec,
                    alert: a,
                });
            }
        }
        let quiet_ns = QUIET.as_nanos() as u64;
        if r.time_wait_overflow && self.overflow.rose_recently(snap.tw_overflow, now_ns) {
            let mut a = alert(
                Rule::TimeWaitOverflow,
                1.0,
                1.0,
                format!(
                    "TCPTimeWaitOverflow is rising ({} since boot): net.ipv4.tcp_max_tw_buckets is exceeded and new closes skip TIME_WAIT; raising it treats the symptom: make fewer short connections (keep-alive, pools)",
                    snap.tw_overflow
                ),
            );
            a.count = snap.tw_overflow;
            out.push(Holding {
                rule: Rule::TimeWaitOverflow,
                subject: Subject::Host,
                value: 1.0,
                threshold: 1.0,
                alert: a,
            });
        }
        if r.lost_events > 0 {
            let total = snap.lost.values().fold(0u64, |a, n| a.saturating_add(*n));
            let rose_recently = self.lost.rose_recently(total, now_ns);
            self.lost_window.push_back((now_ns, total));
            while self
                .lost_window
                .front()
                .is_some_and(|(t, _)| now_ns.saturating_sub(*t) > quiet_ns)
            {
                self.lost_window.pop_front();
            }
            let in_window = total.saturating_sub(self.lost_window.front().map_or(total, |s| s.1));
            if rose_recently {
                let sources: Vec<String> = snap
                    .lost
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                let mut a = alert(
                    Rule::LostEvents,
                    in_window.max(1) as f64,
                    r.lost_events as f64,
                    format!(
                        "tcptrace lost {in_window} events in the last minute ({}): its counts are low; raise --ring-size or narrow with --port/--pid",
                        sources.join(", ")
                    ),
                );
                a.count = in_window;
                out.push(Holding {
                    rule: Rule::LostEvents,
                    subject: Subject::Host,
                    value: in_window.max(1) as f64,
                    threshold: r.lost_events as f64,
                    alert: a,
                });
            }
        }
        out
    }
}

/// The growth rule's words for `whom`: the rate over the window, or what
/// was measured when the history is shorter than the window (no rate over
/// minutes from seconds).
fn growth_message(
    whom: &str,
    (growth, delta, span_ms): (f64, i64, u64),
    window_ms: u64,
    now: u64,
) -> String {
    let minutes = window_ms / 60_000;
    if span_ms + 1_500 >= window_ms {
        format!("CLOSE_WAIT of {whom} growing {growth:.1}/min over {minutes} min ({now} now)")
    } else {
        format!(
            "CLOSE_WAIT of {whom} grew {} ({now} now; {minutes} min of history not there yet)",
            crate::clock::fmt_growth(delta, span_ms, window_ms),
        )
    }
}

/// Why a holder of CLOSE_WAIT sockets leaks, naming `whom` and its peers.
/// The `close_wait_by_stack` row with a stack holding most of process
/// `pid`'s CLOSE_WAIT sockets (`--stacks`; None without, or with no stack).
fn leading_path(snap: &Snapshot, pid: Option<u32>) -> Option<&crate::stats::CloseWaitByStack> {
    let pid = pid?;
    snap.close_wait_by_stack
        .as_deref()?
        .iter()
        .filter(|r| r.pid == Some(pid) && r.stack_id.is_some())
        // The most sockets; the lowest id on a tie (rows are sorted so).
        .min_by_key(|r| (std::cmp::Reverse(r.count), r.stack_id))
}

fn listener_subject(l: &crate::listeners::ListenerRow) -> Subject {
    Subject::Listener(l.netns, name_hash(&l.listener))
}

/// "connection attempts to 127.0.0.1:8080 (netns N) dropped at 7.6/s
/// (76 in all): accept queue full (queue 129/128); slowacceptd (pid 42) is
/// not accepting fast enough: ..." with the fix for the reason.
fn listen_drops_message(
    l: &crate::listeners::ListenerRow,
    reason: Option<crate::listeners::DropReason>,
) -> String {
    use crate::listeners::DropReason as R;
    let whom = who(l.pid, l.comm.as_deref());
    let netns = l.netns.map_or(String::new(), |n| format!(" (netns {n})"));
    let head = format!(
        "connection attempts to {}{netns} dropped at {:.1}/s ({} in all)",
        l.listener, l.drops_per_sec, l.drops_total
    );
    let why = match reason {
        Some(R::AcceptQueueFull) | None => format!(
            "accept queue full (queue {}/{}, limit = min(backlog, net.core.somaxconn)); {whom} is not accepting fast enough: accept faster (more acceptor threads, never block the accept loop), or raise the listen() backlog and net.core.somaxconn",
            l.accept_queue, l.accept_queue_limit
        ),
        Some(R::SynQueueFull) => format!(
            "SYN queue full (listener of {whom}): a SYN flood or a slow handshake; raise net.ipv4.tcp_max_syn_backlog and the backlog, keep net.ipv4.tcp_syncookies on"
        ),
        Some(R::Paws | R::TimewaitPaws | R::TimestampEcho) => format!(
            "{} (listener of {whom}): clients behind NAT with unrelated TCP timestamp clocks; do not enable tcp_tw_recycle (where it exists), check NAT and the clients' timestamps",
            reason.map_or("", R::label)
        ),
        Some(r) => format!("{} (listener of {whom})", r.label()),
    };
    format!("{head}: {why}")
}

fn leak_cause(whom: &str, peers: &[String]) -> String {
    let peers = if peers.is_empty() {
        "its peers".to_string()
    } else {
        peers.join(", ")
    };
    format!(
        "{whom} is not closing connections to {peers} after the peer closed: a leaked connection; check code paths that return without closing (or releasing to the pool)"
    )
}

#[cfg(test)]
mod tests;

impl Alert {
    /// Names workload row `w` as the alert's workload (its kind, unit,
    /// container, pod, namespace and cgroup path).
    pub fn name_workload(&mut self, w: &crate::stats::workloads::CloseWaitByWorkload) {
        self.workload = Some(w.workload.clone());
        self.workload_kind = Some(w.workload_kind.to_string());
        self.unit = w.unit.clone();
        self.container = w.container.clone();
        self.pod = w.pod.clone();
        self.namespace = w.namespace.clone();
        self.cgroup = w.cgroup_path.clone();
    }

    /// The alert as one text line (stderr, the journal); the caller
    /// escapes it with the rest of the line.
    pub fn text_line(&self) -> String {
        let a = self;
        let state = match a.state {
            AlertState::Firing => "ALERT",
            AlertState::Resolved => "RESOLVED",
        };
        let cgroup = match (a.workload.as_deref(), a.cgroup.as_deref()) {
            (Some(w), Some(c)) => format!(" [workload {w}; cgroup {c}]"),
            (Some(w), None) => format!(" [workload {w}]"),
            (None, Some(c)) => format!(" [cgroup {c}]"),
            (None, None) => String::new(),
        };
        format!(
            "{} {state} {}: {}{cgroup}",
            hms_millis(a.ts_ns),
            a.rule,
            a.message
        )
    }
}
