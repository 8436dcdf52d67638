//! Globals and map values the eBPF program shares with userspace.
//!
//! Userspace fills [`KernelOffsets`], [`Filter`], [`Tuning`] and [`Features`] at load time
//! (`EbpfLoader::override_global`) from the running kernel's BTF, kallsyms and the
//! command line. Rust eBPF has no CO-RE, so no kernel layout is compiled in.

use crate::COMM_LEN;

/// Byte offsets of kernel struct members, read from `/sys/kernel/btf/vmlinux`,
/// plus the address of `tw_timer_handler` from `/proc/kallsyms`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Address of `tw_timer_handler`: identifies timewait sockets' timers.
    pub tw_timer_handler: u64,
    /// `struct timer_list.function`.
    pub timer_function: u32,
    /// `struct timer_list.entry.pprev`: non-NULL while the timer is pending.
    pub timer_entry_pprev: u32,
    /// `struct inet_timewait_sock.tw_timer`.
    pub tw_timer: u32,
    /// `struct inet_timewait_sock.tw_substate`.
    pub tw_substate: u32,
    /// `struct sock_common` members.
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `struct sock_common.skc_net` (a `possible_net_t` whose first member is `struct net *`).
    pub skc_net: u32,
    /// `struct net.ns.inum`.
    pub net_ns_inum: u32,
    /// `struct net.ns.__ns_ref` (`ns.count` before 6.18): the namespace's
    /// reference count, 0 while it is torn down. 0 here when BTF has
    /// neither: purges are then told as kills.
    pub net_ns_ref: u32,
    /// `struct sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `struct sock.sk_err` (int): set by an RST or a hard error before the
    /// socket goes to CLOSE.
    pub sk_err: u32,
    /// `struct inet_sock.inet_sport` (big endian u16).
    pub inet_sport: u32,
    /// `struct task_struct.files`.
    pub task_files: u32,
    /// `struct files_struct.fdt`.
    pub files_fdt: u32,
    /// `struct fdtable.fd`.
    pub fdtable_fd: u32,
    /// `struct fdtable.max_fds`.
    pub fdtable_max_fds: u32,
    /// `struct file.private_data`.
    pub file_private_data: u32,
    /// `struct socket.sk`.
    pub socket_sk: u32,
    /// Field offsets inside the classic `sock/inet_sock_set_state` record,
    /// from its `format` file in tracefs.
    pub tp_skaddr: u32,
    pub tp_oldstate: u32,
    pub tp_newstate: u32,
    pub tp_sport: u32,
    pub tp_dport: u32,
    pub tp_family: u32,
    pub tp_protocol: u32,
    pub tp_saddr: u32,
    pub tp_daddr: u32,
    pub tp_saddr_v6: u32,
    pub tp_daddr_v6: u32,
    /// `timer/timer_start` record: `timer`, `function`.
    pub tp_start_timer: u32,
    pub tp_start_function: u32,
    /// `timer/timer_expire_entry` record: `timer`, `function`.
    pub tp_expire_timer: u32,
    pub tp_expire_function: u32,
    /// `timer/timer_cancel` record: `timer`.
    pub tp_cancel_timer: u32,
    /// `syscalls/sys_exit_accept{,4}` record: `ret`.
    pub tp_accept_ret: u32,
    /// `struct sock_common.skc_state` (u8).
    pub skc_state: u32,
    /// `struct sk_buff` members: `head` (pointer), `network_header` (u16,
    /// from `head`), `dev` (pointer).
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_dev: u32,
    /// `struct net_device.nd_net` (a `possible_net_t`: a `struct net *`).
    pub dev_nd_net: u32,
    /// `skb/kfree_skb` record: `skbaddr`, `rx_sk` (pointers; `rx_sk` 0
    /// before 6.8, which has none), `protocol` (u16, host order
    /// `ETH_P_*`), `reason` (u32 `enum skb_drop_reason`). All 0 when drop
    /// reasons are not traced.
    pub tp_skb_skbaddr: u32,
    pub tp_skb_rx_sk: u32,
    pub tp_skb_protocol: u32,
    pub tp_skb_reason: u32,
    /// `struct sk_buff.protocol` (big endian u16 `ETH_P_*`), read by the
    /// tp_btf `kfree_skb` program (the classic record has it in host order).
    pub skb_protocol: u32,
}

// Shared with the kernel program: no implicit padding (a u64, then an even
// number of u32s).
const _: () = assert!(
    core::mem::size_of::<KernelOffsets>() == core::mem::offset_of!(KernelOffsets, skb_protocol) + 4
);

impl KernelOffsets {
    /// All zero; usable in `static` initialisers.
    pub const ZERO: Self = unsafe { core::mem::zeroed() };
}

/// Bytes of `struct sock_common` the program copies in one probe read to get
/// a 4-tuple, family and netns pointer: every member it uses must end within
/// them (checked in userspace at load time).
pub const SOCK_HEAD_BYTES: u32 = 128;

