//! The live kernel as a [`Source`]: the ring buffer (copied out by the
//! reader thread, decoded here, the process that reused a timewait socket
//! named), sock_diag snapshots of every namespace (through the user's
//! filters), the kernel's loss counters, on the monotonic clock the kernel
//! stamps events with; and the timewait sockets whose move from FIN_WAIT2
//! to TIME_WAIT no hook shows, checked about once a second
//! ([`super::timewait_check`]) so that every command gets their
//! `TwSubstate` events in the stream, through the user's filters. With
//! `--stacks`, the sockets entering CLOSE_WAIT with a user stack are handed
//! to the namer ([`crate::stacks::StackNamer`], its own thread), whose
//! named stacks come back into the stream as [`Record::Stack`] records at
//! the start of a later drain. Connection attempts the kernel dropped
//! (`skb:kfree_skb`, unless `--no-drop-reasons`) come as [`Record::Drop`],
//! their reasons named from the running kernel's table.

use std::sync::{Arc, mpsc::Receiver};

use anyhow::Result;
use tcptrace_core::{
    clock::WallClock,
    decode::{self, DecodeError, KernelDropReasons, ReuserNames},
    filter::UserFilter,
    model::{Comm, EventKind, Family, Lost, SeenSocket, TcpState},
    record::Record,
    stacks::StackCounts,
};

use super::{
    Source, SourceInfo,
    timewait_check::{CheckCounters, KernelAsker, TimewaitCheck, thread_cpu_ns},
    wait_real,
};
use crate::{
    clock::monotonic_ns, ebpf::Tracer, seed, session::Input, stacks::StackNamer,
    workloads::Workloads,
};

/// The loaded tracer and what snapshots need.
pub struct Live {
    tracer: Tracer,
    user_filter: UserFilter,
    realtime: bool,
    clock: WallClock,
    last_lost: Lost,
    start_events: u64,
    decode_errors: u64,
    timewait: TimewaitCheck,
    asker: KernelAsker,
    reusers: ReuserNames,
    /// The workload resolver and the `--cgroup`/`--container`/`--unit`/
    /// `--netns` filters.
    workloads: Workloads,
    /// `--stacks`: names the stacks of sockets entering CLOSE_WAIT.
    stacks: Option<StackNamer>,
    /// Every listener's accept queue and drop count, and each namespace's
    /// drop counters, about once a second ([`LISTENER_SAMPLE_EVERY_NS`]).
    listeners: seed::ListenerSampler,
    next_listener_sample: u64,
    /// Failed listener samples (reported at most once a minute).
    listener_failures: u64,
    listener_failure_reported: Option<u64>,
    /// The running kernel's drop reasons (empty when `skb:kfree_skb` is
    /// not attached).
    drop_reasons: KernelDropReasons,
}

/// How often listeners are sampled (`Record::Listeners`).
pub const LISTENER_SAMPLE_EVERY_NS: u64 = 1_000_000_000;
/// Failed listener samples are reported at most this often.
const LISTENER_FAILURE_REPORT_NS: u64 = 60_000_000_000;

/// A process's name from `/proc` (the reuser of a timewait socket whose
/// connect the filters left out: it called connect() a moment ago).
fn proc_comm(pid: u32) -> Option<Comm> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(Comm::from_name(name.trim_end_matches('\n')))
}

/// A sock_diag snapshot of every namespace, keeping what the filter keeps:
/// the sockets, the namespaces seen, when it was taken (monotonic ns), and
/// each namespace's TCP facts.
pub fn take_snapshot(filter: &UserFilter, workloads: &mut Workloads) -> Result<Record> {
    let snap = seed::snapshot(true)?;
    let mut namespaces: Vec<u32> = snap.sockets.iter().filter_map(|s| s.netns).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let sockets = snap
        .sockets
        .into_iter()
        .filter(|s| filter.matches_seen(s))
        .filter(|s| !workloads.narrows() || workloads.keeps_seen(s))
        .collect();
    Ok(Record::Snapshot {
        ts_ns: snap.taken_at_mono_ns,
        namespaces,
        sockets,
        facts: Some(Box::new(snap.facts)),
    })
}

