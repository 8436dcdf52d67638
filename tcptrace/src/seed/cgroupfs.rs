//! cgroup id -> cgroup v2 path, on the host's real cgroup2 tree. Every event
//! carries the owner's cgroup id (`bpf_get_current_cgroup_id`, which is the
//! kernfs inode number of the cgroup directory); people need the path, from
//! which `tcptrace_core::workload` makes a unit, container or pod.
//!
//! * The mount is found in `/proc/self/mountinfo`: a `cgroup2` mount whose
//!   directory has inode 1 (the root cgroup, not a cgroup namespace's or a
//!   bind mount's subtree) and statfs magic `CGROUP2_SUPER_MAGIC`. It is
//!   never assumed to be `/sys/fs/cgroup` (hybrid hosts mount it at
//!   `/sys/fs/cgroup/unified`; a pod sees the host's at
//!   `/host/sys/fs/cgroup`).
//! * An id is opened with `open_by_handle_at` (a `FILEID_KERNFS` handle
//!   holding the 8-byte id): O(1) and exact, `ESTALE` when the cgroup is
//!   gone. It needs `CAP_DAC_READ_SEARCH` and systemd's `@system-service`
//!   filter refuses it: the first refusal latches a fallback, a bounded walk
//!   of the tree (`openat(O_NOFOLLOW|O_DIRECTORY)` from the mount, never
//!   crossing a mount; `d_ino` is the id, so no `stat` per directory),
//!   at most one per [`WalkLimits::min_interval`].

use std::{
    collections::HashMap,
    ffi::CString,
    fs::{self, File},
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// `statfs.f_type` of a cgroup2 mount.
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// The handle type of kernfs (cgroup) file handles.
const FILEID_KERNFS: libc::c_int = 0xfe;
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// What [`Cgroup2Root::path_of`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The path below the mount (`/` for the root cgroup).
    Found(String),
    /// No cgroup has this id any more (safe to remember: ids are not reused).
    Gone,
    /// Not known now (the walk is rate-limited or was cut short): ask again
    /// later.
    Later,
}

/// How ids are turned into paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `open_by_handle_at`.
    Handle,
    /// The tree walk (handles were refused, or [`Cgroup2Root::prefer_walk`]).
    Walk,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handle => "handle",
            Self::Walk => "walk",
        }
    }
}

/// Bounds of one walk of the tree (design: a 5 000-cgroup node costs
/// 100–150 ms).
#[derive(Clone, Copy, Debug)]
pub struct WalkLimits {
    pub max_depth: usize,
    pub max_dirs: usize,
    pub max_time: Duration,
    /// No new walk sooner than this after the last one.
    pub min_interval: Duration,
}

impl Default for WalkLimits {
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_dirs: 200_000,
            max_time: Duration::from_millis(250),
            min_interval: Duration::from_secs(2),
        }
    }
}

/// The host's cgroup2 mount, held open.
#[derive(Debug)]
pub struct Cgroup2Root {
    mount: PathBuf,
    fd: OwnedFd,
    dev: u64,
    root_ino: u64,
    handles_denied: bool,
    limits: WalkLimits,
    /// id -> path from the last walk.
    walked: HashMap<u64, String>,
    last_walk: Option<Instant>,
    last_walk_complete: bool,
}

impl Cgroup2Root {
    /// The first `cgroup2` mount of `/proc/self/mountinfo` that is a real
    /// root (inode 1, cgroup2 magic).
    pub fn discover() -> Result<Self> {
        let text = fs::read_to_string(MOUNTINFO).with_context(|| format!("reading {MOUNTINFO}"))?;
        let mounts = cgroup2_mounts(&text);
        if mounts.is_empty() {
            bail!(
                "no cgroup2 mount in {MOUNTINFO}: mount one (mount -t cgroup2 none /sys/fs/cgroup)"
            );
        }
        let mut why = Vec::new();
        for m in mounts {
            match Self::open(&m) {
                Ok(root) => return Ok(root),
                Err(e) => why.push(format!("{}: {e:#}", m.display())),
            }
        }
        bail!("no usable cgroup2 root: {}", why.join("; "))
    }

