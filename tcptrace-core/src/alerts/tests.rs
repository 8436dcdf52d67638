//! The rule engine with an injected clock: thresholds, slopes, hysteresis,
//! repeat (no storms), resolve, counter rules.

use super::*;
use crate::{
    engine::Engine,
    stats::{CloseWaitByProcess, HostFacts, PortBudget},
};

const SEC: u64 = 1_000_000_000;
const WALL: u64 = 1_790_000_000 * SEC;

fn empty() -> Snapshot {
    let host = HostFacts {
        port_range: (32768, 60999),
        ..HostFacts::default()
    };
    Engine::new(1000).snapshot(0, WALL, host)
}

fn leak(count: u64, growth_5m: f64, oldest_s: u64) -> Snapshot {
    let mut s = empty();
    s.states.insert("CLOSE_WAIT", count);
    s.close_wait_by_process.push(CloseWaitByProcess {
        pid: Some(4242),
        comm: Some("java".into()),
        count,
        growth_per_min: growth_5m,
        growth_per_min_5m: growth_5m,
        growth_per_min_15m: growth_5m,
        growth_delta: (growth_5m) as i64,
        growth_span_ms: 60_000,
        growth_delta_5m: (growth_5m * 5.0) as i64,
        growth_span_5m_ms: 300_000,
        growth_delta_15m: (growth_5m * 15.0) as i64,
        growth_span_15m_ms: 900_000,
        oldest_age_ms: oldest_s * 1000,
        oldest_age_is_lower_bound: false,
        peers: vec!["10.0.0.5:3306".into()],
        ..Default::default()
    });
    s
}

/// Evaluates at second `t`; returns (rule, state) of what was sent.
fn at(a: &mut Alerter, snap: &Snapshot, t: u64) -> Vec<(&'static str, AlertState)> {
    a.evaluate(snap, t * SEC, WALL + t * SEC)
        .into_iter()
        .map(|x| (x.rule, x.state))
        .collect()
}

use AlertState::{Firing, Resolved};

#[test]
fn nothing_fires_below_every_threshold() {
    let mut a = Alerter::new(Rules::default());
    assert!(at(&mut a, &leak(99, 9.9, 299), 0).is_empty());
    assert!(at(&mut a, &empty(), 1).is_empty());
}

#[test]
fn a_leak_fires_count_growth_and_age_naming_the_process_and_the_fix() {
    let mut a = Alerter::new(Rules::default());
    let sent = a.evaluate(&leak(150, 12.0, 400), 0, WALL);
    let rules: Vec<&str> = sent.iter().map(|x| x.rule).collect();
    assert_eq!(
        rules,
        ["close_wait_count", "close_wait_growth", "close_wait_oldest"]
    );
    let count = &sent[0];
    assert_eq!(count.state, Firing);
    assert_eq!(
        (count.pid, count.comm.as_deref()),
        (Some(4242), Some("java"))
    );
    assert_eq!(count.count, 150);
    assert_eq!(count.growth_per_min, Some(12.0));
    assert_eq!(count.oldest_age_ms, Some(400_000));
    assert_eq!(count.peers, ["10.0.0.5:3306"]);
    assert_eq!(
        count.message,
        "150 CLOSE_WAIT sockets held by java (pid 4242): java (pid 4242) is not closing connections to 10.0.0.5:3306 after the peer closed: a leaked connection; check code paths that return without closing (or releasing to the pool)"
    );
    assert!(
        sent[1]
            .message
            .starts_with("CLOSE_WAIT of java (pid 4242) growing 12.0/min over 5 min (150 now)")
    );
    assert!(
        sent[2]
            .message
            .starts_with("java (pid 4242) has held a CLOSE_WAIT socket for 6m40s")
    );
}

