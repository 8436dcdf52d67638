//! The only place that talks to aya: loads the embedded eBPF object with this
//! kernel's offsets and the user's filter, attaches the hooks (tp_btf or the
//! classic tracepoint for transitions; the timer tracepoints for TIME_WAIT;
//! accept exits for owners; `skb:kfree_skb` (tp_btf or the classic
//! tracepoint) for dropped connection attempts
//! unless `--no-drop-reasons`), drains the ring buffer and reads the loss
//! counters. With `--stacks` it also sizes the kernel's user-stack map and
//! hands it to the namer ([`Tracer::take_stack_map`]).

pub mod btf;
pub mod kallsyms;
mod reader;
pub mod tracefs;
pub mod workload_filter;

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{BtfTracePoint, FEntry, Program, TracePoint},
};
use tcptrace_common::{
    Counter, DropConfig, Features, Filter, KernelOffsets, Tuning,
    config::{MAX_STACK_ENTRIES, N_COUNTERS, STACK_DEPTH},
};

use crate::preflight::EnvError;
use tcptrace_core::{decode::KernelDropReasons, model::Lost};

/// How TIME_WAIT is observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TimewaitChoice {
    /// fentry where the kernel allows it, else the timer tracepoints.
    Auto,
    /// fentry on the timewait functions only.
    Fentry,
    /// timer:timer_start/timer_cancel/timer_expire_entry (tp_btf where it
    /// loads, else classic tracepoints).
    Timer,
    /// The timer hooks as classic tracepoints only (older kernels).
    TimerTracepoint,
}

/// Which program carries `inet_sock_set_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    /// tp_btf where it loads, else the classic tracepoint.
    Auto,
    /// BTF-enabled raw tracepoint only.
    TpBtf,
    /// Classic tracepoint only.
    Tracepoint,
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub filter: Filter,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Owner LRU map capacity.
    pub owner_entries: u32,
    pub hook: HookChoice,
    pub timewait: TimewaitChoice,
    pub tuning: Tuning,
    /// Drain at real-time priority (see `crate::sched`); used by the commands.
    pub realtime_drain: bool,
    /// Hooks to treat as refused, as a kernel without them would: tests of
    /// the fallbacks on a kernel that has them.
    pub refuse: Refuse,
    /// Benchmarks only: attach programs that return at once to the same
    /// hooks instead of the real ones (what merely attaching costs).
    pub empty_programs: bool,
    /// The workload filters and where names are read (userspace only; the
    /// live source applies them).
    pub workloads: crate::workloads::WorkloadOptions,
    /// `--stacks`: capture the user stack where a lifecycle starts
    /// (connect, listen, accept) into the kernel's stack map.
    pub stacks: bool,
    /// With `stacks`: the stack map's entries (a power of two, at most
    /// [`MAX_STACK_ENTRIES`]; about 1 KiB of kernel memory each).
    pub stack_entries: u32,
    /// Attach `skb:kfree_skb` for connection attempts the kernel dropped
    /// with a reason (off: `--no-drop-reasons`).
    pub drop_reasons: bool,
    /// Drops reported per CPU per second; the rest are counted.
    pub drops_per_cpu_per_sec: u32,
}

/// The stack map's entries with `--stacks` unless told otherwise.
pub const DEFAULT_STACK_ENTRIES: u32 = 8192;

/// Kernel memory of one stack map entry: the bucket (a header of 8 + 16
/// bytes) and its 127 frames (`kernel/bpf/stackmap.c`).
pub const STACK_ENTRY_BYTES: u64 = 8 + 16 + 8 * STACK_DEPTH as u64;

/// Hooks [`Tracer::load`] treats as refused by the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refuse {
    /// tp_btf for `inet_sock_set_state` (falls back to the classic tracepoint).
    pub tp_btf: bool,
    /// tp_btf for the timer hooks (falls back to the classic tracepoints).
    pub timer_btf: bool,
    /// fentry on the timewait functions (falls back to the timer hooks).
    pub fentry: bool,
    /// tp_btf for `skb:kfree_skb` (falls back to the classic tracepoint).
    pub drops_btf: bool,
}

/// `Err` (as the kernel would refuse) when `refused`.
fn simulated(refused: bool, what: &str) -> Result<()> {
    if refused {
        anyhow::bail!("{what} refused (simulated)")
    }
    Ok(())
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            filter: Filter::default(),
            ring_bytes: 16 << 20,
            owner_entries: 1 << 18,
            hook: HookChoice::Auto,
            timewait: TimewaitChoice::Auto,
            tuning: Tuning {
                submit_flags: 1, // BPF_RB_NO_WAKEUP: the reader polls
            },
            realtime_drain: true,
            refuse: Refuse::default(),
            empty_programs: false,
            workloads: Default::default(),
            stacks: false,
            stack_entries: DEFAULT_STACK_ENTRIES,
            drop_reasons: true,
            drops_per_cpu_per_sec: DropConfig::DEFAULT_PER_CPU_PER_SEC,
        }
    }
}

