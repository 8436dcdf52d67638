//! One test per finding, from constructed observations.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{
    engine::Engine,
    fixtures::{Conn, SEC},
    netfacts::NetnsFacts,
    stats::{ClosedFirst, HostFacts},
};

const HOST_NS: u32 = 4026531840;

/// Facts of the host namespace (and `others`), with Linux's defaults.
fn facts(others: &[(u32, Sysctls)]) -> NetFacts {
    let mut f = NetFacts {
        host_netns: Some(HOST_NS),
        ..NetFacts::default()
    };
    f.namespaces.insert(
        HOST_NS,
        NetnsFacts {
            sysctls: Sysctls::defaults(),
            tw_overflow: Some(0),
            tw_recycled: Some(0),
        },
    );
    for (ns, s) in others {
        f.namespaces.insert(
            *ns,
            NetnsFacts {
                sysctls: s.clone(),
                tw_overflow: Some(0),
                tw_recycled: Some(0),
            },
        );
    }
    f
}

/// What `doctor` sees of an engine fed with `events` under `facts`.
fn observe(e: &mut Engine, facts: NetFacts, now: u64) -> Observation {
    e.facts = facts.clone();
    let snap = e.snapshot(now, now, HostFacts::default());
    Observation {
        services: snap.time_wait_by_service.clone(),
        budgets: snap.port_budgets.clone(),
        states: snap.states.clone(),
        ended: snap.ended.clone(),
        facts_start: Some(facts.clone()),
        facts_end: Some(facts),
        ..quiet()
    }
}

fn quiet() -> Observation {
    Observation {
        window_s: 10.0,
        transitions: 1000,
        tracked: 50,
        lost: 0,
        states: [
            ("ESTABLISHED", 40),
            ("TIME_WAIT", 10),
            ("CLOSE_WAIT", 0),
            ("FIN_WAIT2", 0),
        ]
        .into_iter()
        .collect(),
        close_wait: vec![],
        services: vec![],
        budgets: vec![],
        fin_wait2_orphans: 0,
        failed_connects: vec![],
        no_port_by_budget: BTreeMap::new(),
        ended: BTreeMap::new(),
        tw_reuses: vec![],
        facts_start: Some(facts(&[])),
        facts_end: Some(facts(&[])),
        workloads: BTreeMap::new(),
        attribution: None,
        close_wait_by_stack: vec![],
        stacks: None,
        listeners: vec![],
        listen_drops: None,
    }
}

fn ids(f: &[Finding]) -> Vec<&'static str> {
    f.iter().map(|f| f.id).collect()
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn leak(count: u64, oldest_age_ms: u64, growth: f64) -> CloseWaitByProcess {
    CloseWaitByProcess {
        pid: Some(4242),
        comm: Some("api".into()),
        count,
        growth_per_min: growth,
        growth_per_min_5m: growth,
        growth_per_min_15m: growth,
        growth_delta: (growth) as i64,
        growth_span_ms: 60_000,
        growth_delta_5m: (growth * 5.0) as i64,
        growth_span_5m_ms: 300_000,
        growth_delta_15m: (growth * 15.0) as i64,
        growth_span_15m_ms: 900_000,
        oldest_age_ms,
        oldest_age_is_lower_bound: false,
        peers: vec!["10.0.0.5:5432".into()],
        ..Default::default()
    }
}

#[test]
fn healthy_says_so_with_the_numbers() {
    let f = diagnose(&quiet(), &Thresholds::default());
    assert_eq!(ids(&f), ["healthy"]);
    assert_eq!(f[0].severity, Severity::Ok);
    assert!(f[0].evidence.iter().any(|e| e.contains("1000 transitions")));
    assert!(f[0].evidence.iter().any(|e| e.contains("TIME_WAIT 10")));
    assert_eq!(exit_code(&f), 0);
}

#[test]
fn close_wait_leak_names_process_peer_age_and_growth() {
    let mut obs = quiet();
    obs.close_wait = vec![leak(25, 9_000, 150.0), leak(3, 500, 0.0)];
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["close_wait_leak"]);
    let l = &f[0];
    assert_eq!(l.severity, Severity::Warning);
    assert!(l.title.contains("api (pid 4242)"), "{}", l.title);
    assert!(l.title.contains("10.0.0.5:5432"));
    assert!(l.evidence.iter().any(|e| e.contains("+150.0/min")));
    assert!(l.advice[0].contains("never called close()"));
    assert_eq!(exit_code(&f), 1);
    // Few but old: still a leak; old and growing: critical.
    obs.close_wait = vec![leak(2, 120_000, 1.0)];
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(f[0].severity, Severity::Critical);
    // Few and young: healthy.
    obs.close_wait = vec![leak(2, 500, 0.0)];
    assert_eq!(ids(&diagnose(&obs, &Thresholds::default())), ["healthy"]);
}

#[test]
fn server_time_wait_points_at_the_service_and_keepalive() {
    let mut obs = quiet();
    obs.services = vec![TimeWaitByService {
        netns: HOST_NS,
        saddr: ip(1),
        sport: 8080,
        count: 5000,
        rate_per_sec: 83.3,
        pid: Some(77),
        comm: Some("nginx".into()),
        clients: 3,
        closed_first: ClosedFirst {
            local: 9800,
            remote: 200,
            both: 0,
        },
    }];
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["server_time_wait"]);
    assert!(f[0].title.contains("10.0.0.1:8080") && f[0].title.contains("nginx (pid 77)"));
    assert!(f[0].evidence[0].contains("83.3 more per second"));
    assert!(
        f[0].evidence[2].contains("server closed first on 9800 (98%)"),
        "{:?}",
        f[0].evidence
    );
    assert!(f[0].advice.iter().any(|a| a.contains("keepalive 32")));
}

/// `n` outgoing connections closed first by this host, from `from` to
/// 10.0.0.9:80 in namespace `netns`, a millisecond apart from `t0`.
fn churn(e: &mut Engine, netns: u32, from: IpAddr, n: u64, t0: u64, first_sk: u64) {
    for i in 0..n {
        let mut c = Conn::new(
            first_sk + i,
            (from, 40_000 + (i % 20_000) as u16),
            (ip(9), 80),
            None,
        );
        c.netns = netns;
        for ev in c.client_closes_first(t0 + i * 1_000_000) {
            e.apply(&ev);
        }
    }
}

