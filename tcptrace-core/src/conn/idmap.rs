//! A hash table of entries that carry their own id (a socket's kernel
//! address), storing each id once. A map from id to entry would store it
//! twice; at a million live sockets those 8 bytes, times the table's spare
//! buckets, are what keeps an entry within 256 bytes.

use std::hash::BuildHasher as _;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

/// An entry that knows its id.
pub trait Identified {
    fn id(&self) -> u64;
}

/// Entries by id.
#[derive(Clone, Debug)]
pub struct IdMap<T> {
    table: HashTable<T>,
}

impl<T> Default for IdMap<T> {
    fn default() -> Self {
        Self {
            table: HashTable::new(),
        }
    }
}

fn hash(id: u64) -> u64 {
    FxBuildHasher.hash_one(id)
}

impl<T: Identified> IdMap<T> {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn get(&self, id: u64) -> Option<&T> {
        self.table.find(hash(id), |e| e.id() == id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        self.table.find_mut(hash(id), |e| e.id() == id)
    }

    /// Inserts `value` under its id; returns the entry it replaced.
    pub fn insert(&mut self, value: T) -> Option<T> {
        let id = value.id();
        match self
            .table
            .entry(hash(id), |e| e.id() == id, |e| hash(e.id()))
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                Some(std::mem::replace(o.get_mut(), value))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(value);
                None
            }
        }
    }

    pub fn remove(&mut self, id: u64) -> Option<T> {
        self.table
            .find_entry(hash(id), |e| e.id() == id)
            .ok()
            .map(|o| o.remove().0)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.table.iter()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.table.iter_mut()
    }

    /// Some entry's id (which one is unspecified).
    pub fn any_id(&self) -> Option<u64> {
        self.table.iter().next().map(Identified::id)
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
        let mut m = IdMap::default();
        assert_eq!(m.insert(Entry(1, "a")), None);
        assert_eq!(m.insert(Entry(2, "b")), None);
        assert_eq!(m.insert(Entry(1, "c")), Some(Entry(1, "a")));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(1), Some(&Entry(1, "c")));
        m.get_mut(2).unwrap().1 = "d";
        assert_eq!(m.remove(2), Some(Entry(2, "d")));
        assert_eq!(m.remove(2), None);
        assert!(m.get(2).is_none() && m.get(1).is_some());
        assert_eq!(m.any_id(), Some(1));
        assert_eq!(m.values().count(), 1);
    }
}
