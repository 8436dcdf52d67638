//! One test per finding, from constructed observations.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

const HOST_NS: u32 = 4026531840;

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
        census: Census::default(),
        failed_connects: vec![],
        tw_overflow_during: 0,
        tw_overflow_total: 0,
        sysctls: Sysctls::defaults(),
        port_ranges: BTreeMap::new(),
        host_netns: Some(HOST_NS),
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
        oldest_age_ms,
        oldest_age_is_lower_bound: false,
        peers: vec!["10.0.0.5:5432".into()],
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
fn server_time_wait_points_at_the_listener_and_keepalive() {
    let mut obs = quiet();
    obs.census.time_wait_on_listener = vec![ListenerTimeWait {
        netns: HOST_NS,
        port: 8080,
        count: 5000,
        peers: 3,
        pid: Some(77),
        comm: Some("nginx".into()),
    }];
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["server_time_wait"]);
    assert!(f[0].title.contains("port 8080") && f[0].title.contains("nginx (pid 77)"));
    assert!(f[0].advice.iter().any(|a| a.contains("keepalive 32")));
}

#[test]
fn port_pressure_uses_the_namespace_range_and_explains_tw_reuse() {
    let mut obs = quiet();
    let ns = 4026532000;
    obs.port_ranges.insert(ns, (40000, 40999));
    obs.census.time_wait_to = vec![DestTimeWait {
        netns: ns,
        daddr: ip(9),
        dport: 80,
        count: 600,
        pid: Some(5),
        comm: Some("prober".into()),
    }];
    obs.failed_connects = vec![FailedConnects {
        daddr: ip(9),
        dport: 80,
        refused: 0,
        timeout: 0,
        no_port: 0,
        pid: None,
        comm: None,
    }];
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["client_port_pressure"]);
    let p = &f[0];
    assert_eq!(p.severity, Severity::Critical, "600 of 1000 ports");
    assert!(p.title.contains("10.0.0.9:80") && p.title.contains("60%"));
    assert!(p.title.contains("prober (pid 5)"));
    assert!(
        p.advice
            .iter()
            .any(|a| a.contains("only helps outgoing") && a.contains("timestamps"))
    );
    assert!(p.sysctls.iter().any(|s| s.contains("ip_local_port_range")));
    assert!(
        p.sysctls
            .iter()
            .any(|s| s.contains("ip_local_reserved_ports"))
    );
    // The same count against the host's default range is below 20%.
    obs.port_ranges.clear();
    assert_eq!(ids(&diagnose(&obs, &Thresholds::default())), ["healthy"]);
    // ...unless connect() already failed for want of a port.
    obs.failed_connects[0].no_port = 3;
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["client_port_pressure"]);
    assert_eq!(f[0].severity, Severity::Critical);
    assert!(
        f[0].evidence
            .iter()
            .any(|e| e.contains("failed 3 times with EADDRNOTAVAIL")),
        "{:?}",
        f[0].evidence
    );
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

#[test]
fn time_wait_overflow_now_is_a_warning_earlier_is_info() {
    let mut obs = quiet();
    obs.tw_overflow_total = 12;
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["healthy", "time_wait_overflow"]);
    assert_eq!(f[1].severity, Severity::Info);
    obs.tw_overflow_during = 3;
    let f = diagnose(&obs, &Thresholds::default());
    assert_eq!(ids(&f), ["time_wait_overflow"]);
    assert!(f[0].advice[0].contains("only after"));
    assert_eq!(
        f[0].sysctls,
        ["sysctl -w net.ipv4.tcp_max_tw_buckets=524288"]
    );
}

#[test]
fn risky_sysctls_and_myths() {
    let mut obs = quiet();
    obs.sysctls.tw_recycle = Some(1);
    obs.sysctls.tw_reuse = Some(1);
    obs.sysctls.timestamps = Some(0);
    obs.sysctls.fin_timeout = Some(10);
    obs.sysctls.syncookies = Some(0);
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
    obs.census.fin_wait2_orphans = 450;
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
    for key in ["id", "severity", "title", "evidence", "advice", "sysctls"] {
        assert!(f.get(key).is_some(), "{key} in {f}");
    }
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["id"], "close_wait_leak");
}