#[test]
fn a_holding_rule_repeats_only_every_repeat_then_resolves_once() {
    let mut a = Alerter::new(Rules {
        repeat_secs: 600,
        ..Rules::default()
    });
    let only_count = |n| leak(n, 0.0, 10);
    assert_eq!(
        at(&mut a, &only_count(120), 0),
        [("close_wait_count", Firing)]
    );
    // Still holding every 5 s for almost 10 minutes: silence.
    for t in (5..600).step_by(5) {
        assert!(at(&mut a, &only_count(120 + t), t).is_empty(), "t={t}");
    }
    assert_eq!(a.firing().len(), 1);
    assert_eq!(a.firing()[0].count, 595 + 120, "details stay current");
    assert_eq!(
        at(&mut a, &only_count(800), 600),
        [("close_wait_count", Firing)]
    );
    // Closed: one resolve, then nothing.
    let sent = a.evaluate(&empty(), 605 * SEC, WALL + 605 * SEC);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].state, Resolved);
    assert!(sent[0].message.starts_with("resolved: "));
    assert_eq!(sent[0].count, 800, "the last values seen while firing");
    assert!(at(&mut a, &empty(), 610).is_empty());
    assert!(a.firing().is_empty());
}

#[test]
fn hysteresis_a_value_hovering_at_the_threshold_does_not_flap() {
    let mut a = Alerter::new(Rules::default());
    assert_eq!(
        at(&mut a, &leak(100, 0.0, 1), 0),
        [("close_wait_count", Firing)]
    );
    // 99, 100, 85, 81, 100: above 80% of 100, still the same alert.
    for (t, n) in [(1, 99), (2, 100), (3, 85), (4, 81), (5, 100)] {
        assert!(at(&mut a, &leak(n, 0.0, 1), t).is_empty(), "{n}");
    }
    assert_eq!(
        at(&mut a, &leak(79, 0.0, 1), 6),
        [("close_wait_count", Resolved)]
    );
    // Back to 99 (below the threshold): does not fire again.
    assert!(at(&mut a, &leak(99, 0.0, 1), 7).is_empty());
    assert_eq!(
        at(&mut a, &leak(100, 0.0, 1), 8),
        [("close_wait_count", Firing)]
    );
}

#[test]
fn growth_uses_the_configured_window() {
    let mut s = leak(5, 0.0, 1);
    s.close_wait_by_process[0].growth_per_min = 30.0; // a 1-minute burst
    s.close_wait_by_process[0].growth_per_min_5m = 6.0;
    let mut five = Alerter::new(Rules::default());
    assert!(at(&mut five, &s, 0).is_empty(), "5 min average is 6/min");
    let mut one = Alerter::new(Rules {
        close_wait_growth_window_min: 1,
        ..Rules::default()
    });
    assert_eq!(at(&mut one, &s, 0), [("close_wait_growth", Firing)]);
}

#[test]
fn host_wide_close_wait_and_time_wait_port_share() {
    let mut a = Alerter::new(Rules {
        close_wait_host: 50,
        ..Rules::default()
    });
    let mut s = leak(60, 0.0, 1);
    s.port_budgets.push(PortBudget {
        netns: 1,
        saddr: "10.0.0.2".parse().unwrap(),
        daddr: "10.0.0.9".parse().unwrap(),
        dport: 8080,
        time_wait: 15_000,
        reusable: 0,
        open: 0,
        ports: 28_232,
        port_range: (32768, 60999),
        port_range_ratio: 15_000.0 / 28_232.0,
        in_use_ratio: 15_000.0 / 28_232.0,
        tw_reuse: crate::netfacts::Reuse::LoopbackOnly,
        facts_known: true,
        pid: Some(7),
        comm: Some("prober".into()),
    });
    let sent = a.evaluate(&s, 0, WALL);
    let rules: Vec<&str> = sent.iter().map(|x| x.rule).collect();
    assert_eq!(rules, ["close_wait_host", "time_wait_ports"]);
    assert!(sent[0].message.contains("the most by java (pid 4242)"));
    assert_eq!(sent[1].peers, ["10.0.0.9:8080"]);
    assert_eq!(sent[1].pid, Some(7));
    assert!(
        sent[1].message.starts_with(
            "15000 TIME_WAIT and 0 open sockets to 10.0.0.9:8080 from 10.0.0.2 (netns 1) hold 53% of the 28232 ephemeral ports"
        ),
        "{}",
        sent[1].message
    );
}

