//! The recording file format: pure encoding and decoding, no I/O.
//!
//! # Wire format (version 6)
//!
//! All integers are little-endian; `varint` is unsigned LEB128 (at most 10
//! bytes), `zigzag` a signed value mapped to unsigned first.
//!
//! ```text
//! file    = header block*
//! header  = "TCPTRACE" (8 bytes)
//!           version    u16   (FORMAT_VERSION; readers refuse newer ones)
//!           length     u32   (of the JSON that follows)
//!           crc32      u32   (of the JSON)
//!           json             (Header: host, kernel, clock offset, hooks,
//!                             filters, port range, start time)
//! block   = "BLK" kind   (4 bytes; kind b'E' events, b'S' snapshot)
//!           length     u32   (of the compressed payload)
//!           raw_length u32   (of the payload once decompressed)
//!           crc32      u32   (of the compressed payload)
//!           payload          (one zstd frame)
//! ```
//!
//! An events payload is a sequence of records, each opening with a tag:
//!
//! ```text
//! event   = 0x01 kind u8 (EventKind; 7, tw_substate, from version 3),
//!           flags u8, ts zigzag (delta to the previous
//!           record's ts in this block; the first is absolute),
//!           sk varint (XOR the previous event's sk in this block),
//!           [link varint (XOR sk)]          flags & 0x01
//!           [owner varint]                  flags & 0x02: index + 1 into this
//!                                           block's owners, or 0 followed by
//!                                           pid, tid, cgroup varints and comm
//!                                           (len u8 + bytes), appended
//!           [netns varint]                  flags & 0x04
//!           [prev_ns varint]                flags & 0x08
//!           saddr, daddr (4 bytes each, 16 with flags & 0x10), sport u16, dport u16,
//!           [old u8]                        flags & 0x20
//!           new u8, [reason u8                flags & 0x40: the kernel's
//!                                           TwEndReason (1 expired, 2 killed,
//!                                           3 reused, 4 purged; 5 overflow on
//!                                           a transition to CLOSE)
//!           [reuser]]                       reason 3 (version 3)
//!           (flags & 0x80: the owner came from the listener)
//! event_s = 0x06 <exactly the fields of 0x01> stack varint (version 5):
//!           an event whose owner came with a user stack (`--stacks`):
//!           the kernel's stack id, named by a stack record
//! reuser  = flags u8 (0x01 pid, 0x02 comm), [pid varint], [comm]: the
//!           process whose connect() reused the timewait socket
//! lost    = 0x03 ts zigzag (as above), ring_full, recursion_misses,
//!           map_full, probe_failed varints: events lost since the previous
//!           marker (version 2; version 1 files have the older form:)
//! lost_v1 = 0x02 ts zigzag (as above), ring_full, recursion_misses,
//!           map_full varints: events lost since the previous marker
//! workload = 0x04 cgroup varint, length varint (at most
//!           MAX_WORKLOAD_JSON), JSON of `Workload` (version 4): what the
//!           recorder knew about an owner's cgroup id (its path, unit,
//!           container, pod, display name). Written before the first event
//!           whose owner is in that cgroup, again when it changed (names
//!           found later), and every one written so far again in the events
//!           block after each snapshot block, so a reader starting at a
//!           snapshot, or past a damaged stretch, still names them. Missing
//!           keys take their defaults and unknown keys are ignored, so the
//!           record can grow. A reader keeps the latest per id; names are
//!           never looked up on the reading host. Files of versions 1 to 3
//!           have none: their owners show as `cgroup:<id>`.
//! stack   = 0x05 pid varint, id varint, length varint (at most
//!           MAX_STACK_JSON), JSON of `Stack` (version 5): the names of
//!           the user stack `id` captured in process `pid` (frames,
//!           quality). Written once per file before or after the events
//!           that use it (names are looked up at snapshot time: order does
//!           not matter), again when it changed, and every one written so
//!           far again in the events block after each snapshot block (like
//!           workloads). A JSON too long is written without `file` fields,
//!           then with its first 32 frames as `truncated`. A reader takes a
//!           longer record, or a stack failing `Stack::check`, for damage.
//! listeners = 0x07 ts zigzag (as above), n varint, listener * n,
//!           m varint, counters * m (version 6): one sock_diag sample of
//!           every listener of the sampled namespaces (about once a second)
//!           and each sampled namespace's drop counters
//! listener = flags u8 (0x01 netns, 0x02 owner, 0x04 cgroup, 0x08 v6,
//!           0x10 drops; other bits are damage), [netns u32], addr (4 or
//!           16 bytes), port u16, inode varint, [pid varint, comm],
//!           [cgroup varint], queue varint, limit varint, [drops varint]
//!           (the socket's SK_MEMINFO_DROPS, cumulative)
//! counters = netns u32, present u16 (bit i: field i follows; bits 12 and
//!           up are damage), one varint per present field, in the order
//!           listen_overflows, listen_drops, req_qfull_drop,
//!           req_qfull_cookies, paws_passive, paws_active, paws_estab,
//!           syncookies_sent, syncookies_failed, paws_timewait,
//!           tsecr_rejected, paws_old_ack (TcpExt, cumulative; the last
//!           three are bits 9-11, written since they were read: a file
//!           without them reads them as not known)
//!
//! A sample has at most [`MAX_SAMPLE_LISTENERS`] listeners and
//! [`MAX_SAMPLE_NAMESPACES`] namespaces (the sampler's own bounds; the
//! writer keeps the first ones): a record claiming more is damage.
//! drop    = 0x08 ts zigzag (as above), flags u8 (0x01 netns, 0x02 v6,
//!           0x04 SYN, 0x08 ACK, 0x10 rx_state; other bits are damage),
//!           [netns varint], local addr, remote addr (the packet's
//!           destination and source), local_port u16, remote_port u16,
//!           reason u8 (`DropReason` id, 1..=13), kernel_reason varint (the
//!           recording kernel's `skb_drop_reason` value, u16),
//!           [rx_state u8], suppressed varint (version 6): a connection
//!           attempt the kernel dropped and reported (`skb:kfree_skb`)
//! ```
//!
//! A snapshot payload is the sockets a sock_diag dump found (the state to
//! start from, so a reader can begin at any snapshot block):
//!
//! ```text
//! snapshot = ts varint (monotonic), n_namespaces varint, netns u32 * n,
//!            n_sockets varint, socket * n
//! socket   = flags u8 (0x01 netns, 0x02 owner, 0x04 timer, 0x08 v6,
//!            0x10 cgroup; other bits are damage),
//!            [netns u32], saddr, daddr, sport u16, dport u16, state u8,
//!            inode varint, cookie varint, [pid varint, comm], [timer_left_ms varint],
//!            [cgroup varint]            flags & 0x10 (version 4): the cgroup id
//!                                       sock_diag reported for the socket
//!                                       (`INET_DIAG_CGROUP_ID`); the writer
//!                                       names it with a workload record
//!                                       before the snapshot block, as it
//!                                       does for event owners
//! facts    = (version 3, optional) length varint, JSON of `NetFacts`: each
//!            namespace's TCP sysctls and TIME_WAIT counters when the
//!            snapshot was taken (what `doctor --from` judges by)
//! ```
//!
//! Blocks are self-contained (deltas and owner tables restart in each), so a
//! file cut at any byte reads back to its last complete block; writers emit
//! a block at least every second.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use tcptrace_common::TwEndReason as WireReason;