/// A listener as the socket filters see it: a LISTEN socket.
fn listener_as_seen(l: &tcptrace_core::listeners::ListenerSample) -> SeenSocket {
    let unspecified = match l.family {
        Family::V4 => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        Family::V6 => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    SeenSocket {
        netns: l.netns,
        family: l.family,
        saddr: l.addr,
        sport: l.port,
        daddr: unspecified,
        dport: 0,
        state: TcpState::Listen,
        inode: l.inode,
        owner: l.owner,
        timer_left_ms: None,
        cookie: 0,
        cgroup: l.cgroup,
    }
}

impl Live {
    /// `realtime`: drain at SCHED_RR 1 (see [`crate::sched`]).
    /// Loads the tracer with `opts` (draining at the priority it asks for).
    pub fn load(opts: &crate::ebpf::LoadOptions, user_filter: UserFilter) -> anyhow::Result<Self> {
        let mut live = Self::new(Tracer::load(opts)?, user_filter, opts.realtime_drain);
        live.workloads = Workloads::new(opts.workloads.clone());
        if opts.stacks {
            // Started here, before `enter_loop` raises the loop thread's
            // priority: the naming thread does not inherit SCHED_RR.
            let depth = live.tracer.stack_depth();
            let map = live
                .tracer
                .take_stack_map()
                .ok_or_else(|| anyhow::anyhow!("--stacks: the tracer has no stack map"))?;
            live.stacks = Some(StackNamer::start(map, depth)?);
        }
        if let Some(warning) = live.workloads.nothing_matches_warning() {
            crate::say!("{warning}");
        }
        Ok(live)
    }

    pub fn new(tracer: Tracer, user_filter: UserFilter, realtime: bool) -> Self {
        let counters = tracer.counters();
        let drop_reasons = tracer.drop_reasons().cloned().unwrap_or_default();
        Self {
            drop_reasons,
            last_lost: counters.lost(),
            start_events: counters.events,
            tracer,
            user_filter,
            realtime,
            clock: crate::clock::measure_wall_clock(),
            decode_errors: 0,
            timewait: TimewaitCheck::new(monotonic_ns()),
            asker: KernelAsker::new(),
            reusers: ReuserNames::default(),
            workloads: Workloads::new(Default::default()),
            stacks: None,
            listeners: seed::ListenerSampler::new(true),
            // The first drain samples: the listeners are known (and their
            // counts taken as history) before the banner.
            next_listener_sample: 0,
            listener_failures: 0,
            listener_failure_reported: None,
        }
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// What the check of timewait sockets in FIN_WAIT2 did so far.
    pub fn timewait_counters(&self) -> CheckCounters {
        self.timewait.counters
    }

    /// A listener sample, when due, through the user's filters: a listener
    /// is kept like a LISTEN socket would be (its port, family, owner,
    /// namespace, workload); the counters of namespaces the filters leave
    /// out are left out too.
    fn sample_listeners(&mut self, f: &mut dyn FnMut(Record)) {
        let now = monotonic_ns();
        if now < self.next_listener_sample {
            return;
        }
        self.next_listener_sample = now.saturating_add(LISTENER_SAMPLE_EVERY_NS);
        let rec = match self.listeners.sample(now) {
            Ok(rec) => rec,
            Err(e) => {
                self.listener_failures += 1;
                if self
                    .listener_failure_reported
                    .is_none_or(|t| now.saturating_sub(t) >= LISTENER_FAILURE_REPORT_NS)
                {
                    crate::say!(
                        "warning: sampling listeners (sock_diag) failed ({} so far): {e:#}; going on",
                        self.listener_failures
                    );
                    self.listener_failure_reported = Some(now);
                }
                return;
            }
        };
        let Record::Listeners {
            ts_ns,
            mut listeners,
            mut counters,
        } = rec
        else {
            return;
        };
        let filter = self.user_filter;
        let workloads = &mut self.workloads;
        let by_workload = workloads.narrows();
        if filter.narrows() || by_workload {
            listeners.retain(|l| {
                let seen = listener_as_seen(l);
                filter.matches_seen(&seen) && (!by_workload || workloads.keeps_seen(&seen))
            });
        }
        if by_workload {
            counters.retain(|c| workloads.keeps_netns(c.netns));
        }
        f(Record::Listeners {
            ts_ns,
            listeners,
            counters,
        });
    }

    /// The check of timewait sockets in FIN_WAIT2, when due: each one found
    /// in TIME_WAIT that passes the user's filter (the kernel's never saw
    /// it) goes to `f`.
    fn check_timewait(&mut self, f: &mut dyn FnMut(Record)) {
        if !self.timewait.is_due(monotonic_ns()) {
            return;
        }
        let cpu = thread_cpu_ns();
        let filter = self.user_filter;
        let workloads = &mut self.workloads;
        let narrows = workloads.narrows();
        self.timewait
            .run(&mut self.asker, &mut monotonic_ns, &mut |e| {
                if filter.matches_event(&e) && (!narrows || workloads.keeps_event(&e)) {
                    f(Record::Event(e));
                }
            });
        let spent = thread_cpu_ns().saturating_sub(cpu) + self.asker.take_other_threads_cpu_ns();
        self.timewait.add_cpu(spent);
        let c = &self.timewait.counters;
        log::debug!(
            "timewait check {}: {} in FIN_WAIT2 followed, {} found in TIME_WAIT so far, {} us of CPU",
            c.checks,
            self.timewait.followed(),
            c.found,
            spent / 1_000
        );
    }
}

impl Source for Live {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            hook: self.tracer.hooks.transitions.to_string(),
            timewait_hook: self.tracer.hooks.timewait.to_string(),
            fallbacks: self.tracer.hooks.fallbacks.clone(),
            host: seed::host::hostname(),
            kernel: seed::host::kernel_release(),
            recording: None,
            stacks: self.stacks.is_some(),
        }
    }

    fn enter_loop(&mut self) {
        crate::sched::drain_priority(self.realtime);
    }

    fn clock_ns(&self) -> u64 {
        monotonic_ns()
    }

    fn wait(&mut self, until: u64, inputs: &Receiver<Input>) -> Option<Input> {
        wait_real(until, inputs)
    }

    fn now(&self) -> (u64, u64) {
        let mono = monotonic_ns();
        (mono, self.clock.wall_ns(mono))
    }

    fn drain(&mut self, f: &mut dyn FnMut(Record)) {
        // Names made since the last drain first: a snapshot taken after
        // this drain already has them.
        let namer = &mut self.stacks;
        if let Some(n) = namer.as_mut() {
            n.take_named(&mut |key, stack| {
                f(Record::Stack {
                    key,
                    stack: Arc::new(stack),
                })
            });
        }
        let errors = &mut self.decode_errors;
        let timewait = &mut self.timewait;
        let reusers = &mut self.reusers;
        let workloads = &mut self.workloads;
        let by_workload = workloads.narrows();
        // The kernel's filter may be wider than the user's (see
        // `UserFilter::kernel_filter`): the check follows what it lets
        // through, the stream carries what the user asked for.
        let narrow = self.user_filter.narrows().then_some(self.user_filter);
        // `/proc` is read at most once per process per drain (every 10 ms),
        // however many reuses its connects' filtered-out transitions leave
        // unnamed.
        let mut looked_up: Vec<(u32, Option<Comm>)> = Vec::new();
        let drop_reasons = &self.drop_reasons;
        self.tracer.drain(|bytes| match decode::decode(bytes) {
            Ok(mut e) => {
                if let Some(pid) = reusers.observe(&mut e) {
                    let comm = match looked_up.iter().find(|(p, _)| *p == pid) {
                        Some(&(_, comm)) => comm,
                        None if looked_up.len() < 64 => {
                            let comm = proc_comm(pid);
                            looked_up.push((pid, comm));
                            comm
                        }
                        None => None,
                    };
                    if let Some(comm) = comm {
                        ReuserNames::name(&mut e, comm);
                    }
                }
                timewait.observe(&e);
                if narrow.is_none_or(|u| u.matches_event(&e))
                    && (!by_workload || workloads.keeps_event(&e))
                {
                    if let Some(n) = namer.as_mut() {
                        n.observe(&e);
                    }
                    f(Record::Event(e));
                }
            }
            // A dropped connection attempt: no socket's event (the kernel
            // applied the user's filter; it has no owner for the
            // workload filters to judge).
            Err(DecodeError::DropKind(EventKind::Drop)) => {
                match decode::raw(bytes).and_then(|r| decode::syn_drop(&r, drop_reasons)) {
                    Ok(d) => f(Record::Drop(d)),
                    Err(err) => {
                        if *errors == 0 {
                            crate::say!("undecodable drop ({err}); counting further ones");
                        }
                        *errors += 1;
                    }
                }
            }
            Err(err) => {
                if *errors == 0 {
                    crate::say!("undecodable event ({err}); counting further ones");
                }
                *errors += 1;
            }
        });
        self.tracer.flush_logs();
        self.check_timewait(f);
        self.sample_listeners(f);
    }

    fn sockets(&mut self) -> Result<Option<Record>> {
        take_snapshot(&self.user_filter, &mut self.workloads).map(Some)
    }

    fn workloads(&mut self) -> Option<&mut Workloads> {
        Some(&mut self.workloads)
    }

    fn take_lost(&mut self) -> Lost {
        let now = self.tracer.counters().lost();
        let delta = now.since(&self.last_lost);
        self.last_lost = now;
        delta
    }

    fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    fn restart_decode_errors(&mut self) {
        self.decode_errors = 0;
        self.start_events = self.tracer.counters().events;
    }

    fn delivered(&self) -> u64 {
        self.tracer
            .counters()
            .events
            .saturating_sub(self.start_events)
    }

    fn kernel_workload_filtered(&self) -> Option<u64> {
        self.tracer
            .kernel_workloads
            .is_on()
            .then(|| self.tracer.counters().filtered_workload)
    }

    fn drop_reason_name(&self, kernel_id: u16) -> Option<String> {
        self.drop_reasons.name(kernel_id).map(str::to_string)
    }

    fn stack_counts(&self) -> StackCounts {
        match &self.stacks {
            Some(n) => StackCounts {
                kernel_misses: self.tracer.counters().stack_miss,
                ..n.counts()
            },
            None => StackCounts::default(),
        }
    }

    fn host(&self) -> ((u16, u16), u64) {
        (
            seed::host::ephemeral_port_range().unwrap_or((32768, 60999)),
            seed::host::tw_overflow().unwrap_or(0),
        )
    }
}