#[test]
fn counter_rules_fire_when_the_counter_rises_and_resolve_after_a_quiet_minute() {
    let mut a = Alerter::new(Rules::default());
    let mut s = empty();
    s.tw_overflow = 10;
    assert!(
        at(&mut a, &s, 0).is_empty(),
        "the first value is the baseline"
    );
    s.tw_overflow = 12;
    assert_eq!(at(&mut a, &s, 5), [("time_wait_overflow", Firing)]);
    assert!(at(&mut a, &s, 30).is_empty());
    assert_eq!(at(&mut a, &s, 66), [("time_wait_overflow", Resolved)]);

    s.lost.insert("ring_full", 7);
    assert_eq!(at(&mut a, &s, 70), [("lost_events", Firing)]);
    let msg = &a.firing()[0].message;
    assert!(
        msg.contains("ring_full 7") && msg.contains("--ring-size"),
        "{msg}"
    );
    assert_eq!(at(&mut a, &s, 131), [("lost_events", Resolved)]);
}

#[test]
fn rules_from_toml_with_defaults_and_errors() {
    let r: Rules = toml::from_str("close_wait_per_process = 20\nrepeat_secs = 60\n").unwrap();
    assert_eq!(r.close_wait_per_process, 20);
    assert_eq!(r.repeat_secs, 60);
    assert_eq!(r.close_wait_oldest_secs, 300, "unset: the default");
    assert!(
        toml::from_str::<Rules>("close_wait_per_proces = 20").is_err(),
        "typos are errors"
    );
    let bad = Rules {
        close_wait_growth_window_min: 3,
        ..Rules::default()
    };
    assert!(bad.check().unwrap_err().contains("must be 1, 5 or 15"));
}

#[test]
fn the_text_line_names_the_cgroup() {
    let line = crate::fixtures::alert().text_line();
    assert!(
        line.ends_with("ALERT close_wait_count: m [cgroup /init.scope]"),
        "{line}"
    );
    let mut named = crate::fixtures::alert();
    named.workload = Some("init.scope".into());
    let line = named.text_line();
    assert!(
        line.ends_with("ALERT close_wait_count: m [workload init.scope; cgroup /init.scope]"),
        "{line}"
    );
}

#[test]
fn grouped_by_workload_the_count_rule_names_the_workload_not_a_process() {
    let mut snap = leak(150, 0.0, 1);
    snap.close_wait_by_workload
        .push(crate::stats::workloads::CloseWaitByWorkload {
            workload: "shop/payments-7d9f-abcde/app".into(),
            workload_kind: "container",
            container: Some("app".into()),
            pod: Some("payments-7d9f-abcde".into()),
            namespace: Some("shop".into()),
            cgroup_path: Some("/kubepods.slice/x".into()),
            count: 150,
            pids: vec![4242],
            ..Default::default()
        });
    let mut a = Alerter::new(Rules {
        group_by: GroupBy::Workload,
        close_wait_host: 0,
        ..Rules::default()
    });
    let sent = a.evaluate(&snap, SEC, WALL);
    let count: Vec<&Alert> = sent
        .iter()
        .filter(|a| a.rule == "close_wait_count")
        .collect();
    assert_eq!(count.len(), 1, "one alert, for the workload: {sent:?}");
    let alert = count[0];
    assert_eq!(
        alert.workload.as_deref(),
        Some("shop/payments-7d9f-abcde/app")
    );
    assert_eq!(alert.namespace.as_deref(), Some("shop"));
    assert_eq!(alert.cgroup.as_deref(), Some("/kubepods.slice/x"));
    assert!(
        alert
            .message
            .contains("workload shop/payments-7d9f-abcde/app")
    );
    assert!(
        alert
            .text_line()
            .contains("[workload shop/payments-7d9f-abcde/app; cgroup /kubepods.slice/x]")
    );
    let toml: Rules = toml::from_str("group_by = \"workload\"").unwrap();
    assert_eq!(toml.group_by, GroupBy::Workload);
}