use crate::{
    decode::reason_to_wire,
    listeners::{DropCounters, DropReason, ListenerSample, NetnsDropCounters, SynDrop},
    model::{
        Comm, Event, EventKind, Family, Lost, Owner, Reuser, SeenOwner, SeenSocket, TcpState,
        TwEndReason,
    },
    netfacts::NetFacts,
    stacks::{Stack, StackKey},
    workload::Workload,
};

pub const MAGIC: &[u8; 8] = b"TCPTRACE";
/// 6: listener samples (tag 0x07: accept queues, drop counts, the
/// namespaces' drop counters) and kernel-reported drops (tag 0x08), which
/// a version-5 reader would take for a corrupt block, so it refuses the
/// file instead (even one recorded without them).
/// 5: stack records (tag 0x05) and events with a stack id (tag 0x06,
/// `--stacks`), which a version-4 reader would take for a corrupt block,
/// so it refuses the file instead (even one recorded without stacks).
/// 4: workload records (tag 0x04: a cgroup id's unit, container or pod, so
/// a recording names workloads after they are gone), which a version-3
/// reader would take for a corrupt block, so it refuses the file instead.
/// 3: snapshots carry each namespace's TCP facts; events of kind 7
/// (`tw_substate`, a timewait socket found in TIME_WAIT by the live
/// source's check), which a version-2 reader would take for a corrupt
/// block, so it refuses the file instead; timewait ends reused (with the
/// reuser) and purged, transitions marked overflow. 2: loss markers carry
/// `probe_failed` (tag 0x03). Versions 1 and 2 read too.
pub const FORMAT_VERSION: u16 = 6;
/// Longest stack JSON a record holds (see the wire format for how a writer
/// fits a longer one); a reader takes a longer one for damage.
pub const MAX_STACK_JSON: usize = 64 << 10;
/// Frames a stack too long for [`MAX_STACK_JSON`] keeps (as `truncated`).
const STACK_FRAMES_WHEN_LONG: usize = 32;
/// Longest workload JSON a record holds; a longer one is not written (its
/// id shows as `cgroup:<id>`), and a reader takes a longer one for damage.
pub const MAX_WORKLOAD_JSON: usize = 4096;
/// Fixed part of the header before its JSON.
pub const HEADER_FIXED: usize = 8 + 2 + 4 + 4;
/// Fixed part of a block before its payload.
pub const BLOCK_FIXED: usize = 4 + 4 + 4 + 4;
/// Largest block (compressed or not) a reader accepts: bounds allocations on
/// corrupt input.
pub const MAX_BLOCK: u32 = 64 << 20;
pub const KIND_EVENTS: u8 = b'E';
pub const KIND_SNAPSHOT: u8 = b'S';

/// What the recorder knew about the host and the trace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub tcptrace_version: String,
    pub host: String,
    pub kernel: String,
    /// `wall_ns = mono_ns + clock_offset_ns` (event timestamps are
    /// CLOCK_MONOTONIC, the kernel's `bpf_ktime_get_ns`).
    pub clock_offset_ns: i64,
    pub hook: String,
    pub timewait_hook: String,
    /// The filters of the recording command line, as given.
    pub filters: Vec<String>,
    pub port_range: (u16, u16),
    pub start_mono_ns: u64,
    pub start_wall_ns: u64,
    /// Recorded with `--stacks` (version 5): events carry stack ids and
    /// stack records name them.
    #[serde(default)]
    pub stacks: bool,
}

