//! `tcptrace doctor`'s diagnosis: what a short observation of the host means.
//! Pure: it turns an [`Observation`] (engine state at the end of the window,
//! what happened during it, sysctl values) into [`Finding`]s, each with the
//! evidence, a severity, what to do and the exact commands a user could run.
//! The causes and fixes come from the incident write-ups (`domain.md`): a
//! CLOSE_WAIT pile is the application not closing, TIME_WAIT belongs to
//! whoever closes first, ephemeral ports run out per (namespace, local
//! address, destination) unless `tcp_tw_reuse` applies, and
//! `tcp_fin_timeout` / `tcp_syncookies` do not touch TIME_WAIT. The same
//! diagnosis runs live and on a recording (`doctor --from`): everything it
//! needs travels in the snapshots. It never changes anything; the command
//! only prints.
//!
//! A finding about a process names its workload too (`workload` in
//! `doctor --json`: an object with `workload`, `workload_kind`, `unit`,
//! `container`, `pod`, `namespace`; null when the finding is about no
//! process, or the process's workload is not known): a pid changes at every
//! restart, the unit, container or pod does not. When names degrade (no
//! cgroup2 mount, file handles refused so the tree is walked, runtime
//! directories unreadable, many ids unresolved), the info finding
//! `workload_attribution` says why, from the resolver's status the command
//! passes in ([`Attribution`]).
//!
//! With `--stacks`, a CLOSE_WAIT leak also names the code that opened the
//! leaked connections: evidence lines `opened at checkout_reserve_items ←
//! handle_order ← main: 412 of 460` for up to 3 code paths
//! (`close_wait_by_stack`), how many have no stack, what a stack of lesser
//! quality misses, and advice that points at the leading path's function.
//! Without it, the advice says how to get them.
//!
//! Listeners (the snapshot's `listeners` and `listen_drops`, when the
//! source samples them): `listen_drops` per listener that dropped
//! connection attempts, titled by its main reason (accept queue full with
//! its limit = min(backlog, `net.core.somaxconn`) and the owner not
//! accepting fast enough; SYN queue full; PAWS timestamp rejects, with
//! `tcp_tw_recycle` named where the kernel has it), with the namespace's
//! counter deltas as evidence; `accept_queue_full` (warning) for a listener
//! that dropped nothing in the window but whose accept queue is (or was, at
//! its peak) at its limit, naming its drops from before tracing began;
//! `paws_rejects` (warning) for a namespace whose PAWSTimewait (or
//! PAWSPassive) rose with no listener's drops naming PAWS; `no_listener`
//! (info) for SYNs to ports where nothing listens. Advice names
//! `net.core.somaxconn` only when it is the accept queue's limit (limit >=
//! somaxconn): below it, the limit is the backlog and a larger backlog is
//! the whole fix. The kernel queues limit + 1 connections
//! (`sk_acceptq_is_full` is `>`).

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

pub use crate::netfacts::Sysctls;
use crate::{
    alerts::who,
    clock::fmt_age,
    conn::ConnTable,
    listeners::{DropReason, ListenerRow},
    model::TcpState,
    netfacts::{NetFacts, Reuse},
    output::escape,
    stacks::StackQuality,
    stats::{
        CloseWaitByProcess, CloseWaitByStack, ListenDrops, PortBudget, StacksStatus,
        TimeWaitByService, workloads::WorkloadRef,
    },
};

/// Timewait sockets still in FIN_WAIT2: closed by the application, the
/// peer's FIN not seen.
pub fn fin_wait2_orphans(table: &ConnTable) -> u64 {
    table
        .timewaits()
        .filter(|t| t.substate == TcpState::FinWait2)
        .count() as u64
}

/// How bad a finding is; the exit code is 1 from [`Severity::Warning`] up
/// ([`exit_code`]): `ok` and `info` findings leave it 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn marker(self) -> &'static str {
        match self {
            Severity::Ok => "[OK]",
            Severity::Info => "[INFO]",
            Severity::Warning => "[WARNING]",
            Severity::Critical => "[CRITICAL]",
        }
    }
}

/// One diagnosis: the wire format of `doctor --json` (an array of these).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// Stable identifier, e.g. `close_wait_leak`.
    pub id: &'static str,
    pub severity: Severity,
    /// One line: what is wrong and where.
    pub title: String,
    /// The numbers behind it.
    pub evidence: Vec<String>,
    /// What to do, most useful first.
    pub advice: Vec<String>,
    /// Exact commands a user could run (never run by tcptrace).
    pub sysctls: Vec<String>,
    /// The workload (unit, container, pod) of the process the finding is
    /// about; null when none or not known.
    pub workload: Option<FindingWorkload>,
}

/// The workload a finding is about, as `doctor --json` writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FindingWorkload {
    /// Its display name (`payments.service`, `docker/web-1`,
    /// `shop/payments-7d9f-abcde/app`).
    pub workload: String,
    /// `host`, `unit`, `session`, `user_unit`, `container`, `pod`,
    /// `cgroup` or `unknown`.
    pub workload_kind: Option<String>,
    pub unit: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
    /// The Kubernetes namespace (not the network namespace).
    pub namespace: Option<String>,
}

impl FindingWorkload {
    /// The workload of a process row; `None` when it is not known.
    pub fn of(w: &WorkloadRef) -> Option<Self> {
        Some(Self {
            workload: w.workload.clone()?,
            workload_kind: w.workload_kind.map(str::to_string),
            unit: w.unit.clone(),
            container: w.container.clone(),
            pod: w.pod.clone(),
            namespace: w.namespace.clone(),
        })
    }
}

/// How workloads were attributed during the window (the live resolver's
/// status, passed in by the command; `None` for a recording).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    /// `handle`, `walk` or `unavailable`.
    pub method: String,
    /// The cgroup2 mount used.
    pub cgroup2: Option<String>,
    /// Why there is no cgroup2 tree (with `unavailable`).
    pub unavailable: Option<String>,
    /// Workloads named.
    pub resolved: u64,
    /// Lookups that ended as `cgroup:<id>`.
    pub unresolved: u64,
    /// Runtime files skipped, by (source, reason: `unsafe`, `oversize`,
    /// `json`, `io`).
    pub read_errors: BTreeMap<(String, String), u64>,
}

/// Connections to one peer that never got established during the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedConnects {
    pub daddr: IpAddr,
    pub dport: u16,
    /// Answered with a RST (nothing listening).
    pub refused: u64,
    /// SYN retransmissions ran out (host down, or SYNs dropped).
    pub timeout: u64,
    /// connect() failed with EADDRNOTAVAIL: no free local port to this peer.
    pub no_port: u64,
    /// The process that tried last.
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// TIME_WAIT sockets to one destination that connect() took over during
/// the window (`tcp_tw_reuse`, or a client reconnecting from its port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwReuses {
    /// The namespace of the last reuse.
    pub netns: u32,
    pub daddr: IpAddr,
    pub dport: u16,
    pub reused: u64,
    /// The process that reused last.
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// Everything the diagnosis looks at.
#[derive(Clone, Debug)]
pub struct Observation {
    pub window_s: f64,
    pub transitions: u64,
    pub tracked: u64,
    pub lost: u64,
    /// Sockets per state at the end (`TIME_WAIT`, `CLOSE_WAIT`, ...).
    pub states: BTreeMap<&'static str, u64>,
    pub close_wait: Vec<CloseWaitByProcess>,
    /// TIME_WAIT on connections accepted here, per local service.
    pub services: Vec<TimeWaitByService>,
    /// Ephemeral port budgets per (namespace, local address, destination),
    /// fullest first.
    pub budgets: Vec<PortBudget>,
    /// Timewait sockets still in FIN_WAIT2 (closed by the application, the
    /// peer's FIN not seen).
    pub fin_wait2_orphans: u64,
    pub failed_connects: Vec<FailedConnects>,
    /// connect() failures with EADDRNOTAVAIL per port budget (namespace,
    /// local address, destination address, port).
    pub no_port_by_budget: BTreeMap<(u32, IpAddr, IpAddr, u16), u64>,
    /// Connections ended during the window, by reason (`stats`' `ended`).
    pub ended: BTreeMap<&'static str, u64>,
    /// Reuses of TIME_WAIT sockets per destination, most first.
    pub tw_reuses: Vec<TwReuses>,
    /// Each namespace's TCP facts at the start and at the end of the window
    /// (`None`: not known, e.g. a recording made before they were recorded).
    pub facts_start: Option<NetFacts>,
    pub facts_end: Option<NetFacts>,
    /// The workload of each process with sockets at the end (`stats`'
    /// `by_process` rows, named), for findings about a process.
    pub workloads: BTreeMap<u32, WorkloadRef>,
    /// How workloads were attributed (live only).
    pub attribution: Option<Attribution>,
    /// CLOSE_WAIT sockets per (process, code path that opened them)
    /// (`--stacks`; empty without).
    pub close_wait_by_stack: Vec<CloseWaitByStack>,
    /// How stacks are doing; `None` without `--stacks`.
    pub stacks: Option<StacksStatus>,
    /// Every listener with its queue and the connection attempts dropped
    /// at it during the window (`stats`' `listeners`; empty without
    /// listener data).
    pub listeners: Vec<ListenerRow>,
    /// The drops in all, each namespace's counters over the window, the
    /// destinations with no listener (`stats`' `listen_drops`).
    pub listen_drops: Option<ListenDrops>,
}