#[test]
fn grouped_by_workload_the_growth_rule_is_the_workloads() {
    // The process grows fast, the workload (its restarts' sum) slower:
    // grouped by workload, only the workload's rate is judged.
    let mut snap = leak(50, 40.0, 1);
    snap.close_wait_by_workload
        .push(crate::stats::workloads::CloseWaitByWorkload {
            workload: "payments.service".into(),
            workload_kind: "unit",
            unit: Some("payments.service".into()),
            count: 50,
            growth_per_min_5m: 12.0,
            growth_delta_5m: 60,
            growth_span_5m_ms: 300_000,
            pids: vec![4242],
            ..Default::default()
        });
    let mut a = Alerter::new(Rules {
        group_by: GroupBy::Workload,
        close_wait_host: 0,
        ..Rules::default()
    });
    let sent = a.evaluate(&snap, SEC, WALL);
    let growth: Vec<&Alert> = sent
        .iter()
        .filter(|a| a.rule == "close_wait_growth")
        .collect();
    assert_eq!(growth.len(), 1, "one alert, for the workload: {sent:?}");
    assert_eq!(growth[0].workload.as_deref(), Some("payments.service"));
    assert_eq!(growth[0].growth_per_min, Some(12.0));
    assert_eq!(growth[0].value, 12.0);
    assert!(
        growth[0]
            .message
            .starts_with("CLOSE_WAIT of workload payments.service growing 12.0/min over 5 min"),
        "{}",
        growth[0].message
    );
    // Hysteresis as per process: 9/min (>= 80%) holds, 7 resolves.
    snap.close_wait_by_workload[0].growth_per_min_5m = 9.0;
    assert!(at(&mut a, &snap, 2).is_empty());
    snap.close_wait_by_workload[0].growth_per_min_5m = 7.0;
    assert_eq!(at(&mut a, &snap, 3), vec![("close_wait_growth", Resolved)]);
    // By process (the default), the process's 40/min fires instead.
    let mut a = Alerter::new(Rules {
        close_wait_host: 0,
        ..Rules::default()
    });
    let sent = a.evaluate(&snap, SEC, WALL);
    let growth: Vec<&Alert> = sent
        .iter()
        .filter(|a| a.rule == "close_wait_growth")
        .collect();
    assert_eq!(growth.len(), 1);
    assert_eq!(growth[0].pid, Some(4242));
    assert_eq!(growth[0].workload, None);
}

/// A `close_wait_by_stack` row of pid 4242 (`leak()`'s process).
fn path_row(
    stack_id: Option<u32>,
    count: u64,
    top: Option<&str>,
    path: &str,
) -> crate::stats::CloseWaitByStack {
    crate::stats::CloseWaitByStack {
        pid: Some(4242),
        comm: Some("java".into()),
        stack_id,
        count,
        process_count: 460,
        oldest_age_ms: 400_000,
        oldest_age_is_lower_bound: false,
        peers: vec!["10.0.0.5:3306".into()],
        code_path: path.into(),
        top_frame: top.map(str::to_string),
        stack_quality: if top.is_some() { "complete" } else { "none" },
        frames: vec![],
    }
}

