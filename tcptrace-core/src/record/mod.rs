//! Recordings: the file format ([`format`], with its wire format in rustdoc),
//! a block writer and a streaming reader that survives files cut at any byte.
//! Compression (zstd, one frame per block) happens here; the clock and the
//! decision of when to flush belong to the caller.

mod apply;
pub mod format;

pub use apply::RecordApplier;

use std::{
    io::{self, Read, Write},
    path::Path,
    sync::Arc,
};

use anyhow::Result;

use format::{BLOCK_FIXED, BlockEncoder, KIND_EVENTS, KIND_SNAPSHOT};
pub use format::{FormatError, Header, Record};

use crate::{
    listeners::{ListenerSample, NetnsDropCounters, SynDrop},
    model::{Event, Lost, SeenSocket},
    stacks::{Stack, StackKey},
    workload::Workload,
};
use rustc_hash::FxHashMap;

/// zstd level 1: the recorder compresses while the box is at its busiest,
/// and at level 3 compression was 46% of `record`'s CPU (docs/benchmarks.md:
/// level 1 takes about half that for files a little larger).
const ZSTD_LEVEL: i32 = 1;
/// An events block is written once its payload reaches this size (or when
/// the caller flushes, at least every second).
pub const BLOCK_TARGET: usize = 1 << 20;

/// Stacks a file keeps to write again after each snapshot, at most: past
/// them a new stack is written once, where it is first named (a host
/// whose short-lived processes each leak with stacks of their own would
/// otherwise grow the recorder, and every snapshot's repeat, for ever).
pub const MAX_REPEATED_STACKS: usize = 4096;

/// Writes a recording: header, then blocks.
#[derive(Debug)]
pub struct Writer<W: Write> {
    w: W,
    enc: BlockEncoder,
    /// Bytes written so far (header included).
    pub bytes: u64,
    /// Events written (in flushed or pending blocks).
    pub events: u64,
    /// The workloads written to this file that are still in use, by
    /// cgroup id, with the snapshot period they were last used in: the
    /// ones used since the last snapshot (or by its sockets) are written
    /// again after each snapshot block, the others forgotten then (they
    /// are in the file already; one used again is simply written again),
    /// so a host with churning containers does not grow the recorder.
    workloads: FxHashMap<u64, (Arc<Workload>, u64)>,
    /// The current snapshot period (one more after each snapshot).
    period: u64,
    /// Every stack written to this file, by key: written again after each
    /// snapshot block.
    stacks: FxHashMap<StackKey, Arc<Stack>>,
}

impl<W: Write> Writer<W> {
    pub fn new(mut w: W, header: &Header) -> io::Result<Self> {
        let h = format::encode_header(header);
        w.write_all(&h)?;
        w.flush()?;
        Ok(Self {
            w,
            enc: BlockEncoder::default(),
            bytes: h.len() as u64,
            events: 0,
            workloads: FxHashMap::default(),
            period: 0,
            stacks: FxHashMap::default(),
        })
    }

    /// Names cgroup `id` for the events that follow: a workload record is
    /// written unless this one was already (the same `Arc`, or an equal
    /// workload); a changed one is written again. Call it before the
    /// first event whose owner is in `id`. Cheap when known: one lookup.
    pub fn workload(&mut self, id: u64, w: &Arc<Workload>) {
        if let Some((known, used)) = self.workloads.get_mut(&id)
            && (Arc::ptr_eq(known, w) || **known == **w)
        {
            *used = self.period;
            return;
        }
        if self.enc.workload(id, w) {
            self.workloads.insert(id, (Arc::clone(w), self.period));
        }
    }

    /// Names stack `key` (version 5): a stack record is written unless
    /// this one was already (the same `Arc`, or an equal stack); a changed
    /// one is written again. Names are looked up at snapshot time, so it
    /// may come before or after the events that use it. Cheap when known:
    /// one lookup.
    pub fn stack(&mut self, key: StackKey, stack: &Arc<Stack>) {
        if let Some(known) = self.stacks.get(&key)
            && (Arc::ptr_eq(known, stack) || **known == **stack)
        {
            return;
        }
        if self.enc.stack(key, stack) && self.stacks.len() < MAX_REPEATED_STACKS {
            self.stacks.insert(key, Arc::clone(stack));
        }
    }

    /// Stacks written to this file so far.
    pub fn stacks_written(&self) -> usize {
        self.stacks.len()
    }

    /// Workloads written to this file so far.
    pub fn workloads_written(&self) -> usize {
        self.workloads.len()
    }