/// One decoded record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Event(Event),
    /// Events the kernel (or recorder) lost since the previous marker.
    Lost {
        ts_ns: u64,
        lost: Lost,
    },
    /// A sock_diag snapshot: the sockets alive at `ts_ns`, the network
    /// namespaces that were dumped, and their TCP facts (sysctls, TIME_WAIT
    /// counters) when read.
    Snapshot {
        ts_ns: u64,
        namespaces: Vec<u32>,
        sockets: Vec<SeenSocket>,
        facts: Option<Box<NetFacts>>,
    },
    /// What the recorder knew about cgroup `cgroup` (version 4): the
    /// workload of the events whose owner is in it. It has no timestamp.
    Workload {
        cgroup: u64,
        workload: Arc<Workload>,
    },
    /// A recording's name of one user stack (version 5): the frames of the
    /// stack `key.id` captured in process `key.pid`. It has no timestamp.
    Stack {
        key: StackKey,
        stack: Arc<Stack>,
    },
    /// A sample of every listener of the namespaces in `counters`
    /// (version 6): accept queues and drop counts from sock_diag, and each
    /// sampled namespace's drop counters (see [`crate::listeners`]).
    Listeners {
        ts_ns: u64,
        listeners: Vec<ListenerSample>,
        counters: Vec<NetnsDropCounters>,
    },
    /// A connection attempt the kernel dropped and reported, with its
    /// reason (version 6; `skb:kfree_skb`).
    Drop(SynDrop),
}

impl Record {
    /// Its timestamp (monotonic ns); 0 for the records that have none
    /// (workload and stack names: due at once, moving no clock).
    pub fn ts_ns(&self) -> u64 {
        match self {
            Record::Event(e) => e.ts_ns,
            Record::Lost { ts_ns, .. }
            | Record::Snapshot { ts_ns, .. }
            | Record::Listeners { ts_ns, .. } => *ts_ns,
            Record::Drop(d) => d.ts_ns,
            Record::Workload { .. } | Record::Stack { .. } => 0,
        }
    }
}

/// Why bytes are not a recording (or not a complete one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a tcptrace recording (bad magic)")]
    Magic,
    #[error(
        "recording format version {0} is newer than this tcptrace reads ({FORMAT_VERSION}): upgrade tcptrace"
    )]
    NewerVersion(u16),
    #[error("the header is corrupt ({0})")]
    Header(String),
    #[error("incomplete block")]
    Truncated,
    #[error("corrupt block ({0})")]
    Corrupt(&'static str),
}