/// The hooks in use, for headers and `doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hooks {
    /// "tp_btf" or "tracepoint".
    pub transitions: &'static str,
    /// "fentry", "timer tp_btf" or "timer tracepoints".
    pub timewait: &'static str,
    /// accept() owner refinement attached.
    pub accept: bool,
    /// `skb:kfree_skb` attached, and how: "tp_btf" (`kfree_skb_btf`) or
    /// "tracepoint" (the classic `kfree_skb`, where the tp_btf one does not
    /// fit or load: [`Hooks::fallbacks`] says why); connection attempts the
    /// kernel dropped are then reported with its reason. `None`: not
    /// attached (`--no-drop-reasons`, or no `skb:kfree_skb` here).
    pub drops: Option<&'static str>,
    /// Why the preferred hooks were not used, when they were not.
    pub fallbacks: Vec<String>,
}

/// Cumulative kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub events: u64,
    pub ring_full: u64,
    pub owner_miss: u64,
    pub tw_unlinked: u64,
    /// Timewait kills told apart from re-arms by the tuple (see
    /// `tcptrace-ebpf/src/probes/timewait.rs`).
    pub tw_memory_reused: u64,
    pub filtered: u64,
    /// Of `filtered`, those the workload part dropped (`--cgroup`,
    /// `--unit`, `--container`, `--netns`: see [`workload_filter`]).
    pub filtered_workload: u64,
    pub map_full: u64,
    pub recursion_misses: u64,
    /// Events a program dropped because a probe read or a scratch lookup
    /// failed.
    pub probe_failed: u64,
    /// User stacks the kernel could not keep (`--stacks`): a full stack
    /// map, a bucket held by another stack, or no user stack.
    pub stack_miss: u64,
    /// Connection attempts dropped with a traced reason (`skb:kfree_skb`),
    /// reported or not.
    pub drops_seen: u64,
    /// Of `drops_seen`, those the per-CPU rate limit did not report.
    pub drops_suppressed: u64,
}

impl KernelCounters {
    pub fn lost(&self) -> Lost {
        Lost {
            ring_full: self.ring_full,
            recursion_misses: self.recursion_misses,
            map_full: self.map_full,
            probe_failed: self.probe_failed,
        }
    }
}

pub struct Tracer {
    // Keeps programs and links alive; dropping it detaches everything.
    _ebpf: Ebpf,
    /// Rare diagnostics from the program (aya-log), shown at `RUST_LOG=debug`.
    logs: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    ring: reader::Reader,
    counters: PerCpuArray<MapData, u64>,
    prog_fds: Vec<RawFd>,
    pub hooks: Hooks,
    /// What the kernel filters of the workload flags.
    pub kernel_workloads: workload_filter::KernelPart,
    /// `--stacks`: the kernel's user-stack map, until the namer takes it.
    stacks: Option<StackTraceMap<MapData>>,
    /// Whether the program captures stacks (`--stacks`).
    stacks_on: bool,
    /// Frames the kernel walks at most: `min(127, perf_event_max_stack)`.
    stack_depth: u32,
    /// The running kernel's drop reasons, when `skb:kfree_skb` is attached.
    drop_reasons: Option<KernelDropReasons>,
    /// The `kfree_skb` program, when attached.
    drop_fd: Option<RawFd>,
}

/// `/proc/sys/kernel/perf_event_max_stack`: the deepest stack the kernel
/// walks, and the deepest a stack map may hold (None: unreadable).
pub fn perf_event_max_stack() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_stack")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The stack map holds [`STACK_DEPTH`] frames per entry, and the kernel
/// refuses to create it (and so to load the whole object, with or without
/// `--stacks`) when `perf_event_max_stack` is lower.
fn check_stack_depth(max_stack: Option<u32>) -> Result<()> {
    match max_stack {
        Some(n) if n < STACK_DEPTH => Err(EnvError(format!(
            "kernel.perf_event_max_stack is {n}: tcptrace's stack map needs {STACK_DEPTH} frames, \
             even without --stacks (sysctl -w kernel.perf_event_max_stack={STACK_DEPTH})"
        ))
        .into()),
        _ => Ok(()),
    }
}

/// The stack map's entries for `opts`: 1 without `--stacks` (the map must
/// exist; about 1 KiB), else `stack_entries` capped at [`MAX_STACK_ENTRIES`]
/// (ids must fit the events' 16 bits).
fn stack_map_entries(opts: &LoadOptions) -> u32 {
    if opts.stacks {
        opts.stack_entries.clamp(1, MAX_STACK_ENTRIES)
    } else {
        1
    }
}

/// The least the reader thread may queue while the consumer is busy (about
/// 2.5 s of the fastest load this 2-core VM makes: 85k connections/s).
const QUEUE_LIMIT_MIN: usize = 256 << 20;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