    /// `mount`, checked to be the root of a cgroup2 hierarchy.
    pub fn open(mount: &Path) -> Result<Self> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(mount)
            .with_context(|| format!("opening {}", mount.display()))?;
        let meta = file.metadata()?;
        if meta.ino() != 1 {
            bail!(
                "inode {} (not the root cgroup: a cgroup namespace's or a bind mount's subtree)",
                meta.ino()
            );
        }
        let magic = fstatfs_type(file.as_fd())?;
        if magic != CGROUP2_SUPER_MAGIC {
            bail!("filesystem type {magic:#x}, not cgroup2");
        }
        Ok(Self {
            mount: mount.to_path_buf(),
            dev: meta.dev(),
            root_ino: meta.ino(),
            fd: file.into(),
            handles_denied: false,
            limits: WalkLimits::default(),
            walked: HashMap::new(),
            last_walk: None,
            last_walk_complete: false,
        })
    }

    /// Where the tree is mounted (`/sys/fs/cgroup/unified` here).
    pub fn mount_point(&self) -> &Path {
        &self.mount
    }

    /// How ids are resolved now.
    pub fn method(&self) -> Method {
        if self.handles_denied {
            Method::Walk
        } else {
            Method::Handle
        }
    }

    /// Uses the walk from now on (as when handles are refused).
    pub fn prefer_walk(&mut self) {
        self.handles_denied = true;
    }

    pub fn set_walk_limits(&mut self, limits: WalkLimits) {
        self.limits = limits;
    }

    /// The path of cgroup `id`, relative to the mount (`/` is the root).
    pub fn path_of(&mut self, id: u64) -> Lookup {
        if id == 0 {
            return Lookup::Gone;
        }
        if !self.handles_denied {
            match self.by_handle(id) {
                Ok(found) => return found,
                Err(e) => {
                    log::debug!(
                        "open_by_handle_at refused ({e}): resolving cgroups by walking {}",
                        self.mount.display()
                    );
                    self.handles_denied = true;
                }
            }
        }
        self.by_walk(id)
    }

    /// `Err` when handles are refused (latch the walk).
    fn by_handle(&self, id: u64) -> io::Result<Lookup> {
        #[repr(C)]
        struct KernfsHandle {
            handle_bytes: libc::c_uint,
            handle_type: libc::c_int,
            f_handle: [u8; 8],
        }
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            f_handle: id.to_le_bytes(),
        };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        // SAFETY: the mount fd is open; `handle` is a valid `struct
        // file_handle` with 8 bytes of f_handle, alive for the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                self.fd.as_raw_fd(),
                &mut handle as *mut KernfsHandle,
                flags,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ESTALE | libc::ENOENT | libc::ENOTDIR | libc::EINVAL) => {
                    Ok(Lookup::Gone)
                }
                Some(libc::EPERM | libc::EACCES | libc::ENOSYS | libc::EOPNOTSUPP) => Err(e),
                _ => Ok(Lookup::Later),
            };
        }
        // SAFETY: the call returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let Ok(link) = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
            return Ok(Lookup::Later);
        };
        Ok(self.relative(&link).map_or(Lookup::Gone, Lookup::Found))
    }

    /// `link` below the mount, as a cgroup path; `None` outside it (an id
    /// this mount does not show) or deleted.
    fn relative(&self, link: &Path) -> Option<String> {
        let rest = link.strip_prefix(&self.mount).ok()?;
        let rest = rest.to_str()?;
        if rest.ends_with(" (deleted)") {
            return None;
        }
        Some(format!("/{rest}"))
    }

    fn by_walk(&mut self, id: u64) -> Lookup {
        if let Some(p) = self.walked.get(&id) {
            return Lookup::Found(p.clone());
        }
        let due = self
            .last_walk
            .is_none_or(|t| t.elapsed() >= self.limits.min_interval);
        if !due {
            return Lookup::Later;
        }
        self.walk();
        match self.walked.get(&id) {
            Some(p) => Lookup::Found(p.clone()),
            None if self.last_walk_complete => Lookup::Gone,
            None => Lookup::Later,
        }
    }

    /// Walks the whole tree within the limits, replacing the id -> path map.
    /// Returns whether it saw everything.
    pub fn walk(&mut self) -> bool {
        struct Frame {
            dir: OwnedFd,
            entries: fs::ReadDir,
            path: String,
            depth: usize,
        }
        let started = Instant::now();
        self.last_walk = Some(started);
        let mut walked = HashMap::new();
        walked.insert(self.root_ino, "/".to_string());
        let mut complete = true;
        let mut stack = Vec::new();
        match self.fd.try_clone().and_then(frame_of) {
            Ok((dir, entries)) => stack.push(Frame {
                dir,
                entries,
                path: String::new(),
                depth: 0,
            }),
            Err(e) => {
                log::debug!("cannot read {}: {e}", self.mount.display());
                complete = false;
            }
        }
        while let Some(top) = stack.last_mut() {
            if walked.len() >= self.limits.max_dirs || started.elapsed() > self.limits.max_time {
                complete = false;
                break;
            }
            let Some(entry) = top.entries.next() else {
                stack.pop();
                continue;
            };
            let Ok(entry) = entry else {
                complete = false;
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                complete = false;
                continue;
            };
            let path = format!("{}/{name}", top.path);
            let depth = top.depth + 1;
            walked.insert(entry.ino(), path.clone());
            if depth >= self.limits.max_depth {
                complete = false;
                continue;
            }
            let child = open_dir_below(top.dir.as_fd(), &name)
                .and_then(|dir| {
                    let dev = File::from(dir.try_clone()?).metadata()?.dev();
                    Ok((dir, dev))
                })
                .and_then(|(dir, dev)| {
                    if dev != self.dev {
                        return Err(io::Error::other("another mount"));
                    }
                    frame_of(dir)
                });
            // An error: removed meanwhile, or a mount on top (nothing below
            // to see).
            if let Ok((dir, entries)) = child {
                stack.push(Frame {
                    dir,
                    entries,
                    path,
                    depth,
                });
            }
        }
        self.walked = walked;
        self.last_walk_complete = complete;
        complete
    }

    /// The id (inode) of cgroup `path` (absolute, below the mount).
    pub fn id_of(&self, path: &str) -> io::Result<u64> {
        let rel = path
            .strip_prefix('/')
            .ok_or_else(|| invalid("not absolute"))?;
        if rel.split('/').any(|c| c == "." || c == "..") {
            return Err(invalid("`.` or `..` in a cgroup path"));
        }
        let meta = fs::symlink_metadata(self.mount.join(rel.trim_end_matches('/')))?;
        if !meta.is_dir() || meta.dev() != self.dev {
            return Err(invalid("not a cgroup directory"));
        }
        Ok(meta.ino())
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

/// A directory fd and a reader of its entries.
fn frame_of(dir: OwnedFd) -> io::Result<(OwnedFd, fs::ReadDir)> {
    let entries = fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    Ok((dir, entries))
}

/// `openat(dir, name, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK)`.
pub(crate) fn open_dir_below(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    open_below(dir, name, libc::O_DIRECTORY)
}

/// `openat(dir, name, O_RDONLY|O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK|extra)`: one
/// component, never a symlink, `.` or `..` (shared with the runtime
/// readers, which open files below a trusted root the same way).
pub(crate) fn open_below(
    dir: BorrowedFd<'_>,
    name: &str,
    extra: libc::c_int,
) -> io::Result<OwnedFd> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(invalid("not a single path component"));
    }
    let c_name = CString::new(name).map_err(|_| invalid("NUL in a name"))?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | extra;
    // SAFETY: `dir` is an open descriptor and `c_name` a NUL-terminated
    // string, both alive for the call.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c_name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstatfs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `buf` is a valid statfs to write.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok(buf.f_type as i64)
}

