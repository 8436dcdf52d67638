//! What each network namespace's TCP settings are, and what they mean for
//! ephemeral ports and TIME_WAIT. The kernel keeps `ip_local_port_range`,
//! `ip_local_reserved_ports`, `tcp_tw_reuse` and `tcp_max_tw_buckets` per
//! network namespace, and the ports a client can use are per (namespace,
//! local address, remote address:port): a host with several addresses, a
//! container with its own namespace and a NAT'ed client each have their own
//! budget. Every number about port pressure (`doctor`, `top`, `stats`,
//! `report`, metrics, `watch`) is computed from these facts, per budget.
//!
//! Pure: the values are read at the edge (inside each namespace, with the
//! sock_diag snapshots) and travel with the snapshots, also in recordings,
//! so `doctor --from` judges a recording by the facts of the host it was
//! recorded on.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// TCP sysctls of one network namespace (`None`: absent on this kernel, or
/// not read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctls {
    /// `net.ipv4.tcp_tw_recycle` (removed in Linux 4.12).
    pub tw_recycle: Option<u32>,
    pub tw_reuse: Option<u32>,
    /// `net.ipv4.tcp_tw_reuse_delay` (ms; Linux 6.13+, 1000 before).
    #[serde(default)]
    pub tw_reuse_delay_ms: Option<u32>,
    pub timestamps: Option<u32>,
    pub fin_timeout: Option<u32>,
    pub syncookies: Option<u32>,
    pub max_tw_buckets: Option<u64>,
    pub port_range: (u16, u16),
    /// `net.core.somaxconn`: the cap on every listen() backlog (per
    /// namespace); the accept queue's limit is min(backlog, somaxconn).
    #[serde(default)]
    pub somaxconn: Option<u32>,
    /// `net.ipv4.tcp_max_syn_backlog`: the SYN queue's bound.
    #[serde(default)]
    pub max_syn_backlog: Option<u32>,
    /// `net.ipv4.ip_local_reserved_ports` as the kernel prints it
    /// ("8080,9000-9100").
    pub reserved_ports: String,
    /// `reserved_ports` parsed and merged, once (it is asked for every
    /// socket of every snapshot, and a recording's list has any length).
    #[serde(skip)]
    pub reserved_parsed: ReservedCache,
}

/// A parsed [`Sysctls::reserved_ports`], with the text it was parsed from
/// (the field is public: a changed list is parsed again). Derived data, so
/// equal to any other (two `Sysctls` compare by what was read).
#[derive(Debug, Default)]
pub struct ReservedCache(std::sync::Mutex<Option<(String, PortRanges)>>);

/// Sorted, merged, inclusive port ranges.
type PortRanges = std::sync::Arc<[(u16, u16)]>;

impl Clone for ReservedCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for ReservedCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ReservedCache {}

impl Sysctls {
    /// Linux's defaults.
    pub fn defaults() -> Self {
        Self {
            tw_recycle: None,
            tw_reuse: Some(2),
            tw_reuse_delay_ms: Some(1000),
            timestamps: Some(1),
            fin_timeout: Some(60),
            syncookies: Some(1),
            max_tw_buckets: Some(262_144),
            port_range: (32768, 60999),
            somaxconn: Some(4096),
            max_syn_backlog: None,
            reserved_ports: String::new(),
            reserved_parsed: ReservedCache::default(),
        }
    }

    /// The reserved ports as sorted, merged ranges (parsed once per list).
    fn reserved(&self) -> PortRanges {
        let mut cache = self
            .reserved_parsed
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cache {
            Some((text, ranges)) if *text == self.reserved_ports => ranges.clone(),
            _ => {
                let ranges: PortRanges = merged(parse_port_list(&self.reserved_ports)).into();
                *cache = Some((self.reserved_ports.clone(), ranges.clone()));
                ranges
            }
        }
    }

    /// Size of `ip_local_port_range` (inclusive).
    pub fn range_size(&self) -> u32 {
        let (lo, hi) = self.port_range;
        u32::from(hi.saturating_sub(lo)) + 1
    }

    /// Ports of the range connect() may pick: the range minus the reserved
    /// ports inside it (at least 1, so a share is always defined).
    pub fn usable_ports(&self) -> u32 {
        let (lo, hi) = self.port_range;
        let reserved: u32 = self
            .reserved()
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(lo), b.min(hi));
                if a > b { 0 } else { u32::from(b - a) + 1 }
            })
            .sum();
        self.range_size().saturating_sub(reserved).max(1)
    }

    /// Whether `port` is one connect() may pick.
    pub fn is_ephemeral(&self, port: u16) -> bool {
        let (lo, hi) = self.port_range;
        if !(lo..=hi).contains(&port) {
            return false;
        }
        if self.reserved_ports.is_empty() {
            return true;
        }
        // Sorted and disjoint: the last range starting at or below `port`.
        let reserved = self.reserved();
        let i = reserved.partition_point(|&(a, _)| a <= port);
        !(i > 0 && port <= reserved[i - 1].1)
    }

    /// What `tcp_tw_reuse` does for outgoing connections from `saddr` to
    /// `daddr` (`tcp_twsk_unique()`): 1 reuses everywhere, 2 only when one
    /// end is a loopback address; reuse needs TCP timestamps.
    pub fn reuse(&self, saddr: IpAddr, daddr: IpAddr) -> Reuse {
        let timestamps = self.timestamps != Some(0);
        match self.tw_reuse {
            Some(1) if timestamps => Reuse::Applies,
            Some(2) if timestamps && (is_loopback(saddr) || is_loopback(daddr)) => Reuse::Applies,
            Some(1 | 2) if !timestamps => Reuse::NoTimestamps,
            Some(2) => Reuse::LoopbackOnly,
            None => Reuse::Unknown,
            _ => Reuse::Off,
        }
    }

    /// How old a TIME_WAIT socket must be before connect() may reuse it.
    pub fn reuse_delay_ns(&self) -> u64 {
        u64::from(self.tw_reuse_delay_ms.unwrap_or(1000)) * 1_000_000
    }
}

