//! Real cgroup v2 groups for the workload tests: made under the discovered
//! cgroup2 root, real processes moved into them (a `sleep`, or a server
//! moved in before it runs), all killed by pid and the groups removed
//! deepest first when dropped; and a temporary root for faked runtime
//! state (Docker, kubelet files).

use std::{
    ffi::CString,
    fs,
    io::{BufRead, BufReader},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::wait_for;

/// A 64-hex id unique to this test process and `tag`.
pub fn hex_id(tag: u8) -> String {
    format!("{tag:02x}{:062x}", std::process::id())
}

/// Cgroups made for a test and the processes moved into them. Dropping it
/// kills the children (by pid), waits for them, and removes the groups
/// deepest first.
pub struct CgroupTree {
    mount: PathBuf,
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl CgroupTree {
    pub fn new(mount: &Path) -> Self {
        Self {
            mount: mount.to_path_buf(),
            dirs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Makes cgroup `path` (and its parents) below the mount; returns its
    /// id (the directory's inode).
    pub fn make(&mut self, path: &str) -> u64 {
        let mut dir = self.mount.clone();
        for comp in path.trim_start_matches('/').split('/') {
            dir.push(comp);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                self.dirs.push(dir.clone());
            }
        }
        fs::metadata(&dir).unwrap().ino()
    }

    /// A `sleep 30` moved into cgroup `path`; returns its pid.
    pub fn spawn_into(&mut self, path: &str) -> u32 {
        let child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        self.children.push(child);
        let procs = self
            .mount
            .join(path.trim_start_matches('/'))
            .join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", procs.display()));
        let want = format!("0::{path}");
        wait_for(
            "the child to be in its cgroup",
            Duration::from_secs(5),
            || {
                fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|c| c.lines().any(|l| l == want))
            },
        );
        pid
    }

    /// A server moved into cgroup `path` before it runs (so before it
    /// listens), optionally in network namespace `netns`; returns its port.
    pub fn server_in(&mut self, path: &str, netns: Option<&str>, script: &str) -> u16 {
        let procs = self
            .mount
            .join(path.trim_start_matches('/'))
            .join("cgroup.procs");
        let procs = CString::new(procs.as_os_str().as_encoded_bytes()).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "python3", "-c", script]);
                c
            }
            None => {
                let mut c = Command::new("python3");
                c.args(["-c", script]);
                c
            }
        };
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls (getpid, open, write,
        // close) on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let mut buf = [0u8; 20];
                let mut n = libc::getpid() as u32;
                let mut i = buf.len();
                loop {
                    i -= 1;
                    buf[i] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let len = buf.len() - i;
                let wrote = libc::write(fd, buf[i..].as_ptr().cast(), len);
                libc::close(fd);
                if wrote != len as isize {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        self.children.push(child);
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("a port, got {line:?}"))
    }

    pub fn remove(&mut self, path: &str) {
        let dir = self.mount.join(path.trim_start_matches('/'));
        fs::remove_dir(&dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
        self.dirs.retain(|d| *d != dir);
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in self.dirs.iter().rev() {
            let _ = wait_rmdir(dir);
        }
    }
}

/// A temporary runtime root; removed when dropped.
pub struct FakeRoot(pub PathBuf);

impl FakeRoot {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("tcptrace-wl-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        path
    }

    pub fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.0.join(rel)).unwrap();
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn wait_rmdir(dir: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                eprintln!("warning: rmdir {}: {e}", dir.display());
                return Err(e);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
