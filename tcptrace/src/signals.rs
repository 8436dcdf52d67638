//! Signals as loop inputs (an edge): SIGINT and SIGTERM stop, SIGHUP is a
//! [`Input::Hangup`] (which stops every command but `watch`, where it
//! reloads the rules: see [`crate::session::Hangup`]). Installed before the
//! probes are loaded, so an early Ctrl-C still detaches cleanly.

use std::thread;

use anyhow::{Context, Result};
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::session::{Input, Inputs};

/// Forwards SIGINT, SIGTERM and SIGHUP to `inputs` from a thread of its own.
pub fn forward(inputs: Inputs) -> Result<()> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    thread::Builder::new()
        .name("tcptrace-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let input = if sig == SIGHUP {
                    Input::Hangup
                } else {
                    Input::Stop
                };
                if inputs.send(input).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
