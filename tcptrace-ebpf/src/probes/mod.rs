//! One module per kernel hook.

pub mod accept;
pub mod inet_sock_set_state;
pub mod timer;
pub mod timewait_fentry;
