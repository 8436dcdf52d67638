//! Network namespaces: finding every one on the host and running code inside
//! one. sock_diag only reports the namespace its netlink socket was created
//! in, so a host-wide snapshot has to visit each namespace in turn; doing that
//! on a throwaway thread keeps the caller's own namespace untouched.

use std::{
    collections::HashSet,
    fs::{self, File},
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// One path per distinct network namespace: `/proc/self/ns/net` first, then
/// the named namespaces in `/run/netns` (as `ip netns` creates them), then
/// `/proc/PID/ns/net` of every process. Duplicates (by namespace inode) keep
/// their first path. Paths that cannot be read are skipped.
pub fn namespaces() -> Vec<PathBuf> {
    let mut candidates = vec![PathBuf::from("/proc/self/ns/net")];
    candidates.extend(sorted_dir(Path::new("/run/netns")));
    candidates.extend(
        proc_pids()
            .into_iter()
            .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net"))),
    );
    dedupe_by_inode(candidates)
}

/// Runs `f` on a fresh thread that has joined the network namespace at `path`
/// (`setns(CLONE_NEWNET)`). The calling thread's namespace never changes.
/// A panic in `f` is resumed on the caller.
pub fn in_namespace<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .with_context(|| {
            format!(
                "opening network namespace {}: run as root or pick an existing namespace",
                path.display()
            )
        })?;
    let shown = path.display().to_string();
    let handle = std::thread::Builder::new()
        .name("tcptrace-netns".into())
        .spawn(move || -> Result<T> {
            // SAFETY: `file` is an open descriptor owned by this closure for the
            // duration of the call; setns only affects the current thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                return Err(anyhow::Error::new(err).context(format!(
                    "entering network namespace {shown}: run as root (CAP_SYS_ADMIN)"
                )));
            }
            drop(file);
            Ok(f())
        })
        .context(
            "spawning a thread to enter a network namespace: raise the process/thread limit",
        )?;
    match handle.join() {
        Ok(res) => res,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Inode of the network namespace `path` refers to (stat follows the link).
pub fn namespace_inode(path: &Path) -> Result<u64> {
    let md = fs::metadata(path).with_context(|| {
        format!(
            "reading network namespace {}: is /proc mounted?",
            path.display()
        )
    })?;
    Ok(md.ino())
}

fn dedupe_by_inode(candidates: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .filter(|p| namespace_inode(p).is_ok_and(|ino| seen.insert(ino)))
        .collect()
}

/// Entries of `dir`, sorted by name; empty when it does not exist.
fn sorted_dir(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    out
}

/// Numeric entries of /proc (processes), ascending.
pub(crate) fn proc_pids() -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{net::TcpListener, process::Command};
    use tcptrace_core::model::TcpState;

    /// A named namespace (`ip netns add`), deleted on drop.
    struct TestNetns {
        name: String,
    }

    impl TestNetns {
        fn create() -> Self {
            let name = format!("tcptrace-seed-test-{}", std::process::id());
            // A leftover from an earlier crashed run would make `add` fail.
            let _ = Command::new("ip").args(["netns", "delete", &name]).output();
            let out = Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .expect("run ip netns add");
            assert!(out.status.success(), "ip netns add: {out:?}");
            let guard = Self { name };
            let out = Command::new("ip")
                .args(["-n", &guard.name, "link", "set", "lo", "up"])
                .output()
                .expect("run ip link set lo up");
            assert!(out.status.success(), "ip link set lo up: {out:?}");
            guard
        }

        fn path(&self) -> PathBuf {
            PathBuf::from(format!("/run/netns/{}", self.name))
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.name])
                .output();
        }
    }

    fn thread_netns() -> u64 {
        namespace_inode(Path::new("/proc/thread-self/ns/net")).unwrap()
    }

    #[test]
    fn namespaces_start_with_own_and_are_distinct() {
        let all = namespaces();
        assert_eq!(all[0], PathBuf::from("/proc/self/ns/net"));
        let inodes: Vec<u64> = all.iter().map(|p| namespace_inode(p).unwrap()).collect();
        let distinct: HashSet<u64> = inodes.iter().copied().collect();
        assert_eq!(distinct.len(), inodes.len(), "{all:?}");
    }

    #[test]
    fn in_namespace_of_missing_path_is_an_error() {
        let err = in_namespace(Path::new("/nonexistent/ns/net"), || ()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ns/net"), "{err}");
    }

    #[test]
    fn snapshot_all_namespaces_sees_a_listener_in_a_named_namespace() {
        let ns = TestNetns::create();
        let path = ns.path();
        let ns_ino = namespace_inode(&path).unwrap();
        let own_before = thread_netns();
        assert_ne!(ns_ino, own_before);

        assert!(
            namespaces()
                .iter()
                .any(|p| namespace_inode(p).is_ok_and(|i| i == ns_ino)),
            "namespaces() misses {}",
            path.display()
        );

        let (listener, inside) = in_namespace(&path, || {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind in test namespace");
            (l, thread_netns())
        })
        .unwrap();
        assert_eq!(inside, ns_ino, "closure ran in the target namespace");
        assert_eq!(thread_netns(), own_before, "caller's namespace unchanged");
        let port = listener.local_addr().unwrap().port();

        let all = crate::seed::snapshot(true).unwrap();
        let found: Vec<_> = all
            .sockets
            .iter()
            .filter(|s| s.state == TcpState::Listen && s.sport == port)
            .filter(|s| s.netns == Some(ns_ino as u32))
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].owner.map(|o| o.pid),
            Some(std::process::id()),
            "{found:?}"
        );

        let own = crate::seed::snapshot(false).unwrap();
        assert!(
            own.sockets.iter().all(|s| s.netns != Some(ns_ino as u32)),
            "snapshot(false) must stay in the current namespace"
        );
        drop(listener);
    }
}
