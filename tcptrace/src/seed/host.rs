//! Host facts the statistics need beside the socket table: the ephemeral port
//! range (to judge port exhaustion) and kernel TCP counters such as
//! `TCPTimeWaitOverflow` (TIME_WAIT sockets the kernel refused to keep).
//! Parsing is pure and separate from the reads. Both files are per network
//! namespace; the reads use the calling thread's namespace.

use std::fs;

use anyhow::{Context, Result, anyhow, bail};
use tcptrace_core::netfacts::{NetnsFacts, Sysctls};

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const NETSTAT: &str = "/proc/thread-self/net/netstat";

/// The ephemeral (local) port range, inclusive: `(low, high)`.
/// A one-line `/proc/sys` value ("?" when unreadable): hostname, kernel release.
pub fn proc_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The cgroup v2 path of process `pid` (the `0::PATH` line of
/// `/proc/PID/cgroup`), if the process still exists.
pub fn cgroup_path(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_cgroup_v2(&text)
}

/// One live pid per distinct cgroup v2 path, looking at no more than
/// `limit` entries of /proc: what the workload filters check at start
/// ("is anything running in it?") without resolving every process.
pub fn one_pid_per_cgroup(limit: usize) -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for entry in dir.flatten().take(limit) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(path) = cgroup_path(pid) else {
            continue;
        };
        if seen.insert(path.clone()) {
            out.push((pid, path));
        }
    }
    out
}

/// The path of the `0::` (unified hierarchy) line.
pub fn parse_cgroup_v2(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
}

pub fn hostname() -> String {
    proc_line("/proc/sys/kernel/hostname")
}

pub fn kernel_release() -> String {
    proc_line("/proc/sys/kernel/osrelease")
}

pub fn ephemeral_port_range() -> Result<(u16, u16)> {
    let text = fs::read_to_string(PORT_RANGE)
        .with_context(|| format!("reading {PORT_RANGE}: mount /proc"))?;
    parse_port_range(&text).with_context(|| format!("parsing {PORT_RANGE}"))
}

/// A counter from `/proc/net/netstat`. `name` is `Section:Field`
/// (`"TcpExt:TCPTimeWaitOverflow"`) or a bare field name, which matches the
/// first section that has it. `None` when the kernel does not report it.
pub fn netstat_counter(name: &str) -> Result<Option<u64>> {
    let text =
        fs::read_to_string(NETSTAT).with_context(|| format!("reading {NETSTAT}: mount /proc"))?;
    parse_netstat_counter(&text, name).with_context(|| format!("parsing {NETSTAT}"))
}

/// `TcpExt: TCPTimeWaitOverflow`: TIME_WAIT sockets not created because
/// `net.ipv4.tcp_max_tw_buckets` was reached.
pub fn tw_overflow() -> Result<u64> {
    netstat_counter("TcpExt:TCPTimeWaitOverflow")?.ok_or_else(|| {
        anyhow!("TcpExt TCPTimeWaitOverflow missing from {NETSTAT}: needs Linux >= 2.6.29")
    })
}

/// The TCP sysctls under `dir` (`/proc/sys/net/ipv4` of the reading
/// thread's namespace).
pub fn read_sysctls(dir: &std::path::Path) -> Sysctls {
    let text = |name: &str| fs::read_to_string(dir.join(name)).ok();
    let num = |name: &str| text(name).and_then(|t| t.trim().parse::<u64>().ok());
    let small = |name: &str| num(name).and_then(|v| u32::try_from(v).ok());
    let defaults = Sysctls::defaults();
    Sysctls {
        tw_recycle: small("tcp_tw_recycle"),
        tw_reuse: small("tcp_tw_reuse"),
        tw_reuse_delay_ms: small("tcp_tw_reuse_delay"),
        timestamps: small("tcp_timestamps"),
        fin_timeout: small("tcp_fin_timeout"),
        syncookies: small("tcp_syncookies"),
        max_tw_buckets: num("tcp_max_tw_buckets"),
        max_syn_backlog: small("tcp_max_syn_backlog"),
        // net.core sits beside net.ipv4 (per namespace as well).
        somaxconn: dir.parent().and_then(|net| {
            fs::read_to_string(net.join("core/somaxconn"))
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
        }),
        port_range: text("ip_local_port_range")
            .and_then(|t| parse_port_range(&t).ok())
            .unwrap_or(defaults.port_range),
        reserved_ports: text("ip_local_reserved_ports")
            .map(|t| t.trim().to_string())
            .unwrap_or_default(),
        ..defaults
    }
}

