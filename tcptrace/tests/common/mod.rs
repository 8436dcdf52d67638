//! Shared helpers for the real-kernel tests: load the tracer (panicking with
//! what the kernel said when it can't: these tests must fail, never skip),
//! collect events, make ports and network namespaces.
#![allow(dead_code)]

pub mod acceptq;
pub mod cgroups;
pub mod stacks;
pub mod tmux;

use std::{
    io::Read,
    net::{Shutdown, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use tcptrace::ebpf::{LoadOptions, Tracer};
use tcptrace_common::Filter;
use tcptrace_core::{
    decode,
    model::{Event, EventKind, TcpState},
};

/// These tests load eBPF (directly, or through the binary) and change
/// network namespaces: as another user than root, the whole test binary
/// fails at once with one line, before any test runs. The pure tests (the
/// core crate's, and the binary's scripted-source tests) run as anyone.
#[ctor::ctor(unsafe)]
fn kernel_tests_need_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "error: the kernel tests load eBPF and need root: run `cargo xtask test` (it uses sudo), or `cargo test -p tcptrace-core` for the pure tests"
        );
        std::process::exit(1);
    }
}

/// Loads the tracer filtered to `ports` (either side).
/// A filter keeping events with a local or remote port in `ports`.
pub fn filter_for_ports(ports: &[u16]) -> Filter {
    let mut filter = Filter::default();
    filter.ports[..ports.len()].copy_from_slice(ports);
    filter.n_ports = ports.len() as u32;
    filter
}

pub fn tracer_for_ports(ports: &[u16]) -> Tracer {
    tracer_with(LoadOptions {
        filter: filter_for_ports(ports),
        ring_bytes: 16 << 20,
        ..LoadOptions::default()
    })
}

pub fn tracer_with(opts: LoadOptions) -> Tracer {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("the kernel tests load eBPF and must run as root: use `cargo xtask test`");
    }
    match Tracer::load(&opts) {
        Ok(t) => t,
        Err(e) => panic!("the kernel refused to load tcptrace's eBPF program: {e:#}"),
    }
}

/// Drains and decodes every socket event waiting (drop records, which are
/// no socket's event, are left out: `kernel_drops.rs` reads them).
pub fn poll(tracer: &mut Tracer, into: &mut Vec<Event>) {
    tracer.drain(|bytes| match decode::decode(bytes) {
        Err(decode::DecodeError::DropKind(tcptrace_core::model::EventKind::Drop)) => {}
        other => into.push(other.expect("kernel events decode")),
    });
}

/// Polls until `done(events)` or the timeout; returns whether `done` held.
pub fn collect_until(
    tracer: &mut Tracer,
    events: &mut Vec<Event>,
    timeout: Duration,
    done: impl Fn(&[Event]) -> bool,
) -> bool {
    let end = Instant::now() + timeout;
    loop {
        poll(tracer, events);
        if done(events) {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A port nobody is using right now, chosen below the ephemeral range
/// (32768-60999 by default) so that client connections of tests running in
/// parallel can never take it between this check and the test's own bind.
pub fn free_port(v6: bool) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const LO: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let start = (std::process::id() % 1_000) as u16 * 11;
    let addr = if v6 { "::1" } else { "127.0.0.1" };
    for _ in 0..1_000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = LO + start.wrapping_add(n.wrapping_mul(7)) % SPAN;
        if TcpListener::bind((addr, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LO} and {}", LO + SPAN);
}

/// A listener on 127.0.0.1 bound to a port below the ephemeral range, and
/// its port: nothing can take the port between choosing and binding it.
pub fn free_listener() -> (TcpListener, u16) {
    for _ in 0..100 {
        let port = free_port(false);
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return (l, port);
        }
    }
    panic!("no free port for a listener");
}

/// (old, new) of the transitions of socket `sk`, in order.
pub fn path_of(events: &[Event], sk: u64) -> Vec<(TcpState, TcpState)> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Transition && e.sk == sk)
        .map(|e| (e.old.expect("transitions have an old state"), e.new))
        .collect()
}

/// The socket that went `old -> new` with local port `lport`.
pub fn sk_with(events: &[Event], lport: u16, old: TcpState, new: TcpState) -> Option<u64> {
    events
        .iter()
        .find(|e| {
            e.kind == EventKind::Transition
                && e.sport == lport
                && e.old == Some(old)
                && e.new == new
        })
        .map(|e| e.sk)
}

pub fn has(events: &[Event], kind: EventKind, sk: u64) -> bool {
    events.iter().any(|e| e.kind == kind && e.sk == sk)
}

