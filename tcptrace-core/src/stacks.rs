//! User stacks: which code opened a connection (`--stacks`).
//!
//! The kernel captures the owner's user stack where a lifecycle starts
//! (connect, listen, accept) into its stack map and hands out an id that
//! travels with the owner in every event ([`crate::model::Event::stack`]).
//! The id means something only inside the process it was captured in, hence
//! [`StackKey`] `{pid, id}`. The binary's namer turns a key into a [`Stack`]
//! (function, file, line per frame) on a thread of its own; named stacks
//! come back into the stream as records and land in the engine's
//! [`StackTable`]. Snapshots group CLOSE_WAIT sockets by key
//! (`close_wait_by_stack`), and name each group by its *headline* frame: the
//! first frame that is neither system nor runtime code ([`Stack::headline`]).
//!
//! A [`Stack`] read from a recording is input: [`Stack::check`] bounds its
//! frame count and string lengths.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::model::Event;

/// A captured user stack: the kernel's id, in the process it was captured in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StackKey {
    pub pid: u32,
    pub id: u32,
}

impl StackKey {
    /// The key of an event's stack: needs both its owner and its stack id.
    pub fn of_event(e: &Event) -> Option<Self> {
        Some(Self {
            pid: e.owner?.pid,
            id: e.stack?,
        })
    }
}

/// `u64` as a `"0x…"` string in JSON (like `sk` in trace JSON); reads it back.
mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let digits = s
            .strip_prefix("0x")
            .ok_or_else(|| D::Error::custom("hex address without 0x"))?;
        u64::from_str_radix(digits, 16).map_err(D::Error::custom)
    }
}

/// One frame, innermost first. JSON: `addr` and `module_offset` as "0x…"
/// strings (like `sk` in trace JSON), the rest plain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Frame {
    /// The address in the process (a return address past frame 0).
    #[serde(with = "hex_u64")]
    pub addr: u64,
    /// The function, demangled.
    pub function: Option<String>,
    /// Bytes from the function's start.
    pub function_offset: u64,
    /// Path of the mapped file, or "[vdso]"; `None`: not in a file.
    pub module: Option<String>,
    /// File offset in `module`.
    #[serde(with = "hex_u64")]
    pub module_offset: u64,
    /// The module's build id, hex.
    pub build_id: Option<String>,
    /// Source file, with debug info.
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// How far a stack can be trusted (`stack_quality` in JSON).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackQuality {
    /// Every frame a function in a file.
    #[default]
    Complete,
    /// The kernel's depth limit (127 / perf_event_max_stack) cut the
    /// outermost callers.
    Truncated,
    /// A frame past the first was not code in a file: a binary without
    /// frame pointers or JIT code; frames stop there.
    Cut,
    /// One frame only: the syscall wrapper's; its callers keep no frame
    /// pointer.
    NoFramePointers,
    /// The process was gone (or its pid reused) before naming: addresses only.
    ProcessGone,
    /// Naming failed (maps unreadable, symbolizer error): addresses only.
    Unsymbolized,
}

impl StackQuality {
    /// The serde (JSON) name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Truncated => "truncated",
            Self::Cut => "cut",
            Self::NoFramePointers => "no_frame_pointers",
            Self::ProcessGone => "process_gone",
            Self::Unsymbolized => "unsymbolized",
        }
    }

    /// The quality of a serde (JSON) name; None for another word
    /// ("pending", "none").
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Complete,
            Self::Truncated,
            Self::Cut,
            Self::NoFramePointers,
            Self::ProcessGone,
            Self::Unsymbolized,
        ]
        .into_iter()
        .find(|q| q.name() == name)
    }

    /// What a stack of this quality misses, for a human (None: complete).
    pub fn note(self) -> Option<&'static str> {
        match self {
            Self::Complete => None,
            Self::Truncated => Some("the outermost callers are cut (127 frames at most)"),
            Self::Cut => Some("frames stop here: the code below has no frame pointers"),
            Self::NoFramePointers => Some("one frame only: the callers keep no frame pointers"),
            Self::ProcessGone => Some("the process was gone before naming: addresses only"),
            Self::Unsymbolized => Some("naming failed: addresses only"),
        }
    }
}

/// A named user stack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stack {
    /// Innermost first; at most [`MAX_FRAMES`].
    pub frames: Vec<Frame>,
    pub quality: StackQuality,
    /// Frames the kernel returned (before cutting).
    pub depth: u32,
    /// `/proc/PID/exe` when named.
    pub exe: Option<String>,
}