/// The calling thread's namespace's TCP facts: sysctls and the TIME_WAIT
/// counters of `/proc/thread-self/net/netstat`.
pub fn netns_facts() -> NetnsFacts {
    let netstat = fs::read_to_string(NETSTAT).ok();
    let counter = |name: &str| {
        netstat
            .as_deref()
            .and_then(|t| parse_netstat_counter(t, name).ok().flatten())
    };
    NetnsFacts {
        sysctls: read_sysctls(std::path::Path::new("/proc/sys/net/ipv4")),
        tw_overflow: counter("TcpExt:TCPTimeWaitOverflow"),
        tw_recycled: counter("TcpExt:TWRecycled"),
    }
}

/// Parses `ip_local_port_range` ("32768\t60999\n").
pub fn parse_port_range(text: &str) -> Result<(u16, u16)> {
    let mut it = text.split_whitespace();
    let (Some(lo), Some(hi), None) = (it.next(), it.next(), it.next()) else {
        bail!("expected two port numbers, got {text:?}");
    };
    let lo: u16 = lo.parse().with_context(|| format!("bad low port {lo:?}"))?;
    let hi: u16 = hi
        .parse()
        .with_context(|| format!("bad high port {hi:?}"))?;
    if lo > hi {
        bail!("low port {lo} above high port {hi}");
    }
    Ok((lo, hi))
}