/// A network namespace created for one test (and deleted on drop).
pub struct NetNs {
    pub name: String,
    deleted: bool,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = format!("tcptrace-test-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Self {
            name,
            deleted: false,
        }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The namespace's inode number, as the kernel reports it.
    pub fn inode(&self) -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.path()).expect("netns file").ino() as u32
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }

    /// `sysctl -w` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ],
        );
    }

    pub fn delete(&mut self) {
        if !self.deleted {
            run("ip", &["netns", "del", &self.name]);
            self.deleted = true;
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

pub fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd} not runnable ({e}): install iproute2"));
    assert!(status.success(), "{cmd} {args:?} failed: {status}");
}

/// `ss -Htan state STATE` lines with port `port` on either side.
pub fn ss_count(state: &str, port: u16, netns: Option<&str>) -> usize {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "ss"]);
            c
        }
        None => Command::new("ss"),
    };
    let out = cmd
        .args(["-Htan", "state", state])
        .output()
        .expect("ss runs (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let p = format!(":{port}");
    text.lines()
        .filter(|l| l.split_whitespace().any(|f| f.ends_with(&p)))
        .count()
}

/// A `tcptrace` process started by a test: stderr's first line (the banner)
/// already read, stdout drained on a thread so the child never blocks on a
/// full pipe.
pub struct Running {
    pub child: std::process::Child,
    pub err: std::io::BufReader<std::process::ChildStderr>,
    out: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    pub fn start(args: &[&str], banner: &str) -> Self {
        use std::io::{BufRead, Read};
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run tcptrace");
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains(banner), "unexpected first line: {line}");
        let mut stdout = child.stdout.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut out = String::new();
            stdout.read_to_string(&mut out).unwrap();
            out
        });
        Self {
            child,
            err,
            out: Some(out),
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Ctrl-C, then its exit status, all of stdout and the rest of stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String, String) {
        self.signal(libc::SIGINT);
        let status = self.child.wait().unwrap();
        let (out, err) = self.finish();
        (status, out, err)
    }

    /// All of stdout and the rest of stderr (call once the child exited).
    pub fn finish(&mut self) -> (String, String) {
        use std::io::Read;
        let out = self.out.take().unwrap().join().unwrap();
        let mut rest = String::new();
        self.err.read_to_string(&mut rest).unwrap();
        (out, rest)
    }
}

/// A test that panics before `stop` must not leave its tracer running.
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Opens `n` connections to `listener` and closes the client side: the
/// accepted sockets (kept in `held`) sit in CLOSE_WAIT.
pub fn leak_close_wait(listener: &TcpListener, port: u16, n: usize, held: &mut Vec<TcpStream>) {
    for _ in 0..n {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = listener.accept().unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        held.push(s);
        // Keep the client open (FIN_WAIT2 full socket, not an orphan).
        std::mem::forget(c);
    }
}

/// `n` connections to `listener` whose client closes first: each client
/// socket becomes an orphan, then a timewait socket in FIN_WAIT2, while the
/// server's end (returned, with the clients' ports) stays in CLOSE_WAIT.
/// Dropping a server end moves its orphan to TIME_WAIT, usually without a
/// timer tracepoint (the re-arm stays in its timer-wheel bucket).
pub fn orphans(listener: &TcpListener, port: u16, n: usize) -> (Vec<TcpStream>, Vec<u16>) {
    let mut servers = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = listener.accept().unwrap();
        ports.push(c.local_addr().unwrap().port());
        drop(c);
        servers.push(s);
    }
    (servers, ports)
}

/// `n` client-side TIME_WAIT sockets to `port`: the client shuts down
/// first, the server closes on EOF (the client socket stays open, so it goes
/// straight to TIME_WAIT, not through an orphan's FIN_WAIT2).
pub fn pile_time_wait(listener: TcpListener, port: u16, n: usize) {
    let server = std::thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1];
            while s.read(&mut buf).unwrap() > 0 {}
        }
    });
    for _ in 0..n {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut buf = [0u8; 1];
        while c.read(&mut buf).unwrap() > 0 {}
    }
    server.join().unwrap();
}

/// A connection to 127.0.0.1:port from the source address `from` (another
/// loopback address: a client that is not the one misbehaving).
pub fn connect_from(from: std::net::Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&std::net::SocketAddr::from((from, 0)).into())?;
    s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    Ok(s.into())
}

/// One client-closes-first connection from `from` to `to` whose local port
/// connect() picks for that destination (`IP_BIND_ADDRESS_NO_PORT`: the
/// source address is set, the port is not reserved by bind()), served by
/// `listener`: the client ends in TIME_WAIT. Err: the connect's error
/// (EADDRNOTAVAIL when no port is free).
pub fn time_wait_from(
    from: std::net::Ipv4Addr,
    to: std::net::SocketAddrV4,
    listener: &TcpListener,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket, an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_BIND_ADDRESS_NO_PORT");
    s.bind(&std::net::SocketAddr::from((from, 0)).into())?;
    s.connect(&std::net::SocketAddr::V4(to).into())?;
    let mut c: TcpStream = s.into();
    let (mut served, _) = listener.accept()?;
    c.shutdown(Shutdown::Write)?;
    let mut buf = [0u8; 1];
    while served.read(&mut buf)? > 0 {}
    drop(served);
    while c.read(&mut buf)? > 0 {}
    Ok(())
}

