//! Reports of recordings written in memory: a leak that begins and ends
//! before the recording does is named with its peak, when and how long;
//! `--at` and `--from`/`--to` give the state and the holders of a moment or
//! a window; the timeline's step fits the recording; and the counts the
//! report keeps at every event agree with the engine's own walk of its
//! table at any moment (a property over random lifecycles).

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::{
    fixtures::{Conn, SEC, ip, leak, leak_sockets, owner},
    model::{Event, EventKind, Owner, SeenSocket, TcpState, TcpState::*, TwEndReason},
    record::{Header, Writer},
};

const MS: u64 = 1_000_000;
/// The recording's first record (monotonic).
const T0: u64 = 1_000 * SEC;

/// Wall clock of `T0`: 2026-12-01T16:05:00Z.
fn start_wall() -> u64 {
    let t: jiff::Timestamp = "2026-12-01T16:05:00Z".parse().unwrap();
    t.as_nanosecond() as u64
}

fn offset() -> i64 {
    start_wall() as i64 - T0 as i64
}

fn wall(mono: u64) -> u64 {
    (mono as i64 + offset()) as u64
}

fn header() -> Header {
    Header {
        tcptrace_version: "0.1.0".into(),
        host: "h".into(),
        kernel: "6.18".into(),
        clock_offset_ns: offset(),
        hook: "tp_btf".into(),
        timewait_hook: "timer tracepoints".into(),
        filters: vec![],
        port_range: (32768, 60999),
        start_mono_ns: T0,
        start_wall_ns: start_wall(),
        stacks: false,
    }
}

fn recording(write: impl FnOnce(&mut Writer<Vec<u8>>)) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &header()).unwrap();
    write(&mut w);
    w.finish().unwrap()
}

fn report(bytes: &[u8], opts: &Options) -> Result<Report, ReportError> {
    let mut reader = Reader::new(bytes).unwrap();
    build_with(&mut reader, "t.tcptrace", opts)
}

fn offset_arg(secs_ms: u64) -> Option<TimeArg> {
    Some(TimeArg {
        text: format!("{secs_ms}ms"),
        spec: TimeSpec::Offset(secs_ms * MS),
    })
}

fn leakyd() -> Owner {
    owner(4242, "leakyd")
}

/// The `i`th socket of `fixtures::leak`.
fn leaked(o: Owner, i: u64) -> Conn {
    Conn::new(i, (ip(2), 40_000 + i as u16), (ip(5), 5432), Some(o))
}

/// This side finally closes a CLOSE_WAIT socket.
fn release(c: &Conn, ts: u64) -> [Event; 2] {
    [
        c.at(ts, CloseWait, LastAck),
        c.at(ts + 100_000, LastAck, Close),
    ]
}

fn tw_end(c: &Conn, ts: u64) -> Event {
    Event {
        kind: EventKind::TwEnd,
        sk: c.tw_sk(),
        link: None,
        reason: Some(TwEndReason::Expired),
        ..c.at(ts, TimeWait, Close)
    }
}

/// 9 s: the opening snapshot, leakyd leaks 20 CLOSE_WAIT sockets from 1 s
/// (one every 10 ms) and closes them at 6 s (one a ms), the closing
/// snapshot at 9 s.
fn leak_then_release() -> Vec<u8> {
    recording(|w| {
        w.snapshot(T0, &[1], &[], None).unwrap();
        for e in leak(leakyd(), 20, T0 + SEC, 10 * MS) {
            w.event(&e).unwrap();
        }
        for i in 0..20 {
            for e in release(&leaked(leakyd(), i), T0 + 6 * SEC + i * MS) {
                w.event(&e).unwrap();
            }
        }
        w.snapshot(T0 + 9 * SEC, &[1], &[], None).unwrap();
    })
}

#[test]
fn a_leak_released_before_the_end_is_named_with_its_peak_when_and_how_long() {
    let r = report(&leak_then_release(), &Options::default()).unwrap();
    // The end knows nothing of it...
    assert_eq!(r.summary.states["CLOSE_WAIT"], 0);
    assert!(r.summary.close_wait_by_process.is_empty());
    // ...the holders do.
    assert_eq!(r.close_wait_holders.len(), 1, "{:?}", r.close_wait_holders);
    let h = &r.close_wait_holders[0];
    assert_eq!((h.pid, h.comm.as_deref()), (Some(4242), Some("leakyd")));
    assert_eq!(h.held.peak, 20);
    // The 20th socket entered CLOSE_WAIT 1 ms after its connect at 1.19 s.
    assert_eq!(h.held.peak_ns, wall(T0 + SEC + 190 * MS + MS));
    assert_eq!(h.held.first_ns, wall(T0 + SEC + MS));
    assert_eq!(h.held.last_ns, wall(T0 + 6 * SEC + 19 * MS));
    assert_eq!(h.held.held_for_ms, 5_018);
    assert_eq!(h.held.held_total_ms, 5_018);
    assert_eq!(h.held.count_at_end, 0);
    // The first socket: CLOSE_WAIT from 1.001 s to 6.000 s.
    assert_eq!(h.oldest_age_ms, 4_999);
    assert!(!h.oldest_age_is_lower_bound);
    assert_eq!(h.peers, vec!["10.0.0.5:5432".to_string()]);
    assert_eq!(r.holders_dropped.close_wait, 0);

    // A 9 s recording: about 60 points, not one.
    let points = &r.close_wait_timeline;
    assert!((55..=65).contains(&points.len()), "{} points", points.len());
    assert_eq!(r.window.points, points.len() as u64);
    assert_eq!(r.window.step_ns, 150 * MS);
    assert_eq!(points[0].ts_ns, wall(T0));
    assert_eq!(points.last().unwrap().ts_ns, wall(T0 + 9 * SEC));
    let at = |s_ms: u64| {
        points
            .iter()
            .find(|p| p.ts_ns == wall(T0 + s_ms * MS))
            .unwrap_or_else(|| panic!("a point at {s_ms} ms"))
    };
    assert_eq!(at(3_000).close_wait, 20);
    assert_eq!(
        at(3_000).top,
        vec![(Some(4242), Some("leakyd".to_string()), 20)]
    );
    assert_eq!(at(900).close_wait, 0);
    // 6.0 s: the first release happened; the most since 5.85 s was 20.
    assert_eq!((at(6_000).close_wait, at(6_000).close_wait_max), (19, 20));
    assert_eq!((at(6_150).close_wait, at(6_150).close_wait_max), (0, 19));

    let mut text = Vec::new();
    write_text(&mut text, &r).unwrap();
    let text = String::from_utf8(text).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("leakyd"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(" 20 "), "{line}");
    assert!(line.contains("16:05:01.191"), "{line}");
    assert!(text.contains("CLOSE_WAIT holders"), "{text}");
    assert!(
        text.contains("timeline (step 150.0ms, 61 points)"),
        "{text}"
    );
    // A run of identical points is one line and how long it lasted: 20
    // held from 1.2 s to 5.85 s.
    assert!(
        text.contains("(the same for 31 more points, to 16:05:05.850)"),
        "{text}"
    );
    assert!(
        text.contains("state at 16:05:09.000 (end of the recording):"),
        "{text}"
    );

    let mut csv = Vec::new();
    write_csv(&mut csv, &r).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert!(
        csv.contains("close_wait_holders,4242 leakyd,peak,20"),
        "{csv}"
    );
    assert!(csv.contains("window,window,points,61"), "{csv}");
}

