//! `tcptrace record`: the live kernel into a recording. Events are written as
//! they are drained; a block reaches the file at least every second, so
//! `kill -9` loses at most the last second. Losses become explicit markers.
//! A sock_diag snapshot opens every file and repeats every
//! `--snapshot-every`. A write error (disk full) stops the recording with one
//! line naming the file and offset: it never continues silently.

use std::{
    fs::{self, File},
    io::{self, BufWriter, IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};

use crate::{
    cli::RecordConfig,
    clock::{WallClock, monotonic_ns},
    ebpf::Tracer,
    say::write_stderr,
    seed,
    source::take_snapshot,
    trace::{POLL_INTERVAL, StopSignals},
};
use tcptrace_core::{
    decode,
    model::Lost,
    record::{Header, Writer},
};

/// `FILE.n`.
fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// FILE -> FILE.1 -> FILE.2 ...; the oldest beyond `keep` is deleted.
fn shift_rotated(path: &Path, keep: usize) -> io::Result<()> {
    let _ = fs::remove_file(rotated(path, keep));
    for n in (1..keep).rev() {
        let from = rotated(path, n);
        if from.exists() {
            fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    fs::rename(path, rotated(path, 1))
}

/// The one line a failed write ends the recording with.
fn write_error(cfg: &RecordConfig, bytes: u64, e: io::Error) -> anyhow::Error {
    anyhow!(
        "recording stopped: cannot write {} at byte {bytes}: {e}",
        cfg.output.display()
    )
}

/// Writes every event waiting in the ring; counts them and undecodable
/// records. Stops writing at the first error, which it returns.
fn drain_to(
    tracer: &mut Tracer,
    writer: &mut Writer<BufWriter<File>>,
    events: &mut u64,
    decode_errors: &mut u64,
) -> io::Result<()> {
    let mut result = Ok(());
    tracer.drain(|bytes| match decode::decode(bytes) {
        Ok(e) => {
            if result.is_ok() {
                result = writer.event(&e);
                *events += 1;
            }
        }
        Err(_) => *decode_errors += 1,
    });
    result
}

struct Recording {
    writer: Writer<BufWriter<File>>,
    opened: Instant,
}

/// Opens `path` for a new recording, mode 0600 (recordings name processes
/// and peers), never through a symbolic link. Its directory is opened once
/// and the name is looked at, unlinked and created inside that very
/// directory (`*at` calls), so nothing swapped on the path after the
/// checks can redirect it. A new file is created exclusively
/// (`O_CREAT|O_EXCL|O_NOFOLLOW`: a link planted at the name makes it fail);
/// with `replace`, an existing regular file is unlinked first (the name,
/// never what a link points at), and a character device such as `/dev/null`
/// is written in place; anything else (a link, a FIFO, a directory) is
/// refused.
pub fn create_recording_file(path: &Path, replace: bool) -> io::Result<File> {
    use std::{
        ffi::CString,
        os::{
            fd::{AsRawFd, FromRawFd},
            unix::ffi::OsStrExt,
        },
    };
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    let name = path.file_name().ok_or_else(|| invalid("not a file name"))?;
    let name = CString::new(name.as_bytes()).map_err(|_| invalid("a NUL in the name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = fs::File::open(dir)?;
    if !dir.metadata()?.is_dir() {
        return Err(invalid("not in a directory"));
    }
    let dfd = dir.as_raw_fd();
    let flags = libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let open_at = |extra: libc::c_int| -> io::Result<File> {
        // SAFETY: a valid directory fd and NUL-terminated name; the mode
        // argument is read only with O_CREAT.
        let fd = unsafe { libc::openat(dfd, name.as_ptr(), flags | extra, 0o600 as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    };
    let create = || open_at(libc::O_CREAT | libc::O_EXCL);
    if !replace {
        return create();
    }
    // SAFETY: an all-zero stat is a valid value; fstatat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, name and stat pointer.
    let rc = unsafe { libc::fstatat(dfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound {
            create()
        } else {
            Err(e)
        };
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFCHR => open_at(0),
        libc::S_IFREG => {
            // SAFETY: valid fd and name; removes the directory entry only.
            if unsafe { libc::unlinkat(dfd, name.as_ptr(), 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            create()
        }
        _ => Err(invalid(
            "not a regular file or a device (a link, a FIFO, a directory or a socket): refusing to replace it",
        )),
    }
}

/// Creates FILE with its header and a fresh snapshot; `replace` as in
/// [`create_recording_file`] (`--force`, for the first file only: a
/// rotation creates FILE again after moving the previous one away).
fn open_file(cfg: &RecordConfig, header: &Header, replace: bool) -> Result<Recording> {
    let f = create_recording_file(&cfg.output, replace).with_context(|| {
        format!(
            "cannot create {}",
            tcptrace_core::output::escape(&cfg.output.display().to_string())
        )
    })?;
    let mut writer = Writer::new(BufWriter::with_capacity(1 << 20, f), header)
        .with_context(|| format!("cannot write {}", cfg.output.display()))?;
    let (sockets, namespaces, taken_at) = take_snapshot(&cfg.user_filter)?;
    writer
        .snapshot(taken_at, &namespaces, &sockets)
        .with_context(|| format!("cannot write {}", cfg.output.display()))?;
    Ok(Recording {
        writer,
        opened: Instant::now(),
    })
}

fn status_line(cfg: &RecordConfig, rec: &Recording, total_events: u64, lost: u64) -> String {
    let per = if rec.writer.events > 0 {
        format!(
            " ({:.1} B/event)",
            rec.writer.bytes as f64 / rec.writer.events as f64
        )
    } else {
        String::new()
    };
    format!(
        "tcptrace: recording to {}: {total_events} events, {} bytes{per}, lost {lost}",
        tcptrace_core::output::escape(&cfg.output.display().to_string()),
        rec.writer.bytes
    )
}

pub async fn run(cfg: RecordConfig) -> Result<ExitCode> {
    let mut signals = StopSignals::install()?;
    let mut tracer = Tracer::load(&cfg.load)?;
    let clock = crate::clock::measure_wall_clock();
    let start_mono = monotonic_ns();
    let header = Header {
        tcptrace_version: env!("CARGO_PKG_VERSION").into(),
        host: crate::seed::host::hostname(),
        kernel: crate::seed::host::kernel_release(),
        clock_offset_ns: clock.offset_ns as i64,
        hook: tracer.hooks.transitions.into(),
        timewait_hook: tracer.hooks.timewait.into(),
        filters: cfg.filter_args.clone(),
        port_range: seed::host::ephemeral_port_range().unwrap_or((32768, 60999)),
        start_mono_ns: start_mono,
        start_wall_ns: clock.wall_ns(start_mono),
    };
    let mut rec = open_file(&cfg, &header, cfg.force)?;
    let mut last_lost = tracer.counters().lost();
    let start_lost = last_lost;
    let tty = io::stderr().is_terminal();
    if !cfg.quiet {
        crate::say!(
            "recording to {} (hook: {}, TIME_WAIT: {}); Ctrl-C to stop",
            cfg.output.display(),
            tracer.hooks.transitions,
            tracer.hooks.timewait
        );
    }
    crate::sched::drain_priority(cfg.load.realtime_drain);
    let mut poll = interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut second = interval(Duration::from_secs(1));
    second.set_missed_tick_behavior(MissedTickBehavior::Delay);
    second.tick().await;
    let mut snapshot = interval(cfg.snapshot_every);
    snapshot.tick().await;
    let deadline = cfg.duration.map(|d| Instant::now() + d);
    let mut total_events = 0u64;
    let mut decode_errors = 0u64;
    let mut seconds = 0u64;
    let mut result: Result<()> = Ok(());
    loop {
        let step: io::Result<()> = tokio::select! {
            _ = signals.recv() => break,
            _ = async { sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => break,
            _ = poll.tick() => drain_to(&mut tracer, &mut rec.writer, &mut total_events, &mut decode_errors),
            _ = snapshot.tick() => {
                match take_snapshot(&cfg.user_filter) {
                    Ok((sockets, namespaces, taken_at)) => rec.writer.snapshot(taken_at, &namespaces, &sockets),
                    Err(e) => { log::warn!("snapshot failed: {e:#}"); Ok(()) }
                }
            }
            _ = second.tick() => {
                seconds += 1;
                let now = tracer.counters().lost();
                let delta = now.since(&last_lost);
                last_lost = now;
                let mut r = Ok(());
                if !delta.is_zero() {
                    r = rec.writer.lost(monotonic_ns(), &delta);
                }
                r = r.and_then(|()| rec.writer.flush());
                if r.is_ok() && !cfg.quiet && (tty || seconds.is_multiple_of(10)) {
                    let lost = now.since(&start_lost).total() + decode_errors;
                    let line = status_line(&cfg, &rec, total_events, lost);
                    if tty { write_stderr(&format!("\r{line}\x1b[K")); } else { write_stderr(&format!("{line}\n")); }
                }
                if r.is_ok() {
                    let by_size = cfg.rotate_size.is_some_and(|s| rec.writer.bytes >= s);
                    let by_time = cfg.rotate_time.is_some_and(|t| rec.opened.elapsed() >= t);
                    if by_size || by_time {
                        match rotate(&cfg, &header, rec) {
                            Ok(next) => rec = next,
                            Err(e) => return Err(e),
                        }
                    }
                }
                r
            }
        };
        if let Err(e) = step {
            result = Err(write_error(&cfg, rec.writer.bytes, e));
            break;
        }
    }
    if tty && !cfg.quiet {
        write_stderr("\n");
    }
    result?;
    let final_lost = tracer.counters().lost();
    let delta = final_lost.since(&last_lost);
    if !delta.is_zero() {
        rec.writer
            .lost(monotonic_ns(), &delta)
            .map_err(|e| write_error(&cfg, rec.writer.bytes, e))?;
    }
    // The last events, then a closing snapshot: a reader ends on the
    // kernel's own view (it fixes what events cannot show, like silent
    // timewait re-arms).
    drain_to(
        &mut tracer,
        &mut rec.writer,
        &mut total_events,
        &mut decode_errors,
    )
    .map_err(|e| write_error(&cfg, rec.writer.bytes, e))?;
    match take_snapshot(&cfg.user_filter) {
        Ok((sockets, namespaces, taken_at)) => rec
            .writer
            .snapshot(taken_at, &namespaces, &sockets)
            .map_err(|e| write_error(&cfg, rec.writer.bytes, e))?,
        Err(e) => log::warn!("closing snapshot failed: {e:#}"),
    }
    let bytes_line = status_line(&cfg, &rec, total_events, {
        let l: Lost = final_lost.since(&start_lost);
        l.total() + decode_errors
    });
    let bytes = rec.writer.bytes;
    rec.writer
        .finish()
        .and_then(|mut w| w.flush())
        .map_err(|e| write_error(&cfg, bytes, e))?;
    if !cfg.quiet {
        write_stderr(&format!(
            "{}\n",
            bytes_line.replacen("recording to", "recorded to", 1)
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Closes the current file, shifts the rotated ones, opens a fresh FILE.
fn rotate(cfg: &RecordConfig, header: &Header, rec: Recording) -> Result<Recording> {
    let bytes = rec.writer.bytes;
    rec.writer
        .finish()
        .and_then(|mut w| w.flush())
        .map_err(|e| write_error(cfg, bytes, e))?;
    shift_rotated(&cfg.output, cfg.keep)
        .with_context(|| format!("cannot rotate {}", cfg.output.display()))?;
    let mut header = header.clone();
    header.start_mono_ns = monotonic_ns();
    header.start_wall_ns = WallClock {
        offset_ns: header.clock_offset_ns as i128,
    }
    .wall_ns(header.start_mono_ns);
    open_file(cfg, &header, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_shifts_and_keeps_n() {
        let dir = std::env::temp_dir().join(format!("tcptrace-rot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("r.tcptrace");
        for i in 0..5 {
            fs::write(&f, format!("{i}")).unwrap();
            shift_rotated(&f, 3).unwrap();
        }
        let read = |n| fs::read_to_string(rotated(&f, n)).unwrap();
        assert_eq!(
            (read(1), read(2), read(3)),
            ("4".into(), "3".into(), "2".into())
        );
        assert!(!rotated(&f, 4).exists());
        assert!(!f.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