/// Maximum ports per port filter list.
pub const MAX_FILTER_PORTS: usize = 8;
/// Maximum cgroup ancestors in [`Filter::cgroup_ids`].
pub const MAX_FILTER_CGROUPS: usize = 8;
/// Maximum namespaces in [`Filter::netns`].
pub const MAX_FILTER_NETNS: usize = 8;

/// In-kernel event filter. Zero values mean "no filter".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Bit 0: IPv4, bit 1: IPv6. 0 = both.
    pub family_mask: u32,
    /// Bit `1 << state`: keep events whose old or new state is set. 0 = all.
    pub state_mask: u32,
    /// Owner tgid. 0 = any.
    pub tgid: u32,
    /// Non-zero: owner comm must equal `comm` (NUL padded).
    pub comm_set: u32,
    pub comm: [u8; COMM_LEN],
    /// Either side's port in `ports[..n_ports]`.
    pub n_ports: u32,
    pub n_lports: u32,
    pub n_rports: u32,
    pub _pad: u32,
    pub ports: [u16; MAX_FILTER_PORTS],
    pub lports: [u16; MAX_FILTER_PORTS],
    pub rports: [u16; MAX_FILTER_PORTS],
    /// The kernel part of `--cgroup`/`--unit`/`--container`: non-zero when
    /// an owner captured in process context must be below one of
    /// `cgroup_ids[..n_cgroups]` (`bpf_get_current_ancestor_cgroup_id` at
    /// `cgroup_levels[i]`, 0 being the root), else its events are dropped.
    /// Sockets whose owner the kernel does not know pass (userspace judges
    /// them). The ids are stable ancestors (a slice, `/docker`, a pod QoS
    /// level), never a unit's or container's own cgroup: see
    /// `tcptrace::ebpf::workload_filter`.
    pub n_cgroups: u32,
    /// The kernel part of `--netns`: non-zero when an event whose namespace
    /// is known must be in `netns[..n_netns]`.
    pub n_netns: u32,
    pub cgroup_levels: [u32; MAX_FILTER_CGROUPS],
    pub cgroup_ids: [u64; MAX_FILTER_CGROUPS],
    pub netns: [u32; MAX_FILTER_NETNS],
}

// The layout is shared with the kernel program: no implicit padding.
const _: () = {
    assert!(core::mem::size_of::<Filter>() == 232);
    assert!(core::mem::align_of::<Filter>() == 8);
    assert!(core::mem::offset_of!(Filter, n_cgroups) == 96);
    assert!(core::mem::offset_of!(Filter, cgroup_levels) == 104);
    assert!(core::mem::offset_of!(Filter, cgroup_ids) == 136);
    assert!(core::mem::offset_of!(Filter, netns) == 200);
};

impl Filter {
    /// No filtering; usable in `static` initialisers.
    pub const NONE: Self = unsafe { core::mem::zeroed() };
    pub const FAMILY_INET: u32 = 1;
    pub const FAMILY_INET6: u32 = 2;

    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Ring-buffer wakeup policy. The reader polls (see `ebpf::reader` in
/// userspace) and never sleeps on the ring, so a wakeup only costs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    /// Flags for `bpf_ringbuf_submit` (1 = BPF_RB_NO_WAKEUP).
    pub submit_flags: u64,
}

impl Tuning {
    /// Wake the reader on every event; usable in `static` initialisers.
    pub const EAGER: Self = Self { submit_flags: 0 };
}

/// Indexes of the per-CPU `COUNTERS` array. Ids are never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events written to the ring buffer.
    Events = 0,
    /// Events dropped because the ring buffer was full.
    RingFull = 1,
    /// Transitions of sockets whose owner was not in the owner map (started
    /// before the tracer, or evicted from the LRU).
    OwnerMiss = 2,
    /// Timewait sockets that could not be linked to the full socket they replaced.
    TwUnlinked = 3,
    /// Events dropped by the in-kernel filter.
    Filtered = 4,
    /// Failed owner-map inserts.
    MapFull = 5,
    /// Timewait sockets killed whose memory was at once taken by a new
    /// timewait socket (told apart from a re-arm by the tuple).
    TwMemoryReused = 6,
    /// Transitions the twin of `inet_sock_set_state` handled because the main
    /// program did not record them: the kernel skipped it, busy on the same
    /// CPU (a recursion miss; a softirq over process context). Each one
    /// makes up for one recursion miss of the main program (but for the rare
    /// repeat the twin makes: see the eBPF `maps::Handled`).
    NestedRecovered = 7,
    /// Events lost because the program failed to build them: a read of
    /// kernel memory failed (or a field lay outside the bytes copied), or a
    /// per-CPU scratch lookup failed. Events left out on purpose (not TCP, not
    /// a timewait timer, filtered, skipped by the nesting guard) are not
    /// counted here.
    ProbeFailed = 8,
    /// Events dropped by the in-kernel filter's workload part (the cgroup
    /// ancestors and namespaces of `--cgroup`, `--unit`, `--container`,
    /// `--netns`); also counted in [`Counter::Filtered`].
    FilteredWorkload = 9,
    /// A user stack the kernel could not keep: the stack map was full or
    /// another stack held its bucket (no REUSE_STACKID), or there was no user
    /// stack (a kernel thread, an io_uring worker).
    StackMiss = 10,
    /// `skb:kfree_skb` drops of a traced reason that were TCP connection
    /// attempts (a SYN, or a segment at a listener or request socket), all
    /// of them: reported ones and the ones the rate limit held back.
    DropsSeen = 11,
    /// Of [`Counter::DropsSeen`], those not reported one by one (the
    /// per-CPU rate limit, [`DropConfig::per_cpu_per_sec`]); each reported
    /// drop carries the count held back before it on its CPU.
    DropsSuppressed = 12,
}

