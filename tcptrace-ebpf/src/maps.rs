//! Maps and load-time globals, and the small helpers every probe uses to
//! count and emit.

use crate::{probes::Drop, sock::SockHead};
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use tcptrace_common::{
    Counter, DropConfig, Features, Filter, KernelOffsets, OwnerEntry, RawEvent, Tuning,
    config::N_COUNTERS,
};

/// Events to userspace. Userspace sets the real size at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Owner and state-entry time of every socket we have seen, keyed by the
/// socket's address (full sockets and timewait sockets alike). Bounded LRU.
#[map]
pub static OWNERS: LruHashMap<u64, OwnerEntry> = LruHashMap::with_max_entries(1 << 18, 0);

/// Owner of each listening socket, keyed by (netns, port): child sockets
/// created in softirq inherit it until accept() names the real owner.
#[map]
pub static LISTENERS: LruHashMap<ListenKey, ListenerEntry> =
    LruHashMap::with_max_entries(1 << 14, 0);

/// Per-CPU counters, indexed by [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_COUNTERS, 0);

/// Per-CPU scratch space; see [`Scratch`].
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// User stacks captured where a lifecycle starts (`--stacks`, see
/// `stacks`): the kernel's stack map, deduplicated by content. Userspace
/// sets its size (1 when off).
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(1, 0);

#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets::ZERO;

#[unsafe(no_mangle)]
pub static FILTER: Filter = Filter::NONE;

#[unsafe(no_mangle)]
pub static TUNING: Tuning = Tuning::EAGER;

/// Optional work, switched on at load time (`--stacks`).
#[unsafe(no_mangle)]
pub static FEATURES: Features = Features::NONE;

/// The kernel drop reasons `skb:kfree_skb` reports, and its rate limit
/// (`probes::kfree_skb`).
#[unsafe(no_mangle)]
pub static DROPS: DropConfig = DropConfig::NONE;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ListenKey {
    pub netns: u32,
    pub port: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ListenerEntry {
    pub sk: u64,
    pub owner: OwnerEntry,
}

/// What one program builds an event in.
#[repr(C)]
pub struct ProgScratch {
    pub event: RawEvent,
    /// The socket's first bytes, read in one probe read.
    pub head: SockHead,
}

/// Per-CPU scratch space (the BPF stack is only 512 bytes).
#[repr(C)]
pub struct Scratch {
    /// One per program ([`Prog`]): programs can interrupt each other (a
    /// tp_btf transition in a softirq over the accept hook, or over
    /// `inet_sock_set_state` itself, handled by its twin), but not themselves.
    pub progs: [ProgScratch; Prog::COUNT],
    /// The classic tracepoint record, copied in one probe read.
    pub record: [u64; RECORD_WORDS],
    pub tw: TwScratch,
    /// [`Busy`] bits: which of `inet_sock_set_state` and `timer_expire_entry`
    /// runs on this CPU. A timer event that interrupts them (tp_btf programs
    /// can nest in each other) must leave the parked timewait state alone.
    /// (A transition that interrupts `inet_sock_set_state` is handled by its
    /// twin: see [`Handled`].)
    pub busy: u32,
    /// The transitions `inet_sock_set_state` took on this CPU, last
    /// `HANDLED`: what its twin leaves alone (see [`Handled`]).
    pub handled: Handled,
    /// The `skb:kfree_skb` rate limit of this CPU.
    pub drops: DropRate,
}

/// One CPU's window of reported drops (`probes::kfree_skb`).
#[repr(C)]
pub struct DropRate {
    /// When the current one-second window began (ktime ns).
    pub window_start_ns: u64,
    /// Drops reported in it.
    pub reported: u32,
    pub _pad: u32,
    /// Drops held back since the last one reported.
    pub suppressed: u64,
}

pub use tcptrace_common::handled::Handled;

/// Which program's [`Scratch::progs`] slot.
#[derive(Clone, Copy)]
pub enum Prog {
    SetState = 0,
    SetStateNested = 1,
    Timer = 2,
    Accept = 3,
    Drop = 4,
}

impl Prog {
    pub const COUNT: usize = 5;
}

/// Bits of [`Scratch::busy`].
pub mod busy {
    pub const SET_STATE: u32 = 1;
    pub const EXPIRE: u32 = 2;
}

/// Bytes of the classic tracepoint record we copy (the record is 72 bytes on 6.x).
pub const RECORD_WORDS: usize = 16;

#[repr(C)]
pub struct TwScratch {
    /// A timewait socket whose timer was armed for the first time on this CPU,
    /// waiting for the full socket it replaces to go to CLOSE (same CPU, same
    /// call chain: `tcp_time_wait()` arms the timer, then `tcp_done()`).
    /// `begun.sk == 0` when empty.
    pub begun: RawEvent,
    /// A `TwEnd` built when a timewait timer was cancelled, kept until the next
    /// timer event on this CPU says what the cancel was: the `timer_start` of a
    /// re-arm, the `timer_expire_entry` of an expiry, or anything else (killed).
    /// `cancelled.sk == 0` when empty.
    pub cancelled: RawEvent,
    /// The last connect() on this CPU (see [`Connecting`]).
    pub connect: Connecting,
    /// fentry only: the full socket `inet_twsk_hashdance_schedule()` just
    /// replaced by a timewait socket on this CPU; its CLOSE follows, and is
    /// the hand-over, not an overflow. 0 when none.
    pub handed_over: u64,
}

/// The socket that last went CLOSE -> SYN_SENT on this CPU and the task that
/// called connect(). `tcp_v4_connect()` / `tcp_v6_connect()` enter SYN_SENT,
/// then hash the socket (`__inet_hash_connect()`): when its 4-tuple is held
/// by a timewait socket that `tcp_tw_reuse` lets go, that same task, on the
/// same CPU, cancels the timewait socket's timer
/// (`inet_twsk_deschedule_put()`) right after hashing the socket. A cancel
/// by this task, of a timewait socket with this socket's 4-tuple, is that
/// reuse. One store per connect on the transition path, cleared when that
/// socket leaves SYN_SENT (so a later kill of its own timewait socket, in
/// a softirq interrupting the same task, is not told as a reuse); read only
/// on timewait timer cancels. A task moved to another CPU between the two
/// (preempted in that window of `tcp_v4_connect()`) has its reuse told as a
/// kill. A softirq that cancels another timewait socket while interrupting
/// the connecting task runs as that task too: the 4-tuple tells them apart.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Connecting {
    /// 0 when none.
    pub sk: u64,
    /// `bpf_get_current_pid_tgid()` of the connecting task.
    pub pid_tgid: u64,
}