// ---------------------------------------------------------------- encoding

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_addr(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

/// Both addresses, then both ports: the 4-tuple as events and snapshots store it.
fn put_endpoints(out: &mut Vec<u8>, saddr: IpAddr, daddr: IpAddr, sport: u16, dport: u16) {
    put_addr(out, saddr);
    put_addr(out, daddr);
    out.extend_from_slice(&sport.to_le_bytes());
    out.extend_from_slice(&dport.to_le_bytes());
}

fn put_comm(out: &mut Vec<u8>, c: &Comm) {
    let b = c.as_bytes();
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

/// Builds one events payload; deltas and the owner table restart per block.
#[derive(Debug, Default)]
pub struct BlockEncoder {
    pub buf: Vec<u8>,
    prev_ts: u64,
    prev_sk: u64,
    owners: Vec<Owner>,
    pub records: u64,
}

impl BlockEncoder {
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    fn ts(&mut self, ts: u64) {
        put_zigzag(&mut self.buf, ts.wrapping_sub(self.prev_ts) as i64);
        self.prev_ts = ts;
    }

    pub fn event(&mut self, e: &Event) {
        let v6 = matches!(e.saddr, IpAddr::V6(_));
        let mut flags = 0u8;
        flags |= e.link.is_some() as u8;
        flags |= (e.owner.is_some() as u8) << 1;
        flags |= (e.netns.is_some() as u8) << 2;
        flags |= (e.prev_ns.is_some() as u8) << 3;
        flags |= (v6 as u8) << 4;
        flags |= (e.old.is_some() as u8) << 5;
        flags |= (e.reason.is_some() as u8) << 6;
        flags |= (e.owner.is_some_and(|o| o.from_listener) as u8) << 7;
        // The flags byte is full: an event with a stack has its own tag.
        self.buf.push(if e.stack.is_some() { 6 } else { 1 });
        self.buf.push(e.kind as u8);
        self.buf.push(flags);
        self.ts(e.ts_ns);
        put_varint(&mut self.buf, e.sk ^ self.prev_sk);
        self.prev_sk = e.sk;
        if let Some(link) = e.link {
            put_varint(&mut self.buf, link ^ e.sk);
        }
        if let Some(o) = e.owner {
            let plain = Owner {
                from_listener: false,
                ..o
            };
            match self.owners.iter().position(|x| *x == plain) {
                Some(i) => put_varint(&mut self.buf, i as u64 + 1),
                None => {
                    put_varint(&mut self.buf, 0);
                    put_varint(&mut self.buf, o.pid as u64);
                    put_varint(&mut self.buf, o.tid as u64);
                    put_varint(&mut self.buf, o.cgroup);
                    put_comm(&mut self.buf, &o.comm);
                    // A linear table: owners per block are few; cap the scan.
                    if self.owners.len() < 256 {
                        self.owners.push(plain);
                    }
                }
            }
        }
        if let Some(ns) = e.netns {
            put_varint(&mut self.buf, ns as u64);
        }
        if let Some(p) = e.prev_ns {
            put_varint(&mut self.buf, p);
        }
        put_endpoints(&mut self.buf, e.saddr, e.daddr, e.sport, e.dport);
        if let Some(old) = e.old {
            self.buf.push(old as u8);
        }
        self.buf.push(e.new as u8);
        if let Some(r) = e.reason {
            self.buf.push(reason_to_wire(Some(r)).0);
            if let TwEndReason::Reused { by } = r {
                let pid = by.map(|b| b.pid);
                let comm = by.and_then(|b| b.comm);
                self.buf
                    .push(pid.is_some() as u8 | (comm.is_some() as u8) << 1);
                if let Some(pid) = pid {
                    put_varint(&mut self.buf, pid as u64);
                }
                if let Some(c) = comm {
                    put_comm(&mut self.buf, &c);
                }
            }
        }
        if let Some(id) = e.stack {
            put_varint(&mut self.buf, u64::from(id));
        }
        self.records += 1;
    }

    /// A stack record naming `key`; false (nothing written) when even its
    /// shortened JSON is too long ([`stack_json`]).
    pub fn stack(&mut self, key: StackKey, stack: &Stack) -> bool {
        let Some(json) = stack_json(stack) else {
            return false;
        };
        self.buf.push(5);
        put_varint(&mut self.buf, u64::from(key.pid));
        put_varint(&mut self.buf, u64::from(key.id));
        put_varint(&mut self.buf, json.len() as u64);
        self.buf.extend_from_slice(&json);
        self.records += 1;
        true
    }

    pub fn lost(&mut self, ts_ns: u64, lost: &Lost) {
        self.buf.push(3);
        self.ts(ts_ns);
        put_varint(&mut self.buf, lost.ring_full);
        put_varint(&mut self.buf, lost.recursion_misses);
        put_varint(&mut self.buf, lost.map_full);
        put_varint(&mut self.buf, lost.probe_failed);
        self.records += 1;
    }

    /// A workload record for cgroup `id`; false (nothing written) when its
    /// JSON is longer than [`MAX_WORKLOAD_JSON`].
    pub fn workload(&mut self, id: u64, w: &Workload) -> bool {
        let Ok(json) = serde_json::to_vec(w) else {
            return false;
        };
        if json.len() > MAX_WORKLOAD_JSON {
            return false;
        }
        self.buf.push(4);
        put_varint(&mut self.buf, id);
        put_varint(&mut self.buf, json.len() as u64);
        self.buf.extend_from_slice(&json);
        self.records += 1;
        true
    }

    /// A listener sample (version 6).
    pub fn listeners(
        &mut self,
        ts_ns: u64,
        listeners: &[ListenerSample],
        counters: &[NetnsDropCounters],
    ) {
        // Within the bounds a reader accepts.
        let listeners = &listeners[..listeners.len().min(MAX_SAMPLE_LISTENERS)];
        let counters = &counters[..counters.len().min(MAX_SAMPLE_NAMESPACES)];
        self.buf.push(7);
        self.ts(ts_ns);
        put_varint(&mut self.buf, listeners.len() as u64);
        for l in listeners {
            let v6 = matches!(l.addr, IpAddr::V6(_));
            let flags = l.netns.is_some() as u8
                | (l.owner.is_some() as u8) << 1
                | (l.cgroup.is_some() as u8) << 2
                | (v6 as u8) << 3
                | (l.drops.is_some() as u8) << 4;
            self.buf.push(flags);
            if let Some(ns) = l.netns {
                self.buf.extend_from_slice(&ns.to_le_bytes());
            }
            put_addr(&mut self.buf, l.addr);
            self.buf.extend_from_slice(&l.port.to_le_bytes());
            put_varint(&mut self.buf, l.inode);
            if let Some(o) = l.owner {
                put_varint(&mut self.buf, u64::from(o.pid));
                put_comm(&mut self.buf, &o.comm);
            }
            if let Some(c) = l.cgroup {
                put_varint(&mut self.buf, c);
            }
            put_varint(&mut self.buf, u64::from(l.queue));
            put_varint(&mut self.buf, u64::from(l.limit));
            if let Some(d) = l.drops {
                put_varint(&mut self.buf, d);
            }
        }
        put_varint(&mut self.buf, counters.len() as u64);
        for c in counters {
            self.buf.extend_from_slice(&c.netns.to_le_bytes());
            let fields = c.counters.fields();
            let present = fields
                .iter()
                .enumerate()
                .fold(0u16, |m, (i, f)| m | (u16::from(f.is_some()) << i));
            self.buf.extend_from_slice(&present.to_le_bytes());
            for v in fields.into_iter().flatten() {
                put_varint(&mut self.buf, v);
            }
        }
        self.records += 1;
    }

    /// A kernel-reported drop (version 6).
    pub fn drop_record(&mut self, d: &SynDrop) {
        let v6 = matches!(d.local, IpAddr::V6(_));
        // Both addresses are of one family on the wire.
        let remote = match (d.remote, v6) {
            (IpAddr::V4(a), true) => IpAddr::V6(a.to_ipv6_mapped()),
            (IpAddr::V6(a), false) => a
                .to_ipv4_mapped()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4),
            (a, _) => a,
        };
        self.buf.push(8);
        self.ts(d.ts_ns);
        let flags = d.netns.is_some() as u8
            | (v6 as u8) << 1
            | (d.syn as u8) << 2
            | (d.ack as u8) << 3
            | (d.rx_state.is_some() as u8) << 4;
        self.buf.push(flags);
        if let Some(ns) = d.netns {
            put_varint(&mut self.buf, u64::from(ns));
        }
        put_endpoints(&mut self.buf, d.local, remote, d.local_port, d.remote_port);
        self.buf.push(d.reason.id());
        put_varint(&mut self.buf, u64::from(d.kernel_reason));
        if let Some(s) = d.rx_state {
            self.buf.push(s as u8);
        }
        put_varint(&mut self.buf, d.suppressed);
        self.records += 1;
    }

    /// The payload so far; the encoder starts a fresh block.
    pub fn take(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.buf);
        *self = Self::default();
        buf
    }
}

