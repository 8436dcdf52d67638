//! tcptrace's pure core: everything that turns kernel events into answers,
//! with no kernel, terminal, network or runtime in sight (the crate graph
//! enforces it: see this crate's `Cargo.toml`). The `tcptrace` binary holds
//! the edges (eBPF, sock_diag and /proc, terminal, HTTP, signals, files,
//! clock) and feeds this crate.
//!
//! Module map, in the order an event travels:
//! - [`model`]: states, owners, events, sockets seen by sock_diag;
//!   [`decode`]: the kernel's bytes to an [`model::Event`];
//!   [`filter`]: the user's filters on what sock_diag reports.
//! - [`conn`]: the lifecycle state machine and the bounded connection table;
//!   [`engine`]: the table plus the aggregates, fed by events and snapshots.
//! - [`netfacts`]: each network namespace's TCP sysctls and what they
//!   mean for ephemeral ports and TIME_WAIT.
//! - [`stats`]: histograms, rates, growth, snapshots and their JSON caps;
//!   [`alerts`]: `watch`'s rules; [`doctor`]: findings from an observation.
//! - [`record`]: the recording file format, writer, reader, and how records
//!   apply to an engine; [`report`]: a recording summarised.
//! - [`app`]: `top`'s state (keys -> actions -> reducer) and the data the
//!   engine side hands it.
//! - [`output`]: text (one escaping rule) and JSON Lines;
//!   [`metrics`]: the Prometheus exposition; [`clock`]: wall-clock
//!   conversion and human durations.
//! - [`workload`]: cgroup paths as systemd units, containers and pods;
//!   their cache and the `--cgroup`/`--container`/`--unit` filters.
//! - [`stacks`]: user stacks (`--stacks`): which code opened a connection,
//!   their names and the headline rule.

pub mod alerts;
pub mod app;
pub mod clock;
pub mod conn;
pub mod decode;
pub mod doctor;
pub mod engine;
pub mod filter;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
pub mod listeners;
pub mod metrics;
pub mod model;
pub mod netfacts;
pub mod output;
pub mod record;
pub mod report;
pub mod stacks;
pub mod stats;
pub mod workload;
