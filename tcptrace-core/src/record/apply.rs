//! How a recording's records apply to an engine, the one way every reader
//! (`report`, `top --from`, `doctor --from`) and the live loop do it: the
//! first snapshot seeds, later snapshots reconcile, events apply, lost
//! markers add up.

use super::Record;
use crate::{engine::Engine, model::Lost};

/// Applies records to an engine the one way every reader does: the first
/// snapshot seeds, later snapshots reconcile, lost markers add up.
#[derive(Debug, Default)]
pub struct RecordApplier {
    seeded: bool,
    pub lost: Lost,
}

impl RecordApplier {
    /// Applies one record; returns its timestamp (monotonic ns).
    pub fn apply(&mut self, engine: &mut Engine, rec: &Record) -> u64 {
        match rec {
            Record::Snapshot {
                ts_ns,
                namespaces,
                sockets,
            } => {
                if self.seeded {
                    engine.reconcile(sockets, namespaces, *ts_ns);
                } else {
                    engine.seed(sockets, *ts_ns);
                    self.seeded = true;
                }
                *ts_ns
            }
            Record::Event(e) => {
                engine.apply(e);
                e.ts_ns
            }
            Record::Lost { ts_ns, lost } => {
                // Saturating: a damaged (yet checksummed) file may say anything.
                let l = &mut self.lost;
                l.ring_full = l.ring_full.saturating_add(lost.ring_full);
                l.recursion_misses = l.recursion_misses.saturating_add(lost.recursion_misses);
                l.map_full = l.map_full.saturating_add(lost.map_full);
                *ts_ns
            }
        }
    }
}
