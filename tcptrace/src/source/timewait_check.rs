//! Why the live source asks the kernel about some timewait sockets: their
//! move from FIN_WAIT2 to TIME_WAIT often fires no hook at all.
//!
//! A client that closes first leaves an orphan; once the server acknowledges
//! its FIN, the orphan becomes a timewait socket in substate FIN_WAIT2
//! (`tcp_time_wait(sk, TCP_FIN_WAIT2, tmo)`). When the server's own FIN
//! arrives, `tcp_timewait_state_process()` sets `tw_substate = TIME_WAIT`
//! and re-arms the timer: `inet_twsk_reschedule()` -> `mod_timer_pending()`
//! -> `__mod_timer()`, which returns early, without `timer_cancel` or
//! `timer_start`, when the new expiry falls in the timer-wheel bucket the
//! timer is already in (2 s wide for a 60 s timer at HZ=250): the usual case,
//! since servers close within a second or two. Nothing else on that path is
//! a cheap signal: the ACK the timewait socket sends (`tcp_v4_timewait_ack`)
//! has no tracepoint, and the skb freed after it only fires tracepoints that
//! every packet of the host fires. The substate itself is read at every
//! timer event the hooks do see (`TwRearm`'s new state, `TwEnd`'s old).
//!
//! So the change is looked for from userspace: the timewait sockets known to
//! be in FIN_WAIT2 are followed from the events passing through (a
//! `TwBegin` or `TwRearm` in FIN_WAIT2 adds one; any other timewait event of
//! it, or a `TwSubstate`, ends the following), and every [`CHECK_EVERY`],
//! while any is followed, the kernel is asked (sock_diag, in each one's
//! network namespace) which are TIME_WAIT now. Each one found becomes an
//! [`EventKind::TwSubstate`] event: found when asked (`ts_ns`), changed
//! since it was last known in FIN_WAIT2 (`prev_ns` before that: its begin,
//! or the previous check). One the kernel no longer has is dropped (its
//! `TwEnd` comes through the ring).
//!
//! Asking: each socket by its 4-tuple (about 1.65 µs of CPU each, 64 to a
//! datagram), or above [`DUMP_ABOVE`] in a namespace, one dump of its
//! FIN_WAIT2 sockets (a walk of the whole established hash, 1-3 ms here,
//! then ~0.6 µs per socket listed) and lookups of the followed ones it did
//! not list. Measured on this kernel (2 cores, 262,144-bucket established
//! hash; `measure_lookup_and_dump_costs` in `seed/sock_diag.rs` and
//! `measure_check_cost` here), all in FIN_WAIT2: 100 by tuple 0.16 ms
//! against 3.4 ms by dump, 1,000 1.6 ms against 3.1 ms, 10,000 16.7 ms
//! against 8.9 ms. A whole check (grouping, questions, events), CPU: 100
//! followed 0.2 ms, 1,000 2 ms, 10,000 16 ms (22 ms with half of them moved
//! to TIME_WAIT); entering another namespace adds a thread, ~50 µs.
//!
//! What this cannot see: the moment of the change (only that it happened
//! between two times), a timewait socket that moves to TIME_WAIT and ends
//! between two checks (its `TwEnd` says TIME_WAIT), and timewait sockets
//! never seen in an event (they predate tracing, or the user's in-kernel
//! filter dropped their begin): snapshot reconciliation finds those.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use tcptrace_core::model::{Event, EventKind, Family, TcpState};

use crate::seed::{
    self,
    sock_diag::{DiagSocket, Lookup, TupleQuery, family_constant},
};

