//! A recording as a [`Source`] (`top --from FILE`): a virtual clock moves
//! through the recording (at `--speed`, paused, or jumped by seeks) and every
//! record up to it goes to the loop, which applies it exactly as `report`
//! does ([`tcptrace_core::record::RecordApplier`]).
//!
//! Seeking back replays the file from its start: histograms, lifetimes and
//! "who closed first" are cumulative, so the state at time T is what the file
//! says up to T, not what the nearest snapshot says. Records are handed out
//! in bounded batches, so the screen keeps answering while a seek catches up.

use std::{
    fs::File,
    io::{BufReader, Read},
    path::{Path, PathBuf},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use anyhow::Result;
use tcptrace_core::{
    app::data::{PlaybackCommand, PlaybackStatus},
    clock::WallClock,
    model::Lost,
    record::{BadRecording, Cut, Header, Reader, Record},
};

use super::{Source, SourceInfo, wait_real};
use crate::session::Input;

/// Opens the recording at `path` (a file is an edge: the core reads any
/// `Read`); a file that is not a readable recording is [`BadRecording`]
/// (exit 2).
pub fn open_reader(path: &Path) -> Result<Reader<BufReader<File>>> {
    let f = File::open(path)
        .map_err(|e| BadRecording(format!("cannot open {}: {e}", path.display())))?;
    Reader::new(BufReader::with_capacity(1 << 20, f))
        .map_err(|e| anyhow::Error::new(BadRecording(format!("{}: {e}", path.display()))))
}

/// Records handed out per drain: about 100 ms of engine work, so requests
/// and refreshes are answered during long seeks.
pub const BATCH: usize = 400_000;

/// Fastest and slowest playback.
const MAX_SPEED: f64 = 4096.0;
const MIN_SPEED: f64 = 1.0 / 64.0;

/// A recording played against a virtual clock.
pub struct Replay<R: Read = BufReader<File>> {
    path: PathBuf,
    reader: Reader<R>,
    reopen: Reopen<R>,
    /// A record read but later than the clock.
    next: Option<Record>,
    /// Recording time (monotonic ns) of the header's start.
    start_ns: u64,
    /// The virtual clock.
    pos_ns: u64,
    /// Timestamp of the last applied record (never after `pos_ns`).
    applied_ns: u64,
    /// Records up to `pos_ns` remain unapplied (a batch ran out).
    behind: bool,
    playing: bool,
    speed: f64,
    step_ns: u64,
    /// The reader has no more records.
    ended: bool,
    /// Where a damaged file stopped, once reached.
    pub cut: Option<Cut>,
    clock: WallClock,
}

impl<R: Read> std::fmt::Debug for Replay<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("path", &self.path)
            .field("pos_ns", &self.pos_ns)
            .field("applied_ns", &self.applied_ns)
            .field("playing", &self.playing)
            .finish_non_exhaustive()
    }
}

/// Opens the recording again from its first byte (for seeks back).
pub type Reopen<R> = Box<dyn FnMut() -> Result<Reader<R>> + Send>;

impl Replay<BufReader<File>> {
    /// Opens `path`, playing at `speed`, with `step` per `[`/`]`.
    pub fn open(path: &Path, speed: f64, step: Duration) -> Result<Self> {
        let owned = path.to_path_buf();
        let reopen: Reopen<_> = Box::new(move || open_reader(&owned));
        Self::new(path, reopen, speed, step)
    }
}