/// Most frames in a stack: more from a file is damage.
pub const MAX_FRAMES: usize = 128;
/// Longest name: the namer cuts longer ones; longer from a file is damage.
pub const MAX_NAME_BYTES: usize = 1024;

/// Module file names of system code (libc, the loader, the vDSO).
const SYSTEM_MODULES: &[&str] = &[
    "libc.so",
    "libc-",
    "libpthread",
    "ld-linux",
    "ld-musl",
    "libc.musl",
    "[vdso]",
    "linux-vdso",
];

/// Function name prefixes of runtime and library plumbing.
const RUNTIME_PREFIXES: &[&str] = &[
    "runtime.",
    "runtime/",
    "syscall.",
    "internal/",
    "net.",
    "net/",
    "crypto/",
    "database/sql.",
    "vendor/",
    "std::",
    "core::",
    "alloc::",
    "tokio::",
    "mio::",
    "socket2::",
];

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_system_module(module: &str) -> bool {
    let name = file_name(module);
    SYSTEM_MODULES.iter().any(|p| name.starts_with(p))
}

fn is_runtime_function(function: &str) -> bool {
    let bare = function.strip_prefix('<').unwrap_or(function);
    RUNTIME_PREFIXES.iter().any(|p| bare.starts_with(p))
        || ["__libc_", "__GI_", "_start"]
            .iter()
            .any(|p| function.starts_with(p))
}

impl Frame {
    /// True for system or runtime code: not where an application's code
    /// path is named.
    fn is_plumbing(&self) -> bool {
        self.module.as_deref().is_some_and(is_system_module)
            || self.function.as_deref().is_some_and(is_runtime_function)
    }

    /// Short name: the function, else `module_file_name+0xOFF`, else `0xADDR`.
    pub fn short(&self) -> String {
        match (&self.function, &self.module) {
            (Some(f), _) => f.clone(),
            (None, Some(m)) => format!("{}+{:#x}", file_name(m), self.module_offset),
            (None, None) => format!("{:#x}", self.addr),
        }
    }

    /// "checkout_reserve_items+0x1c  stackleak.c:37  (/tmp/x/stackleak)"
    /// (the caller escapes it).
    pub fn describe(&self) -> String {
        let mut s = match &self.function {
            Some(f) => format!("{f}+{:#x}", self.function_offset),
            None => self.short(),
        };
        if let Some(file) = &self.file {
            s.push_str("  ");
            s.push_str(file_name(file));
            if let Some(line) = self.line {
                s.push_str(&format!(":{line}"));
            }
        }
        if let Some(m) = &self.module {
            s.push_str(&format!("  ({m})"));
        }
        s
    }

    fn check(&self) -> Result<(), &'static str> {
        let long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > MAX_NAME_BYTES);
        if long(&self.function) || long(&self.module) || long(&self.build_id) || long(&self.file) {
            return Err("stack frame name too long");
        }
        Ok(())
    }
}

impl Stack {
    /// The frame that names the code path: the first frame that is neither
    /// system code (libc, the loader, the vDSO) nor runtime code (Go's
    /// `runtime.`/`syscall.`/`net.`…, Rust's `std::`/`tokio::`…); if none
    /// qualifies, the first frame with a function; otherwise 0.
    pub fn headline(&self) -> usize {
        self.frames
            .iter()
            .position(|f| f.function.is_some() && !f.is_plumbing())
            .or_else(|| self.frames.iter().position(|f| f.function.is_some()))
            .unwrap_or(0)
    }

    /// `n` frames from the headline, " ← " joined, " ← …" when more:
    /// "checkout_reserve_items ← handle_order ← main ← …". A frame with no
    /// function is `module_file_name+0xOFF`, or `0xADDR` outside any file.
    pub fn code_path(&self, n: usize) -> String {
        let from = self.headline();
        let rest = self.frames.get(from..).unwrap_or_default();
        let mut s = rest
            .iter()
            .take(n)
            .map(Frame::short)
            .collect::<Vec<_>>()
            .join(" ← ");
        if rest.len() > n {
            s.push_str(" ← …");
        }
        s
    }

    /// The headline frame's function (what alerts name); None when it has none.
    pub fn top_frame(&self) -> Option<String> {
        self.frames.get(self.headline())?.function.clone()
    }