#[test]
fn many_source_addresses_each_have_their_own_budget() {
    // 98,000 TIME_WAIT to one destination, from 4,900 addresses: 20 each.
    let mut e = Engine::new(200_000);
    for a in 0..4_900u64 {
        let from = IpAddr::V4(Ipv4Addr::new(127, 10, (a / 250) as u8, (a % 250) as u8 + 1));
        churn(&mut e, HOST_NS, from, 20, SEC, 0x1_0000_0000 + a * 100);
    }
    let obs = observe(&mut e, facts(&[]), 10 * SEC);
    assert_eq!(obs.state("TIME_WAIT"), 98_000);
    assert_eq!(obs.budgets.len(), 4_900);
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["healthy"], "{f:#?}");
}

#[test]
fn one_address_with_a_narrow_range_is_critical_without_reuse() {
    let ns = 4026532000;
    let narrow = Sysctls {
        port_range: (40000, 40099),
        ..Sysctls::defaults()
    };
    let mut e = Engine::new(10_000);
    churn(&mut e, ns, ip(2), 70, SEC, 0x1_0000_0000);
    let obs = observe(&mut e, facts(&[(ns, narrow.clone())]), 5 * SEC);
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["client_port_pressure"], "{f:#?}");
    let p = &f[0];
    assert_eq!(p.severity, Severity::Critical, "70 of 100 ports");
    assert!(
        p.title.contains("10.0.0.9:80") && p.title.contains("70%"),
        "{}",
        p.title
    );
    assert!(
        p.title
            .contains("from 10.0.0.2 in network namespace 4026532000")
    );
    assert!(
        p.evidence[0].contains("of the 100 ports"),
        "{:?}",
        p.evidence
    );
    assert!(
        p.evidence
            .iter()
            .any(|e| e.contains("loopback only") && e.contains("EADDRNOTAVAIL")),
        "tcp_tw_reuse=2 does not apply to 10.0.0.2: {:?}",
        p.evidence
    );
    assert!(p.sysctls.iter().any(|s| s.contains("ip_local_port_range")));
    // Reserved ports shrink the budget.
    let reserved = Sysctls {
        reserved_ports: "40000-40049".into(),
        ..narrow.clone()
    };
    let obs = observe(&mut e, facts(&[(ns, reserved)]), 5 * SEC);
    // (TIME_WAIT on reserved ports came from bind(), not connect(): not counted.)
    assert_eq!((obs.budgets[0].ports, obs.budgets[0].time_wait), (50, 20));
    // The host's default range: 70 of 28,232 is nothing.
    let obs = observe(&mut e, facts(&[]), 5 * SEC);
    assert_eq!(ids(&diagnose(&obs, &Thresholds::default())), ["healthy"]);
}

#[test]
fn tw_reuse_makes_time_wait_harmless_until_connects_fail() {
    let ns = 4026532001;
    let reuse = Sysctls {
        port_range: (40000, 40199),
        tw_reuse: Some(1),
        ..Sysctls::defaults()
    };
    let mut e = Engine::new(10_000);
    // 170 TIME_WAIT over 200 ports, all older than a second at 5 s.
    churn(&mut e, ns, ip(2), 170, SEC, 0x1_0000_0000);
    let mut obs = observe(&mut e, facts(&[(ns, reuse)]), 5 * SEC);
    assert_eq!(obs.budgets[0].reusable, 170);
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["healthy", "client_port_pressure"], "{f:#?}");
    let p = &f[1];
    assert_eq!(p.severity, Severity::Info);
    assert!(p.title.contains("85%") && p.title.contains("no connect failed"));
    assert!(
        p.evidence
            .iter()
            .any(|e| e.contains("tcp_tw_reuse=1 here") && e.contains("1000 ms")),
        "{:?}",
        p.evidence
    );
    // Connects that fail from another source address leave this budget
    // alone; failing from this one make it critical.
    obs.failed_connects = vec![FailedConnects {
        daddr: ip(9),
        dport: 80,
        refused: 0,
        timeout: 0,
        no_port: 4,
        pid: None,
        comm: None,
    }];
    let b = &obs.budgets[0];
    let (ns, saddr, daddr, dport) = (b.netns, b.saddr, b.daddr, b.dport);
    obs.no_port_by_budget = [((ns, ip(77), daddr, dport), 4)].into_iter().collect();
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(
        f.iter()
            .filter(|f| f.severity == Severity::Critical && f.title.contains("unavailable"))
            .count(),
        0,
        "{f:#?}"
    );
    obs.no_port_by_budget = [((ns, saddr, daddr, dport), 4)].into_iter().collect();
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["client_port_pressure"]);
    assert_eq!(f[0].severity, Severity::Critical);
    assert!(
        f[0].evidence
            .iter()
            .any(|e| e.contains("failed 4 times with EADDRNOTAVAIL")),
        "{:?}",
        f[0].evidence
    );
    // Young TIME_WAIT cannot be reused yet: at 1.1 s, most are under 1 s old.
    let obs = observe(
        &mut e,
        facts(&[(
            ns,
            Sysctls {
                port_range: (40000, 40199),
                tw_reuse: Some(1),
                ..Sysctls::defaults()
            },
        )]),
        SEC + 100_000_000,
    );
    assert!(obs.budgets[0].reusable < 170);
}

#[test]
fn eaddrnotavail_without_time_wait_is_port_exhaustion() {
    let mut obs = quiet();
    obs.failed_connects = vec![FailedConnects {
        daddr: ip(7),
        dport: 5432,
        refused: 0,
        timeout: 0,
        no_port: 12,
        pid: Some(41),
        comm: Some("app".into()),
    }];
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["client_port_pressure"], "not a dead backend");
    assert_eq!(f[0].severity, Severity::Critical);
    assert!(f[0].title.contains("10.0.0.7:5432") && f[0].title.contains("app (pid 41)"));
    assert!(f[0].title.contains("12 times with EADDRNOTAVAIL"));
}