/// Everything the program needs from this kernel: BTF member offsets (from
/// `kbtf`), tracepoint record layouts (under tracefs `root`), and
/// `tw_timer_handler`'s address.
pub fn kernel_offsets(kbtf: &btf::KernelBtf, root: &std::path::Path) -> Result<KernelOffsets> {
    let mut o = KernelOffsets::default();
    btf::struct_offsets(kbtf, &mut o)?;
    let tp = "sock/inet_sock_set_state";
    let f = tracefs::fields(root, "sock", "inet_sock_set_state")?;
    o.tp_skaddr = tracefs::offset_of(&f, tp, "skaddr", 8, 8)?;
    o.tp_oldstate = tracefs::offset_of(&f, tp, "oldstate", 4, 4)?;
    o.tp_newstate = tracefs::offset_of(&f, tp, "newstate", 4, 4)?;
    o.tp_sport = tracefs::offset_of(&f, tp, "sport", 2, 2)?;
    o.tp_dport = tracefs::offset_of(&f, tp, "dport", 2, 2)?;
    o.tp_family = tracefs::offset_of(&f, tp, "family", 2, 2)?;
    o.tp_protocol = tracefs::offset_of(&f, tp, "protocol", 2, 2)?;
    o.tp_saddr = tracefs::offset_of(&f, tp, "saddr", 4, 1)?;
    o.tp_daddr = tracefs::offset_of(&f, tp, "daddr", 4, 1)?;
    o.tp_saddr_v6 = tracefs::offset_of(&f, tp, "saddr_v6", 16, 1)?;
    o.tp_daddr_v6 = tracefs::offset_of(&f, tp, "daddr_v6", 16, 1)?;
    let f = tracefs::fields(root, "timer", "timer_start")?;
    o.tp_start_timer = tracefs::offset_of(&f, "timer/timer_start", "timer", 8, 8)?;
    o.tp_start_function = tracefs::offset_of(&f, "timer/timer_start", "function", 8, 8)?;
    let f = tracefs::fields(root, "timer", "timer_expire_entry")?;
    o.tp_expire_timer = tracefs::offset_of(&f, "timer/timer_expire_entry", "timer", 8, 8)?;
    o.tp_expire_function = tracefs::offset_of(&f, "timer/timer_expire_entry", "function", 8, 8)?;
    let f = tracefs::fields(root, "timer", "timer_cancel")?;
    o.tp_cancel_timer = tracefs::offset_of(&f, "timer/timer_cancel", "timer", 8, 8)?;
    // The accept exit layout is the generic syscall-exit record.
    if let Ok(f) = tracefs::fields(root, "syscalls", "sys_exit_accept4") {
        o.tp_accept_ret = tracefs::offset_of(&f, "syscalls/sys_exit_accept4", "ret", 8, 8)?;
    }
    o.tw_timer_handler = kallsyms::address_of("tw_timer_handler")?;
    Ok(o)
}

/// What tells [`Hooks::fallbacks`] that drop reasons are off on this kernel.
pub const NO_DROP_REASONS: &str =
    "drop reasons: skb:kfree_skb not available; per-listener counts from sock_diag only";

/// What [`drop_offsets`] found: the kernel's reason table, and whether the
/// tp_btf program fits the kernel's prototype.
pub struct DropSetup {
    pub reasons: KernelDropReasons,
    /// Why `kfree_skb_btf` does not fit this kernel (the classic tracepoint
    /// is attached); `None` when it does.
    pub btf_misfit: Option<String>,
}

/// The `skb:kfree_skb` part of `o` (record offsets, struct offsets), the
/// kernel's reason table and whether the tp_btf program fits, from its
/// format file and BTF; an error when the tracepoint or a member is
/// missing (drop reasons then stay off). `kbtf` and `root` as
/// [`kernel_offsets`] had them (parsed once per load).
pub fn drop_offsets(
    kbtf: &btf::KernelBtf,
    root: &std::path::Path,
    o: &mut KernelOffsets,
) -> Result<DropSetup> {
    let text = tracefs::format_text(root, "skb", "kfree_skb")?;
    let f = tracefs::parse_format(&text);
    let tp = "skb/kfree_skb";
    let reasons = KernelDropReasons::parse_format(&text);
    if reasons.is_empty() {
        anyhow::bail!("{tp} names no drop reasons in its format");
    }
    let mut d = *o;
    d.tp_skb_skbaddr = tracefs::offset_of(&f, tp, "skbaddr", 8, 8)?;
    // Before 6.8 there is no rx_sk: drops at a listener are then told by
    // their SYN flag only.
    d.tp_skb_rx_sk = tracefs::offset_of(&f, tp, "rx_sk", 8, 8).unwrap_or(0);
    d.tp_skb_protocol = tracefs::offset_of(&f, tp, "protocol", 2, 2)?;
    d.tp_skb_reason = tracefs::offset_of(&f, tp, "reason", 4, 4)?;
    btf::drop_offsets(kbtf, &mut d)?;
    *o = d;
    Ok(DropSetup {
        reasons,
        btf_misfit: btf::kfree_skb_btf_fits(kbtf)
            .err()
            .map(|e| format!("{e:#}")),
    })
}

