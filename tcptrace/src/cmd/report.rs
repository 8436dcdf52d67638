//! `tcptrace report`: a recording read (on a thread of its own, a few
//! blocks ahead) into [`tcptrace_core::report`], printed as text, JSON or
//! CSV; warnings about damage on stderr.

use std::{
    io::{self, Write},
    process::ExitCode,
};

use anyhow::Result;
use tcptrace_core::{
    output::EscapeWriter,
    report::{build, write_csv, write_text},
};

use crate::cli::ReportArgs;

pub fn run(args: &ReportArgs) -> Result<ExitCode> {
    let mut reader = crate::source::recording::open_reader(&args.file)?;
    let report = build(&mut reader, &args.file.display().to_string());
    for warning in reader.warnings(&args.file) {
        crate::say!("warning: {warning}");
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let written = if args.json {
        serde_json::to_value(&report)
            .map(|mut v| {
                tcptrace_core::stats::cap_lists(&mut v);
                v
            })
            .and_then(|v| serde_json::to_writer(&mut out, &v))
            .map_err(io::Error::other)
            .and_then(|()| out.write_all(b"\n"))
    } else if args.csv {
        write_csv(&mut EscapeWriter::new(&mut out), &report)
    } else {
        write_text(&mut EscapeWriter::new(&mut out), &report)
    };
    written.and_then(|()| out.flush())?;
    Ok(ExitCode::SUCCESS)
}