fn set_overflow(f: &mut Option<NetFacts>, ns: u32, n: u64) {
    let f = f.as_mut().unwrap();
    f.namespaces.entry(ns).or_default().tw_overflow = Some(n);
}

#[test]
fn time_wait_overflow_now_is_a_warning_earlier_is_info() {
    let mut obs = quiet();
    set_overflow(&mut obs.facts_start, HOST_NS, 12);
    set_overflow(&mut obs.facts_end, HOST_NS, 12);
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["healthy", "time_wait_overflow"]);
    assert_eq!(f[1].severity, Severity::Info);
    set_overflow(&mut obs.facts_end, HOST_NS, 15);
    obs.ended.insert("time_wait_overflow", 3);
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["time_wait_overflow"]);
    assert!(
        f[0].title.contains("3 sockets skipped TIME_WAIT") && f[0].title.contains("host namespace")
    );
    assert!(
        f[0].evidence
            .iter()
            .any(|e| e.contains("saw 3 connections close without"))
    );
    assert!(f[0].advice[0].contains("only after"));
    assert_eq!(
        f[0].sysctls,
        ["sysctl -w net.ipv4.tcp_max_tw_buckets=524288"]
    );
}

#[test]
fn reuse_and_purge_are_told_with_the_kernel_cross_check() {
    let mut obs = quiet();
    obs.ended.insert("time_wait_reused", 1204);
    obs.ended.insert("time_wait_purged", 3);
    obs.tw_reuses = vec![TwReuses {
        netns: HOST_NS,
        daddr: ip(9),
        dport: 80,
        reused: 1200,
        pid: Some(5),
        comm: Some("prober".into()),
    }];
    obs.facts_end
        .as_mut()
        .unwrap()
        .namespaces
        .get_mut(&HOST_NS)
        .unwrap()
        .tw_recycled = Some(1204);
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["healthy", "time_wait_reuse", "time_wait_purged"]);
    let r = &f[1];
    assert!(
        r.title.starts_with("tcp_tw_reuse reused 1204 TIME_WAIT sockets in 10 s: it is working for outgoing connections to 10.0.0.9:80 (1200 by prober (pid 5))"),
        "{}",
        r.title
    );
    assert!(
        r.evidence[1].contains("counted 1204 (TcpExt TWRecycled"),
        "{:?}",
        r.evidence
    );
    assert!(f[2].title.starts_with("3 TIME_WAIT sockets were purged"));
    // With tcp_tw_reuse=0 where they happened, only connects from fixed
    // ports take TIME_WAIT over: the sysctl is not credited.
    let ns = 4026532077;
    obs.facts_end.as_mut().unwrap().namespaces.insert(
        ns,
        NetnsFacts {
            sysctls: Sysctls {
                tw_reuse: Some(0),
                ..Sysctls::defaults()
            },
            tw_overflow: Some(0),
            tw_recycled: Some(0),
        },
    );
    obs.tw_reuses[0].netns = ns;
    let f = diagnose(&obs, &Thresholds::default());
    assert!(
        f[1].title
            .starts_with("connect() from fixed ports took over 1204 TIME_WAIT sockets in 10 s (tcp_tw_reuse is off)"),
        "{}",
        f[1].title
    );
}

#[test]
fn overflow_is_told_per_namespace() {
    let mut obs = quiet();
    let ns = 4026532002;
    set_overflow(&mut obs.facts_start, ns, 0);
    set_overflow(&mut obs.facts_end, ns, 15);
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["time_wait_overflow"]);
    assert!(
        f[0].title.contains("network namespace 4026532002") && f[0].title.contains("15 sockets")
    );
}

#[test]
fn without_facts_says_what_it_cannot_judge() {
    let mut obs = quiet();
    obs.facts_start = None;
    obs.facts_end = None;
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["healthy", "facts_missing"]);
    assert!(
        f[1].evidence
            .iter()
            .any(|e| e.contains("tcp_tw_recycle") && e.contains("TCPTimeWaitOverflow"))
    );
}

#[test]
fn risky_sysctls_and_myths() {
    let mut obs = quiet();
    let s = &mut obs
        .facts_end
        .as_mut()
        .unwrap()
        .namespaces
        .get_mut(&HOST_NS)
        .unwrap()
        .sysctls;
    s.tw_recycle = Some(1);
    s.tw_reuse = Some(1);
    s.timestamps = Some(0);
    s.fin_timeout = Some(10);
    s.syncookies = Some(0);
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(
        ids(&f),
        [
            "tcp_tw_recycle",
            "tw_reuse_without_timestamps",
            "fin_timeout_myth",
            "syncookies_myth"
        ]
    );
    assert_eq!(f[0].sysctls, ["sysctl -w net.ipv4.tcp_tw_recycle=0"]);
    assert!(f[0].advice[0].contains("NAT"));
    assert!(f[2].advice[0].contains("FIN_WAIT2"));
    // Absent tcp_tw_recycle (Linux >= 4.12) and defaults: nothing.
    assert_eq!(
        ids(&diagnose(&quiet(), &Thresholds::default())),
        ["healthy"]
    );
}

#[test]
fn fin_wait2_pile_and_dead_backends() {
    let mut obs = quiet();
    obs.states.insert("FIN_WAIT2", 500);
    obs.fin_wait2_orphans = 450;
    obs.failed_connects = vec![FailedConnects {
        daddr: ip(7),
        dport: 5432,
        refused: 9,
        timeout: 0,
        no_port: 0,
        pid: Some(8),
        comm: Some("worker".into()),
    }];
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["fin_wait2_orphans", "failed_connects"]);
    assert!(f[0].evidence[0].contains("450 of them orphaned"));
    assert!(f[1].title.contains("10.0.0.7:5432") && f[1].title.contains("worker (pid 8)"));
    assert!(f[1].evidence[1].contains("nothing listens"));
}

#[test]
fn lost_events_are_a_warning() {
    let mut obs = quiet();
    obs.lost = 7;
    assert_eq!(
        ids(&diagnose(&obs, &Thresholds::default())),
        ["lost_events"]
    );
}