impl Observation {
    /// The workload of process `pid`, when known.
    fn workload_of(&self, pid: Option<u32>) -> Option<FindingWorkload> {
        FindingWorkload::of(self.workloads.get(&pid?)?)
    }

    fn state(&self, name: &str) -> u64 {
        self.states.get(name).copied().unwrap_or(0)
    }

    /// The host namespace's sysctls at the end, when known.
    fn sysctls(&self) -> Option<&Sysctls> {
        self.facts_end.as_ref()?.host().map(|f| &f.sysctls)
    }

    /// A namespace as findings name it.
    fn netns_name(&self, netns: u32) -> String {
        match &self.facts_end {
            Some(f) if f.host_netns == Some(netns) => "the host namespace".into(),
            _ => format!("network namespace {netns}"),
        }
    }

    /// TCPTimeWaitOverflow per namespace: (during the window, since boot).
    fn tw_overflow(&self) -> Vec<(u32, u64, u64)> {
        let Some(end) = &self.facts_end else {
            return Vec::new();
        };
        end.namespaces
            .iter()
            .filter_map(|(&ns, f)| {
                let total = f.tw_overflow?;
                let before = match &self.facts_start {
                    // A namespace first seen at the end was created during
                    // the window (its counters started at 0 then).
                    Some(start) => start.namespaces.get(&ns).map_or(Some(0), |f| f.tw_overflow),
                    None => None,
                };
                // Nothing known at the start: no rise can be told.
                Some((ns, total.saturating_sub(before.unwrap_or(total)), total))
            })
            .collect()
    }
}

/// When a finding fires.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// CLOSE_WAIT sockets held by one process.
    pub close_wait: u64,
    /// A CLOSE_WAIT socket this old is a leak whatever the count (ms).
    pub close_wait_age_ms: u64,
    /// TIME_WAIT sockets on one local service.
    pub server_time_wait: u64,
    /// Share of one port budget (namespace, local address, destination)
    /// that connect() cannot pick: warning, critical.
    pub port_share: (f64, f64),
    /// FIN_WAIT2 sockets (full and orphaned).
    pub fin_wait2: u64,
    /// Failed connects to one peer during the window.
    pub failed_connects: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            close_wait: 20,
            close_wait_age_ms: 60_000,
            server_time_wait: 200,
            port_share: (0.2, 0.5),
            fin_wait2: 200,
            failed_connects: 5,
        }
    }
}

/// The findings, worst first; `healthy` first when nothing is a warning.
pub fn diagnose(obs: &Observation, t: &Thresholds) -> Vec<Finding> {
    let mut out = Vec::new();
    close_wait_leaks(obs, t, &mut out);
    server_time_wait(obs, t, &mut out);
    port_pressure(obs, t, &mut out);
    time_wait_overflow(obs, &mut out);
    time_wait_reuse(obs, &mut out);
    time_wait_purged(obs, &mut out);
    sysctl_findings(obs, &mut out);
    fin_wait2(obs, t, &mut out);
    failed_connects(obs, t, &mut out);
    listen_drops(obs, &mut out);
    accept_queue_full(obs, &mut out);
    paws_rejects(obs, &mut out);
    no_listener(obs, &mut out);
    missing_facts(obs, &mut out);
    workload_attribution(obs, &mut out);
    if obs.lost > 0 {
        out.push(Finding {
            id: "lost_events",
            severity: Severity::Warning,
            title: format!("{} events were lost: counts above may be low", obs.lost),
            evidence: vec![format!("lost {} events in {:.0} s", obs.lost, obs.window_s)],
            advice: vec![
                "Run again with a larger --ring-size, or filter (--port, --pid) to what matters."
                    .into(),
            ],
            sysctls: vec![],
            workload: None,
        });
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    if !out.iter().any(|f| f.severity >= Severity::Warning) {
        out.insert(0, healthy(obs));
    }
    out
}

/// Exit code for these findings: 1 from a warning up, else 0.
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.severity >= Severity::Warning))
}

fn healthy(obs: &Observation) -> Finding {
    let worst_share = obs
        .budgets
        .iter()
        .map(|b| b.in_use_ratio)
        .fold(0.0, f64::max);
    Finding {
        id: "healthy",
        severity: Severity::Ok,
        title: format!("No TCP lifecycle problems seen in {:.0} s", obs.window_s),
        evidence: vec![
            format!(
                "{} transitions observed, {} sockets tracked, {} events lost",
                obs.transitions, obs.tracked, obs.lost
            ),
            format!(
                "ESTABLISHED {}, CLOSE_WAIT {}, TIME_WAIT {}, FIN_WAIT2 {}",
                obs.state("ESTABLISHED"),
                obs.state("CLOSE_WAIT"),
                obs.state("TIME_WAIT"),
                obs.state("FIN_WAIT2")
            ),
            format!(
                "fullest ephemeral port budget (one namespace, local address and destination): {:.1}% unavailable to connect()",
                worst_share * 100.0
            ),
        ],
        advice: vec![],
        sysctls: vec![],
        workload: None,
    }
    .with_listeners(obs)
}

impl Finding {
    /// `healthy`'s line about listeners, when their data came.
    fn with_listeners(mut self, obs: &Observation) -> Self {
        if obs.listen_drops.is_some() {
            let fullest = obs
                .listeners
                .iter()
                .filter(|l| l.closed_age_ms.is_none())
                .max_by_key(|l| {
                    (u64::from(l.accept_queue_peak) * 1000) / u64::from(l.accept_queue_limit.max(1))
                });
            self.evidence.push(format!(
                "{} listeners, no connection attempt dropped at any{}",
                obs.listeners.len(),
                fullest.map_or(String::new(), |l| format!(
                    "; fullest accept queue {} (peak {}/{})",
                    l.listener, l.accept_queue_peak, l.accept_queue_limit
                ))
            ));
        }
        self
    }
}

/// The reasons `doctor` explains as a queue overflow.
fn is_queue(r: DropReason) -> bool {
    matches!(r, DropReason::AcceptQueueFull | DropReason::SynQueueFull)
}

/// The reasons that are timestamp (PAWS) rejects.
fn is_paws(r: DropReason) -> bool {
    matches!(
        r,
        DropReason::Paws | DropReason::TimewaitPaws | DropReason::TimestampEcho
    )
}

