//! `top`'s Listeners view end to end: the real binary in a real terminal
//! (tmux), a listener with backlog 1 that never accepts (`slowacceptd`, a
//! Python process renamed through /proc/self/comm) in a network namespace
//! this test creates, 40 clients connecting to it. After `l` the view must
//! show that listener with its owner, a full accept queue and the drops the
//! kernel counted (`ListenOverflows` delta of the namespace) for the reason
//! `accept_queue_full`; a listener that accepts everything shows none.
//! Root; fails (never skips) when the program cannot load.

mod common;

use std::time::Duration;

use common::{
    NetNs,
    acceptq::{CLIENT, SERVER, end, netstat, python_in, ss_drops},
    tmux::Tmux,
    wait_for,
};

const WAIT: Duration = Duration::from_secs(40);
const CLIENTS: usize = 40;

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
    let before = netstat(&ns, "ListenOverflows");
    let clients = python_in(&ns, CLIENT, &[&CLIENTS.to_string()], "connected");
    wait_for("the kernel to drop SYNs at 8080", WAIT, || {
        ss_drops(&ns, 8080) >= CLIENTS as u64
    });
    end(clients);
    // No client is left: nothing more can be dropped.
    let overflowed = netstat(&ns, "ListenOverflows") - before;
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