#[test]
fn json_fields_are_the_contract() {
    let mut obs = quiet();
    obs.close_wait = vec![leak(25, 9_000, 0.0)];
    let v = serde_json::to_value(diagnose(&obs, &Thresholds::default())).unwrap();
    let f = &v[0];
    for key in [
        "id", "severity", "title", "evidence", "advice", "sysctls", "workload",
    ] {
        assert!(f.get(key).is_some(), "{key} in {f}");
    }
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["id"], "close_wait_leak");
}

#[test]
fn a_close_wait_leak_names_its_workload_and_follows_it_by_unit() {
    let mut p = leak(500, 600_000, 2.0);
    p.workload = crate::stats::workloads::WorkloadRef {
        workload: Some("payments.service".into()),
        cgroup_path: Some("/system.slice/payments.service".into()),
        unit: Some("payments.service".into()),
        ..Default::default()
    };
    let mut out = Vec::new();
    close_wait_leaks(
        &Observation {
            close_wait: vec![p],
            ..quiet()
        },
        &Thresholds::default(),
        &mut out,
    );
    let f = &out[0];
    assert!(f.title.contains("in payments.service"), "{}", f.title);
    assert!(
        f.evidence
            .iter()
            .any(|e| e == "cgroup /system.slice/payments.service"),
        "{:?}",
        f.evidence
    );
    assert!(
        f.advice
            .iter()
            .any(|a| a.ends_with("--state CLOSE_WAIT --unit payments.service")),
        "{:?}",
        f.advice
    );
}

fn payments_ref() -> crate::stats::workloads::WorkloadRef {
    crate::stats::workloads::WorkloadRef {
        workload: Some("payments.service".into()),
        workload_kind: Some("unit"),
        cgroup_path: Some("/system.slice/payments.service".into()),
        unit: Some("payments.service".into()),
        ..Default::default()
    }
}

#[test]
fn a_close_wait_leak_carries_the_workload_object() {
    let mut p = leak(500, 600_000, 2.0);
    p.workload = payments_ref();
    let mut obs = quiet();
    obs.close_wait = vec![p];
    let findings = diagnose(&obs, &Thresholds::default());
    let v = serde_json::to_value(&findings).unwrap();
    let leak = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "close_wait_leak")
        .unwrap();
    assert_eq!(
        leak["workload"],
        serde_json::json!({
            "workload": "payments.service",
            "workload_kind": "unit",
            "unit": "payments.service",
            "container": null,
            "pod": null,
            "namespace": null,
        })
    );
    // A finding about no process has none.
    let healthy = serde_json::to_value(diagnose(&quiet(), &Thresholds::default())).unwrap();
    assert!(healthy[0]["workload"].is_null(), "{healthy}");
}

#[test]
fn a_time_wait_finding_names_the_owners_workload_when_known() {
    let mut obs = quiet();
    obs.workloads.insert(
        7,
        crate::stats::workloads::WorkloadRef {
            workload: Some("shop/api-1/nginx".into()),
            workload_kind: Some("container"),
            container: Some("nginx".into()),
            pod: Some("api-1".into()),
            namespace: Some("shop".into()),
            ..Default::default()
        },
    );
    obs.services = vec![TimeWaitByService {
        netns: HOST_NS,
        saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        sport: 8080,
        count: 500,
        rate_per_sec: 8.0,
        pid: Some(7),
        comm: Some("nginx".into()),
        clients: 3,
        closed_first: ClosedFirst::default(),
    }];
    let mut out = Vec::new();
    server_time_wait(&obs, &Thresholds::default(), &mut out);
    let w = out[0].workload.as_ref().expect("the owner's workload");
    assert_eq!(w.workload, "shop/api-1/nginx");
    assert_eq!(w.namespace.as_deref(), Some("shop"));
    assert_eq!(w.workload_kind.as_deref(), Some("container"));
    // An owner not known: no workload.
    obs.services[0].pid = Some(8);
    let mut out = Vec::new();
    server_time_wait(&obs, &Thresholds::default(), &mut out);
    assert_eq!(out[0].workload, None);
}

fn attribution(method: &str) -> Attribution {
    Attribution {
        method: method.into(),
        cgroup2: Some("/sys/fs/cgroup/unified".into()),
        resolved: 12,
        ..Attribution::default()
    }
}

fn attribution_finding(a: Attribution) -> Option<Finding> {
    let mut obs = quiet();
    obs.attribution = Some(a);
    diagnose(&obs, &Thresholds::default())
        .into_iter()
        .find(|f| f.id == "workload_attribution")
}

#[test]
fn workload_attribution_says_why_names_degrade() {
    // Whole: nothing to say (and nothing for a recording).
    assert_eq!(attribution_finding(attribution("handle")), None);
    assert!(
        diagnose(&quiet(), &Thresholds::default())
            .iter()
            .all(|f| f.id != "workload_attribution")
    );
    // No cgroup2 mount.
    let f = attribution_finding(Attribution {
        method: "unavailable".into(),
        cgroup2: None,
        unavailable: Some("no cgroup2 mount in /proc/self/mountinfo".into()),
        ..Attribution::default()
    })
    .unwrap();
    assert_eq!(f.severity, Severity::Info);
    assert!(f.title.contains("no cgroup v2 hierarchy"), "{}", f.title);
    assert!(f.evidence[0].contains("no cgroup2 mount in /proc/self/mountinfo"));
    // Handles denied: the walk.
    let f = attribution_finding(attribution("walk")).unwrap();
    assert!(
        f.title.contains("open_by_handle_at was refused"),
        "{}",
        f.title
    );
    assert!(f.advice.iter().any(|a| a.contains("CAP_DAC_READ_SEARCH")));
    assert!(
        f.evidence
            .iter()
            .any(|e| e.contains("/sys/fs/cgroup/unified")),
        "{:?}",
        f.evidence
    );
    // Runtime directories unreadable.
    let mut a = attribution("handle");
    a.read_errors.insert(("docker".into(), "io".into()), 3);
    let f = attribution_finding(a).unwrap();
    assert!(
        f.title.contains("3 runtime files could not be read"),
        "{}",
        f.title
    );
    assert!(f.evidence.iter().any(|e| e.contains("docker io 3")));
    // Many ids unresolved; a few are not worth a finding.
    let mut a = attribution("handle");
    a.unresolved = 40;
    let f = attribution_finding(a).unwrap();
    assert!(f.title.starts_with("40 cgroup lookups"), "{}", f.title);
    let mut a = attribution("handle");
    a.unresolved = 2;
    assert_eq!(attribution_finding(a), None);
    // It never makes the exit code fail.
    let mut obs = quiet();
    obs.attribution = Some(attribution("walk"));
    assert_eq!(exit_code(&diagnose(&obs, &Thresholds::default())), 0);
}

