//! [`CategorySet`]: a 256-bit, `Copy` bitset of category ids.

use crate::CategoryId;

/// Maximum number of categories a matcher can hold.
pub const MAX_CATEGORIES: usize = 256;

/// A set of categories (bitset over [`CategoryId`], up to 256 categories).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
pub struct CategorySet {
    bits: [u64; 4],
}

impl CategorySet {
    /// The empty set.
    pub fn empty() -> Self {
        Self { bits: [0; 4] }
    }

    /// True if no category is set.
    pub fn is_empty(&self) -> bool {
        self.bits == [0; 4]
    }

    /// True if `id` is in the set (ids ≥ 256 are never contained).
    pub fn contains(&self, id: CategoryId) -> bool {
        let id = id as usize;
        id < MAX_CATEGORIES && self.bits[id >> 6] & (1u64 << (id & 63)) != 0
    }

    /// Adds `id` (ids ≥ 256 are ignored; the builder never hands them out).
    pub fn insert(&mut self, id: CategoryId) {
        let id = id as usize;
        if id < MAX_CATEGORIES {
            self.bits[id >> 6] |= 1u64 << (id & 63);
        }
    }

    /// Removes `id`.
    pub fn remove(&mut self, id: CategoryId) {
        let id = id as usize;
        if id < MAX_CATEGORIES {
            self.bits[id >> 6] &= !(1u64 << (id & 63));
        }
    }

    /// Set union.
    pub fn union(self, other: Self) -> Self {
        let mut bits = self.bits;
        for (b, o) in bits.iter_mut().zip(other.bits) {
            *b |= o;
        }
        Self { bits }
    }

    /// Set difference (`self` without the members of `other`).
    pub fn difference(self, other: Self) -> Self {
        let mut bits = self.bits;
        for (b, o) in bits.iter_mut().zip(other.bits) {
            *b &= !o;
        }
        Self { bits }
    }

    /// True if the two sets share a member.
    pub fn intersects(&self, other: &Self) -> bool {
        self.bits
            .iter()
            .zip(other.bits.iter())
            .any(|(a, b)| a & b != 0)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = CategoryId> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &word)| {
            let mut word = word;
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let bit = word.trailing_zeros();
                word &= word - 1;
                Some((w as u32 * 64 + bit) as CategoryId)
            })
        })
    }

    pub(crate) fn words(&self) -> [u64; 4] {
        self.bits
    }

    pub(crate) fn from_words(bits: [u64; 4]) -> Self {
        Self { bits }
    }
}

impl FromIterator<CategoryId> for CategorySet {
    fn from_iter<I: IntoIterator<Item = CategoryId>>(iter: I) -> Self {
        let mut s = Self::empty();
        for id in iter {
            s.insert(id);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_ops() {
        let mut a = CategorySet::empty();
        assert!(a.is_empty());
        a.insert(0);
        a.insert(63);
        a.insert(64);
        a.insert(255);
        a.insert(256); // ignored
        assert!(a.contains(0) && a.contains(63) && a.contains(64) && a.contains(255));
        assert!(!a.contains(1) && !a.contains(256));
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 63, 64, 255]);
        assert_eq!(a.len(), 4);
        let b: CategorySet = [5, 64].into_iter().collect();
        assert!(a.intersects(&b));
        assert_eq!(a.union(b).len(), 5);
        assert_eq!(a.difference(b).iter().collect::<Vec<_>>(), vec![0, 63, 255]);
        let mut c = b;
        c.remove(64);
        assert!(!a.intersects(&c));
    }
}