/// The JSON of a stack record, at most [`MAX_STACK_JSON`] bytes: as is,
/// else without `file` fields, else with its first
/// [`STACK_FRAMES_WHEN_LONG`] frames only (quality `truncated`); None when
/// even that is too long.
fn stack_json(stack: &Stack) -> Option<Vec<u8>> {
    let fits = |s: &Stack| {
        serde_json::to_vec(s)
            .ok()
            .filter(|j| j.len() <= MAX_STACK_JSON)
    };
    if let Some(json) = fits(stack) {
        return Some(json);
    }
    let mut short = stack.clone();
    for f in &mut short.frames {
        f.file = None;
    }
    if let Some(json) = fits(&short) {
        return Some(json);
    }
    short.frames.truncate(STACK_FRAMES_WHEN_LONG);
    short.quality = crate::stacks::StackQuality::Truncated;
    fits(&short)
}

pub fn encode_snapshot(
    ts_ns: u64,
    namespaces: &[u32],
    sockets: &[SeenSocket],
    facts: Option<&NetFacts>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + sockets.len() * 48);
    put_varint(&mut out, ts_ns);
    put_varint(&mut out, namespaces.len() as u64);
    for ns in namespaces {
        out.extend_from_slice(&ns.to_le_bytes());
    }
    put_varint(&mut out, sockets.len() as u64);
    for s in sockets {
        let v6 = s.family == Family::V6;
        let flags = s.netns.is_some() as u8
            | (s.owner.is_some() as u8) << 1
            | (s.timer_left_ms.is_some() as u8) << 2
            | (v6 as u8) << 3
            | (s.cgroup.is_some() as u8) << 4;
        out.push(flags);
        if let Some(ns) = s.netns {
            out.extend_from_slice(&ns.to_le_bytes());
        }
        put_endpoints(&mut out, s.saddr, s.daddr, s.sport, s.dport);
        out.push(s.state as u8);
        put_varint(&mut out, s.inode);
        put_varint(&mut out, s.cookie);
        if let Some(o) = s.owner {
            put_varint(&mut out, o.pid as u64);
            put_comm(&mut out, &o.comm);
        }
        if let Some(t) = s.timer_left_ms {
            put_varint(&mut out, t as u64);
        }
        if let Some(cgroup) = s.cgroup {
            put_varint(&mut out, cgroup);
        }
    }
    if let Some(facts) = facts {
        let json = serde_json::to_vec(facts).expect("facts serialize");
        put_varint(&mut out, json.len() as u64);
        out.extend_from_slice(&json);
    }
    out
}

/// The header bytes for `h`.
pub fn encode_header(h: &Header) -> Vec<u8> {
    let json = serde_json::to_vec(h).expect("header serializes");
    let mut out = Vec::with_capacity(HEADER_FIXED + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// A block's bytes around an (already compressed) payload.
pub fn encode_block(kind: u8, raw_len: usize, compressed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK_FIXED + compressed.len());
    out.extend_from_slice(&[b'B', b'L', b'K', kind]);
    out.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
    out.extend_from_slice(&(raw_len as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(compressed).to_le_bytes());
    out.extend_from_slice(compressed);
    out
}

// ---------------------------------------------------------------- decoding

/// A cursor over a payload; every read is checked.
#[derive(Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(FormatError::Corrupt("record runs past the block"))?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().expect("2")))
    }

    pub fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4")))
    }

    pub fn varint(&mut self) -> Result<u64, FormatError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FormatError::Corrupt("varint too long"))
    }

    fn zigzag(&mut self) -> Result<i64, FormatError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn addr(&mut self, v6: bool) -> Result<IpAddr, FormatError> {
        Ok(if v6 {
            let b: [u8; 16] = self.bytes(16)?.try_into().expect("16");
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            let b: [u8; 4] = self.bytes(4)?.try_into().expect("4");
            IpAddr::V4(Ipv4Addr::from(b))
        })
    }

    /// The counterpart of `put_endpoints`: (saddr, daddr, sport, dport).
    fn endpoints(&mut self, v6: bool) -> Result<(IpAddr, IpAddr, u16, u16), FormatError> {
        Ok((self.addr(v6)?, self.addr(v6)?, self.u16()?, self.u16()?))
    }

    fn comm(&mut self) -> Result<Comm, FormatError> {
        let n = self.u8()? as usize;
        if n > 16 {
            return Err(FormatError::Corrupt("process name too long"));
        }
        let mut c = [0u8; 16];
        c[..n].copy_from_slice(self.bytes(n)?);
        Ok(Comm(c))
    }

    /// A reason byte and, for reused, the reuser.
    fn reason(&mut self) -> Result<TwEndReason, FormatError> {
        Ok(match WireReason::from_u8(self.u8()?) {
            Some(WireReason::Expired) => TwEndReason::Expired,
            Some(WireReason::Killed) => TwEndReason::Killed,
            Some(WireReason::Purged) => TwEndReason::Purged,
            Some(WireReason::Overflow) => TwEndReason::Overflow,
            Some(WireReason::Reused) => {
                let flags = self.u8()?;
                let pid = (flags & 0x01 != 0)
                    .then(|| u32_of(self.varint()?))
                    .transpose()?;
                let comm = (flags & 0x02 != 0).then(|| self.comm()).transpose()?;
                TwEndReason::Reused {
                    by: match (pid, comm) {
                        (Some(pid), comm) => Some(Reuser { pid, comm }),
                        (None, None) => None,
                        (None, Some(_)) => {
                            return Err(FormatError::Corrupt("reuser name without pid"));
                        }
                    },
                }
            }
            Some(WireReason::None) | None => {
                return Err(FormatError::Corrupt("unknown end reason"));
            }
        })
    }

    fn state(&mut self) -> Result<TcpState, FormatError> {
        TcpState::from_u8(self.u8()?).ok_or(FormatError::Corrupt("unknown TCP state"))
    }
}

