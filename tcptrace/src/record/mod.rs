//! Recordings: the file format ([`format`], with its wire format in rustdoc),
//! a block writer and a streaming reader that survives files cut at any byte.
//! Compression (zstd, one frame per block) happens here; the clock and the
//! decision of when to flush belong to the caller.

pub mod format;

use std::{
    fs::File,
    io::{self, BufReader, Read, Write},
    path::Path,
};

use anyhow::Result;

use format::{BLOCK_FIXED, BlockEncoder, KIND_EVENTS, KIND_SNAPSHOT};
pub use format::{FormatError, Header, Record};

use crate::model::{Event, Lost, SeenSocket};

/// zstd level: fast, and about 4x on event blocks.
const ZSTD_LEVEL: i32 = 3;
/// An events block is written once its payload reaches this size (or when
/// the caller flushes, at least every second).
pub const BLOCK_TARGET: usize = 1 << 20;

/// Writes a recording: header, then blocks.
#[derive(Debug)]
pub struct Writer<W: Write> {
    w: W,
    enc: BlockEncoder,
    /// Bytes written so far (header included).
    pub bytes: u64,
    /// Events written (in flushed or pending blocks).
    pub events: u64,
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
        })
    }

    pub fn event(&mut self, e: &Event) -> io::Result<()> {
        self.enc.event(e);
        self.events += 1;
        if self.enc.buf.len() >= BLOCK_TARGET {
            self.flush()?;
        }
        Ok(())
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
    ) -> io::Result<()> {
        self.flush()?;
        let raw = format::encode_snapshot(ts_ns, namespaces, sockets);
        self.write_block(KIND_SNAPSHOT, &raw)
    }

    fn write_block(&mut self, kind: u8, raw: &[u8]) -> io::Result<()> {
        let compressed = zstd::bulk::compress(raw, ZSTD_LEVEL)?;
        let block = format::encode_block(kind, raw.len(), &compressed);
        self.w.write_all(&block)?;
        self.w.flush()?;
        self.bytes += block.len() as u64;
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

/// Reads a recording block by block ([`Reader::next_block`], the fast path)
/// or record by record (the iterator). A cut or corrupt block ends the
/// stream; [`Reader::cut`] then says where and why. Buffers are reused from
/// block to block: reading allocates nothing per record.
pub struct Reader<R: Read> {
    r: R,
    pub header: Header,
    offset: u64,
    /// The current block's records; those before `pos` were handed out.
    block: Vec<Record>,
    pos: usize,
    payload: Vec<u8>,
    raw: Vec<u8>,
    zstd: zstd::bulk::Decompressor<'static>,
    pub cut: Option<Cut>,
    done: bool,
}

impl<R: Read> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("header", &self.header)
            .field("offset", &self.offset)
            .field("cut", &self.cut)
            .finish_non_exhaustive()
    }
}

impl Reader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path)
            .map_err(|e| BadRecording(format!("cannot open {}: {e}", path.display())))?;
        Reader::new(BufReader::with_capacity(1 << 20, f))
            .map_err(|e| anyhow::Error::new(BadRecording(format!("{}: {e}", path.display()))))
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
            cut: None,
            done: false,
        })
    }

    /// The next block's records, all at once (those not yet taken by the
    /// iterator first); `None` at the end or at a damaged block.
    pub fn next_block(&mut self) -> Option<&[Record]> {
        if self.pos >= self.block.len() && (self.done || !self.read_block()) {
            return None;
        }
        let from = self.pos;
        self.pos = self.block.len();
        Some(&self.block[from..])
    }

    fn stop(&mut self, error: FormatError) {
        self.cut = Some(Cut {
            offset: self.offset,
            error,
        });
        self.done = true;
    }

    /// The next block's records as an owned vector, leaving `spare` (emptied)
    /// as the reader's buffer: hands blocks to another thread without
    /// copying. `None` at the end or at a damaged block.
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

    /// Reads the next block into `block`; false at the end.
    fn read_block(&mut self) -> bool {
        let mut head = [0u8; BLOCK_FIXED];
        let n = match read_full(&mut self.r, &mut head) {
            Ok(n) => n,
            Err(_) => {
                self.stop(FormatError::Truncated);
                return false;
            }
        };
        if n == 0 {
            self.done = true;
            return false;
        }
        if n < BLOCK_FIXED {
            self.stop(FormatError::Truncated);
            return false;
        }
        let (kind, len, raw_len, crc) = match format::decode_block_head(&head) {
            Ok(v) => v,
            Err(e) => {
                self.stop(e);
                return false;
            }
        };
        self.payload.resize(len as usize, 0);
        match read_full(&mut self.r, &mut self.payload) {
            Ok(k) if k == self.payload.len() => {}
            _ => {
                self.stop(FormatError::Truncated);
                return false;
            }
        }
        if crc32fast::hash(&self.payload) != crc {
            self.stop(FormatError::Corrupt("checksum mismatch"));
            return false;
        }
        self.raw.clear();
        self.raw.reserve(raw_len as usize);
        match self.zstd.decompress_to_buffer(&self.payload, &mut self.raw) {
            Ok(n) if n == raw_len as usize => {}
            _ => {
                self.stop(FormatError::Corrupt("does not decompress"));
                return false;
            }
        }
        self.block.clear();
        self.pos = 0;
        let decoded = if kind == KIND_EVENTS {
            format::decode_events(&self.raw, &mut self.block)
        } else {
            format::decode_snapshot(&self.raw).map(|r| self.block.push(r))
        };
        if let Err(e) = decoded {
            // Nothing of a damaged block is handed out.
            self.block.clear();
            self.stop(e);
            return false;
        }
        self.offset += (BLOCK_FIXED + len as usize) as u64;
        true
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
