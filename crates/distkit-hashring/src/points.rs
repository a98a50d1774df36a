//! The ring's point store: sorted points in prefix buckets with slack, so a lookup reads one
//! bucket header and a short run of points, and a membership change touches only the buckets
//! its points fall in.

use std::cmp::Ordering;

/// One point: its position on the ring and the member slot that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) hash: u64,
    pub(crate) owner: u32,
}

/// Bucket `b` holds the points whose top `bits` bits equal `b`, sorted, in
/// `entries[start .. start + len]`; its capacity runs to the next bucket's `start`.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    start: u32,
    len: u32,
}

/// Free slots each bucket gets at layout time. With two to four points a bucket, adding 1,000
/// points to 100,000 overflows some bucket (forcing a relayout) a few percent of the time.
const SLACK: usize = 2;
/// Most buckets: 2^22 headers (32 MiB) for up to 2^24 points.
const MAX_BITS: u32 = 22;

#[derive(Clone, Debug)]
pub(crate) struct Points {
    shift: u32,
    /// `buckets.len() == 2^bits + 1`; the last is a sentinel holding the total capacity.
    buckets: Vec<Bucket>,
    entries: Vec<Entry>,
    len: usize,
}

/// A bucket had no room: the caller lays the points out anew.
#[derive(Debug)]
pub(crate) struct Full;

