//! The full-accept-queue scenario of the listener tests (`listen_drops`,
//! `top_listeners`): in a network namespace the test creates,
//! `slowacceptd` (a real process: Python renamed through /proc/self/comm)
//! listens on 127.0.0.1:8080 with backlog 1 and never accepts, and on
//! 127.0.0.1:8081 with backlog 128 accepting everything; clients connect
//! to both. With the oracles: the namespace's netstat counters and `ss
//! -ltnm`'s per-listener drop count.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use super::NetNs;

/// The listener that never accepts.
pub const SLOW: u16 = 8080;
/// The listener that accepts everything.
pub const FAST: u16 = 8081;

/// The server: 8080 backlog 1 never accepted, 8081 accepted and closed.
/// Runs until its stdin closes.
pub const SERVER: &str = r#"
import socket, sys, threading
open('/proc/self/comm', 'w').write('slowacceptd')
def listener(port, backlog):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', port))
    s.listen(backlog)
    return s
slow = listener(8080, 1)
fast = listener(8081, 128)
def serve():
    while True:
        c, _ = fast.accept()
        c.close()
threading.Thread(target=serve, daemon=True).start()
print('ready', flush=True)
sys.stdin.read()
"#;

/// The clients: `n` (first argument) non-blocking connects to each port,
/// held until stdin closes (their SYNs retransmitted meanwhile).
pub const CLIENT: &str = r#"
import socket, sys
n = int(sys.argv[1])
held = []
for port in (8080, 8081):
    for _ in range(n):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(('127.0.0.1', port))
        except BlockingIOError:
            pass
        held.append(c)
print('connected', flush=True)
sys.stdin.read()
"#;

/// A program a test started: ended (stdin closed, waited for) by
/// [`end`], killed by its pid if the test fails before.
pub struct Started(Option<Child>);

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Python program in `ns`, started and waited for its first line.
pub fn python_in(ns: &NetNs, script: &str, args: &[&str], first: &str) -> Started {
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", script])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (apt-get install python3)");
    let mut started = Started(Some(child));
    let mut line = String::new();
    let out = started.0.as_mut().and_then(|c| c.stdout.as_mut()).unwrap();
    BufReader::new(out).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), first, "the program did not start");
    started
}

/// Closes the program's stdin and waits for it to exit.
pub fn end(mut started: Started) {
    if let Some(mut child) = started.0.take() {
        drop(child.stdin.take());
        child.wait().unwrap();
    }
}

/// TcpExt counter `name` (`ListenOverflows`, `ListenDrops`) of `ns`.
pub fn netstat(ns: &NetNs, name: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "cat", "/proc/net/netstat"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .find_map(|pair| {
            let [head, vals] = pair else { return None };
            head.split_whitespace()
                .zip(vals.split_whitespace())
                .find(|(h, _)| *h == name)
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("{name} not in /proc/net/netstat"))
}

/// `ss -ltnm`'s drop count (`d`) of the listener on `port` in `ns`.
pub fn ss_drops(ns: &NetNs, port: u16) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ss", "-Hltnm", "sport", "="])
        .arg(format!(":{port}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c == ',' || c == ')' || c.is_whitespace())
        .find_map(|f| f.strip_prefix('d')?.parse().ok())
        .unwrap_or(0)
}
