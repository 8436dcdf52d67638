//! Key handling and the reducer, on app states built from a scripted
//! incident (see `fixture`).

use super::{fixture::*, *};
use crate::model::Lost;
use data::TwSide;

fn press(app: &mut App, keys: &[Key]) {
    for &k in keys {
        if let Some(a) = app.action_for(k) {
            app.update(a);
        }
    }
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        press(app, &[Key::Char(c)]);
    }
}

#[test]
fn keys_mean_different_things_per_mode() {
    let mut app = app();
    assert!(matches!(app.action_for(Key::Char('q')), Some(Action::Quit)));
    assert!(matches!(
        app.action_for(Key::Char('3')),
        Some(Action::ShowView(View::TimeWait))
    ));
    assert!(app.action_for(Key::Char('x')).is_none());
    press(&mut app, &[Key::Char('/')]);
    assert!(matches!(
        app.action_for(Key::Char('q')),
        Some(Action::FilterInput('q'))
    ));
    assert!(matches!(app.action_for(Key::Ctrl('c')), Some(Action::Quit)));
    press(&mut app, &[Key::Esc, Key::Char('?')]);
    assert!(app.help && app.filter_input.is_none());
    press(&mut app, &[Key::Char('j')]);
    assert!(!app.help, "any key closes the help");
    press(&mut app, &[Key::Char('?'), Key::Char('q')]);
    assert!(app.quit, "q quits even from the help");
}

#[test]
fn tab_and_numbers_switch_views() {
    let mut app = app();
    assert_eq!(app.view, View::Overview);
    press(&mut app, &[Key::Tab, Key::Tab]);
    assert_eq!(app.view, View::TimeWait);
    press(&mut app, &[Key::BackTab, Key::BackTab, Key::BackTab]);
    assert_eq!(app.view, View::Listeners, "wraps around");
    press(&mut app, &[Key::BackTab]);
    assert_eq!(app.view, View::Histograms);
    press(&mut app, &[Key::Char('4')]);
    assert_eq!(app.view, View::Connections);
    press(&mut app, &[Key::Ctrl('c')]);
    assert!(app.quit);
}

#[test]
fn close_wait_ranks_processes_and_drills_into_sockets_oldest_first() {
    let mut app = app();
    press(&mut app, &[Key::Char('2')]);
    let d = app.data.as_ref().unwrap();
    let top = &d.snap.close_wait_by_process[app.close_wait.rows[0]];
    assert_eq!((top.pid, top.comm.as_deref()), (Some(4242), Some("java")));
    // 3 seeded + 2/s from second 2 to 75.
    assert_eq!(top.count, 3 + 2 * 74);
    assert!(top.oldest_age_is_lower_bound);
    press(&mut app, &[Key::Enter]);
    assert_eq!(app.close_wait_drill, Some(Some(4242)));
    assert_eq!(app.request.close_wait_of, Some(Some(4242)));
    answer(&mut app);
    let d = app.data.as_ref().unwrap();
    let sockets = &d.close_wait_sockets[&Some(4242)];
    assert_eq!(app.close_wait_sockets.rows.len(), 151);
    let first = &sockets[app.close_wait_sockets.rows[0]];
    assert!(first.age_is_lower_bound, "seeded sockets are the oldest");
    let last = &sockets[*app.close_wait_sockets.rows.last().unwrap()];
    assert!(!last.age_is_lower_bound);
    assert!(first.age_ms >= last.age_ms);
    press(&mut app, &[Key::Char('G')]);
    assert_eq!(app.close_wait_sockets.selected, 150);
    press(&mut app, &[Key::Esc]);
    assert_eq!(app.close_wait_drill, None);
    assert_eq!(app.request.close_wait_of, None, "no list asked for");
}

#[test]
fn close_wait_sort_cycles_and_selection_follows_the_process() {
    let mut app = app();
    press(&mut app, &[Key::Char('2')]);
    assert_eq!(app.close_wait_sort, CloseWaitSort::Count);
    press(&mut app, &[Key::Char('s')]);
    assert_eq!(app.close_wait_sort, CloseWaitSort::Growth);
    press(&mut app, &[Key::Char('s'), Key::Char('s')]);
    assert_eq!(app.close_wait_sort, CloseWaitSort::Count);
    let before = app.close_wait.rows[app.close_wait.selected];
    app.refresh_lists();
    assert_eq!(app.close_wait.rows[app.close_wait.selected], before);
}

