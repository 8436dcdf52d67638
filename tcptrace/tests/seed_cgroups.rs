//! The cgroup sock_diag reports for each socket (`INET_DIAG_CGROUP_ID`),
//! on the real kernel, against `ss --cgroup`: a python server creates its
//! listener and accepts connections while in cgroup X, then moves itself to
//! cgroup Y and opens a second listener there. The accepted sockets (left
//! in CLOSE_WAIT by their clients) and the first listener stay X's, whatever
//! the process's cgroup became; the second listener is Y's. So the owner a
//! /proc walk would find (now in Y) is not where the sockets were made.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::{Shutdown, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use common::{cgroups::CgroupTree, wait_for};
use tcptrace::seed::{cgroupfs::Cgroup2Root, sock_diag::dump_tcp};
use tcptrace_core::model::TcpState;

const WAIT: Duration = Duration::from_secs(30);
const LEAKS: usize = 5;

/// A child killed (by pid) and reaped when dropped, even when the test
/// fails half-way: declared after the cgroups, it goes before them.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ss --cgroup`'s cgroup path of every TCP socket on local port `port`,
/// by (state, peer port).
fn ss_cgroups(port: u16) -> BTreeMap<(String, u16), String> {
    let out = Command::new("ss")
        .args(["-Htan", "--cgroup"])
        .output()
        .expect("ss runs (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // State Recv-Q Send-Q Local Peer [cgroup:PATH]
        let (Some(state), Some(local), Some(peer)) = (fields.first(), fields.get(3), fields.get(4))
        else {
            continue;
        };
        if !local.ends_with(&format!(":{port}")) {
            continue;
        }
        let peer_port = peer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if let Some(path) = fields.iter().find_map(|f| f.strip_prefix("cgroup:")) {
            found.insert((state.to_string(), peer_port), path.to_string());
        }
    }
    found
}

#[test]
fn seeded_sockets_carry_the_cgroup_they_were_made_in() {
    let root = Cgroup2Root::discover().expect("a cgroup2 mount");
    let mount = root.mount_point().to_path_buf();
    let base = format!("/tcptrace-seed-{}", std::process::id());
    let (x, y) = (format!("{base}/x.service"), format!("{base}/y.service"));
    let mut tree = CgroupTree::new(&mount);
    let x_id = tree.make(&x);
    let y_id = tree.make(&y);
    assert_ne!(x_id, y_id);
    let procs = |path: &str| {
        mount
            .join(path.trim_start_matches('/'))
            .join("cgroup.procs")
            .to_str()
            .unwrap()
            .to_string()
    };

    let script = format!(
        "import os,socket,sys,time\n\
         open({x:?},'w').write(str(os.getpid()))\n\
         s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(64)\n\
         print(s.getsockname()[1], flush=True)\n\
         held=[s.accept()[0] for _ in range({LEAKS})]\n\
         open({y:?},'w').write(str(os.getpid()))\n\
         s2=socket.socket(); s2.bind(('127.0.0.1',0)); s2.listen(1)\n\
         print(s2.getsockname()[1], flush=True)\n\
         time.sleep(120)\n",
        x = procs(&x),
        y = procs(&y)
    );
    let mut server = Killed(
        Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let pid = server.0.id();
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let port: u16 = lines.next().unwrap().unwrap().parse().unwrap();
    let mut clients = Vec::new();
    for _ in 0..LEAKS {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        clients.push(c);
    }
    let port2: u16 = lines.next().unwrap().unwrap().parse().unwrap();
    let server_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        server_cgroup.lines().any(|l| l == format!("0::{y}")),
        "the process moved on: {server_cgroup}"
    );
    wait_for("the accepted sockets in CLOSE_WAIT", WAIT, || {
        common::ss_count("close-wait", port, None) == LEAKS
    });

    // The oracle: ss names X for the listener and every accepted socket,
    // Y for the second listener.
    let by_ss = ss_cgroups(port);
    let close_wait_paths: Vec<&String> = by_ss
        .iter()
        .filter(|((state, _), _)| state == "CLOSE-WAIT")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(close_wait_paths.len(), LEAKS, "{by_ss:?}");
    assert!(close_wait_paths.iter().all(|p| **p == x), "{by_ss:?}");
    assert_eq!(by_ss.get(&("LISTEN".into(), 0)), Some(&x), "{by_ss:?}");
    assert_eq!(
        ss_cgroups(port2).get(&("LISTEN".into(), 0)),
        Some(&y),
        "ss sees the second listener in Y"
    );

    // Ours, from the same kernel: the id of X (its directory's inode) for
    // every socket ss put in X, whatever the owner's cgroup is now.
    let all = dump_tcp().unwrap();
    let mine: Vec<_> = all.iter().filter(|s| s.sport == port).collect();
    let close_wait: Vec<_> = mine
        .iter()
        .filter(|s| s.state == TcpState::CloseWait)
        .collect();
    assert_eq!(close_wait.len(), LEAKS, "{mine:?}");
    for s in &close_wait {
        assert_eq!(s.cgroup, Some(x_id), "{s:?}");
        assert!(
            by_ss
                .get(&("CLOSE-WAIT".into(), s.dport))
                .is_some_and(|p| *p == x),
            "ss agrees on {s:?}"
        );
    }
    let listener = mine
        .iter()
        .find(|s| s.state == TcpState::Listen)
        .expect("the first listener");
    assert_eq!(listener.cgroup, Some(x_id));
    let second = all
        .iter()
        .find(|s| s.sport == port2 && s.state == TcpState::Listen)
        .expect("the second listener");
    assert_eq!(second.cgroup, Some(y_id));
    // The clients (this test's process, in its own cgroup) are FIN_WAIT2:
    // full sockets or timewait ones, which have no cgroup.
    for c in all.iter().filter(|s| s.dport == port) {
        if c.timer_left_ms.is_some() {
            assert_eq!(c.cgroup, None, "a timewait socket has no cgroup: {c:?}");
        } else {
            assert!(c.cgroup.is_some_and(|id| id != x_id), "{c:?}");
        }
    }

    drop(server);
    drop(clients);
    drop(tree);
}
