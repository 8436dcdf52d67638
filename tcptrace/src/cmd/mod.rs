//! One file per subcommand, each a small [`Consumer`] of the live loop
//! ([`crate::session`]) or, for the offline ones (`replay`, `report`,
//! `generate`), a reader of recordings; [`Edges`] wires what every live
//! command needs around the loop.

pub mod doctor;
pub mod generate;
pub mod record;
pub mod replay;
pub mod report;
pub mod stats;
pub mod top;
pub mod trace;
pub mod watch;

use std::{process::ExitCode, sync::Arc, sync::mpsc::Receiver};

use anyhow::Result;

use crate::{
    http,
    session::{self, Consumer, Input, Inputs},
    signals,
    source::Source,
};

/// The line a live command announces itself with once tracing (`what`,
/// e.g. "stats every 2s"), naming the hooks in use.
pub fn banner(ctx: &crate::session::Ctx<'_>, what: &str) {
    let info = ctx.source.info();
    crate::say!(
        "{what} (hook: {}, TIME_WAIT: {}); Ctrl-C to stop",
        info.hook,
        info.timewait_hook
    );
}

/// The loop's input channel with the signals forwarded into it (and, with
/// `--metrics`, the scrapes): set up before the probes load.
pub struct Edges {
    pub tx: Inputs,
    pub rx: Receiver<Input>,
}

impl Edges {
    pub fn install() -> Result<Self> {
        let (tx, rx) = session::inputs();
        signals::forward(tx.clone())?;
        Ok(Self { tx, rx })
    }

    /// Serves `--metrics`, answered by the loop.
    pub fn serve_metrics(&self, metrics: Option<http::ServerOptions>) -> Result<()> {
        if let Some(opts) = metrics {
            http::serve(opts, Arc::new(session::scrape_delivery(self.tx.clone())))?;
        }
        Ok(())
    }

    /// Runs the loop.
    pub fn run(
        &self,
        source: &mut dyn Source,
        consumer: &mut dyn Consumer,
        opts: &session::Options,
    ) -> Result<ExitCode> {
        session::run(source, consumer, opts, &self.rx)
    }
}
