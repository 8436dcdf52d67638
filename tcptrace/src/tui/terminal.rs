//! Taking over the terminal and always giving it back: raw mode, the
//! alternate screen and a hidden cursor on entry; the reverse on quit, on
//! error (the guard's `Drop`) and on panic in any thread (the panic hook),
//! so a crash never leaves the user's shell unusable.

use std::{
    io::{self, Stdout, Write},
    sync::atomic::{AtomicBool, Ordering},
};

use crossterm::{
    cursor::{Hide, Show},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{Terminal, backend::CrosstermBackend};

pub type Term = Terminal<CrosstermBackend<Stdout>>;

/// Whether the terminal is currently taken over (restore runs once).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Gives the terminal back; safe to call any number of times, from anywhere.
pub fn restore() {
    if TAKEN.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let mut out = io::stdout();
        let _ = execute!(out, LeaveAlternateScreen, Show);
        let _ = out.flush();
    }
}

/// Restores the terminal when dropped: on every exit path of `top`.
#[derive(Debug)]
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

/// Takes over the terminal. The panic hook restores it before the panic
/// message is printed, so the message lands on the normal screen.
pub fn enter() -> io::Result<(Term, Guard)> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
    enable_raw_mode()?;
    TAKEN.store(true, Ordering::SeqCst);
    let guard = Guard(());
    execute!(io::stdout(), EnterAlternateScreen, Hide)?;
    let term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    Ok((term, guard))
}
