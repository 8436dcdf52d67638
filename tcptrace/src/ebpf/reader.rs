//! Copies records out of the ring buffer on a thread of its own, so that
//! nothing the consumer does can overflow the ring. The commands stall their
//! draining thread for work that grows with the host: `top` refreshing a
//! million sockets (0.24 s), a reconciliation dumping them through
//! sock_diag, `record` compressing a block. Meanwhile a saturated host fills
//! the ring at ~65-110 MB/s, and a 16 MiB ring (the default; resident from
//! the start, mapped twice) lasts 0.15-0.25 s. The
//! reader thread (real-time, like the consumer: see `crate::sched`) only
//! copies, so it keeps the ring near empty and the records wait in memory
//! instead, in batches, until the consumer takes them.
//!
//! Order is kept: the reader sends a batch while holding the ring, so every
//! batch queued predates what is still in the ring, and [`Reader::drain`]
//! takes the queued batches before it reads the ring itself. A drain
//! therefore returns everything produced before it was called (what
//! reconciliation relies on).
//!
//! Memory is bounded: past `limit` bytes queued, the reader stops copying,
//! the ring fills and the kernel counts what it drops (`ring_full`), so
//! losses stay counted.
//!
//! Batches are recycled: the consumer hands each emptied batch back (up to
//! [`SPARE_BATCHES`] of them), so the reader writes into memory already
//! mapped instead of allocating, and faulting in, 256 KiB every few
//! milliseconds.

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};

/// How often the reader looks at the ring. At the box's maximum event rate
/// the default ring holds about a second.
const POLL: Duration = Duration::from_millis(5);

/// Bytes per batch handed to the consumer.
const BATCH_BYTES: usize = 256 << 10;

/// Batch framing: each record is its length (u32, native endian, in 8
/// bytes) then its bytes, padded to a multiple of 8: records stay 8-byte
/// aligned as in the ring, so they decode in place (no copy of the record).
const LEN_BYTES: usize = 8;
const ALIGN: usize = 8;

/// Emptied batches kept for reuse, at most (the reader allocates beyond).
const SPARE_BATCHES: usize = 8;

struct Shared {
    ring: Mutex<RingBuf<MapData>>,
    /// Bytes in batches sent and not yet taken.
    queued: AtomicUsize,
    limit: usize,
    stop: AtomicBool,
    /// Emptied batches handed back by the consumer (capacity kept).
    spare: Mutex<Vec<Vec<u8>>>,
}

impl Shared {
    /// An empty batch with room for [`BATCH_BYTES`]: a spare one if any.
    fn empty_batch(&self) -> Vec<u8> {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        spare.unwrap_or_else(|| Vec::with_capacity(BATCH_BYTES + RECORD_ROOM))
    }

    /// Keeps an emptied batch for the reader to fill again.
    fn give_back(&self, mut batch: Vec<u8>) {
        batch.clear();
        let mut spare = self
            .spare
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if spare.len() < SPARE_BATCHES {
            spare.push(batch);
        }
    }
}

/// Room past [`BATCH_BYTES`] for the record that crosses it (a batch is
/// sent once it holds at least `BATCH_BYTES`), so a batch never grows.
const RECORD_ROOM: usize = 4096;