    /// The distinct cgroup ids of `sockets` (the sock_diag ones of a
    /// snapshot about to be written) that this file has not named yet, in
    /// order: name each ([`Self::workload`]) before [`Self::snapshot`], so
    /// that the workload records precede the sockets that use them, as
    /// they precede events.
    pub fn unnamed_cgroups(&self, sockets: &[SeenSocket]) -> Vec<u64> {
        let mut ids: Vec<u64> = sockets
            .iter()
            .filter_map(|s| s.cgroup)
            .filter(|id| *id != 0 && !self.workloads.contains_key(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn event(&mut self, e: &Event) -> io::Result<()> {
        self.enc.event(e);
        self.events += 1;
        if self.enc.buf.len() >= BLOCK_TARGET {
            self.flush()?;
        }
        Ok(())
    }

    /// A listener sample (version 6): every listener of the sampled
    /// namespaces and their drop counters. Name the listeners' cgroups
    /// first ([`Self::names_cgroup`], [`Self::workload`]).
    pub fn listeners(
        &mut self,
        ts_ns: u64,
        listeners: &[ListenerSample],
        counters: &[NetnsDropCounters],
    ) -> io::Result<()> {
        self.enc.listeners(ts_ns, listeners, counters);
        self.flush_if_full()
    }

    /// A connection attempt the kernel dropped and reported (version 6).
    pub fn drop_record(&mut self, d: &SynDrop) -> io::Result<()> {
        self.enc.drop_record(d);
        self.flush_if_full()
    }

    /// Whether cgroup `id` was named in this file (and is still repeated
    /// after snapshots).
    pub fn names_cgroup(&self, id: u64) -> bool {
        self.workloads.contains_key(&id)
    }

    pub fn lost(&mut self, ts_ns: u64, lost: &Lost) -> io::Result<()> {
        self.enc.lost(ts_ns, lost);
        Ok(())
    }

    /// Writes the pending events, then a snapshot block.
    pub fn snapshot(
        &mut self,
        ts_ns: u64,
        namespaces: &[u32],
        sockets: &[SeenSocket],
        facts: Option<&crate::netfacts::NetFacts>,
    ) -> io::Result<()> {
        self.flush()?;
        let raw = format::encode_snapshot(ts_ns, namespaces, sockets, facts);
        self.write_block(KIND_SNAPSHOT, &raw)?;
        // The workloads in use again, first in the next events block: a
        // reader starting here (or past damage) still names every socket
        // of the snapshot and every owner seen since the last one.
        for id in sockets.iter().filter_map(|s| s.cgroup) {
            if let Some((_, used)) = self.workloads.get_mut(&id) {
                *used = self.period;
            }
        }
        let period = self.period;
        self.workloads.retain(|_, (_, used)| *used == period);
        self.period += 1;
        let mut kept: Vec<(u64, Arc<Workload>)> = self
            .workloads
            .iter()
            .map(|(id, (w, _))| (*id, Arc::clone(w)))
            .collect();
        kept.sort_unstable_by_key(|(id, _)| *id);
        for (id, w) in kept {
            self.enc.workload(id, &w);
            self.flush_if_full()?;
        }
        // And every stack (a reader starting here names them too).
        let mut keys: Vec<StackKey> = self.stacks.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            self.enc.stack(key, &self.stacks[&key]);
            self.flush_if_full()?;
        }
        Ok(())
    }

    fn write_block(&mut self, kind: u8, raw: &[u8]) -> io::Result<()> {
        let compressed = zstd::bulk::compress(raw, ZSTD_LEVEL)?;
        let block = format::encode_block(kind, raw.len(), &compressed);
        self.w.write_all(&block)?;
        self.w.flush()?;
        self.bytes += block.len() as u64;
        Ok(())
    }

    /// Writes the pending records as a block once they reach
    /// [`BLOCK_TARGET`]: after a run of name records (workloads, stacks:
    /// up to 64 KiB each), so that no block outgrows what readers take.
    pub fn flush_if_full(&mut self) -> io::Result<()> {
        if self.enc.buf.len() >= BLOCK_TARGET {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes pending records as one block (nothing if there are none).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.enc.is_empty() {
            return Ok(());
        }
        let raw = self.enc.take();
        self.write_block(KIND_EVENTS, &raw)
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush()?;
        Ok(self.w)
    }
}

/// Where reading stopped early: the offset of the first unreadable byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub offset: u64,
    pub error: FormatError,
}

/// A damaged stretch the reader skipped: from the damaged block at
/// `offset`, `bytes` bytes, up to the next intact block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub offset: u64,
    pub bytes: u64,
    pub error: FormatError,
}

impl Skipped {
    /// The one-line warning for a damaged stretch.
    pub fn warning(&self, path: &Path) -> String {
        format!(
            "{}: {} at byte {}: skipped {} bytes to the next intact block (its events are missing)",
            path.display(),
            self.error,
            self.offset,
            self.bytes
        )
    }
}

/// Bytes of candidate blocks a reader examines while looking for the next
/// intact block after a damaged one; past it the file is treated as cut
/// there. Each byte is examined at most once per candidate and no candidate
/// copies the pending bytes, so a crafted file full of fake block heads
/// costs at most this much checksumming, not a quadratic scan.
const RESYNC_BUDGET: usize = 256 << 20;
/// Damaged stretches named one by one in warnings; the rest are counted.
pub const MAX_WARNINGS: usize = 10;
/// What a resynchronising reader reads at a time.
const RESYNC_CHUNK: usize = 64 << 10;
/// The first bytes of a zstd frame: every block payload starts with them.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Reads a recording block by block ([`Reader::next_block`], the fast path)
/// or record by record (the iterator). A damaged block (bad checksum,
/// corrupt head, does not decompress or decode) is skipped: the reader
/// looks for the next intact block head and goes on from there, noting
/// the stretch in [`Reader::skipped`]. A file cut short ends the stream;
/// [`Reader::cut`] then says where and why. Buffers are reused from block
/// to block: reading allocates nothing per record.
pub struct Reader<R: Read> {
    r: R,
    pub header: Header,
    /// File offset of the next byte to read.
    offset: u64,
    /// The current block's records; those before `pos` were handed out.
    block: Vec<Record>,
    pos: usize,
    payload: Vec<u8>,
    raw: Vec<u8>,
    zstd: zstd::bulk::Decompressor<'static>,
    /// Bytes read from `r` but not consumed yet (from `pending_pos`): only
    /// while resynchronising after a damaged block. Those from `mark` on
    /// are kept, so a failed attempt at a block rewinds instead of copying.
    pending: Vec<u8>,
    pending_pos: usize,
    mark: usize,
    pub cut: Option<Cut>,
    pub skipped: Vec<Skipped>,
    done: bool,
}

impl<R: Read> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("header", &self.header)
            .field("offset", &self.offset)
            .field("cut", &self.cut)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

/// A file that is not a readable recording: exit code 2, one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRecording(pub String);

/// Reads up to `buf.len()` bytes; returns how many (less only at the end).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> Reader<R> {
    pub fn new(mut r: R) -> Result<Self, FormatError> {
        let mut fixed = [0u8; format::HEADER_FIXED];
        let n = read_full(&mut r, &mut fixed).map_err(|e| FormatError::Header(e.to_string()))?;
        if n < 8 || &fixed[..8] != format::MAGIC {
            return Err(FormatError::Magic);
        }
        if n < fixed.len() {
            return Err(FormatError::Header("cut short".into()));
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if version > format::FORMAT_VERSION {
            return Err(FormatError::NewerVersion(version));
        }
        let len = u32::from_le_bytes(fixed[10..14].try_into().expect("4")) as usize;
        if len > format::MAX_BLOCK as usize {
            return Err(FormatError::Header("length out of range".into()));
        }
        let mut all = fixed.to_vec();
        all.resize(fixed.len() + len, 0);
        let got = read_full(&mut r, &mut all[fixed.len()..])
            .map_err(|e| FormatError::Header(e.to_string()))?;
        if got < len {
            return Err(FormatError::Header("cut short".into()));
        }
        let (header, used) = format::decode_header(&all)?;
        Ok(Self {
            r,
            header,
            offset: used as u64,
            block: Vec::new(),
            pos: 0,
            payload: Vec::new(),
            raw: Vec::new(),
            zstd: zstd::bulk::Decompressor::new()
                .map_err(|e| FormatError::Header(format!("zstd: {e}")))?,
            pending: Vec::new(),
            pending_pos: 0,
            mark: 0,
            cut: None,
            skipped: Vec::new(),
            done: false,
        })
    }

    /// One warning line per damaged stretch skipped (the first
    /// [`MAX_WARNINGS`], then how many more) and for a cut end.
    pub fn warnings(&self, path: &Path) -> Vec<String> {
        let mut out: Vec<String> = self
            .skipped
            .iter()
            .take(MAX_WARNINGS)
            .map(|s| s.warning(path))
            .collect();
        if self.skipped.len() > MAX_WARNINGS {
            let rest = &self.skipped[MAX_WARNINGS..];
            out.push(format!(
                "{}: {} more damaged stretches skipped ({} bytes)",
                path.display(),
                rest.len(),
                rest.iter().map(|s| s.bytes).fold(0u64, u64::saturating_add)
            ));
        }
        out.extend(self.cut.iter().map(|c| c.warning(path)));
        out
    }

    /// The next block's records, all at once (those not yet taken by the
    /// iterator first); `None` at the end.
    pub fn next_block(&mut self) -> Option<&[Record]> {
        if self.pos >= self.block.len() && (self.done || !self.read_block()) {
            return None;
        }
        let from = self.pos;
        self.pos = self.block.len();
        Some(&self.block[from..])
    }

    /// The next block's records as an owned vector, leaving `spare` (emptied)
    /// as the reader's buffer: hands blocks to another thread without
    /// copying. `None` at the end.
    pub fn next_block_owned(&mut self, mut spare: Vec<Record>) -> Option<Vec<Record>> {
        if self.pos >= self.block.len() && (self.done || !self.read_block()) {
            return None;
        }
        spare.clear();
        let mut out = std::mem::replace(&mut self.block, spare);
        out.drain(..self.pos);
        self.pos = 0;
        Some(out)
    }

    /// Fills `buf`; returns how many bytes it got (fewer only at the end; a
    /// read error counts as the end). While bytes are pending, they serve,
    /// extended from the stream as needed (so a failed attempt can rewind);
    /// otherwise the stream fills `buf` directly.
    fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = if self.pending_pos < self.pending.len() {
            while self.pending.len() - self.pending_pos < buf.len() && self.read_more() {}
            let queued = &self.pending[self.pending_pos..];
            let n = queued.len().min(buf.len());
            buf[..n].copy_from_slice(&queued[..n]);
            self.pending_pos += n;
            n
        } else {
            self.pending.clear();
            (self.pending_pos, self.mark) = (0, 0);
            read_full(&mut self.r, buf).unwrap_or(0)
        };
        self.offset += n as u64;
        n
    }