#[test]
fn filter_is_typed_applied_and_cleared() {
    let mut app = app();
    press(&mut app, &[Key::Char('2'), Key::Char('/')]);
    let generation = app.request.generation;
    type_text(&mut app, "nginx");
    press(&mut app, &[Key::Enter]);
    assert!(app.filter_input.is_none());
    assert_eq!(app.filter.text, "nginx");
    assert_eq!(app.request.filter, app.filter);
    assert!(
        app.request.generation > generation,
        "the engine is asked again"
    );
    assert!(app.close_wait.rows.is_empty(), "java is filtered out");
    press(&mut app, &[Key::Esc]);
    assert!(
        app.filter.is_empty(),
        "Esc with nothing open clears the filter"
    );
    assert_eq!(app.close_wait.rows.len(), 1);

    press(&mut app, &[Key::Char('/')]);
    type_text(&mut app, "port:http");
    press(&mut app, &[Key::Enter]);
    assert!(
        app.filter_error
            .as_deref()
            .unwrap()
            .contains("needs a number")
    );
    assert!(app.filter_input.is_some(), "stays open to fix the mistake");
    for _ in 0..4 {
        press(&mut app, &[Key::Backspace]);
    }
    type_text(&mut app, "5432");
    press(&mut app, &[Key::Enter]);
    assert_eq!(app.filter.text, "port:5432");
    assert!(app.filter_error.is_none());
}

#[test]
fn pause_holds_refreshes_until_resumed() {
    let mut app = app();
    press(&mut app, &[Key::Char('p')]);
    assert!(app.paused);
    let shown = app.data.as_ref().unwrap().uptime_ms;
    let mut newer = app.data.clone().unwrap();
    newer.uptime_ms += 1000;
    app.update(Action::Data(newer));
    assert_eq!(app.data.as_ref().unwrap().uptime_ms, shown);
    press(&mut app, &[Key::Char('p')]);
    assert_eq!(app.data.as_ref().unwrap().uptime_ms, shown + 1000);
    assert!(app.held.is_none());
}

#[test]
fn connection_list_asks_for_more_rows_and_ignores_stale_pages() {
    let mut app = app();
    press(&mut app, &[Key::Char('4')]);
    let loaded = app.conns.rows.len();
    assert!(loaded > 0 && loaded as u64 <= app.conns.matching);
    // Pretend the engine had more rows than it sent.
    app.conns.matching = 50_000;
    app.conns.rows = vec![app.conns.rows[0].clone(); 1000];
    let generation = app.request.generation;
    press(&mut app, &[Key::End]);
    assert_eq!(app.request.limit, 50_000, "End asks for every row");
    assert!(app.request.generation > generation);
    let mut stale = app.conns.clone();
    stale.generation = generation;
    stale.rows.truncate(3);
    app.update(Action::Page(stale));
    assert_eq!(app.conns.rows.len(), 1000, "a stale page is dropped");

    press(&mut app, &[Key::Char('s')]);
    assert_eq!(app.request.sort, ConnSort::State);
    assert_eq!(app.conn_selected, 0);
    press(&mut app, &[Key::Enter]);
    assert!(app.conn_detail);
    press(&mut app, &[Key::Esc]);
    assert!(!app.conn_detail);
}

