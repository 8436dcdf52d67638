//! The exposition without a kernel: values, caps, histogram buckets, and
//! the text a scraper sees (an insta snapshot of a small state).

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{
    engine::Engine,
    model::{Comm, Event, EventKind, Family, Owner},
    stats::{CloseWaitByProcess, HostFacts, TimeWaitByPeer},
};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const WALL: u64 = 1_790_000_000 * SEC;

fn host() -> HostFacts {
    HostFacts {
        port_range: (32768, 60999),
        ..HostFacts::default()
    }
}

/// A transition of socket `sk` owned by pid 100 (10.0.0.1:sport -> 10.0.0.2:5432).
fn tr(ts: u64, sk: u64, old: TcpState, new: TcpState, sport: u16) -> Event {
    Event {
        ts_ns: ts,
        kind: EventKind::Transition,
        sk,
        link: None,
        owner: Some(Owner {
            pid: 100,
            tid: 100,
            comm: Comm::from_name("api"),
            cgroup: 1,
            from_listener: false,
        }),
        netns: Some(1),
        family: Family::V4,
        saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        sport,
        daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        dport: 5432,
        old: Some(old),
        new,
        prev_ns: None,
        reason: None,
    }
}

/// Two connections that the peer closed and pid 100 never did (CLOSE_WAIT),
/// one that ended normally after 2 s.
fn engine() -> Engine {
    use TcpState::*;
    let mut e = Engine::new(1000);
    for (sk, sport) in [(1, 40001), (2, 40002), (3, 40003)] {
        e.apply(&tr(0, sk, Close, SynSent, sport));
        e.apply(&tr(MS, sk, SynSent, Established, sport));
    }
    for sk in [1, 2] {
        e.apply(&tr(SEC, sk, Established, CloseWait, 40000 + sk as u16));
    }
    e.apply(&tr(2 * SEC, 3, Established, FinWait1, 40003));
    e.apply(&tr(2 * SEC + MS, 3, FinWait1, FinWait2, 40003));
    e.apply(&tr(2 * SEC + 2 * MS, 3, FinWait2, Close, 40003));
    e
}

fn exposition(firing: Option<&[&'static str]>) -> Exposition {
    let mut e = engine();
    let snap = e.scrape_snapshot(61 * SEC, WALL, host());
    Exposition::new(&snap, &e.aggs, firing)
}

/// The value of the sample line `name{labels}` (or `name` alone).
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.rsplit_once(' ').is_some_and(|(k, _)| k == series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[test]
fn states_transitions_and_close_wait_holders_are_exposed() {
    let text = exposition(None).render();
    assert_eq!(
        sample(&text, r#"tcptrace_connections{state="CLOSE_WAIT"}"#),
        2.0
    );
    assert_eq!(
        sample(&text, r#"tcptrace_connections{state="ESTABLISHED"}"#),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tcptrace_transitions_total{old="SYN_SENT",new="ESTABLISHED"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tcptrace_close_wait_sockets{pid="100",comm="api"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tcptrace_close_wait_oldest_seconds{pid="100",comm="api"}"#
        ),
        60.0
    );
    assert_eq!(sample(&text, "tcptrace_ephemeral_ports"), 28232.0);
    assert_eq!(
        sample(
            &text,
            r#"tcptrace_state_duration_seconds_count{state="ESTABLISHED"}"#
        ),
        3.0
    );
    // No rules evaluated: no alert series at all.
    assert!(!text.contains("tcptrace_alerts_firing"));
    // Unlabelled series carry no empty braces; the text ends as OpenMetrics requires.
    assert!(!text.contains("{}"), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn histogram_buckets_place_each_duration_under_its_bound() {
    let text = exposition(None).render();
    let bucket = |le: &str| {
        sample(
            &text,
            &format!(r#"tcptrace_state_duration_seconds_bucket{{le="{le}",state="ESTABLISHED"}}"#),
        )
    };
    // ESTABLISHED lasted ~1 s twice (then CLOSE_WAIT) and ~2 s once.
    assert_eq!(bucket("0.5"), 0.0);
    assert_eq!(bucket("1.0"), 2.0);
    assert_eq!(bucket("2.5"), 3.0);
    assert_eq!(bucket("+Inf"), 3.0);
    let sum = sample(
        &text,
        r#"tcptrace_state_duration_seconds_sum{state="ESTABLISHED"}"#,
    );
    assert!((sum - 4.0).abs() < 0.05, "{sum}");
}

#[test]
fn alerts_firing_lists_every_rule_when_rules_run() {
    let text = exposition(Some(&[
        "close_wait_count",
        "close_wait_count",
        "lost_events",
    ]))
    .render();
    assert_eq!(
        sample(&text, r#"tcptrace_alerts_firing{rule="close_wait_count"}"#),
        2.0
    );
    assert_eq!(
        sample(&text, r#"tcptrace_alerts_firing{rule="lost_events"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"tcptrace_alerts_firing{rule="time_wait_ports"}"#),
        0.0
    );
}

#[test]
fn series_are_capped_and_the_rest_summed_into_other() {
    let mut e = Engine::new(1000);
    let mut snap = e.scrape_snapshot(0, WALL, host());
    for pid in 0..(MAX_PROCESS_SERIES as u32 + 10) {
        snap.close_wait_by_process.push(CloseWaitByProcess {
            pid: Some(1000 + pid),
            comm: Some("w".into()),
            count: 3,
            growth_per_min: 1.0,
            growth_per_min_5m: 1.0,
            growth_per_min_15m: 1.0,
            oldest_age_ms: 1000 * u64::from(pid),
            oldest_age_is_lower_bound: false,
            peers: vec![],
        });
    }
    for port in 0..(MAX_PEER_SERIES as u16 + 5) {
        snap.time_wait_by_peer.push(TimeWaitByPeer {
            daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
            dport: 8000 + port,
            count: 2,
            port_range_ratio: 0.0,
        });
    }
    let x = Exposition::new(&snap, &e.aggs, None);
    assert_eq!(x.close_wait.len(), MAX_PROCESS_SERIES + 1);
    let other = x.close_wait.last().unwrap();
    assert_eq!((other.pid.as_str(), other.count), ("other", 30));
    assert_eq!(other.oldest_secs, f64::from(MAX_PROCESS_SERIES as u32 + 9));
    assert_eq!(other.growth_per_min, [10.0; 3]);
    assert_eq!(x.time_wait_by_peer.len(), MAX_PEER_SERIES + 1);
    assert_eq!(
        x.time_wait_by_peer.last().unwrap(),
        &("other".to_string(), 10)
    );
    let total: u64 = x.time_wait_by_peer.iter().map(|p| p.1).sum();
    assert_eq!(total, 2 * (MAX_PEER_SERIES as u64 + 5));
}

#[test]
fn the_text_a_scraper_sees() {
    let mut x = exposition(Some(&["close_wait_count"]));
    // Only the histogram that has data, to keep the snapshot short.
    x.durations.retain(|d| d.2 == "ESTABLISHED");
    insta::assert_snapshot!(x.render());
}
