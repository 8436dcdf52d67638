//! Samples every listening socket, about once a second, for the per-listener
//! view of dropped connection attempts (`tcptrace_core::listeners`). A SYN
//! dropped because the accept queue is full leaves no trace event at all
//! (the kernel consumes it without `skb:kfree_skb`); what witnesses it is the
//! listener's own drop count (`SK_MEMINFO_DROPS`, which `tcp_listendrop()`
//! bumps) and its namespace's `/proc/net/netstat` counters. Both are read
//! here, with the accept queue's depth and limit, into one
//! `Record::Listeners`.
//!
//! It must stay cheap at 1 Hz on hosts with many namespaces, so nothing is
//! reopened per sample:
//! - one `NETLINK_SOCK_DIAG` socket per network namespace, opened inside it
//!   once (a netlink socket answers for the namespace it was created in,
//!   whichever thread uses it), asking for LISTEN sockets only
//!   (`1 << TCP_LISTEN`) of both families with `INET_DIAG_SKMEMINFO`;
//! - the namespace's `/proc/thread-self/net/netstat`, opened inside it once
//!   and re-read with `pread` at offset 0 (a proc net file keeps reading the
//!   namespace it was opened in). Producing it is most of a sample's cost
//!   (about 100 µs of kernel time per namespace here), so it is re-read only
//!   when the namespace's listeners changed (a drop count moved, one came
//!   or went) or [`NETSTAT_EVERY_NS`] passed; otherwise the last counters
//!   are repeated. Every listener drop delta thus comes with fresh counters;
//!   counters of quiet namespaces lag by up to that interval;
//! - namespaces re-listed ([`super::namespaces`]) at most every
//!   [`RELIST_EVERY_NS`]: new ones are opened, ones no longer listed are
//!   closed (which also lets a deleted namespace be freed: the open socket
//!   and file hold it);
//! - owners from an inode -> owner cache; `/proc` is scanned
//!   ([`super::socket_owners`]) only when a listener inode the cache does not
//!   know appears, and at most every [`OWNER_SCAN_EVERY_NS`]. A listener
//!   whose owner was not found stays ownerless until its inode changes.
//!
//! Bounded: at most [`MAX_LISTENERS`] listeners per sample and
//! [`MAX_NAMESPACES`] namespaces (the first ones listed: our own first). A
//! namespace the cap leaves out of a sample is absent from its counters too,
//! so the listener table leaves its listeners alone; listeners cut from a
//! namespace that was sampled look closed (a warning says so, once).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::FileExt,
    path::Path,
};

use anyhow::{Context, Result};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6};
use tcptrace_core::{
    listeners::{DropCounters, ListenerSample, NetnsDropCounters},
    model::SeenOwner,
    record::Record,
};

use super::{
    netns::namespace_inode,
    sock_diag::{DiagSocket, current_netns},
};

/// Listeners kept per sample, and namespaces sampled: what the listener
/// table and recordings take.
pub use tcptrace_core::listeners::{MAX_LISTENERS, MAX_NAMESPACES};
/// How often namespaces are re-listed, at most (10 s).
pub const RELIST_EVERY_NS: u64 = 10_000_000_000;
/// How often `/proc` is scanned for owners, at most (5 s).
pub const OWNER_SCAN_EVERY_NS: u64 = 5_000_000_000;

/// How long a quiet namespace's counters are repeated, at most (10 s).
pub const NETSTAT_EVERY_NS: u64 = 10_000_000_000;

/// The netstat file, relative to the thread that opens it.
const NETSTAT: &str = "/proc/thread-self/net/netstat";
/// The most of a netstat file read (it is about 5 KiB).
const NETSTAT_MAX: usize = 256 * 1024;

/// One sampled namespace: its sock_diag socket and netstat file.
struct Namespace {
    netns: u32,
    diag: DiagSocket,
    /// `None` when it could not be opened (the counters are then unknown).
    netstat: Option<File>,
    /// The last counters read, when, and the listeners' fingerprint then.
    last: Option<(u64, u64, DropCounters)>,
}

/// What changes when a namespace's listeners drop, come or go.
fn fingerprint(listeners: &[ListenerSample]) -> u64 {
    listeners.iter().fold(listeners.len() as u64, |h, l| {
        h.wrapping_mul(31)
            .wrapping_add(l.inode)
            .wrapping_add(l.drops.unwrap_or(0).wrapping_mul(0x9e37_79b9))
    })
}

impl Namespace {
    /// Opens both in the calling thread's namespace.
    fn open_here() -> Result<Self> {
        let diag = DiagSocket::open()?;
        let netstat = File::open(NETSTAT)
            .map_err(|e| log::debug!("opening {NETSTAT}: {e}"))
            .ok();
        Ok(Self {
            netns: diag.netns(),
            diag,
            netstat,
            last: None,
        })
    }