/// Reads a load-time global. Volatile so the compiler does not fold the
/// zero it was compiled with.
macro_rules! global {
    ($g:ident . $f:ident) => {
        $crate::maps::read_global(&$crate::maps::$g.$f)
    };
}
pub(crate) use global;

#[inline(always)]
pub fn read_global<T: Copy>(field: &T) -> T {
    unsafe { core::ptr::read_volatile(field) }
}

/// Stores `owner` for socket `sk` (by reference: a by-value `OwnerEntry`
/// is copied with a byte-loop `memmove` on BPF); counts a full map.
#[inline(always)]
pub fn remember_owner(sk: u64, owner: &OwnerEntry) {
    if OWNERS.insert(sk, owner, 0).is_err() {
        count(Counter::MapFull);
    }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        unsafe { *slot += 1 };
    }
}

/// Reserves a ring-buffer record, writes the prepared event into it and
/// submits it, counting success and loss.
#[inline(always)]
pub fn output(event: &RawEvent) {
    match EVENTS.reserve::<RawEvent>(0) {
        Some(mut slot) => {
            crate::words::copy(slot.as_mut_ptr(), event);
            slot.submit(global!(TUNING.submit_flags));
            count(Counter::Events);
        }
        None => count(Counter::RingFull),
    }
}

#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}

/// This program's scratch.
#[inline(always)]
pub fn prog_scratch(which: Prog) -> Option<&'static mut ProgScratch> {
    let s = scratch()?;
    unsafe { (*s).progs.get_mut(which as usize) }
}

#[inline(always)]
pub fn tw_scratch() -> Option<*mut TwScratch> {
    scratch().map(|s| unsafe { &raw mut (*s).tw })
}

/// Runs `f` with `bit` of this CPU's [`Scratch::busy`] set.
#[inline(always)]
pub fn guarded(bit: u32, f: impl FnOnce() -> Result<(), Drop>) -> Result<(), Drop> {
    let s = scratch().ok_or(Drop::Scratch)?;
    unsafe { (*s).busy |= bit };
    let result = f();
    unsafe { (*s).busy &= !bit };
    result
}

/// Whether this program interrupted, on this CPU, a guarded one whose
/// [`Scratch::busy`] bit is in `mask`.
#[inline(always)]
pub fn busy_in(mask: u32) -> bool {
    scratch().is_some_and(|s| unsafe { (*s).busy } & mask != 0)
}