/// How often the followed timewait sockets are checked. The change happens
/// when the server closes, usually within a second or two of the client; a
/// second bounds how late it is told (plus the check itself), and costs one
/// round of lookups a second, only while some orphan is in FIN_WAIT2.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Timewait sockets in FIN_WAIT2 followed at most (~200 bytes each, 3 MB
/// in all; a check of this many costs ~35 ms of CPU, 3.5% of a core). A
/// host rarely holds more than a few hundred (`doctor` warns from 200).
/// Beyond it new ones are counted ([`CheckCounters::not_followed`]) and
/// their move is found by snapshot reconciliation (commands with an
/// engine) or seen at their end.
pub const MAX_FOLLOWED: usize = 16_384;

/// Above this many followed sockets in one namespace, a dump of its
/// FIN_WAIT2 sockets plus lookups of the rest costs less than a lookup each
/// (the crossover measured between 1,000 and 10,000).
pub const DUMP_ABOVE: usize = 2_000;

/// Check failures are reported at most this often.
const FAILURE_REPORT: Duration = Duration::from_secs(60);

/// A timewait socket in FIN_WAIT2 being followed.
#[derive(Clone, Copy, Debug)]
struct Followed {
    /// Its latest event in FIN_WAIT2 (begin or re-arm): tuple, owner, netns.
    last: Event,
    /// When it was last known in FIN_WAIT2 (monotonic ns).
    known_ns: u64,
    /// Its sock_diag cookie once found: the same tuple with another cookie
    /// is another socket.
    cookie: Option<u64>,
}

impl Followed {
    fn query(&self) -> TupleQuery {
        let e = &self.last;
        TupleQuery {
            family: e.family,
            saddr: e.saddr,
            sport: e.sport,
            daddr: e.daddr,
            dport: e.dport,
            cookie: self.cookie,
        }
    }
}

/// What the check did, since the source started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckCounters {
    /// Checks run.
    pub checks: u64,
    /// Sockets asked after (one per followed socket per check).
    pub asked: u64,
    /// Found in TIME_WAIT: `TwSubstate` events made.
    pub found: u64,
    /// Timewait sockets in FIN_WAIT2 not followed: [`MAX_FOLLOWED`] were.
    pub not_followed: u64,
    /// Followed sockets dropped because their namespace was gone.
    pub unreachable: u64,
    /// Checks of a namespace that failed (tried again at the next check).
    pub failures: u64,
    /// CPU time of the checks, in total and the largest one (ns).
    pub cpu_ns: u64,
    pub max_cpu_ns: u64,
}

/// Where the answers come from: the kernel ([`KernelAsker`]) or a test.
pub trait Asker {
    /// A check begins (namespaces may be looked for again).
    fn begin(&mut self) {}

    /// The answers to `queries` (one each, in order), all in the network
    /// namespace `netns` (0: unknown, the tracer's own); `owner` is a
    /// process that may live in it. `Ok(None)` when the namespace is gone.
    fn ask(
        &mut self,
        netns: u32,
        owner: Option<u32>,
        queries: &[TupleQuery],
    ) -> Result<Option<Vec<Lookup>>>;
}

/// The followed timewait sockets and when to check them next.
#[derive(Debug, Default)]
pub struct TimewaitCheck {
    followed: HashMap<u64, Followed>,
    next_ns: u64,
    pub counters: CheckCounters,
    warned_full: bool,
    reported_failure_at: Option<u64>,
}

impl TimewaitCheck {
    /// Starts following from the events it observes; the first check is
    /// [`CHECK_EVERY`] after `now_ns`.
    pub fn new(now_ns: u64) -> Self {
        Self {
            next_ns: now_ns.saturating_add(CHECK_EVERY.as_nanos() as u64),
            ..Self::default()
        }
    }

    /// How many are followed now.
    pub fn followed(&self) -> usize {
        self.followed.len()
    }

    /// One event passing through the source. Only timewait events touch
    /// the set; a transition costs one comparison.
    #[inline]
    pub fn observe(&mut self, e: &Event) {
        match e.kind {
            EventKind::Transition | EventKind::Accept | EventKind::Lost | EventKind::Drop => {}
            EventKind::TwBegin | EventKind::TwRearm if e.new == TcpState::FinWait2 => {
                self.follow(e);
            }
            EventKind::TwBegin | EventKind::TwRearm | EventKind::TwEnd | EventKind::TwSubstate => {
                self.followed.remove(&e.sk);
            }
        }
    }