    /// Its listeners into `out` (at most `max` in all); how many were left
    /// out. On error `out` is as it was.
    fn dump(&mut self, max: usize, out: &mut Vec<ListenerSample>) -> Result<usize> {
        let before = out.len();
        let mut left_out = 0;
        for family in [AF_INET, AF_INET6] {
            match self.diag.dump_listeners(family, max, out) {
                Ok(n) => left_out += n,
                Err(e) => {
                    out.truncate(before);
                    return Err(e);
                }
            }
        }
        Ok(left_out)
    }

    /// Its drop counters at `now`: read again when its listeners
    /// (`fingerprint`) changed or [`NETSTAT_EVERY_NS`] passed, else the
    /// last ones; whether it was read.
    fn counters_at(
        &mut self,
        now: u64,
        fingerprint: u64,
        buf: &mut Vec<u8>,
    ) -> (DropCounters, bool) {
        if let Some((at, fp, c)) = self.last
            && fp == fingerprint
            && now.saturating_sub(at) < NETSTAT_EVERY_NS
        {
            return (c, false);
        }
        let c = self.counters(buf);
        self.last = Some((now, fingerprint, c));
        (c, true)
    }

    /// Its drop counters, read again from offset 0 (all unknown when the
    /// file cannot be read).
    fn counters(&self, buf: &mut Vec<u8>) -> DropCounters {
        let Some(file) = &self.netstat else {
            return DropCounters::default();
        };
        match read_from_start(file, buf) {
            Ok(()) => DropCounters::from_netstat(&String::from_utf8_lossy(buf)),
            Err(e) => {
                log::debug!("reading netstat of namespace {}: {e}", self.netns);
                DropCounters::default()
            }
        }
    }
}