impl Tracer {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        raise_memlock();
        // The kernel's BTF and tracefs, found and parsed once for every
        // offset the programs need.
        let kbtf = btf::KernelBtf::load()?;
        let root = tracefs::root()?;
        let mut offsets = kernel_offsets(&kbtf, &root)?;
        let mut fallbacks = btf::missing_optional(&offsets);
        // Drop reasons: the format's table and offsets, or a fallback line.
        let drop_setup = if opts.drop_reasons {
            match drop_offsets(&kbtf, &root, &mut offsets) {
                Ok(table) => Some(table),
                Err(e) => {
                    fallbacks.push(format!("{NO_DROP_REASONS} ({e:#})"));
                    None
                }
            }
        } else {
            None
        };
        // Parsed BTF is large: not kept while the object loads.
        drop(kbtf);
        let drops = DropConfig {
            reasons: drop_setup
                .as_ref()
                .map_or([0; tcptrace_common::config::DROP_REASON_WORDS], |d| {
                    d.reasons.mask()
                }),
            per_cpu_per_sec: opts.drops_per_cpu_per_sec,
            _pad: 0,
        };
        let kernel_workloads = if opts.workloads.narrows() {
            let part = workload_filter::kernel_part(&opts.workloads);
            log::debug!("in-kernel workload filter: {}", part.describe());
            part
        } else {
            workload_filter::KernelPart::default()
        };
        let filter = kernel_workloads.apply(opts.filter);
        let max_stack = perf_event_max_stack();
        check_stack_depth(max_stack)?;
        let stack_depth = max_stack.unwrap_or(STACK_DEPTH).min(STACK_DEPTH);
        let features = Features {
            user_stacks: u32::from(opts.stacks),
            _pad: 0,
        };
        let stack_entries = stack_map_entries(opts);
        if opts.stacks {
            log::info!(
                "stacks: on ({stack_entries} entries, ~{:.1} MiB kernel memory, {stack_depth} frames)",
                (u64::from(stack_entries) * STACK_ENTRY_BYTES) as f64 / f64::from(1 << 20)
            );
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .override_global("FILTER", &filter, true)
            .override_global("TUNING", &opts.tuning, true)
            .override_global("FEATURES", &features, true)
            .override_global("DROPS", &drops, true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .map_max_entries("OWNERS", opts.owner_entries)
            .map_max_entries("STACKS", stack_entries)
            .load(OBJECT)
            .map_err(|e| permission_hint(anyhow!(e), "load the eBPF object"))?;
        let mut prog_fds = Vec::new();
        // Parsed once for every BTF-typed program (tp_btf, fentry).
        let btf = Btf::from_sys_fs().context("read kernel BTF");

        if opts.empty_programs {
            let drops = drop_setup.as_ref().map(|d| d.btf_misfit.is_none());
            prog_fds.extend(attach_empty(&mut ebpf, &btf, drops)?);
        }
        // TIME_WAIT first, so no timewait socket begun after the transition
        // hook is attached goes unseen.
        let refuse = opts.refuse;
        let timewait = match opts.timewait {
            _ if opts.empty_programs => "empty programs",
            TimewaitChoice::Timer => {
                let (fds, hook) = attach_timers(&mut ebpf, &btf, refuse, &mut fallbacks)?;
                prog_fds.extend(fds);
                hook
            }
            TimewaitChoice::TimerTracepoint => {
                prog_fds.extend(attach_timer_tracepoints(&mut ebpf)?);
                "timer tracepoints"
            }
            TimewaitChoice::Fentry => {
                let attached = simulated(refuse.fentry, "fentry")
                    .and_then(|()| attach_fentry(&mut ebpf, &btf));
                prog_fds.extend(attached.map_err(|e| {
                    EnvError(format!("{e:#}: use --timewait-hook timer on this kernel"))
                })?);
                "fentry"
            }
            TimewaitChoice::Auto => match simulated(refuse.fentry, "fentry")
                .and_then(|()| attach_fentry(&mut ebpf, &btf))
            {
                Ok(fds) => {
                    prog_fds.extend(fds);
                    "fentry"
                }
                Err(e) => {
                    fallbacks.push(format!("TIME_WAIT via timer hooks: {e:#}"));
                    let (fds, hook) = attach_timers(&mut ebpf, &btf, refuse, &mut fallbacks)?;
                    prog_fds.extend(fds);
                    hook
                }
            },
        };
        let mut accept = offsets.tp_accept_ret != 0 && !opts.empty_programs;
        if accept {
            for name in ["sys_exit_accept4", "sys_exit_accept"] {
                match attach_tracepoint(&mut ebpf, name, "syscalls", name) {
                    Ok(fd) => prog_fds.push(fd),
                    Err(e) => {
                        log::warn!("accept owners unavailable: {e:#}");
                        accept = false;
                    }
                }
            }
        }

        let mut drop_reasons = None;
        let mut drop_fd = None;
        let mut drops_hook = None;
        if let Some(setup) = drop_setup.filter(|_| !opts.empty_programs) {
            match attach_drops(&mut ebpf, &btf, &setup, refuse, &mut fallbacks) {
                Ok((fd, hook)) => {
                    // Not in `prog_fds`: its recursion misses (drops on a
                    // CPU busy with another tracing program) are no
                    // transition lost.
                    drop_fd = Some(fd);
                    drops_hook = Some(hook);
                    let table = &setup.reasons;
                    log::info!(
                        "drop reasons: skb:kfree_skb ({hook}), {} reasons traced ({})",
                        table.traced_names().len(),
                        table.traced_names().join(", ")
                    );
                    drop_reasons = Some(setup.reasons);
                }
                Err(e) => fallbacks.push(format!("{NO_DROP_REASONS} ({e:#})")),
            }
        }

        let transitions = match opts.hook {
            _ if opts.empty_programs => "empty programs",
            HookChoice::Tracepoint => {
                prog_fds.push(attach_classic(&mut ebpf)?);
                "tracepoint"
            }
            HookChoice::TpBtf => {
                simulated(refuse.tp_btf, "tp_btf")?;
                prog_fds.push(attach_btf(&mut ebpf, &btf)?);
                attach_nested(&mut ebpf, &btf, &mut fallbacks);
                "tp_btf"
            }
            HookChoice::Auto => match simulated(refuse.tp_btf, "tp_btf")
                .and_then(|()| attach_btf(&mut ebpf, &btf))
            {
                Ok(fd) => {
                    prog_fds.push(fd);
                    attach_nested(&mut ebpf, &btf, &mut fallbacks);
                    "tp_btf"
                }
                Err(e) => {
                    fallbacks.push(format!("classic tracepoint: {e:#}"));
                    prog_fds.push(attach_classic(&mut ebpf)?);
                    "tracepoint"
                }
            },
        };

        let logs = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("eBPF logs unavailable: {e}");
                None
            }
        };
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map")?)?;
        // What waits in memory while the consumer is busy: four rings' worth,
        // and at least 256 MiB (heap, used only when needed; the ring itself
        // is resident from the start: mapped twice, so twice its size).
        let queue_limit = (opts.ring_bytes as usize)
            .saturating_mul(4)
            .max(QUEUE_LIMIT_MIN);
        let ring = reader::Reader::start(ring, queue_limit, opts.realtime_drain)
            .context("start the ring buffer reader thread")?;
        let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map")?)?;
        let stacks = if opts.stacks {
            Some(StackTraceMap::try_from(
                ebpf.take_map("STACKS").context("STACKS map")?,
            )?)
        } else {
            None
        };
        Ok(Self {
            _ebpf: ebpf,
            logs,
            ring,
            counters,
            prog_fds,
            hooks: Hooks {
                transitions,
                timewait,
                accept,
                drops: drops_hook,
                fallbacks,
            },
            kernel_workloads,
            stacks,
            stacks_on: opts.stacks,
            stack_depth,
            drop_reasons,
            drop_fd,
        })
    }

    /// The kernel's user-stack map (`--stacks`), for the namer: read an id
    /// from an event's `stack` with `get(&id, 0)`. `None` without
    /// `--stacks`, and after the first call.
    pub fn take_stack_map(&mut self) -> Option<StackTraceMap<MapData>> {
        self.stacks.take()
    }

    /// The running kernel's drop reasons (number -> name), when
    /// `skb:kfree_skb` is attached; `None` otherwise.
    pub fn drop_reasons(&self) -> Option<&KernelDropReasons> {
        self.drop_reasons.as_ref()
    }

    /// Drops `skb:kfree_skb` could not look at: the kernel skipped the
    /// program on a CPU already running a tracing program (0 when not
    /// attached).
    pub fn drop_recursion_misses(&self) -> u64 {
        self.drop_fd.map_or(0, recursion_misses)
    }

    /// Whether the program captures user stacks (`--stacks`).
    pub fn stacks_on(&self) -> bool {
        self.stacks_on
    }

    /// The deepest user stack the kernel walks: `min(127,
    /// perf_event_max_stack)`. A stack this deep may have lost its
    /// outermost callers.
    pub fn stack_depth(&self) -> u32 {
        self.stack_depth
    }

    /// Calls `f` with every record produced so far (copied out of the ring
    /// by the reader thread, or still in it), oldest first; returns how many.
    pub fn drain(&mut self, f: impl FnMut(&[u8])) -> usize {
        self.ring.drain(f)
    }

    /// Forwards the program's log records (aya-log) to the `log` crate.
    pub fn flush_logs(&mut self) {
        if let Some(logs) = &mut self.logs {
            logs.flush();
        }
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |c: Counter| -> u64 {
            match self.counters.get(&(c as u32), 0) {
                Ok(v) => v.iter().sum(),
                Err(e) => {
                    log::warn!("reading the {c:?} counter failed: {e}");
                    0
                }
            }
        };
        debug_assert!((Counter::DropsSuppressed as u32) < N_COUNTERS);
        KernelCounters {
            events: sum(Counter::Events),
            ring_full: sum(Counter::RingFull),
            owner_miss: sum(Counter::OwnerMiss),
            tw_unlinked: sum(Counter::TwUnlinked),
            tw_memory_reused: sum(Counter::TwMemoryReused),
            filtered: sum(Counter::Filtered),
            filtered_workload: sum(Counter::FilteredWorkload),
            map_full: sum(Counter::MapFull),
            recursion_misses: self.lost_recursions(sum(Counter::NestedRecovered)),
            probe_failed: sum(Counter::ProbeFailed),
            stack_miss: sum(Counter::StackMiss),
            drops_seen: sum(Counter::DropsSeen),
            drops_suppressed: sum(Counter::DropsSuppressed),
        }
    }
}

