//! Compact open-addressing hash table of byte-string keys.
//!
//! Keys live in one contiguous arena as `[len: u8][bytes]`; the table is a
//! `Vec<u64>` of slots packing `arena offset (32) | value (24) | tag (8)`.
//! Keys are hashed right to left (FNV-1a over the reversed bytes, then a
//! 64-bit finaliser), so while walking a host name from its end the running
//! hash state at each label boundary is exactly the hash of that label
//! suffix: every suffix lookup of `a.b.example.com` costs one pass over the
//! bytes plus one probe per label.

pub(crate) const EMPTY: u64 = u64::MAX;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
pub(crate) const MAX_VALUE: u32 = (1 << 24) - 1;

#[inline(always)]
pub(crate) fn hash_start() -> u64 {
    FNV_OFFSET
}

#[inline(always)]
pub(crate) fn hash_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

#[inline(always)]
pub(crate) fn hash_finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Full-key hash (reversed bytes).
pub(crate) fn hash_key(key: &[u8]) -> u64 {
    let mut h = hash_start();
    for &b in key.iter().rev() {
        h = hash_step(h, b);
    }
    hash_finish(h)
}

#[derive(Default, Clone, Debug)]
pub(crate) struct Table {
    pub(crate) arena: Vec<u8>,
    pub(crate) slots: Vec<u64>,
    pub(crate) len: usize,
}

impl Table {
    /// Builds a table from unique keys (each ≤ 255 bytes) and values ≤ [`MAX_VALUE`].
    pub(crate) fn build<'a, I>(n: usize, items: I) -> Table
    where
        I: IntoIterator<Item = (&'a [u8], u32)>,
    {
        if n == 0 {
            return Table::default();
        }
        // Load factor ~0.67: short linear-probe runs, 8 slots per cache line.
        let cap = n + n / 2 + 1;
        let mut slots = vec![EMPTY; cap];
        let mut arena = Vec::new();
        let mut len = 0;
        for (key, val) in items {
            debug_assert!(key.len() <= 255 && !key.is_empty() && val <= MAX_VALUE);
            let h = hash_key(key);
            let off = arena.len() as u64;
            arena.push(key.len() as u8);
            arena.extend_from_slice(key);
            let mut i = index(h, cap);
            while slots[i] != EMPTY {
                i += 1;
                if i == cap {
                    i = 0;
                }
            }
            slots[i] = off | ((val as u64) << 32) | ((h & 0xff) << 56);
            len += 1;
        }
        arena.shrink_to_fit();
        Table { arena, slots, len }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Value of the first slot probed for hash `h` (used to pull the cache
    /// line in early; `EMPTY` for an empty table).
    #[inline]
    pub(crate) fn home_slot(&self, h: u64) -> u64 {
        let cap = self.slots.len();
        if cap == 0 {
            return EMPTY;
        }
        self.slots[index(h, cap)]
    }

    /// Looks up `key` whose [`hash_key`] is `h`.
    #[inline]
    pub(crate) fn get(&self, h: u64, key: &[u8]) -> Option<u32> {
        let cap = self.slots.len();
        if cap == 0 {
            return None;
        }
        let tag = h & 0xff;
        let mut i = index(h, cap);
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return None;
            }
            if s >> 56 == tag {
                let off = (s & 0xffff_ffff) as usize;
                let klen = self.arena[off] as usize;
                if klen == key.len() && &self.arena[off + 1..off + 1 + klen] == key {
                    return Some(((s >> 32) & 0x00ff_ffff) as u32);
                }
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    /// All (key, value) pairs, in slot order.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&[u8], u32)> + '_ {
        self.slots.iter().filter(|&&s| s != EMPTY).map(|&s| {
            let off = (s & 0xffff_ffff) as usize;
            let klen = self.arena[off] as usize;
            (
                &self.arena[off + 1..off + 1 + klen],
                ((s >> 32) & 0x00ff_ffff) as u32,
            )
        })
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.slots.capacity() * 8
    }

    /// Structural check used after reading a snapshot (so corrupted input
    /// that passes the checksum still can't make lookups panic).
    pub(crate) fn validate(&self, max_value: u32) -> Result<(), String> {
        let mut n = 0;
        for &s in &self.slots {
            if s == EMPTY {
                continue;
            }
            n += 1;
            let off = (s & 0xffff_ffff) as usize;
            let v = ((s >> 32) & 0x00ff_ffff) as u32;
            if off >= self.arena.len() || off + 1 + self.arena[off] as usize > self.arena.len() {
                return Err("table slot points outside arena".into());
            }
            if v >= max_value {
                return Err("table value out of range".into());
            }
        }
        if n != self.len || (n > 0 && n >= self.slots.len()) {
            return Err("table entry count mismatch".into());
        }
        Ok(())
    }
}

#[inline(always)]
fn index(h: u64, cap: usize) -> usize {
    ((h as u128 * cap as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_get() {
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i}.example")).collect();
        let t = Table::build(
            keys.len(),
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.as_bytes(), i as u32)),
        );
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.get(hash_key(k.as_bytes()), k.as_bytes()), Some(i as u32));
        }
        assert_eq!(t.get(hash_key(b"nope"), b"nope"), None);
        assert_eq!(t.entries().count(), 1000);
        t.validate(1000).unwrap();
        let e = Table::default();
        assert_eq!(e.get(hash_key(b"x"), b"x"), None);
    }
}
