//! The terminal edge of `tcptrace top`: drawing (`render`), key mapping
//! (`keys`), terminal setup and restore (`terminal`) and the live loop
//! (`run`) that joins the engine thread, the keyboard and the screen through
//! one event channel.

pub mod keys;
pub mod render;
pub mod terminal;