    fn follow(&mut self, e: &Event) {
        let fresh = Followed {
            last: *e,
            known_ns: e.ts_ns,
            cookie: None,
        };
        let full = self.followed.len() >= MAX_FOLLOWED;
        match self.followed.entry(e.sk) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let f = o.get_mut();
                if e.kind == EventKind::TwBegin {
                    // The memory of an ended one, reused: another socket.
                    *f = fresh;
                } else {
                    f.last = *e;
                    f.known_ns = f.known_ns.max(e.ts_ns);
                }
            }
            std::collections::hash_map::Entry::Vacant(_) if full => {
                self.counters.not_followed += 1;
                if !self.warned_full {
                    self.warned_full = true;
                    crate::say!(
                        "warning: more than {MAX_FOLLOWED} timewait sockets in FIN_WAIT2 at once: the others are not checked for TIME_WAIT (reconciliation finds them, or their end shows it)"
                    );
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(fresh);
            }
        }
    }

    /// Whether a check is due at `now_ns` (never while nothing is followed).
    pub fn is_due(&self, now_ns: u64) -> bool {
        !self.followed.is_empty() && now_ns >= self.next_ns
    }

    /// Checks every followed socket: asks `asker` namespace by namespace
    /// (reading `clock`, monotonic ns, around each question) and hands each
    /// one found in TIME_WAIT to `emit` as a `TwSubstate` event.
    pub fn run(
        &mut self,
        asker: &mut dyn Asker,
        clock: &mut dyn FnMut() -> u64,
        emit: &mut dyn FnMut(Event),
    ) {
        let start = clock();
        self.next_ns = start.saturating_add(CHECK_EVERY.as_nanos() as u64);
        self.counters.checks += 1;
        asker.begin();
        let mut by_netns: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (sk, f) in &self.followed {
            by_netns
                .entry(f.last.netns.unwrap_or(0))
                .or_default()
                .push(*sk);
        }
        for (netns, mut sks) in by_netns {
            // Oldest first: the events come out in a stable order.
            sks.sort_unstable_by_key(|sk| (self.followed[sk].last.ts_ns, *sk));
            let queries: Vec<TupleQuery> = sks.iter().map(|sk| self.followed[sk].query()).collect();
            let owner = sks
                .iter()
                .find_map(|sk| self.followed[sk].last.owner.map(|o| o.pid));
            self.counters.asked += sks.len() as u64;
            let asked_at = clock();
            let answers = asker.ask(netns, owner, &queries);
            let found_at = clock();
            match answers {
                Ok(Some(answers)) if answers.len() == sks.len() => {
                    for (sk, answer) in sks.iter().zip(answers) {
                        self.settle(*sk, answer, asked_at, found_at, emit);
                    }
                }
                Ok(Some(answers)) => self.failed(
                    found_at,
                    &anyhow::anyhow!(
                        "{} answers to {} questions: this is a tcptrace bug, please report it",
                        answers.len(),
                        sks.len()
                    ),
                ),
                Ok(None) => {
                    self.counters.unreachable += sks.len() as u64;
                    for sk in &sks {
                        self.followed.remove(sk);
                    }
                }
                Err(e) => self.failed(found_at, &e),
            }
        }
    }

    /// What one answer means for one followed socket.
    fn settle(
        &mut self,
        sk: u64,
        answer: Lookup,
        asked_at: u64,
        found_at: u64,
        emit: &mut dyn FnMut(Event),
    ) {
        match answer {
            Lookup::Found {
                state: TcpState::TimeWait,
                timewait: true,
                ..
            } => {
                let f = self.followed.remove(&sk).expect("followed");
                self.counters.found += 1;
                emit(Event {
                    ts_ns: found_at,
                    kind: EventKind::TwSubstate,
                    link: None,
                    old: Some(TcpState::FinWait2),
                    new: TcpState::TimeWait,
                    prev_ns: Some(found_at.saturating_sub(f.known_ns)),
                    reason: None,
                    ..f.last
                });
            }
            Lookup::Found {
                state: TcpState::FinWait2,
                timewait: true,
                cookie,
            } => {
                let f = self.followed.get_mut(&sk).expect("followed");
                // Known FIN_WAIT2 at some moment after the question was sent.
                f.known_ns = f.known_ns.max(asked_at);
                f.cookie = Some(cookie);
            }
            // Gone (its end comes through the ring), or the tuple now
            // belongs to another socket.
            _ => {
                self.followed.remove(&sk);
            }
        }
    }

    fn failed(&mut self, now: u64, e: &anyhow::Error) {
        self.counters.failures += 1;
        let due = self
            .reported_failure_at
            .is_none_or(|t| now.saturating_sub(t) >= FAILURE_REPORT.as_nanos() as u64);
        if due {
            self.reported_failure_at = Some(now);
            crate::say!(
                "warning: checking timewait sockets in FIN_WAIT2 (sock_diag) failed ({} so far): {e:#}; going on",
                self.counters.failures
            );
        }
    }

    /// Adds one check's CPU time to the counters.
    pub fn add_cpu(&mut self, ns: u64) {
        self.counters.cpu_ns += ns;
        self.counters.max_cpu_ns = self.counters.max_cpu_ns.max(ns);
    }
}