/// Number of slots in `COUNTERS`.
pub const N_COUNTERS: u32 = 13;

/// Deepest user stack kept (the aya-ebpf `StackTrace` value: 127 frames,
/// `PERF_MAX_STACK_DEPTH`). The kernel refuses to create the stack map when
/// `kernel.perf_event_max_stack` is lower.
pub const STACK_DEPTH: u32 = 127;
/// Most entries of the stack map: ids must fit `stack_id: u16`
/// (the kernel's id is `hash & (entries - 1)`, entries a power of two).
pub const MAX_STACK_ENTRIES: u32 = 1 << 15;

/// Load-time switches of optional work (a frozen global: the verifier drops
/// the code of a switch that is off, so it costs nothing).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Non-zero: capture the user stack where a lifecycle starts (`--stacks`).
    pub user_stacks: u32,
    pub _pad: u32,
}

impl Features {
    /// Everything off; usable in `static` initialisers.
    pub const NONE: Self = Self {
        user_stacks: 0,
        _pad: 0,
    };
}

const _: () = assert!(core::mem::size_of::<Features>() == 8);

/// Words of [`DropConfig::reasons`]: one bit per kernel drop reason below 256.
pub const DROP_REASON_WORDS: usize = 4;

/// What the `skb:kfree_skb` program reports (a frozen global, set at load
/// time from the running kernel's format file: reason numbers change
/// between kernels).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropConfig {
    /// Bit `r % 64` of word `r / 64`: report drops whose `enum
    /// skb_drop_reason` value is `r`. All zero: the program is not
    /// attached (or reports nothing).
    pub reasons: [u64; DROP_REASON_WORDS],
    /// Drops reported per CPU per one-second window; the rest of the window
    /// are counted ([`Counter::DropsSuppressed`]) and their number carried
    /// by the CPU's next reported drop.
    pub per_cpu_per_sec: u32,
    pub _pad: u32,
}

impl DropConfig {
    /// Nothing reported; usable in `static` initialisers.
    pub const NONE: Self = Self {
        reasons: [0; DROP_REASON_WORDS],
        per_cpu_per_sec: 0,
        _pad: 0,
    };
    /// The default rate limit: drops reported per CPU per second.
    pub const DEFAULT_PER_CPU_PER_SEC: u32 = 500;

    /// Whether drops of kernel reason `reason` are reported.
    pub const fn traces(&self, reason: u32) -> bool {
        let word = (reason / 64) as usize;
        word < DROP_REASON_WORDS && self.reasons[word] & (1 << (reason % 64)) != 0
    }
}

const _: () = assert!(core::mem::size_of::<DropConfig>() == 40);

/// Value of the owner map, keyed by socket address (full or timewait socket).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerEntry {
    /// When the socket entered its current state (ktime ns).
    pub state_ts: u64,
    pub cgroup: u64,
    pub tgid: u32,
    pub tid: u32,
    pub netns: u32,
    /// [`crate::event_flags`] bits that describe this entry (OWNER_KNOWN, NETNS_KNOWN, ...).
    pub flags: u8,
    /// Current state (substate for timewait sockets).
    pub state: u8,
    /// With [`crate::event_flags::STACK_KNOWN`] in `flags`: see
    /// [`crate::RawEvent::stack_id`].
    pub stack_id: u16,
    pub comm: [u8; COMM_LEN],
}

const _: () = {
    assert!(core::mem::size_of::<OwnerEntry>() == 48);
    assert!(core::mem::offset_of!(OwnerEntry, stack_id) == 30);
};

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::Filter {}
    unsafe impl aya::Pod for super::Tuning {}
    unsafe impl aya::Pod for super::OwnerEntry {}
    unsafe impl aya::Pod for super::Features {}
    unsafe impl aya::Pod for super::DropConfig {}
}
