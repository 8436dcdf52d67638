//! `tcptrace doctor`'s diagnosis: what a short observation of the host means.
//! Pure: it turns an [`Observation`] (engine state at the end of the window,
//! what happened during it, sysctl values) into [`Finding`]s, each with the
//! evidence, a severity, what to do and the exact commands a user could run.
//! The causes and fixes come from the incident write-ups (`domain.md`): a
//! CLOSE_WAIT pile is the application not closing, TIME_WAIT belongs to
//! whoever closes first, ephemeral ports run out per destination, and
//! `tcp_fin_timeout` / `tcp_syncookies` do not touch TIME_WAIT. It never
//! changes anything; the command only prints.

pub mod census;

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

pub use self::census::{Census, DestTimeWait, ListenerTimeWait, census};
use crate::{alerts::who, clock::fmt_age, stats::CloseWaitByProcess};

/// How bad a finding is; the exit code is 1 from [`Severity::Warning`] up.
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
}

/// TCP sysctls of one network namespace (`None`: absent on this kernel).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sysctls {
    /// `net.ipv4.tcp_tw_recycle` (removed in Linux 4.12).
    pub tw_recycle: Option<u32>,
    pub tw_reuse: Option<u32>,
    pub timestamps: Option<u32>,
    pub fin_timeout: Option<u32>,
    pub syncookies: Option<u32>,
    pub max_tw_buckets: Option<u64>,
    pub port_range: (u16, u16),
    pub reserved_ports: String,
}

impl Sysctls {
    /// Linux's defaults.
    pub fn defaults() -> Self {
        Self {
            tw_recycle: None,
            tw_reuse: Some(2),
            timestamps: Some(1),
            fin_timeout: Some(60),
            syncookies: Some(1),
            max_tw_buckets: Some(262_144),
            port_range: (32768, 60999),
            reserved_ports: String::new(),
        }
    }
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
    pub census: Census,
    pub failed_connects: Vec<FailedConnects>,
    /// TCPTimeWaitOverflow: during the window, and since boot.
    pub tw_overflow_during: u64,
    pub tw_overflow_total: u64,
    /// The initial namespace's sysctls.
    pub sysctls: Sysctls,
    /// `ip_local_port_range` of other namespaces seen, by netns inode.
    pub port_ranges: BTreeMap<u32, (u16, u16)>,
    /// The initial namespace's inode (its range is `sysctls.port_range`).
    pub host_netns: Option<u32>,
}

impl Observation {
    fn port_range(&self, netns: u32) -> (u16, u16) {
        if Some(netns) == self.host_netns {
            return self.sysctls.port_range;
        }
        self.port_ranges
            .get(&netns)
            .copied()
            .unwrap_or(self.sysctls.port_range)
    }

    fn state(&self, name: &str) -> u64 {
        self.states.get(name).copied().unwrap_or(0)
    }
}

/// When a finding fires.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// CLOSE_WAIT sockets held by one process.
    pub close_wait: u64,
    /// A CLOSE_WAIT socket this old is a leak whatever the count (ms).
    pub close_wait_age_ms: u64,
    /// TIME_WAIT sockets on one listening port.
    pub server_time_wait: u64,
    /// Share of the ephemeral port range in TIME_WAIT to one destination:
    /// warning, critical.
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
    sysctl_findings(obs, &mut out);
    fin_wait2(obs, t, &mut out);
    failed_connects(obs, t, &mut out);
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
        .census
        .time_wait_to
        .iter()
        .map(|d| share(d.count, obs.port_range(d.netns)))
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
                "largest TIME_WAIT share of the ephemeral port range to one destination: {:.1}%",
                worst_share * 100.0
            ),
        ],
        advice: vec![],
        sysctls: vec![],
    }
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
        let holder = who(p.pid, p.comm.as_deref());
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
        if p.growth_per_min != 0.0 {
            evidence.push(format!(
                "growing {:+.1}/min (last minute)",
                p.growth_per_min
            ));
        }
        let pid_hint = p.pid.map(|p| format!(" -p {p}")).unwrap_or_default();
        out.push(Finding {
            id: "close_wait_leak",
            severity,
            title: format!(
                "CLOSE_WAIT leak: {holder} holds {} CLOSE_WAIT sockets to {peers}",
                p.count
            ),
            evidence,
            advice: vec![
                "The peer closed these connections and the application never called close(): a leak in its code, not a kernel or network setting.".into(),
                "Look for a connection or pool object not returned on an error path, or a read loop that ignores EOF; close the socket when read() returns 0.".into(),
                "No sysctl fixes CLOSE_WAIT (tcp_fin_timeout and keepalive do not apply); restarting the process only resets the pile.".into(),
                format!("See them: ss -tnp state close-wait | grep 'pid={}'", p.pid.map(|p| p.to_string()).unwrap_or_default()),
                format!("Follow one: tcptrace trace --state CLOSE_WAIT{pid_hint}"),
            ],
            sysctls: vec![],
        });
    }
}

