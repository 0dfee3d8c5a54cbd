//! The desired routes: a persistent map from prefix to [`Paths`], sorted, held in chunks.
//!
//! Why not a general persistent B-tree: at 100,000 routes its nodes (16 entries each, half
//! full after in-order inserts) cost about 100 bytes per route, three times an entry's own 32.
//! Here the routes sit in chunks of up to [`CHUNK`] entries. Each chunk is an `Arc` shared by
//! every snapshot that did not edit it, and chunks fill completely when routes arrive in order
//! (the operator sends them sorted). A small persistent map indexes the chunks by their first
//! prefix. Cloning is O(1); a one-route edit copies one chunk and a path of the index.
//!
//! Two tables of one lineage share every chunk neither edited, so [`Desired::diff`] skips
//! those by pointer: comparing two snapshots costs O(chunks + routes in edited chunks), not a
//! comparison of every route.

use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use ipnet::IpNet;

use super::Paths;

/// Routes per chunk at most: a one-route edit copies one chunk (2 KiB of entries), and the
/// index holds one key per chunk (about 1,600 at 100,000 routes).
pub const CHUNK: usize = 64;

type Entry = (IpNet, Paths);
type Chunk = Arc<Vec<Entry>>;

/// The whole desired state: every prefix to announce, in prefix order.
#[derive(Clone, Default)]
pub struct Desired {
    /// Chunks by their first prefix. No chunk is empty, each is sorted, and each holds only
    /// prefixes below the next chunk's first.
    index: imbl::OrdMap<IpNet, Chunk>,
    len: usize,
}

/// The chunk's entries, to be changed: in place when no other table shares the chunk, else
/// a copy (with room for `extra` more entries) that replaces it in this table.
fn writable(chunk: &mut Chunk, extra: usize) -> &mut Vec<Entry> {
    if Arc::get_mut(chunk).is_none() {
        let mut copy = Vec::with_capacity(chunk.len() + extra);
        copy.extend(chunk.iter().cloned());
        *chunk = Arc::new(copy);
    }
    // The chunk is this table's alone now.
    Arc::make_mut(chunk)
}