/// A `close_wait_by_stack` row of the `leak()` process (pid 4242).
fn path_row(
    stack_id: Option<u32>,
    count: u64,
    path: &str,
    quality: &'static str,
) -> CloseWaitByStack {
    let top = path.split(" ← ").next().map(str::to_string);
    CloseWaitByStack {
        pid: Some(4242),
        comm: Some("api".into()),
        stack_id,
        count,
        process_count: 460,
        oldest_age_ms: 60_000,
        oldest_age_is_lower_bound: false,
        peers: vec!["10.0.0.5:5432".into()],
        code_path: path.into(),
        top_frame: top.filter(|_| !matches!(quality, "pending" | "none")),
        stack_quality: quality,
        frames: vec![],
    }
}

fn with_paths(rows: Vec<CloseWaitByStack>) -> Observation {
    Observation {
        close_wait: vec![leak(460, 600_000, 2.0)],
        close_wait_by_stack: rows,
        stacks: Some(StacksStatus::default()),
        ..quiet()
    }
}

#[test]
fn a_close_wait_leak_names_the_code_paths_that_opened_it() {
    let obs = with_paths(vec![
        path_row(None, 20, "(no stack)", "none"),
        path_row(Some(9), 8, "sync_prices ← main", "complete"),
        path_row(
            Some(7),
            412,
            "checkout_reserve_items ← handle_order ← main ← …",
            "complete",
        ),
        path_row(Some(3), 12, "refresh ← main", "complete"),
        path_row(Some(5), 8, "warm_up ← main", "complete"),
    ]);
    let f = diagnose(&obs, &Thresholds::default());
    let l = &f[0];
    assert_eq!(l.id, "close_wait_leak");
    let opened: Vec<&str> = l
        .evidence
        .iter()
        .filter(|e| e.starts_with("opened at "))
        .map(String::as_str)
        .collect();
    assert_eq!(
        opened,
        [
            "opened at checkout_reserve_items ← handle_order ← main ← …: 412 of 460",
            "opened at refresh ← main: 12 of 460",
            "opened at warm_up ← main: 8 of 460",
        ]
    );
    assert!(
        l.evidence
            .iter()
            .any(|e| e == "8 of 460 opened at 1 other code paths"),
        "{:?}",
        l.evidence
    );
    assert!(
        l.evidence.iter().any(
            |e| e == "20 of 460 have no stack (opened before tracing, or the kernel missed it)"
        ),
        "{:?}",
        l.evidence
    );
    // Complete: no quality note.
    assert!(!l.evidence.iter().any(|e| e.starts_with("stack of")));
    assert!(
        l.advice[1].starts_with("Look at checkout_reserve_items (where most were opened)"),
        "{:?}",
        l.advice
    );
    assert!(!l.advice.iter().any(|a| a.contains("--stacks")));
}

#[test]
fn a_leading_path_of_lesser_quality_says_what_it_misses() {
    for (quality, says) in [
        (
            "cut",
            "frames stop here: the code below has no frame pointers",
        ),
        ("no_frame_pointers", "one frame only"),
        ("truncated", "outermost callers are cut"),
    ] {
        let obs = with_paths(vec![path_row(Some(7), 400, "checkout ← main", quality)]);
        let l = &diagnose(&obs, &Thresholds::default())[0];
        let note = l
            .evidence
            .iter()
            .find(|e| e.starts_with(&format!("stack of the leading path ({quality}): ")))
            .unwrap_or_else(|| panic!("no note for {quality}: {:?}", l.evidence));
        assert!(note.contains(says), "{note}");
    }
    // Not named yet: the path shows as such, no function to point at.
    let obs = with_paths(vec![path_row(Some(7), 400, "(not named yet)", "pending")]);
    let l = &diagnose(&obs, &Thresholds::default())[0];
    assert!(
        l.evidence
            .iter()
            .any(|e| e == "opened at (not named yet): 400 of 460")
    );
    assert!(l.advice[1].starts_with("Look for a connection"));
}

#[test]
fn without_stacks_only_the_advice_to_get_them_is_new() {
    let mut obs = quiet();
    obs.close_wait = vec![leak(460, 600_000, 2.0)];
    let l = &diagnose(&obs, &Thresholds::default())[0];
    assert!(
        !l.evidence
            .iter()
            .any(|e| e.contains("opened at") || e.contains("no stack"))
    );
    assert!(l.advice[1].starts_with("Look for a connection"));
    assert_eq!(
        l.advice.last().map(String::as_str),
        Some(
            "Name the code that opened them: tcptrace doctor --stacks (or stats --stacks) while the leak grows"
        )
    );
    // With stacks on but none for this process: its no-stack row only.
    let obs = with_paths(vec![path_row(None, 460, "(no stack)", "none")]);
    let l = &diagnose(&obs, &Thresholds::default())[0];
    assert!(
        l.evidence
            .iter()
            .any(|e| e.starts_with("460 of 460 have no stack"))
    );
    assert!(!l.advice.iter().any(|a| a.contains("--stacks")));
}

/// Listener findings, from an engine fed listener samples and kernel drops
/// as a live source or a recording feeds it.
mod listeners {
    use super::{HOST_NS, facts, quiet};
    use crate::{
        doctor::{Observation, Severity, Sysctls, Thresholds, diagnose, exit_code},
        engine::Engine,
        stats::listener_fixture as fx,
    };