impl<R: Read> Replay<R> {
    pub fn new(path: &Path, mut reopen: Reopen<R>, speed: f64, step: Duration) -> Result<Self> {
        let mut reader = reopen()?;
        // The opening snapshot is taken just after the header: the
        // recording starts once it exists, so its first moment shows it.
        let first = reader.next();
        let start_ns = match &first {
            Some(Record::Snapshot { ts_ns, .. }) => reader.header.start_mono_ns.max(*ts_ns),
            _ => reader.header.start_mono_ns,
        };
        let clock = WallClock {
            offset_ns: reader.header.clock_offset_ns as i128,
        };
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            reopen,
            next: first,
            start_ns,
            pos_ns: start_ns,
            applied_ns: start_ns,
            behind: false,
            playing: true,
            speed: speed.clamp(MIN_SPEED, MAX_SPEED),
            step_ns: step.as_nanos() as u64,
            ended: false,
            cut: None,
            clock,
        })
    }

    pub fn header(&self) -> &Header {
        &self.reader.header
    }

    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// The warning when the file was damaged (stretches skipped) or ended
    /// early, once reached.
    pub fn cut_warning(&self) -> Option<String> {
        let mut warnings = self.reader.warnings(&self.path);
        warnings.extend(self.cut.as_ref().map(|c| c.warning(&self.path)));
        (!warnings.is_empty()).then(|| warnings.join("; "))
    }

    fn restart(&mut self) {
        self.next = None;
        self.applied_ns = self.start_ns;
        self.ended = false;
        self.behind = false;
    }

    /// Moves the clock by `real` elapsed time when playing.
    pub fn tick(&mut self, real: Duration) {
        if self.playing && !self.ended {
            self.pos_ns = self
                .pos_ns
                .saturating_add((real.as_nanos() as f64 * self.speed) as u64);
        }
    }

    /// Moves the clock forward to `ns` (a virtual clock's wait).
    pub fn advance_to(&mut self, ns: u64) {
        if !self.ended {
            self.pos_ns = self.pos_ns.max(ns);
        }
    }

    /// Hands out up to `budget` records due by the clock; returns how many.
    pub fn due(&mut self, budget: usize, f: &mut dyn FnMut(Record)) -> usize {
        let mut n = 0;
        self.behind = false;
        while n < budget {
            let rec = match self.next.take().or_else(|| self.reader.next()) {
                Some(r) => r,
                None => {
                    self.ended = true;
                    self.cut = self.cut.take().or_else(|| self.reader.cut.take());
                    // Nothing after the last record: the clock stops there.
                    self.pos_ns = self.pos_ns.min(self.applied_ns);
                    self.playing = false;
                    return n;
                }
            };
            if rec.ts_ns() > self.pos_ns {
                self.next = Some(rec);
                return n;
            }
            self.applied_ns = self.applied_ns.max(rec.ts_ns());
            f(rec);
            n += 1;
        }
        self.behind = true;
        n
    }

    /// Play/pause, seek or speed; a seek before what was handed out rewinds
    /// the file (returns true then: the engine must start again).
    pub fn command(&mut self, cmd: PlaybackCommand) -> Result<bool> {
        match cmd {
            PlaybackCommand::TogglePlay => {
                self.playing = !self.playing && !self.ended;
                Ok(false)
            }
            PlaybackCommand::Speed(factor) => {
                self.speed = (self.speed * factor).clamp(MIN_SPEED, MAX_SPEED);
                Ok(false)
            }
            PlaybackCommand::Step(steps) => {
                let delta = self.step_ns.saturating_mul(steps.unsigned_abs() as u64);
                let target = if steps < 0 {
                    self.pos_ns.saturating_sub(delta).max(self.start_ns)
                } else {
                    self.pos_ns.saturating_add(delta)
                };
                let rewound = target < self.applied_ns;
                if rewound {
                    self.reader = (self.reopen)()?;
                    self.restart();
                } else if self.ended {
                    // Already at the last record: nothing later to show.
                    return Ok(false);
                }
                self.pos_ns = target;
                Ok(rewound)
            }
        }
    }

    /// Recording time the engine reflects: the clock, or the last applied
    /// record while catching up.
    pub fn now(&self) -> (u64, u64) {
        let mono = if self.behind {
            self.applied_ns
        } else {
            self.pos_ns
        };
        (mono, self.clock.wall_ns(mono))
    }

    pub fn status(&self) -> PlaybackStatus {
        let (mono, wall) = self.now();
        PlaybackStatus {
            at_wall_ns: wall,
            at_ms: mono.saturating_sub(self.start_ns) / 1_000_000,
            target_ms: self.pos_ns.saturating_sub(self.start_ns) / 1_000_000,
            playing: self.playing,
            speed: self.speed,
            catching_up: self.behind,
            ended: self.ended,
            cut_at: self.cut.as_ref().map(|c| c.offset),
        }
    }
}

/// A recording file as the loop's source: the virtual clock follows real
/// time (times the speed) between waits, or jumps to whatever is due next
/// ([`Recording::virtual_clock`]).
pub struct Recording {
    replay: Replay,
    last_tick: Instant,
    /// Stop the loop at the end of the file (`top` stays, to be looked at).
    stop_at_end: bool,
    /// The loop's clock is the recording's: waits never wait (`doctor
    /// --from` reads an hour's recording as fast as it decodes).
    jumps: bool,
}