    /// Drops `n` pending bytes.
    fn skip(&mut self, n: usize) {
        let n = n.min(self.pending.len() - self.pending_pos);
        self.pending_pos += n;
        self.offset += n as u64;
    }

    /// Appends up to [`RESYNC_CHUNK`] bytes of the stream to the pending
    /// ones (dropping those before `mark`); false at the end.
    fn read_more(&mut self) -> bool {
        if self.mark > 0 {
            self.pending.drain(..self.mark);
            self.pending_pos -= self.mark;
            self.mark = 0;
        }
        let at = self.pending.len();
        self.pending.resize(at + RESYNC_CHUNK, 0);
        let n = read_full(&mut self.r, &mut self.pending[at..]).unwrap_or(0);
        self.pending.truncate(at + n);
        n > 0
    }

    /// Skips to the next place that looks like a block head (`BLK`, a known
    /// kind, a zstd frame after the head); false when the file ends first.
    fn seek_candidate(&mut self) -> bool {
        const LOOK: usize = BLOCK_FIXED + ZSTD_MAGIC.len();
        loop {
            self.mark = self.pending_pos;
            let queued = &self.pending[self.pending_pos..];
            let found = queued
                .windows(4)
                .position(|w| &w[..3] == b"BLK" && (w[3] == KIND_EVENTS || w[3] == KIND_SNAPSHOT));
            match found {
                Some(i) if queued.len() >= i + LOOK => {
                    if queued[i + BLOCK_FIXED..i + LOOK] == ZSTD_MAGIC {
                        self.skip(i);
                        return true;
                    }
                    self.skip(i + 1);
                }
                Some(i) => {
                    // Too close to the end of what was read to check: read on.
                    self.skip(i);
                    if !self.read_more() {
                        return false;
                    }
                }
                None => {
                    // A head may straddle the end of what was read.
                    self.skip(queued.len().saturating_sub(3));
                    if !self.read_more() {
                        return false;
                    }
                }
            }
        }
    }