#[test]
fn time_wait_peer_drills_into_its_histograms() {
    let mut app = app();
    press(&mut app, &[Key::Char('3')]);
    let d = app.data.as_ref().unwrap();
    let p = &d.tw_groups[app.time_wait.rows[0]];
    assert_eq!(
        (p.side, p.addr, p.port),
        (TwSide::Destination, ip(10, 0, 0, 9), 8080)
    );
    assert_eq!(p.count, 5 * 60, "one minute of TIME_WAIT at 5/s");
    assert_eq!(
        p.closed_first.local,
        5 * 74,
        "nginx closed first, every time"
    );
    assert!((p.rate_per_sec - 5.0).abs() < 0.01, "{}", p.rate_per_sec);
    assert!((p.duration.unwrap().p50_ms / 1000.0 - 60.0).abs() < 1.0);
    // The API server's TIME_WAIT is one row, not one per client port.
    let svc = &d.tw_groups[app.time_wait.rows[1]];
    assert_eq!(
        (svc.side, svc.addr, svc.port),
        (TwSide::Service, ip(10, 0, 0, 2), 9000)
    );
    assert_eq!((svc.count, svc.pid), (3 * 60, Some(900)));
    // And the IPv6 health checks, a destination of their own.
    assert_eq!(d.tw_groups.len(), 3);
    let v6 = &d.tw_groups[app.time_wait.rows[2]];
    assert_eq!(
        (v6.side, v6.port, v6.pid),
        (TwSide::Destination, 8443, Some(3100))
    );
    press(&mut app, &[Key::Enter]);
    assert_eq!(app.view, View::Histograms);
    let (label, hists) = app.selected_histograms();
    assert_eq!(label, "peer 10.0.0.9:8080");
    let tw = hists
        .iter()
        .find(|(k, _)| *k == HistKind::TimeWait)
        .unwrap()
        .1;
    assert!(tw.count > 0);
}

#[test]
fn lost_events_reach_the_snapshot() {
    let app = app_at(
        10,
        Lost {
            ring_full: 12,
            recursion_misses: 3,
            map_full: 0,
            probe_failed: 0,
        },
    );
    let lost = &app.data.as_ref().unwrap().snap.lost;
    assert_eq!((lost["ring_full"], lost["recursion_misses"]), (12, 3));
}

#[test]
fn resize_changes_the_page_size() {
    let mut app = app();
    app.update(Action::Resize(200, 60));
    assert_eq!(app.page_rows(), 53);
    press(&mut app, &[Key::Char('2'), Key::Enter]);
    answer(&mut app);
    press(&mut app, &[Key::PageDown]);
    assert_eq!(app.close_wait_sockets.selected, 53);
}

/// The fixture as a replay (`top --from`) at 75 s.
fn replay_app() -> App {
    let mut app = app();
    app.meta.source = Some("incident.tcptrace".into());
    app.meta.step_ms = 10_000;
    app
}

#[test]
fn a_replay_turns_space_brackets_and_plus_minus_into_playback_commands() {
    let mut app = replay_app();
    press(
        &mut app,
        &[
            Key::Char(' '),
            Key::Char(']'),
            Key::Char('['),
            Key::Char('}'),
            Key::Char('{'),
            Key::Char('+'),
            Key::Char('-'),
            Key::Char('p'),
        ],
    );
    use PlaybackCommand::*;
    assert_eq!(
        app.playback_out,
        vec![
            TogglePlay,
            Step(1),
            Step(-1),
            Step(10),
            Step(-10),
            Speed(2.0),
            Speed(0.5),
            TogglePlay
        ]
    );
    assert!(!app.paused, "p plays/pauses the recording, not the screen");
    // While typing a filter, they are text.
    app.playback_out.clear();
    press(&mut app, &[Key::Char('/'), Key::Char('['), Key::Char(' ')]);
    assert!(app.playback_out.is_empty());
    assert_eq!(app.filter_input.as_deref(), Some("[ "));
}

#[test]
fn live_keeps_space_for_paging_and_ignores_brackets() {
    let mut app = app();
    assert!(matches!(
        app.action_for(Key::Char(' ')),
        Some(Action::MovePages(1))
    ));
    assert!(app.action_for(Key::Char('[')).is_none());
    press(&mut app, &[Key::Char('p')]);
    assert!(app.paused);
    assert!(app.playback_out.is_empty());
}

#[test]
fn w_switches_close_wait_and_time_wait_between_processes_and_workloads() {
    let mut app = app();
    assert!(!app.by_workload);
    assert!(matches!(
        app.action_for(Key::Char('w')),
        Some(Action::ToggleGrouping)
    ));
    press(&mut app, &[Key::Char('2'), Key::Char('w')]);
    assert!(app.by_workload);
    // No drill-down into a workload (its rows are not a process's).
    press(&mut app, &[Key::Enter]);
    assert_eq!(app.close_wait_drill, None);
    press(&mut app, &[Key::Char('w')]);
    assert!(!app.by_workload);
}