fn u32_of(v: u64) -> Result<u32, FormatError> {
    u32::try_from(v).map_err(|_| FormatError::Corrupt("value out of range"))
}

/// A workload read from a file is input: an unknown one is named by its id,
/// and a display name that is empty, too long or has control characters is
/// made again from the fields (escaped and capped as the recorder does).
fn sanitize(w: &mut Workload, id: u64) {
    use crate::workload::{MAX_DISPLAY_BYTES, WorkloadKind, display};
    if w.kind == WorkloadKind::Unknown {
        *w = Workload::unknown(id);
    } else if w.display.is_empty()
        || w.display.len() > MAX_DISPLAY_BYTES
        || w.display.chars().any(char::is_control)
    {
        w.display = display(w).into();
    }
}

/// How many counters a namespace's record may carry (in
/// [`DropCounters::fields`]' order).
const COUNTER_FIELDS: usize = DropCounters::FIELDS;

/// Listeners one sample record may hold (the sampler's bound,
/// `seed::listeners::MAX_LISTENERS`, and the table's).
pub const MAX_SAMPLE_LISTENERS: usize = crate::listeners::MAX_LISTENERS;
/// Namespaces one sample record may hold (the sampler's bound,
/// `seed::listeners::MAX_NAMESPACES`, and the table's).
pub const MAX_SAMPLE_NAMESPACES: usize = crate::listeners::MAX_NAMESPACES;

/// The flag bits a listener of a sample may have (netns, owner, cgroup,
/// v6, drops): any other is damage.
const LISTENER_FLAGS: u8 = 0x1f;
/// The flag bits a drop record may have (netns, v6, SYN, ACK, rx_state).
const DROP_FLAGS: u8 = 0x1f;

impl Cursor<'_> {
    /// A count of items that take at least `min_bytes` each: never more
    /// than the rest of the payload holds.
    fn count(&mut self, min_bytes: usize, what: &'static str) -> Result<usize, FormatError> {
        let n = self.varint()?;
        let left = (self.buf.len() - self.pos) / min_bytes.max(1);
        if n > left as u64 {
            return Err(FormatError::Corrupt(what));
        }
        Ok(n as usize)
    }

    fn listener(&mut self) -> Result<ListenerSample, FormatError> {
        let flags = self.u8()?;
        if flags & !LISTENER_FLAGS != 0 {
            return Err(FormatError::Corrupt("unknown listener flags"));
        }
        let netns = (flags & 0x01 != 0).then(|| self.u32()).transpose()?;
        let v6 = flags & 0x08 != 0;
        let addr = self.addr(v6)?;
        let port = self.u16()?;
        let inode = self.varint()?;
        let owner = if flags & 0x02 != 0 {
            Some(SeenOwner {
                pid: u32_of(self.varint()?)?,
                comm: self.comm()?,
            })
        } else {
            None
        };
        let cgroup = (flags & 0x04 != 0).then(|| self.varint()).transpose()?;
        let queue = u32_of(self.varint()?)?;
        let limit = u32_of(self.varint()?)?;
        let drops = (flags & 0x10 != 0).then(|| self.varint()).transpose()?;
        Ok(ListenerSample {
            netns,
            family: if v6 { Family::V6 } else { Family::V4 },
            addr,
            port,
            inode,
            owner,
            cgroup,
            queue,
            limit,
            drops,
        })
    }

    fn counters(&mut self) -> Result<NetnsDropCounters, FormatError> {
        let netns = self.u32()?;
        let present = self.u16()?;
        if present >> COUNTER_FIELDS != 0 {
            return Err(FormatError::Corrupt("unknown drop counters"));
        }
        let mut v = [None; COUNTER_FIELDS];
        for (i, slot) in v.iter_mut().enumerate() {
            if present & (1 << i) != 0 {
                *slot = Some(self.varint()?);
            }
        }
        Ok(NetnsDropCounters {
            netns,
            counters: DropCounters::from_fields(v),
        })
    }
}