impl Recording {
    pub fn open(path: &Path, speed: f64, step: Duration, stop_at_end: bool) -> Result<Self> {
        Ok(Self {
            replay: Replay::open(path, speed, step)?,
            last_tick: Instant::now(),
            stop_at_end,
            jumps: false,
        })
    }

    /// The whole recording on its own clock, as fast as it reads: ticks and
    /// snapshots fall at the recording's times; the loop stops at its end.
    pub fn virtual_clock(path: &Path) -> Result<Self> {
        Ok(Self {
            jumps: true,
            ..Self::open(path, 1.0, Duration::from_secs(1), true)?
        })
    }

    pub fn header(&self) -> &Header {
        self.replay.header()
    }
}

impl Source for Recording {
    fn info(&self) -> SourceInfo {
        let h = self.replay.header();
        SourceInfo {
            hook: h.hook.clone(),
            timewait_hook: h.timewait_hook.clone(),
            fallbacks: Vec::new(),
            host: h.host.clone(),
            kernel: h.kernel.clone(),
            recording: Some(self.replay.path.clone()),
            stacks: h.stacks,
        }
    }

    fn clock_ns(&self) -> u64 {
        if self.jumps {
            return self.replay.pos_ns;
        }
        crate::clock::monotonic_ns()
    }

    fn wait(&mut self, until: u64, inputs: &Receiver<Input>) -> Option<Input> {
        if self.jumps {
            self.replay.advance_to(until);
            return inputs.try_recv().ok();
        }
        let input = wait_real(until, inputs);
        let now = Instant::now();
        self.replay.tick(now - self.last_tick);
        self.last_tick = now;
        input
    }

    fn now(&self) -> (u64, u64) {
        self.replay.now()
    }

    fn drain(&mut self, f: &mut dyn FnMut(Record)) {
        self.replay.due(BATCH, f);
    }

    fn sockets(&mut self) -> Result<Option<Record>> {
        // The recording's own snapshots seed and reconcile.
        Ok(None)
    }

    fn take_lost(&mut self) -> Lost {
        // Its loss markers come with its records.
        Lost::default()
    }

    fn host(&self) -> ((u16, u16), u64) {
        (self.replay.header().port_range, 0)
    }

    fn playback(&mut self, cmd: PlaybackCommand) -> Result<bool> {
        self.replay.command(cmd)
    }

    fn playback_status(&self) -> Option<PlaybackStatus> {
        Some(self.replay.status())
    }

    fn warnings(&self) -> Vec<String> {
        self.replay.cut_warning().into_iter().collect()
    }

    fn ended(&self) -> bool {
        self.stop_at_end && self.replay.status().ended
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Cursor,
        net::{IpAddr, Ipv4Addr},
    };

    use super::*;
    use tcptrace_core::{
        engine::Engine,
        model::{Comm, Event, EventKind, Family, Owner, SeenOwner, SeenSocket, TcpState},
        record::{RecordApplier, Writer},
        stats::HostFacts,
    };

    const SEC: u64 = 1_000_000_000;
    const START: u64 = 100 * SEC;