#[test]
fn the_filter_matches_workloads_by_name() {
    let mut app = app();
    {
        let d = app.data.as_mut().expect("the fixture has data");
        for p in &mut d.snap.close_wait_by_process {
            p.workload.workload = Some("shop/payments-7d9f-abcde/app".into());
        }
        for (name, count) in [("shop/payments-7d9f-abcde/app", 5), ("docker/web-1", 2)] {
            d.snap
                .close_wait_by_workload
                .push(crate::stats::workloads::CloseWaitByWorkload {
                    workload: name.into(),
                    workload_kind: "container",
                    count,
                    ..Default::default()
                });
        }
    }
    app.refresh_lists();
    assert_eq!(app.close_wait_workloads, vec![0, 1]);
    let procs = app.close_wait.rows.len();
    assert!(procs > 0);
    // A bare word finds the process by its workload (its name is java).
    press(&mut app, &[Key::Char('2'), Key::Char('/')]);
    type_text(&mut app, "payments");
    press(&mut app, &[Key::Enter]);
    assert_eq!(app.close_wait.rows.len(), procs);
    assert_eq!(
        app.close_wait_workloads,
        vec![0],
        "docker/web-1 is filtered out"
    );
    // Keyed: the workload only.
    press(&mut app, &[Key::Esc, Key::Char('/')]);
    type_text(&mut app, "workload:docker/");
    press(&mut app, &[Key::Enter]);
    assert!(app.close_wait.rows.is_empty());
    assert_eq!(app.close_wait_workloads, vec![1]);
}

#[test]
fn close_wait_drill_with_stacks_picks_a_code_path_and_opens_its_stack() {
    let mut app = app_with_stacks();
    press(&mut app, &[Key::Char('2'), Key::Enter]);
    answer(&mut app);
    assert_eq!(app.close_wait_drill, Some(Some(4242)));
    let paths = app.data.as_ref().unwrap().snap.close_wait_by_stack.clone();
    let paths = paths.expect("stacks on: the rows are there");
    let rows: Vec<_> = app
        .close_wait_paths
        .rows
        .iter()
        .map(|&i| (paths[i].stack_id, paths[i].count))
        .collect();
    // Two named paths of 74 sockets each, then the 3 seeded ones without.
    assert_eq!(rows, [(Some(7), 74), (Some(8), 74), (None, 3)]);
    assert_eq!(
        paths[app.close_wait_paths.rows[0]].top_frame.as_deref(),
        Some("checkout_reserve_items")
    );
    // The arrows move on the paths, Enter opens the selected one's stack.
    press(&mut app, &[Key::Down]);
    assert_eq!(app.close_wait_paths.selected, 1);
    assert_eq!(app.close_wait_sockets.selected, 0);
    press(&mut app, &[Key::Up, Key::Enter]);
    assert!(app.close_wait_stack_open);
    // A refresh keeps it open on the same path.
    let d = app.data.clone().unwrap();
    app.update(Action::Data(d));
    assert!(app.close_wait_stack_open);
    assert_eq!(app.close_wait_paths.selected, 0);
    // Esc closes the stack first, then the drill.
    press(&mut app, &[Key::Esc]);
    assert!(!app.close_wait_stack_open);
    assert_eq!(app.close_wait_drill, Some(Some(4242)));
    press(&mut app, &[Key::Esc]);
    assert_eq!(app.close_wait_drill, None);
    assert!(app.close_wait_paths.rows.is_empty());
}

#[test]
fn close_wait_drill_without_stacks_is_unchanged() {
    let mut app = app();
    press(&mut app, &[Key::Char('2'), Key::Enter]);
    answer(&mut app);
    assert!(
        app.data
            .as_ref()
            .unwrap()
            .snap
            .close_wait_by_stack
            .is_none()
    );
    assert!(app.close_wait_paths.rows.is_empty());
    press(&mut app, &[Key::Down, Key::Enter]);
    assert_eq!(
        app.close_wait_sockets.selected, 1,
        "the arrows move on sockets"
    );
    assert!(!app.close_wait_stack_open);
}

#[test]
fn quality_notes_say_what_a_stack_lacks() {
    assert_eq!(quality_note("complete"), None);
    for q in [
        "cut",
        "truncated",
        "no_frame_pointers",
        "process_gone",
        "unsymbolized",
        "pending",
        "none",
    ] {
        assert!(quality_note(q).is_some(), "{q}");
    }
}