/// `GET /metrics` on 127.0.0.1:port from source address `from`: the status
/// line and the body.
pub fn scrape_from(from: std::net::Ipv4Addr, port: u16) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = connect_from(from, port)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// `GET path` on 127.0.0.1:port: (status line, headers, body).
pub fn http_get(port: u16, path: &str) -> (String, String, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the metrics port answers");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// Sends raw bytes on a new connection to 127.0.0.1:port and returns what
/// came back before the server closed or `wait` passed.
pub fn raw_exchange(port: u16, request: &[u8], wait: Duration) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the port answers");
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// The value of the series `series` (name and labels exactly), if present.
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok())?
    })
}

/// A `tcptrace` process whose stdout and stderr lines arrive on channels as
/// they are written, for tests that wait for a line rather than for exit.
pub struct Streaming {
    pub child: std::process::Child,
    pub out: std::sync::mpsc::Receiver<String>,
    pub err: std::sync::mpsc::Receiver<String>,
}

impl Streaming {
    pub fn start(args: &[&str]) -> Self {
        Self::start_program(env!("CARGO_BIN_EXE_tcptrace"), args)
    }

    /// `program args` (e.g. `prlimit ... tcptrace ...`).
    pub fn start_program(program: &str, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run tcptrace");
        let lines = |r: Box<dyn Read + Send>| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(r).split(b'\n') {
                    let Ok(line) = line else { break };
                    // Bytes kept as they came (a raw escape byte must show).
                    if tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().unwrap()));
        let err = lines(Box::new(child.stderr.take().unwrap()));
        Self { child, out, err }
    }

    /// Waits for a line of `rx` matching `ok`; every line seen so far is
    /// appended to `seen`. Panics with them on timeout.
    pub fn wait_line(
        rx: &std::sync::mpsc::Receiver<String>,
        seen: &mut Vec<String>,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if ok(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("timed out waiting for {what}; lines so far: {seen:#?}"),
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the exit (killing it after `timeout`), then returns its
    /// status and the remaining lines of stdout and stderr.
    pub fn wait(
        mut self,
        timeout: Duration,
    ) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tcptrace did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let drain = |rx: &std::sync::mpsc::Receiver<String>| {
            let mut v = Vec::new();
            while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
                v.push(l);
            }
            v
        };
        (status, drain(&self.out), drain(&self.err))
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Pids of live (not zombie) processes whose arguments are exactly `argv`.
pub fn processes_with(argv: &[&str]) -> Vec<u32> {
    let mut want = argv.join("\0");
    want.push('\0');
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes())
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .collect()
}

/// Polls `ok` every 20 ms until it holds, or panics naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real nginx (Debian's `nginx-light`, installed by `cargo xtask setup`)
/// in a network namespace, serving `GET /` on 127.0.0.1:`port` with
/// `keepalive_timeout 0`: it closes every connection first, like an
/// upstream behind a proxy without keep-alive. The master runs in the
/// foreground as this test's child and is stopped by its pid.
pub struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
    pub port: u16,
}

impl Nginx {
    pub fn start(ns: &NetNs, port: u16) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tcptrace-nginx-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\n\
                 daemon off;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/logs/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n\
                   access_log off;\n\
                   keepalive_timeout 0;\n\
                   client_body_temp_path {d}/body;\n\
                   server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }}\n\
                 }}\n"
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "nginx", "-p"])
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect(
                "nginx is needed for this test: run `cargo xtask setup` (apt install nginx-light)",
            );
        let nginx = Self { child, dir, port };
        // Listening, seen in the namespace's socket table (a probing
        // connection would leave a TIME_WAIT of its own).
        let want = format!("0100007F:{port:04X} 00000000:0000 0A");
        wait_for("nginx listening", Duration::from_secs(10), || {
            ns.run(|| std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default())
                .contains(&want)
        });
        nginx
    }

    /// `n` requests, one connection each; nginx closes every one first.
    pub fn requests(&self, ns: &NetNs, n: usize) {
        let port = self.port;
        ns.run(move || {
            use std::io::Write;
            for _ in 0..n {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                    .unwrap();
                let mut reply = String::new();
                c.read_to_string(&mut reply).unwrap();
                assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            }
        });
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: signalling our own child (the nginx master) by pid; it
        // stops its workers.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