/// The whole of `file` from offset 0 into `buf` (`pread`: a seq file
/// restarts when asked for offset 0), at most [`NETSTAT_MAX`] bytes.
fn read_from_start(file: &File, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match file.read_at(&mut chunk, buf.len() as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 || buf.len() + n > NETSTAT_MAX {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The listener sampler: see the module docs.
pub struct ListenerSampler {
    all_namespaces: bool,
    /// Sampled namespaces, in listing order (our own first).
    namespaces: Vec<Namespace>,
    listed_at_ns: Option<u64>,
    /// Socket inode -> its owner (`None`: looked for, not found).
    owners: HashMap<u64, Option<SeenOwner>>,
    owners_scanned_at_ns: Option<u64>,
    netstat_buf: Vec<u8>,
    max_listeners: usize,
    max_namespaces: usize,
    /// Listeners left out of samples by the cap, in all.
    left_out: u64,
    /// /proc scans for owners so far.
    owner_scans: u64,
    /// netstat files read so far.
    netstat_reads: u64,
    warned_listeners: bool,
    warned_namespaces: bool,
}

impl ListenerSampler {
    /// A sampler of every network namespace (`all_namespaces`) or of the
    /// one the thread that first calls [`Self::sample`] is in. Opens
    /// nothing yet.
    pub fn new(all_namespaces: bool) -> Self {
        Self {
            all_namespaces,
            namespaces: Vec::new(),
            listed_at_ns: None,
            owners: HashMap::new(),
            owners_scanned_at_ns: None,
            netstat_buf: Vec::with_capacity(8192),
            max_listeners: MAX_LISTENERS,
            max_namespaces: MAX_NAMESPACES,
            left_out: 0,
            owner_scans: 0,
            netstat_reads: 0,
            warned_listeners: false,
            warned_namespaces: false,
        }
    }

    /// Inodes of the namespaces sampled now.
    pub fn namespaces(&self) -> Vec<u32> {
        self.namespaces.iter().map(|n| n.netns).collect()
    }

    /// Listeners the [`MAX_LISTENERS`] cap left out of samples, in all.
    pub fn left_out(&self) -> u64 {
        self.left_out
    }

    /// How many times `/proc` was scanned for owners.
    pub fn owner_scans(&self) -> u64 {
        self.owner_scans
    }

    /// How many times a namespace's netstat was read.
    pub fn netstat_reads(&self) -> u64 {
        self.netstat_reads
    }

    /// One sample at `now_mono_ns` (CLOCK_MONOTONIC, also what decides
    /// when namespaces are re-listed and owners looked for): a
    /// `Record::Listeners` with the listeners and the drop counters of every
    /// namespace sampled. A namespace whose dump fails is left out (and
    /// closed, to be opened again at the next listing); a failure in our
    /// own namespace is an error.
    pub fn sample(&mut self, now_mono_ns: u64) -> Result<Record> {
        if self
            .listed_at_ns
            .is_none_or(|t| now_mono_ns.saturating_sub(t) >= RELIST_EVERY_NS)
        {
            self.relist()?;
            self.listed_at_ns = Some(now_mono_ns);
        }
        let mut listeners = Vec::new();
        let mut counters = Vec::with_capacity(self.namespaces.len());
        let mut failed = Vec::new();
        let mut left_out = 0u64;
        let mut cut = false;
        for (i, ns) in self.namespaces.iter_mut().enumerate() {
            if listeners.len() >= self.max_listeners {
                // Not sampled at all: its listeners are left alone.
                cut = true;
                continue;
            }
            let start = listeners.len();
            match ns.dump(self.max_listeners, &mut listeners) {
                Ok(n) => left_out += n as u64,
                Err(e) if i == 0 => {
                    return Err(e).context(format!(
                        "sampling the listeners of network namespace {}",
                        ns.netns
                    ));
                }
                Err(e) => {
                    log::debug!("sampling listeners of namespace {}: {e:#}", ns.netns);
                    failed.push(i);
                    continue;
                }
            }
            let fp = fingerprint(&listeners[start..]);
            let (c, read) = ns.counters_at(now_mono_ns, fp, &mut self.netstat_buf);
            self.netstat_reads += u64::from(read);
            counters.push(NetnsDropCounters {
                netns: ns.netns,
                counters: c,
            });
        }
        for i in failed.into_iter().rev() {
            self.namespaces.remove(i);
        }
        self.left_out = self.left_out.saturating_add(left_out);
        if (left_out > 0 || cut) && !self.warned_listeners {
            self.warned_listeners = true;
            log::warn!(
                "more than {} listening sockets: the rest are not sampled (they may look closed)",
                self.max_listeners
            );
        }
        self.fill_owners(now_mono_ns, &mut listeners);
        Ok(Record::Listeners {
            ts_ns: now_mono_ns,
            listeners,
            counters,
        })
    }

    /// Owners from the cache, after a `/proc` scan if an inode it does not
    /// know is there and the last scan is old enough. Inodes no longer
    /// listening leave the cache.
    fn fill_owners(&mut self, now_mono_ns: u64, listeners: &mut [ListenerSample]) {
        let unknown = listeners
            .iter()
            .any(|l| l.inode != 0 && !self.owners.contains_key(&l.inode));
        let due = self
            .owners_scanned_at_ns
            .is_none_or(|t| now_mono_ns.saturating_sub(t) >= OWNER_SCAN_EVERY_NS);
        if unknown && due {
            let found = super::socket_owners();
            self.owner_scans += 1;
            self.owners_scanned_at_ns = Some(now_mono_ns);
            for l in listeners.iter().filter(|l| l.inode != 0) {
                self.owners.insert(l.inode, found.get(&l.inode).copied());
            }
        }
        let live: HashSet<u64> = listeners.iter().map(|l| l.inode).collect();
        self.owners.retain(|inode, _| live.contains(inode));
        for l in listeners.iter_mut() {
            l.owner = self.owners.get(&l.inode).copied().flatten();
        }
    }

    /// Lists namespaces again: opens new ones, closes those gone.
    fn relist(&mut self) -> Result<()> {
        if !self.all_namespaces {
            if self.namespaces.is_empty() {
                self.namespaces.push(Namespace::open_here()?);
            }
            return Ok(());
        }
        let here = current_netns().ok();
        let mut old: HashMap<u32, Namespace> =
            self.namespaces.drain(..).map(|n| (n.netns, n)).collect();
        let paths = super::namespaces();
        let mut skipped = 0usize;
        for (i, path) in paths.iter().enumerate() {
            if self.namespaces.len() >= self.max_namespaces {
                if !self.warned_namespaces {
                    self.warned_namespaces = true;
                    log::warn!(
                        "more than {} network namespaces: listeners of the rest are not sampled",
                        self.max_namespaces
                    );
                }
                break;
            }
            let Ok(inode) = namespace_inode(path) else {
                continue;
            };
            let inode = inode as u32;
            if let Some(ns) = old.remove(&inode) {
                self.namespaces.push(ns);
                continue;
            }
            match open_in(path, here == Some(inode)) {
                Ok(ns) => self.namespaces.push(ns),
                // The first entry is our own namespace: opening it must work.
                Err(e) if i == 0 => return Err(e),
                Err(e) => {
                    log::debug!(
                        "not sampling listeners of network namespace {}: {e:#}",
                        path.display()
                    );
                    skipped += 1;
                }
            }
        }
        if skipped > 0 {
            log::debug!(
                "{skipped} network namespace(s) could not be opened for the listener sampler"
            );
        }
        // `old` now holds the namespaces no longer listed: closed here.
        Ok(())
    }
}

/// Opens a namespace's socket and file: on the calling thread when it is
/// already there, else on a thread that joins it.
fn open_in(path: &Path, here: bool) -> Result<Namespace> {
    if here {
        return Namespace::open_here();
    }
    super::in_namespace(path, Namespace::open_here)?
}

#[cfg(test)]
mod tests;