#[test]
fn a_close_wait_alert_names_the_code_that_opened_most_of_them() {
    let mut snap = leak(460, 0.0, 0);
    snap.close_wait_by_stack = Some(vec![
        path_row(None, 30, None, "(no stack)"),
        path_row(Some(3), 18, Some("refresh"), "refresh ← main"),
        path_row(
            Some(7),
            412,
            Some("checkout_reserve_items"),
            "checkout_reserve_items ← handle_order ← main",
        ),
    ]);
    let mut a = Alerter::new(Rules::default());
    let sent = a.evaluate(&snap, 0, WALL);
    let count = sent
        .iter()
        .find(|x| x.rule == "close_wait_count")
        .expect("the count rule fires");
    assert_eq!(count.opened_at.as_deref(), Some("checkout_reserve_items"));
    assert_eq!(
        count.opened_at_path.as_deref(),
        Some("checkout_reserve_items ← handle_order ← main")
    );
    assert_eq!(count.opened_at_count, Some(412));
    assert!(
        count
            .message
            .ends_with("; opened at checkout_reserve_items (412 of 460)"),
        "{}",
        count.message
    );
    let json = serde_json::to_value(count).unwrap();
    assert_eq!(json["opened_at"], "checkout_reserve_items");
    assert_eq!(json["opened_at_count"], 412);
}

#[test]
fn without_stacks_or_names_nothing_is_said_of_the_code() {
    // No --stacks: the fields are null (present in JSON), the message as before.
    let snap = leak(460, 0.0, 0);
    let mut a = Alerter::new(Rules::default());
    let sent = a.evaluate(&snap, 0, WALL);
    let count = sent.iter().find(|x| x.rule == "close_wait_count").unwrap();
    assert_eq!(count.opened_at, None);
    assert_eq!(count.opened_at_path, None);
    assert_eq!(count.opened_at_count, None);
    assert!(!count.message.contains("opened at"), "{}", count.message);
    let json = serde_json::to_value(count).unwrap();
    assert!(json["opened_at"].is_null() && json.get("opened_at_path").is_some());
    // Stacks on, the leading path not named yet: its path and count, no
    // function, nothing in the message.
    let mut snap = leak(460, 0.0, 0);
    snap.close_wait_by_stack = Some(vec![
        path_row(None, 60, None, "(no stack)"),
        path_row(Some(7), 400, None, "(not named yet)"),
    ]);
    let mut a = Alerter::new(Rules::default());
    let sent = a.evaluate(&snap, 0, WALL);
    let count = sent.iter().find(|x| x.rule == "close_wait_count").unwrap();
    assert_eq!(count.opened_at, None);
    assert_eq!(count.opened_at_path.as_deref(), Some("(not named yet)"));
    assert_eq!(count.opened_at_count, Some(400));
    assert!(!count.message.contains("opened at"), "{}", count.message);
}

mod listen_drops {
    use super::{Firing, Resolved};
    use crate::{
        alerts::{Alerter, Rules},
        engine::Engine,
        listeners::DropReason,
        stats::{
            HostFacts, Snapshot,
            listener_fixture::{self as fx, S},
        },
    };

    const WALL: u64 = 1_790_000_000 * S;

    /// The overflowing fixture, then samples each second until `until`
    /// with `per_sec` more drops a second at 127.0.0.1:8080.
    fn run(until: u64, per_sec: u64) -> (Engine, Snapshot) {
        let mut e = fx::overflowing();
        let mut drops = 76;
        let mut overflows = 86;
        for t in 3..=until {
            drops += per_sec;
            overflows += per_sec;
            fx::feed(
                &mut e,
                vec![fx::listeners(
                    t * S,
                    vec![
                        fx::sample(8080, "slowacceptd", 129, 128, drops),
                        fx::sample(9090, "fastd", 0, 128, 0),
                    ],
                    fx::netstat(overflows, 0),
                )],
            );
        }
        let snap = e.snapshot(until * S, WALL + until * S, HostFacts::default());
        (e, snap)
    }