    fn observe(e: &mut Engine, sysctls: Option<Sysctls>) -> Observation {
        let snap = fx::snapshot(e);
        let mut f = facts(&[]);
        if let Some(s) = sysctls {
            f.namespaces.get_mut(&HOST_NS).unwrap().sysctls = s;
        }
        Observation {
            window_s: 2.0,
            listeners: snap.listeners.clone().unwrap_or_default(),
            listen_drops: snap.listen_drops.clone(),
            facts_start: Some(f.clone()),
            facts_end: Some(f),
            ..quiet()
        }
    }

    #[test]
    fn a_full_accept_queue_is_critical_and_names_listener_owner_and_limit() {
        assert_eq!(fx::NETNS, HOST_NS);
        let obs = observe(&mut fx::overflowing(), None);
        let findings = diagnose(&obs, &Thresholds::default());
        let f = findings
            .iter()
            .find(|f| f.id == "listen_drops")
            .expect("a listen_drops finding");
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(
            f.title,
            "SYNs to 127.0.0.1:8080 dropped: accept queue full (limit 128 = min(backlog, net.core.somaxconn)); slowacceptd is not accepting fast enough"
        );
        let evidence = f.evidence.join("\n");
        assert!(
            evidence.contains("76 connection attempts dropped in 2 s (76.0/s"),
            "{evidence}"
        );
        assert!(evidence.contains("accept queue full 76"), "{evidence}");
        assert!(
            evidence.contains("accept queue 129/128 now, peak 129"),
            "{evidence}"
        );
        assert!(evidence.contains("slowacceptd (pid 122)"), "{evidence}");
        assert!(evidence.contains("ListenOverflows +76"), "{evidence}");
        assert!(
            evidence
                .contains("net.core.somaxconn = 4096: the limit is the backlog given to listen()"),
            "{evidence}"
        );
        let advice = f.advice.join("\n");
        assert!(advice.contains("acceptor threads"), "{advice}");
        // The limit (128) is the backlog, somaxconn is 4096: a larger
        // backlog is the fix, somaxconn is no part of it.
        assert!(
            advice.contains("the limit is 128, so 129 connections wait at most (the kernel queues one past the limit)"),
            "{advice}"
        );
        assert!(
            advice.contains("up to listen(fd, 4096) (nginx `listen ... backlog=4096`) takes effect with no sysctl change"),
            "{advice}"
        );
        assert!(!advice.contains("Raise net.core.somaxconn"), "{advice}");
        assert!(!advice.contains("queue holds 128"), "{advice}");
        assert!(f.sysctls.is_empty(), "{:?}", f.sysctls);
        // Only the dropping listener has a finding, and only one: its full
        // queue is not told twice; exit 1.
        assert_eq!(
            findings.iter().filter(|f| f.id == "listen_drops").count(),
            1
        );
        assert!(
            !findings.iter().any(|f| f.id == "accept_queue_full"),
            "{findings:#?}"
        );
        assert_eq!(exit_code(&findings), 1);
        // The SYNs to the closed port are an info finding.
        let n = findings.iter().find(|f| f.id == "no_listener").unwrap();
        assert_eq!(n.severity, Severity::Info);
        assert_eq!(
            n.title,
            "2 SYNs to 1 address and port with nothing listening (answered with a reset)"
        );
        assert_eq!(
            n.evidence,
            vec!["127.0.0.1:7777 (the host namespace): 2 SYNs"]
        );
        // JSON: the documented fields.
        let json = serde_json::to_value(f).unwrap();
        assert_eq!(json["id"], "listen_drops");
        assert_eq!(json["severity"], "critical");
    }

    #[test]
    fn paws_drops_name_timestamps_and_tw_recycle_where_it_exists() {
        let obs = observe(&mut fx::paws(), None);
        let findings = diagnose(&obs, &Thresholds::default());
        let f = findings.iter().find(|f| f.id == "listen_drops").unwrap();
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(
            f.title,
            "SYNs to 127.0.0.1:8443 rejected by the TCP timestamp (PAWS) check at TIME_WAIT sockets: clients with unrelated timestamp clocks, typically behind NAT"
        );
        let advice = f.advice.join("\n");
        assert!(advice.contains("NAT"), "{advice}");
        assert!(
            advice.contains("tcp_tw_recycle does not exist on this kernel"),
            "{advice}"
        );
        assert!(
            advice.contains("Do not turn net.ipv4.tcp_timestamps off"),
            "{advice}"
        );
        assert!(f.sysctls.is_empty());
        // The namespace's PAWS counters are evidence; the listener explains
        // them, so no namespace-level PAWS finding.
        assert!(
            f.evidence
                .iter()
                .any(|e| e == "the host namespace counters during the window: ListenOverflows +0, ListenDrops +0, TCPReqQFullDrop +0, PAWSPassive +10"),
            "{:?}",
            f.evidence
        );
        assert!(!findings.iter().any(|f| f.id == "paws_rejects"));

        // A kernel that still has tcp_tw_recycle, on.
        let old = Sysctls {
            tw_recycle: Some(1),
            ..Sysctls::defaults()
        };
        let obs = observe(&mut fx::paws(), Some(old));
        let findings = diagnose(&obs, &Thresholds::default());
        let f = findings.iter().find(|f| f.id == "listen_drops").unwrap();
        assert!(
            f.advice
                .iter()
                .any(|a| a.contains("tcp_tw_recycle = 1 on this kernel")),
            "{:?}",
            f.advice
        );
        assert_eq!(
            f.sysctls,
            vec!["sysctl -w net.ipv4.tcp_tw_recycle=0".to_string()]
        );
        assert_eq!(exit_code(&findings), 1);
    }

