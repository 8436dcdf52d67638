//! `top`'s Listeners view end to end: the real binary in a real terminal
//! (tmux), a listener with backlog 1 that never accepts (`slowacceptd`, a
//! Python process renamed through /proc/self/comm) in a network namespace
//! this test creates, 40 clients connecting to it. After `l` the view must
//! show that listener with its owner, a full accept queue and the drops the
//! kernel counted (`ListenOverflows` delta of the namespace) for the reason
//! `accept_queue_full`; a listener that accepts everything shows none.
//! Root; fails (never skips) when the program cannot load.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{NetNs, tmux::Tmux, wait_for};

const WAIT: Duration = Duration::from_secs(40);
const CLIENTS: usize = 40;

/// 8080: backlog 1, never accepted; 8081: backlog 128, accepted and
/// closed. Runs until its stdin closes.
const SERVER: &str = r#"
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

/// `n` non-blocking connects to each port, held until stdin closes.
const CLIENT: &str = r#"
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

fn python_in(ns: &NetNs, script: &str, args: &[&str], first: &str) -> Started {
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

/// A program this test started: ended (stdin closed, waited for) by
/// [`end`], killed by its pid if the test fails before.
struct Started(Option<Child>);

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn end(mut started: Started) {
    if let Some(mut child) = started.0.take() {
        drop(child.stdin.take());
        child.wait().unwrap();
    }
}

/// TcpExt `ListenOverflows` of `ns`.
fn listen_overflows(ns: &NetNs) -> u64 {
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
                .find(|(h, _)| *h == "ListenOverflows")
                .and_then(|(_, v)| v.parse().ok())
        })
        .expect("ListenOverflows")
}

/// `ss -ltnm`'s drop count of the listener on `port` in `ns`.
fn ss_drops(ns: &NetNs, port: u16) -> u64 {
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

/// The screen line of a listener.
fn row<'a>(screen: &'a str, listener: &str) -> Option<&'a str> {
    screen
        .lines()
        .find(|l| l.split_whitespace().next() == Some(listener))
}

/// A row's accept queue ("2/1") and TOTAL column: the token with a `/`,
/// then the bar, the rate, the total.
fn queue_and_total(line: &str) -> Option<(&str, u64)> {
    let t: Vec<&str> = line.split_whitespace().collect();
    let q = t.iter().position(|w| {
        w.split_once('/')
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
    })?;
    Some((t[q], t.get(q + 3)?.parse().ok()?))
}

#[test]
fn top_listeners_view_shows_a_full_accept_queue_dropping_syns() {
    let ns = NetNs::new("toplisten");
    let server = python_in(&ns, SERVER, &[], "ready");
    let bin = env!("CARGO_BIN_EXE_tcptrace");
    let cmd = format!(
        "sh -c '{bin} top --interval 0.5 --netns {}; sleep 600'",
        ns.name
    );
    // 160 columns: the namespace, reasons and workload columns all shown.
    let tmux = Tmux::start("listeners", 160, 30, &cmd);
    tmux.wait_for("the first refresh", |s| s.contains(" up "));
    tmux.keys(&["l"]);
    tmux.wait_for("both listeners, sampled", |s| {
        s.contains("Listeners (")
            && row(s, "127.0.0.1:8080").is_some_and(|l| l.contains("slowacceptd"))
            && row(s, "127.0.0.1:8081").is_some()
    });
    let before = listen_overflows(&ns);
    let clients = python_in(&ns, CLIENT, &[&CLIENTS.to_string()], "connected");
    wait_for("the kernel to drop SYNs at 8080", WAIT, || {
        ss_drops(&ns, 8080) >= CLIENTS as u64
    });
    end(clients);
    // No client is left: nothing more can be dropped.
    let overflowed = listen_overflows(&ns) - before;
    assert!(overflowed >= CLIENTS as u64, "only {overflowed} overflows");
    let screen = tmux.wait_for(&format!("8080 with {overflowed} drops"), |s| {
        row(s, "127.0.0.1:8080")
            .and_then(queue_and_total)
            .is_some_and(|(_, total)| total == overflowed)
    });
    let slow = row(&screen, "127.0.0.1:8080").unwrap();
    let (queue, _) = queue_and_total(slow).unwrap();
    // Backlog 1 holds 2 (the kernel's check is `>`): depth 2, limit 1.
    assert_eq!(queue, "2/1", "{screen}");
    assert!(
        slow.contains("slowacceptd") && slow.contains("accept_queue_full"),
        "{screen}"
    );
    let ns_inode = ns.inode().to_string();
    assert!(slow.contains(&ns_inode), "{screen}");
    // The listener that accepts drops nothing; the dropping one is first.
    let fast = row(&screen, "127.0.0.1:8081").unwrap();
    assert_eq!(queue_and_total(fast).map(|q| q.1), Some(0), "{screen}");
    let first = screen
        .lines()
        .skip_while(|l| !l.starts_with("LISTENER"))
        .nth(1)
        .unwrap_or_default();
    assert!(first.starts_with("127.0.0.1:8080"), "{screen}");
    // The summary names the selected listener's reason in words.
    assert!(screen.contains("dropped: accept queue full"), "{screen}");
    tmux.keys(&["q"]);
    end(server);
}