    fn header() -> Header {
        Header {
            tcptrace_version: "0.1.0".into(),
            host: "db-client-7".into(),
            kernel: "6.18".into(),
            clock_offset_ns: 1_700_000_000 * SEC as i64,
            hook: "tp_btf".into(),
            timewait_hook: "timer tracepoints".into(),
            filters: vec![],
            port_range: (32768, 60999),
            start_mono_ns: START,
            start_wall_ns: 1_700_000_000 * SEC + START,
            stacks: false,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn transition(ts: u64, sk: u64, old: TcpState, new: TcpState) -> Event {
        Event {
            ts_ns: ts,
            kind: EventKind::Transition,
            // A kernel address (seeded sockets have small synthetic keys).
            sk: 0xffff_8880_0000_0000 + sk,
            link: None,
            owner: Some(Owner {
                pid: 4242,
                tid: 4242,
                comm: Comm::from_name("java"),
                cgroup: 0,
                from_listener: false,
            }),
            netns: Some(1),
            family: Family::V4,
            saddr: ip(2),
            sport: 40000 + sk as u16,
            daddr: ip(5),
            dport: 5432,
            old: Some(old),
            new,
            prev_ns: None,
            reason: None,
            stack: None,
        }
    }

    /// A DB-pool leak: 3 CLOSE_WAIT sockets at the opening snapshot, then
    /// one more every second for `secs` seconds (connect at s, the DB's FIN
    /// at s + 0.5), and a snapshot every 20 s.
    fn leak_recording(secs: u64) -> Vec<u8> {
        use TcpState::*;
        let seeded: Vec<SeenSocket> = (0..3u16)
            .map(|i| SeenSocket {
                netns: Some(1),
                family: Family::V4,
                saddr: ip(2),
                sport: 30000 + i,
                daddr: ip(5),
                dport: 5432,
                state: CloseWait,
                inode: 10 + i as u64,
                owner: Some(SeenOwner {
                    pid: 4242,
                    comm: Comm::from_name("java"),
                }),
                timer_left_ms: None,
                cookie: 1 + i as u64,
                cgroup: None,
            })
            .collect();
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        // Taken 2 ms after the header, as `record` does.
        w.snapshot(START + 2_000_000, &[1], &seeded, None).unwrap();
        for s in 1..=secs {
            let t = START + s * SEC;
            w.event(&transition(t, s, SynSent, Established)).unwrap();
            w.event(&transition(t + SEC / 2, s, Established, CloseWait))
                .unwrap();
            w.flush().unwrap();
        }
        w.finish().unwrap()
    }

    fn replay_of(bytes: Vec<u8>) -> Replay<Cursor<Vec<u8>>> {
        let reopen: Reopen<_> = Box::new(move || Ok(Reader::new(Cursor::new(bytes.clone()))?));
        Replay::new(
            Path::new("leak.tcptrace"),
            reopen,
            1.0,
            Duration::from_secs(10),
        )
        .unwrap()
    }

    /// What the loop does with a replay's records: the applier, and a fresh
    /// engine after a rewind.
    trait Drive {
        fn apply_due(&mut self, engine: &mut Engine, budget: usize) -> usize;
        fn command_on(&mut self, cmd: PlaybackCommand, engine: &mut Engine) -> Result<bool>;
    }

    impl Drive for Replay<Cursor<Vec<u8>>> {
        fn apply_due(&mut self, engine: &mut Engine, budget: usize) -> usize {
            let mut applier = RecordApplier::default();
            self.due(budget, &mut |rec| {
                applier.apply(engine, &rec);
            })
        }

        fn command_on(&mut self, cmd: PlaybackCommand, engine: &mut Engine) -> Result<bool> {
            let rewound = self.command(cmd)?;
            if rewound {
                *engine = Engine::new(100_000);
            }
            Ok(rewound)
        }
    }

    fn close_wait(engine: &mut Engine, replay: &Replay<Cursor<Vec<u8>>>) -> u64 {
        let (mono, wall) = replay.now();
        let host = HostFacts {
            port_range: (32768, 60999),
            tw_overflow: 0,
            lost: Lost::default(),
            decode_errors: 0,
            stacks: Default::default(),
        };
        let snap = engine.snapshot(mono, wall, host);
        snap.states.get("CLOSE_WAIT").copied().unwrap_or(0)
    }

    #[test]
    fn the_clock_applies_only_what_happened_before_it() {
        let mut r = replay_of(leak_recording(60));
        let mut e = Engine::new(100_000);
        r.apply_due(&mut e, BATCH);
        assert_eq!(r.status().at_ms, 0);
        assert_eq!(
            close_wait(&mut e, &r),
            3,
            "the opening snapshot shows at the first moment"
        );
        r.tick(Duration::from_millis(5_600));
        r.apply_due(&mut e, BATCH);
        assert_eq!(close_wait(&mut e, &r), 3 + 5);
        assert_eq!(r.status().at_ms, 5_600);
        // Twice as fast: 2 s of real time are 4 s of recording.
        r.command_on(PlaybackCommand::Speed(2.0), &mut e).unwrap();
        r.tick(Duration::from_secs(2));
        r.apply_due(&mut e, BATCH);
        assert_eq!(close_wait(&mut e, &r), 3 + 9);
    }

    #[test]
    fn paused_the_clock_stands_still_and_steps_move_it() {
        let mut r = replay_of(leak_recording(60));
        let mut e = Engine::new(100_000);
        r.command_on(PlaybackCommand::TogglePlay, &mut e).unwrap();
        r.tick(Duration::from_secs(30));
        r.apply_due(&mut e, BATCH);
        assert_eq!(close_wait(&mut e, &r), 3);
        assert!(!r.status().playing);
        let rewound = r.command_on(PlaybackCommand::Step(2), &mut e).unwrap();
        assert!(!rewound, "forward needs no rewind");
        r.apply_due(&mut e, BATCH);
        assert_eq!(r.status().at_ms, 20_000);
        assert_eq!(close_wait(&mut e, &r), 3 + 19);
    }

    #[test]
    fn stepping_back_rebuilds_exactly_the_state_of_that_moment() {
        let mut r = replay_of(leak_recording(60));
        let mut e = Engine::new(100_000);
        r.command_on(PlaybackCommand::Step(5), &mut e).unwrap();
        r.apply_due(&mut e, BATCH);
        assert_eq!(close_wait(&mut e, &r), 3 + 49);
        let rewound = r.command_on(PlaybackCommand::Step(-3), &mut e).unwrap();
        assert!(rewound);
        r.apply_due(&mut e, BATCH);
        assert_eq!(r.status().at_ms, 20_000);

        // The same as a fresh replay taken straight to 20 s.
        let mut fresh = replay_of(leak_recording(60));
        let mut f = Engine::new(100_000);
        fresh.command_on(PlaybackCommand::Step(2), &mut f).unwrap();
        fresh.apply_due(&mut f, BATCH);
        assert_eq!(close_wait(&mut e, &r), close_wait(&mut f, &fresh));
        assert_eq!(e.aggs.events_total, f.aggs.events_total);
        assert_eq!(e.aggs.events_total, 2 * 19 + 1);
        // Never before the start.
        r.command_on(PlaybackCommand::Step(-100), &mut e).unwrap();
        r.apply_due(&mut e, BATCH);
        assert_eq!(r.status().at_ms, 0);
        assert_eq!(close_wait(&mut e, &r), 3);
    }

    #[test]
    fn a_small_batch_shows_progress_at_the_last_applied_record() {
        let mut r = replay_of(leak_recording(60));
        let mut e = Engine::new(100_000);
        r.command_on(PlaybackCommand::Step(6), &mut e).unwrap();
        assert_eq!(r.apply_due(&mut e, 11), 11);
        let s = r.status();
        assert!(s.catching_up);
        assert_eq!(s.target_ms, 60_000);
        // The snapshot and 10 events: the 5th connection's FIN at 5.5 s.
        assert_eq!(s.at_ms, 5_498);
        while r.status().catching_up {
            r.apply_due(&mut e, 11);
        }
        assert_eq!(r.status().at_ms, 60_000);
        assert_eq!(close_wait(&mut e, &r), 3 + 59);
    }

    #[test]
    fn the_end_stops_the_clock_at_the_last_record() {
        let mut r = replay_of(leak_recording(10));
        let mut e = Engine::new(100_000);
        r.tick(Duration::from_secs(3600));
        r.apply_due(&mut e, BATCH);
        let s = r.status();
        assert!(s.ended && !s.playing);
        assert_eq!(s.at_ms, 10_498);
        assert_eq!(s.cut_at, None);
        r.command_on(PlaybackCommand::TogglePlay, &mut e).unwrap();
        assert!(!r.status().playing, "nothing left to play");
        // Back from the end works.
        r.command_on(PlaybackCommand::Step(-1), &mut e).unwrap();
        r.apply_due(&mut e, BATCH);
        assert_eq!(r.status().at_ms, 498);
        assert!(!r.status().ended);
    }

    #[test]
    fn a_cut_file_plays_to_its_last_block_and_says_where() {
        let mut bytes = leak_recording(10);
        bytes.truncate(bytes.len() - 3);
        let mut r = replay_of(bytes);
        let mut e = Engine::new(100_000);
        r.tick(Duration::from_secs(3600));
        r.apply_due(&mut e, BATCH);
        let s = r.status();
        assert!(s.ended);
        assert_eq!(s.at_ms, 9_498, "the last block (second 10) is cut");
        assert!(s.cut_at.is_some());
        let warning = r.cut_warning().unwrap();
        assert!(warning.starts_with("leak.tcptrace: "), "{warning}");
    }
}
