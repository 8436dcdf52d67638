//! `tcptrace record`: the live kernel into a recording. Events are written as
//! they are drained; a block reaches the file at least every second, so
//! `kill -9` loses at most the last second. Losses become explicit markers.
//! A sock_diag snapshot opens every file, repeats every `--snapshot-every`
//! and closes it. A write error (disk full, a file-size limit) stops the
//! recording with one line naming the file and offset: it never continues
//! silently.
//!
//! Workloads: the first time an owner's cgroup id is seen, it is resolved
//! at once (one lookup: [`WorkloadResolver::resolve`]) and written before
//! the event, so a container that exits within the second keeps its name
//! in the file; the writer repeats every name after each snapshot. The
//! cgroups sock_diag reported for a snapshot's sockets are named the same
//! way, before the snapshot block. A failed lookup is never fatal: the id
//! is recorded as `cgroup:<id>`.
//!
//! Listeners (format 6): the sock_diag samples of the listeners (accept
//! queues, drop counts, the namespaces' drop counters) and every drop the
//! kernel reported are written as they come; a sample equal to the last
//! one written is skipped for up to [`SAMPLE_REPEAT_NS`] (the counts are
//! cumulative: the next one carries every change); a listener's cgroup is
//! named before the sample that first has it, like an owner's.
//!
//! Stacks (`--stacks`): the live source's namer hands named stacks in as
//! records; each is written once per file (the writer repeats them after
//! every snapshot) and kept here, so a rotated file opens with every name
//! known so far: `report --stacks` names code paths after the processes
//! are gone.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufWriter, IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use tcptrace_core::{
    listeners::{ListenerSample, NetnsDropCounters},
    model::SeenSocket,
    output::escape,
    record::{Header, Record, Writer},
    stacks::{Stack, StackKey},
    workload::Workload,
};