    #[test]
    fn a_full_syn_queue_advises_max_syn_backlog_and_syncookies() {
        use crate::listeners::DropCounters;
        let mut e = Engine::new(16);
        let c = |n: u64| DropCounters {
            listen_overflows: Some(0),
            listen_drops: Some(n),
            req_qfull_drop: Some(n),
            ..Default::default()
        };
        fx::feed(
            &mut e,
            vec![
                fx::listeners(fx::S, vec![fx::sample(8080, "web", 0, 4096, 0)], c(0)),
                fx::listeners(2 * fx::S, vec![fx::sample(8080, "web", 0, 4096, 50)], c(50)),
            ],
        );
        let obs = observe(
            &mut e,
            Some(Sysctls {
                syncookies: Some(0),
                max_syn_backlog: Some(512),
                ..Sysctls::defaults()
            }),
        );
        let findings = diagnose(&obs, &Thresholds::default());
        let f = findings.iter().find(|f| f.id == "listen_drops").unwrap();
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(
            f.title,
            "SYNs to 127.0.0.1:8080 dropped: SYN queue full (net.ipv4.tcp_max_syn_backlog 512, SYN cookies off); web gets more handshakes than its SYN queue holds"
        );
        assert!(f.advice.join(" ").contains("tcp_max_syn_backlog"));
        assert_eq!(
            f.sysctls,
            vec![
                "sysctl -w net.ipv4.tcp_max_syn_backlog=8192".to_string(),
                "sysctl -w net.ipv4.tcp_syncookies=1".to_string()
            ]
        );
    }

    #[test]
    fn listeners_without_drops_are_healthy() {
        let mut e = Engine::new(16);
        fx::feed(
            &mut e,
            vec![
                fx::listeners(
                    fx::S,
                    vec![fx::sample(9090, "fastd", 0, 128, 0)],
                    fx::netstat(0, 0),
                ),
                fx::listeners(
                    2 * fx::S,
                    vec![fx::sample(9090, "fastd", 3, 128, 0)],
                    fx::netstat(0, 0),
                ),
            ],
        );
        let obs = observe(&mut e, None);
        let findings = diagnose(&obs, &Thresholds::default());
        assert_eq!(findings[0].id, "healthy");
        assert!(
            findings[0]
                .evidence
                .iter()
                .any(|e| e == "1 listeners, no connection attempt dropped at any; fullest accept queue 127.0.0.1:9090 (peak 3/128)"),
            "{:?}",
            findings[0].evidence
        );
        assert_eq!(exit_code(&findings), 0);
    }

    #[test]
    fn clients_giving_up_on_a_dropping_listener_are_not_a_dead_backend() {
        let mut obs = observe(&mut fx::overflowing(), None);
        obs.failed_connects = vec![crate::doctor::FailedConnects {
            daddr: fx::lo(),
            dport: 8080,
            refused: 40,
            timeout: 0,
            no_port: 0,
            pid: Some(7),
            comm: Some("client".into()),
        }];
        let findings = diagnose(&obs, &Thresholds::default());
        let f = findings
            .iter()
            .find(|f| f.id == "failed_connects")
            .expect("the clients' failures are still told");
        assert!(
            f.title
                .contains("the listener 127.0.0.1:8080 drops SYNs (accept queue full)"),
            "{}",
            f.title
        );
        assert!(!f.title.contains("Dead backend"), "{}", f.title);
        assert!(
            !f.evidence.join(" ").contains("nothing listens"),
            "{:?}",
            f.evidence
        );
        // A remote host on the same port is not that listener.
        obs.failed_connects[0].daddr = "203.0.113.5".parse().unwrap();
        let remote = diagnose(&obs, &Thresholds::default());
        let f = remote.iter().find(|f| f.id == "failed_connects").unwrap();
        assert!(f.title.starts_with("Dead backend?"), "{}", f.title);
    }

    #[test]
    fn a_listener_in_another_namespace_gets_nsenter_commands() {
        let mut e = Engine::new(16);
        let mut s1 = fx::sample(8080, "slowacceptd", 2, 1, 0);
        let mut s2 = fx::sample(8080, "slowacceptd", 2, 1, 40);
        s1.netns = Some(777);
        s2.netns = Some(777);
        let ns = |n: u64| crate::record::Record::Listeners {
            ts_ns: 0,
            listeners: vec![],
            counters: vec![crate::listeners::NetnsDropCounters {
                netns: 777,
                counters: fx::netstat(n, 0),
            }],
        };
        let (mut r1, mut r2) = (ns(0), ns(40));
        if let crate::record::Record::Listeners {
            ts_ns, listeners, ..
        } = &mut r1
        {
            *ts_ns = fx::S;
            listeners.push(s1);
        }
        if let crate::record::Record::Listeners {
            ts_ns, listeners, ..
        } = &mut r2
        {
            *ts_ns = 2 * fx::S;
            listeners.push(s2);
        }
        fx::feed(&mut e, vec![r1, r2]);
        let mut obs = observe(&mut e, None);
        // Namespace 777 caps every backlog at 1: the limit is somaxconn.
        let tiny = Sysctls {
            somaxconn: Some(1),
            ..Sysctls::defaults()
        };
        for f in [&mut obs.facts_start, &mut obs.facts_end] {
            *f = Some(facts(&[(777, tiny.clone())]));
        }
        let findings = diagnose(&obs, &Thresholds::default());
        let f = findings.iter().find(|f| f.id == "listen_drops").unwrap();
        assert!(
            f.title
                .starts_with("SYNs to 127.0.0.1:8080 dropped: accept queue full (limit 1 =")
                && f.title.ends_with("(in network namespace 777)"),
            "{}",
            f.title
        );
        assert!(
            f.evidence
                .iter()
                .any(|e| e == "net.core.somaxconn = 1: the limit is somaxconn (the backlog asked for is at least that)"),
            "{:?}",
            f.evidence
        );
        assert!(
            f.advice
                .iter()
                .any(|a| a.starts_with("Raise net.core.somaxconn (now 1, per network namespace)")),
            "{:?}",
            f.advice
        );
        assert_eq!(
            f.sysctls,
            vec!["nsenter --net=/proc/122/ns/net sysctl -w net.core.somaxconn=4096".to_string()]
        );
    }

