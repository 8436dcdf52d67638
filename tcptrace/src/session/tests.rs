//! The loop and every command's consumer, without a kernel: a scripted
//! source plays records, sock_diag answers, losses and inputs at set times
//! on a clock that jumps; what comes out (lines, JSON, a recording file,
//! alerts, findings, metrics, `top`'s data) is checked.

use std::{process::ExitCode, time::Duration};

use tcptrace_core::{
    app::Action,
    fixtures::{Conn, SEC, ip, leak, leak_sockets, owner},
    model::{Lost, TcpState},
    record::Record,
};

use super::*;
use crate::{
    cmd::{doctor::Doctor, stats::Stats, top::TopFeed, trace::Trace, watch::Watch},
    source::{Scripted, Step, scripted::WALL_OFFSET_NS},
};

const START: u64 = 1_000 * SEC;

fn at(secs: f64) -> u64 {
    START + (secs * 1e9) as u64
}

/// Steps for `events`, each at its own timestamp.
fn records(events: Vec<tcptrace_core::model::Event>) -> Vec<(u64, Step)> {
    events
        .into_iter()
        .map(|e| (e.ts_ns, Step::Record(Record::Event(e))))
        .collect()
}

/// Runs `consumer` on a script; returns its exit code.
fn play(steps: Vec<(u64, Step)>, consumer: &mut dyn Consumer, opts: &Options) -> ExitCode {
    let (_tx, rx) = inputs();
    let mut source = Scripted::new(START, steps);
    run(&mut source, consumer, opts, &rx).expect("the loop runs")
}

/// A consumer that keeps what it is handed.
#[derive(Default)]
struct Keep {
    records: Vec<(u64, Record)>,
    ticks: Vec<u64>,
    inputs: Vec<String>,
    started_at: Option<u64>,
    close_wait_at_end: Option<u64>,
}

impl Consumer for Keep {
    fn start(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        self.started_at = Some(ctx.source.clock_ns());
        Ok(())
    }

    fn record(&mut self, rec: &Record, ctx: &mut Ctx<'_>) -> Result<Flow> {
        self.records.push((ctx.source.clock_ns(), rec.clone()));
        Ok(Flow::Continue)
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) -> Result<Flow> {
        self.ticks.push(ctx.source.clock_ns());
        Ok(Flow::Continue)
    }

    fn input(&mut self, input: Input, _ctx: &mut Ctx<'_>) -> Result<Flow> {
        self.inputs.push(format!("{input:?}"));
        Ok(Flow::Continue)
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>) -> Result<ExitCode> {
        if ctx.engine.is_some() {
            let snap = ctx.snapshot();
            self.close_wait_at_end = snap.states.get("CLOSE_WAIT").copied();
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Keep {
    fn events(&self) -> usize {
        self.records
            .iter()
            .filter(|(_, r)| matches!(r, Record::Event(_)))
            .count()
    }

    fn snapshots_at(&self) -> Vec<u64> {
        self.records
            .iter()
            .filter_map(|(t, r)| matches!(r, Record::Snapshot { .. }).then_some(*t))
            .collect()
    }
}

fn java() -> tcptrace_core::model::Owner {
    owner(4242, "java")
}

// ------------------------------------------------------------ the loop

#[test]
fn records_flow_in_order_and_the_deadline_stops_the_loop() {
    let events = leak(java(), 5, at(1.0), SEC);
    let mut keep = Keep::default();
    let opts = Options {
        deadline: Some(Duration::from_millis(3_500)),
        ..Options::default()
    };
    play(records(events), &mut keep, &opts);
    // Connections started at 1, 2, 3 s (3 events each); not the ones after.
    assert_eq!(keep.events(), 9);
    let ts: Vec<u64> = keep.records.iter().map(|(t, _)| *t).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]));
    // Each record is delivered within a poll of its time.
    for (t, r) in &keep.records {
        if let Record::Event(e) = r {
            assert!(*t >= e.ts_ns && *t - e.ts_ns <= POLL.as_nanos() as u64);
        }
    }
}

#[test]
fn a_stop_input_ends_the_loop_and_what_is_due_is_still_delivered() {
    let mut steps = records(leak(java(), 4, at(0.5), SEC));
    steps.push((at(2.7), Step::Input(Input::Stop)));
    let mut keep = Keep::default();
    play(steps, &mut keep, &Options::default());
    assert_eq!(
        keep.events(),
        9,
        "the connections of 0.5, 1.5, 2.5 s, not 3.5 s"
    );
}

