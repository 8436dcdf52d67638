//! How records apply to an engine, the one way every reader (`report`,
//! `top --from`) and the live loop do it: snapshots are taken in (the first
//! seeds, later ones reconcile: [`Engine::take_sockets`]), events apply,
//! lost markers add up, workload records fill the recording's own table of
//! names (never looked up on the reading host), stack records name the
//! engine's stacks (and turn them on).

use super::Record;
use crate::{engine::Engine, model::Lost, workload::WorkloadTable};

/// Applies records to an engine the one way every reader does: the first
/// snapshot seeds, later snapshots reconcile, lost markers add up,
/// workloads go into [`workloads`](Self::workloads) (the latest per id).
#[derive(Debug, Default)]
pub struct RecordApplier {
    pub lost: Lost,
    /// The recording's workloads by cgroup id: what its owners' cgroups
    /// were when recorded (ids it never named are not in it: `cgroup:<id>`).
    pub workloads: WorkloadTable,
}

impl RecordApplier {
    /// Applies one record; returns its timestamp (monotonic ns; 0 for a
    /// workload or stack record, which have none).
    pub fn apply(&mut self, engine: &mut Engine, rec: &Record) -> u64 {
        match rec {
            Record::Snapshot {
                ts_ns,
                namespaces,
                sockets,
                facts,
            } => {
                if let Some(facts) = facts {
                    engine.facts = (**facts).clone();
                }
                engine.take_sockets(sockets, namespaces, *ts_ns);
                *ts_ns
            }
            Record::Event(e) => {
                engine.apply(e);
                e.ts_ns
            }
            Record::Lost { ts_ns, lost } => {
                // Saturating: a damaged (yet checksummed) file may say anything.
                self.lost = self.lost.saturating_add(lost);
                *ts_ns
            }
            Record::Workload { cgroup, workload } => {
                self.workloads.insert(*cgroup, (**workload).clone(), 0);
                0
            }
            Record::Stack { key, stack } => {
                // A recording with stack records was made with stacks on.
                engine.stacks.enabled = true;
                engine.stacks.insert(*key, std::sync::Arc::clone(stack));
                0
            }
            Record::Listeners {
                ts_ns,
                listeners,
                counters,
            } => {
                engine.listeners.apply_sample(*ts_ns, listeners, counters);
                *ts_ns
            }
            Record::Drop(d) => {
                engine.listeners.apply_drop(d);
                d.ts_ns
            }
        }
    }
}