/// The kernel: a sock_diag socket kept open in the tracer's own namespace
/// (the common case costs no thread), other namespaces entered on a
/// throwaway thread for the question (a socket or a descriptor kept open
/// there would keep a deleted namespace alive).
#[derive(Default)]
pub struct KernelAsker {
    own_netns: u32,
    own: Option<DiagSocket>,
    /// Namespace inode -> a path to it (`/proc/PID/ns/net`, `/run/netns/X`).
    paths: HashMap<u32, PathBuf>,
    rescanned: bool,
    /// CPU time spent on the threads that entered other namespaces (ns),
    /// since [`KernelAsker::take_other_threads_cpu_ns`].
    other_threads_cpu_ns: u64,
}

impl KernelAsker {
    pub fn new() -> Self {
        Self {
            own_netns: seed::sock_diag::current_netns().unwrap_or(0),
            ..Self::default()
        }
    }

    /// CPU time the questions cost on the threads that entered other
    /// namespaces (the caller's thread clock does not see it), since the
    /// last call.
    pub fn take_other_threads_cpu_ns(&mut self) -> u64 {
        std::mem::take(&mut self.other_threads_cpu_ns)
    }

    /// A path to namespace `netns`: the one known if it still leads there,
    /// else the owner's, else (once per check) a scan of every namespace.
    fn path_of(&mut self, netns: u32, owner: Option<u32>) -> Option<PathBuf> {
        let leads_there =
            |p: &Path| seed::netns::namespace_inode(p).is_ok_and(|inode| inode as u32 == netns);
        if let Some(p) = self.paths.get(&netns) {
            if leads_there(p) {
                return Some(p.clone());
            }
            self.paths.remove(&netns);
        }
        if let Some(pid) = owner {
            let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if leads_there(&p) {
                self.paths.insert(netns, p.clone());
                return Some(p);
            }
        }
        if !self.rescanned {
            self.rescanned = true;
            self.paths.clear();
            for p in seed::namespaces() {
                if let Ok(inode) = seed::netns::namespace_inode(&p) {
                    self.paths.entry(inode as u32).or_insert(p);
                }
            }
        }
        self.paths.get(&netns).cloned()
    }
}