#[test]
fn sighup_stops_or_goes_to_the_consumer() {
    let steps = || {
        vec![
            (at(1.0), Step::Input(Input::Hangup)),
            (at(2.0), Step::Input(Input::Stop)),
        ]
    };
    let mut stops = Keep::default();
    play(steps(), &mut stops, &Options::default());
    assert!(stops.inputs.is_empty());
    let mut reloads = Keep::default();
    let opts = Options {
        hangup: Hangup::Consumer,
        tick: Some(Duration::from_millis(500)),
        ..Options::default()
    };
    play(steps(), &mut reloads, &opts);
    assert_eq!(reloads.inputs, ["Hangup"]);
    // It went on to the stop at 2 s (which comes before that moment's tick).
    assert_eq!(
        reloads.ticks,
        [at(0.5), at(1.0), at(1.5)],
        "{:?}",
        reloads.ticks
    );
}

#[test]
fn losses_are_reported_once_a_second_and_counted_from_the_banner() {
    let steps = vec![
        // Before the banner: not counted.
        (
            START,
            Step::Lost(Lost {
                ring_full: 100,
                ..Lost::default()
            }),
        ),
        (
            at(1.2),
            Step::Lost(Lost {
                ring_full: 3,
                ..Lost::default()
            }),
        ),
        (
            at(1.4),
            Step::Lost(Lost {
                recursion_misses: 2,
                ..Lost::default()
            }),
        ),
        (
            at(4.5),
            Step::Lost(Lost {
                map_full: 1,
                ..Lost::default()
            }),
        ),
        (at(6.0), Step::Input(Input::Stop)),
    ];
    let mut keep = Keep::default();
    play(steps, &mut keep, &Options::default());
    let reports: Vec<(u64, Lost)> = keep
        .records
        .iter()
        .filter_map(|(t, r)| match r {
            Record::Lost { lost, .. } => Some((*t, *lost)),
            _ => None,
        })
        .collect();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!((reports[0].0, reports[0].1.total()), (at(2.0), 5));
    assert_eq!((reports[1].0, reports[1].1.map_full), (at(5.0), 1));
}

#[test]
fn sock_diag_seeds_reconciles_and_closes() {
    let c = Conn::new(1, (ip(2), 40_001), (ip(5), 5432), Some(java()));
    let steps = vec![
        (START, Step::Sockets(vec![c.seen(TcpState::CloseWait, 7)])),
        // The socket closed without an event reaching us.
        (at(3.0), Step::Sockets(Vec::new())),
        (at(9.0), Step::Input(Input::Stop)),
    ];
    let mut keep = Keep::default();
    let opts = Options {
        engine: Some(10_000),
        sockets_at_start: true,
        sockets_every: Some(Duration::from_secs(4)),
        sockets_at_end: true,
        ..Options::default()
    };
    play(steps, &mut keep, &opts);
    // At the start (before the banner), at 4 and 8 s, and at the end.
    assert_eq!(keep.snapshots_at(), [START, at(4.0), at(8.0), at(9.0)]);
    assert!(keep.started_at >= Some(START));
    assert_eq!(keep.close_wait_at_end, Some(0), "reconciled away");
}

#[test]
fn a_failed_opening_snapshot_ends_the_command_and_a_later_one_does_not() {
    let (_tx, rx) = inputs();
    let mut keep = Keep::default();
    let opts = Options {
        engine: Some(10_000),
        sockets_at_start: true,
        sockets_every: Some(Duration::from_secs(1)),
        deadline: Some(Duration::from_secs(5)),
        opening_hint: " (try --no-seed)",
        ..Options::default()
    };
    let mut failing = Scripted::new(START, vec![(START, Step::SocketsFail)]);
    let err = run(&mut failing, &mut keep, &opts, &rx).unwrap_err();
    assert!(format!("{err:#}").contains("try --no-seed"), "{err:#}");
    // Failing from 2 s on: reported, and the loop goes on to its deadline.
    let mut later = Scripted::new(START, vec![(at(2.0), Step::SocketsFail)]);
    let mut keep = Keep::default();
    run(&mut later, &mut keep, &opts, &rx).expect("a later failure is not fatal");
    assert_eq!(keep.snapshots_at(), [START, at(1.0)]);
}

