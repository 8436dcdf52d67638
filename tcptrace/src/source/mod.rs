//! Where the loop's records come from, behind one trait so that the loop
//! ([`crate::session`]) and every command are the same whatever feeds them:
//! - [`Live`]: the kernel (the ring buffer, decoded, with the timewait
//!   sockets no hook shows moving to TIME_WAIT found by
//!   [`timewait_check`]), sock_diag snapshots and the kernel's loss
//!   counters, on the real clock; with `--stacks`, the user stacks named by
//!   [`crate::stacks::StackNamer`] as [`Record::Stack`] records;
//! - [`Recording`]: a recording played against a virtual clock
//!   (`top --from`);
//! - [`Scripted`]: records, snapshots, losses and inputs at set times on a
//!   clock that moves only when the loop waits, for tests without a kernel.

mod live;
pub mod recording;
pub mod scripted;
pub mod timewait_check;

use std::sync::mpsc::Receiver;

use anyhow::Result;
pub use live::Live;
pub use recording::Recording;
pub use scripted::{Scripted, Step};
use tcptrace_core::{
    app::{PlaybackCommand, PlaybackStatus},
    model::Lost,
    record::Record,
    stacks::StackCounts,
};

use crate::session::Input;

/// What a source says about itself (banners, `top`'s header, a recording's
/// header).
#[derive(Clone, Debug, Default)]
pub struct SourceInfo {
    /// The hook carrying transitions, and how TIME_WAIT is observed.
    pub hook: String,
    pub timewait_hook: String,
    /// Hooks that did not load, and what was used instead.
    pub fallbacks: Vec<String>,
    pub host: String,
    pub kernel: String,
    /// The recording being played, if any.
    pub recording: Option<std::path::PathBuf>,
    /// User stacks are captured and named (`--stacks` live, or a recording
    /// made with it): the engine keeps their names
    /// ([`tcptrace_core::stacks::StackTable`]).
    pub stacks: bool,
}

/// A source of records for the loop.
pub trait Source: Send {
    fn info(&self) -> SourceInfo;

    /// Called once on the thread that runs the loop (the live source raises
    /// that thread's priority).
    fn enter_loop(&mut self) {}

    /// The clock the loop schedules by (ns): real monotonic time, except a
    /// scripted source's, which moves only when waited on.
    fn clock_ns(&self) -> u64;

    /// Waits until [`Source::clock_ns`] reaches `until`, unless an input
    /// arrives first.
    fn wait(&mut self, until: u64, inputs: &Receiver<Input>) -> Option<Input>;

    /// Where the data is: monotonic and wall-clock ns (a recording: its own
    /// time).
    fn now(&self) -> (u64, u64);

    /// Every record available now, in order.
    fn drain(&mut self, f: &mut dyn FnMut(Record));

    /// The workload resolver (the live kernel's; `None` elsewhere).
    fn workloads(&mut self) -> Option<&mut crate::workloads::Workloads> {
        None
    }

    /// A sock_diag snapshot of the sockets that exist now, as a
    /// [`Record::Snapshot`]; `None` when the source carries its own.
    fn sockets(&mut self) -> Result<Option<Record>>;

    /// Events lost since the last call (the kernel's counters).
    fn take_lost(&mut self) -> Lost;

    /// Records that could not be decoded since the banner.
    fn decode_errors(&self) -> u64 {
        0
    }

    /// Counts decode errors from now on.
    fn restart_decode_errors(&mut self) {}

    /// Events the kernel delivered since the source started.
    fn delivered(&self) -> u64 {
        0
    }

    /// Events the in-kernel workload filter dropped since the source
    /// started (`None` when the kernel filters no workload).
    fn kernel_workload_filtered(&self) -> Option<u64> {
        None
    }

    /// The running kernel's name of drop reason `kernel_id` (a
    /// [`tcptrace_core::listeners::SynDrop::kernel_reason`], e.g.
    /// `TCP_LISTEN_OVERFLOW`): only the live source knows it (reason
    /// numbers change between kernels).
    fn drop_reason_name(&self, _kernel_id: u16) -> Option<String> {
        None
    }

    /// What naming user stacks did so far (`--stacks`, live only: zero
    /// elsewhere, and from a recording).
    fn stack_counts(&self) -> StackCounts {
        StackCounts::default()
    }

    /// `ip_local_port_range` and TcpExt TCPTimeWaitOverflow now.
    fn host(&self) -> ((u16, u16), u64);

    /// A playback command; `true` when it rewound the recording (the
    /// engine must start again). Only recordings play.
    fn playback(&mut self, _cmd: PlaybackCommand) -> Result<bool> {
        Ok(false)
    }

    fn playback_status(&self) -> Option<PlaybackStatus> {
        None
    }

    /// What went wrong reading it (damaged or cut recordings).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Nothing more will ever come: the loop stops.
    fn ended(&self) -> bool {
        false
    }
}

/// Waits on `inputs` for real time up to `until` on the monotonic clock.
pub(crate) fn wait_real(until: u64, inputs: &Receiver<Input>) -> Option<Input> {
    let now = crate::clock::monotonic_ns();
    let left = std::time::Duration::from_nanos(until.saturating_sub(now));
    if left.is_zero() {
        return inputs.try_recv().ok();
    }
    inputs.recv_timeout(left).ok()
}