/// Whether connect() may take over a TIME_WAIT socket's port (see
/// [`Sysctls::reuse`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reuse {
    /// TIME_WAIT sockets older than `tcp_tw_reuse_delay` do not hold their port.
    Applies,
    /// `tcp_tw_reuse=2` and neither address is loopback.
    LoopbackOnly,
    /// `tcp_tw_reuse=0`.
    Off,
    /// `tcp_tw_reuse` on, `tcp_timestamps=0`: reuse never happens.
    NoTimestamps,
    /// The sysctl was not read.
    Unknown,
}

impl Reuse {
    pub fn applies(self) -> bool {
        self == Reuse::Applies
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// `ip_local_reserved_ports` ("8080,9000-9100") as inclusive ranges;
/// malformed items are skipped.
pub fn parse_port_list(text: &str) -> Vec<(u16, u16)> {
    text.split(',')
        .filter_map(|item| {
            let item = item.trim();
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
            (a <= b).then_some((a, b))
        })
        .collect()
}

/// Ranges sorted and overlaps merged (so reserved ports count once).
fn merged(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// One network namespace's facts at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsFacts {
    pub sysctls: Sysctls,
    /// TcpExt `TCPTimeWaitOverflow` of this namespace (cumulative): closes
    /// that got no TIME_WAIT socket because `tcp_max_tw_buckets` was reached.
    pub tw_overflow: Option<u64>,
    /// TcpExt `TWRecycled`: TIME_WAIT sockets connect() took over
    /// (`tcp_tw_reuse`).
    #[serde(default)]
    pub tw_recycled: Option<u64>,
}

/// The facts of every namespace seen, by namespace inode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetFacts {
    /// The namespace tcptrace runs in (the host's, usually).
    pub host_netns: Option<u32>,
    pub namespaces: BTreeMap<u32, NetnsFacts>,
}

impl NetFacts {
    /// The facts of `netns`; the host namespace's when that one was not
    /// read (a namespace created since the last snapshot), else `None`.
    pub fn of(&self, netns: u32) -> Option<&NetnsFacts> {
        self.namespaces
            .get(&netns)
            .or_else(|| self.host_netns.and_then(|h| self.namespaces.get(&h)))
    }

    /// The host namespace's facts.
    pub fn host(&self) -> Option<&NetnsFacts> {
        self.host_netns.and_then(|h| self.namespaces.get(&h))
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn usable_ports_subtract_reserved_inside_the_range_once() {
        let mut s = Sysctls::defaults();
        s.port_range = (40000, 40099);
        assert_eq!(s.usable_ports(), 100);
        s.reserved_ports = "40000-40009,40005-40019,8080,40099".into();
        assert_eq!(s.usable_ports(), 100 - 20 - 1);
        assert!(!s.is_ephemeral(40005));
        assert!(s.is_ephemeral(40020));
        assert!(!s.is_ephemeral(39999));
        s.reserved_ports = "1-65535".into();
        assert_eq!(s.usable_ports(), 1, "never zero");
    }

    #[test]
    fn port_list_skips_malformed_items() {
        assert_eq!(
            parse_port_list("80, 90-95,x,9-1,70000,100-"),
            vec![(80, 80), (90, 95)]
        );
        assert!(parse_port_list("").is_empty());
    }

    #[test]
    fn reuse_follows_the_kernel_rules() {
        let mut s = Sysctls::defaults();
        let lo = v4(127, 0, 0, 1);
        let far = v4(10, 0, 0, 1);
        assert_eq!(s.reuse(lo, far), Reuse::Applies, "2: a loopback end");
        assert_eq!(s.reuse(far, lo), Reuse::Applies);
        assert_eq!(s.reuse(far, far), Reuse::LoopbackOnly);
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        assert_eq!(s.reuse(mapped, far), Reuse::Applies);
        assert_eq!(
            s.reuse(IpAddr::V6(Ipv6Addr::LOCALHOST), far),
            Reuse::Applies
        );
        s.tw_reuse = Some(1);
        assert_eq!(s.reuse(far, far), Reuse::Applies);
        s.timestamps = Some(0);
        assert_eq!(s.reuse(far, far), Reuse::NoTimestamps);
        s.tw_reuse = Some(0);
        s.timestamps = Some(1);
        assert_eq!(s.reuse(lo, lo), Reuse::Off);
        s.tw_reuse = None;
        assert_eq!(s.reuse(lo, lo), Reuse::Unknown);
        assert_eq!(Sysctls::defaults().reuse_delay_ns(), 1_000_000_000);
    }

    #[test]
    fn facts_fall_back_to_the_host_namespace() {
        let mut f = NetFacts {
            host_netns: Some(1),
            ..NetFacts::default()
        };
        assert!(f.of(1).is_none());
        f.namespaces.insert(1, NetnsFacts::default());
        let mut other = NetnsFacts::default();
        other.sysctls.port_range = (1, 2);
        f.namespaces.insert(2, other.clone());
        assert_eq!(f.of(2), Some(&other));
        assert_eq!(f.of(3), f.host());
    }
}
