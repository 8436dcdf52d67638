//! Names user stacks (`--stacks`) on a thread of its own (`tcptrace-stacks`),
//! so the loop never waits for ELF or DWARF parsing: the live source asks
//! when a socket with a stack enters CLOSE_WAIT (its process holds it, so it
//! is alive), once per (pid, stack id); named stacks come back to the loop
//! as [`Record::Stack`](tcptrace_core::record::Record::Stack) records.
//!
//! Naming one stack ([`name_ips`]): the kernel's addresses are read from the
//! `STACKS` map; the process must still be the one that made the stack (its
//! `/proc/PID/comm` equals the owner's name: a reused pid is not named);
//! blazesym's normalizer gives each frame its module, file offset and build
//! id, its symbolizer the function, offset and (with DWARF) file:line.
//! Frames are cached by (module, offset), so a stack shared by many
//! processes (or re-made after a restart) is named from memory. What can go
//! wrong shows in [`StackQuality`], never as a wrong name.

use std::{
    collections::HashMap,
    sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    thread::JoinHandle,
};

use aya::maps::{MapData, StackTraceMap};
use blazesym::{
    Pid,
    normalize::{NormalizeOpts, Normalizer, UserMeta},
    symbolize::{Input, Symbolized, Symbolizer, source::Process, source::Source},
};
use rustc_hash::FxHashSet;
use tcptrace_core::{
    model::{Comm, Event, EventKind, TcpState},
    stacks::{Frame, MAX_FRAMES, MAX_NAME_BYTES, Stack, StackCounts, StackKey, StackQuality},
};

/// Requests waiting for the thread, at most (more are dropped, counted, and
/// asked again the next time a socket with that stack enters CLOSE_WAIT).
pub const QUEUE: usize = 1024;
/// Keys asked for, remembered at most; then the set starts again (a key
/// asked twice is named twice, which is harmless).
pub const ASKED_MAX: usize = 1 << 16;
/// Frames kept in the namer's cache, at most; then it starts again.
const CACHE_MAX: usize = 1 << 16;

/// One stack to name: its key and the name its owner had when the socket
/// was opened (to tell a reused pid).
struct Request {
    key: StackKey,
    comm: Comm,
}

/// The live source's side of the naming thread.
pub struct StackNamer {
    requests: Option<SyncSender<Request>>,
    named: Receiver<(StackKey, Stack)>,
    asked: FxHashSet<StackKey>,
    counts: StackCounts,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StackNamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackNamer")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl StackNamer {
    /// Starts the naming thread, which owns `map` (the kernel's `STACKS`).
    /// `max_depth`: the deepest stack the kernel walks (a stack that deep
    /// was truncated).
    ///
    /// The thread starts at the priority of its caller and lowers it once
    /// (nice 10). [`crate::source::live::Live::load`] starts it before
    /// `enter_loop` raises the loop's priority (SCHED_RR with
    /// `--realtime-drain`), so it never inherits that.
    pub fn start(map: StackTraceMap<MapData>, max_depth: u32) -> anyhow::Result<Self> {
        Self::start_with(move |id| ips_of(&map, id), max_depth)
    }

