//! Where the engine's events come from, behind one interface so the
//! commands that consume them (`stats`, `top`) do not care: the live kernel
//! (ring buffer, with sock_diag seeding and reconciliation), or a recording
//! played against a virtual clock ([`replay`], for `top --from`).

pub mod replay;

use std::{collections::HashSet, time::Instant};

use anyhow::Result;

pub use self::replay::Replay;
use crate::{
    clock::{WallClock, monotonic_ns},
    ebpf::Tracer,
    seed,
};
use tcptrace_core::{
    app::data::{PlaybackCommand, PlaybackStatus},
    decode,
    engine::Engine,
    filter::UserFilter,
    model::{Lost, SeenSocket},
    stats::HostFacts,
};

/// The live kernel: a loaded tracer plus what seeding needs.
pub struct Live {
    tracer: Tracer,
    user_filter: UserFilter,
    start_lost: Lost,
    clock: WallClock,
    pub decode_errors: u64,
}

/// A recording, and when its clock last moved.
pub struct Recorded {
    pub replay: Replay,
    last_tick: Instant,
}

/// A source of events for the engine.
pub enum Source {
    Live(Box<Live>),
    Recording(Box<Recorded>),
}

/// A sock_diag snapshot of every namespace, keeping what the filter keeps:
/// the sockets, the namespaces seen, and when it was taken (monotonic ns).
pub fn take_snapshot(filter: &UserFilter) -> Result<(Vec<SeenSocket>, Vec<u32>, u64)> {
    let snap = seed::snapshot(true)?;
    let namespaces: Vec<u32> = snap
        .sockets
        .iter()
        .filter_map(|s| s.netns)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let sockets = snap
        .sockets
        .into_iter()
        .filter(|s| filter.matches_seen(s))
        .collect();
    Ok((sockets, namespaces, snap.taken_at_mono_ns))
}

impl Source {
    pub fn live(tracer: Tracer, user_filter: UserFilter) -> Self {
        let start_lost = tracer.counters().lost();
        Source::Live(Box::new(Live {
            tracer,
            user_filter,
            start_lost,
            clock: crate::clock::measure_wall_clock(),
            decode_errors: 0,
        }))
    }

    pub fn recording(replay: Replay) -> Self {
        Source::Recording(Box::new(Recorded {
            replay,
            last_tick: Instant::now(),
        }))
    }

    /// Counts losses from now on (e.g. after seeding, once the user is told
    /// tracing has started).
    pub fn restart_loss_count(&mut self) {
        match self {
            Source::Live(l) => l.start_lost = l.tracer.counters().lost(),
            Source::Recording(_) => {}
        }
    }

    /// Transition hook and TIME_WAIT path, for the header.
    pub fn hooks(&self) -> (String, String) {
        match self {
            Source::Live(l) => (
                l.tracer.hooks.transitions.to_string(),
                l.tracer.hooks.timewait.to_string(),
            ),
            Source::Recording(r) => {
                let h = r.replay.header();
                (h.hook.clone(), h.timewait_hook.clone())
            }
        }
    }

    /// A replay command (play/pause, seek, speed); true when the engine was
    /// replaced (a seek back). Live sources ignore them.
    pub fn playback(&mut self, cmd: PlaybackCommand, engine: &mut Engine) -> Result<bool> {
        match self {
            Source::Live(_) => Ok(false),
            Source::Recording(r) => r.replay.command(cmd, engine),
        }
    }

    /// The warning for a replayed file that ended early.
    pub fn cut_warning(&self) -> Option<String> {
        match self {
            Source::Live(_) => None,
            Source::Recording(r) => r.replay.cut_warning(),
        }
    }

    /// Where a replay is; `None` when live.
    pub fn playback_status(&self) -> Option<PlaybackStatus> {
        match self {
            Source::Live(_) => None,
            Source::Recording(r) => Some(r.replay.status()),
        }
    }

    /// Applies every waiting event (a replay: those due by its clock, in
    /// batches); returns how many.
    pub fn drain(&mut self, engine: &mut Engine) -> usize {
        match self {
            Source::Live(l) => {
                let errors = &mut l.decode_errors;
                let n = l.tracer.drain(|bytes| match decode::decode(bytes) {
                    Ok(e) => engine.apply(&e),
                    Err(_) => *errors += 1,
                });
                l.tracer.flush_logs();
                n
            }
            Source::Recording(r) => {
                let now = Instant::now();
                r.replay.tick(now - r.last_tick);
                r.last_tick = now;
                r.replay.apply_due(engine, replay::BATCH)
            }
        }
    }

    /// Seeds the engine with the sockets that exist now.
    pub fn seed(&mut self, engine: &mut Engine) -> Result<()> {
        match self {
            Source::Live(l) => {
                let (sockets, _, taken_at) = take_snapshot(&l.user_filter)?;
                engine.seed(&sockets, taken_at);
                Ok(())
            }
            // The recording's own snapshots seed and reconcile.
            Source::Recording(_) => Ok(()),
        }
    }

    /// Corrects the engine against a fresh snapshot (missed events, ghosts).
    pub fn reconcile(&mut self, engine: &mut Engine) -> Result<()> {
        let (sockets, namespaces, taken_at) = match self {
            Source::Live(l) => take_snapshot(&l.user_filter)?,
            Source::Recording(_) => return Ok(()),
        };
        // Events up to the snapshot first, so it corrects only what was missed.
        self.drain(engine);
        engine.reconcile(&sockets, &namespaces, taken_at);
        Ok(())
    }

    /// Monotonic and wall-clock now, in the source's time.
    pub fn now(&self) -> (u64, u64) {
        match self {
            Source::Live(l) => {
                let mono = monotonic_ns();
                (mono, l.clock.wall_ns(mono))
            }
            Source::Recording(r) => r.replay.now(),
        }
    }

    /// Host facts and losses since the source started.
    pub fn host_facts(&self) -> HostFacts {
        match self {
            Source::Live(l) => HostFacts {
                port_range: seed::host::ephemeral_port_range().unwrap_or((32768, 60999)),
                tw_overflow: seed::host::tw_overflow().unwrap_or(0),
                lost: l.tracer.counters().lost().since(&l.start_lost),
                decode_errors: l.decode_errors,
            },
            Source::Recording(r) => HostFacts {
                port_range: r.replay.header().port_range,
                tw_overflow: 0,
                lost: r.replay.lost(),
                decode_errors: 0,
            },
        }
    }
}