impl Asker for KernelAsker {
    fn begin(&mut self) {
        self.rescanned = false;
    }

    fn ask(
        &mut self,
        netns: u32,
        owner: Option<u32>,
        queries: &[TupleQuery],
    ) -> Result<Option<Vec<Lookup>>> {
        if netns == 0 || netns == self.own_netns {
            let sock = match &mut self.own {
                Some(s) => s,
                None => self.own.insert(DiagSocket::open()?),
            };
            return match ask_in(sock, queries) {
                Ok(answers) => Ok(Some(answers)),
                Err(e) => {
                    // A fresh socket next time (e.g. after an overrun).
                    self.own = None;
                    Err(e)
                }
            };
        }
        let Some(path) = self.path_of(netns, owner) else {
            return Ok(None);
        };
        let queries = queries.to_vec();
        let asked = seed::in_namespace(&path, move || {
            let cpu = thread_cpu_ns();
            let answers = (|| -> Result<Option<Vec<Lookup>>> {
                let mut sock = DiagSocket::open()?;
                if sock.netns() != netns {
                    // The path led elsewhere by the time it was entered.
                    return Ok(None);
                }
                ask_in(&mut sock, &queries).map(Some)
            })();
            (answers, thread_cpu_ns().saturating_sub(cpu))
        })
        .map(|(answers, cpu)| {
            self.other_threads_cpu_ns += cpu;
            answers
        });
        match asked {
            Ok(Ok(Some(answers))) => Ok(Some(answers)),
            Ok(Ok(None)) | Err(_) => {
                // The namespace went away (or its path no longer leads to it).
                self.paths.remove(&netns);
                Ok(None)
            }
            Ok(Err(e)) => Err(e),
        }
    }
}

/// A followed socket's identity in a dump: family and 4-tuple.
type TupleKey = (Family, IpAddr, u16, IpAddr, u16);

/// The answers for `queries` in `sock`'s namespace: a lookup each, or above
/// [`DUMP_ABOVE`] a dump of the FIN_WAIT2 sockets (the timewait ones listed
/// are answered from it) and lookups of the rest.
pub fn ask_in(sock: &mut DiagSocket, queries: &[TupleQuery]) -> Result<Vec<Lookup>> {
    let mut answers = Vec::with_capacity(queries.len());
    if queries.len() <= DUMP_ABOVE {
        sock.lookup(queries, &mut answers)?;
        return Ok(answers);
    }
    let mut listed = Vec::new();
    for family in [Family::V4, Family::V6] {
        if queries.iter().any(|q| q.family == family) {
            sock.dump(
                family_constant(family),
                1 << TcpState::FinWait2 as u32,
                &mut listed,
            )?;
        }
    }
    let in_fin_wait2: HashMap<TupleKey, u64> = listed
        .iter()
        .filter(|s| s.timer_left_ms.is_some())
        .map(|s| ((s.family, s.saddr, s.sport, s.daddr, s.dport), s.cookie))
        .collect();
    answers.resize(queries.len(), Lookup::Gone);
    let mut rest = Vec::new();
    let mut rest_at = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        match in_fin_wait2.get(&(q.family, q.saddr, q.sport, q.daddr, q.dport)) {
            Some(&cookie) if q.cookie.is_none_or(|c| c == cookie) => {
                answers[i] = Lookup::Found {
                    state: TcpState::FinWait2,
                    timewait: true,
                    cookie,
                };
            }
            _ => {
                rest.push(*q);
                rest_at.push(i);
            }
        }
    }
    let mut looked_up = Vec::with_capacity(rest.len());
    sock.lookup(&rest, &mut looked_up)?;
    for (i, answer) in rest_at.into_iter().zip(looked_up) {
        answers[i] = answer;
    }
    Ok(answers)
}

/// CPU time of the calling thread (ns): what a check costs (the kernel's
/// sock_diag work runs in it, in sendmsg and recvmsg).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests;