    /// `slowacceptd` on 127.0.0.1:8080 with its queue at `queue`/`limit` in
    /// both samples and 40 drops counted before the first: none during the
    /// window.
    fn stuck(queues: [u32; 2], limit: u32, paws_timewait: [u64; 2]) -> Engine {
        use crate::listeners::DropCounters;
        let mut e = Engine::new(16);
        let c = |tw: u64| DropCounters {
            paws_timewait: Some(tw),
            tsecr_rejected: Some(0),
            paws_old_ack: Some(0),
            ..fx::netstat(500, 0)
        };
        fx::feed(
            &mut e,
            vec![
                fx::listeners(
                    fx::S,
                    vec![fx::sample(8080, "slowacceptd", queues[0], limit, 40)],
                    c(paws_timewait[0]),
                ),
                fx::listeners(
                    2 * fx::S,
                    vec![fx::sample(8080, "slowacceptd", queues[1], limit, 40)],
                    c(paws_timewait[1]),
                ),
            ],
        );
        e
    }

    #[test]
    fn a_full_accept_queue_without_drops_in_the_window_is_a_warning() {
        let obs = observe(&mut stuck([2, 2], 1, [0, 0]), None);
        assert_eq!(obs.listeners[0].drops_total, 0);
        assert_eq!(obs.listeners[0].drops_before_tracing, 40);
        let findings = diagnose(&obs, &Thresholds::default());
        assert_ne!(findings[0].id, "healthy", "{findings:#?}");
        let f = findings
            .iter()
            .find(|f| f.id == "accept_queue_full")
            .expect("an accept_queue_full finding");
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(
            f.title,
            "Accept queue of 127.0.0.1:8080 full (2/1, limit 1 = min(backlog, net.core.somaxconn)): slowacceptd is not accepting; it dropped 40 connection attempts before tcptrace started"
        );
        let evidence = f.evidence.join("\n");
        assert!(
            evidence.contains(
                "accept queue 2/1 now, peak 2: the kernel queues 2 at most, then drops SYNs"
            ),
            "{evidence}"
        );
        assert!(
            evidence.contains("dropped 40 connection attempts before tcptrace started"),
            "{evidence}"
        );
        assert!(evidence.contains("slowacceptd (pid 122)"), "{evidence}");
        assert!(
            evidence
                .contains("net.core.somaxconn = 4096: the limit is the backlog given to listen()"),
            "{evidence}"
        );
        let advice = f.advice.join("\n");
        assert!(advice.contains("acceptor threads"), "{advice}");
        assert!(
            advice.contains("the limit is 1, so 2 connections wait at most"),
            "{advice}"
        );
        assert!(!advice.contains("Raise net.core.somaxconn"), "{advice}");
        assert!(f.sysctls.is_empty(), "{:?}", f.sysctls);
        assert_eq!(exit_code(&findings), 1);
        // JSON: the id and severity.
        let json = serde_json::to_value(f).unwrap();
        assert_eq!(json["id"], "accept_queue_full");
        assert_eq!(json["severity"], "warning");
    }

    #[test]
    fn a_queue_full_only_at_its_peak_is_told_so_and_somaxconn_advised_when_it_is_the_limit() {
        let obs = observe(
            &mut stuck([128, 0], 128, [0, 0]),
            Some(Sysctls {
                somaxconn: Some(128),
                ..Sysctls::defaults()
            }),
        );
        let findings = diagnose(&obs, &Thresholds::default());
        let f = findings
            .iter()
            .find(|f| f.id == "accept_queue_full")
            .expect("an accept_queue_full finding");
        assert!(
            f.title.starts_with(
                "Accept queue of 127.0.0.1:8080 was full during the window (peak 128/128,"
            ),
            "{}",
            f.title
        );
        let advice = f.advice.join("\n");
        assert!(
            advice.contains("the limit is 128, so 129 connections wait at most"),
            "{advice}"
        );
        assert!(
            advice.contains("Raise net.core.somaxconn (now 128, per network namespace)"),
            "{advice}"
        );
        assert_eq!(
            f.sysctls,
            vec!["sysctl -w net.core.somaxconn=4096".to_string()]
        );
        // A queue never full: nothing.
        let obs = observe(&mut stuck([3, 0], 128, [0, 0]), None);
        let findings = diagnose(&obs, &Thresholds::default());
        assert_eq!(findings[0].id, "healthy");
        assert_eq!(exit_code(&findings), 0);
    }

    #[test]
    fn paws_timewait_with_no_listener_to_blame_is_a_namespace_finding() {
        let obs = observe(&mut stuck([0, 0], 128, [100, 125]), None);
        let findings = diagnose(&obs, &Thresholds::default());
        let f = findings
            .iter()
            .find(|f| f.id == "paws_rejects")
            .expect("a paws_rejects finding");
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(
            f.title,
            "25 SYNs rejected by the TCP timestamp (PAWS) check in the host namespace (PAWSTimewait +25): clients with unrelated timestamp clocks, typically behind NAT"
        );
        assert_eq!(
            f.evidence[0],
            "the host namespace counters during the window: ListenOverflows +0, ListenDrops +0, TCPReqQFullDrop +0, PAWSTimewait +25, PAWSPassive +0, TSEcrRejected +0, PAWSOldAck +0"
        );
        let advice = f.advice.join("\n");
        assert!(advice.contains("NAT"), "{advice}");
        assert!(
            advice.contains("tcp_tw_recycle does not exist on this kernel"),
            "{advice}"
        );
        assert!(f.sysctls.is_empty());
        assert_eq!(exit_code(&findings), 1);
        // tcp_tw_recycle on: named, with the command.
        let obs = observe(
            &mut stuck([0, 0], 128, [100, 125]),
            Some(Sysctls {
                tw_recycle: Some(1),
                ..Sysctls::defaults()
            }),
        );
        let findings = diagnose(&obs, &Thresholds::default());
        let f = findings.iter().find(|f| f.id == "paws_rejects").unwrap();
        assert_eq!(
            f.sysctls,
            vec!["sysctl -w net.ipv4.tcp_tw_recycle=0".to_string()]
        );
        // Unmoved: nothing.
        let obs = observe(&mut stuck([0, 0], 128, [100, 100]), None);
        let findings = diagnose(&obs, &Thresholds::default());
        assert!(!findings.iter().any(|f| f.id == "paws_rejects"));
    }
}