/// Finds `name` (see [`netstat_counter`]) in `/proc/net/netstat` text: pairs
/// of lines, `Section: Name1 Name2 ...` then `Section: v1 v2 ...`.
pub fn parse_netstat_counter(text: &str, name: &str) -> Result<Option<u64>> {
    let (want_section, field) = match name.split_once(':') {
        Some((s, f)) => (Some(s.trim()), f.trim()),
        None => (None, name.trim()),
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(header) = lines.next() {
        let Some(values) = lines.next() else {
            bail!("header line without a value line: {header:?}");
        };
        let (section, names) = split_section(header)?;
        let (vsection, vals) = split_section(values)?;
        if section != vsection {
            bail!("section {section:?} followed by {vsection:?}");
        }
        if want_section.is_some_and(|w| w != section) {
            continue;
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let vals: Vec<&str> = vals.split_whitespace().collect();
        if names.len() != vals.len() {
            bail!(
                "section {section}: {} names but {} values",
                names.len(),
                vals.len()
            );
        }
        if let Some(i) = names.iter().position(|n| *n == field) {
            let v = vals[i]
                .parse()
                .with_context(|| format!("{section} {field}: bad value {:?}", vals[i]))?;
            return Ok(Some(v));
        }
    }
    Ok(None)
}

fn split_section(line: &str) -> Result<(&str, &str)> {
    line.split_once(':')
        .map(|(s, rest)| (s.trim(), rest))
        .ok_or_else(|| anyhow!("line without a `Section:` prefix: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// somaxconn comes from net.core beside net.ipv4, and equals what the
    /// kernel says here; tcp_max_syn_backlog from net.ipv4.
    #[test]
    fn somaxconn_and_max_syn_backlog_are_read() {
        let s = read_sysctls(std::path::Path::new("/proc/sys/net/ipv4"));
        let want = |p: &str| {
            fs::read_to_string(p)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
        };
        assert!(s.somaxconn.is_some());
        assert_eq!(s.somaxconn, want("/proc/sys/net/core/somaxconn"));
        assert_eq!(
            s.max_syn_backlog,
            want("/proc/sys/net/ipv4/tcp_max_syn_backlog")
        );
        // A directory without them: unknown, not a default.
        let dir = std::env::temp_dir().join(format!("tcptrace-sysctls-{}", std::process::id()));
        fs::create_dir_all(dir.join("ipv4")).unwrap();
        let empty = read_sysctls(&dir.join("ipv4"));
        assert_eq!((empty.somaxconn, empty.max_syn_backlog), (None, None));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_unified_cgroup_path_is_read_from_proc_pid_cgroup() {
        let v2 = "0::/system.slice/api.service\n";
        assert_eq!(
            parse_cgroup_v2(v2).as_deref(),
            Some("/system.slice/api.service")
        );
        let hybrid = "12:memory:/user.slice\n1:name=systemd:/user.slice/x\n0::/user.slice/x\n";
        assert_eq!(parse_cgroup_v2(hybrid).as_deref(), Some("/user.slice/x"));
        assert_eq!(parse_cgroup_v2("12:memory:/a\n"), None);
        // This very process has one.
        assert!(cgroup_path(std::process::id()).is_some());
    }

    const SAMPLE: &str = "\
TcpExt: SyncookiesSent TW TCPTimeWaitOverflow TCPOrigDataSent
TcpExt: 0 1234 7 99
IpExt: InNoRoutes InOctets
IpExt: 0 184467440737095516
MPTcpExt: MPCapableSYNRX TW
MPTcpExt: 3 5
";

    #[test]
    fn finds_counters_by_section_and_field() {
        let get = |n| parse_netstat_counter(SAMPLE, n).unwrap();
        assert_eq!(get("TcpExt:TCPTimeWaitOverflow"), Some(7));
        assert_eq!(get("TcpExt:TW"), Some(1234));
        assert_eq!(get("MPTcpExt:TW"), Some(5));
        assert_eq!(get("IpExt:InOctets"), Some(184_467_440_737_095_516));
        assert_eq!(get("TCPOrigDataSent"), Some(99));
        assert_eq!(get("TW"), Some(1234), "bare name: first section wins");
    }

    #[test]
    fn missing_counter_or_section_is_none() {
        assert_eq!(parse_netstat_counter(SAMPLE, "TcpExt:Nope").unwrap(), None);
        assert_eq!(parse_netstat_counter(SAMPLE, "Nope:TW").unwrap(), None);
        assert_eq!(parse_netstat_counter("", "TcpExt:TW").unwrap(), None);
    }

    #[test]
    fn malformed_netstat_is_an_error() {
        for bad in [
            "TcpExt: A B\n",
            "TcpExt: A B\nTcpExt: 1\n",
            "TcpExt: A\nIpExt: 1\n",
            "TcpExt: A\nTcpExt: x\n",
            "no colon here\nTcpExt: 1\n",
        ] {
            assert!(parse_netstat_counter(bad, "TcpExt:A").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_port_range() {
        assert_eq!(parse_port_range("32768\t60999\n").unwrap(), (32768, 60999));
        assert_eq!(parse_port_range(" 1024 65535").unwrap(), (1024, 65535));
        for bad in ["", "1024", "1 2 3", "x 2", "2000 1000", "1 70000"] {
            assert!(parse_port_range(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn real_port_range_matches_the_file() {
        let text = fs::read_to_string(PORT_RANGE).unwrap();
        let want: Vec<u16> = text
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        let (lo, hi) = ephemeral_port_range().unwrap();
        assert_eq!(vec![lo, hi], want);
    }

    #[test]
    fn this_namespace_facts_read() {
        let f = netns_facts();
        assert_eq!(f.sysctls.port_range, ephemeral_port_range().unwrap());
        assert!(f.sysctls.tw_reuse.is_some());
        assert!(f.tw_overflow.is_some() && f.tw_recycled.is_some());
    }

    #[test]
    fn real_tw_overflow_reads() {
        let direct = netstat_counter("TcpExt:TCPTimeWaitOverflow").unwrap();
        assert!(direct.is_some());
        tw_overflow().unwrap();
    }
}