/// The mount points of the `cgroup2` lines of mountinfo text, in order.
/// Fields: `id parent major:minor root mountpoint options [optional...] -
/// fstype source superoptions`; the mount point has `\040`-style escapes.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            (fields.get(dash + 1) == Some(&"cgroup2"))
                .then(|| fields.get(4).map(|m| PathBuf::from(unescape_octal(m))))
                .flatten()
        })
        .collect()
}

/// mountinfo's `\NNN` octal escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_cgroup2_lines() {
        let text = "\
24 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
90 41 0:38 /kubepods /host/my\\040cg rw - cgroup2 cgroup2 rw
bad line
";
        assert_eq!(
            cgroup2_mounts(text),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/host/my cg")
            ]
        );
        assert_eq!(unescape_octal("a\\134b\\04"), "a\\b\\04");
    }

    /// The host's tree, read-only: works as any user (handles need
    /// CAP_DAC_READ_SEARCH; without it the walk answers).
    #[test]
    fn the_root_cgroup_is_found_by_handle_or_walk() {
        let mut root = Cgroup2Root::discover().expect("a cgroup2 mount on the test host");
        assert_eq!(root.id_of("/").unwrap(), 1);
        assert_eq!(root.path_of(1), Lookup::Found("/".into()));
        assert_eq!(root.path_of(0), Lookup::Gone);
        assert!(root.id_of("relative").is_err());
        assert!(root.id_of("/../etc").is_err());
        root.prefer_walk();
        assert_eq!(root.method(), Method::Walk);
        assert_eq!(root.path_of(1), Lookup::Found("/".into()));
    }
}
