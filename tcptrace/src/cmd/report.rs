//! `tcptrace report`: a recording read (on a thread of its own, a few
//! blocks ahead) into [`tcptrace_core::report`] for the whole recording, a
//! window (`--from`/`--to`) or a moment (`--at`), printed as text, JSON or
//! CSV; warnings about damage on stderr. A moment outside the recording is
//! a usage error (exit 2) naming the recording's span. Workloads are the
//! ones the recording names; `--cgroup`/`--container`/`--unit` keep the
//! holder rows whose recorded workload matches (a filter matching no
//! workload of the recording says so in one warning line).

use std::{
    io::{self, Write},
    process::ExitCode,
};

use anyhow::Result;
use tcptrace_core::{
    output::EscapeWriter,
    report::{build_with, write_csv, write_text},
};

use crate::cli::{ReportArgs, ReportFormat, UsageError};

pub fn run(args: &ReportArgs) -> Result<ExitCode> {
    let cfg = args.validate()?;
    let mut reader = crate::source::recording::open_reader(&cfg.file)?;
    let built = build_with(&mut reader, &cfg.file.display().to_string(), &cfg.options);
    for warning in reader.warnings(&cfg.file) {
        crate::say!("warning: {warning}");
    }
    let report = built.map_err(|e| UsageError(e.to_string()))?;
    if !report.filter_matched {
        crate::say!(
            "warning: {} matches no workload in {}",
            args.workload.describe(),
            tcptrace_core::output::escape(&cfg.file.display().to_string())
        );
    }
    if cfg.options.stacks && !report.has_stacks {
        crate::say!(
            "warning: {} was recorded without --stacks: no stacks to show",
            tcptrace_core::output::escape(&cfg.file.display().to_string())
        );
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let written = match cfg.format {
        ReportFormat::Json => serde_json::to_value(&report)
            .map(|mut v| {
                tcptrace_core::stats::cap_lists(&mut v);
                v
            })
            .and_then(|v| serde_json::to_writer(&mut out, &v))
            .map_err(io::Error::other)
            .and_then(|()| out.write_all(b"\n")),
        ReportFormat::Csv => write_csv(&mut EscapeWriter::new(&mut out), &report),
        ReportFormat::Text => write_text(&mut EscapeWriter::new(&mut out), &report),
    };
    written.and_then(|()| out.flush())?;
    Ok(ExitCode::SUCCESS)
}
