//! A scripted [`Source`] for tests that run the loop and every command
//! without a kernel: records, sock_diag answers, kernel losses and inputs
//! (signals, scrapes, `top`'s requests), each at a set time. Its clock
//! moves only when the loop waits, straight to the next thing due, so a
//! scripted minute runs in microseconds and the same every time.

use std::{collections::VecDeque, sync::mpsc::Receiver};

use anyhow::{Result, bail};
use tcptrace_core::{
    model::{Lost, SeenSocket},
    netfacts::NetFacts,
    record::Record,
};

use super::{Source, SourceInfo};
use crate::session::Input;

/// Wall clock = monotonic + this, in scripts (2023-11-14T22:13:20Z).
pub const WALL_OFFSET_NS: u64 = 1_700_000_000 * 1_000_000_000;

/// One thing that happens at a time.
#[derive(Debug)]
pub enum Step {
    /// A record the kernel delivers (an event).
    Record(Record),
    /// From now on, sock_diag answers with these sockets.
    Sockets(Vec<SeenSocket>),
    /// From now on, sock_diag fails (a namespace went away mid-dump...).
    SocketsFail,
    /// The kernel lost events (counted, not delivered).
    Lost(Lost),
    /// An input arrives (a signal, a scrape, a key).
    Input(Input),
}

/// A script played against a clock that jumps.
#[derive(Debug)]
pub struct Scripted {
    steps: VecDeque<(u64, Step)>,
    now: u64,
    sockets: Option<Vec<SeenSocket>>,
    /// The namespaces sock_diag dumps: 1, and every one a socket was seen in.
    namespaces: Vec<u32>,
    lost: Lost,
    delivered: u64,
    info: SourceInfo,
    port_range: (u16, u16),
    /// What snapshots report of the namespaces' sysctls.
    facts: Option<NetFacts>,
}

impl Scripted {
    /// `steps` at monotonic times (sorted here, stable); the clock starts
    /// at `start_ns`; sock_diag finds no socket until a [`Step::Sockets`].
    pub fn new(start_ns: u64, mut steps: Vec<(u64, Step)>) -> Self {
        steps.sort_by_key(|(ts, _)| *ts);
        Self {
            steps: steps.into(),
            now: start_ns,
            sockets: Some(Vec::new()),
            namespaces: vec![1],
            lost: Lost::default(),
            delivered: 0,
            info: SourceInfo {
                hook: "scripted".into(),
                timewait_hook: "scripted".into(),
                host: "test-host".into(),
                kernel: "6.18".into(),
                ..SourceInfo::default()
            },
            port_range: (32768, 60999),
            facts: None,
        }
    }

    /// Snapshots carry these namespace facts (sysctls, counters).
    pub fn with_facts(mut self, facts: NetFacts) -> Self {
        self.facts = Some(facts);
        self
    }

    /// Another `ip_local_port_range`.
    pub fn with_port_range(mut self, range: (u16, u16)) -> Self {
        self.port_range = range;
        self
    }

    /// Takes in the non-record steps due by now (sockets, losses).
    fn advance(&mut self) {
        while let Some((ts, step)) = self.steps.front() {
            if *ts > self.now || matches!(step, Step::Record(_) | Step::Input(_)) {
                break;
            }
            match self.steps.pop_front().map(|(_, s)| s) {
                Some(Step::Sockets(s)) => {
                    self.namespaces.extend(s.iter().filter_map(|s| s.netns));
                    self.namespaces.sort_unstable();
                    self.namespaces.dedup();
                    self.sockets = Some(s);
                }
                Some(Step::SocketsFail) => self.sockets = None,
                Some(Step::Lost(l)) => self.lost = self.lost.saturating_add(&l),
                _ => {}
            }
        }
    }
}

impl Source for Scripted {
    fn info(&self) -> SourceInfo {
        self.info.clone()
    }

    fn clock_ns(&self) -> u64 {
        self.now
    }

    fn wait(&mut self, until: u64, inputs: &Receiver<Input>) -> Option<Input> {
        if let Ok(input) = inputs.try_recv() {
            return Some(input);
        }
        // A scripted input due before `until` arrives then.
        let next_input = self
            .steps
            .iter()
            .position(|(ts, s)| *ts <= until && matches!(s, Step::Input(_)));
        if let Some(i) = next_input {
            let (ts, step) = self.steps.remove(i).expect("found");
            self.now = self.now.max(ts);
            self.advance();
            if let Step::Input(input) = step {
                return Some(input);
            }
        }
        self.now = self.now.max(until);
        self.advance();
        None
    }

    fn now(&self) -> (u64, u64) {
        (self.now, self.now + WALL_OFFSET_NS)
    }

    fn drain(&mut self, f: &mut dyn FnMut(Record)) {
        self.advance();
        while let Some((ts, Step::Record(_))) = self.steps.front() {
            if *ts > self.now {
                break;
            }
            if let Some((_, Step::Record(rec))) = self.steps.pop_front() {
                self.delivered += 1;
                f(rec);
            }
            self.advance();
        }
    }

    fn sockets(&mut self) -> Result<Option<Record>> {
        self.advance();
        match &self.sockets {
            Some(sockets) => Ok(Some(Record::Snapshot {
                ts_ns: self.now,
                namespaces: self.namespaces.clone(),
                sockets: sockets.clone(),
                facts: self.facts.clone().map(Box::new),
            })),
            None => bail!("scripted sock_diag failure"),
        }
    }

    fn take_lost(&mut self) -> Lost {
        self.advance();
        std::mem::take(&mut self.lost)
    }

    fn delivered(&self) -> u64 {
        self.delivered
    }

    fn host(&self) -> ((u16, u16), u64) {
        (self.port_range, 0)
    }
}