    /// A stack read from a file is input: frame count and string lengths
    /// checked (Err = damage).
    pub fn check(&self) -> Result<(), &'static str> {
        if self.frames.len() > MAX_FRAMES {
            return Err("too many stack frames");
        }
        if self.exe.as_ref().is_some_and(|s| s.len() > MAX_NAME_BYTES) {
            return Err("stack exe name too long");
        }
        self.frames.iter().try_for_each(Frame::check)
    }
}

/// Names of every stack known so far, by key (the engine's).
#[derive(Clone, Debug, Default)]
pub struct StackTable {
    /// Stacks are on (`--stacks`, or a recording made with it): snapshots
    /// carry `close_wait_by_stack` and `stacks`.
    pub enabled: bool,
    names: FxHashMap<StackKey, Arc<Stack>>,
    /// Inserts dropped because the table held [`MAX_NAMED_STACKS`].
    pub dropped: u64,
}

/// Most named stacks an engine keeps: inserts beyond are dropped (counted in
/// [`StackTable::dropped`]).
pub const MAX_NAMED_STACKS: usize = 1 << 16;

impl StackTable {
    /// Names `key` (a new name replaces the old one).
    pub fn insert(&mut self, key: StackKey, stack: Arc<Stack>) {
        if self.names.len() >= MAX_NAMED_STACKS && !self.names.contains_key(&key) {
            self.dropped += 1;
            return;
        }
        self.names.insert(key, stack);
    }

    pub fn get(&self, key: &StackKey) -> Option<&Arc<Stack>> {
        self.names.get(key)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&StackKey, &Arc<Stack>)> {
        self.names.iter()
    }
}