/// Decodes every record of an events payload.
pub fn decode_events(payload: &[u8], out: &mut Vec<Record>) -> Result<(), FormatError> {
    let mut c = Cursor::new(payload);
    let mut prev_ts = 0u64;
    let mut prev_sk = 0u64;
    let mut owners: Vec<Owner> = Vec::new();
    while !c.is_empty() {
        let tag = c.u8()?;
        match tag {
            1 | 6 => {
                let kind = EventKind::from_u32(c.u8()? as u32)
                    // The kinds an event record holds: not losses, nor
                    // drops (they have records of their own), nor any kind
                    // added later.
                    .filter(|k| {
                        matches!(
                            k,
                            EventKind::Transition
                                | EventKind::TwBegin
                                | EventKind::TwRearm
                                | EventKind::TwEnd
                                | EventKind::Accept
                                | EventKind::TwSubstate
                        )
                    })
                    .ok_or(FormatError::Corrupt("unknown event kind"))?;
                let flags = c.u8()?;
                let ts = prev_ts.wrapping_add(c.zigzag()? as u64);
                prev_ts = ts;
                let sk = c.varint()? ^ prev_sk;
                prev_sk = sk;
                let link = if flags & 0x01 != 0 {
                    Some(c.varint()? ^ sk)
                } else {
                    None
                };
                let owner = if flags & 0x02 != 0 {
                    let idx = c.varint()?;
                    let mut o = if idx == 0 {
                        let o = Owner {
                            pid: u32_of(c.varint()?)?,
                            tid: u32_of(c.varint()?)?,
                            cgroup: c.varint()?,
                            comm: c.comm()?,
                            from_listener: false,
                        };
                        if owners.len() < 256 {
                            owners.push(o);
                        }
                        o
                    } else {
                        *owners
                            .get(idx as usize - 1)
                            .ok_or(FormatError::Corrupt("unknown owner index"))?
                    };
                    o.from_listener = flags & 0x80 != 0;
                    Some(o)
                } else {
                    None
                };
                let netns = (flags & 0x04 != 0)
                    .then(|| u32_of(c.varint()?))
                    .transpose()?;
                let prev_ns = (flags & 0x08 != 0).then(|| c.varint()).transpose()?;
                let v6 = flags & 0x10 != 0;
                let (saddr, daddr, sport, dport) = c.endpoints(v6)?;
                let old = (flags & 0x20 != 0).then(|| c.state()).transpose()?;
                let new = c.state()?;
                let reason = if flags & 0x40 != 0 {
                    Some(c.reason()?)
                } else {
                    None
                };
                let stack = if tag == 6 {
                    Some(u32_of(c.varint()?)?)
                } else {
                    None
                };
                out.push(Record::Event(Event {
                    ts_ns: ts,
                    kind,
                    sk,
                    link,
                    owner,
                    netns,
                    family: if v6 { Family::V6 } else { Family::V4 },
                    saddr,
                    sport,
                    daddr,
                    dport,
                    old,
                    new,
                    prev_ns,
                    reason,
                    stack,
                }));
            }
            2 | 3 => {
                let ts = prev_ts.wrapping_add(c.zigzag()? as u64);
                prev_ts = ts;
                out.push(Record::Lost {
                    ts_ns: ts,
                    lost: Lost {
                        ring_full: c.varint()?,
                        recursion_misses: c.varint()?,
                        map_full: c.varint()?,
                        probe_failed: if tag == 3 { c.varint()? } else { 0 },
                    },
                });
            }
            4 => {
                let cgroup = c.varint()?;
                let len = c.varint()?;
                if len > MAX_WORKLOAD_JSON as u64 {
                    return Err(FormatError::Corrupt("workload record too long"));
                }
                let json = c.bytes(len as usize)?;
                let mut workload: Workload =
                    serde_json::from_slice(json).map_err(|_| FormatError::Corrupt("workload"))?;
                sanitize(&mut workload, cgroup);
                out.push(Record::Workload {
                    cgroup,
                    workload: Arc::new(workload),
                });
            }
            5 => {
                let pid = u32_of(c.varint()?)?;
                let id = u32_of(c.varint()?)?;
                let len = c.varint()?;
                if len > MAX_STACK_JSON as u64 {
                    return Err(FormatError::Corrupt("stack record too long"));
                }
                let json = c.bytes(len as usize)?;
                let stack: Stack = serde_json::from_slice(json)
                    .map_err(|_| FormatError::Corrupt("stack record"))?;
                stack
                    .check()
                    .map_err(|_| FormatError::Corrupt("stack record"))?;
                out.push(Record::Stack {
                    key: StackKey { pid, id },
                    stack: Arc::new(stack),
                });
            }
            7 => {
                let ts_ns = prev_ts.wrapping_add(c.zigzag()? as u64);
                prev_ts = ts_ns;
                // A listener takes at least 9 bytes (flags, addr, port,
                // inode, queue, limit), a namespace's counters 6.
                let n = c.count(9, "listener count")?;
                if n > MAX_SAMPLE_LISTENERS {
                    return Err(FormatError::Corrupt("too many listeners in a sample"));
                }
                let listeners = (0..n)
                    .map(|_| c.listener())
                    .collect::<Result<Vec<_>, _>>()?;
                let m = c.count(6, "namespace count")?;
                if m > MAX_SAMPLE_NAMESPACES {
                    return Err(FormatError::Corrupt("too many namespaces in a sample"));
                }
                let counters = (0..m)
                    .map(|_| c.counters())
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(Record::Listeners {
                    ts_ns,
                    listeners,
                    counters,
                });
            }
            8 => {
                let ts_ns = prev_ts.wrapping_add(c.zigzag()? as u64);
                prev_ts = ts_ns;
                let flags = c.u8()?;
                if flags & !DROP_FLAGS != 0 {
                    return Err(FormatError::Corrupt("unknown drop flags"));
                }
                let netns = (flags & 0x01 != 0)
                    .then(|| u32_of(c.varint()?))
                    .transpose()?;
                let v6 = flags & 0x02 != 0;
                let (local, remote, local_port, remote_port) = c.endpoints(v6)?;
                let reason = DropReason::from_id(c.u8()?)
                    .ok_or(FormatError::Corrupt("unknown drop reason"))?;
                let kernel_reason = u16::try_from(c.varint()?)
                    .map_err(|_| FormatError::Corrupt("value out of range"))?;
                let rx_state = (flags & 0x10 != 0).then(|| c.state()).transpose()?;
                let suppressed = c.varint()?;
                out.push(Record::Drop(SynDrop {
                    ts_ns,
                    netns,
                    family: if v6 { Family::V6 } else { Family::V4 },
                    local,
                    local_port,
                    remote,
                    remote_port,
                    reason,
                    kernel_reason,
                    syn: flags & 0x04 != 0,
                    ack: flags & 0x08 != 0,
                    rx_state,
                    suppressed,
                }));
            }
            _ => return Err(FormatError::Corrupt("unknown record tag")),
        }
    }
    Ok(())
}

