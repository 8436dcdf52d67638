//! The services of the stack tests (`--stacks`): `stackleak` (C) and
//! `goleak` (Go) leak connections from one code path and close them on
//! another, so a test can check that exactly the leaked sockets are named
//! by the leaking function. Built once per test binary into a temporary
//! directory, run against a listener that closes every connection at once,
//! and killed by pid when dropped.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::OnceLock,
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The fixtures' sources (`tcptrace/tests/stacks/`).
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/stacks")
        .join(name)
}

/// A directory of this test process for built services.
fn build_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcptrace-stacks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the build directory");
    dir
}

/// C fixture `NAME.c` built with frame pointers and debug info
/// (file:line).
fn build_c(name: &str) -> PathBuf {
    let out = build_dir().join(name);
    let status = Command::new("cc")
        .args([
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-o",
        ])
        .arg(&out)
        .arg(fixture(&format!("{name}.c")))
        .status()
        .expect("cc is needed to build the stack tests' services: run `cargo xtask setup` (apt install gcc)");
    assert!(status.success(), "cc {name}.c failed: {status}");
    out
}

/// `stackleak`, once per test binary.
pub fn build_stackleak() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_c("stackleak")).clone()
}

/// `earlyaccept` (sockets accepted after their peers closed), once per
/// test binary.
pub fn build_earlyaccept() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_c("earlyaccept")).clone()
}

/// `goleak` built with the Go toolchain (its caches in the build
/// directory, no cgo, the installed toolchain only), once per test binary.
pub fn build_goleak() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = build_dir();
        let out = dir.join("goleak");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(fixture("goleak.go"))
            .current_dir(&dir)
            .env("GOCACHE", dir.join("gocache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "0")
            .env("GOFLAGS", "")
            .env("GOTOOLCHAIN", "local")
            .status()
            .unwrap_or_else(|e| {
                panic!("go is needed to build goleak ({e}): run cargo xtask setup (apt install golang-go)")
            });
        assert!(status.success(), "go build goleak.go failed: {status}");
        out
    })
    .clone()
}

/// A listener on 127.0.0.1 that accepts `n` connections and closes each at
/// once (the peer of a leak: the service's ends go to CLOSE_WAIT). Its
/// thread ends after `n` connections, or after 60 s.
pub fn closing_listener(n: usize) -> (u16, JoinHandle<usize>) {
    let (listener, port) = super::free_listener();
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let handle = std::thread::spawn(move || serve_and_close(listener, n));
    (port, handle)
}

fn serve_and_close(listener: TcpListener, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = 0;
    while done < n && Instant::now() < deadline {
        match listener.accept() {
            Ok((s, _)) => {
                drop(s);
                done += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    done
}

/// A running service (`stackleak` or `goleak`): started with its stdin
/// piped, ready once it printed `ready PID` (all its connections made).
/// Dropping it closes stdin and kills it by pid.
pub struct Service {
    child: Child,
    stdin: Option<ChildStdin>,
    pub pid: u32,
}

impl Service {
    pub fn start(bin: &Path, port: u16, leaked: usize, closed: usize) -> Self {
        let mut child = Command::new(bin)
            .args([port.to_string(), leaked.to_string(), closed.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut service = Self {
            pid: child.id(),
            child,
            stdin,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{} did not print `ready` within 30 s", bin.display()));
        let pid = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or_else(|| {
                let status = service.child.try_wait();
                panic!(
                    "{}: unexpected first line {line:?} ({status:?})",
                    bin.display()
                )
            });
        assert_eq!(pid, service.pid, "the service reports its own pid");
        service.pid = pid;
        service
    }

    /// The process's name as the kernel keeps it (`/proc/PID/comm`).
    pub fn comm(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Ends it now (stdin closed, then killed by pid) and reaps it.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}
