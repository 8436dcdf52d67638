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

/// Batch framing: each record is its length (u32, native endian) then its bytes.
const LEN_BYTES: usize = 4;

struct Shared {
    ring: Mutex<RingBuf<MapData>>,
    /// Bytes in batches sent and not yet taken.
    queued: AtomicUsize,
    limit: usize,
    stop: AtomicBool,
}

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
        let mut batch = Vec::new();
        while shared.queued.load(Ordering::Relaxed) + batch.len() < shared.limit {
            let Some(item) = ring.next() else { break };
            if batch.is_empty() {
                batch.reserve(BATCH_BYTES);
            }
            append_record(&mut batch, &item);
            if batch.len() >= BATCH_BYTES {
                send(shared, tx, std::mem::take(&mut batch));
            }
        }
        if !batch.is_empty() {
            send(shared, tx, batch);
        }
        drop(ring);
    }
}

fn send(shared: &Shared, tx: &mpsc::Sender<Vec<u8>>, batch: Vec<u8>) {
    shared.queued.fetch_add(batch.len(), Ordering::Relaxed);
    // The receiver lives as long as the thread is joined by its owner.
    let _ = tx.send(batch);
}

fn append_record(batch: &mut Vec<u8>, record: &[u8]) {
    batch.extend_from_slice(&(record.len() as u32).to_ne_bytes());
    batch.extend_from_slice(record);
}

/// Calls `f` with each record of a batch; returns how many.
fn for_each_record(mut batch: &[u8], mut f: impl FnMut(&[u8])) -> usize {
    let mut n = 0;
    while let Some((len, rest)) = batch.split_first_chunk::<LEN_BYTES>() {
        let len = u32::from_ne_bytes(*len) as usize;
        let (record, rest) = rest.split_at(len.min(rest.len()));
        f(record);
        n += 1;
        batch = rest;
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
}