impl Tracer {
    /// Invocations the kernel skipped because the program was already running
    /// on the CPU, less those the twin handled. The twin's own misses are not
    /// losses: it can only be interrupted on its no-op path (a transition
    /// cannot interrupt the softirq it handles in), while the main program
    /// handles the transition.
    fn lost_recursions(&self, nested_recovered: u64) -> u64 {
        if self.hooks.transitions == "empty programs" {
            // Nothing to lose: the benchmark's empty programs emit nothing.
            return 0;
        }
        let misses: u64 = self.prog_fds.iter().map(|&fd| recursion_misses(fd)).sum();
        misses.saturating_sub(nested_recovered)
    }
}

/// The twin of the tp_btf transition program (`inet_sock_set_state_nested`):
/// without it, a transition in a softirq that interrupts the program is lost.
/// Optional: where it does not attach, those show as recursion misses.
fn attach_nested(ebpf: &mut Ebpf, btf: &Result<Btf>, fallbacks: &mut Vec<String>) {
    let attached = kernel_btf(btf).and_then(|btf| {
        attach_one_btf(
            ebpf,
            "inet_sock_set_state_nested",
            "inet_sock_set_state",
            btf,
        )
    });
    if let Err(e) = attached {
        fallbacks.push(format!("no twin for nested transitions: {e:#}"));
    }
}