    /// Reads the next block into `block`; false at the end. A damaged block
    /// is skipped up to the next intact one; a cut or unrecoverable end
    /// stops the stream at the first damaged byte.
    fn read_block(&mut self) -> bool {
        let mut damaged: Option<(u64, FormatError)> = None;
        let mut budget = RESYNC_BUDGET;
        loop {
            let at = self.offset;
            match self.try_block() {
                Ok(true) => {
                    if let Some((offset, error)) = damaged {
                        self.skipped.push(Skipped {
                            offset,
                            bytes: at - offset,
                            error,
                        });
                    }
                    return true;
                }
                Ok(false) => {
                    if let Some((offset, error)) = damaged {
                        self.cut = Some(Cut { offset, error });
                    }
                    self.done = true;
                    return false;
                }
                Err((error, examined)) => {
                    let (offset, error) = damaged.get_or_insert((at, error)).clone();
                    budget = budget.saturating_sub(examined.max(1));
                    self.skip(1);
                    if budget == 0 || !self.seek_candidate() {
                        self.cut = Some(Cut { offset, error });
                        self.done = true;
                        return false;
                    }
                }
            }
        }
    }

    /// One block at the current offset: `Ok(true)` read, `Ok(false)` at
    /// the end of the file, `Err` damaged, with what it cost (the bytes read,
    /// or the length its head claimed if larger: the buffer is sized to it),
    /// every byte read left pending from the block's first byte.
    fn try_block(&mut self) -> Result<bool, (FormatError, usize)> {
        let from_pending = self.pending_pos < self.pending.len();
        self.mark = self.pending_pos;
        let start = self.offset;
        let mut head = [0u8; BLOCK_FIXED];
        let n = self.fill(&mut head);
        if n == 0 {
            return Ok(false);
        }
        let mut payload = std::mem::take(&mut self.payload);
        let mut claimed = 0;
        let checked = if n < BLOCK_FIXED {
            payload.clear();
            Err(FormatError::Truncated)
        } else {
            match format::decode_block_head(&head) {
                Err(e) => {
                    payload.clear();
                    Err(e)
                }
                Ok((kind, len, raw_len, crc)) => {
                    claimed = len as usize;
                    payload.resize(len as usize, 0);
                    let got = self.fill(&mut payload);
                    payload.truncate(got);
                    if got < len as usize {
                        Err(FormatError::Truncated)
                    } else if crc32fast::hash(&payload) != crc {
                        Err(FormatError::Corrupt("checksum mismatch"))
                    } else {
                        self.decode(kind, &payload, raw_len)
                    }
                }
            }
        };
        let result = match checked {
            Ok(()) => Ok(true),
            Err(e) => {
                let read = (self.offset - start) as usize;
                if from_pending {
                    // Everything since the mark is still pending: rewind.
                    self.pending_pos = self.mark;
                } else {
                    // Read straight from the stream: keep it (once).
                    let mut back = Vec::with_capacity(read);
                    back.extend_from_slice(&head[..n]);
                    back.extend_from_slice(&payload);
                    self.pending = back;
                    (self.pending_pos, self.mark) = (0, 0);
                }
                self.offset = start;
                Err((e, read.max(claimed)))
            }
        };
        self.payload = payload;
        result
    }

