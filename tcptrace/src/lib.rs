//! tcptrace: every TCP state transition on a Linux host, with TIME_WAIT and
//! the owning process, from eBPF.
//!
//! Layout: `ebpf` (the aya edge: load, attach, ring, counters), `decode` and
//! `model` (pure: bytes to events), `output` (printers, and the escaping
//! rule of every text sink), `cli` (arguments to validated configs, every
//! number bounded), `http` (the hardened metrics server), `trace` (the
//! `trace` command loop).

pub mod cli;
pub mod clock;
pub mod doctor_cmd;
pub mod ebpf;
pub mod generate;
pub mod http;
pub mod preflight;
pub mod record_cmd;
pub mod replay;
pub mod report;
pub mod say;
pub mod sched;
pub mod seed;
pub mod source;
pub mod stats_cmd;
pub mod top;
pub mod trace;
pub mod tui;
pub mod watch;
