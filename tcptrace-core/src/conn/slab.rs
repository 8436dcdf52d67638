//! Entries that carry their own id (a socket's kernel address), stored in a
//! slab of fixed-size chunks and found through a small hash index of
//! slots. Why not a hash table of entries: such a table doubles, so right
//! after growing it holds 2.3 buckets of a ~112-byte entry per live socket
//! (270 bytes at 460k sockets); here the entries grow one chunk at a time
//! and only the index (8 bytes and a control byte per bucket) doubles, so
//! a live socket costs at most its entry plus ~21 bytes at any table size.
//! It is also faster: growing moves 8-byte index buckets, never entries, and
//! a lookup gives a [`Slot`] that later steps of the same event use without
//! hashing again.
//!
//! Slots are reused last-freed first; iteration is in slot order (stable
//! for a given sequence of inserts and removals).

use std::cell::Cell;

use hashbrown::HashTable;

/// An entry that knows its id.
pub trait Identified {
    fn id(&self) -> u64;
}

/// Where an entry lives; valid until it is removed.
pub type Slot = u32;

/// Entries per chunk (the slab grows by this many).
pub const CHUNK: usize = 2048;
const NO_SLOT: u32 = u32::MAX;

/// One bucket of the index: the slot and 32 bits of the id's hash (the
/// index grows without reading an entry).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    slot: Slot,
    tag: u32,
}

#[derive(Clone, Debug)]
enum Place<T> {
    Full(T),
    /// Free; the next free slot (or [`NO_SLOT`]).
    Free(u32),
}

/// Entries by id (see the module doc).
#[derive(Clone, Debug)]
pub struct IdSlab<T> {
    index: HashTable<Bucket>,
    chunks: Vec<Box<[Place<T>]>>,
    /// Freed slots, as a list through the slab itself.
    free_head: u32,
    /// Slots at or above this were never used.
    fresh: u32,
    len: usize,
    /// The last two entries found or inserted (the older first): the engine,
    /// then what follows it (a report's tracker) look the same socket up in
    /// a row, and a connection's two ends take turns.
    recent: [Cell<(u64, Slot)>; 2],
}

impl<T> Default for IdSlab<T> {
    fn default() -> Self {
        Self {
            index: HashTable::new(),
            chunks: Vec::new(),
            free_head: NO_SLOT,
            fresh: 0,
            len: 0,
            recent: [Cell::new((0, NO_SLOT)), Cell::new((0, NO_SLOT))],
        }
    }
}

