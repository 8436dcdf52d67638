//! The engine at 1M live sockets (synthetic events): userspace memory per
//! live socket (a counting allocator), the TUI's refresh (the engine thread
//! building a screen's data: O(sockets)) and one frame (drawing it: O(screen)).
//! Targets: <= 256 bytes per socket, a frame <= 16 ms. Run by `cargo xtask bench`.

use std::time::Instant;

use ratatui::{Terminal, backend::TestBackend};
use tcptrace_core::{
    app::{Action, App, Meta, data::Feed},
    engine::Engine,
    model::{Event, TcpState},
    stats::HostFacts,
};

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;
#[path = "../tests/support/synthetic.rs"]
mod synthetic;

use synthetic::accepted;

const SOCKETS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const TARGET_BYTES: f64 = 256.0;
const TARGET_FRAME_MS: f64 = 16.0;

/// Applies socket `i`: accepted by one of 50 server processes from one of
/// 4096 peers; one in ten is left in CLOSE_WAIT. Returns the events applied.
fn apply_socket(engine: &mut Engine, i: u64) -> u64 {
    let [syn_recv, established] = accepted(i);
    engine.apply(&syn_recv);
    engine.apply(&established);
    if !i.is_multiple_of(10) {
        return 2;
    }
    engine.apply(&Event {
        old: Some(TcpState::Established),
        new: TcpState::CloseWait,
        ts_ns: established.ts_ns + 10,
        ..established
    });
    3
}

fn main() {
    let before = counting_alloc::allocated();
    let mut engine = Engine::new(2_000_000);
    let started = Instant::now();
    let mut applied = 0u64;
    for i in 0..SOCKETS {
        applied += apply_socket(&mut engine, i);
    }
    let apply_s = started.elapsed().as_secs_f64();
    assert_eq!(engine.table.len() as u64, SOCKETS);
    let bytes = (counting_alloc::allocated() - before) as f64 / SOCKETS as f64;

    let now = SEC + SOCKETS * 100 + 60 * SEC;
    let host = HostFacts {
        port_range: (32768, 60999),
        ..HostFacts::default()
    };
    let mut app = App::new(Meta::default());
    app.update(Action::Resize(160, 48));
    let mut feed = Feed::new(0);
    let best = |f: &mut dyn FnMut()| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::MAX, f64::min)
    };
    let request = app.request.clone();
    let mut data = None;
    let refresh_ms = best(&mut || {
        data = Some(feed.update(&mut engine, &request, now, now, host));
    });
    app.update(Action::Data(Box::new(data.take().expect("refreshed"))));
    let mut term = Terminal::new(TestBackend::new(160, 48)).expect("terminal");
    let mut frame_ms: f64 = 0.0;
    for tab in ["1", "2", "3", "4", "5"] {
        if let Some(a) = app.action_for(tcptrace_core::app::Key::Char(tab.chars().next().unwrap()))
        {
            app.update(a);
        }
        let ms = best(&mut || {
            term.draw(|f| f.render_widget(tcptrace::tui::Screen(&app), f.area()))
                .expect("draw");
        });
        frame_ms = frame_ms.max(ms);
    }

    println!("engine benchmark: {SOCKETS} live sockets (synthetic; best of 3)");
    println!(
        "  memory:  {bytes:>7.1} bytes/socket     {:>5.2}x the <= {TARGET_BYTES} target",
        TARGET_BYTES / bytes
    );
    println!(
        "  apply:   {:>7.1} M events/s",
        applied as f64 / apply_s / 1e6
    );
    println!("  refresh: {refresh_ms:>7.1} ms (engine thread, every --interval; O(sockets))");
    println!(
        "  frame:   {frame_ms:>7.2} ms (slowest view)  {:>5.2}x the <= {TARGET_FRAME_MS} ms target",
        TARGET_FRAME_MS / frame_ms
    );
    println!(
        "BENCH_JSON {{\"sockets\":{SOCKETS},\"bytes_per_socket\":{bytes:.1},\"apply_events_per_sec\":{:.0},\"refresh_ms\":{refresh_ms:.1},\"frame_ms\":{frame_ms:.2}}}",
        applied as f64 / apply_s
    );
}
