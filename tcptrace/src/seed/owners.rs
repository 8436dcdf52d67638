//! Which process holds which socket, from `/proc/PID/fd`. sock_diag reports a
//! socket's inode but not its owner; sockets that existed before tracing
//! started have no captured owner, so the snapshot recovers it here.

use std::{collections::HashMap, fs, path::Path};

use tcptrace_core::model::{Comm, SeenOwner};

use super::netns::proc_pids;

/// Socket inode -> the process holding it. When several processes hold the
/// same socket (after fork), the lowest pid wins. Processes that vanish or
/// deny access are skipped.
pub fn socket_owners() -> HashMap<u64, SeenOwner> {
    let mut owners = HashMap::new();
    for pid in proc_pids() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut comm = None;
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target.to_str().and_then(socket_inode) else {
                continue;
            };
            // pids ascend, so the first holder found is the lowest pid.
            if owners.contains_key(&inode) {
                continue;
            }
            let comm = *comm.get_or_insert_with(|| read_comm(pid));
            owners.insert(inode, SeenOwner { pid, comm });
        }
    }
    owners
}

/// The inode of an fd link target `socket:[INODE]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn read_comm(pid: u32) -> Comm {
    let path = format!("/proc/{pid}/comm");
    fs::read_to_string(Path::new(&path))
        .map(|s| Comm::from_name(s.trim_end_matches('\n')))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::testutil::Conns;
    use tcptrace_core::model::TcpState;

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("socket:[]"), None);
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[12x]"), None);
    }

    #[test]
    fn own_sockets_are_owned_by_this_process() {
        let conns = Conns::build_v4();
        let snap = crate::seed::snapshot(false).unwrap();
        let me = std::process::id();
        let my_comm = read_comm(me);

        let mine = conns.matching(&snap.sockets);
        for want in [TcpState::Listen, TcpState::Established, TcpState::CloseWait] {
            let socks: Vec<_> = mine.iter().filter(|s| s.state == want).collect();
            assert!(!socks.is_empty(), "no {want} socket in {mine:#?}");
            for s in socks {
                assert_ne!(s.inode, 0, "{s:?}");
                let owner = s.owner.unwrap_or_else(|| panic!("no owner: {s:?}"));
                assert_eq!(owner.pid, me, "{s:?}");
                assert_eq!(owner.comm, my_comm, "{s:?}");
            }
        }
        let tw: Vec<_> = mine
            .iter()
            .filter(|s| s.state == TcpState::TimeWait)
            .collect();
        assert_eq!(tw.len(), 1, "{mine:#?}");
        assert_eq!(tw[0].inode, 0);
        assert_eq!(tw[0].owner, None);
    }

    #[test]
    fn owner_map_covers_a_fresh_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let owners = socket_owners();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let link = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let inode = socket_inode(link.to_str().unwrap()).unwrap();
        assert_eq!(owners.get(&inode).map(|o| o.pid), Some(std::process::id()));
    }
}
