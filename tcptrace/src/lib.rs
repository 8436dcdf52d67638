//! tcptrace, the binary: every TCP state transition on a Linux host, with
//! TIME_WAIT and the owning process, from eBPF. This crate holds the edges;
//! the pure core (events, connection table, aggregates, rules, recordings,
//! `top`'s state, text/JSON/metrics) is `tcptrace_core`.
//!
//! Module map:
//! - [`cli`]: arguments -> validated configs (every number bounded);
//! - [`cmd`]: one file per subcommand, each a consumer of [`session`], the
//!   one live loop, fed by a [`source`] (the kernel, a recording, a script);
//! - [`ebpf`]: the only code that talks to aya (offsets from BTF, load,
//!   attach, the ring and its reader thread, counters); [`sched`]: the
//!   draining thread's priority;
//! - [`seed`]: sock_diag snapshots, /proc owners, namespaces, host facts;
//! - [`tui`]: terminal take-over and restore, keys, one file per view;
//! - [`http`]: the metrics server; [`signals`]: signals as loop inputs;
//!   [`exec`]: `watch --exec` commands; [`clock`]: reading the clocks;
//!   [`say`]: messages on stderr; [`preflight`]: root, BTF, tracefs;
//! - [`workloads`]: the live commands' workload filters and resolver.

pub mod cli;
pub mod clock;
pub mod cmd;
pub mod ebpf;
pub mod exec;
pub mod http;
pub mod preflight;
pub mod say;
pub mod sched;
pub mod seed;
pub mod session;
pub mod signals;
pub mod source;
pub mod stacks;
pub mod tui;
pub mod workloads;