/// The `empty_*` programs (they return at once) on the hooks the real ones
/// use with this kernel's preferred attachment: both tp_btf programs on
/// `inet_sock_set_state`, the three tp_btf timer hooks, the accept exits,
/// and `skb:kfree_skb` when drop reasons are on (`drops`: `Some(true)` as
/// tp_btf, where `kfree_skb_btf` fits; `Some(false)` classic).
fn attach_empty(ebpf: &mut Ebpf, btf: &Result<Btf>, drops: Option<bool>) -> Result<Vec<RawFd>> {
    let btf = kernel_btf(btf)?;
    let mut fds = Vec::new();
    for (prog, tracepoint) in [
        ("empty_set_state", "inet_sock_set_state"),
        ("empty_set_state_nested", "inet_sock_set_state"),
        ("empty_timer_start", "timer_start"),
        ("empty_timer_cancel", "timer_cancel"),
        ("empty_timer_expire_entry", "timer_expire_entry"),
    ] {
        fds.push(attach_one_btf(ebpf, prog, tracepoint, btf)?);
    }
    for name in ["sys_exit_accept4", "sys_exit_accept"] {
        fds.push(attach_tracepoint(
            ebpf,
            &format!("empty_{name}"),
            "syscalls",
            name,
        )?);
    }
    match drops {
        Some(true) => fds.push(attach_one_btf(
            ebpf,
            "empty_kfree_skb_btf",
            "kfree_skb",
            btf,
        )?),
        Some(false) => fds.push(attach_tracepoint(
            ebpf,
            "empty_kfree_skb",
            "skb",
            "kfree_skb",
        )?),
        None => {}
    }
    Ok(fds)
}

/// `skb:kfree_skb` as tp_btf (`kfree_skb_btf`) where it fits the kernel's
/// prototype and loads: the kernel then builds no trace record for every
/// packet freed with a reason (the classic tracepoint's cost, which
/// bpf_stats does not time); else the classic tracepoint, with a fallback
/// line saying why. Returns the fd and the hook's name.
fn attach_drops(
    ebpf: &mut Ebpf,
    btf: &Result<Btf>,
    setup: &DropSetup,
    refuse: Refuse,
    fallbacks: &mut Vec<String>,
) -> Result<(RawFd, &'static str)> {
    let btf_attached = simulated(refuse.drops_btf, "kfree_skb tp_btf")
        .and_then(|()| match &setup.btf_misfit {
            Some(why) => Err(anyhow!("{why}")),
            None => Ok(()),
        })
        .and_then(|()| attach_one_btf(ebpf, "kfree_skb_btf", "kfree_skb", kernel_btf(btf)?));
    match btf_attached {
        Ok(fd) => Ok((fd, "tp_btf")),
        Err(e) => {
            fallbacks.push(format!("drop reasons via the classic skb:kfree_skb: {e:#}"));
            let fd = attach_tracepoint(ebpf, "kfree_skb", "skb", "kfree_skb")?;
            Ok((fd, "tracepoint"))
        }
    }
}

/// The kernel BTF parsed once at load, or why it could not be.
fn kernel_btf(btf: &Result<Btf>) -> Result<&Btf> {
    btf.as_ref().map_err(|e| anyhow!("{e:#}"))
}