impl Points {
    /// Lays out `sorted` (ascending by hash, ties in the ring's tie order).
    pub(crate) fn from_sorted(sorted: &[Entry]) -> Self {
        let bits = bits_for(sorted.len());
        let shift = 64 - bits;
        let count = 1usize << bits;
        let mut buckets = vec![Bucket::default(); count + 1];
        for e in sorted {
            buckets[(e.hash >> shift) as usize].len += 1;
        }
        let mut start = 0u32;
        for b in &mut buckets[..count] {
            b.start = start;
            start += b.len + SLACK as u32;
        }
        buckets[count] = Bucket { start, len: 0 };
        let placeholder = Entry {
            hash: 0,
            owner: u32::MAX,
        };
        let mut entries = vec![placeholder; start as usize];
        let mut fill = vec![0u32; count];
        for e in sorted {
            let b = (e.hash >> shift) as usize;
            entries[(buckets[b].start + fill[b]) as usize] = *e;
            fill[b] += 1;
        }
        Self {
            shift,
            buckets,
            entries,
            len: sorted.len(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the bucket count no longer suits the point count (too few or too many points a
    /// bucket), so a relayout would pay off.
    pub(crate) fn wants_relayout(&self) -> bool {
        bits_for(self.len) != 64 - self.shift
    }

    /// All points in ring order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.buckets
            .iter()
            .take(self.buckets.len() - 1)
            .flat_map(|b| &self.entries[b.start as usize..(b.start + b.len) as usize])
    }

    /// The owner of the first point at or after `hash`, wrapping; `None` when empty.
    #[inline]
    pub(crate) fn owner_at(&self, hash: u64) -> Option<u32> {
        let mut bi = (hash >> self.shift) as usize;
        let b = self.buckets[bi];
        let run = &self.entries[b.start as usize..(b.start + b.len) as usize];
        // Counting instead of stopping early keeps the short scan free of mispredicted exits.
        let before = run.iter().filter(|e| e.hash < hash).count();
        if let Some(e) = run.get(before) {
            return Some(e.owner);
        }
        // Past the bucket's last point: the next point is the first of the next non-empty
        // bucket (usually the very next one).
        let count = self.buckets.len() - 1;
        for _ in 0..count {
            bi += 1;
            if bi == count {
                bi = 0;
            }
            let b = self.buckets[bi];
            if b.len > 0 {
                return Some(self.entries[b.start as usize].owner);
            }
        }
        None
    }

    /// Points in ring order starting at the first at or after `hash`, each point once.
    pub(crate) fn walk(&self, hash: u64) -> impl Iterator<Item = &Entry> {
        let first = (hash >> self.shift) as usize;
        let count = self.buckets.len() - 1;
        let b = self.buckets[first];
        let run = &self.entries[b.start as usize..(b.start + b.len) as usize];
        let split = run.partition_point(|e| e.hash < hash);
        let (before, after) = run.split_at(split);
        let bucket = move |i: usize| {
            let b = self.buckets[i];
            &self.entries[b.start as usize..(b.start + b.len) as usize]
        };
        after
            .iter()
            .chain((first + 1..count).flat_map(bucket))
            .chain((0..first).flat_map(bucket))
            .chain(before.iter())
    }

    /// Inserts a point in order; `tie` orders two owners whose points share a hash.
    pub(crate) fn insert(
        &mut self,
        e: Entry,
        tie: impl Fn(u32, u32) -> Ordering,
    ) -> Result<(), Full> {
        let bi = (e.hash >> self.shift) as usize;
        let b = self.buckets[bi];
        let cap = self.buckets[bi + 1].start - b.start;
        if b.len == cap {
            return Err(Full);
        }
        let (s, l) = (b.start as usize, b.len as usize);
        let at = self.entries[s..s + l].partition_point(|x| {
            x.hash < e.hash || (x.hash == e.hash && tie(x.owner, e.owner) == Ordering::Less)
        });
        self.entries.copy_within(s + at..s + l, s + at + 1);
        self.entries[s + at] = e;
        self.buckets[bi].len += 1;
        self.len += 1;
        Ok(())
    }

    /// Removes one point of `owner` at `hash`; false when there is none.
    pub(crate) fn remove(&mut self, hash: u64, owner: u32) -> bool {
        let bi = (hash >> self.shift) as usize;
        let b = self.buckets[bi];
        let (s, l) = (b.start as usize, b.len as usize);
        let Some(at) = self.entries[s..s + l]
            .iter()
            .position(|x| x.hash == hash && x.owner == owner)
        else {
            return false;
        };
        self.entries.copy_within(s + at + 1..s + l, s + at);
        self.buckets[bi].len -= 1;
        self.len -= 1;
        true
    }
}

/// Two to four points a bucket: `2^(ceil(log2 n) - 2)` buckets, at least 2. A lookup's scan
/// then stays within one or two cache lines.
fn bits_for(points: usize) -> u32 {
    let ceil_log2 = usize::BITS - points.saturating_sub(1).leading_zeros();
    ceil_log2.saturating_sub(2).clamp(1, MAX_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(hashes: &[u64]) -> Vec<Entry> {
        let mut v: Vec<Entry> = hashes
            .iter()
            .map(|&hash| Entry {
                hash,
                owner: (hash % 7) as u32,
            })
            .collect();
        v.sort_by_key(|e| e.hash);
        v
    }

    #[test]
    fn lookup_wraps_and_walk_visits_every_point_once() {
        let hs = [10, u64::MAX / 2, u64::MAX - 5, 3 << 62];
        let p = Points::from_sorted(&sorted(&hs));
        assert_eq!(p.owner_at(0), Some((10 % 7) as u32));
        assert_eq!(p.owner_at(11), Some(((u64::MAX / 2) % 7) as u32));
        assert_eq!(
            p.owner_at(u64::MAX),
            Some((10 % 7) as u32),
            "wraps to the first point"
        );
        let walked: Vec<u64> = p.walk(11).map(|e| e.hash).collect();
        assert_eq!(walked, [u64::MAX / 2, 3 << 62, u64::MAX - 5, 10]);
        assert_eq!(p.iter().count(), 4);
    }

    #[test]
    fn insert_until_full_then_remove() {
        let mut p = Points::from_sorted(&sorted(&[1, 2]));
        let tie = |a: u32, b: u32| a.cmp(&b);
        // Both points share bucket 0, whose capacity is 2 + SLACK.
        for h in [5, 4] {
            p.insert(Entry { hash: h, owner: 9 }, tie).unwrap();
        }
        assert!(p.insert(Entry { hash: 3, owner: 9 }, tie).is_err());
        let order: Vec<u64> = p.iter().map(|e| e.hash).collect();
        assert_eq!(order, [1, 2, 4, 5]);
        assert!(p.remove(4, 9));
        assert!(!p.remove(4, 9));
        assert_eq!(p.len(), 3);
    }
}