use super::Edges;
use crate::{
    cli::RecordConfig,
    say::write_stderr,
    seed::{runtimes::RuntimeRoots, workloads::WorkloadResolver},
    session::{Consumer, Ctx, Flow, Hangup, Options},
    source::{Live, Source},
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
fn write_error(path: &Path, bytes: u64, e: io::Error) -> anyhow::Error {
    anyhow!(
        "recording stopped: cannot write {} at byte {bytes}: {e}",
        escape(&path.display().to_string())
    )
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

/// One open file of the recording.
struct OpenFile {
    writer: Writer<BufWriter<File>>,
    /// Loop clock (ns) when it was opened, for `--rotate-time`.
    opened_ns: u64,
}

/// `record` as a consumer of the loop.
pub struct Recorder {
    cfg: RecordConfig,
    header: Header,
    file: Option<OpenFile>,
    events: u64,
    seconds: u64,
    tty: bool,
    /// Owner cgroup ids to workloads (this host's, at recording time).
    workloads: WorkloadResolver,
    /// The last id named, and its workload: events come in runs of one
    /// owner, so most need no lookup at all.
    last_workload: Option<(u64, Arc<Workload>)>,
    /// Every stack named so far, for the next file of a rotation.
    stacks_seen: BTreeMap<StackKey, Arc<Stack>>,
    /// The last listener sample written to this file (see
    /// [`SAMPLE_REPEAT_NS`]).
    last_sample: Option<WrittenSample>,
}

/// A listener sample as last written.
struct WrittenSample {
    ts_ns: u64,
    listeners: Vec<ListenerSample>,
    counters: Vec<NetnsDropCounters>,
}

/// A listener sample equal to the last one written (no queue, count,
/// owner or counter moved: the counts are cumulative, so the next one
/// that differs carries every change) is written again only after this
/// long: a host with thousands of quiet listeners does not grow the file
/// by their every second.
pub const SAMPLE_REPEAT_NS: u64 = 10_000_000_000;

impl Recorder {
    /// Creates FILE (`--force` replaces it) with its header, from what
    /// `source` says about itself; the loop's opening snapshot follows.
    pub fn create(cfg: RecordConfig, source: &dyn Source) -> Result<Self> {
        let info = source.info();
        let (start_mono_ns, start_wall_ns) = source.now();
        let header = Header {
            tcptrace_version: env!("CARGO_PKG_VERSION").into(),
            host: info.host,
            kernel: info.kernel,
            clock_offset_ns: start_wall_ns as i64 - start_mono_ns as i64,
            hook: info.hook,
            timewait_hook: info.timewait_hook,
            filters: cfg.filter_args.clone(),
            port_range: source.host().0,
            start_mono_ns,
            start_wall_ns,
            stacks: info.stacks,
        };
        let file = Self::open(&cfg, &header, cfg.force, source.clock_ns())?;
        Ok(Self {
            tty: io::stderr().is_terminal(),
            cfg,
            header,
            file: Some(file),
            events: 0,
            seconds: 0,
            workloads: WorkloadResolver::new(RuntimeRoots::default()),
            last_workload: None,
            stacks_seen: BTreeMap::new(),
            last_sample: None,
        })
    }

    /// Opens FILE with `header`; `replace` as in [`create_recording_file`]
    /// (`--force`, for the first file only: a rotation creates FILE again
    /// after moving the previous one away).
    fn open(cfg: &RecordConfig, header: &Header, replace: bool, now_ns: u64) -> Result<OpenFile> {
        let shown = escape(&cfg.output.display().to_string()).into_owned();
        let f = create_recording_file(&cfg.output, replace)
            .with_context(|| format!("cannot create {shown}"))?;
        let writer = Writer::new(BufWriter::with_capacity(1 << 20, f), header)
            .with_context(|| format!("cannot write {shown}"))?;
        Ok(OpenFile {
            writer,
            opened_ns: now_ns,
        })
    }

    fn file(&mut self) -> &mut OpenFile {
        self.file.as_mut().expect("a recording file is open")
    }

    /// Runs a write, turning its error into the one line that ends the
    /// recording (after ending a terminal's status line).
    fn write(
        &mut self,
        f: impl FnOnce(&mut Writer<BufWriter<File>>) -> io::Result<()>,
    ) -> Result<()> {
        let path = self.cfg.output.clone();
        let status_shown = self.tty && !self.cfg.quiet;
        let file = self.file();
        let bytes = file.writer.bytes;
        f(&mut file.writer).map_err(|e| {
            if status_shown {
                write_stderr("\n");
            }
            write_error(&path, bytes, e)
        })
    }

    /// Writes cgroup `id`'s workload before the event that uses it: looked
    /// up at its first sight (the writer skips one it already wrote to
    /// this file, so a rotation names every id again as it recurs).
    fn name_cgroup(&mut self, id: u64) {
        let w = match &self.last_workload {
            Some((last, w)) if *last == id => Arc::clone(w),
            _ => {
                let w = self.workloads.resolve(id);
                self.last_workload = Some((id, Arc::clone(&w)));
                w
            }
        };
        self.file().writer.workload(id, &w);
    }

    /// Names the cgroups of a snapshot's sockets (the ones sock_diag
    /// reported) that this file has not named yet, before the snapshot is
    /// written: a socket whose owner is gone, or was never found, still
    /// has a workload in the file.
    fn name_snapshot_cgroups(&mut self, sockets: &[SeenSocket]) {
        for id in self.file().writer.unnamed_cgroups(sockets) {
            self.name_cgroup(id);
        }
    }

    fn status_line(&self, lost: u64) -> String {
        let w = &self.file.as_ref().expect("open").writer;
        let per = if w.events > 0 {
            format!(" ({:.1} B/event)", w.bytes as f64 / w.events as f64)
        } else {
            String::new()
        };
        format!(
            "tcptrace: recording to {}: {} events, {} bytes{per}, lost {lost}",
            escape(&self.cfg.output.display().to_string()),
            self.events,
            w.bytes
        )
    }

    /// Closes the current file, shifts the rotated ones, opens a fresh FILE
    /// with a fresh snapshot.
    fn rotate(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        let old = self.file.take().expect("open");
        let bytes = old.writer.bytes;
        old.writer
            .finish()
            .and_then(|mut w| w.flush())
            .map_err(|e| write_error(&self.cfg.output, bytes, e))?;
        shift_rotated(&self.cfg.output, self.cfg.keep).with_context(|| {
            format!(
                "cannot rotate {}",
                escape(&self.cfg.output.display().to_string())
            )
        })?;
        (self.header.start_mono_ns, self.header.start_wall_ns) = ctx.source.now();
        // The new file's first sample is written whatever it says.
        self.last_sample = None;
        self.file = Some(Self::open(
            &self.cfg,
            &self.header,
            false,
            ctx.source.clock_ns(),
        )?);
        // Every file opens with a snapshot, as the first one does: a failure
        // ends the recording (the previous files are complete).
        let snapshot = ctx
            .source
            .sockets()
            .context("cannot open the next file with a snapshot of sockets")?;
        // The names of every stack so far open the new file.
        let seen: Vec<(StackKey, Arc<Stack>)> = self
            .stacks_seen
            .iter()
            .map(|(k, s)| (*k, Arc::clone(s)))
            .collect();
        for (key, stack) in seen {
            self.file().writer.stack(key, &stack);
            self.write(|w| w.flush_if_full())?;
        }
        if let Some(Record::Snapshot {
            ts_ns,
            namespaces,
            sockets,
            facts,
        }) = snapshot
        {
            self.name_snapshot_cgroups(&sockets);
            self.write(|w| w.snapshot(ts_ns, &namespaces, &sockets, facts.as_deref()))?;
        }
        Ok(())
    }
}

impl Consumer for Recorder {
    fn start(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        if !self.cfg.quiet {
            super::banner(ctx, &format!("recording to {}", self.cfg.output.display()));
        }
        Ok(())
    }

    fn record(&mut self, rec: &Record, _ctx: &mut Ctx<'_>) -> Result<Flow> {
        match rec {
            Record::Event(e) => {
                self.events += 1;
                if let Some(id) = e.owner.map(|o| o.cgroup).filter(|id| *id != 0) {
                    self.name_cgroup(id);
                }
                self.write(|w| w.event(e))?;
            }
            Record::Workload { cgroup, workload } => {
                let (id, w) = (*cgroup, Arc::clone(workload));
                self.file().writer.workload(id, &w);
            }
            Record::Listeners {
                ts_ns,
                listeners,
                counters,
            } => {
                if let Some(last) = &self.last_sample
                    && ts_ns.saturating_sub(last.ts_ns) < SAMPLE_REPEAT_NS
                    && last.listeners == *listeners
                    && last.counters == *counters
                {
                    return Ok(Flow::Continue);
                }
                self.last_sample = Some(WrittenSample {
                    ts_ns: *ts_ns,
                    listeners: listeners.clone(),
                    counters: counters.clone(),
                });
                // Listeners' cgroups are named like owners' (before use).
                for id in listeners.iter().filter_map(|l| l.cgroup) {
                    if id != 0 && !self.file().writer.names_cgroup(id) {
                        self.name_cgroup(id);
                    }
                }
                self.write(|w| w.listeners(*ts_ns, listeners, counters))?;
            }
            Record::Drop(d) => self.write(|w| w.drop_record(d))?,
            Record::Stack { key, stack } => {
                let (key, stack) = (*key, Arc::clone(stack));
                self.file().writer.stack(key, &stack);
                self.write(|w| w.flush_if_full())?;
                if self.stacks_seen.len() < tcptrace_core::record::MAX_REPEATED_STACKS
                    || self.stacks_seen.contains_key(&key)
                {
                    self.stacks_seen.insert(key, stack);
                }
            }
            Record::Lost { ts_ns, lost } => self.write(|w| w.lost(*ts_ns, lost))?,
            Record::Snapshot {
                ts_ns,
                namespaces,
                sockets,
                facts,
            } => {
                self.name_snapshot_cgroups(sockets);
                self.write(|w| w.snapshot(*ts_ns, namespaces, sockets, facts.as_deref()))?;
            }
        }
        Ok(Flow::Continue)
    }

    /// Every second: a block reaches the file, the status line, rotation.
    fn tick(&mut self, ctx: &mut Ctx<'_>) -> Result<Flow> {
        self.seconds += 1;
        self.write(|w| w.flush())?;
        if !self.cfg.quiet && (self.tty || self.seconds.is_multiple_of(10)) {
            let line = self.status_line(ctx.lost.total() + ctx.decode_errors);
            if self.tty {
                write_stderr(&format!("\r{line}\x1b[K"));
            } else {
                write_stderr(&format!("{line}\n"));
            }
        }
        let file = self.file.as_ref().expect("open");
        let by_size = self.cfg.rotate_size.is_some_and(|s| file.writer.bytes >= s);
        let age = ctx.source.clock_ns().saturating_sub(file.opened_ns);
        let by_time = self
            .cfg
            .rotate_time
            .is_some_and(|t| age >= t.as_nanos() as u64);
        if by_size || by_time {
            self.rotate(ctx)?;
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>) -> Result<ExitCode> {
        if self.tty && !self.cfg.quiet {
            write_stderr("\n");
        }
        let line = self.status_line(ctx.lost.total() + ctx.decode_errors);
        let file = self.file.take().expect("open");
        let bytes = file.writer.bytes;
        file.writer
            .finish()
            .and_then(|mut w| w.flush())
            .map_err(|e| write_error(&self.cfg.output, bytes, e))?;
        if !self.cfg.quiet {
            write_stderr(&format!(
                "{}\n",
                line.replacen("recording to", "recorded to", 1)
            ));
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The loop's options for `record`: a snapshot opens the file, repeats
/// every `--snapshot-every` and closes it; a tick every second.
pub fn options(cfg: &RecordConfig) -> Options {
    Options {
        tick: Some(Duration::from_secs(1)),
        deadline: cfg.duration,
        sockets_at_start: true,
        sockets_every: Some(cfg.snapshot_every),
        sockets_at_end: true,
        hangup: Hangup::Stops,
        ..Options::default()
    }
}

pub fn run(cfg: RecordConfig) -> Result<ExitCode> {
    let edges = Edges::install()?;
    let mut source = Live::load(&cfg.load, cfg.user_filter)?;
    let opts = options(&cfg);
    let mut recorder = Recorder::create(cfg, &source)?;
    edges.run(&mut source, &mut recorder, &opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `record` on a scripted source: listener samples and kernel drops
    /// reach the file as they came, and `report` of it names the listener.
    #[test]
    fn listener_samples_and_drops_are_recorded_and_reported() {
        use std::net::{IpAddr, Ipv4Addr};
        use tcptrace_core::{
            listeners::{DropCounters, DropReason, ListenerSample, NetnsDropCounters, SynDrop},
            model::{Comm, Family, SeenOwner},
        };

        use crate::source::{Scripted, Step};

        const SEC: u64 = 1_000_000_000;
        const START: u64 = 1_000 * SEC;
        const NS: u32 = 4026532100;
        let dir = std::env::temp_dir().join(format!("tcptrace-rec-drops-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("d.tcptrace");
        let cfg = RecordConfig {
            load: crate::ebpf::LoadOptions::default(),
            user_filter: tcptrace_core::filter::UserFilter::default(),
            filter_args: vec![],
            output: file.clone(),
            duration: Some(Duration::from_secs(15)),
            quiet: true,
            rotate_size: None,
            rotate_time: None,
            keep: 5,
            snapshot_every: Duration::from_secs(60),
            force: false,
        };
        let sample = |s: u64, drops: u64| {
            let ts_ns = START + s * SEC;
            (
                ts_ns,
                Step::Record(Record::Listeners {
                    ts_ns,
                    listeners: vec![ListenerSample {
                        netns: Some(NS),
                        family: Family::V4,
                        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        port: 8080,
                        inode: 3,
                        owner: Some(SeenOwner {
                            pid: 55,
                            comm: Comm::from_name("slowacceptd"),
                        }),
                        cgroup: None,
                        queue: 2,
                        limit: 1,
                        drops: Some(drops),
                    }],
                    counters: vec![NetnsDropCounters {
                        netns: NS,
                        counters: DropCounters {
                            listen_overflows: Some(drops),
                            listen_drops: Some(drops),
                            ..DropCounters::default()
                        },
                    }],
                }),
            )
        };
        let syn = SynDrop {
            ts_ns: START + SEC + SEC / 2,
            netns: Some(NS),
            family: Family::V4,
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 9,
            remote: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
            remote_port: 45_000,
            reason: DropReason::NoListener,
            kernel_reason: 3,
            syn: true,
            ack: false,
            rx_state: None,
            suppressed: 0,
        };
        // Samples at 1, 2 s, then the same one every second to 14 s:
        // written at 1, 2 and 12 s (unchanged for 10 s).
        let mut steps = vec![
            sample(1, 0),
            (syn.ts_ns, Step::Record(Record::Drop(syn))),
            sample(2, 40),
        ];
        steps.extend((3..=14).map(|s| sample(s, 40)));
        let (_tx, rx) = crate::session::inputs();
        let mut source = Scripted::new(START, steps);
        let opts = options(&cfg);
        let mut recorder = Recorder::create(cfg, &source).unwrap();
        crate::session::run(&mut source, &mut recorder, &opts, &rx).unwrap();
        let recs: Vec<Record> = crate::source::recording::open_reader(&file)
            .unwrap()
            .collect();
        let samples: Vec<u64> = recs
            .iter()
            .filter_map(|r| match r {
                Record::Listeners { ts_ns, .. } => Some((ts_ns - START) / SEC),
                _ => None,
            })
            .collect();
        assert_eq!(samples, [1, 2, 12]);
        assert_eq!(
            recs.iter()
                .filter_map(|r| match r {
                    Record::Drop(d) => Some(*d),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            [syn]
        );
        let mut reader = crate::source::recording::open_reader(&file).unwrap();
        let report = tcptrace_core::report::build(&mut reader, "d.tcptrace");
        let l = report.listeners_in_window.expect("a listeners section");
        assert_eq!(l.listeners[0].listener, "127.0.0.1:8080");
        assert_eq!(l.listeners[0].comm.as_deref(), Some("slowacceptd"));
        assert_eq!(l.listeners[0].drops_by_reason["accept_queue_full"], 40);
        assert_eq!(l.unmatched[0].destination, "127.0.0.1:9");
        let _ = fs::remove_dir_all(&dir);
    }

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