fn server_time_wait(obs: &Observation, t: &Thresholds, out: &mut Vec<Finding>) {
    for l in &obs.census.time_wait_on_listener {
        if l.count < t.server_time_wait {
            continue;
        }
        let holder = who(l.pid, l.comm.as_deref());
        out.push(Finding {
            id: "server_time_wait",
            severity: Severity::Warning,
            title: format!(
                "Server-side TIME_WAIT: {} TIME_WAIT sockets on listening port {} ({holder}): the server closes first",
                l.count, l.port
            ),
            evidence: vec![
                format!("{} TIME_WAIT sockets with local port {} (a listening port of {holder})", l.count, l.port),
                format!("TIME_WAIT belongs to whichever side closes first; here it is the server, for {} clients", l.peers),
            ],
            advice: vec![
                "Keep connections alive instead of one request per connection, or let clients close first (HTTP: do not send `Connection: close`).".into(),
                "Behind a proxy (nginx): enable upstream keep-alive: `upstream backend { server ...; keepalive 32; }` with `proxy_http_version 1.1;` and `proxy_set_header Connection \"\";` in the location.".into(),
                "Server-side TIME_WAIT does not use ephemeral ports; it costs memory and timewait buckets (tcp_max_tw_buckets). Lowering tcp_fin_timeout does not shorten it (TIME_WAIT is fixed at 60 s).".into(),
            ],
            sysctls: vec![],
        });
    }
}

fn share(count: u64, (lo, hi): (u16, u16)) -> f64 {
    let size = u64::from(hi.saturating_sub(lo)) + 1;
    count as f64 / size as f64
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

fn port_pressure(obs: &Observation, t: &Thresholds, out: &mut Vec<Finding>) {
    let mut reported = Vec::new();
    for d in &obs.census.time_wait_to {
        let range = obs.port_range(d.netns);
        let s = share(d.count, range);
        let (failed, no_port) = failures_to(obs, d.daddr, d.dport);
        if s < t.port_share.0 && no_port == 0 {
            continue;
        }
        reported.push((d.daddr, d.dport));
        let severity = if s >= t.port_share.1 || no_port > 0 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let holder = who(d.pid, d.comm.as_deref());
        let dest = std::net::SocketAddr::new(d.daddr, d.dport);
        let size = u32::from(range.1.saturating_sub(range.0)) + 1;
        let mut evidence = vec![
            format!(
                "{} TIME_WAIT sockets to {dest}: {:.0}% of the {size} ephemeral ports ({}-{})",
                d.count,
                s * 100.0,
                range.0,
                range.1
            ),
            format!("opened by {holder}, which closes first"),
            "each lasts 60 s: past 100%, connect() to this destination fails with EADDRNOTAVAIL"
                .into(),
        ];
        if no_port > 0 {
            evidence.push(no_port_evidence(no_port, dest));
        }
        if failed > 0 {
            evidence.push(format!(
                "{failed} more connections to {dest} were refused or timed out during the window"
            ));
        }
        out.push(Finding {
            id: "client_port_pressure",
            severity,
            title: format!(
                "Ephemeral port pressure: {} TIME_WAIT to {dest} use {:.0}% of ip_local_port_range ({holder})",
                d.count,
                s * 100.0
            ),
            evidence,
            advice: port_advice(obs, &holder),
            sysctls: port_sysctls(obs),
        });
    }
    // Ports exhausted by something else than TIME_WAIT (connections held
    // open, a narrow range): the failures alone are the evidence.
    for f in &obs.failed_connects {
        if f.no_port == 0 || reported.contains(&(f.daddr, f.dport)) {
            continue;
        }
        let dest = std::net::SocketAddr::new(f.daddr, f.dport);
        let holder = who(f.pid, f.comm.as_deref());
        let (lo, hi) = obs.sysctls.port_range;
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
                    "few TIME_WAIT sockets to {dest}: the ports are held by open connections (ip_local_port_range {lo}-{hi} here; `ss -tn dst {dest}` counts them)"
                ),
            ],
            advice: port_advice(obs, &holder),
            sysctls: port_sysctls(obs),
        });
    }
}

fn no_port_evidence(n: u64, dest: std::net::SocketAddr) -> String {
    format!(
        "connect() to {dest} failed {n} times with EADDRNOTAVAIL during the window: no free local port (seen as SYN_SENT -> CLOSE before a port was chosen)"
    )
}