#[test]
fn listeners_view_ranks_by_drops_per_second_and_filters() {
    let mut app = app();
    press(&mut app, &[Key::Char('l')]);
    assert_eq!(app.view, View::Listeners);
    let d = app.data.as_ref().unwrap();
    let rows = |app: &App| -> Vec<String> {
        let d = app.data.as_ref().unwrap();
        app.listeners
            .rows
            .iter()
            .map(|&i| d.listeners()[i].listener.clone())
            .collect()
    };
    assert_eq!(d.listeners().len(), 5);
    let top = &d.listeners()[app.listeners.rows[0]];
    assert_eq!(top.listener, "10.0.0.2:8080");
    assert_eq!(
        (top.pid, top.comm.as_deref()),
        (Some(5150), Some("slowacceptd"))
    );
    assert_eq!((top.accept_queue, top.accept_queue_limit), (128, 128));
    // Every drop since the queue filled, all for the full queue (the
    // namespace's ListenOverflows moved as much).
    assert_eq!(top.drops_total, slow_drops_at(75));
    assert_eq!(
        top.drops.get(crate::listeners::DropReason::AcceptQueueFull),
        top.drops_total
    );
    // 12/s over the samples of the last 10 s (to the refresh, 0.1 s after
    // the last sample).
    assert!(
        (top.drops_per_sec - 12.0).abs() < 0.2,
        "{}",
        top.drops_per_sec
    );
    // Then postgres (PAWS: none now, some in total), then the quiet ones.
    assert_eq!(rows(&app)[1], "[fd00:ffff:ffff:ffff:ffff:ffff:ffff:5]:5432");
    let drops = d.snap.listen_drops.as_ref().unwrap();
    assert_eq!(drops.unmatched[0].destination, "10.0.0.2:81");
    // Down, then sort by queue fill: the cursor stays on the listener.
    press(&mut app, &[Key::Down, Key::Char('s')]);
    assert_eq!(app.listener_sort, ListenerSort::Queue);
    assert_eq!(rows(&app)[0], "10.0.0.2:8080");
    assert_eq!(
        rows(&app)[app.listeners.selected],
        "[fd00:ffff:ffff:ffff:ffff:ffff:ffff:5]:5432"
    );
    press(&mut app, &[Key::Char('s')]);
    assert_eq!(app.listener_sort, ListenerSort::Endpoint);
    assert_eq!(
        rows(&app)[..2],
        ["0.0.0.0:22", "0.0.0.0:9000"],
        "0.0.0.0 sorts first"
    );
    // The filter: a name, a port.
    press(&mut app, &[Key::Char('/')]);
    type_text(&mut app, "postgres");
    press(&mut app, &[Key::Enter]);
    assert_eq!(rows(&app), ["[fd00:ffff:ffff:ffff:ffff:ffff:ffff:5]:5432"]);
    press(&mut app, &[Key::Esc, Key::Char('/')]);
    type_text(&mut app, "22");
    press(&mut app, &[Key::Enter]);
    assert_eq!(rows(&app), ["0.0.0.0:22", "[::]:22"], "v4 and v6 wildcards");
    press(&mut app, &[Key::Esc, Key::Char('/')]);
    type_text(&mut app, "close_wait");
    press(&mut app, &[Key::Enter]);
    assert!(app.listeners.rows.is_empty(), "listeners are in LISTEN");
}

/// The cursor stays on its listener when a refresh reorders the rows.
#[test]
fn listener_cursor_follows_its_listener_across_refreshes() {
    let mut app = app();
    press(&mut app, &[Key::Char('l'), Key::Down, Key::Down]);
    let id = app.listener_focus.expect("a listener selected");
    let mut d = app.data.clone().unwrap();
    d.snap.listeners.as_mut().unwrap().reverse();
    app.update(Action::Data(d));
    assert_eq!(app.listener_focus, Some(id));
    let d = app.data.as_ref().unwrap();
    let r = &d.listeners()[app.listeners.rows[app.listeners.selected]];
    assert_eq!((r.addr.parse().ok(), r.port, r.netns), id);
}