/// 32 well-mixed bits of an id (kernel addresses differ in their middle
/// bits; a multiply carries them up).
fn tag(id: u64) -> u32 {
    (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

/// The index's 64-bit hash, a function of the tag alone (mixed again: its
/// low bits pick the bucket, its top bits the control byte).
fn spread(tag: u32) -> u64 {
    let mut h = u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

fn holds<T: Identified>(chunks: &[Box<[Place<T>]>], slot: Slot, id: u64) -> bool {
    matches!(
        chunks.get(slot as usize / CHUNK).and_then(|c| c.get(slot as usize % CHUNK)),
        Some(Place::Full(v)) if v.id() == id
    )
}

impl<T: Identified> IdSlab<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    fn place(&self, slot: Slot) -> &Place<T> {
        &self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    fn place_mut(&mut self, slot: Slot) -> &mut Place<T> {
        &mut self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    /// The entry in `slot`, if it holds one.
    pub fn at(&self, slot: Slot) -> Option<&T> {
        match self
            .chunks
            .get(slot as usize / CHUNK)?
            .get(slot as usize % CHUNK)?
        {
            Place::Full(v) => Some(v),
            Place::Free(_) => None,
        }
    }

    pub fn at_mut(&mut self, slot: Slot) -> Option<&mut T> {
        match self
            .chunks
            .get_mut(slot as usize / CHUNK)?
            .get_mut(slot as usize % CHUNK)?
        {
            Place::Full(v) => Some(v),
            Place::Free(_) => None,
        }
    }

    fn remember(&self, id: u64, slot: Slot) {
        self.recent[0].set(self.recent[1].get());
        self.recent[1].set((id, slot));
    }

    /// The slot of entry `id`.
    pub fn slot(&self, id: u64) -> Option<Slot> {
        for r in &self.recent {
            let (last, slot) = r.get();
            if last == id && slot != NO_SLOT && holds(&self.chunks, slot, id) {
                return Some(slot);
            }
        }
        let t = tag(id);
        let chunks = &self.chunks;
        let slot = self
            .index
            .find(spread(t), |b| b.tag == t && holds(chunks, b.slot, id))
            .map(|b| b.slot)?;
        self.remember(id, slot);
        Some(slot)
    }

    pub fn get(&self, id: u64) -> Option<&T> {
        self.slot(id).and_then(|s| self.at(s))
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        let s = self.slot(id)?;
        self.at_mut(s)
    }

    fn take_free_slot(&mut self) -> Slot {
        if self.free_head != NO_SLOT {
            let slot = self.free_head;
            if let Place::Free(next) = *self.place(slot) {
                self.free_head = next;
            }
            return slot;
        }
        let slot = self.fresh;
        if slot as usize == self.chunks.len() * CHUNK {
            self.chunks.push(
                (0..CHUNK)
                    .map(|_| Place::Free(NO_SLOT))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            );
        }
        self.fresh += 1;
        slot
    }

    /// Inserts `value`, whose id is not in the slab (the caller looked).
    pub fn insert_new(&mut self, value: T) -> Slot {
        let id = value.id();
        let t = tag(id);
        let slot = self.take_free_slot();
        *self.place_mut(slot) = Place::Full(value);
        self.index
            .insert_unique(spread(t), Bucket { slot, tag: t }, |b| spread(b.tag));
        self.len += 1;
        self.remember(id, slot);
        slot
    }

    /// Removes the entry in `slot`.
    pub fn remove_at(&mut self, slot: Slot) -> Option<T> {
        let id = self.at(slot)?.id();
        let t = tag(id);
        if let Ok(o) = self.index.find_entry(spread(t), |b| b.slot == slot) {
            o.remove();
        }
        let head = self.free_head;
        let Place::Full(v) = std::mem::replace(self.place_mut(slot), Place::Free(head)) else {
            return None;
        };
        self.free_head = slot;
        self.len -= 1;
        Some(v)
    }

    /// Every entry, in slot order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|c| {
            c.iter().filter_map(|p| match p {
                Place::Full(v) => Some(v),
                Place::Free(_) => None,
            })
        })
    }

    /// The entries of chunk `i` (slots `i * CHUNK ..`), in slot order.
    pub fn chunk(&self, i: usize) -> impl Iterator<Item = &T> {
        self.chunks.get(i).into_iter().flat_map(|c| {
            c.iter().filter_map(|p| match p {
                Place::Full(v) => Some(v),
                Place::Free(_) => None,
            })
        })
    }

    /// Every entry with its slot, in slot order.
    pub fn slots(&self) -> impl Iterator<Item = (Slot, &T)> {
        self.chunks.iter().enumerate().flat_map(|(i, c)| {
            c.iter().enumerate().filter_map(move |(j, p)| match p {
                Place::Full(v) => Some(((i * CHUNK + j) as Slot, v)),
                Place::Free(_) => None,
            })
        })
    }

    /// Some entry's slot (which one is unspecified): found through the
    /// index, so it costs little however sparse the slab is.
    pub fn any_slot(&self) -> Option<Slot> {
        self.index.iter().next().map(|b| b.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Entry(u64, &'static str);

    impl Identified for Entry {
        fn id(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn behaves_as_a_map_by_id() {
        let mut m = IdSlab::default();
        m.insert_new(Entry(1, "c"));
        m.insert_new(Entry(2, "b"));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(1), Some(&Entry(1, "c")));
        m.get_mut(2).unwrap().1 = "d";
        let two = m.slot(2).unwrap();
        assert_eq!(m.remove_at(two), Some(Entry(2, "d")));
        assert_eq!(m.remove_at(two), None);
        assert_eq!(m.slot(2), None);
        assert!(m.get(2).is_none() && m.get(1).is_some());
        assert_eq!(m.any_slot().and_then(|s| m.at(s)), Some(&Entry(1, "c")));
        assert_eq!(m.values().count(), 1);
    }

    #[test]
    fn slots_are_reused_and_stay_valid() {
        let mut m = IdSlab::default();
        let slots: Vec<Slot> = (0..5000u64)
            .map(|i| m.insert_new(Entry(0xffff_8880_0000_0000 + i * 64, "x")))
            .collect();
        for (i, &s) in slots.iter().enumerate() {
            assert_eq!(m.slot(0xffff_8880_0000_0000 + i as u64 * 64), Some(s));
        }
        // Removing by slot frees it; the next insert takes it.
        let gone = m.remove_at(slots[10]).unwrap();
        assert_eq!(gone.0, 0xffff_8880_0000_0000 + 640);
        assert!(m.get(gone.0).is_none());
        assert_eq!(m.insert_new(Entry(7, "y")), slots[10]);
        assert_eq!(m.get(7), Some(&Entry(7, "y")));
        assert_eq!(m.len(), 5000);
        assert_eq!(m.values().count(), 5000);
        for i in 0..5000u64 {
            if let Some(s) = m.slot(0xffff_8880_0000_0000 + i * 64) {
                m.remove_at(s);
            }
        }
        assert_eq!(m.len(), 1);
        assert_eq!(m.values().next(), Some(&Entry(7, "y")));
        assert_eq!(m.any_slot(), Some(slots[10]));
    }

    #[test]
    fn an_entry_costs_its_size_with_no_per_entry_overhead() {
        assert_eq!(
            std::mem::size_of::<Place<crate::conn::Conn>>(),
            std::mem::size_of::<crate::conn::Conn>()
        );
        assert_eq!(
            std::mem::size_of::<Place<crate::conn::TwConn>>(),
            std::mem::size_of::<crate::conn::TwConn>()
        );
    }

    /// Kernel addresses of sockets differ in a few middle bits: they must
    /// still spread over the index's buckets (a weak mix once left 95k
    /// distinct buckets for 1M sockets, and long probe chains).
    #[test]
    fn socket_addresses_spread_over_the_buckets() {
        let mask = (1u64 << 21) - 1;
        let mut used = std::collections::HashSet::new();
        for i in 0..1_000_000u64 {
            used.insert(spread(tag(0xffff_8880_0000_0000 + i * 2048)) & mask);
        }
        // Random placement of 1M into 2M buckets uses ~787k of them.
        assert!(used.len() > 700_000, "{} buckets used", used.len());
    }
}