#[test]
fn scrapes_are_answered_from_the_engine_after_a_drain_all_with_one_rendering() {
    let (tx, rx) = inputs();
    let mut steps = records(leak(java(), 4, at(0.1), 100_000_000));
    let (s1, a1) = crate::http::Scrape::channel();
    let (s2, a2) = crate::http::Scrape::channel();
    steps.push((at(1.0), Step::Input(Input::Scrape(s1))));
    steps.push((at(1.0), Step::Input(Input::Scrape(s2))));
    steps.push((at(1.5), Step::Input(Input::Stop)));
    let mut source = Scripted::new(START, steps);
    let opts = Options {
        engine: Some(10_000),
        ..Options::default()
    };
    run(&mut source, &mut Keep::default(), &opts, &rx).unwrap();
    drop(tx);
    let first = a1.blocking_recv().expect("answered");
    let second = a2.blocking_recv().expect("answered");
    assert_eq!(first, second);
    let text = String::from_utf8_lossy(&first);
    assert!(
        text.contains(
            r#"tcptrace_close_wait_sockets{pid="4242",comm="java",workload="unknown"} 4"#
        ),
        "{text}"
    );
}

// ------------------------------------------------------------ commands

#[test]
fn trace_prints_each_event_and_loss_and_stops_at_its_count() {
    let mut steps = records(leak(java(), 3, at(0.5), SEC));
    steps.push((
        at(0.7),
        Step::Lost(Lost {
            ring_full: 4,
            ..Lost::default()
        }),
    ));
    steps.push((at(9.0), Step::Input(Input::Stop)));
    let clock = tcptrace_core::clock::WallClock {
        offset_ns: WALL_OFFSET_NS as i128,
    };
    let mut trace = Trace::new(Vec::new(), false, clock, None);
    play(steps, &mut trace, &Options::default());
    let text = String::from_utf8(trace.printer.into_inner()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], tcptrace_core::output::text::HEADER);
    assert_eq!(lines.iter().filter(|l| l.contains("4242")).count(), 9);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ESTABLISHED -> CLOSE_WAIT") && l.contains("java")),
        "{text}"
    );
    assert!(lines.iter().any(|l| l.contains("LOST 4 events")), "{text}");

    // JSON, stopped after 4 events.
    let mut steps = records(leak(java(), 3, at(0.5), SEC));
    steps.push((at(9.0), Step::Input(Input::Stop)));
    let mut trace = Trace::new(Vec::new(), true, clock, Some(4));
    play(steps, &mut trace, &Options::default());
    let text = String::from_utf8(trace.printer.into_inner()).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["pid"], 4242);
    }
}

#[test]
fn stats_prints_a_summary_per_interval_from_the_engine() {
    let mut steps = records(leak(java(), 6, at(0.1), 300_000_000));
    steps.push((at(4.2), Step::Input(Input::Stop)));
    let mut stats = Stats::new(Vec::new(), true, Duration::from_secs(2));
    let opts =
        super::super::cmd::stats::engine_options(true, None, 10_000, Duration::from_secs(2), None);
    play(steps, &mut stats, &opts);
    let out = String::from_utf8(stats.into_inner()).unwrap();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "at 2 s and 4 s: {out}");
    assert_eq!(lines[1]["states"]["CLOSE_WAIT"], 6);
    assert_eq!(lines[1]["close_wait_by_process"][0]["comm"], "java");
    assert_eq!(lines[1]["close_wait_by_process"][0]["count"], 6);
    assert_eq!(lines[1]["lost"]["ring_full"], 0);
}