    /// Decompresses and decodes one block's payload into `block`; nothing of
    /// a damaged block is handed out.
    fn decode(&mut self, kind: u8, payload: &[u8], raw_len: u32) -> Result<(), FormatError> {
        self.raw.clear();
        self.raw.reserve(raw_len as usize);
        match self.zstd.decompress_to_buffer(payload, &mut self.raw) {
            Ok(n) if n == raw_len as usize => {}
            _ => return Err(FormatError::Corrupt("does not decompress")),
        }
        self.block.clear();
        self.pos = 0;
        let decoded = if kind == KIND_EVENTS {
            format::decode_events(&self.raw, &mut self.block)
        } else {
            format::decode_snapshot(&self.raw).map(|r| self.block.push(r))
        };
        if decoded.is_err() {
            self.block.clear();
        }
        decoded
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        while self.pos >= self.block.len() {
            if self.done || !self.read_block() {
                return None;
            }
        }
        // Taken by value; a small placeholder stays behind.
        let placeholder = Record::Lost {
            ts_ns: 0,
            lost: Lost::default(),
        };
        let r = std::mem::replace(&mut self.block[self.pos], placeholder);
        self.pos += 1;
        Some(r)
    }
}

impl Cut {
    /// The one-line warning for a recording that ends early.
    pub fn warning(&self, path: &Path) -> String {
        format!(
            "{}: {} at byte {}; read everything before it",
            path.display(),
            self.error,
            self.offset
        )
    }
}

#[cfg(test)]
mod tests;
