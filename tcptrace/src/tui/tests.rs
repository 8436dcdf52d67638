//! Whole-screen snapshots (insta + ratatui's TestBackend) of app states built
//! from the scripted incident in `app::fixture`. Review changes with
//! `cargo insta review` or by reading the `.snap` diff.

use ratatui::{Terminal, backend::TestBackend};

use tcptrace_core::{
    app::{Action, App, Key, PlaybackStatus, fixture},
    model::Lost,
};

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).expect("test backend");
    term.draw(|f| f.render_widget(super::Screen(app), f.area()))
        .expect("draw");
    term.backend().to_string()
}

fn press(app: &mut App, keys: &[Key]) {
    for &k in keys {
        if let Some(a) = app.action_for(k) {
            app.update(a);
        }
    }
}

fn app_80x24() -> App {
    let mut app = fixture::app();
    app.update(Action::Resize(80, 24));
    app
}

#[test]
fn overview() {
    insta::assert_snapshot!(screen(&app_80x24(), 80, 24));
}

#[test]
fn close_wait_by_process() {
    let mut app = app_80x24();
    press(&mut app, &[Key::Char('2')]);
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn close_wait_sockets_with_lower_bound_ages() {
    let mut app = app_80x24();
    press(&mut app, &[Key::Char('2'), Key::Enter]);
    fixture::answer(&mut app);
    insta::assert_snapshot!(screen(&app, 80, 24));
}

/// `--stacks`: the drilled process's code paths above its sockets.
#[test]
fn close_wait_code_paths() {
    let mut app = fixture::app_with_stacks();
    app.update(Action::Resize(80, 24));
    press(&mut app, &[Key::Char('2'), Key::Enter]);
    fixture::answer(&mut app);
    let text = screen(&app, 80, 24);
    assert!(
        text.contains("checkout_reserve_items ← handle_order ← main"),
        "{text}"
    );
    insta::assert_snapshot!(text);
}

/// `--stacks`: Enter on a code path shows its full stack.
#[test]
fn close_wait_full_stack() {
    let mut app = fixture::app_with_stacks();
    app.update(Action::Resize(80, 24));
    press(&mut app, &[Key::Char('2'), Key::Enter]);
    fixture::answer(&mut app);
    press(&mut app, &[Key::Enter]);
    let text = screen(&app, 80, 24);
    assert!(
        text.contains("handle_order") && text.contains("orders.c:52"),
        "{text}"
    );
    insta::assert_snapshot!(text);
    // The cut path says why it stops.
    press(&mut app, &[Key::Esc, Key::Down, Key::Enter]);
    let text = screen(&app, 80, 24);
    assert!(text.contains("frames stop here"), "{text}");
}

#[test]
fn time_wait_by_peer() {
    let mut app = app_80x24();
    press(&mut app, &[Key::Char('3')]);
    insta::assert_snapshot!(screen(&app, 80, 24));
}

/// The TIME_WAIT view and the overview at 80, 120 and 200 columns: one
/// row per service and per destination, every column legible.
#[test]
fn time_wait_and_overview_at_every_width() {
    for w in [80u16, 120, 200] {
        let mut app = fixture::app();
        app.update(Action::Resize(w, 24));
        insta::assert_snapshot!(format!("overview_{w}"), screen(&app, w, 24));
        press(&mut app, &[Key::Char('3')]);
        let text = screen(&app, w, 24);
        // Whole values, never a column cut into "local 0 both 0 ?".
        assert!(
            text.contains("svc 10.0.0.2:9000") && text.contains("server"),
            "{text}"
        );
        assert!(
            text.contains("to 10.0.0.9:8080") && text.contains("here"),
            "{text}"
        );
        insta::assert_snapshot!(format!("time_wait_{w}"), text);
    }
}

#[test]
fn connections_sorted_by_state_with_details() {
    let mut app = app_80x24();
    press(&mut app, &[Key::Char('4'), Key::Char('s')]);
    // The engine's answer to the new sort, as the live loop would deliver it.
    let mut e = fixture::engine();
    for s in 2..=75 {
        fixture::second(&mut e, s);
    }
    let page = tcptrace_core::app::data::conn_page(&e, &app.request, 76 * fixture::SEC);
    app.update(Action::Page(page));
    insta::assert_snapshot!("connections_by_state", screen(&app, 80, 24));
    press(&mut app, &[Key::Enter]);
    insta::assert_snapshot!("connection_details", screen(&app, 80, 24));
}

#[test]
fn histograms_for_all_and_for_a_peer() {
    let mut app = app_80x24();
    press(&mut app, &[Key::Char('5')]);
    insta::assert_snapshot!("histograms_all", screen(&app, 80, 24));
    press(&mut app, &[Key::Char('3'), Key::Enter]);
    insta::assert_snapshot!("histograms_peer", screen(&app, 80, 24));
}

#[test]
fn empty_before_the_first_refresh() {
    let app = App::new(fixture::meta());
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn lost_events_are_shown_in_the_header() {
    let mut app = fixture::app_at(
        10,
        Lost {
            ring_full: 1234,
            recursion_misses: 5,
            map_full: 0,
            probe_failed: 0,
        },
    );
    app.update(Action::Resize(80, 24));
    let s = screen(&app, 80, 24);
    assert!(s.contains("LOST recursion misses 5, ring full 1234"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn narrow_terminal() {
    let mut app = fixture::app();
    app.update(Action::Resize(60, 20));
    insta::assert_snapshot!("narrow_overview", screen(&app, 60, 20));
    press(&mut app, &[Key::Char('2')]);
    insta::assert_snapshot!("narrow_close_wait", screen(&app, 60, 20));
}

#[test]
fn too_small_terminal_says_so() {
    let app = fixture::app();
    assert!(screen(&app, 30, 8).contains("terminal too small"));
}

#[test]
fn help_and_filter_input_overlays() {
    let mut app = app_80x24();
    press(&mut app, &[Key::Char('?')]);
    insta::assert_snapshot!("help", screen(&app, 80, 24));
    press(&mut app, &[Key::Esc, Key::Char('2'), Key::Char('/')]);
    for c in "pid:x".chars() {
        press(&mut app, &[Key::Char(c)]);
    }
    press(&mut app, &[Key::Enter]);
    insta::assert_snapshot!("filter_error", screen(&app, 80, 24));
}

#[test]
fn large_terminal_paused_and_filtered() {
    let mut app = fixture::app();
    app.update(Action::Resize(160, 40));
    press(&mut app, &[Key::Char('2'), Key::Char('/')]);
    for c in "java".chars() {
        press(&mut app, &[Key::Char(c)]);
    }
    press(&mut app, &[Key::Enter, Key::Char('p')]);
    insta::assert_snapshot!(screen(&app, 160, 40));
}

/// The fixture shown as a replay of a recording, with its playback state.
fn replay_80x24(p: PlaybackStatus) -> App {
    let mut app = app_80x24();
    app.meta.source = Some("incident.tcptrace".into());
    app.meta.step_ms = 10_000;
    if let Some(d) = &mut app.data {
        d.playback = Some(p);
    }
    app
}

fn at_75s() -> PlaybackStatus {
    PlaybackStatus {
        at_wall_ns: 1_790_000_076_000_000_000,
        at_ms: 75_000,
        target_ms: 75_000,
        playing: true,
        speed: 4.0,
        catching_up: false,
        ended: false,
        cut_at: None,
    }
}

#[test]
fn replay_playing_at_4x() {
    insta::assert_snapshot!(screen(&replay_80x24(at_75s()), 100, 24));
}

#[test]
fn replay_paused_and_seeking() {
    let p = PlaybackStatus {
        playing: false,
        catching_up: true,
        target_ms: 600_000,
        ..at_75s()
    };
    let mut app = replay_80x24(p);
    press(&mut app, &[Key::Char('?')]);
    insta::assert_snapshot!(screen(&app, 120, 24));
}

#[test]
fn replay_at_the_end_of_a_cut_file() {
    let p = PlaybackStatus {
        playing: false,
        ended: true,
        cut_at: Some(48_211),
        ..at_75s()
    };
    insta::assert_snapshot!(screen(&replay_80x24(p), 120, 24));
}

/// The Listeners view (`l`) at 80, 120 and 200 columns: slowacceptd's full
/// accept queue dropping 12 SYNs a second first, every column legible.
#[test]
fn listeners_at_every_width() {
    for w in [80u16, 120, 200] {
        let mut app = fixture::app();
        app.update(Action::Resize(w, 24));
        press(&mut app, &[Key::Char('l')]);
        let text = screen(&app, w, 24);
        assert!(
            text.contains("10.0.0.2:8080")
                && text.contains("5150 slowacceptd")
                && text.contains("128/128")
                && text.contains("11.9"),
            "{text}"
        );
        assert!(
            text.contains("[::]:22") && text.contains("0.0.0.0:22"),
            "{text}"
        );
        // The state strip tells every view that listeners drop now.
        assert!(text.contains("DROPS 12.3/s"), "{text}");
        if w >= 120 {
            assert!(text.contains("accept_queue_full 11.9/s"), "{text}");
        }
        if w >= 200 {
            assert!(text.contains("slowacceptd.service"), "{text}");
        }
        insta::assert_snapshot!(format!("listeners_{w}"), text);
    }
}

/// Before any listener sample (a source without them): what will appear.
#[test]
fn listeners_empty_state_explains() {
    let mut app = app_80x24();
    if let Some(d) = &mut app.data {
        d.snap.listeners = None;
        d.snap.listen_drops = None;
    }
    app.refresh_lists();
    press(&mut app, &[Key::Char('6')]);
    let text = screen(&app, 80, 24);
    assert!(text.contains("No listener data yet"), "{text}");
    insta::assert_snapshot!(text);
}

/// A listener's process name with escape bytes shows escaped, never raw.
#[test]
fn listener_owner_names_are_escaped() {
    let mut app = app_80x24();
    if let Some(d) = &mut app.data
        && let Some(rows) = &mut d.snap.listeners
    {
        for r in rows.iter_mut() {
            r.comm = Some("\u{1b}[31mEVIL\u{7}".into());
        }
    }
    app.refresh_lists();
    press(&mut app, &[Key::Char('6')]);
    let text = screen(&app, 80, 24);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains("\\x1b[31mEVIL"), "{text}");
}