/// Attaches every program `attach(ebpf, i)` names, or none: on the first
/// failure, the ones loaded so far (`progs[..=i]`) are unloaded with `unload`
/// and the error returned.
fn attach_all_or_none(
    ebpf: &mut Ebpf,
    progs: &[&str],
    mut attach: impl FnMut(&mut Ebpf, usize) -> Result<RawFd>,
    unload: impl Fn(&mut Program),
) -> Result<Vec<RawFd>> {
    let mut fds = Vec::new();
    for i in 0..progs.len() {
        match attach(ebpf, i) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                for loaded in &progs[..=i] {
                    if let Some(p) = ebpf.program_mut(loaded) {
                        unload(p);
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(fds)
}

fn attach_tracepoint(ebpf: &mut Ebpf, prog: &str, category: &str, name: &str) -> Result<RawFd> {
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing"))?
        .try_into()?;
    p.load()
        .map_err(|e| permission_hint(anyhow!(e), &format!("load {prog}")))?;
    p.attach(category, name)
        .with_context(|| format!("attach tracepoint {category}/{name}"))?;
    Ok(p.fd()?.as_fd().as_raw_fd())
}

const TIMER_TRACEPOINTS: [&str; 3] = ["timer_cancel", "timer_expire_entry", "timer_start"];

/// The tp_btf timer programs and their tracepoints.
const TIMER_BTF: [&str; 3] = [
    "timer_cancel_btf",
    "timer_expire_entry_btf",
    "timer_start_btf",
];

/// The timer hooks as tp_btf programs where they load (no trace record is
/// built for the millions of unrelated timers, and a timer event that
/// interrupts another program is not skipped), else the classic tracepoints.
/// Returns the fds and the hook's name.
fn attach_timers(
    ebpf: &mut Ebpf,
    btf: &Result<Btf>,
    refuse: Refuse,
    fallbacks: &mut Vec<String>,
) -> Result<(Vec<RawFd>, &'static str)> {
    match simulated(refuse.timer_btf, "timer tp_btf").and_then(|()| attach_timers_btf(ebpf, btf)) {
        Ok(fds) => Ok((fds, "timer tp_btf")),
        Err(e) => {
            fallbacks.push(format!("timer tracepoints: {e:#}"));
            Ok((attach_timer_tracepoints(ebpf)?, "timer tracepoints"))
        }
    }
}

fn attach_timer_tracepoints(ebpf: &mut Ebpf) -> Result<Vec<RawFd>> {
    TIMER_TRACEPOINTS
        .into_iter()
        .map(|name| attach_tracepoint(ebpf, name, "timer", name))
        .collect()
}

/// All three tp_btf timer programs, or none.
fn attach_timers_btf(ebpf: &mut Ebpf, btf: &Result<Btf>) -> Result<Vec<RawFd>> {
    let btf = kernel_btf(btf)?;
    attach_all_or_none(
        ebpf,
        &TIMER_BTF,
        |ebpf, i| attach_one_btf(ebpf, TIMER_BTF[i], TIMER_TRACEPOINTS[i], btf),
        |p| {
            if let Ok(p) = <&mut BtfTracePoint>::try_from(p) {
                let _ = p.unload();
            }
        },
    )
}

/// The fentry programs and the kernel functions they attach to.
const FENTRY: [(&str, &str); 4] = [
    ("tw_expire_fentry", "tw_timer_handler"),
    ("tw_kill_fentry", "inet_twsk_deschedule_put"),
    ("tw_rearm_fentry", "__inet_twsk_schedule"),
    ("tw_begin_fentry", "inet_twsk_hashdance_schedule"),
];

/// All four fentry programs, or none (the ones loaded are unloaded on failure).
fn attach_fentry(ebpf: &mut Ebpf, btf: &Result<Btf>) -> Result<Vec<RawFd>> {
    let btf = kernel_btf(btf)?;
    let progs = FENTRY.map(|(prog, _)| prog);
    attach_all_or_none(
        ebpf,
        &progs,
        |ebpf, i| attach_one_fentry(ebpf, FENTRY[i].0, FENTRY[i].1, btf),
        |p| {
            if let Ok(p) = <&mut FEntry>::try_from(p) {
                let _ = p.unload();
            }
        },
    )
}

fn attach_one_fentry(ebpf: &mut Ebpf, prog: &str, function: &str, btf: &Btf) -> Result<RawFd> {
    let p: &mut FEntry = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing"))?
        .try_into()?;
    p.load(function, btf)
        .with_context(|| format!("fentry on {function} does not load"))?;
    p.attach()
        .with_context(|| format!("fentry on {function} does not attach"))?;
    Ok(p.fd()?.as_fd().as_raw_fd())
}

fn attach_classic(ebpf: &mut Ebpf) -> Result<RawFd> {
    attach_tracepoint(
        ebpf,
        "inet_sock_set_state_tp",
        "sock",
        "inet_sock_set_state",
    )
}

fn attach_btf(ebpf: &mut Ebpf, btf: &Result<Btf>) -> Result<RawFd> {
    attach_one_btf(
        ebpf,
        "inet_sock_set_state_btf",
        "inet_sock_set_state",
        kernel_btf(btf)?,
    )
}

fn attach_one_btf(ebpf: &mut Ebpf, prog: &str, tracepoint: &str, btf: &Btf) -> Result<RawFd> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing"))?
        .try_into()?;
    p.load(tracepoint, btf)
        .map_err(|e| permission_hint(anyhow!(e), &format!("load tp_btf {tracepoint}")))?;
    p.attach()
        .with_context(|| format!("attach tp_btf {tracepoint}"))?;
    Ok(p.fd()?.as_fd().as_raw_fd())
}

/// Adds the fix to permission errors.
fn permission_hint(err: anyhow::Error, what: &str) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        anyhow::Error::new(EnvError(format!(
            "permission denied trying to {what}: run with sudo (tcptrace needs root or CAP_BPF+CAP_PERFMON)"
        )))
    } else {
        err.context(format!("failed to {what}"))
    }
}

fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct; failure only matters on old
    // kernels without memcg accounting, where the load error says so.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

/// `bpf_prog_info.recursion_misses` via BPF_OBJ_GET_INFO_BY_FD: invocations
/// the kernel skipped because another BPF program ran on the same CPU.
fn recursion_misses(prog_fd: RawFd) -> u64 {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const RECURSION_MISSES_OFFSET: usize = 208;
    #[repr(C, align(8))]
    struct Info([u8; 256]);
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = Info([0; 256]);
    let mut attr = Attr {
        bpf_fd: prog_fd as u32,
        info_len: 256,
        info: info.0.as_mut_ptr() as u64,
    };
    // SAFETY: attr and info outlive the call; the kernel writes at most info_len bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc != 0 || (attr.info_len as usize) < RECURSION_MISSES_OFFSET + 8 {
        return 0;
    }
    u64::from_ne_bytes(
        info.0[RECURSION_MISSES_OFFSET..RECURSION_MISSES_OFFSET + 8]
            .try_into()
            .expect("8 bytes"),
    )
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

    /// On BPF, Rust's `memset`/`memmove`/`memcpy` are byte loops called as
    /// subprograms (zeroing and copying one 120-byte event cost ~1,000
    /// instructions): no program may call them (`tcptrace-ebpf/src/words.rs`).
    #[test]
    fn no_program_calls_a_byte_loop_mem_function() {
        let elf = object::File::parse(super::OBJECT).expect("the eBPF object is ELF");
        const MEM: [&str; 3] = ["memset", "memmove", "memcpy"];
        // The mem functions' own bodies (in .text, beside any subprogram
        // that is not inlined: those are checked).
        let bodies: Vec<(u64, u64)> = elf
            .symbols()
            .filter(|s| s.name().is_ok_and(|n| MEM.contains(&n)))
            .map(|s| (s.address(), s.address() + s.size()))
            .collect();
        let mut calls = Vec::new();
        for section in elf.sections() {
            let name = section.name().unwrap_or("?");
            if name.starts_with(".debug") {
                continue;
            }
            for (offset, reloc) in section.relocations() {
                if name == ".text" && bodies.iter().any(|&(a, b)| (a..b).contains(&offset)) {
                    continue;
                }
                if let RelocationTarget::Symbol(i) = reloc.target()
                    && let Ok(sym) = elf.symbol_by_index(i)
                    && sym.name().is_ok_and(|n| MEM.contains(&n))
                {
                    calls.push(format!("{name} -> {}", sym.name().unwrap_or("?")));
                }
            }
        }
        assert!(calls.is_empty(), "byte-loop calls: {calls:?}");
    }

    /// The stack map holds 127 frames: a lower `perf_event_max_stack` makes
    /// the kernel refuse it, so the load is refused first, saying how to fix it.
    #[test]
    fn a_lowered_perf_event_max_stack_is_refused_with_the_fix() {
        assert!(super::check_stack_depth(Some(127)).is_ok());
        assert!(super::check_stack_depth(Some(512)).is_ok());
        assert!(super::check_stack_depth(None).is_ok());
        let err = super::check_stack_depth(Some(64)).unwrap_err();
        assert!(err.downcast_ref::<crate::preflight::EnvError>().is_some());
        let text = format!("{err:#}");
        assert!(text.contains("perf_event_max_stack is 64"), "{text}");
        assert!(
            text.contains("sysctl -w kernel.perf_event_max_stack=127"),
            "{text}"
        );
    }

    /// Off, the map has one entry; on, the size asked for, capped so ids
    /// fit the events' 16 bits.
    #[test]
    fn the_stack_map_is_one_entry_unless_stacks_are_on() {
        use super::{LoadOptions, stack_map_entries};
        let off = LoadOptions::default();
        assert_eq!(stack_map_entries(&off), 1);
        let on = LoadOptions {
            stacks: true,
            ..LoadOptions::default()
        };
        assert_eq!(stack_map_entries(&on), super::DEFAULT_STACK_ENTRIES);
        let huge = LoadOptions {
            stacks: true,
            stack_entries: 1 << 20,
            ..LoadOptions::default()
        };
        assert_eq!(stack_map_entries(&huge), 1 << 15);
        assert!(u16::try_from(stack_map_entries(&huge) - 1).is_ok());
    }
}