#[test]
fn record_writes_every_record_and_its_snapshots_into_a_readable_file() {
    let dir = std::env::temp_dir().join(format!("tcptrace-session-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("s.tcptrace");
    let cfg = crate::cli::RecordConfig {
        load: crate::ebpf::LoadOptions::default(),
        user_filter: tcptrace_core::filter::UserFilter::default(),
        filter_args: vec!["--port".into(), "5432".into()],
        output: file.clone(),
        duration: Some(Duration::from_secs(5)),
        quiet: true,
        rotate_size: None,
        rotate_time: None,
        keep: 5,
        snapshot_every: Duration::from_secs(2),
        force: false,
    };
    let c = Conn::new(99, (ip(2), 40_099), (ip(5), 5432), Some(java()));
    let mut steps = records(leak(java(), 4, at(0.5), SEC));
    steps.push((START, Step::Sockets(vec![c.seen(TcpState::Established, 9)])));
    steps.push((
        at(2.2),
        Step::Lost(Lost {
            map_full: 2,
            ..Lost::default()
        }),
    ));
    let (_tx, rx) = inputs();
    let mut source = Scripted::new(START, steps);
    let opts = crate::cmd::record::options(&cfg);
    let mut recorder = crate::cmd::record::Recorder::create(cfg, &source).unwrap();
    run(&mut source, &mut recorder, &opts, &rx).unwrap();
    let reader = crate::source::recording::open_reader(&file).unwrap();
    assert_eq!(reader.header.filters, ["--port", "5432"]);
    assert_eq!(reader.header.start_mono_ns, START);
    let recs: Vec<Record> = reader.collect();
    let events = recs
        .iter()
        .filter(|r| matches!(r, Record::Event(_)))
        .count();
    assert_eq!(events, 12);
    let lost: u64 = recs
        .iter()
        .filter_map(|r| match r {
            Record::Lost { lost, .. } => Some(lost.map_full),
            _ => None,
        })
        .sum();
    assert_eq!(lost, 2);
    // Opening, every 2 s (2, 4), closing.
    let snapshots = recs
        .iter()
        .filter(|r| matches!(r, Record::Snapshot { .. }))
        .count();
    assert_eq!(snapshots, 4);
    let _ = std::fs::remove_dir_all(&dir);
}

fn watch_config(json: bool, exit_on_alert: bool) -> crate::cli::WatchConfig {
    let overrides = crate::cli::RuleOverrides {
        close_wait: Some(5),
        close_wait_host: Some(0),
        lost: Some(0),
        ..Default::default()
    };
    crate::cli::WatchConfig {
        load: crate::ebpf::LoadOptions::default(),
        user_filter: tcptrace_core::filter::UserFilter::default(),
        json,
        interval: Duration::from_secs(1),
        duration: None,
        seed: false,
        reconcile: None,
        max_conns: 10_000,
        metrics: None,
        exit_on_alert,
        exec: None,
        config: None,
        rules: overrides.rules(None, false).unwrap(),
        overrides,
    }
}

#[test]
fn watch_alerts_as_json_and_exit_on_alert_exits_1() {
    let steps = || {
        let mut s = records(leak(java(), 8, at(0.1), 200_000_000));
        s.push((at(6.0), Step::Input(Input::Stop)));
        s
    };
    let opts = crate::cmd::watch::options(&watch_config(true, false));
    let mut watch = Watch::new(watch_config(true, false), Vec::new());
    assert_eq!(play(steps(), &mut watch, &opts), ExitCode::SUCCESS);
    let out = String::from_utf8(watch.into_inner()).unwrap();
    let alerts: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = alerts
        .iter()
        .find(|a| a["rule"] == "close_wait_count")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(count["state"], "firing");
    assert_eq!(count["pid"], 4242);
    assert_eq!(count["comm"], "java");
    assert!(count["count"].as_u64() >= Some(5));

    let mut watch = Watch::new(watch_config(true, true), Vec::new());
    assert_eq!(play(steps(), &mut watch, &opts), ExitCode::from(1));
}

#[test]
fn doctor_names_a_close_wait_leak_and_exits_1() {
    let mut steps = records(leak(java(), 40, at(0.1), 100_000_000));
    // sock_diag agrees once they are leaked (the closing reconciliation).
    steps.push((at(5.0), Step::Sockets(leak_sockets(java(), 40))));
    steps.push((at(8.0), Step::Input(Input::Stop)));
    let mut doctor = Doctor::new(Vec::new(), true, Duration::from_secs(10));
    let code = play(
        steps,
        &mut doctor,
        &crate::cmd::doctor::options(Duration::from_secs(10)),
    );
    assert_eq!(code, ExitCode::from(1));
    let out = String::from_utf8(doctor.into_inner()).unwrap();
    let findings: serde_json::Value = serde_json::from_str(&out).unwrap();
    let leak = findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "close_wait_leak")
        .unwrap_or_else(|| panic!("{out}"));
    let evidence = leak["evidence"].to_string();
    assert!(
        evidence.contains("java") && evidence.contains("4242"),
        "{evidence}"
    );
}

#[test]
fn top_gets_a_refresh_at_start_every_interval_and_a_page_per_view_change() {
    let (app_tx, app_rx) = std::sync::mpsc::channel();
    let mut steps = records(leak(java(), 3, at(0.1), 100_000_000));
    let request = tcptrace_core::app::ViewRequest::default();
    steps.push((at(1.5), Step::Input(Input::View(request.clone()))));
    steps.push((at(2.5), Step::Input(Input::Stop)));
    let mut feed = TopFeed::new(app_tx, request);
    let cfg = crate::cli::TopConfig {
        load: crate::ebpf::LoadOptions::default(),
        user_filter: tcptrace_core::filter::UserFilter::default(),
        interval: Duration::from_secs(1),
        seed: true,
        reconcile: Some(Duration::from_secs(10)),
        max_conns: 10_000,
        metrics: None,
        replay: None,
    };
    play(steps, &mut feed, &crate::cmd::top::options(&cfg));
    let got: Vec<crate::cmd::top::AppEvent> = app_rx.try_iter().collect();
    let data: Vec<&tcptrace_core::app::TopData> = got
        .iter()
        .filter_map(|e| match e {
            crate::cmd::top::AppEvent::Engine(Action::Data(d)) => Some(&**d),
            _ => None,
        })
        .collect();
    // At the start, at 1 s and at 2 s.
    assert_eq!(data.len(), 3);
    assert_eq!(data[2].snap.states.get("CLOSE_WAIT"), Some(&3));
    let pages = got
        .iter()
        .filter(|e| matches!(e, crate::cmd::top::AppEvent::Engine(Action::Page(_))))
        .count();
    assert_eq!(pages, 1);
    assert_eq!(feed.summary.events, 9);
}

#[test]
fn watch_reloads_its_rules_on_sighup_and_evaluates_at_once() {
    let dir = std::env::temp_dir().join(format!("tcptrace-session-hup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("watch.toml");
    std::fs::write(
        &config,
        "close_wait_per_process = 1000\nclose_wait_host = 0\nlost_events = 0\n",
    )
    .unwrap();
    let mut cfg = watch_config(true, false);
    cfg.config = Some(config.clone());
    cfg.overrides = crate::cli::RuleOverrides::default();
    cfg.rules = cfg.overrides.rules(Some(&config), false).unwrap();
    // 8 leaked sockets in sock_diag from the start: the first evaluation,
    // right after seeding, sees them (no alert under 1000).
    let c = |i| Conn::new(i, (ip(2), 40_000 + i as u16), (ip(5), 5432), Some(java()));
    let seen = (0..8)
        .map(|i| c(i).seen(TcpState::CloseWait, 10 + i))
        .collect();
    let steps = vec![
        (START, Step::Sockets(seen)),
        (at(2.5), Step::Input(Input::Hangup)),
        (at(4.0), Step::Input(Input::Stop)),
    ];
    let opts = Options {
        sockets_at_start: true,
        ..crate::cmd::watch::options(&cfg)
    };
    // Before the reload the rules are 1000: write 5 just before SIGHUP.
    let mut watch = Watch::new(cfg, Vec::new());
    let (_tx, rx) = inputs();
    let mut source = Scripted::new(START, steps);
    std::fs::write(
        &config,
        "close_wait_per_process = 5\nclose_wait_host = 0\nlost_events = 0\n",
    )
    .unwrap();
    run(&mut source, &mut watch, &opts, &rx).unwrap();
    let out = String::from_utf8(watch.into_inner()).unwrap();
    let alerts: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alerts.len(), 1, "{out}");
    assert_eq!(alerts[0]["rule"], "close_wait_count");
    assert_eq!(alerts[0]["count"], 8);
    // It fired after the reload at 2.5 s, not before.
    let wall = alerts[0]["ts_ns"].as_u64().unwrap();
    assert!(wall >= at(2.5) + WALL_OFFSET_NS, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stats_text_names_the_holder_and_trace_json_tells_every_loss_cause() {
    let mut steps = records(leak(java(), 3, at(0.1), 100_000_000));
    steps.push((at(3.5), Step::Input(Input::Stop)));
    let mut stats = Stats::new(Vec::new(), false, Duration::from_secs(1));
    play(
        steps,
        &mut stats,
        &crate::cmd::stats::engine_options(false, None, 10_000, Duration::from_secs(1), None),
    );
    let text = String::from_utf8(stats.into_inner()).unwrap();
    assert!(text.contains("CLOSE_WAIT by process:"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("4242") && l.contains("java") && l.contains(" 3 ")),
        "{text}"
    );

    // Trace, JSON, --count 2: the losses are still told after the count
    // (the count stops the loop at 0.1 s; the final report tells them).
    let mut steps = records(leak(java(), 3, at(0.1), 100_000_000));
    steps.push((
        at(0.05),
        Step::Lost(Lost {
            probe_failed: 2,
            ring_full: 1,
            ..Lost::default()
        }),
    ));
    steps.push((at(4.0), Step::Input(Input::Stop)));
    let clock = tcptrace_core::clock::WallClock {
        offset_ns: WALL_OFFSET_NS as i128,
    };
    let mut trace = Trace::new(Vec::new(), true, clock, Some(2));
    play(steps, &mut trace, &Options::default());
    let out = String::from_utf8(trace.printer.into_inner()).unwrap();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().filter(|l| l["kind"] == "transition").count(),
        2,
        "{out}"
    );
    let lost = lines
        .iter()
        .find(|l| l["kind"] == "lost")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(lost["probe_failed"], 2);
    assert_eq!(lost["ring_full"], 1);
    assert_eq!(lost["total"], 3);
}

#[test]
fn a_recording_plays_through_the_loop_and_a_seek_back_starts_a_fresh_engine() {
    use tcptrace_core::record::{Header, Writer};
    let dir = std::env::temp_dir().join(format!("tcptrace-session-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("leak.tcptrace");
    let header = Header {
        start_mono_ns: START,
        start_wall_ns: START + WALL_OFFSET_NS,
        clock_offset_ns: WALL_OFFSET_NS as i64,
        port_range: (32768, 60999),
        ..Header::default()
    };
    let mut w = Writer::new(std::fs::File::create(&file).unwrap(), &header).unwrap();
    w.snapshot(START, &[1], &[], None).unwrap();
    for e in leak(java(), 10, at(0.5), SEC / 2) {
        w.event(&e).unwrap();
        w.flush().unwrap();
    }
    w.finish().unwrap();

    /// Keeps the CLOSE_WAIT count after each playback command, and whether
    /// the engine was replaced.
    #[derive(Default)]
    struct Played(Vec<(bool, u64)>);
    impl Consumer for Played {
        fn input(&mut self, _input: Input, ctx: &mut Ctx<'_>) -> Result<Flow> {
            let restarted = ctx.restarted;
            let cw = ctx
                .snapshot()
                .states
                .get("CLOSE_WAIT")
                .copied()
                .unwrap_or(0);
            self.0.push((restarted, cw));
            Ok(Flow::Continue)
        }
        fn finish(&mut self, _ctx: &mut Ctx<'_>) -> Result<ExitCode> {
            Ok(ExitCode::SUCCESS)
        }
    }
    use tcptrace_core::app::PlaybackCommand;
    let (tx, rx) = inputs();
    // Paused at the start; 3 s forward (1 s steps), then 2 s back.
    for cmd in [
        PlaybackCommand::TogglePlay,
        PlaybackCommand::Step(3),
        PlaybackCommand::Step(-2),
    ] {
        tx.send(Input::Playback(cmd)).unwrap();
    }
    tx.send(Input::Stop).unwrap();
    let mut source =
        crate::source::Recording::open(&file, 1.0, Duration::from_secs(1), false).unwrap();
    let mut played = Played::default();
    let opts = Options {
        engine: Some(10_000),
        ..Options::default()
    };
    run(&mut source, &mut played, &opts, &rx).unwrap();
    // Connections leak at 0.5, 1.0, ... s, each CLOSE_WAIT 1 ms later: 5
    // by 3 s, 1 by 1 s.
    assert_eq!(played.0, [(false, 0), (false, 5), (true, 1)]);
    let _ = std::fs::remove_dir_all(&dir);
}
