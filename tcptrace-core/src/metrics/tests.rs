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
        stack: None,
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
            r#"tcptrace_close_wait_sockets{pid="100",comm="api",workload="unknown"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tcptrace_close_wait_oldest_seconds{pid="100",comm="api",workload="unknown"}"#
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
            ..Default::default()
        });
    }
    for port in 0..(MAX_PEER_SERIES as u16 + 5) {
        snap.time_wait_by_peer.push(TimeWaitByPeer {
            daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
            dport: 8000 + port,
            count: 2,
            port_range_ratio: 0.0,
            ports: 28_232,
            sources: 1,
            rate_per_sec: 0.0,
            pid: None,
            comm: None,
            closed_first: Default::default(),
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
fn time_wait_series_per_service_and_per_budget() {
    use crate::fixtures::{Conn, ip, owner};
    let mut e = Engine::new(1000);
    let nginx = Some(owner(77, "nginx"));
    // A server that closes first: 3 clients' connections to 10.0.0.1:8080.
    for i in 0..3u64 {
        let c = Conn::new(i, (ip(1), 8080), (ip(20 + i as u8), 50_000), nginx);
        for ev in c.server_closes_first(SEC + i * MS) {
            e.apply(&ev);
        }
    }
    // A client that closes first: 2 connections to 10.0.0.9:80.
    for i in 0..2u64 {
        let c = Conn::new(10 + i, (ip(1), 40_000 + i as u16), (ip(9), 80), nginx);
        for ev in c.client_closes_first(SEC + i * MS) {
            e.apply(&ev);
        }
    }
    let snap = e.scrape_snapshot(2 * SEC, WALL, host());
    let text = Exposition::new(&snap, &e.aggs, None).render();
    assert_eq!(
        sample(
            &text,
            r#"tcptrace_time_wait_service_sockets{service="10.0.0.1:8080",netns="1",comm="nginx"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(&text, r#"tcptrace_time_wait_sockets{peer="10.0.0.9:80"}"#),
        2.0,
        "the server's TIME_WAIT is not counted per client"
    );
    let share = sample(
        &text,
        r#"tcptrace_ephemeral_port_time_wait_ratio{netns="1",local="10.0.0.1",peer="10.0.0.9:80"}"#,
    );
    assert!((share - 2.0 / 28_232.0).abs() < 1e-9, "{share}");
}

#[test]
fn the_text_a_scraper_sees() {
    let mut x = exposition(Some(&["close_wait_count"]));
    // Only the histogram that has data, to keep the snapshot short.
    x.durations.retain(|d| d.2 == "ESTABLISHED");
    insta::assert_snapshot!(x.render());
}

/// Every `expr` (and legend) of the targets of `panels`, rows' panels too:
/// (panel title, expr, legendFormat).
fn dashboard_targets(panels: &serde_json::Value, out: &mut Vec<(String, String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?");
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let legend = t["legendFormat"].as_str().unwrap_or("");
                out.push((title.to_string(), expr.to_string(), legend.to_string()));
            }
        }
        dashboard_targets(&panel["panels"], out);
    }
}

/// Every `tcptrace_[a-z0-9_]+` in `s`.
fn tcptrace_names(s: &str) -> Vec<&str> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(at) = s[from..].find("tcptrace_").map(|i| from + i) {
        let end = s[at..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(s.len(), |i| at + i);
        // Only whole identifiers (not `xtcptrace_...`).
        if !s[..at].ends_with(ident) {
            names.push(&s[at..end]);
        }
        from = end;
    }
    names
}

/// A PromQL token, as much of PromQL as the dashboard needs.
#[derive(Debug, PartialEq)]
enum Tok<'a> {
    Ident(&'a str),
    Str(&'a str),
    Punct(char),
}

/// Tokens of `expr`; numbers, durations, `[range]`s and `$variables` are dropped.
fn promql_tokens(expr: &str) -> Vec<Tok<'_>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let b = expr.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let rest = &expr[i..];
        let c = rest.chars().next().expect("i is below the length");
        let len_while = |f: &dyn Fn(char) -> bool| rest.find(|c: char| !f(c)).unwrap_or(rest.len());
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' {
            let mut j = i + 1;
            while j < b.len() && b[j] as char != c {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            toks.push(Tok::Str(&expr[i + 1..j.min(b.len())]));
            i = j + 1;
        } else if c == '[' {
            i += rest.find(']').expect("a closed range") + 1;
        } else if c == '$' {
            // `$var` or `${var}`
            i += match rest[1..].strip_prefix('{') {
                Some(braced) => braced.find('}').expect("a closed ${var}") + 3,
                None => {
                    1 + rest[1..]
                        .find(|c: char| !ident(c))
                        .unwrap_or(rest.len() - 1)
                }
            };
        } else if c.is_ascii_digit() || c == '.' {
            i += len_while(&|c| c.is_ascii_alphanumeric() || c == '.');
        } else if ident(c) {
            let n = len_while(&ident);
            toks.push(Tok::Ident(&rest[..n]));
            i += n;
        } else {
            toks.push(Tok::Punct(c));
            i += c.len_utf8();
        }
    }
    toks
}

/// The labels of `expr`'s grouping clauses (`by`, `on`, ...), and its label
/// matchers as (label, operator, value).
#[allow(clippy::type_complexity)]
fn promql_labels(expr: &str) -> (Vec<&str>, Vec<(&str, String, &str)>) {
    let toks = promql_tokens(expr);
    let mut grouping = Vec::new();
    let mut matchers = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match toks[i] {
            Tok::Ident(kw)
                if matches!(
                    kw,
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) && toks.get(i + 1) == Some(&Tok::Punct('(')) =>
            {
                i += 2;
                while i < toks.len() && toks[i] != Tok::Punct(')') {
                    if let Tok::Ident(l) = toks[i] {
                        grouping.push(l);
                    }
                    i += 1;
                }
            }
            Tok::Punct('{') => {
                i += 1;
                while i < toks.len() && toks[i] != Tok::Punct('}') {
                    if let Tok::Ident(l) = toks[i] {
                        let mut op = String::new();
                        i += 1;
                        while let Some(Tok::Punct(c @ ('=' | '!' | '~'))) = toks.get(i) {
                            op.push(*c);
                            i += 1;
                        }
                        let Some(Tok::Str(v)) = toks.get(i) else {
                            panic!("matcher {l}{op} without a value in {expr}")
                        };
                        matchers.push((l, op, *v));
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    (grouping, matchers)
}

#[test]
fn promql_scanning_finds_names_groupings_and_matchers() {
    let expr = r#"topk(10, sum by (le, state) (rate(tcptrace_x_bucket{instance=~"$instance", window="5m"}[$__rate_interval])) / on(instance) group_left tcptrace_y)"#;
    assert_eq!(tcptrace_names(expr), ["tcptrace_x_bucket", "tcptrace_y"]);
    let (grouping, matchers) = promql_labels(expr);
    assert_eq!(grouping, ["le", "state", "instance"]);
    assert_eq!(
        matchers,
        [
            ("instance", "=~".to_string(), "$instance"),
            ("window", "=".to_string(), "5m")
        ]
    );
}

/// packaging/grafana/tcptrace-dashboard.json asks only for series and labels
/// that a scrape has: a renamed metric or label breaks this test, not the
/// dashboard in production.
#[test]
fn the_grafana_dashboard_uses_only_metrics_that_exist() {
    use std::collections::{BTreeMap, BTreeSet};

    let dashboard: serde_json::Value = serde_json::from_str(include_str!(
        "../../../packaging/grafana/tcptrace-dashboard.json"
    ))
    .expect("the dashboard is valid JSON");
    let mut x = exposition(Some(&["close_wait_count"]));
    // A TIME_WAIT peer, service and port budget, so that every family has
    // a sample line.
    x.time_wait_by_peer.push(("10.0.0.2:5432".into(), 3));
    x.time_wait_by_service
        .push(("10.0.0.1:8080".into(), "1".into(), "nginx".into(), 5));
    let workload = WorkloadSeries {
        workload: "payments.service".into(),
        kind: "unit".into(),
        count: 2,
        oldest_secs: 1.0,
        growth_per_min: [1.0, 0.5, 0.2],
    };
    x.close_wait_by_workload.push(workload.clone());
    x.time_wait_by_workload.push(workload);
    x.port_budgets.push(BudgetSeries {
        netns: "1".into(),
        local: "10.0.0.1".into(),
        peer: "10.0.0.2:5432".into(),
        use_ratio: 0.5,
        time_wait_ratio: 0.4,
    });
    let text = x.render();

    // Series name (as in sample lines: `_total`, `_bucket`, ...) -> label names.
    let mut series: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let end = line.find(['{', ' ']).expect("a sample line has a value");
        let labels = series.entry(&line[..end]).or_default();
        if let Some(mut rest) = line[end..].strip_prefix('{') {
            while let Some((name, after)) = rest.split_once("=\"") {
                labels.insert(name.trim_start_matches(','));
                let close = after.find('"').expect("a closed label value");
                rest = &after[close + 1..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
    }
    assert!(series.contains_key("tcptrace_time_wait_sockets"), "{text}");
    // Labels Prometheus adds at scrape time.
    let target_labels = ["instance", "job"];

    let mut targets = Vec::new();
    dashboard_targets(&dashboard["panels"], &mut targets);
    assert!(targets.len() >= 20, "{targets:?}");
    assert!(
        targets.iter().any(|t| t.1.contains("histogram_quantile")),
        "the targets of collapsed rows are searched too"
    );
    for t in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = t["definition"].as_str() {
            targets.push((
                format!("variable {}", t["name"]),
                q.to_string(),
                String::new(),
            ));
        }
    }

    for (title, expr, legend) in &targets {
        let names = tcptrace_names(expr);
        assert!(!names.is_empty(), "{title}: no tcptrace metric in {expr}");
        let mut labels: BTreeSet<&str> = target_labels.into();
        for name in &names {
            let Some(l) = series.get(name) else {
                panic!(
                    "{title}: {name} is not exposed (expr {expr}); the exposition has {:?}",
                    series.keys()
                );
            };
            labels.extend(l);
        }
        let (grouping, matchers) = promql_labels(expr);
        for l in &grouping {
            assert!(
                labels.contains(l),
                "{title}: no label {l} on {names:?} (expr {expr})"
            );
        }
        for (l, op, v) in &matchers {
            assert!(
                labels.contains(l),
                "{title}: no label {l} on {names:?} (expr {expr})"
            );
            if op == "=" && !v.starts_with('$') {
                assert!(
                    text.contains(&format!("{l}=\"{v}\"")),
                    "{title}: no {l}=\"{v}\" in\n{text}"
                );
            }
        }
        // After `sum by (...)` only the grouping labels are left (roughly:
        // the union of every `by` of the expr).
        let by: Vec<&str> = grouping.iter().copied().filter(|&l| l != "le").collect();
        let aggregated = expr.contains(" by (");
        let mut rest = legend.as_str();
        while let Some((_, after)) = rest.split_once("{{") {
            let (l, after) = after.split_once("}}").expect("a closed {{label}}");
            let l = l.trim();
            assert!(
                labels.contains(l),
                "{title}: legend {{{{{l}}}}} is no label of {names:?}"
            );
            assert!(
                !aggregated || by.contains(&l),
                "{title}: legend {{{{{l}}}}} is aggregated away by {expr}"
            );
            rest = after;
        }
    }
}

#[test]
fn workload_series_are_capped_and_the_rest_summed_into_other() {
    let mut e = Engine::new(1000);
    let mut snap = e.scrape_snapshot(0, WALL, host());
    for i in 0..(MAX_WORKLOAD_SERIES as u64 + 5) {
        snap.close_wait_by_workload
            .push(crate::stats::workloads::CloseWaitByWorkload {
                workload: format!("w{i}.service"),
                workload_kind: "unit",
                count: 2,
                growth_per_min_5m: 1.5,
                oldest_age_ms: 1000 * i,
                ..Default::default()
            });
    }
    let text = Exposition::new(&snap, &e.aggs, None).render();
    assert_eq!(
        sample(
            &text,
            r#"tcptrace_workload_close_wait_sockets{workload="w0.service",workload_kind="unit"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tcptrace_workload_close_wait_sockets{workload="other",workload_kind="other"}"#
        ),
        10.0
    );
    let series = text
        .lines()
        .filter(|l| l.starts_with("tcptrace_workload_close_wait_sockets{"))
        .count();
    assert_eq!(series, MAX_WORKLOAD_SERIES + 1);
    // Growth: capped the same way, the rest's rates summed into `other`.
    assert_eq!(
        sample(
            &text,
            r#"tcptrace_workload_close_wait_growth_per_minute{workload="w0.service",workload_kind="unit",window="5m"}"#
        ),
        1.5
    );
    assert_eq!(
        sample(
            &text,
            r#"tcptrace_workload_close_wait_growth_per_minute{workload="other",workload_kind="other",window="5m"}"#
        ),
        7.5
    );
    let growth = text
        .lines()
        .filter(|l| l.starts_with("tcptrace_workload_close_wait_growth_per_minute{"))
        .count();
    assert_eq!(growth, 3 * (MAX_WORKLOAD_SERIES + 1));
}

mod listeners {
    use super::sample;
    use crate::{
        engine::Engine,
        metrics::{Exposition, MAX_LISTENER_SERIES},
        stats::listener_fixture::{self as fx, S},
    };

    fn render(e: &mut Engine) -> String {
        let snap = e.scrape_snapshot(2 * S, super::WALL, super::host());
        Exposition::new(&snap, &e.aggs, None).render()
    }

    #[test]
    fn drops_and_queues_per_listener_and_reason() {
        let text = render(&mut fx::overflowing());
        let ns = fx::NETNS;
        assert_eq!(
            sample(
                &text,
                &format!(
                    "tcptrace_listen_drops_total{{listener=\"127.0.0.1:8080\",netns=\"{ns}\",reason=\"accept_queue_full\"}}"
                )
            ),
            76.0
        );
        assert_eq!(
            sample(
                &text,
                &format!("tcptrace_accept_queue{{listener=\"127.0.0.1:8080\",netns=\"{ns}\"}}")
            ),
            129.0
        );
        assert_eq!(
            sample(
                &text,
                &format!(
                    "tcptrace_accept_queue_limit{{listener=\"127.0.0.1:9090\",netns=\"{ns}\"}}"
                )
            ),
            128.0
        );
        assert_eq!(
            sample(
                &text,
                &format!(
                    "tcptrace_listen_drops_total{{listener=\"none\",netns=\"{ns}\",reason=\"no_listener\"}}"
                )
            ),
            2.0
        );
        // The quiet listener has no drop series, only its queue.
        assert!(
            !text.contains("tcptrace_listen_drops_total{listener=\"127.0.0.1:9090\""),
            "{text}"
        );
        assert!(text.contains("# TYPE tcptrace_listen_drops counter"));
        assert!(text.contains("# TYPE tcptrace_accept_queue gauge"));
    }

    /// nginx's `listen 80; listen [::]:80;`: two listeners, two series.
    #[test]
    fn the_two_wildcards_are_two_series() {
        let mut e = Engine::new(16);
        let mut v4 = fx::sample(80, "nginx", 3, 511, 0);
        v4.addr = std::net::Ipv4Addr::UNSPECIFIED.into();
        let mut v6 = fx::sample(80, "nginx", 5, 511, 0);
        v6.addr = std::net::Ipv6Addr::UNSPECIFIED.into();
        v6.family = crate::model::Family::V6;
        fx::feed(
            &mut e,
            vec![fx::listeners(S, vec![v4, v6], fx::netstat(0, 0))],
        );
        let text = render(&mut e);
        let ns = fx::NETNS;
        let queue = |l: &str| {
            sample(
                &text,
                &format!("tcptrace_accept_queue{{listener=\"{l}\",netns=\"{ns}\"}}"),
            )
        };
        assert_eq!((queue("0.0.0.0:80"), queue("[::]:80")), (3.0, 5.0));
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tcptrace_accept_queue{"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
    }

    #[test]
    fn no_listener_data_no_listener_samples() {
        let text = render(&mut Engine::new(16));
        assert!(text.contains("# TYPE tcptrace_listen_drops counter"));
        assert!(!text.contains("tcptrace_listen_drops_total{"));
        assert!(!text.contains("tcptrace_accept_queue{"));
    }

    #[test]
    fn listener_series_are_capped_and_the_rest_summed() {
        let mut e = Engine::new(16);
        let n = MAX_LISTENER_SERIES as u16 + 30;
        let first = (0..n)
            .map(|i| fx::sample(20_000 + i, "many", 1, 10, 0))
            .collect();
        let second = (0..n)
            .map(|i| fx::sample(20_000 + i, "many", 1, 10, u64::from(i) + 1))
            .collect();
        fx::feed(
            &mut e,
            vec![
                fx::listeners(S, first, fx::netstat(0, 0)),
                fx::listeners(2 * S, second, fx::netstat(0, 0)),
            ],
        );
        let text = render(&mut e);
        let drops: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tcptrace_listen_drops_total{"))
            .collect();
        assert_eq!(drops.len(), MAX_LISTENER_SERIES + 1, "{text}");
        let total: f64 = drops
            .iter()
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum();
        assert_eq!(total, f64::from(u32::from(n) * (u32::from(n) + 1) / 2));
        assert_eq!(
            sample(
                &text,
                "tcptrace_accept_queue{listener=\"other\",netns=\"\"}"
            ),
            30.0
        );
        // The busiest listener is among those shown.
        assert!(text.contains(&format!("listener=\"127.0.0.1:{}\"", 20_000 + n - 1)));
    }
}