/// The ring buffer and the thread copying out of it.
pub struct Reader {
    shared: Arc<Shared>,
    batches: mpsc::Receiver<Vec<u8>>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts the copying thread; it queues at most `limit` bytes and runs
    /// real-time when `realtime`.
    pub fn start(ring: RingBuf<MapData>, limit: usize, realtime: bool) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            ring: Mutex::new(ring),
            queued: AtomicUsize::new(0),
            limit,
            stop: AtomicBool::new(false),
            spare: Mutex::new(Vec::new()),
        });
        let (tx, batches) = mpsc::channel();
        let thread = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("tcptrace-ring".into())
                .spawn(move || {
                    crate::sched::drain_priority(realtime);
                    copy_loop(&shared, &tx);
                })?
        };
        Ok(Self {
            shared,
            batches,
            thread: Some(thread),
        })
    }

    /// Calls `f` with every record produced so far, oldest first; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        // The backlog first, without holding the reader up...
        let mut n = self.take_batches(&mut f);
        // ...then, holding the ring, what was queued since and what is left in it.
        let mut ring = lock(&self.shared.ring);
        n += self.take_batches(&mut f);
        while let Some(item) = ring.next() {
            f(&item);
            n += 1;
        }
        n
    }

    fn take_batches(&self, f: &mut impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Ok(batch) = self.batches.try_recv() {
            self.shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            n += for_each_record(&batch, &mut *f);
            self.shared.give_back(batch);
        }
        n
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(ring: &Mutex<RingBuf<MapData>>) -> MutexGuard<'_, RingBuf<MapData>> {
    // A panic while holding the ring cannot leave it inconsistent: the
    // consumer position is advanced per record by the ring itself.
    ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn copy_loop(shared: &Shared, tx: &mpsc::Sender<Vec<u8>>) {
    while !shared.stop.load(Ordering::Relaxed) {
        thread::sleep(POLL);
        let mut ring = lock(&shared.ring);
        let mut batch: Option<Vec<u8>> = None;
        loop {
            let pending = batch.as_ref().map_or(0, Vec::len);
            if shared.queued.load(Ordering::Relaxed) + pending >= shared.limit {
                break;
            }
            let Some(item) = ring.next() else { break };
            let b = batch.get_or_insert_with(|| shared.empty_batch());
            append_record(b, &item);
            if b.len() >= BATCH_BYTES
                && let Some(full) = batch.take()
            {
                send(shared, tx, full);
            }
        }
        if let Some(b) = batch.filter(|b| !b.is_empty()) {
            send(shared, tx, b);
        }
        drop(ring);
    }
}

fn send(shared: &Shared, tx: &mpsc::Sender<Vec<u8>>, batch: Vec<u8>) {
    shared.queued.fetch_add(batch.len(), Ordering::Relaxed);
    // The receiver lives as long as the thread is joined by its owner.
    let _ = tx.send(batch);
}

/// Bytes a record of `len` bytes takes in a batch after its length.
fn padded(len: usize) -> usize {
    len.next_multiple_of(ALIGN)
}

fn append_record(batch: &mut Vec<u8>, record: &[u8]) {
    let mut len = [0u8; LEN_BYTES];
    len[..4].copy_from_slice(&(record.len() as u32).to_ne_bytes());
    batch.extend_from_slice(&len);
    batch.extend_from_slice(record);
    batch.resize(batch.len() + padded(record.len()) - record.len(), 0);
}

/// Calls `f` with each record of a batch; returns how many.
fn for_each_record(mut batch: &[u8], mut f: impl FnMut(&[u8])) -> usize {
    let mut n = 0;
    while let Some((len, rest)) = batch.split_first_chunk::<LEN_BYTES>() {
        let len = u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (record, _) = rest.split_at(len.min(rest.len()));
        f(record);
        n += 1;
        batch = rest.get(padded(len)..).unwrap_or_default();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_frame_records_of_any_length() {
        let records: Vec<Vec<u8>> = vec![vec![], vec![1], vec![7; 120], vec![9; 3]];
        let mut batch = Vec::new();
        for r in &records {
            append_record(&mut batch, r);
        }
        let mut seen = Vec::new();
        let n = for_each_record(&batch, |r| seen.push(r.to_vec()));
        assert_eq!(n, records.len());
        assert_eq!(seen, records);
    }

    #[test]
    fn records_keep_the_rings_8_byte_alignment_in_a_batch() {
        let mut batch = Vec::with_capacity(1024);
        for len in [120, 3, 0, 120, 17, 120] {
            append_record(&mut batch, &vec![5; len]);
        }
        let base = batch.as_ptr() as usize;
        let n = for_each_record(&batch, |r| {
            assert_eq!((r.as_ptr() as usize - base) % ALIGN, 0);
        });
        assert_eq!(n, 6);
    }
}
