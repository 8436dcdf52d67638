//! The terminal edge of `tcptrace top`: the screen (a pure function of the
//! core's `App`: [`screen`], one file per view in [`views`], the look in
//! [`theme`], shared pieces in [`widgets`]), key mapping ([`keys`]), and
//! terminal take-over and restore ([`terminal`]). The loop that feeds it is
//! `cmd/top.rs`.

pub mod keys;
pub mod screen;
pub mod terminal;
pub mod theme;
mod views;
pub mod widgets;

pub use screen::Screen;

#[cfg(test)]
mod tests;