impl Desired {
    /// No routes.
    pub fn new() -> Desired {
        Desired::default()
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first prefix of the chunk that holds (or would hold) `prefix`: the last chunk
    /// starting at or before it, else the first chunk.
    fn chunk_key(&self, prefix: &IpNet) -> Option<IpNet> {
        self.index
            .get_prev(prefix)
            .or_else(|| self.index.get_min().map(|(k, v)| (k, v)))
            .map(|(k, _)| *k)
    }

    /// The paths of `prefix`.
    pub fn get(&self, prefix: &IpNet) -> Option<&Paths> {
        let (_, chunk) = self.index.get_prev(prefix)?;
        let i = chunk.binary_search_by(|(p, _)| p.cmp(prefix)).ok()?;
        chunk.get(i).map(|(_, paths)| paths)
    }

    /// Whether `prefix` has routes here.
    pub fn contains_key(&self, prefix: &IpNet) -> bool {
        self.get(prefix).is_some()
    }

    /// Sets the paths of `prefix`; returns those it had.
    pub fn insert(&mut self, prefix: IpNet, paths: Paths) -> Option<Paths> {
        let Some(key) = self.chunk_key(&prefix) else {
            self.index.insert(prefix, Arc::new(vec![(prefix, paths)]));
            self.len = 1;
            return None;
        };
        let chunk = self.index.get_mut(&key)?;
        let at = match chunk.binary_search_by(|(p, _)| p.cmp(&prefix)) {
            Ok(i) => {
                let slot = writable(chunk, 0).get_mut(i)?;
                return Some(std::mem::replace(&mut slot.1, paths));
            }
            Err(i) => i,
        };
        let entries = writable(chunk, 1);
        if entries.len() == entries.capacity() {
            // Grow towards the chunk's size, not past it by doubling.
            let room = entries
                .len()
                .clamp(1, (CHUNK + 1).saturating_sub(entries.len()).max(1));
            entries.reserve_exact(room);
        }
        entries.insert(at, (prefix, paths));
        self.len += 1;
        let rest = (entries.len() > CHUNK).then(|| {
            // Appending at the end keeps this chunk full (in-order loading); elsewhere halves.
            let split = if at + 1 == entries.len() {
                CHUNK
            } else {
                entries.len() / 2
            };
            let rest = entries.split_off(split);
            entries.shrink_to_fit();
            rest
        });
        let first = entries.first().map(|(p, _)| *p);
        if let Some(first) = first.filter(|f| *f != key) {
            self.rekey(key, first);
        }
        if let Some(rest) = rest
            && let Some((first, _)) = rest.first()
        {
            self.index.insert(*first, Arc::new(rest));
        }
        None
    }

    fn rekey(&mut self, from: IpNet, to: IpNet) {
        if let Some(chunk) = self.index.remove(&from) {
            self.index.insert(to, chunk);
        }
    }

    /// Removes `prefix`; returns the paths it had.
    pub fn remove(&mut self, prefix: &IpNet) -> Option<Paths> {
        let key = *self.index.get_prev(prefix)?.0;
        let chunk = self.index.get_mut(&key)?;
        let i = chunk.binary_search_by(|(p, _)| p.cmp(prefix)).ok()?;
        let entries = writable(chunk, 0);
        let (_, old) = entries.remove(i);
        self.len -= 1;
        let (first, small) = (entries.first().map(|(p, _)| *p), entries.len() < CHUNK / 4);
        match first {
            None => {
                self.index.remove(&key);
            }
            Some(first) => {
                if first != key {
                    self.rekey(key, first);
                }
                if small {
                    self.merge_around(first);
                }
            }
        }
        Some(old)
    }

    /// Joins the chunk starting at `key` with its successor, or else its predecessor, when
    /// both fit in one: removals never leave the table as a trail of nearly empty chunks.
    fn merge_around(&mut self, key: IpNet) {
        let next = self
            .index
            .range((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .map(|(k, _)| *k);
        let prev = self
            .index
            .range((Bound::Unbounded, Bound::Excluded(key)))
            .next_back()
            .map(|(k, _)| *k);
        for (left, right) in [next.map(|n| (key, n)), prev.map(|p| (p, key))]
            .into_iter()
            .flatten()
        {
            let (Some(l), Some(r)) = (self.index.get(&left), self.index.get(&right)) else {
                continue;
            };
            if l.len() + r.len() > CHUNK {
                continue;
            }
            let mut joined = Vec::with_capacity(l.len() + r.len());
            joined.extend(l.iter().cloned());
            joined.extend(r.iter().cloned());
            self.index.remove(&right);
            self.index.insert(left, Arc::new(joined));
            return;
        }
    }

    /// Every route, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, &Paths)> + '_ {
        self.index
            .values()
            .flat_map(|chunk| chunk.iter())
            .map(|(p, paths)| (p, paths))
    }

    /// Every prefix, in order.
    pub fn keys(&self) -> impl Iterator<Item = &IpNet> + '_ {
        self.iter().map(|(p, _)| p)
    }

    /// Every route's paths, in prefix order.
    pub fn values(&self) -> impl Iterator<Item = &Paths> + '_ {
        self.iter().map(|(_, paths)| paths)
    }