#[test]
fn at_a_moment_inside_the_leak_shows_it_and_after_it_does_not() {
    let file = leak_then_release();
    let inside = report(
        &file,
        &Options {
            at: offset_arg(3_000),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(inside.summary.ts_ns, wall(T0 + 3 * SEC));
    assert_eq!(inside.summary.states["CLOSE_WAIT"], 20);
    let p = &inside.summary.close_wait_by_process[0];
    assert_eq!((p.pid, p.count), (Some(4242), 20));
    assert_eq!(inside.window.at_ns, Some(wall(T0 + 3 * SEC)));
    assert_eq!(inside.close_wait_holders[0].held.count_at_end, 20);
    assert!(
        inside
            .close_wait_timeline
            .iter()
            .all(|p| p.ts_ns <= wall(T0 + 3 * SEC))
    );
    // Ages are the ages then.
    assert_eq!(inside.summary.close_wait[0].age_ms, 1_999);

    let after = report(
        &file,
        &Options {
            at: offset_arg(7_000),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(after.summary.states["CLOSE_WAIT"], 0);
    assert!(after.summary.close_wait_by_process.is_empty());
    // It held before that moment: still a holder, none held at it.
    assert_eq!(after.close_wait_holders[0].held.peak, 20);
    assert_eq!(after.close_wait_holders[0].held.count_at_end, 0);
}

#[test]
fn a_window_covers_its_own_stretch_from_the_true_state() {
    let file = leak_then_release();
    // Inside the leak: it was already held when the window opened.
    let r = report(
        &file,
        &Options {
            from: offset_arg(2_000),
            to: offset_arg(4_000),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(
        (r.window.from_ns, r.window.to_ns),
        (wall(T0 + 2 * SEC), wall(T0 + 4 * SEC))
    );
    assert_eq!(r.window.events, 0, "nothing happened between 2 and 4 s");
    assert_eq!(r.recording.events, 100, "the whole file");
    let h = &r.close_wait_holders[0];
    assert_eq!(h.held.peak, 20);
    assert_eq!(h.held.peak_ns, wall(T0 + 2 * SEC));
    assert_eq!(h.held.first_ns, wall(T0 + 2 * SEC));
    assert_eq!(h.held.last_ns, wall(T0 + 4 * SEC));
    assert_eq!(h.held.count_at_end, 20);
    // Counts restart with the window: no transition in it.
    assert_eq!(r.summary.transitions_total, 0);
    assert_eq!(r.summary.states["CLOSE_WAIT"], 20);
    let ts: Vec<u64> = r.close_wait_timeline.iter().map(|p| p.ts_ns).collect();
    assert!(
        ts.iter()
            .all(|&t| (wall(T0 + 2 * SEC)..=wall(T0 + 4 * SEC)).contains(&t))
    );
    assert_eq!(ts[0], wall(T0 + 2 * SEC));
    assert_eq!(*ts.last().unwrap(), wall(T0 + 4 * SEC));
    assert!((55..=65).contains(&ts.len()), "{}", ts.len());

    // After the release: nobody held CLOSE_WAIT in it.
    let late = report(
        &file,
        &Options {
            from: offset_arg(7_000),
            ..Options::default()
        },
    )
    .unwrap();
    assert!(late.close_wait_holders.is_empty());
    assert_eq!(late.window.to_ns, wall(T0 + 9 * SEC));

    // The release itself: 40 transitions, counted in the window only.
    let release = report(
        &file,
        &Options {
            from: offset_arg(5_500),
            to: offset_arg(6_500),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(release.window.events, 40);
    assert_eq!(release.summary.transitions_total, 40);
    assert_eq!(release.close_wait_holders[0].held.count_at_end, 0);
    assert_eq!(
        release.close_wait_holders[0].held.last_ns,
        wall(T0 + 6 * SEC + 19 * MS)
    );
}

#[test]
fn a_spike_between_two_points_keeps_its_peak() {
    let spiky = owner(7, "spiky");
    let file = recording(|w| {
        w.snapshot(T0, &[1], &[], None).unwrap();
        let conns: Vec<Conn> = (0..7)
            .map(|i| {
                Conn::new(
                    100 + i,
                    (ip(3), 41_000 + i as u16),
                    (ip(6), 80),
                    Some(spiky),
                )
            })
            .collect();
        for c in &conns {
            for e in c.leaked(T0 + 7 * SEC) {
                w.event(&e).unwrap();
            }
        }
        for c in &conns {
            for e in release(c, T0 + 7 * SEC + 50 * MS) {
                w.event(&e).unwrap();
            }
        }
        w.snapshot(T0 + 9 * SEC, &[1], &[], None).unwrap();
    });
    let r = report(
        &file,
        &Options {
            step_ns: Some(5 * SEC),
            ..Options::default()
        },
    )
    .unwrap();
    let ts: Vec<u64> = r.close_wait_timeline.iter().map(|p| p.ts_ns).collect();
    assert_eq!(ts, vec![wall(T0), wall(T0 + 5 * SEC), wall(T0 + 9 * SEC)]);
    let end = &r.close_wait_timeline[2];
    assert_eq!((end.close_wait, end.close_wait_max), (0, 7));
    let h = &r.close_wait_holders[0];
    assert_eq!((h.comm.as_deref(), h.held.peak), (Some("spiky"), 7));
    assert_eq!(h.held.held_for_ms, 49);
    assert_eq!(r.window.step_ns, 5 * SEC);
}

#[test]
fn a_holder_that_came_and_went_counts_the_time_it_held() {
    let o = owner(9, "flappy");
    let file = recording(|w| {
        w.snapshot(T0, &[1], &[], None).unwrap();
        for (n, at) in [(0, SEC), (1, 5 * SEC)] {
            let c = Conn::new(n, (ip(3), 42_000 + n as u16), (ip(6), 80), Some(o));
            for e in c.leaked(T0 + at) {
                w.event(&e).unwrap();
            }
            for e in release(&c, T0 + at + SEC + MS) {
                w.event(&e).unwrap();
            }
        }
        w.snapshot(T0 + 9 * SEC, &[1], &[], None).unwrap();
    });
    let r = report(&file, &Options::default()).unwrap();
    let h = &r.close_wait_holders[0].held;
    assert_eq!(h.held_for_ms, 5_000);
    assert_eq!(h.held_total_ms, 2_000);
    let mut text = Vec::new();
    write_text(&mut text, &r).unwrap();
    assert!(
        String::from_utf8(text)
            .unwrap()
            .contains("5.0s (2.0s held)")
    );
}

#[test]
fn time_wait_is_held_per_destination_and_per_service() {
    let curl = owner(77, "curl");
    let nginx = owner(88, "nginx");
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let clients: Vec<Conn> = (0..10)
        .map(|i| Conn::new(200 + i, (ip(2), 50_000 + i as u16), (ip(9), 80), Some(curl)))
        .collect();
    let listener = Conn::new(500, (ip(2), 8080), (any, 0), Some(nginx));
    let accepted: Vec<Conn> = (0..5)
        .map(|i| {
            Conn::new(
                600 + i,
                (ip(2), 8080),
                (ip(7), 30_000 + i as u16),
                Some(nginx),
            )
        })
        .collect();
    let file = recording(|w| {
        w.snapshot(T0, &[1], &[], None).unwrap();
        w.event(&listener.at(T0 + MS, Close, Listen)).unwrap();
        for (i, c) in clients.iter().enumerate() {
            for e in c.client_closes_first(T0 + 2 * SEC + i as u64 * MS) {
                w.event(&e).unwrap();
            }
        }
        for (i, c) in accepted.iter().enumerate() {
            for e in c.server_closes_first(T0 + 3 * SEC + i as u64 * MS) {
                w.event(&e).unwrap();
            }
        }
        for c in &clients {
            w.event(&tw_end(c, T0 + 5 * SEC)).unwrap();
        }
        w.snapshot(
            T0 + 9 * SEC,
            &[1],
            &[listener.seen(Listen, 1)]
                .into_iter()
                .chain(accepted.iter().map(|c| SeenSocket {
                    timer_left_ms: Some(54_000),
                    ..c.seen(TimeWait, 0)
                }))
                .collect::<Vec<_>>(),
            None,
        )
        .unwrap();
    });
    let r = report(&file, &Options::default()).unwrap();
    let d = &r.time_wait_destination_holders;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].daddr, d[0].dport), (ip(9), 80));
    assert_eq!((d[0].pid, d[0].comm.as_deref()), (Some(77), Some("curl")));
    assert_eq!(
        (d[0].held.peak, d[0].begun, d[0].held.count_at_end),
        (10, 10, 0)
    );
    assert_eq!(d[0].held.peak_ns, wall(T0 + 2 * SEC + 9 * MS + 400_000));
    assert_eq!(d[0].held.last_ns, wall(T0 + 5 * SEC));
    assert_eq!(d[0].ports, 28_232);
    assert!((d[0].port_share_at_peak - 10.0 / 28_232.0).abs() < 1e-12);
    let s = &r.time_wait_service_holders;
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!((s[0].netns, s[0].saddr, s[0].sport), (1, ip(2), 8080));
    assert_eq!((s[0].pid, s[0].comm.as_deref()), (Some(88), Some("nginx")));
    assert_eq!((s[0].held.peak, s[0].held.count_at_end), (5, 5));
    assert!(s[0].rate_per_sec > 0.0);
    // The timeline names the groups.
    let mid = r
        .close_wait_timeline
        .iter()
        .find(|p| p.ts_ns == wall(T0 + 4500 * MS))
        .unwrap();
    assert_eq!(mid.time_wait, 15);
    assert_eq!(mid.time_wait_top[0].kind, "destination");
    assert_eq!(mid.time_wait_top[0].addr, "10.0.0.9:80");
    assert_eq!(mid.time_wait_top[1].kind, "service");
    assert_eq!(mid.time_wait_top[1].netns, Some(1));
    // The end agrees with the engine's own walk.
    assert_eq!(r.summary.states["TIME_WAIT"], 5);
    assert_eq!(r.close_wait_timeline.last().unwrap().time_wait, 5);
}

/// Many source addresses to one destination: each (namespace, local
/// address) has its own ports, so the share is the fullest budget's, not
/// the destination's total over one range; a fixed local port is not an
/// ephemeral one and counts in no budget.
#[test]
fn a_destination_share_is_its_fullest_budget() {
    let curl = owner(77, "curl");
    let mut conns: Vec<Conn> = Vec::new();
    for (source, n) in [(ip(3), 6u64), (ip(4), 4), (ip(5), 2)] {
        for i in 0..n {
            conns.push(Conn::new(
                conns.len() as u64 + 300,
                (source, 50_000 + i as u16),
                (ip(9), 80),
                Some(curl),
            ));
        }
    }
    // From port 1000 (below the range): bound by the client, no budget.
    conns.push(Conn::new(399, (ip(6), 1000), (ip(9), 80), Some(curl)));
    let file = recording(|w| {
        w.snapshot(T0, &[1], &[], None).unwrap();
        for (i, c) in conns.iter().enumerate() {
            for e in c.client_closes_first(T0 + SEC + i as u64 * MS) {
                w.event(&e).unwrap();
            }
        }
        w.snapshot(T0 + 3 * SEC, &[1], &[], None).unwrap();
    });
    let r = report(&file, &Options::default()).unwrap();
    let d = &r.time_wait_destination_holders;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].held.peak, 13);
    assert_eq!(d[0].ports, 28_232);
    assert!(
        (d[0].port_share_at_peak - 6.0 / 28_232.0).abs() < 1e-12,
        "{}",
        d[0].port_share_at_peak
    );
    assert_eq!(
        (d[0].budget_saddr, d[0].budget_time_wait, d[0].budget_netns),
        (Some(ip(3)), Some(6), Some(1))
    );
}

#[test]
fn moments_outside_the_recording_name_its_span() {
    let file = leak_then_release();
    let err = report(
        &file,
        &Options {
            at: offset_arg(20_000),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "--at 20000ms is outside the recording, which spans 2026-12-01T16:05:00Z to \
         2026-12-01T16:05:09Z (9.0s; offsets 0 to 9.0s)"
    );
    let before = TimeArg {
        text: "16:04:00".into(),
        spec: TimeSpec::TimeOfDay((16 * 3600 + 4 * 60) * SEC),
    };
    let err = report(
        &file,
        &Options {
            from: Some(before),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ReportError::Outside { flag: "--from", .. }),
        "{err}"
    );
    let err = report(
        &file,
        &Options {
            from: offset_arg(5_000),
            to: offset_arg(2_000),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "--from 5000ms is after --to 2000ms");
    let err = report(
        &file,
        &Options {
            step_ns: Some(1_000),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "--step 1.0us makes 9000001 timeline points over 9.0s: at most 100000; give a step of at least 90.0us"
    );
    let empty = recording(|_| {});
    let err = report(
        &empty,
        &Options {
            at: offset_arg(0),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().ends_with("which has no records"), "{err}");
    // The whole of an empty recording is no error.
    assert!(report(&empty, &Options::default()).is_ok());
}

#[test]
fn times_of_day_and_absolute_times_resolve_on_the_recording_clock() {
    let clock = WallClock {
        offset_ns: i128::from(offset()),
    };
    let tod =
        |h: u64, m: u64, s_ms: u64| TimeSpec::TimeOfDay((h * 3600 + m * 60) * SEC + s_ms * MS);
    assert_eq!(
        window::resolve(tod(16, 5, 3_250), T0, &clock),
        Some(T0 + 3_250 * MS)
    );
    let abs: jiff::Timestamp = "2026-12-01T16:05:03Z".parse().unwrap();
    assert_eq!(
        window::resolve(TimeSpec::Wall(abs.as_nanosecond() as u64), T0, &clock),
        Some(T0 + 3 * SEC)
    );
    assert_eq!(
        window::resolve(TimeSpec::Offset(90 * SEC), T0, &clock),
        Some(T0 + 90 * SEC)
    );
    // Earlier than the start on its day: the next day (a recording past
    // midnight), never before the start.
    assert_eq!(
        window::resolve(tod(16, 4, 0), T0, &clock),
        Some(T0 + 86_400 * SEC - 60 * SEC)
    );
    let before: jiff::Timestamp = "2026-12-01T16:04:59Z".parse().unwrap();
    assert_eq!(
        window::resolve(TimeSpec::Wall(before.as_nanosecond() as u64), T0, &clock),
        None
    );
}

/// A recording of `hours` with one connection leaked per `every` from the
/// start: the step fits it.
fn sparse(span: u64, every: u64) -> Vec<u8> {
    recording(|w| {
        w.snapshot(T0, &[1], &[], None).unwrap();
        let o = owner(3, "slow");
        let mut t = T0 + every;
        let mut n = 0;
        while t < T0 + span {
            let c = Conn::new(n, (ip(2), 43_000 + (n % 1000) as u16), (ip(6), 80), Some(o));
            for e in c.leaked(t) {
                w.event(&e).unwrap();
            }
            n += 1;
            t += every;
        }
        w.snapshot(T0 + span, &[1], &[], None).unwrap();
    })
}

#[test]
fn the_default_step_makes_about_sixty_points_whatever_the_length() {
    for (span, every) in [
        (9 * SEC, SEC),
        (90 * SEC, 7 * SEC),
        (3_600 * SEC, 61 * SEC),
        (86_400 * SEC, 3_600 * SEC),
        (50 * MS, 10 * MS),
    ] {
        let r = report(&sparse(span, every), &Options::default()).unwrap();
        let n = r.close_wait_timeline.len();
        if span >= 60 * MS {
            assert!((55..=66).contains(&n), "{span} ns: {n} points");
        } else {
            // The grid's finest step is 1 ms.
            assert_eq!(n, 51, "{span} ns");
        }
        assert_eq!(r.close_wait_timeline[0].ts_ns, wall(T0));
        assert_eq!(r.close_wait_timeline[n - 1].ts_ns, wall(T0 + span));
        // Evenly spaced, the last one excepted.
        let step = r.window.step_ns;
        for p in &r.close_wait_timeline[..n - 1] {
            assert_eq!((p.ts_ns - wall(T0)) % step, 0, "{span}: step {step}");
        }
        // Whatever was dropped between two points still counts in the most.
        let most = r.close_wait_timeline.iter().map(|p| p.close_wait_max).max();
        assert_eq!(most, Some(r.close_wait_holders[0].held.peak));
    }
}

#[test]
fn holders_are_capped_and_the_rest_counted() {
    let n = MAX_HOLDERS as u64 + 3;
    let file = recording(|w| {
        w.snapshot(T0, &[1], &[], None).unwrap();
        for i in 0..n {
            let c = Conn::new(
                i,
                (ip(2), 1 + (i % 60_000) as u16),
                (ip((i / 60_000) as u8 + 10), 80),
                Some(owner(10_000 + i as u32, "many")),
            );
            for e in c.leaked(T0 + i * 1_000) {
                w.event(&e).unwrap();
            }
        }
    });
    let r = report(&file, &Options::default()).unwrap();
    assert_eq!(r.close_wait_holders.len(), MAX_HOLDERS);
    assert_eq!(r.holders_dropped.close_wait, 3);
    assert_eq!(r.summary.states["CLOSE_WAIT"], n);
    assert_eq!(r.close_wait_timeline.last().unwrap().close_wait, n);
}

#[test]
fn sockets_seen_at_the_opening_snapshot_are_followed_to_their_release() {
    let o = leakyd();
    let seeded: Vec<SeenSocket> = (0..5)
        .map(|i| leaked(o, i).seen(CloseWait, 100 + i))
        .collect();
    let file = recording(|w| {
        w.snapshot(T0, &[1], &seeded, None).unwrap();
        for i in 0..5 {
            for e in release(&leaked(o, i), T0 + 2 * SEC + i * MS) {
                w.event(&e).unwrap();
            }
        }
        w.snapshot(T0 + 4 * SEC, &[1], &[], None).unwrap();
    });
    let r = report(&file, &Options::default()).unwrap();
    let h = &r.close_wait_holders[0];
    assert_eq!((h.held.peak, h.held.count_at_end), (5, 0));
    assert_eq!(h.held.first_ns, wall(T0));
    assert_eq!(h.held.last_ns, wall(T0 + 2 * SEC + 4 * MS));
    assert!(h.oldest_age_is_lower_bound, "seen already in CLOSE_WAIT");
    assert_eq!(r.close_wait_timeline.last().unwrap().close_wait, 0);
    let mid = report(
        &file,
        &Options {
            at: offset_arg(1_000),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(mid.summary.states["CLOSE_WAIT"], 5);
    assert_eq!(mid.close_wait_timeline.last().unwrap().close_wait, 5);
}

#[test]
fn lost_events_and_gaps_cover_the_window() {
    let lost = |n| crate::model::Lost {
        ring_full: n,
        ..Default::default()
    };
    let file = recording(|w| {
        w.snapshot(T0, &[1], &[], None).unwrap();
        w.lost(T0 + SEC, &lost(3)).unwrap();
        w.lost(T0 + 5 * SEC, &lost(4)).unwrap();
        w.snapshot(T0 + 9 * SEC, &[1], &[], None).unwrap();
    });
    let whole = report(&file, &Options::default()).unwrap();
    assert_eq!(whole.gaps.len(), 2);
    assert_eq!(whole.summary.lost["ring_full"], 7);
    let late = report(
        &file,
        &Options {
            from: offset_arg(2_000),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(late.gaps.len(), 1);
    assert_eq!(late.gaps[0].ts_ns, wall(T0 + 5 * SEC));
    assert_eq!(late.summary.lost["ring_full"], 4);
}

/// One step of a socket's life in the random recordings below.
#[derive(Clone, Copy, Debug)]
struct Op {
    slot: u8,
    action: u8,
    dt_us: u32,
}

fn arb_op() -> impl Strategy<Value = Op> {
    (0u8..8, 0u8..12, 0u32..300_000).prop_map(|(slot, action, dt_us)| Op {
        slot,
        action,
        dt_us,
    })
}

/// Where a slot's current socket is, for the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sim {
    Closed,
    Full(TcpState),
    /// An orphan's timewait socket, still FIN_WAIT2.
    TwFinWait2,
    TimeWait,
}

/// Random lifecycles on 8 slots (one tuple each, reused by each new
/// socket; slots 6 and 7 start in CLOSE_WAIT, seen by the opening
/// snapshot), owners 1-3 (an accept may change it), a reconciling snapshot
/// in the middle that misses one socket, and a closing snapshot. Returns
/// the file and the moments (offsets) worth asking about.
fn random_recording(ops: &[Op]) -> (Vec<u8>, u64) {
    let conn = |slot: u8, generation: u64, pid: u32| {
        let server = slot.is_multiple_of(2);
        Conn::new(
            u64::from(slot) * 1_000 + generation,
            (ip(2), 45_000 + u16::from(slot)),
            (ip(8), if server { 9_000 } else { 80 }),
            Some(owner(pid, &format!("app{pid}"))),
        )
    };
    let mut sims = [Sim::Closed; 8];
    let mut generation = [0u64; 8];
    let mut pids = [1u32; 8];
    sims[6] = Sim::Full(CloseWait);
    sims[7] = Sim::Full(CloseWait);
    sims[5] = Sim::TimeWait;
    let mut seeded: Vec<SeenSocket> = [6u8, 7]
        .iter()
        .map(|&s| conn(s, 0, 1).seen(CloseWait, u64::from(s)))
        .collect();
    seeded.push(SeenSocket {
        timer_left_ms: Some(50_000),
        ..conn(5, 0, 1).seen(TimeWait, 0)
    });
    // Slot 4's 4-tuple is in TIME_WAIT from before, and its next
    // connection takes the tuple over (the seeded timewait socket goes).
    seeded.push(SeenSocket {
        timer_left_ms: Some(50_000),
        ..conn(4, 0, 1).seen(TimeWait, 0)
    });
    // A listener on slot 3's port: its unlinked TIME_WAIT is a service's.
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    seeded.push(Conn::new(99, (ip(2), 45_003), (any, 0), Some(owner(1, "app1"))).seen(Listen, 99));
    let mut t = T0;
    let file = recording(|w| {
        w.snapshot(T0, &[1], &seeded, None).unwrap();
        for (i, op) in ops.iter().enumerate() {
            t += u64::from(op.dt_us) * 1_000 + 1;
            if i == ops.len() / 2 {
                let truth: Vec<SeenSocket> = (0..8u8)
                    .filter(|&s| s != op.slot)
                    .filter_map(|s| {
                        let c = conn(s, generation[s as usize], pids[s as usize]);
                        match sims[s as usize] {
                            Sim::Closed => None,
                            Sim::Full(st) => Some(c.seen(st, 1 + u64::from(s))),
                            Sim::TimeWait => Some(SeenSocket {
                                timer_left_ms: Some(30_000),
                                ..c.seen(TimeWait, 0)
                            }),
                            Sim::TwFinWait2 => Some(SeenSocket {
                                timer_left_ms: Some(30_000),
                                ..c.seen(FinWait2, 0)
                            }),
                        }
                    })
                    .collect();
                w.snapshot(t, &[1], &truth, None).unwrap();
                t += 1;
            }
            let s = op.slot as usize;
            if op.action == 11 {
                pids[s] = 1 + (pids[s] % 3);
            }
            let c = conn(op.slot, generation[s], pids[s]);
            let events: Vec<Event> = match (sims[s], op.action) {
                (Sim::Closed, a) => {
                    generation[s] += 1;
                    let c = conn(op.slot, generation[s], pids[s]);
                    if a.is_multiple_of(2) {
                        sims[s] = Sim::Full(SynRecv);
                        vec![c.at(t, Listen, SynRecv)]
                    } else {
                        sims[s] = Sim::Full(SynSent);
                        vec![c.at(t, Close, SynSent)]
                    }
                }
                (Sim::Full(_), 11) => vec![Event {
                    kind: EventKind::Accept,
                    ..c.at(t, Established, Established)
                }],
                (Sim::Full(SynSent | SynRecv), _) => {
                    let Sim::Full(old) = sims[s] else {
                        unreachable!()
                    };
                    sims[s] = Sim::Full(Established);
                    vec![c.at(t, old, Established)]
                }
                (Sim::Full(Established), a) => match a % 3 {
                    0 => {
                        sims[s] = Sim::Full(CloseWait);
                        vec![c.at(t, Established, CloseWait)]
                    }
                    1 => {
                        sims[s] = Sim::Full(FinWait1);
                        vec![c.at(t, Established, FinWait1)]
                    }
                    _ => {
                        sims[s] = Sim::Closed;
                        vec![c.at(t, Established, Close)]
                    }
                },
                (Sim::Full(CloseWait), a) => {
                    if a.is_multiple_of(4) {
                        sims[s] = Sim::Closed;
                        vec![c.at(t, CloseWait, Close)]
                    } else {
                        sims[s] = Sim::Full(LastAck);
                        vec![c.at(t, CloseWait, LastAck)]
                    }
                }
                (Sim::Full(LastAck), _) => {
                    sims[s] = Sim::Closed;
                    vec![c.at(t, LastAck, Close)]
                }
                (Sim::Full(FinWait1), _) => {
                    sims[s] = Sim::Full(FinWait2);
                    vec![c.at(t, FinWait1, FinWait2)]
                }
                (Sim::Full(_), a) if a % 5 == 4 => {
                    // An orphan: its timewait socket begins in FIN_WAIT2.
                    sims[s] = Sim::TwFinWait2;
                    vec![c.tw_begin(t, FinWait2), c.at(t, FinWait2, Close)]
                }
                (Sim::TwFinWait2, _) => {
                    // The live check found it in TIME_WAIT.
                    sims[s] = Sim::TimeWait;
                    let begin = c.tw_begin(t, FinWait2);
                    vec![Event {
                        kind: EventKind::TwSubstate,
                        link: None,
                        new: TimeWait,
                        prev_ns: Some(1_000),
                        ..begin
                    }]
                }
                (Sim::Full(_), a) => {
                    sims[s] = Sim::TimeWait;
                    // Unlinked (the begin did not find its full socket):
                    // who opened it is not known.
                    let link = if a.is_multiple_of(3) {
                        None
                    } else {
                        Some(c.sk)
                    };
                    vec![
                        Event {
                            link,
                            ..c.tw_begin(t, TimeWait)
                        },
                        c.at(t, FinWait2, Close),
                    ]
                }
                (Sim::TimeWait, _) => {
                    sims[s] = Sim::Closed;
                    vec![tw_end(&c, t)]
                }
            };
            for e in &events {
                w.event(e).unwrap();
            }
        }
        t += 1;
        w.snapshot(t, &[1], &[], None).unwrap();
    });
    (file, t - T0)
}

/// The report's own counts at its last point agree with the engine's walk.
fn agrees(r: &Report) -> Result<(), TestCaseError> {
    let last = r.close_wait_timeline.last().expect("a point");
    prop_assert_eq!(last.close_wait, r.summary.states["CLOSE_WAIT"]);
    prop_assert_eq!(last.time_wait, r.summary.states["TIME_WAIT"]);
    let mut ours: Vec<(Option<u32>, u64)> = r
        .close_wait_holders
        .iter()
        .filter(|h| h.held.count_at_end > 0)
        .map(|h| (h.pid, h.held.count_at_end))
        .collect();
    ours.sort_unstable();
    let mut engine: Vec<(Option<u32>, u64)> = r
        .summary
        .close_wait_by_process
        .iter()
        .map(|p| (p.pid, p.count))
        .collect();
    engine.sort_unstable();
    prop_assert_eq!(ours, engine);
    let tw_ours: u64 = r
        .time_wait_destination_holders
        .iter()
        .map(|h| h.held.count_at_end)
        .chain(
            r.time_wait_service_holders
                .iter()
                .map(|h| h.held.count_at_end),
        )
        .sum();
    prop_assert_eq!(tw_ours, r.summary.states["TIME_WAIT"]);
    for h in &r.close_wait_holders {
        prop_assert!(h.held.peak >= h.held.count_at_end);
        prop_assert!(h.held.held_total_ms <= h.held.held_for_ms);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn counts_kept_at_every_event_agree_with_the_engine_at_any_moment(
        ops in proptest::collection::vec(arb_op(), 1..250),
        cuts in proptest::collection::vec(0u64..1_000, 3),
    ) {
        let (file, span) = random_recording(&ops);
        agrees(&report(&file, &Options::default()).unwrap())?;
        for cut in cuts {
            let at = span * cut / 1_000;
            let r = report(&file, &Options {
                at: Some(TimeArg { text: "t".into(), spec: TimeSpec::Offset(at) }),
                ..Options::default()
            }).unwrap();
            agrees(&r)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `report` aggregates durations and ends on a thread of its own: on
    /// random recordings, for the whole of them, a window (whose start
    /// resets the aggregates) and a moment, it says exactly what the same
    /// report built on one thread says.
    #[test]
    fn the_threaded_report_is_the_one_thread_report(
        ops in proptest::collection::vec(arb_op(), 1..400),
        cuts in proptest::collection::vec(0u64..1_000, 2),
    ) {
        let (file, span) = random_recording(&ops);
        let (a, b) = (span * cuts[0].min(cuts[1]) / 1_000, span * cuts[0].max(cuts[1]) / 1_000);
        let moment = |ns: u64| Some(TimeArg { text: "t".into(), spec: TimeSpec::Offset(ns) });
        for opts in [
            Options::default(),
            Options { from: moment(a), to: moment(b), ..Options::default() },
            Options { at: moment(b), ..Options::default() },
        ] {
            let threaded = report(&file, &opts).map(|r| serde_json::to_value(r).unwrap());
            let one = build_on_one_thread(&mut Reader::new(&file[..]).unwrap(), "t.tcptrace", &opts)
                .map(|r| serde_json::to_value(r).unwrap());
            prop_assert_eq!(threaded.ok(), one.ok());
        }
    }
}

/// leakyd leaks 20 CLOSE_WAIT sockets opened with stack 7 (named in the
/// recording, after the events), and its stack-less twin 5 more.
fn leak_with_stacks(header_stacks: bool) -> Vec<u8> {
    use crate::stacks::{Frame, Stack, StackKey, StackQuality};
    let mut w = Writer::new(
        Vec::new(),
        &Header {
            stacks: header_stacks,
            ..header()
        },
    )
    .unwrap();
    w.snapshot(T0, &[1], &[], None).unwrap();
    for (i, mut e) in leak(leakyd(), 25, T0 + SEC, 10 * MS)
        .into_iter()
        .enumerate()
    {
        // The first 20 sockets' events carry the stack (3 events each).
        if i < 20 * 3 {
            e.stack = Some(7);
        }
        w.event(&e).unwrap();
    }
    let frame = |function: &str, line| Frame {
        addr: 0x1000 + u64::from(line),
        function: Some(function.into()),
        module: Some("/srv/leakyd".into()),
        file: Some("/src/leakyd.c".into()),
        line: Some(line),
        ..Frame::default()
    };
    w.stack(
        StackKey { pid: 4242, id: 7 },
        &std::sync::Arc::new(Stack {
            frames: vec![
                frame("checkout_reserve_items", 37),
                frame("handle_order", 60),
                frame("main", 90),
            ],
            quality: StackQuality::Cut,
            depth: 3,
            exe: None,
        }),
    );
    // Still leaking at the closing snapshot.
    w.snapshot(T0 + 9 * SEC, &[1], &leak_sockets(leakyd(), 25), None)
        .unwrap();
    w.finish().unwrap()
}

#[test]
fn a_recording_with_stacks_names_the_code_paths_after_the_process_is_gone() {
    let r = report(&leak_with_stacks(true), &Options::default()).unwrap();
    assert!(r.has_stacks);
    let rows = r.summary.close_wait_by_stack.as_ref().unwrap();
    let summary: Vec<_> = rows
        .iter()
        .map(|r| (r.pid, r.stack_id, r.count, r.process_count, r.stack_quality))
        .collect();
    assert_eq!(
        summary,
        [
            (Some(4242), Some(7), 20, 25, "cut"),
            (Some(4242), None, 5, 25, "none")
        ]
    );
    assert_eq!(
        rows[0].code_path,
        "checkout_reserve_items ← handle_order ← main"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json["close_wait_by_stack"][0]["top_frame"],
        "checkout_reserve_items"
    );
    assert_eq!(json["stacks"]["known"], 1);
    assert_eq!(json["stacks"]["close_wait_without_stack"], 5);
    // Text: the code paths always; the full stack with --stacks only.
    let text = |opts: &Options| {
        let r = report(&leak_with_stacks(true), opts).unwrap();
        let mut out = Vec::new();
        write_text(&mut out, &r).unwrap();
        String::from_utf8(out).unwrap()
    };
    let plain = text(&Options::default());
    assert!(plain.contains("CLOSE_WAIT by code path:"), "{plain}");
    assert!(
        plain.contains("20/25")
            && plain.contains(
                "checkout_reserve_items ← handle_order ← main  [cut: no frame pointers below]"
            ),
        "{plain}"
    );
    assert!(plain.contains("(no stack)"), "{plain}");
    assert!(!plain.contains("stack of "), "{plain}");
    let full = text(&Options {
        stacks: true,
        ..Options::default()
    });
    assert!(
        full.contains("stack of 4242 leakyd (20 of 25 in CLOSE_WAIT)"),
        "{full}"
    );
    assert!(
        full.contains("#1   handle_order+0x0  leakyd.c:60  (/srv/leakyd)"),
        "{full}"
    );
    assert!(
        full.contains("(frames stop here: the code below has no frame pointers)"),
        "{full}"
    );
}

#[test]
fn stack_records_turn_stacks_on_even_when_the_header_says_nothing() {
    let r = report(&leak_with_stacks(false), &Options::default()).unwrap();
    assert!(r.has_stacks);
    assert_eq!(r.summary.close_wait_by_stack.as_ref().unwrap().len(), 2);
}

#[test]
fn a_recording_without_stacks_has_no_stack_keys_and_says_so_when_asked() {
    let r = report(&leak_then_release(), &Options::default()).unwrap();
    assert!(!r.has_stacks);
    let json = serde_json::to_value(&r).unwrap();
    assert!(json.get("close_wait_by_stack").is_none());
    assert!(json.get("stacks").is_none());
    let asked = report(
        &leak_then_release(),
        &Options {
            stacks: true,
            ..Options::default()
        },
    )
    .unwrap();
    // The caller warns; the report itself goes on.
    assert!(!asked.has_stacks && asked.show_stacks);
}

// ------------------------------------------------ listeners (format 6)

mod listener_drops {
    use super::*;
    use crate::{
        listeners::{DropCounters, DropReason, ListenerSample, NetnsDropCounters, SynDrop},
        model::{Comm, Family, SeenOwner},
    };

    const NS: u32 = 4026532000;

    fn sample(port: u16, drops: u64, queue: u32) -> ListenerSample {
        ListenerSample {
            netns: Some(NS),
            family: Family::V4,
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            inode: u64::from(port),
            owner: Some(SeenOwner {
                pid: 77,
                comm: Comm::from_name("slowacceptd"),
            }),
            cgroup: None,
            queue,
            limit: 1,
            drops: Some(drops),
        }
    }

    fn counters(overflows: u64) -> Vec<NetnsDropCounters> {
        vec![NetnsDropCounters {
            netns: NS,
            counters: DropCounters {
                listen_overflows: Some(overflows),
                listen_drops: Some(overflows),
                req_qfull_drop: Some(0),
                ..DropCounters::default()
            },
        }]
    }

    fn no_listener(ts_ns: u64) -> SynDrop {
        SynDrop {
            ts_ns,
            netns: Some(NS),
            family: Family::V4,
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 9,
            remote: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            remote_port: 40_000,
            reason: DropReason::NoListener,
            kernel_reason: 3,
            syn: true,
            ack: false,
            rx_state: None,
            suppressed: 2,
        }
    }

    /// 10 s, a sample a second: :8080 (backlog 1, never accepts) drops 10
    /// SYNs a second from 2 s to 6 s (its count and ListenOverflows grow
    /// together); :8081 (a normal listener) never drops; 3 SYNs to the
    /// closed port 9 at 3 s.
    fn overflowing() -> Vec<u8> {
        recording(|w| {
            w.snapshot(T0, &[NS], &[], None).unwrap();
            for s in 0..=9u64 {
                let dropped = 10 * s.saturating_sub(1).min(5);
                let queue = if (2..=6).contains(&s) { 2 } else { 0 };
                w.listeners(
                    T0 + s * SEC,
                    &[sample(8080, dropped, queue), sample(8081, 0, 0)],
                    &counters(1_000 + dropped),
                )
                .unwrap();
                if s == 3 {
                    for i in 0..3 {
                        w.drop_record(&no_listener(T0 + 3 * SEC + i * MS)).unwrap();
                    }
                }
            }
        })
    }

    #[test]
    fn a_report_names_the_listener_its_drops_reason_owner_and_when() {
        let r = report(&overflowing(), &Options::default()).unwrap();
        let l = r.listeners_in_window.as_ref().expect("a listeners section");
        assert_eq!(l.samples, 10);
        assert_eq!(l.drops_total, 50);
        assert_eq!(l.drops_by_reason["accept_queue_full"], 50);
        assert_eq!(l.kernel_reported, 3);
        assert_eq!(l.kernel_suppressed, 6);
        assert_eq!(l.listeners.len(), 2);
        let full = &l.listeners[0];
        assert_eq!(full.listener, "127.0.0.1:8080");
        assert_eq!(full.netns, Some(NS));
        assert_eq!(full.comm.as_deref(), Some("slowacceptd"));
        assert_eq!(full.pid, Some(77));
        assert_eq!(full.drops_total, 50);
        assert_eq!(full.drops_before_recording, 0);
        assert_eq!(full.main_reason, Some("accept_queue_full"));
        assert_eq!(full.accept_queue_peak, 2);
        assert_eq!(full.accept_queue_limit, 1);
        assert_eq!(full.first_drop_ns, Some(wall(T0 + 2 * SEC)));
        assert_eq!(full.last_drop_ns, Some(wall(T0 + 6 * SEC)));
        assert!((full.drops_per_sec - 50.0 / 9.0).abs() < 1e-9);
        // The normal listener: there, with none.
        assert_eq!(l.listeners[1].listener, "127.0.0.1:8081");
        assert_eq!(l.listeners[1].drops_total, 0);
        assert_eq!(l.listeners[1].first_drop_ns, None);
        assert_eq!(l.unmatched.len(), 1);
        assert_eq!(l.unmatched[0].destination, "127.0.0.1:9");
        assert_eq!(l.unmatched[0].drops_by_reason["no_listener"], 3);
        // The namespace's ListenOverflows over the window agrees.
        assert_eq!(l.namespaces[0].counters.listen_overflows, Some(50));
        // JSON: the section, and nothing of it in a report without it.
        let v = serde_json::to_value(&r).unwrap();
        let s = &v["listeners_in_window"];
        assert_eq!(s["listeners"][0]["listener"], "127.0.0.1:8080");
        assert_eq!(
            s["listeners"][0]["drops_by_reason"]["accept_queue_full"],
            50
        );
        assert_eq!(s["namespaces"][0]["netns"], NS);
        assert_eq!(s["namespaces"][0]["listen_overflows"], 50);
        let plain = report(&leak_then_release(), &Options::default()).unwrap();
        assert!(plain.listeners_in_window.is_none());
        assert!(
            serde_json::to_value(&plain)
                .unwrap()
                .get("listeners_in_window")
                .is_none()
        );
        // Text: the section names the listener, its owner and reason.
        let mut text = Vec::new();
        write_text(&mut text, &r).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains(
                "Listeners in the window: 50 connection attempts dropped (accept_queue_full 50)"
            ),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.contains("127.0.0.1:8080"))
            .expect("the listener's row");
        assert!(row.contains("77 slowacceptd"), "{row}");
        assert!(row.contains("accept_queue_full 50"), "{row}");
        assert!(text.contains("127.0.0.1:9"), "{text}");
        // CSV: the same facts as rows.
        let mut csv = Vec::new();
        write_csv(&mut csv, &r).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert!(
            csv.contains(&format!(
                "listeners,{NS} 127.0.0.1:8080,drops_accept_queue_full,50,"
            )),
            "{csv}"
        );
        assert!(
            csv.contains(&format!(
                "listener_drops_unmatched,{NS} 127.0.0.1:9,drops_no_listener,3,"
            )),
            "{csv}"
        );
    }

    #[test]
    fn a_window_counts_only_its_own_drops() {
        // From 4.5 s: the samples at 5 and 6 s, 20 drops.
        let r = report(
            &overflowing(),
            &Options {
                from: offset_arg(4_500),
                ..Options::default()
            },
        )
        .unwrap();
        let l = r.listeners_in_window.unwrap();
        assert_eq!(l.samples, 5);
        assert_eq!(l.listeners[0].drops_total, 20);
        assert_eq!(l.listeners[0].first_drop_ns, Some(wall(T0 + 5 * SEC)));
        assert_eq!(l.kernel_reported, 0);
        assert!(l.unmatched.is_empty());
        assert_eq!(l.namespaces[0].counters.listen_overflows, Some(20));
        // --netns of another namespace: no listener in it.
        let r = report(
            &overflowing(),
            &Options {
                netns: vec![1],
                ..Options::default()
            },
        )
        .unwrap();
        let l = r.listeners_in_window.unwrap();
        assert!(l.listeners.is_empty() && l.unmatched.is_empty());
    }

    #[test]
    fn the_namespaces_paws_counters_are_in_the_window() {
        let with_paws = |s: u64| {
            vec![NetnsDropCounters {
                netns: NS,
                counters: DropCounters {
                    paws_timewait: Some(100 + 7 * s),
                    tsecr_rejected: Some(2 * s),
                    paws_old_ack: Some(5),
                    ..counters(1_000)[0].counters
                },
            }]
        };
        let bytes = recording(|w| {
            w.snapshot(T0, &[NS], &[], None).unwrap();
            for s in 0..=3u64 {
                w.listeners(T0 + s * SEC, &[sample(8081, 0, 0)], &with_paws(s))
                    .unwrap();
            }
        });
        let r = report(&bytes, &Options::default()).unwrap();
        let l = r.listeners_in_window.unwrap();
        let c = &l.namespaces[0].counters;
        assert_eq!(
            (c.paws_timewait, c.tsecr_rejected, c.paws_old_ack),
            (Some(21), Some(6), Some(0))
        );
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(v["namespaces"][0]["paws_timewait"], 21);
        assert_eq!(v["namespaces"][0]["tsecr_rejected"], 6);
        assert_eq!(v["namespaces"][0]["paws_old_ack"], 0);
    }
}