    #[test]
    fn a_dropping_listener_fires_with_listener_owner_reason_and_rate() {
        let (_, snap) = run(2, 0);
        let mut a = Alerter::new(Rules::default());
        let sent = a.evaluate(&snap, 2 * S, WALL + 2 * S);
        let alerts: Vec<_> = sent.iter().filter(|x| x.rule == "listen_drops").collect();
        assert_eq!(alerts.len(), 1, "{sent:?}");
        let x = alerts[0];
        assert_eq!(x.state, Firing);
        assert_eq!(x.listener.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(x.netns, Some(fx::NETNS));
        assert_eq!(x.reason, Some("accept_queue_full"));
        assert_eq!(x.comm.as_deref(), Some("slowacceptd"));
        assert_eq!(x.pid, Some(42 + 80));
        assert_eq!(x.count, 76);
        assert!((x.value - 76.0).abs() < 1e-9);
        assert_eq!(x.threshold, 1.0);
        assert!(
            x.message.starts_with(&format!(
                "connection attempts to 127.0.0.1:8080 (netns {}) dropped at 76.0/s (76 in all): accept queue full (queue 129/128",
                fx::NETNS
            )),
            "{}",
            x.message
        );
        assert!(
            x.message
                .contains("slowacceptd (pid 122) is not accepting fast enough")
        );
        assert!(x.message.contains("net.core.somaxconn"));
        let json = serde_json::to_value(x).unwrap();
        assert_eq!(json["listener"], "127.0.0.1:8080");
        assert_eq!(json["reason"], "accept_queue_full");
    }

    #[test]
    fn it_resolves_once_the_drops_stop_and_the_window_passes() {
        let mut a = Alerter::new(Rules::default());
        let (_, snap) = run(2, 0);
        assert_eq!(a.evaluate(&snap, 2 * S, WALL).len(), 1);
        // Still dropping 5/s: holds, no repeat.
        let (_, snap) = run(5, 5);
        assert!(a.evaluate(&snap, 5 * S, WALL).is_empty());
        // No more drops: the 10 s window passes and it resolves.
        let mut e = fx::overflowing();
        for t in 3..=14 {
            fx::feed(
                &mut e,
                vec![fx::listeners(
                    t * S,
                    vec![fx::sample(8080, "slowacceptd", 0, 128, 76)],
                    fx::netstat(86, 0),
                )],
            );
        }
        let snap = e.snapshot(14 * S, WALL, HostFacts::default());
        let sent = a.evaluate(&snap, 14 * S, WALL);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].state, Resolved);
        assert_eq!(sent[0].listener.as_deref(), Some("127.0.0.1:8080"));
    }

    #[test]
    fn below_the_threshold_or_off_nothing_fires() {
        let (_, snap) = run(2, 0);
        let mut a = Alerter::new(Rules {
            listen_drops_per_sec: 100.0,
            ..Rules::default()
        });
        assert!(a.evaluate(&snap, 2 * S, WALL).is_empty());
        let mut a = Alerter::new(Rules {
            listen_drops_per_sec: 0.0,
            ..Rules::default()
        });
        assert!(a.evaluate(&snap, 2 * S, WALL).is_empty());
        assert!(
            Rules {
                listen_drops_per_sec: -1.0,
                ..Rules::default()
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn timewait_paws_drops_name_timestamps() {
        let mut e = fx::paws();
        let snap = fx::snapshot(&mut e);
        let mut a = Alerter::new(Rules::default());
        let sent = a.evaluate(&snap, 2 * S, WALL);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].reason, Some(DropReason::TimewaitPaws.name()));
        assert!(sent[0].message.contains("timestamp"), "{}", sent[0].message);
        assert!(sent[0].message.contains("tcp_tw_recycle"));
    }

    #[test]
    fn the_rule_is_in_the_toml_config() {
        let r: Rules = toml::from_str("listen_drops_per_sec = 5.0").unwrap();
        assert_eq!(r.listen_drops_per_sec, 5.0);
    }
}
