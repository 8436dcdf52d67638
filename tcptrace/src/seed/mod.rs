//! The live edge that lists TCP sockets which already exist: the eBPF probes
//! only see transitions from the moment they attach, so at startup (and for
//! periodic reconciliation) the socket table is read through sock_diag, in
//! every network namespace, with owners recovered from /proc. It also
//! attributes cgroups to workloads (`cgroupfs`, `runtimes`, `workloads`):
//! systemd units, containers and pods named from the host's own files.

pub mod cgroupfs;
pub mod host;
pub mod listeners;
pub mod netns;
pub mod owners;
pub mod runtimes;
pub mod sock_diag;
#[cfg(test)]
mod testutil;
pub mod workloads;

pub use host::{ephemeral_port_range, netstat_counter, tw_overflow};
pub use listeners::ListenerSampler;
pub use netns::{in_namespace, namespaces};
pub use owners::socket_owners;
pub use sock_diag::dump_tcp;

use anyhow::Result;

use tcptrace_core::{model::SeenSocket, netfacts::NetFacts};

/// The socket table at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub sockets: Vec<SeenSocket>,
    /// The TCP facts of each namespace dumped (read inside it).
    pub facts: NetFacts,
    /// CLOCK_MONOTONIC nanoseconds when the dump started (the base of kernel
    /// event timestamps).
    pub taken_at_mono_ns: u64,
}

/// Dumps the TCP sockets of every network namespace (`all_namespaces`) or of
/// the calling thread's, and fills their owners.
///
/// Namespaces that vanish or cannot be entered (not root) while listing are
/// skipped; a failing dump inside a namespace is an error.
pub fn snapshot(all_namespaces: bool) -> Result<Snapshot> {
    let taken_at_mono_ns = crate::clock::monotonic_ns();
    let mut facts = NetFacts {
        host_netns: sock_diag::current_netns().ok(),
        ..NetFacts::default()
    };
    let mut sockets = if all_namespaces {
        dump_all_namespaces(&mut facts)?
    } else {
        if let Some(ns) = facts.host_netns {
            facts.namespaces.insert(ns, host::netns_facts());
        }
        dump_tcp()?
    };
    let owners = socket_owners();
    for s in &mut sockets {
        if s.inode != 0 {
            s.owner = owners.get(&s.inode).copied();
        }
    }
    Ok(Snapshot {
        sockets,
        facts,
        taken_at_mono_ns,
    })
}

/// Every namespace's sockets, and its facts into `facts` (read on the same
/// visit: entering a namespace is the expensive part).
fn dump_all_namespaces(facts: &mut NetFacts) -> Result<Vec<SeenSocket>> {
    let mut sockets = Vec::new();
    let mut skipped = 0usize;
    for (i, path) in namespaces().into_iter().enumerate() {
        let visit = || {
            let dumped = dump_tcp();
            let netns = sock_diag::current_netns().ok();
            (dumped, netns, host::netns_facts())
        };
        match in_namespace(&path, visit) {
            Ok((dumped, netns, netns_facts)) => {
                sockets.extend(dumped?);
                if let Some(ns) = netns {
                    facts.namespaces.insert(ns, netns_facts);
                }
            }
            // The first entry is our own namespace: entering it must work.
            Err(e) if i == 0 => return Err(e),
            Err(e) => {
                log::debug!("skipping network namespace {}: {e:#}", path.display());
                if permission_denied(&e) {
                    skipped += 1;
                }
            }
        }
    }
    if skipped > 0 {
        log::warn!(
            "skipped {skipped} network namespace(s): permission denied; run as root to include them"
        );
    }
    Ok(sockets)
}

/// Whether entering a namespace failed for lack of privilege (rather than
/// because its last process went away).
fn permission_denied(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    })
}
