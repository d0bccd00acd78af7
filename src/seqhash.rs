// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hash maps keyed by integers the daemon hands out itself (per-queue
//! counters, command tags, initiator task tags): one multiplication per
//! key instead of SipHash. Only for keys no outsider picks: a target, a
//! guest or a client can at most look a key up (an ITT in a Data-In), never
//! insert one, so collisions made on purpose are not a concern.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with `SeqHasher`.
pub type SeqMap<K, V> = HashMap<K, V, BuildHasherDefault<SeqHasher>>;

/// Multiplies the key by 2^64 / golden ratio (Fibonacci hashing): the low
/// bits of consecutive keys stay distinct (the table's index) and the high
/// bits are mixed (hashbrown's per-slot tag).
#[derive(Default)]
pub struct SeqHasher(u64);

const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(FIBONACCI);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn consecutive_keys_fill_distinct_slots_and_differ_in_the_top_bits() {
        let b = BuildHasherDefault::<SeqHasher>::default();
        // The low 10 bits of 1024 consecutive keys: all different.
        let mut low: Vec<u64> = (0..1024u64).map(|k| b.hash_one(k) & 1023).collect();
        low.sort_unstable();
        low.dedup();
        assert_eq!(low.len(), 1024);
        // The top 7 bits (hashbrown's tag) take many values, not one.
        let mut top: Vec<u64> = (0..1024u64).map(|k| b.hash_one(k) >> 57).collect();
        top.sort_unstable();
        top.dedup();
        assert!(top.len() > 100, "{}", top.len());
        // u32 keys hash as the same u64.
        assert_eq!(b.hash_one(7u32), b.hash_one(7u64));
    }

    #[test]
    fn a_map_keeps_what_it_was_given() {
        let mut m: SeqMap<u32, u32> = SeqMap::default();
        for k in 0..10_000u32 {
            m.insert(k.wrapping_mul(3), k);
        }
        assert!((0..10_000u32).all(|k| m.get(&k.wrapping_mul(3)) == Some(&k)));
        assert_eq!(m.len(), 10_000);
    }
}