/// `listen_drops`: one finding per listener that dropped connection
/// attempts, named by its main reason, with the fix for each reason seen.
fn listen_drops(obs: &Observation, out: &mut Vec<Finding>) {
    let host = obs.facts_end.as_ref().and_then(|f| f.host_netns);
    for l in obs.listeners.iter().filter(|l| l.drops_total > 0) {
        let Some(main) = l.drops.main_reason() else {
            continue;
        };
        let place = l.netns.map(|netns| Place { netns, pid: l.pid });
        let sysctls = obs.sysctls_at(place);
        let somaxconn = sysctls.and_then(|s| s.somaxconn);
        let comm = l.comm.as_deref().map(escape);
        let owner = comm.clone().map_or_else(
            || "the process listening there".to_string(),
            |c| c.into_owned(),
        );
        let ns_name = match l.netns {
            // At the end: the title starts the issue's way ("SYNs to
            // 127.0.0.1:8080 dropped: accept queue full ...").
            Some(n) if Some(n) != host => format!(" (in {})", obs.netns_name(n)),
            _ => String::new(),
        };
        let paws_n: u64 = DropReason::ALL
            .into_iter()
            .filter(|r| is_paws(*r))
            .map(|r| l.drops.get(r))
            .sum();
        let title = match main {
            DropReason::AcceptQueueFull => format!(
                "SYNs to {} dropped: accept queue full (limit {} = min(backlog, net.core.somaxconn)); {owner} is not accepting fast enough{ns_name}",
                l.listener, l.accept_queue_limit
            ),
            DropReason::SynQueueFull => format!(
                "SYNs to {} dropped: SYN queue full ({}SYN cookies {}); {owner} gets more handshakes than its SYN queue holds{ns_name}",
                l.listener,
                sysctls
                    .and_then(|s| s.max_syn_backlog)
                    .map_or(String::new(), |n| format!(
                        "net.ipv4.tcp_max_syn_backlog {n}, "
                    )),
                match sysctls.and_then(|s| s.syncookies) {
                    Some(0) => "off",
                    Some(_) => "on",
                    None => "unknown",
                }
            ),
            r if is_paws(r) => format!(
                "SYNs to {} rejected by the TCP timestamp (PAWS) check{}: clients with unrelated timestamp clocks, typically behind NAT{ns_name}",
                l.listener,
                if l.drops.get(DropReason::TimewaitPaws) > 0 {
                    " at TIME_WAIT sockets"
                } else {
                    ""
                }
            ),
            r => format!("SYNs to {} dropped: {}{ns_name}", l.listener, r.label()),
        };
        let severity = if is_queue(main) || is_paws(main) {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let mut evidence = vec![format!(
            "{} connection attempts dropped in {:.0} s ({:.1}/s over the last 10 s)",
            l.drops_total, obs.window_s, l.drops_per_sec
        )];
        let reasons: Vec<String> = DropReason::ALL
            .into_iter()
            .filter(|r| l.drops.get(*r) > 0)
            .map(|r| format!("{} {}", r.label(), l.drops.get(r)))
            .collect();
        evidence.push(format!("by reason: {}", reasons.join(", ")));
        evidence.push(format!(
            "accept queue {}/{} now, peak {}",
            l.accept_queue, l.accept_queue_limit, l.accept_queue_peak
        ));
        evidence.push(format!("listening: {}", who(l.pid, comm.as_deref())));
        if let Some(w) = l.workload.workload.as_deref() {
            evidence.push(format!("workload {}", escape(w)));
        }
        evidence.extend(somaxconn_evidence(somaxconn, l.accept_queue_limit));
        evidence.extend(obs.counters_evidence(l.netns, paws_n > 0));
        let mut advice = Vec::new();
        let mut commands = Vec::new();
        if l.drops.get(DropReason::AcceptQueueFull) > 0 {
            let (a, c) = obs.accept_queue_advice(l, place, &owner);
            advice.extend(a);
            commands.extend(c);
        }
        if l.drops.get(DropReason::SynQueueFull) > 0 {
            advice.push("The SYN queue (half-open connections) is full: raise net.ipv4.tcp_max_syn_backlog and the listen() backlog (it bounds the SYN queue too), and keep SYN cookies on (net.ipv4.tcp_syncookies=1) so a full queue answers with cookies instead of dropping; if the SYNs are a flood, filter them upstream.".into());
            commands.push(obs.in_place(place, "sysctl -w net.ipv4.tcp_max_syn_backlog=8192"));
            if sysctls.and_then(|s| s.syncookies) == Some(0) {
                commands.push(obs.in_place(place, "sysctl -w net.ipv4.tcp_syncookies=1"));
            }
        }
        if paws_n > 0 {
            let (a, c) = obs.paws_advice(place);
            advice.extend(a);
            commands.extend(c);
        }
        if l.drops.get(DropReason::ListenDrop) > 0 {
            advice.push("Some drops have no finer reason in the namespace's counters (memory pressure, a listener closing, a socket filter): check `nstat -az | grep -i listen` in its namespace.".into());
        }
        if advice.is_empty() {
            advice.push(format!(
                "The kernel dropped them for: {}; see `tcptrace trace --json` drop events for the kernel's own reason.",
                reasons.join(", ")
            ));
        }
        out.push(Finding {
            id: "listen_drops",
            severity,
            title,
            evidence,
            advice,
            sysctls: commands,
            workload: FindingWorkload::of(&l.workload).or_else(|| obs.workload_of(l.pid)),
        });
    }
}

/// `net.core.somaxconn` of a listener's namespace, and whether its accept
/// queue's limit is it or the backlog given to listen().
fn somaxconn_evidence(somaxconn: Option<u32>, limit: u32) -> Option<String> {
    let n = somaxconn?;
    Some(format!(
        "net.core.somaxconn = {n}{}",
        if limit >= n {
            ": the limit is somaxconn (the backlog asked for is at least that)"
        } else {
            ": the limit is the backlog given to listen()"
        }
    ))
}

impl Observation {
    /// The line of `netns`'s drop counters over the window: ListenOverflows,
    /// ListenDrops and TCPReqQFullDrop, and the PAWS counters (PAWSTimewait,
    /// PAWSPassive, TSEcrRejected, PAWSOldAck) when `paws` or when they
    /// moved. `None` without counters.
    fn counters_evidence(&self, netns: Option<u32>, paws: bool) -> Option<String> {
        let netns = netns?;
        let c = self
            .listen_drops
            .as_ref()?
            .namespaces
            .iter()
            .find(|c| c.netns == netns)?;
        let mut parts = Vec::new();
        for (name, v, always) in [
            ("ListenOverflows", c.counters.listen_overflows, true),
            ("ListenDrops", c.counters.listen_drops, true),
            ("TCPReqQFullDrop", c.counters.req_qfull_drop, true),
            ("PAWSTimewait", c.counters.paws_timewait, paws),
            ("PAWSPassive", c.counters.paws_passive, paws),
            ("TSEcrRejected", c.counters.tsecr_rejected, paws),
            ("PAWSOldAck", c.counters.paws_old_ack, paws),
        ] {
            if let Some(v) = v
                && (always || v > 0)
            {
                parts.push(format!("{name} +{v}"));
            }
        }
        (!parts.is_empty()).then(|| {
            format!(
                "{} counters during the window: {}",
                self.netns_name(netns),
                parts.join(", ")
            )
        })
    }

    /// What to do about a full accept queue, and the commands. The kernel
    /// takes a connection while the queue holds no more than the limit
    /// (`sk_acceptq_is_full` is `>`): limit + 1 wait before SYNs are
    /// dropped. net.core.somaxconn is advised only when it is the limit
    /// (limit >= somaxconn): when the limit is the backlog, raising
    /// somaxconn changes nothing; when somaxconn is not known, both are
    /// named, the sysctl as a maybe.
    fn accept_queue_advice(
        &self,
        l: &ListenerRow,
        place: Option<Place>,
        owner: &str,
    ) -> (Vec<String>, Vec<String>) {
        let limit = l.accept_queue_limit;
        let holds = u64::from(limit) + 1;
        let somaxconn = self.sysctls_at(place).and_then(|s| s.somaxconn);
        let mut advice = vec![format!(
            "Accept faster: {owner} must call accept() as fast as connections complete; use more acceptor threads or processes and never block the accept loop (hand each connection off before doing slow work)."
        )];
        let mut commands = Vec::new();
        let holds_now = format!(
            "the limit is {limit}, so {holds} connection{} wait at most (the kernel queues one past the limit) before SYNs are dropped",
            if holds == 1 { "" } else { "s" }
        );
        match somaxconn {
            Some(n) if limit < n => advice.push(format!(
                "Raise the backlog {owner} passes to listen() ({holds_now}); net.core.somaxconn is {n}, so up to listen(fd, {n}) (nginx `listen ... backlog={n}`) takes effect with no sysctl change."
            )),
            Some(n) => {
                let want = n.max(limit).saturating_mul(2).max(4096);
                advice.push(format!(
                    "Raise the backlog {owner} passes to listen() ({holds_now}; e.g. listen(fd, {want}), nginx `listen ... backlog={want}`) and net.core.somaxconn with it: the limit is somaxconn."
                ));
                advice.push(format!(
                    "Raise net.core.somaxconn (now {n}, per network namespace), then restart the listener: the cap applies at listen()."
                ));
                commands.push(self.in_place(place, &format!("sysctl -w net.core.somaxconn={want}")));
            }
            None => {
                let want = limit.saturating_mul(2).max(4096);
                advice.push(format!(
                    "Raise the backlog {owner} passes to listen() ({holds_now}; e.g. listen(fd, {want}), nginx `listen ... backlog={want}`); it is capped at net.core.somaxconn."
                ));
                advice.push(format!(
                    "net.core.somaxconn is not known here: if it is {limit} or less (`sysctl net.core.somaxconn` in the listener's namespace), raise it too, then restart the listener (the cap applies at listen())."
                ));
                commands.push(self.in_place(place, &format!("sysctl -w net.core.somaxconn={want}")));
            }
        }
        (advice, commands)
    }

    /// What to do about SYNs rejected by PAWS (timestamps), and the
    /// commands: the NAT, `tcp_tw_recycle` where the kernel has it, and not
    /// turning timestamps off.
    fn paws_advice(&self, place: Option<Place>) -> (Vec<String>, Vec<String>) {
        let mut advice = vec!["Clients sharing one address (NAT, a load balancer without source NAT per client) send TCP timestamps from unrelated clocks; a SYN whose timestamp is older than the one a TIME_WAIT socket (or the listener) last saw from that address fails the PAWS check and is dropped with no error anywhere. Fix the NAT (one address per client, or timestamps rewritten consistently), or make this server close first less often so fewer TIME_WAIT sockets sit here (keep-alive).".to_string()];
        let mut commands = Vec::new();
        match self.sysctls_at(place).and_then(|s| s.tw_recycle) {
            Some(v) if v != 0 => {
                advice.push(format!("net.ipv4.tcp_tw_recycle = {v} on this kernel: it drops SYNs from NATed clients by per-address timestamps. Turn it off."));
                commands.push(self.in_place(place, "sysctl -w net.ipv4.tcp_tw_recycle=0"));
            }
            Some(_) => advice.push("net.ipv4.tcp_tw_recycle is 0 on this kernel: keep it off (it drops SYNs from NATed clients).".into()),
            None => advice.push("tcp_tw_recycle does not exist on this kernel (removed in Linux 4.12): these are PAWS checks at TIME_WAIT sockets and listeners, not recycling.".into()),
        }
        advice.push("Do not turn net.ipv4.tcp_timestamps off to silence this: it disables PAWS protection and RTT measurement for every connection.".into());
        (advice, commands)
    }
}

/// Whether a listener's accept queue of `queue` is full: at or over its
/// limit (at the limit one more connection fits, then SYNs are dropped).
fn queue_full(queue: u32, limit: u32) -> bool {
    queue > 0 && queue >= limit
}

/// `accept_queue_full` (warning): a listener whose accept queue is at or
/// over its limit at the end, or was at its peak, with no drop during the
/// window (a listener that dropped has its `listen_drops` finding, which
/// says the same and more). A queue that stays full drops every SYN that
/// comes; its drops from before tracing began (the kernel's count when it
/// was first seen) are named.
fn accept_queue_full(obs: &Observation, out: &mut Vec<Finding>) {
    let host = obs.facts_end.as_ref().and_then(|f| f.host_netns);
    for l in obs
        .listeners
        .iter()
        .filter(|l| l.drops_total == 0 && l.closed_age_ms.is_none())
    {
        let limit = l.accept_queue_limit;
        let full_now = queue_full(l.accept_queue, limit);
        if !full_now && !queue_full(l.accept_queue_peak, limit) {
            continue;
        }
        let place = l.netns.map(|netns| Place { netns, pid: l.pid });
        let comm = l.comm.as_deref().map(escape);
        let owner = comm.clone().map_or_else(
            || "the process listening there".to_string(),
            |c| c.into_owned(),
        );
        let ns_name = match l.netns {
            Some(n) if Some(n) != host => format!(" (in {})", obs.netns_name(n)),
            _ => String::new(),
        };
        let before = match l.drops_before_tracing {
            0 => String::new(),
            n => format!("; it dropped {n} connection attempts before tcptrace started"),
        };
        let title = if full_now {
            format!(
                "Accept queue of {} full ({}/{limit}, limit {limit} = min(backlog, net.core.somaxconn)): {owner} is not accepting{before}{ns_name}",
                l.listener, l.accept_queue
            )
        } else {
            format!(
                "Accept queue of {} was full during the window (peak {}/{limit}, limit {limit} = min(backlog, net.core.somaxconn)): {owner} does not accept fast enough for its bursts{before}{ns_name}",
                l.listener, l.accept_queue_peak
            )
        };
        let mut evidence = vec![
            format!(
                "accept queue {}/{limit} now, peak {}: the kernel queues {} at most, then drops SYNs",
                l.accept_queue,
                l.accept_queue_peak,
                u64::from(limit) + 1
            ),
            format!(
                "no connection attempt dropped at it in {:.0} s: none came while it was full, or the kernel's count did not move yet",
                obs.window_s
            ),
        ];
        if l.drops_before_tracing > 0 {
            evidence.push(format!(
                "dropped {} connection attempts before tcptrace started (the kernel's count when it was first seen; reason unknown)",
                l.drops_before_tracing
            ));
        }
        evidence.push(format!("listening: {}", who(l.pid, comm.as_deref())));
        if let Some(w) = l.workload.workload.as_deref() {
            evidence.push(format!("workload {}", escape(w)));
        }
        let somaxconn = obs.sysctls_at(place).and_then(|s| s.somaxconn);
        evidence.extend(somaxconn_evidence(somaxconn, limit));
        evidence.extend(obs.counters_evidence(l.netns, false));
        let (advice, sysctls) = obs.accept_queue_advice(l, place, &owner);
        out.push(Finding {
            id: "accept_queue_full",
            severity: Severity::Warning,
            title,
            evidence,
            advice,
            sysctls,
            workload: FindingWorkload::of(&l.workload).or_else(|| obs.workload_of(l.pid)),
        });
    }
}

/// `paws_rejects` (warning): a namespace's PAWSTimewait (or PAWSPassive,
/// on kernels that have it) moved during the window and no listener's
/// drops there name PAWS (drop reports off, or the SYNs hit TIME_WAIT
/// sockets of a port no listener holds now): SYNs rejected by the
/// timestamp check, the NAT-with-timestamps case.
fn paws_rejects(obs: &Observation, out: &mut Vec<Finding>) {
    let Some(d) = &obs.listen_drops else {
        return;
    };
    for c in &d.namespaces {
        let timewait = c.counters.paws_timewait.unwrap_or(0);
        let passive = c.counters.paws_passive.unwrap_or(0);
        if timewait == 0 && passive == 0 {
            continue;
        }
        let explained = obs.listeners.iter().any(|l| {
            l.netns == Some(c.netns)
                && DropReason::ALL
                    .into_iter()
                    .any(|r| is_paws(r) && l.drops.get(r) > 0)
        });
        if explained {
            continue;
        }
        let mut counted = Vec::new();
        if timewait > 0 {
            counted.push(format!("PAWSTimewait +{timewait}"));
        }
        if passive > 0 {
            counted.push(format!("PAWSPassive +{passive}"));
        }
        let place = Some(Place {
            netns: c.netns,
            pid: None,
        });
        let mut evidence: Vec<String> = obs
            .counters_evidence(Some(c.netns), true)
            .into_iter()
            .collect();
        evidence.push("no listener's drops name PAWS: the kernel's drop reports were off or rate-limited, or the SYNs hit TIME_WAIT sockets of a port no listener holds now".into());
        evidence.push(format!(
            "TIME_WAIT sockets at the end: {}",
            obs.state("TIME_WAIT")
        ));
        let (advice, sysctls) = obs.paws_advice(place);
        out.push(Finding {
            id: "paws_rejects",
            severity: Severity::Warning,
            title: format!(
                "{} SYNs rejected by the TCP timestamp (PAWS) check in {} ({}): clients with unrelated timestamp clocks, typically behind NAT",
                timewait.saturating_add(passive),
                obs.netns_name(c.netns),
                counted.join(", ")
            ),
            evidence,
            advice,
            sysctls,
            workload: None,
        });
    }
}

/// `no_listener` (info): SYNs to addresses and ports nothing listens on
/// (answered with a reset): a client pointed at the wrong port, a service
/// down, a scan.
fn no_listener(obs: &Observation, out: &mut Vec<Finding>) {
    let Some(d) = &obs.listen_drops else {
        return;
    };
    let rows: Vec<_> = d
        .unmatched
        .iter()
        .filter(|u| {
            u.drops_by_reason
                .contains_key(DropReason::NoListener.name())
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let total: u64 = rows
        .iter()
        .map(|u| u.drops_by_reason[DropReason::NoListener.name()])
        .sum();
    let mut evidence: Vec<String> = rows
        .iter()
        .take(10)
        .map(|u| {
            format!(
                "{}{}: {} SYNs",
                u.destination,
                u.netns
                    .map_or(String::new(), |n| format!(" ({})", obs.netns_name(n))),
                u.drops_by_reason[DropReason::NoListener.name()]
            )
        })
        .collect();
    if rows.len() > 10 {
        evidence.push(format!("... {} more destinations", rows.len() - 10));
    }
    out.push(Finding {
        id: "no_listener",
        severity: Severity::Info,
        title: format!(
            "{total} SYNs to {} address{} and port{} with nothing listening (answered with a reset)",
            rows.len(),
            if rows.len() == 1 { "" } else { "es" },
            if rows.len() == 1 { "" } else { "s" }
        ),
        evidence,
        advice: vec!["A client is pointed at a port where nothing listens (a service down or not yet started, a wrong port in its configuration), or something scans this host; the clients see \"connection refused\".".into()],
        sysctls: vec![],
        workload: None,
    });
}

fn close_wait_leaks(obs: &Observation, t: &Thresholds, out: &mut Vec<Finding>) {
    for p in &obs.close_wait {
        let old = p.oldest_age_ms >= t.close_wait_age_ms;
        if p.count < t.close_wait && !old {
            continue;
        }
        let growing = p.growth_per_min > 0.0;
        let severity = if p.count >= 10 * t.close_wait || (growing && old) {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let mut holder = who(p.pid, p.comm.as_deref());
        let workload = p.workload.workload.as_deref().map(escape);
        if let Some(w) = &workload {
            holder.push_str(&format!(" in {w}"));
        }
        let peers = if p.peers.is_empty() {
            "unknown".to_string()
        } else {
            p.peers.join(", ")
        };
        let mut evidence = vec![
            format!("{} CLOSE_WAIT sockets held by {holder}", p.count),
            format!("peers: {peers}"),
            format!(
                "oldest {}",
                fmt_age(p.oldest_age_ms, p.oldest_age_is_lower_bound)
            ),
        ];
        let paths = code_paths(obs, p);
        evidence.extend(paths.evidence);
        if p.growth_delta != 0 {
            let measured = crate::clock::fmt_growth(p.growth_delta, p.growth_span_ms, 60_000);
            evidence.push(if p.growth_span_ms + 1_500 >= 60_000 {
                format!("growing {measured} (last minute)")
            } else {
                format!("grew {measured} (all the history there is)")
            });
        }
        if let Some(path) = &p.workload.cgroup_path {
            evidence.push(format!("cgroup {}", escape(path)));
        }
        // A workload outlives the pid: follow it by unit or container.
        let pid_hint = match (&p.workload.container, &p.workload.unit) {
            (Some(c), _) => format!(" --container {}", escape(c)),
            (None, Some(u)) => format!(" --unit {}", escape(u)),
            (None, None) => p.pid.map(|p| format!(" -p {p}")).unwrap_or_default(),
        };
        out.push(Finding {
            id: "close_wait_leak",
            severity,
            title: format!(
                "CLOSE_WAIT leak: {holder} holds {} CLOSE_WAIT sockets to {peers}",
                p.count
            ),
            evidence,
            advice: [
                Some("The peer closed these connections and the application never called close(): a leak in its code, not a kernel or network setting.".into()),
                Some(match &paths.top_frame {
                    Some(f) => format!("Look at {f} (where most were opened) and what it hands them to: a connection or pool object not returned on an error path, or a read loop that ignores EOF; close the socket when read() returns 0."),
                    None => "Look for a connection or pool object not returned on an error path, or a read loop that ignores EOF; close the socket when read() returns 0.".into(),
                }),
                Some("No sysctl fixes CLOSE_WAIT (tcp_fin_timeout and keepalive do not apply); restarting the process only resets the pile.".into()),
                Some(format!("See them: ss -tnp state close-wait | grep 'pid={}'", p.pid.map(|p| p.to_string()).unwrap_or_default())),
                Some(format!("Follow one: tcptrace trace --state CLOSE_WAIT{pid_hint}")),
                obs.stacks.is_none().then(|| "Name the code that opened them: tcptrace doctor --stacks (or stats --stacks) while the leak grows".into()),
            ]
            .into_iter()
            .flatten()
            .collect(),
            sysctls: vec![],
            workload: FindingWorkload::of(&p.workload).or_else(|| obs.workload_of(p.pid)),
        });
    }
}

/// What `close_wait_by_stack` says of process `p`'s CLOSE_WAIT sockets.
struct CodePaths {
    evidence: Vec<String>,
    /// The leading path's function (escaped), for the advice.
    top_frame: Option<String>,
}

/// Paths shown per leak, most sockets first.
const CODE_PATHS_SHOWN: usize = 3;

/// The code paths that opened `p`'s CLOSE_WAIT sockets (`--stacks`):
/// `opened at PATH: N of TOTAL` for up to [`CODE_PATHS_SHOWN`] of them, the
/// sockets with no stack, and what the leading path's stack misses when it
/// is not whole. Nothing without stacks.
fn code_paths(obs: &Observation, p: &CloseWaitByProcess) -> CodePaths {
    let mut rows: Vec<&CloseWaitByStack> = obs
        .close_wait_by_stack
        .iter()
        .filter(|r| p.pid.is_some() && r.pid == p.pid)
        .collect();
    rows.sort_by_key(|r| (std::cmp::Reverse(r.count), r.stack_id.is_none(), r.stack_id));
    let with_stack: Vec<&CloseWaitByStack> = rows
        .iter()
        .copied()
        .filter(|r| r.stack_id.is_some())
        .collect();
    let mut evidence: Vec<String> = with_stack
        .iter()
        .take(CODE_PATHS_SHOWN)
        .map(|r| {
            format!(
                "opened at {}: {} of {}",
                escape(&r.code_path),
                r.count,
                p.count
            )
        })
        .collect();
    if with_stack.len() > CODE_PATHS_SHOWN {
        let rest: u64 = with_stack[CODE_PATHS_SHOWN..].iter().map(|r| r.count).sum();
        evidence.push(format!(
            "{rest} of {} opened at {} other code paths",
            p.count,
            with_stack.len() - CODE_PATHS_SHOWN
        ));
    }
    let without: u64 = rows
        .iter()
        .filter(|r| r.stack_id.is_none())
        .map(|r| r.count)
        .sum();
    if without > 0 {
        evidence.push(format!(
            "{without} of {} have no stack (opened before tracing, or the kernel missed it)",
            p.count
        ));
    }
    let leading = with_stack.first();
    if let Some(r) = leading
        && let Some(note) = quality_of(r.stack_quality).and_then(StackQuality::note)
    {
        evidence.push(format!(
            "stack of the leading path ({}): {note}",
            r.stack_quality
        ));
    }
    CodePaths {
        evidence,
        top_frame: leading
            .and_then(|r| r.top_frame.as_deref())
            .map(|f| escape(f).into_owned()),
    }
}

/// The [`StackQuality`] of a `stack_quality` name (None: "pending", "none").
fn quality_of(name: &str) -> Option<StackQuality> {
    [
        StackQuality::Complete,
        StackQuality::Truncated,
        StackQuality::Cut,
        StackQuality::NoFramePointers,
        StackQuality::ProcessGone,
        StackQuality::Unsymbolized,
    ]
    .into_iter()
    .find(|q| q.name() == name)
}

fn server_time_wait(obs: &Observation, t: &Thresholds, out: &mut Vec<Finding>) {
    for l in &obs.services {
        if l.count < t.server_time_wait {
            continue;
        }
        let holder = who(l.pid, l.comm.as_deref());
        let service = std::net::SocketAddr::new(l.saddr, l.sport);
        let mut evidence = vec![
            format!(
                "{} TIME_WAIT sockets on {service} ({holder}, {}), {:.1} more per second, from {} client addresses",
                l.count,
                obs.netns_name(l.netns),
                l.rate_per_sec,
                l.clients
            ),
            "TIME_WAIT belongs to whichever side closes first: here the server, on connections it accepted".into(),
        ];
        let c = l.closed_first;
        if c.total() > 0 {
            evidence.push(format!(
                "of the {} connections to {service} that ended, the server closed first on {} ({:.0}%), the clients on {}, both at once on {}",
                c.total(),
                c.local,
                c.local as f64 * 100.0 / c.total() as f64,
                c.remote,
                c.both
            ));
        }
        out.push(Finding {
            id: "server_time_wait",
            severity: Severity::Warning,
            title: format!(
                "Server-side TIME_WAIT: {} TIME_WAIT sockets on {service} ({holder}): the server closes first",
                l.count
            ),
            evidence,
            advice: vec![
                "Keep connections alive instead of one request per connection, or let clients close first (HTTP: do not send `Connection: close`).".into(),
                "Behind a proxy (nginx): enable upstream keep-alive: `upstream backend { server ...; keepalive 32; }` with `proxy_http_version 1.1;` and `proxy_set_header Connection \"\";` in the location.".into(),
                "Server-side TIME_WAIT does not use ephemeral ports; it costs memory and timewait buckets (tcp_max_tw_buckets). Lowering tcp_fin_timeout does not shorten it (TIME_WAIT is fixed at 60 s).".into(),
            ],
            sysctls: vec![],
            workload: obs.workload_of(l.pid),
        });
    }
}

/// Failed connects to one destination during the window: (refused or
/// timed out, failed with EADDRNOTAVAIL).
fn failures_to(obs: &Observation, daddr: IpAddr, dport: u16) -> (u64, u64) {
    obs.failed_connects
        .iter()
        .filter(|f| f.daddr == daddr && f.dport == dport)
        .fold((0, 0), |(failed, no_port), f| {
            (failed + f.refused + f.timeout, no_port + f.no_port)
        })
}

/// Port budgets judged at most (the fullest first): past this, the rest
/// are the same story.
const MAX_BUDGET_FINDINGS: usize = 10;

fn port_pressure(obs: &Observation, t: &Thresholds, out: &mut Vec<Finding>) {
    let mut reported = Vec::new();
    let mut findings = 0;
    for b in &obs.budgets {
        if findings == MAX_BUDGET_FINDINGS {
            break;
        }
        let (failed, _) = failures_to(obs, b.daddr, b.dport);
        let no_port = obs
            .no_port_by_budget
            .get(&(b.netns, b.saddr, b.daddr, b.dport))
            .copied()
            .unwrap_or(0);
        let held = b.in_use_ratio;
        let tw_share = b.port_range_ratio;
        let severity = if no_port > 0 || held >= t.port_share.1 {
            Severity::Critical
        } else if held >= t.port_share.0 {
            Severity::Warning
        } else if tw_share >= t.port_share.0 {
            // Many TIME_WAIT, but reuse keeps connect() working.
            Severity::Info
        } else {
            continue;
        };
        findings += 1;
        if no_port > 0 {
            reported.push((b.daddr, b.dport));
        }
        let holder = who(b.pid, b.comm.as_deref());
        let place = Place {
            netns: b.netns,
            pid: b.pid,
        };
        let dest = std::net::SocketAddr::new(b.daddr, b.dport);
        let (lo, hi) = b.port_range;
        let range = if b.ports < u32::from(hi - lo) + 1 {
            format!("{lo}-{hi} minus reserved ports")
        } else {
            format!("{lo}-{hi}")
        };
        let from = format!("from {} in {}", b.saddr, obs.netns_name(b.netns));
        let mut evidence = vec![format!(
            "{} TIME_WAIT sockets to {dest} {from}: {:.0}% of the {} ports connect() may pick there ({range})",
            b.time_wait,
            tw_share * 100.0,
            b.ports
        )];
        if !b.facts_known {
            evidence.push(
                "that namespace's sysctls were not read: judged by the host's ip_local_port_range, without tcp_tw_reuse".into(),
            );
        }
        evidence.push(format!("opened by {holder}, which closes first"));
        let reuse = obs
            .facts_end
            .as_ref()
            .and_then(|f| f.of(b.netns))
            .map(|f| f.sysctls.clone());
        let delay_ms = reuse
            .as_ref()
            .map_or(1000, |s| s.reuse_delay_ns() / 1_000_000);
        let reuse_value = reuse
            .as_ref()
            .and_then(|s| s.tw_reuse)
            .map_or("?".to_string(), |v| v.to_string());
        evidence.push(match b.tw_reuse {
            Reuse::Applies => format!(
                "tcp_tw_reuse={reuse_value} here: connect() takes over a TIME_WAIT port to this destination once it is {delay_ms} ms old ({} of them are now), so {:.0}% of the ports are really unavailable; connect() fails with EADDRNOTAVAIL only when the rest are taken within {delay_ms} ms",
                b.reusable,
                held * 100.0
            ),
            Reuse::LoopbackOnly => format!(
                "tcp_tw_reuse={reuse_value} (loopback only) does not apply to {}: each TIME_WAIT holds its port for 60 s; past 100%, connect() to {dest} {from} fails with EADDRNOTAVAIL",
                b.saddr
            ),
            Reuse::NoTimestamps => "tcp_tw_reuse is on but tcp_timestamps is off: no reuse; each TIME_WAIT holds its port for 60 s, and past 100% connect() fails with EADDRNOTAVAIL".into(),
            Reuse::Off | Reuse::Unknown => format!(
                "each TIME_WAIT holds its port for 60 s (tcp_tw_reuse={reuse_value}): past 100%, connect() to {dest} {from} fails with EADDRNOTAVAIL"
            ),
        });
        if b.open > 0 {
            evidence.push(format!(
                "{} open connections to {dest} {from} hold ports of the same budget",
                b.open
            ));
        }
        let others = obs
            .budgets
            .iter()
            .filter(|o| o.daddr == b.daddr && o.dport == b.dport)
            .count()
            .saturating_sub(1);
        if others > 0 {
            evidence.push(format!(
                "{others} other (namespace, local address) pairs connect to {dest}: each has its own budget"
            ));
        }
        if no_port > 0 {
            evidence.push(no_port_evidence(no_port, dest));
        }
        if failed > 0 {
            evidence.push(format!(
                "{failed} more connections to {dest} were refused or timed out during the window"
            ));
        }
        let title = if severity == Severity::Info {
            format!(
                "{} TIME_WAIT to {dest} {from} would use {:.0}% of its ports, but tcp_tw_reuse lets connect() reuse them: no connect failed ({holder})",
                b.time_wait,
                tw_share * 100.0
            )
        } else {
            format!(
                "Ephemeral port pressure: {:.0}% of the ports to {dest} {from} are unavailable ({} TIME_WAIT, {} open; {holder})",
                held * 100.0,
                b.time_wait,
                b.open
            )
        };
        out.push(Finding {
            id: "client_port_pressure",
            severity,
            title,
            evidence,
            advice: port_advice(obs, &holder, Some(place)),
            sysctls: port_sysctls(obs, Some(place)),
            workload: obs.workload_of(b.pid),
        });
    }
    // Ports exhausted with no budget above (connections held open, a narrow
    // range): the failures alone are the evidence.
    for f in &obs.failed_connects {
        if f.no_port == 0 || reported.contains(&(f.daddr, f.dport)) {
            continue;
        }
        let dest = std::net::SocketAddr::new(f.daddr, f.dport);
        let holder = who(f.pid, f.comm.as_deref());
        out.push(Finding {
            id: "client_port_pressure",
            severity: Severity::Critical,
            title: format!(
                "Ephemeral ports exhausted: connect() to {dest} failed {} times with EADDRNOTAVAIL ({holder})",
                f.no_port
            ),
            evidence: vec![
                no_port_evidence(f.no_port, dest),
                format!(
                    "few TIME_WAIT sockets to {dest}: the ports are held by open connections or a narrow ip_local_port_range (`ss -tn dst {dest}` counts them)"
                ),
            ],
            advice: port_advice(obs, &holder, None),
            sysctls: port_sysctls(obs, None),
            workload: obs.workload_of(f.pid),
        });
    }
}

fn no_port_evidence(n: u64, dest: std::net::SocketAddr) -> String {
    format!(
        "connect() to {dest} failed {n} times with EADDRNOTAVAIL during the window: no free local port (seen as SYN_SENT -> CLOSE before a port was chosen)"
    )
}

/// Where a budget lives, for the advice: its namespace and a process in it.
#[derive(Clone, Copy)]
struct Place {
    netns: u32,
    pid: Option<u32>,
}

impl Observation {
    /// `place`'s namespace's sysctls (the host's when not known or none).
    fn sysctls_at(&self, place: Option<Place>) -> Option<&Sysctls> {
        match place {
            Some(p) => self.facts_end.as_ref()?.of(p.netns).map(|f| &f.sysctls),
            None => self.sysctls(),
        }
    }

    /// A command run in `place`'s namespace: `nsenter` into it through a
    /// process of it when that is not the host's.
    fn in_place(&self, place: Option<Place>, command: &str) -> String {
        let host = self.facts_end.as_ref().and_then(|f| f.host_netns);
        match place {
            Some(p) if Some(p.netns) != host => match p.pid {
                Some(pid) => format!("nsenter --net=/proc/{pid}/ns/net {command}"),
                None => format!("{command}   # inside network namespace {}", p.netns),
            },
            _ => command.to_string(),
        }
    }
}

fn port_advice(obs: &Observation, holder: &str, place: Option<Place>) -> Vec<String> {
    let sysctls = obs.sysctls_at(place);
    let delay_ms = sysctls.map_or(1000, |s| s.reuse_delay_ns() / 1_000_000);
    let tw_reuse = match sysctls.map(|s| (s.tw_reuse, s.timestamps)) {
        Some((Some(1), Some(ts))) if ts != 0 => "tcp_tw_reuse is on".to_string(),
        Some((Some(2), _)) => "tcp_tw_reuse is 2: loopback only".to_string(),
        Some((Some(r), _)) => format!("tcp_tw_reuse is {r}"),
        Some((None, _)) => "tcp_tw_reuse is absent".to_string(),
        None => "tcp_tw_reuse unknown".to_string(),
    };
    vec![
        format!("Reuse connections: a pool or keep-alive in {holder} removes the churn (the real fix)."),
        "Widen the ephemeral range if it was narrowed (the ports are per destination ip:port, so more ports is more headroom).".into(),
        "Reserve the host's own service ports from the ephemeral range with net.ipv4.ip_local_reserved_ports, so a wider range cannot take them.".into(),
        format!("net.ipv4.tcp_tw_reuse=1 lets connect() reuse a TIME_WAIT port to the same destination once it is {delay_ms} ms old (tcp_tw_reuse_delay); it only helps outgoing connections and needs TCP timestamps on both ends ({tw_reuse}). It does nothing for a server's TIME_WAIT."),
    ]
}

fn port_sysctls(obs: &Observation, place: Option<Place>) -> Vec<String> {
    let reserved = match obs.sysctls_at(place) {
        Some(s) if !s.reserved_ports.is_empty() => s.reserved_ports.as_str(),
        _ => "8080,9090",
    };
    vec![
        obs.in_place(
            place,
            "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"",
        ),
        format!(
            "{}   # your service ports",
            obs.in_place(
                place,
                &format!("sysctl -w net.ipv4.ip_local_reserved_ports=\"{reserved}\"")
            )
        ),
        obs.in_place(place, "sysctl -w net.ipv4.tcp_tw_reuse=1"),
    ]
}

fn time_wait_overflow(obs: &Observation, out: &mut Vec<Finding>) {
    for (netns, during, total) in obs.tw_overflow() {
        if total == 0 {
            continue;
        }
        let sysctls = obs
            .facts_end
            .as_ref()
            .and_then(|f| f.namespaces.get(&netns))
            .map(|f| &f.sysctls);
        let buckets = sysctls
            .and_then(|s| s.max_tw_buckets)
            .map_or_else(|| "?".into(), |b| b.to_string());
        let now = during > 0;
        let where_ = obs.netns_name(netns);
        let seen = obs.ended.get("time_wait_overflow").copied().unwrap_or(0);
        let mut evidence = vec![
            format!("TCPTimeWaitOverflow in {where_}: {during} during the window, {total} since it was created"),
            format!("net.ipv4.tcp_max_tw_buckets = {buckets} there; TIME_WAIT now {} (all namespaces)", obs.state("TIME_WAIT")),
            "past the limit, closing sockets skip TIME_WAIT (the kernel logs \"TCP: time wait bucket table overflow\")".into(),
        ];
        if now {
            evidence.push(format!(
                "tcptrace saw {seen} connections close without a TIME_WAIT socket (ended `time_wait_overflow`, all namespaces)"
            ));
        }
        let double = sysctls
            .and_then(|s| s.max_tw_buckets)
            .map_or(524_288, |b| b.saturating_mul(2));
        out.push(Finding {
            id: "time_wait_overflow",
            severity: if now { Severity::Warning } else { Severity::Info },
            title: if now {
                format!("TIME_WAIT bucket overflow in {where_}: {during} sockets skipped TIME_WAIT during the window")
            } else {
                format!("TIME_WAIT bucket overflow happened earlier in {where_} ({total} times)")
            },
            evidence,
            advice: vec![
                "Fix what makes the TIME_WAIT first (keep-alive, pooling, who closes first); raise tcp_max_tw_buckets only after, each bucket costs memory.".into(),
            ],
            sysctls: vec![format!("sysctl -w net.ipv4.tcp_max_tw_buckets={double}")],
            workload: None,
        });
    }
}

/// Destinations listed in a reuse finding, at most.
const MAX_REUSE_PEERS: usize = 5;

/// What `tcp_tw_reuse` did during the window: connect() took over TIME_WAIT
/// sockets (each shown by its end `reused`), cross-checked with the
/// kernel's TWRecycled of each namespace.
fn time_wait_reuse(obs: &Observation, out: &mut Vec<Finding>) {
    let reused = obs.ended.get("time_wait_reused").copied().unwrap_or(0);
    if reused == 0 {
        return;
    }
    let peers: Vec<String> = obs
        .tw_reuses
        .iter()
        .take(MAX_REUSE_PEERS)
        .map(|r| {
            format!(
                "{} ({} by {})",
                std::net::SocketAddr::new(r.daddr, r.dport),
                r.reused,
                who(r.pid, r.comm.as_deref())
            )
        })
        .collect();
    let more = obs.tw_reuses.len().saturating_sub(MAX_REUSE_PEERS);
    let to = if peers.is_empty() {
        String::new()
    } else {
        format!(
            " to {}{}",
            peers.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    };
    let mut evidence = vec![format!(
        "{reused} timewait sockets ended `reused`: a connect() took their 4-tuple over before the 60 s were up"
    )];
    if let (Some(start), Some(end)) = (&obs.facts_start, &obs.facts_end) {
        let kernel: u64 = end
            .namespaces
            .iter()
            .filter_map(|(ns, f)| {
                let before = start
                    .namespaces
                    .get(ns)
                    .map_or(Some(0), |s| s.tw_recycled)?;
                Some(f.tw_recycled?.saturating_sub(before))
            })
            .sum();
        evidence.push(format!(
            "the kernel counted {kernel} (TcpExt TWRecycled, all namespaces) in the same window"
        ));
    }
    let place = obs.tw_reuses.first().map(|r| Place {
        netns: r.netns,
        pid: r.pid,
    });
    if let Some(s) = obs.sysctls_at(place) {
        evidence.push(format!(
            "net.ipv4.tcp_tw_reuse = {} here (1: every outgoing connection; 2: only when one end is a loopback address), after tcp_tw_reuse_delay = {} ms; a client reconnecting from a fixed port reuses regardless",
            s.tw_reuse.map_or_else(|| "?".into(), |v| v.to_string()),
            s.reuse_delay_ns() / 1_000_000
        ));
    }
    out.push(Finding {
        id: "time_wait_reuse",
        severity: Severity::Info,
        title: match reuse_sysctl(obs) {
            ReuseSysctl::On => format!(
                "tcp_tw_reuse reused {reused} TIME_WAIT sockets in {:.0} s: it is working for outgoing connections{to}",
                obs.window_s
            ),
            // With tcp_tw_reuse=0 only a connect() from a port bound
            // beforehand takes a TIME_WAIT over (`tcp_twsk_unique()` with
            // no `twp`).
            ReuseSysctl::Off => format!(
                "connect() from fixed ports took over {reused} TIME_WAIT sockets in {:.0} s (tcp_tw_reuse is off){to}",
                obs.window_s
            ),
            ReuseSysctl::Mixed => format!(
                "connect() took over {reused} TIME_WAIT sockets in {:.0} s (tcp_tw_reuse, or clients binding fixed ports){to}",
                obs.window_s
            ),
        },
        evidence,
        advice: vec![
            "Reuse keeps connect() working while TIME_WAIT piles up; the churn itself (a new connection per request) is what a pool or keep-alive removes.".into(),
        ],
        sysctls: vec![],
        workload: obs.tw_reuses.first().and_then(|r| obs.workload_of(r.pid)),
    });
}

/// `tcp_tw_reuse` in the namespaces where connect() took TIME_WAIT over.
enum ReuseSysctl {
    /// On (1 or 2) everywhere known.
    On,
    /// 0 everywhere known.
    Off,
    /// Some of each, or not known.
    Mixed,
}

fn reuse_sysctl(obs: &Observation) -> ReuseSysctl {
    // The namespaces the reuses happened in.
    let modes: Vec<Option<u32>> = obs
        .tw_reuses
        .iter()
        .map(|r| {
            obs.sysctls_at(Some(Place {
                netns: r.netns,
                pid: None,
            }))
            .and_then(|s| s.tw_reuse)
        })
        .collect();
    if !modes.is_empty() && modes.iter().all(|m| matches!(m, Some(1 | 2))) {
        ReuseSysctl::On
    } else if !modes.is_empty() && modes.iter().all(|m| *m == Some(0)) {
        ReuseSysctl::Off
    } else {
        ReuseSysctl::Mixed
    }
}

/// Timewait sockets taken down with their network namespace.
fn time_wait_purged(obs: &Observation, out: &mut Vec<Finding>) {
    let purged = obs.ended.get("time_wait_purged").copied().unwrap_or(0);
    if purged == 0 {
        return;
    }
    out.push(Finding {
        id: "time_wait_purged",
        severity: Severity::Info,
        title: format!(
            "{purged} TIME_WAIT sockets were purged with their network namespace during the window"
        ),
        evidence: vec![format!(
            "{purged} timewait sockets ended `purged`: their namespace was deleted (a container or pod stopped) before their 60 s were up"
        )],
        advice: vec![
            "Nothing to fix: the kernel drops a deleted namespace's TIME_WAIT at once. If TIME_WAIT counts fell suddenly, this is why.".into(),
        ],
        sysctls: vec![],
        workload: None,
    });
}

/// A recording made without the namespaces' facts: say what cannot be
/// judged rather than judge it by guesses.
fn missing_facts(obs: &Observation, out: &mut Vec<Finding>) {
    if obs.facts_end.is_some() {
        return;
    }
    out.push(Finding {
        id: "facts_missing",
        severity: Severity::Info,
        title: "No sysctls or TIME_WAIT counters in this data: some findings cannot be made".into(),
        evidence: vec![
            "no namespace facts were recorded (a recording from an older tcptrace, format version 2 or below, or one without sock_diag snapshots)".into(),
            "not judged: tcp_tw_recycle, tcp_tw_reuse without timestamps, tcp_fin_timeout and tcp_syncookies settings; TIME_WAIT bucket overflow (TCPTimeWaitOverflow)".into(),
            "judged with assumptions: ephemeral port pressure uses the recording's ip_local_port_range for every namespace and assumes no tcp_tw_reuse".into(),
        ],
        advice: vec!["Record with this tcptrace (`tcptrace record`) to carry the facts.".into()],
        sysctls: vec![],
        workload: None,
    });
}

/// Share of lookups left as `cgroup:<id>` from which names count as
/// degraded, and the fewest lookups judged that way.
const UNRESOLVED_SHARE: f64 = 0.2;
const UNRESOLVED_MIN: u64 = 10;

/// Why workloads show as ids or less precisely than they could: no cgroup2
/// tree, file handles refused (the tree is walked: slower, still right),
/// runtime files unreadable (containers show short ids), many ids not
/// resolved. Nothing when attribution is whole or not live.
fn workload_attribution(obs: &Observation, out: &mut Vec<Finding>) {
    let Some(a) = &obs.attribution else {
        return;
    };
    let mut evidence = Vec::new();
    let mut advice = Vec::new();
    let mut title = None;
    match a.method.as_str() {
        "unavailable" => {
            title = Some(
                "Workloads cannot be named: no cgroup v2 hierarchy was found, so every owner shows as cgroup:<id>"
                    .to_string(),
            );
            evidence.push(format!(
                "no cgroup2 mount whose root is the root cgroup: {}",
                a.unavailable
                    .as_deref()
                    .unwrap_or("none in /proc/self/mountinfo")
            ));
            advice.push("Mount the cgroup v2 hierarchy (on a hybrid host it is /sys/fs/cgroup/unified); in a container, bind-mount the host's /sys/fs/cgroup read-only (the Kubernetes DaemonSet mounts it at /host/sys/fs/cgroup).".into());
        }
        "walk" => {
            title = Some(
                "Workload names come from walking the cgroup tree: open_by_handle_at was refused"
                    .to_string(),
            );
            evidence.push(format!(
                "cgroup ids are looked up by walking {} (bounded, at most one walk per 2 s) instead of one file-handle lookup each",
                a.cgroup2.as_deref().unwrap_or("the cgroup2 tree")
            ));
            advice.push("Names stay right, only slower to find for short-lived cgroups. To look them up directly, give tcptrace CAP_DAC_READ_SEARCH and allow open_by_handle_at (systemd: add it to SystemCallFilter=; a container: the capability, which the runtime's default seccomp profile then allows).".into());
        }
        _ => {}
    }
    let unreadable: u64 = a
        .read_errors
        .iter()
        .filter(|((_, reason), _)| reason == "io" || reason == "unsafe")
        .map(|(_, n)| n)
        .sum();
    if a.read_errors.values().any(|&n| n > 0) {
        let listed: Vec<String> = a
            .read_errors
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|((source, reason), n)| format!("{source} {reason} {n}"))
            .collect();
        evidence.push(format!(
            "runtime files skipped (source, reason, count): {}",
            listed.join(", ")
        ));
        if unreadable > 0 {
            title.get_or_insert_with(|| {
                format!("Container names are partly unknown: {unreadable} runtime files could not be read")
            });
            advice.push("Containers whose files cannot be read show their short id: run tcptrace as root with the runtime directories readable (/var/lib/docker/containers, /run/containerd, /var/lib/containers, /var/log/pods, /var/log/containers; read-only mounts in a container). Symlinked, non-root-owned or world-writable files are skipped on purpose.".into());
        }
    }
    let looked_up = a.resolved + a.unresolved;
    if a.method != "unavailable"
        && a.unresolved >= UNRESOLVED_MIN
        && a.unresolved as f64 >= UNRESOLVED_SHARE * looked_up as f64
    {
        title.get_or_insert_with(|| {
            format!(
                "{} cgroup lookups were left unnamed (cgroup:<id>)",
                a.unresolved
            )
        });
        evidence.push(format!(
            "{} workloads named, {} lookups left as cgroup:<id> (the cgroup was gone when looked up, or outside the tree tcptrace sees)",
            a.resolved, a.unresolved
        ));
        advice.push("Short-lived cgroups (a container that exits within the second) can vanish before their name is read; tcptrace in a container needs the host's cgroup tree, not its own cgroup namespace's.".into());
    }
    let Some(title) = title else {
        return;
    };
    if let Some(mount) = &a.cgroup2 {
        evidence.push(format!("cgroup2 tree: {mount} (method {})", a.method));
    }
    out.push(Finding {
        id: "workload_attribution",
        severity: Severity::Info,
        title,
        evidence,
        advice,
        sysctls: vec![],
        workload: None,
    });
}

fn sysctl_findings(obs: &Observation, out: &mut Vec<Finding>) {
    let Some(s) = obs.sysctls() else {
        return;
    };
    if let Some(v) = s.tw_recycle
        && v != 0
    {
        out.push(Finding {
            id: "tcp_tw_recycle",
            severity: Severity::Critical,
            title: "net.ipv4.tcp_tw_recycle is on: clients behind NAT lose SYNs silently".into(),
            evidence: vec![format!("net.ipv4.tcp_tw_recycle = {v}")],
            advice: vec![
                "It drops SYNs whose TCP timestamp is lower than the last one seen from the same IP: clients sharing a NAT address have unrelated clocks, so some of them cannot connect, with no error anywhere. It was removed in Linux 4.12; turn it off.".into(),
            ],
            sysctls: vec!["sysctl -w net.ipv4.tcp_tw_recycle=0".into()],
            workload: None,
        });
    }
    if s.tw_reuse == Some(1) && s.timestamps == Some(0) {
        out.push(Finding {
            id: "tw_reuse_without_timestamps",
            severity: Severity::Warning,
            title: "tcp_tw_reuse is on but tcp_timestamps is off: reuse never happens".into(),
            evidence: vec!["net.ipv4.tcp_tw_reuse = 1".into(), "net.ipv4.tcp_timestamps = 0".into()],
            advice: vec!["TIME_WAIT reuse relies on timestamps to tell old segments from new; turn timestamps back on.".into()],
            sysctls: vec!["sysctl -w net.ipv4.tcp_timestamps=1".into()],
            workload: None,
        });
    }
    if let Some(v) = s.fin_timeout
        && v < 60
    {
        out.push(Finding {
            id: "fin_timeout_myth",
            severity: Severity::Info,
            title: format!("tcp_fin_timeout lowered to {v} s: it does not shorten TIME_WAIT"),
            evidence: vec![format!("net.ipv4.tcp_fin_timeout = {v} (default 60)")],
            advice: vec!["tcp_fin_timeout bounds orphaned FIN_WAIT2 sockets; TIME_WAIT is fixed at 60 s (TCP_TIMEWAIT_LEN). If it was lowered to fix TIME_WAIT, fix who closes first or the port pressure instead.".into()],
            sysctls: vec![],
            workload: None,
        });
    }
    if let Some(v) = s.syncookies
        && v != 1
    {
        out.push(Finding {
            id: "syncookies_myth",
            severity: Severity::Info,
            title: format!("tcp_syncookies changed to {v}: unrelated to TIME_WAIT"),
            evidence: vec![format!("net.ipv4.tcp_syncookies = {v} (default 1)")],
            advice: vec!["SYN cookies protect the accept queue from SYN floods; they neither cause nor cure TIME_WAIT. Keep the default unless you know why.".into()],
            sysctls: vec!["sysctl -w net.ipv4.tcp_syncookies=1".into()],
            workload: None,
        });
    }
}

fn fin_wait2(obs: &Observation, t: &Thresholds, out: &mut Vec<Finding>) {
    let n = obs.state("FIN_WAIT2");
    if n < t.fin_wait2 {
        return;
    }
    let timeout = obs
        .sysctls()
        .and_then(|s| s.fin_timeout)
        .map_or("?".into(), |v| v.to_string());
    out.push(Finding {
        id: "fin_wait2_orphans",
        severity: Severity::Warning,
        title: format!("{n} sockets in FIN_WAIT2: peers are not closing their side"),
        evidence: vec![
            format!("FIN_WAIT2 {n} ({} of them orphaned: closed by the application)", obs.fin_wait2_orphans),
            format!("net.ipv4.tcp_fin_timeout = {timeout} s bounds the orphans"),
        ],
        advice: vec!["This host closed first and the peers never sent their FIN: look at the peers (a stuck or leaking client, a half-closed proxy). tcp_fin_timeout is the right knob for orphaned FIN_WAIT2, not for TIME_WAIT.".into()],
        sysctls: vec![],
        workload: None,
    });
}

/// The listener at `addr:port` that dropped connection attempts during
/// the window, if any: bound to that address, or a wildcard when the
/// destination is a loopback address (a wildcard elsewhere may be another
/// host's port, or another namespace's: the failed connects carry no
/// namespace, so a remote destination never matches a wildcard).
fn dropping_listener(obs: &Observation, addr: IpAddr, port: u16) -> Option<&ListenerRow> {
    let addr = match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        a => a,
    };
    obs.listeners.iter().find(|l| {
        l.port == port
            && l.drops_total > 0
            && l.addr.parse::<IpAddr>().is_ok_and(|la| {
                let la = match la {
                    IpAddr::V6(a) => a.to_ipv4_mapped().map_or(la, IpAddr::V4),
                    a => a,
                };
                la == addr || (la.is_unspecified() && addr.is_loopback())
            })
    })
}

fn failed_connects(obs: &Observation, t: &Thresholds, out: &mut Vec<Finding>) {
    for f in &obs.failed_connects {
        if f.refused + f.timeout < t.failed_connects {
            continue;
        }
        let dest = std::net::SocketAddr::new(f.daddr, f.dport);
        let holder = who(f.pid, f.comm.as_deref());
        // A local listener there that dropped connection attempts: the
        // clients' SYNs were dropped (and the clients gave up or timed
        // out), not refused; its listen_drops finding has the cause.
        if let Some(l) = dropping_listener(obs, f.daddr, f.dport) {
            let reason = l.drops.main_reason().map_or("dropped", |r| r.label());
            out.push(Finding {
                id: "failed_connects",
                severity: Severity::Warning,
                title: format!(
                    "{} connects to {dest} failed ({holder}): the listener {} drops SYNs ({reason})",
                    f.refused + f.timeout,
                    l.listener
                ),
                evidence: vec![
                    format!(
                        "{} ended in SYN_SENT during {:.0} s ({} before a retransmission ran out, {} timed out)",
                        f.refused + f.timeout,
                        obs.window_s,
                        f.refused,
                        f.timeout
                    ),
                    format!(
                        "{} dropped {} connection attempts in the window: the SYNs were dropped, not refused (see the listen_drops finding)",
                        l.listener, l.drops_total
                    ),
                ],
                advice: vec![format!(
                    "Fix the listener {} (the listen_drops finding says how); the clients' connects then succeed.",
                    l.listener
                )],
                sysctls: vec![],
                workload: None,
            });
            continue;
        }
        let cause = if f.timeout >= f.refused {
            "SYNs unanswered until connect() timed out: the host is down, unreachable, or dropping SYNs (firewall, full accept queue, tcp_tw_recycle + NAT)"
        } else {
            "answered with RST: nothing listens on that port (the service is down or on another port)"
        };
        out.push(Finding {
            id: "failed_connects",
            severity: Severity::Warning,
            title: format!("Dead backend? {} connects to {dest} failed ({holder})", f.refused + f.timeout),
            evidence: vec![
                format!("{} refused, {} timed out in SYN_SENT during {:.0} s", f.refused, f.timeout, obs.window_s),
                cause.into(),
            ],
            advice: vec![
                format!("Check the backend {dest} (is it up and listening? `ss -ltn` there); remove it from the pool or fix the address."),
                "A client retrying in a tight loop burns ephemeral ports: back off between attempts.".into(),
            ],
            sysctls: vec![],
            workload: None,
        });
    }
}

#[cfg(test)]
mod tests;

/// Human text: a severity marker and title per finding, then its evidence,
/// advice and commands, indented.
pub fn write_text(w: &mut impl std::io::Write, findings: &[Finding]) -> std::io::Result<()> {
    for (i, f) in findings.iter().enumerate() {
        if i > 0 {
            writeln!(w)?;
        }
        // Findings quote process names: escaped, one line each.
        let esc = crate::output::escape;
        writeln!(w, "{} {}  ({})", f.severity.marker(), esc(&f.title), f.id)?;
        for e in &f.evidence {
            writeln!(w, "    - {}", esc(e))?;
        }
        for a in &f.advice {
            writeln!(w, "    > {}", esc(a))?;
        }
        for s in &f.sysctls {
            writeln!(w, "    $ {}", esc(s))?;
        }
    }
    Ok(())
}