fn port_advice(obs: &Observation, holder: &str) -> Vec<String> {
    let tw_reuse = match (obs.sysctls.tw_reuse, obs.sysctls.timestamps) {
        (Some(1), Some(ts)) if ts != 0 => "tcp_tw_reuse is on".to_string(),
        (Some(r), _) => format!("tcp_tw_reuse is {r}"),
        (None, _) => "tcp_tw_reuse is absent".to_string(),
    };
    vec![
        format!("Reuse connections: a pool or keep-alive in {holder} removes the churn (the real fix)."),
        "Widen the ephemeral range if it was narrowed (the ports are per destination ip:port, so more ports is more headroom).".into(),
        "Reserve the host's own service ports from the ephemeral range with net.ipv4.ip_local_reserved_ports, so a wider range cannot take them.".into(),
        format!("net.ipv4.tcp_tw_reuse=1 lets connect() reuse a TIME_WAIT port to the same destination once it is 1 s old; it only helps outgoing connections and needs TCP timestamps on both ends ({tw_reuse}). It does nothing for a server's TIME_WAIT."),
    ]
}

fn port_sysctls(obs: &Observation) -> Vec<String> {
    vec![
        "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".into(),
        format!(
            "sysctl -w net.ipv4.ip_local_reserved_ports=\"{}\"   # your service ports",
            if obs.sysctls.reserved_ports.is_empty() {
                "8080,9090"
            } else {
                &obs.sysctls.reserved_ports
            }
        ),
        "sysctl -w net.ipv4.tcp_tw_reuse=1".into(),
    ]
}

fn time_wait_overflow(obs: &Observation, out: &mut Vec<Finding>) {
    if obs.tw_overflow_total == 0 {
        return;
    }
    let buckets = obs
        .sysctls
        .max_tw_buckets
        .map(|b| b.to_string())
        .unwrap_or_else(|| "?".into());
    let now = obs.tw_overflow_during > 0;
    out.push(Finding {
        id: "time_wait_overflow",
        severity: if now { Severity::Warning } else { Severity::Info },
        title: if now {
            format!("TIME_WAIT bucket overflow: {} sockets skipped TIME_WAIT during the window", obs.tw_overflow_during)
        } else {
            format!("TIME_WAIT bucket overflow happened earlier ({} times since boot)", obs.tw_overflow_total)
        },
        evidence: vec![
            format!("TCPTimeWaitOverflow: {} during the window, {} since boot", obs.tw_overflow_during, obs.tw_overflow_total),
            format!("net.ipv4.tcp_max_tw_buckets = {buckets}; TIME_WAIT now {}", obs.state("TIME_WAIT")),
            "past the limit, closing sockets skip TIME_WAIT (the kernel logs \"TCP: time wait bucket table overflow\")".into(),
        ],
        advice: vec![
            "Fix what makes the TIME_WAIT first (keep-alive, pooling, who closes first); raise tcp_max_tw_buckets only after, each bucket costs memory.".into(),
        ],
        sysctls: vec![format!("sysctl -w net.ipv4.tcp_max_tw_buckets={}", obs.sysctls.max_tw_buckets.map_or(524_288, |b| b.saturating_mul(2)))],
    });
}

fn sysctl_findings(obs: &Observation, out: &mut Vec<Finding>) {
    let s = &obs.sysctls;
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
        });
    }
}

fn fin_wait2(obs: &Observation, t: &Thresholds, out: &mut Vec<Finding>) {
    let n = obs.state("FIN_WAIT2");
    if n < t.fin_wait2 {
        return;
    }
    let timeout = obs
        .sysctls
        .fin_timeout
        .map_or("?".into(), |v| v.to_string());
    out.push(Finding {
        id: "fin_wait2_orphans",
        severity: Severity::Warning,
        title: format!("{n} sockets in FIN_WAIT2: peers are not closing their side"),
        evidence: vec![
            format!("FIN_WAIT2 {n} ({} of them orphaned: closed by the application)", obs.census.fin_wait2_orphans),
            format!("net.ipv4.tcp_fin_timeout = {timeout} s bounds the orphans"),
        ],
        advice: vec!["This host closed first and the peers never sent their FIN: look at the peers (a stuck or leaking client, a half-closed proxy). tcp_fin_timeout is the right knob for orphaned FIN_WAIT2, not for TIME_WAIT.".into()],
        sysctls: vec![],
    });
}

fn failed_connects(obs: &Observation, t: &Thresholds, out: &mut Vec<Finding>) {
    for f in &obs.failed_connects {
        if f.refused + f.timeout < t.failed_connects {
            continue;
        }
        let dest = std::net::SocketAddr::new(f.daddr, f.dport);
        let holder = who(f.pid, f.comm.as_deref());
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