    /// The chunks from the one holding `after` (or from the first).
    fn chunks_from(&self, after: Option<&IpNet>) -> impl Iterator<Item = &Chunk> + '_ {
        let lower = match after.and_then(|a| self.index.get_prev(a)) {
            Some((k, _)) => Bound::Included(*k),
            None => Bound::Unbounded,
        };
        self.index
            .range((lower, Bound::Unbounded))
            .map(|(_, chunk)| chunk)
    }

    /// The routes whose paths differ between `self` and `other` (a prefix in only one of them
    /// included), after `after` if given, in prefix order: `(prefix, in self, in other)`.
    /// Chunks the two tables share are skipped without reading them.
    pub fn diff<'a>(
        &'a self,
        other: &'a Desired,
        after: Option<&IpNet>,
    ) -> impl Iterator<Item = (IpNet, Option<&'a Paths>, Option<&'a Paths>)> + 'a {
        self.merge(other, after, true)
    }

    /// Every route of either table, after `after` if given, in prefix order: `(prefix, in
    /// self, in other)`, equal ones included.
    pub fn merged<'a>(
        &'a self,
        other: &'a Desired,
        after: Option<&IpNet>,
    ) -> impl Iterator<Item = (IpNet, Option<&'a Paths>, Option<&'a Paths>)> + 'a {
        self.merge(other, after, false)
    }

    fn merge<'a>(
        &'a self,
        other: &'a Desired,
        after: Option<&IpNet>,
        only_differences: bool,
    ) -> impl Iterator<Item = (IpNet, Option<&'a Paths>, Option<&'a Paths>)> + 'a {
        let mut a = Cursor::new(self.chunks_from(after), after);
        let mut b = Cursor::new(other.chunks_from(after), after);
        std::iter::from_fn(move || {
            loop {
                if only_differences
                    && let (Some(x), Some(y)) = (a.chunk_start(), b.chunk_start())
                    && Arc::ptr_eq(x, y)
                {
                    a.skip_chunk();
                    b.skip_chunk();
                    continue;
                }
                return match (a.peek(), b.peek()) {
                    (None, None) => None,
                    (Some((p, x)), Some((q, y))) if p == q => {
                        a.advance();
                        b.advance();
                        if only_differences && x == y {
                            continue;
                        }
                        Some((*p, Some(x), Some(y)))
                    }
                    (Some((p, x)), Some((q, _))) if p < q => {
                        a.advance();
                        Some((*p, Some(x), None))
                    }
                    (Some((p, x)), None) => {
                        a.advance();
                        Some((*p, Some(x), None))
                    }
                    (_, Some((q, y))) => {
                        b.advance();
                        Some((*q, None, Some(y)))
                    }
                };
            }
        })
    }

    /// Makes the table dense again after many edits out of order: rebuilt into full chunks
    /// when under three quarters full (it then shares no chunk with the table it came from,
    /// and the next sync compares every route), else chunks this table alone holds give back
    /// spare room. Called after a change is built, before it is published.
    pub fn compact(&mut self) {
        let chunks = self.index.len();
        if self.len * 4 < chunks * CHUNK * 3 && chunks > 1 {
            *self = self.iter().map(|(p, paths)| (*p, paths.clone())).collect();
        }
        // Only chunks edited in place (or just rebuilt) have room to give back; looking each
        // up mutably would unshare the whole index from the table this one was cloned from.
        // A count of 1 can still be a chunk in a shared index node: `Arc::get_mut` below then
        // finds it shared, and it is left as it is.
        let roomy: Vec<IpNet> = self
            .index
            .iter()
            .filter(|(_, c)| Arc::strong_count(c) == 1 && c.capacity() > c.len())
            .map(|(k, _)| *k)
            .collect();
        for k in roomy {
            if let Some(entries) = self.index.get_mut(&k).and_then(Arc::get_mut) {
                entries.shrink_to_fit();
            }
        }
    }
}

/// A position in one table's chunks, for [`Desired::diff`].
struct Cursor<'a, I> {
    rest: I,
    chunk: Option<&'a Chunk>,
    at: usize,
}

impl<'a, I: Iterator<Item = &'a Chunk>> Cursor<'a, I> {
    fn new(mut rest: I, after: Option<&IpNet>) -> Self {
        let chunk = rest.next();
        let at = match (chunk, after) {
            (Some(c), Some(a)) => c.partition_point(|(p, _)| p <= a),
            _ => 0,
        };
        Cursor { rest, chunk, at }
    }

    /// The current entry, moving on to the next chunk when this one is done.
    fn peek(&mut self) -> Option<&'a Entry> {
        loop {
            let chunk = self.chunk?;
            if let Some(e) = chunk.get(self.at) {
                return Some(e);
            }
            self.chunk = self.rest.next();
            self.at = 0;
        }
    }

    /// The current chunk, when the cursor is at its first entry.
    fn chunk_start(&mut self) -> Option<&'a Chunk> {
        self.peek()?;
        self.chunk.filter(|_| self.at == 0)
    }

    fn skip_chunk(&mut self) {
        self.chunk = self.rest.next();
        self.at = 0;
    }

    fn advance(&mut self) {
        self.at += 1;
    }
}

impl FromIterator<(IpNet, Paths)> for Desired {
    fn from_iter<T: IntoIterator<Item = (IpNet, Paths)>>(iter: T) -> Self {
        let mut d = Desired::new();
        for (p, paths) in iter {
            d.insert(p, paths);
        }
        d
    }
}

impl PartialEq for Desired {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.diff(other, None).next().is_none()
    }
}

impl Eq for Desired {}

impl fmt::Debug for Desired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests;