    /// [`Self::start`] with any source of addresses (the tests').
    fn start_with(
        mut ips: impl FnMut(u32) -> Option<Vec<u64>> + Send + 'static,
        max_depth: u32,
    ) -> anyhow::Result<Self> {
        let (requests, inbox) = sync_channel::<Request>(QUEUE);
        let (outbox, named) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tcptrace-stacks".into())
            .spawn(move || {
                lower_priority();
                // Made here: blazesym's symbolizer is not Send.
                let mut naming = Naming::new();
                while let Ok(req) = inbox.recv() {
                    let stack = match ips(req.key.id) {
                        Some(ips) => name_ips(&mut naming, req.key.pid, &req.comm, &ips, max_depth),
                        None => Stack {
                            quality: StackQuality::Unsymbolized,
                            ..Stack::default()
                        },
                    };
                    if outbox.send((req.key, stack)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            requests: Some(requests),
            named,
            asked: FxHashSet::default(),
            counts: StackCounts {
                max_depth,
                ..StackCounts::default()
            },
            thread: Some(thread),
        })
    }

    /// An event the filters kept: asks for its stack's names when it enters
    /// CLOSE_WAIT, or is accepted already in CLOSE_WAIT (its peer closed
    /// before accept(): the acceptor's stack comes with the Accept), the
    /// first time per key; a full queue asks again next time.
    pub fn observe(&mut self, e: &Event) {
        if !matches!(e.kind, EventKind::Transition | EventKind::Accept)
            || e.new != TcpState::CloseWait
        {
            return;
        }
        let Some(key) = StackKey::of_event(e) else {
            return;
        };
        let Some(owner) = e.owner else { return };
        if self.asked.contains(&key) {
            return;
        }
        let Some(requests) = &self.requests else {
            return;
        };
        match requests.try_send(Request {
            key,
            comm: owner.comm,
        }) {
            Ok(()) => {
                if self.asked.len() >= ASKED_MAX {
                    self.asked.clear();
                }
                self.asked.insert(key);
                self.counts.requested += 1;
            }
            Err(TrySendError::Full(_)) => self.counts.dropped += 1,
            Err(TrySendError::Disconnected(_)) => {
                // The thread ended (it only does when it panicked): stop asking.
                self.requests = None;
                crate::say!("the stack naming thread stopped: stacks stay unnamed");
            }
        }
    }

    /// Named stacks back since the last call.
    pub fn take_named(&mut self, f: &mut dyn FnMut(StackKey, Stack)) {
        while let Ok((key, stack)) = self.named.try_recv() {
            match stack.quality {
                StackQuality::ProcessGone | StackQuality::Unsymbolized => self.counts.failed += 1,
                _ => self.counts.named += 1,
            }
            log::debug!(
                "stack {}/{} named: {} ({})",
                key.pid,
                key.id,
                tcptrace_core::output::escape(&stack.code_path(4)),
                stack.quality.name()
            );
            f(key, stack);
        }
    }

    /// What it did so far (`kernel_misses` is the source's to fill).
    pub fn counts(&self) -> StackCounts {
        StackCounts {
            pending: self
                .counts
                .requested
                .saturating_sub(self.counts.named + self.counts.failed),
            ..self.counts
        }
    }
}

impl Drop for StackNamer {
    /// Closes the queue: the thread ends after the stack it is naming. It
    /// is joined only if it already ended (a large DWARF parse must not
    /// hold up the exit).
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take()
            && thread.is_finished()
        {
            let _ = thread.join();
        }
    }
}

/// The stack's addresses from the kernel's map (innermost first); None
/// when the id is not there.
fn ips_of(map: &StackTraceMap<MapData>, id: u32) -> Option<Vec<u64>> {
    let trace = map.get(&id, 0).ok()?;
    Some(trace.frames().iter().map(|f| f.ip).collect())
}

/// Nice 10 for the calling thread (the naming is never urgent).
fn lower_priority() {
    // SAFETY: gettid and setpriority on this thread's own id; no memory.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// Where a frame's code is: its module's build id (hex) or, without one,
/// its path; its offset in the file; and whether it is a return address.
type CacheKey = (String, u64, bool);

/// blazesym's state and the frames named so far (the naming thread's).
pub(crate) struct Naming {
    symbolizer: Symbolizer,
    normalizer: Normalizer,
    cache: HashMap<CacheKey, Frame>,
}

impl Naming {
    pub(crate) fn new() -> Self {
        let procmap_query = blazesym::helper::is_procmap_query_supported().unwrap_or(false);
        Self {
            symbolizer: Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(false)
                .enable_demangling(true)
                .build(),
            normalizer: Normalizer::builder()
                .enable_build_ids(true)
                .enable_build_id_caching(true)
                .enable_procmap_query(procmap_query)
                .build(),
            cache: HashMap::new(),
        }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A name as the kernel keeps it, from a `/proc` `comm` file.
fn comm_at(path: &str) -> Option<Comm> {
    let name = std::fs::read_to_string(path).ok()?;
    Some(Comm::from_name(name.trim_end_matches('\n')))
}

/// The process's name now (`/proc/PID/comm`: its main thread's).
fn comm_now(pid: u32) -> Option<Comm> {
    comm_at(&format!("/proc/{pid}/comm"))
}

/// Threads looked at, at most, for a thread of the owner's name.
const THREADS_MAX: usize = 4096;

/// Whether process `pid` is still the one whose thread called `comm` opened
/// the socket: its main thread, or one of its threads, has that name (the
/// owner is the thread that called connect() or accept(), often a worker
/// named apart from the main thread: "tokio-runtime-w", "pool-1-thread-3").
/// A reused pid, or a process that exec'd something else, has other names.
fn still_named(pid: u32, comm: &Comm) -> bool {
    if comm_now(pid).as_ref() == Some(comm) {
        return true;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .take(THREADS_MAX)
        .flatten()
        .any(|t| comm_at(&format!("{}/comm", t.path().display())).as_ref() == Some(comm))
}

/// Frames with the addresses only (nothing named).
fn bare(ips: &[u64], quality: StackQuality) -> Stack {
    Stack {
        frames: ips
            .iter()
            .take(MAX_FRAMES)
            .map(|&addr| Frame {
                addr,
                ..Frame::default()
            })
            .collect(),
        quality,
        depth: ips.len() as u32,
        exe: None,
    }
}

/// Names `ips` (a user stack of process `pid`, innermost first, as the
/// kernel walked it) if the process is still the one called `comm`.
pub(crate) fn name_ips(
    naming: &mut Naming,
    pid: u32,
    comm: &Comm,
    ips: &[u64],
    max_depth: u32,
) -> Stack {
    let ips = &ips[..ips.len().min(MAX_FRAMES)];
    // Pid 0 is "this process" to blazesym; a pid whose names changed was
    // reused (or exec'd something else): its addresses mean other code now.
    if pid == 0 || !still_named(pid, comm) {
        return bare(ips, StackQuality::ProcessGone);
    }
    if ips.is_empty() {
        return bare(ips, StackQuality::Unsymbolized);
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| cut(p.display().to_string(), MAX_NAME_BYTES));
    let opts = NormalizeOpts {
        map_files: false,
        ..NormalizeOpts::default()
    };
    let Ok(normalized) = naming
        .normalizer
        .normalize_user_addrs_opts(Pid::from(pid), ips, &opts)
    else {
        return bare(ips, StackQuality::Unsymbolized);
    };
    if normalized.outputs.len() != ips.len() {
        return bare(ips, StackQuality::Unsymbolized);
    }
    // Module, offset and build id of each frame, from the normalizer.
    let mut frames = Vec::with_capacity(ips.len());
    let mut keys: Vec<Option<CacheKey>> = Vec::with_capacity(ips.len());
    for (i, (&addr, &(offset, meta))) in ips.iter().zip(&normalized.outputs).enumerate() {
        let mut frame = Frame {
            addr,
            ..Frame::default()
        };
        let mut key = None;
        match normalized.meta.get(meta) {
            Some(UserMeta::Elf(elf)) => {
                let path = cut(elf.path.display().to_string(), MAX_NAME_BYTES);
                let build_id = elf.build_id.as_deref().map(hex);
                key = Some((
                    build_id.clone().unwrap_or_else(|| path.clone()),
                    offset,
                    i > 0,
                ));
                frame.module = Some(path);
                frame.module_offset = offset;
                frame.build_id = build_id;
            }
            Some(UserMeta::Sym(sym)) => {
                // The vDSO: named by the normalizer already.
                frame.module = Some("[vdso]".to_string());
                frame.module_offset = offset;
                frame.function = Some(cut(sym.name.to_string(), MAX_NAME_BYTES));
                frame.function_offset = sym.offset as u64;
            }
            _ => {}
        }
        if let Some(k) = &key
            && let Some(known) = naming.cache.get(k)
        {
            frame.function.clone_from(&known.function);
            frame.function_offset = known.function_offset;
            frame.file.clone_from(&known.file);
            frame.line = known.line;
            key = None;
        }
        frames.push(frame);
        keys.push(key);
    }
    // The frames not in the cache, named in one call. A return address
    // points after its call: the call is at `addr - 1`.
    let misses: Vec<usize> = (0..frames.len()).filter(|&i| keys[i].is_some()).collect();
    if !misses.is_empty() {
        let lookup: Vec<u64> = misses
            .iter()
            .map(|&i| {
                if i > 0 {
                    ips[i].saturating_sub(1)
                } else {
                    ips[i]
                }
            })
            .collect();
        let src = Source::Process(Process::new(Pid::from(pid)));
        let Ok(names) = naming.symbolizer.symbolize(&src, Input::AbsAddr(&lookup)) else {
            let mut stack = bare(ips, StackQuality::Unsymbolized);
            stack.exe = exe;
            return stack;
        };
        for ((&i, &at), named) in misses.iter().zip(&lookup).zip(names) {
            if let Symbolized::Sym(sym) = named {
                let frame = &mut frames[i];
                frame.function = Some(cut(sym.name.into_owned(), MAX_NAME_BYTES));
                frame.function_offset = sym.offset as u64 + (ips[i] - at);
                if let Some(info) = &sym.code_info {
                    frame.file = Some(cut(info.to_path().display().to_string(), MAX_NAME_BYTES));
                    frame.line = info.line;
                }
            }
            if let Some(k) = keys[i].take() {
                if naming.cache.len() >= CACHE_MAX {
                    naming.cache.clear();
                }
                naming.cache.insert(k, frames[i].clone());
            }
        }
    }
    let depth = ips.len() as u32;
    // Past the first frame, an address in no file is not a return address
    // into code: the walk went through a frame without a frame pointer (or
    // JIT code). What follows is noise.
    let cut_at = frames
        .iter()
        .skip(1)
        .position(|f| f.module.is_none())
        .map(|p| p + 1);
    let quality = match cut_at {
        Some(at) => {
            frames.truncate(at);
            StackQuality::Cut
        }
        None if depth >= max_depth => StackQuality::Truncated,
        None if frames.len() == 1 => StackQuality::NoFramePointers,
        None => StackQuality::Complete,
    };
    Stack {
        frames,
        quality,
        depth,
        exe,
    }
}

/// Whether a path names a file called `name` (the tests').
#[cfg(test)]
fn file_is(path: &Option<String>, name: &str) -> bool {
    path.as_deref().is_some_and(|p| {
        std::path::Path::new(p)
            .file_name()
            .is_some_and(|f| f == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn first_test_function(x: u64) -> u64 {
        std::hint::black_box(x.wrapping_mul(31).rotate_left(7))
    }

    #[inline(never)]
    fn second_test_function(x: u64) -> u64 {
        std::hint::black_box(x ^ 0x5a5a).wrapping_add(3)
    }

    fn own_comm() -> Comm {
        comm_now(std::process::id()).expect("this process's comm")
    }

    fn addrs() -> (u64, u64) {
        let a = first_test_function as fn(u64) -> u64 as usize as u64;
        let b = second_test_function as fn(u64) -> u64 as usize as u64;
        (a, b)
    }

    #[test]
    fn names_this_processs_functions_with_file_and_module() {
        let (a, b) = addrs();
        let mut naming = Naming::new();
        let stack = name_ips(
            &mut naming,
            std::process::id(),
            &own_comm(),
            &[a + 1, b + 1],
            127,
        );
        assert_eq!(stack.quality, StackQuality::Complete, "{stack:?}");
        assert_eq!(stack.depth, 2);
        let names: Vec<_> = stack.frames.iter().map(|f| f.function.clone()).collect();
        assert!(
            names[0]
                .as_deref()
                .is_some_and(|n| n.ends_with("first_test_function")),
            "{names:?}"
        );
        assert!(
            names[1]
                .as_deref()
                .is_some_and(|n| n.ends_with("second_test_function")),
            "{names:?}"
        );
        for f in &stack.frames {
            assert!(file_is(&f.file, "stacks.rs"), "{f:?}");
            assert!(f.line.is_some(), "{f:?}");
            let exe = std::env::current_exe().unwrap();
            assert_eq!(
                f.module.as_deref(),
                Some(&*exe.display().to_string()),
                "{f:?}"
            );
        }
        assert_eq!(stack.frames[0].function_offset, 1);
        assert_eq!(stack.frames[1].function_offset, 1);
        assert!(stack.exe.is_some());
        // Named again from the cache: the same frames.
        let again = name_ips(
            &mut naming,
            std::process::id(),
            &own_comm(),
            &[a + 1, b + 1],
            127,
        );
        assert_eq!(again, stack);
    }

    #[test]
    fn a_reaped_process_is_gone_with_its_addresses_kept() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut naming = Naming::new();
        let stack = name_ips(
            &mut naming,
            pid,
            &Comm::from_name("true"),
            &[0x1234, 0x5678],
            127,
        );
        assert_eq!(stack.quality, StackQuality::ProcessGone);
        let addrs: Vec<u64> = stack.frames.iter().map(|f| f.addr).collect();
        assert_eq!(addrs, [0x1234, 0x5678]);
        assert!(stack.frames.iter().all(|f| f.function.is_none()));
    }

    #[test]
    fn another_name_means_a_reused_pid_and_pid_zero_is_never_this_process() {
        let (a, b) = addrs();
        let mut naming = Naming::new();
        let stack = name_ips(
            &mut naming,
            std::process::id(),
            &Comm::from_name("not-this-one"),
            &[a + 1, b + 1],
            127,
        );
        assert_eq!(stack.quality, StackQuality::ProcessGone);
        assert!(stack.frames.iter().all(|f| f.function.is_none()));
        let stack = name_ips(&mut naming, 0, &own_comm(), &[a + 1], 127);
        assert_eq!(stack.quality, StackQuality::ProcessGone);
    }

    #[test]
    fn a_worker_thread_named_apart_from_the_main_one_is_the_same_process() {
        let (a, b) = addrs();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("c1-pool-worker".into())
            .spawn(move || {
                ready_tx.send(()).unwrap();
                let _ = rx.recv();
            })
            .unwrap();
        ready.recv().unwrap();
        let mut naming = Naming::new();
        let stack = name_ips(
            &mut naming,
            std::process::id(),
            &Comm::from_name("c1-pool-worker"),
            &[a + 1, b + 1],
            127,
        );
        drop(tx);
        worker.join().unwrap();
        assert_eq!(stack.quality, StackQuality::Complete, "{stack:?}");
        let empty = name_ips(&mut naming, std::process::id(), &own_comm(), &[], 127);
        assert_eq!(empty.quality, StackQuality::Unsymbolized);
    }

    #[test]
    fn an_address_in_no_file_past_the_first_cuts_the_stack_there() {
        let (a, b) = addrs();
        let mut naming = Naming::new();
        let stack = name_ips(
            &mut naming,
            std::process::id(),
            &own_comm(),
            &[a + 1, 0x10, b + 1],
            127,
        );
        assert_eq!(stack.quality, StackQuality::Cut, "{stack:?}");
        assert_eq!(stack.frames.len(), 1);
        assert_eq!(stack.depth, 3);
    }

    #[test]
    fn one_frame_has_no_frame_pointers_and_the_depth_limit_truncates() {
        let (a, b) = addrs();
        let mut naming = Naming::new();
        let pid = std::process::id();
        let one = name_ips(&mut naming, pid, &own_comm(), &[a + 1], 127);
        assert_eq!(one.quality, StackQuality::NoFramePointers);
        let deep = name_ips(&mut naming, pid, &own_comm(), &[a + 1, b + 1, b + 1], 3);
        assert_eq!(deep.quality, StackQuality::Truncated);
    }

    #[test]
    fn the_thread_names_each_key_once_and_counts() {
        let (a, b) = addrs();
        let mut namer =
            StackNamer::start_with(move |id| (id == 7).then(|| vec![a + 1, b + 1]), 127).unwrap();
        let pid = std::process::id();
        let owner = tcptrace_core::model::Owner {
            pid,
            tid: pid,
            comm: own_comm(),
            cgroup: 0,
            from_listener: false,
        };
        use tcptrace_core::fixtures::{Conn, ip};
        let conn = Conn::new(1, (ip(1), 40000), (ip(2), 80), Some(owner));
        let mut e = conn.at(1, TcpState::Established, TcpState::CloseWait);
        e.stack = Some(7);
        namer.observe(&e);
        namer.observe(&e); // asked once
        let mut other = e;
        other.stack = Some(8); // not in the map: unsymbolized
        namer.observe(&other);
        let mut established = e;
        established.new = TcpState::Established;
        established.stack = Some(9);
        namer.observe(&established); // not CLOSE_WAIT: not asked
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while got.len() < 2 {
            assert!(std::time::Instant::now() < deadline, "named: {got:?}");
            namer.take_named(&mut |k, s| got.push((k, s)));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        got.sort_by_key(|(k, _)| *k);
        assert_eq!(got[0].0, StackKey { pid, id: 7 });
        assert_eq!(got[0].1.quality, StackQuality::Complete);
        assert_eq!(got[1].0, StackKey { pid, id: 8 });
        assert_eq!(got[1].1.quality, StackQuality::Unsymbolized);
        let c = namer.counts();
        assert_eq!(
            (c.requested, c.named, c.failed, c.pending, c.dropped),
            (2, 1, 1, 0, 0)
        );
        assert_eq!(c.max_depth, 127);
    }
}
