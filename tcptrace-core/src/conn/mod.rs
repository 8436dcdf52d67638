//! The TCP lifecycle state machine and the bounded connection table. Pure:
//! decoded events and sock_diag snapshots in, finished lifecycles and
//! durations out; no kernel, no clock (timestamps come with the inputs).

mod live;
mod slab;
mod table;

pub use live::{CloseWaitItem, Group, Groups, Listening, Live};
pub use slab::Slot;
pub use table::*;