/// The flag bits a snapshot socket may have (netns, owner, timer, v6,
/// cgroup): any other is damage, never a field skipped unread.
const SOCKET_FLAGS: u8 = 0x1f;

pub fn decode_snapshot(payload: &[u8]) -> Result<Record, FormatError> {
    let mut c = Cursor::new(payload);
    let ts_ns = c.varint()?;
    let n_ns = c.varint()?;
    if n_ns > payload.len() as u64 {
        return Err(FormatError::Corrupt("namespace count"));
    }
    let namespaces = (0..n_ns).map(|_| c.u32()).collect::<Result<Vec<_>, _>>()?;
    let n = c.varint()?;
    if n > payload.len() as u64 {
        return Err(FormatError::Corrupt("socket count"));
    }
    // A socket takes at least 16 bytes: never trust the count for memory.
    let mut sockets = Vec::with_capacity((n as usize).min(payload.len() / 16));
    for _ in 0..n {
        let flags = c.u8()?;
        if flags & !SOCKET_FLAGS != 0 {
            return Err(FormatError::Corrupt("unknown snapshot socket flags"));
        }
        let netns = (flags & 0x01 != 0).then(|| c.u32()).transpose()?;
        let v6 = flags & 0x08 != 0;
        let (saddr, daddr, sport, dport) = c.endpoints(v6)?;
        let state = c.state()?;
        let inode = c.varint()?;
        let cookie = c.varint()?;
        let owner = if flags & 0x02 != 0 {
            Some(SeenOwner {
                pid: u32_of(c.varint()?)?,
                comm: c.comm()?,
            })
        } else {
            None
        };
        let timer_left_ms = (flags & 0x04 != 0)
            .then(|| u32_of(c.varint()?))
            .transpose()?;
        let cgroup = (flags & 0x10 != 0).then(|| c.varint()).transpose()?;
        sockets.push(SeenSocket {
            netns,
            family: if v6 { Family::V6 } else { Family::V4 },
            saddr,
            sport,
            daddr,
            dport,
            state,
            inode,
            owner,
            timer_left_ms,
            cookie,
            cgroup,
        });
    }
    let facts = if c.is_empty() {
        None
    } else {
        let len = c.varint()?;
        let json =
            c.bytes(usize::try_from(len).map_err(|_| FormatError::Corrupt("facts length"))?)?;
        let facts: NetFacts =
            serde_json::from_slice(json).map_err(|_| FormatError::Corrupt("facts"))?;
        Some(Box::new(facts))
    };
    if !c.is_empty() {
        return Err(FormatError::Corrupt("trailing bytes in snapshot"));
    }
    Ok(Record::Snapshot {
        ts_ns,
        namespaces,
        sockets,
        facts,
    })
}

/// Parses the header at the start of `bytes`; returns it and its length.
pub fn decode_header(bytes: &[u8]) -> Result<(Header, usize), FormatError> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    if bytes.len() < HEADER_FIXED {
        return Err(FormatError::Header("cut short".into()));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version > FORMAT_VERSION {
        return Err(FormatError::NewerVersion(version));
    }
    if version == 0 {
        return Err(FormatError::Header("version 0".into()));
    }
    let len = u32::from_le_bytes(bytes[10..14].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(bytes[14..18].try_into().expect("4"));
    if len > MAX_BLOCK as usize {
        return Err(FormatError::Header("length out of range".into()));
    }
    let json = bytes
        .get(HEADER_FIXED..HEADER_FIXED + len)
        .ok_or_else(|| FormatError::Header("cut short".into()))?;
    if crc32fast::hash(json) != crc {
        return Err(FormatError::Header("checksum mismatch".into()));
    }
    let h: Header = serde_json::from_slice(json).map_err(|e| FormatError::Header(e.to_string()))?;
    Ok((h, HEADER_FIXED + len))
}

/// A block's fixed part: kind, compressed length, raw length, checksum.
pub fn decode_block_head(b: &[u8; BLOCK_FIXED]) -> Result<(u8, u32, u32, u32), FormatError> {
    if &b[..3] != b"BLK" {
        return Err(FormatError::Corrupt("bad block magic"));
    }
    let kind = b[3];
    if kind != KIND_EVENTS && kind != KIND_SNAPSHOT {
        return Err(FormatError::Corrupt("unknown block kind"));
    }
    let len = u32::from_le_bytes(b[4..8].try_into().expect("4"));
    let raw = u32::from_le_bytes(b[8..12].try_into().expect("4"));
    let crc = u32::from_le_bytes(b[12..16].try_into().expect("4"));
    if len > MAX_BLOCK || raw > MAX_BLOCK {
        return Err(FormatError::Corrupt("block length out of range"));
    }
    Ok((kind, len, raw, crc))
}