/// What the live source's namer did (live only; zero from recordings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StackCounts {
    /// User stacks the kernel could not keep (`Counter::StackMiss`).
    pub kernel_misses: u64,
    /// Stacks asked to be named.
    pub requested: u64,
    pub named: u64,
    pub failed: u64,
    /// Asked, not answered yet.
    pub pending: u64,
    /// Requests not queued (queue full): asked again next time.
    pub dropped: u64,
    /// Deepest stack the kernel walks: min(127, perf_event_max_stack).
    pub max_depth: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(function: Option<&str>, module: Option<&str>) -> Frame {
        Frame {
            addr: 0x5555_0000_1000,
            function: function.map(str::to_owned),
            function_offset: 0x1c,
            module: module.map(str::to_owned),
            module_offset: 0x1234,
            ..Frame::default()
        }
    }

    fn stack(frames: Vec<Frame>) -> Stack {
        Stack {
            depth: frames.len() as u32,
            frames,
            ..Stack::default()
        }
    }

    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

    #[test]
    fn c_stack_skips_the_libc_wrapper() {
        let s = stack(vec![
            f(Some("__connect"), Some(LIBC)),
            f(Some("checkout_reserve_items"), Some("/tmp/x/stackleak")),
            f(Some("handle_order"), Some("/tmp/x/stackleak")),
            f(Some("main"), Some("/tmp/x/stackleak")),
            f(Some("__libc_start_call_main"), Some(LIBC)),
        ]);
        assert_eq!(s.headline(), 1);
        assert_eq!(s.top_frame().as_deref(), Some("checkout_reserve_items"));
        assert_eq!(
            s.code_path(3),
            "checkout_reserve_items ← handle_order ← main ← …"
        );
        assert_eq!(
            s.code_path(4),
            "checkout_reserve_items ← handle_order ← main ← __libc_start_call_main"
        );
    }

    #[test]
    fn go_stack_skips_the_runtime_and_net() {
        let exe = Some("/tmp/goleak");
        let s = stack(vec![
            f(Some("runtime/internal/syscall.Syscall6"), exe),
            f(Some("syscall.Syscall"), exe),
            f(Some("syscall.connect"), exe),
            f(Some("net.(*netFD).connect"), exe),
            f(Some("net.(*Dialer).DialContext"), exe),
            f(Some("net.Dial"), exe),
            f(Some("main.checkoutReserveItems"), exe),
            f(Some("main.handleOrder"), exe),
            f(Some("main.main"), exe),
            f(Some("runtime.main"), exe),
        ]);
        assert_eq!(s.top_frame().as_deref(), Some("main.checkoutReserveItems"));
        assert_eq!(
            s.code_path(3),
            "main.checkoutReserveItems ← main.handleOrder ← main.main ← …"
        );
    }

    #[test]
    fn rust_stack_skips_std_and_tokio_even_in_angle_brackets() {
        let exe = Some("/usr/bin/svc");
        let s = stack(vec![
            f(Some("__GI___connect"), Some(LIBC)),
            f(Some("<socket2::Socket>::connect"), exe),
            f(Some("std::net::TcpStream::connect"), exe),
            f(Some("<tokio::net::TcpStream>::connect"), exe),
            f(Some("svc::pool::checkout"), exe),
        ]);
        assert_eq!(s.top_frame().as_deref(), Some("svc::pool::checkout"));
        assert_eq!(s.code_path(1), "svc::pool::checkout");
    }

    #[test]
    fn all_plumbing_falls_back_to_the_first_function_then_zero() {
        let s = stack(vec![
            f(None, None),
            f(Some("__connect"), Some(LIBC)),
            f(Some("_start"), Some(LIBC)),
        ]);
        assert_eq!(s.headline(), 1);
        let s = stack(vec![f(None, Some("/tmp/x/jit")), f(None, None)]);
        assert_eq!(s.headline(), 0);
        assert_eq!(s.top_frame(), None);
        assert_eq!(s.code_path(3), "jit+0x1234 ← 0x555500001000");
        assert_eq!(Stack::default().code_path(3), "");
        assert_eq!(Stack::default().top_frame(), None);
    }

    #[test]
    fn cut_stack_names_what_it_has() {
        let s = Stack {
            quality: StackQuality::Cut,
            ..stack(vec![
                f(Some("__connect"), Some(LIBC)),
                f(None, Some("/opt/app/bin")),
            ])
        };
        assert_eq!(s.headline(), 0);
        assert_eq!(s.code_path(3), "__connect ← bin+0x1234");
        assert_eq!(s.quality.name(), "cut");
    }

    #[test]
    fn describe_has_offset_file_line_and_module() {
        let mut fr = f(Some("checkout_reserve_items"), Some("/tmp/x/stackleak"));
        fr.file = Some("/src/tests/stacks/stackleak.c".into());
        fr.line = Some(37);
        assert_eq!(
            fr.describe(),
            "checkout_reserve_items+0x1c  stackleak.c:37  (/tmp/x/stackleak)"
        );
        assert_eq!(f(None, None).describe(), "0x555500001000");
    }

    #[test]
    fn quality_names_are_the_serde_names() {
        use StackQuality::*;
        for q in [
            Complete,
            Truncated,
            Cut,
            NoFramePointers,
            ProcessGone,
            Unsymbolized,
        ] {
            assert_eq!(
                serde_json::to_string(&q).unwrap(),
                format!("\"{}\"", q.name())
            );
            assert_eq!(q.note().is_none(), q == Complete);
            assert_eq!(StackQuality::from_name(q.name()), Some(q));
        }
    }

    #[test]
    fn frame_json_has_hex_addresses_and_reads_back() {
        let s = stack(vec![f(Some("main"), Some("/bin/x"))]);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""addr":"0x555500001000""#), "{json}");
        assert!(json.contains(r#""module_offset":"0x1234""#), "{json}");
        let back: Stack = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert!(serde_json::from_str::<Frame>(r#"{"addr":"12"}"#).is_err());
        assert!(serde_json::from_str::<Frame>(r#"{"addr":"0xzz"}"#).is_err());
    }

    #[test]
    fn check_bounds_frames_and_names() {
        let ok = stack(vec![Frame::default(); MAX_FRAMES]);
        assert!(ok.check().is_ok());
        assert!(
            stack(vec![Frame::default(); MAX_FRAMES + 1])
                .check()
                .is_err()
        );
        let mut long = f(Some("main"), None);
        long.function = Some("x".repeat(MAX_NAME_BYTES + 1));
        assert!(stack(vec![long]).check().is_err());
        let exe = Stack {
            exe: Some("x".repeat(MAX_NAME_BYTES + 1)),
            ..Stack::default()
        };
        assert!(exe.check().is_err());
    }

    #[test]
    fn table_is_bounded() {
        let mut t = StackTable::default();
        let s = Arc::new(Stack::default());
        for id in 0..MAX_NAMED_STACKS as u32 {
            t.insert(StackKey { pid: 1, id }, Arc::clone(&s));
        }
        t.insert(StackKey { pid: 2, id: 0 }, Arc::clone(&s));
        assert_eq!(t.dropped, 1);
        // A known key is renamed, never dropped.
        t.insert(StackKey { pid: 1, id: 0 }, Arc::clone(&s));
        assert_eq!((t.len(), t.dropped), (MAX_NAMED_STACKS, 1));
        assert!(t.get(&StackKey { pid: 2, id: 0 }).is_none());
    }
}
