//! Stable key hashing.
//!
//! Every locator here hashes keys with XXH3-64 over the key's bytes. XXH3's output is fixed by
//! its specification, so a key maps to the same place on every machine, architecture and Rust
//! release. (`std`'s `DefaultHasher` makes no such promise: a toolchain upgrade that changes it
//! remaps a whole fleet.) Golden-vector tests pin the values.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The seed locators use unless told otherwise.
pub const DEFAULT_SEED: u64 = 0;

/// XXH3-64 of `key` with the default seed.
///
/// ```
/// assert_eq!(distkit_hashring::hash_key(b""), 0x2d06_8005_38d3_94c2);
/// ```
#[must_use]
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// XXH3-64 of `key` with `seed`. Seed 0 equals [`hash_key`].
#[must_use]
#[inline]
pub fn hash_key_with_seed(key: &[u8], seed: u64) -> u64 {
    if seed == 0 {
        xxh3_64(key)
    } else {
        xxh3_64_with_seed(key, seed)
    }
}

/// A 64-bit finalizer (from MurmurHash3) that turns a combined value into a well-mixed one.
#[must_use]
#[inline]
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference value of XXH3-64 for empty input with seed 0, from the xxHash spec's
    /// sanity checks.
    #[test]
    fn xxh3_of_empty_input_is_the_published_value() {
        assert_eq!(hash_key(b""), 0x2D06_8005_38D3_94C2);
    }

    /// Golden vectors: if any of these change, every deployed ring would remap keys.
    #[test]
    fn golden_vectors_never_change() {
        let golden: [(&[u8], u64, u64); 4] = [
            (b"a", 0, 0xe6c6_32b6_1e96_4e1f),
            (b"device:42", 0, 0xfc37_826e_e420_8f63),
            (b"device:42", 7, 0x8b9f_6e25_acb8_95cf),
            (b"0123456789abcdef", 0, 0x6443_9946_d8fa_212d),
        ];
        for (key, seed, want) in golden {
            assert_eq!(
                hash_key_with_seed(key, seed),
                want,
                "key {:?} seed {seed}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn mix64_is_a_bijection_on_samples() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u64 {
            assert!(seen.insert(mix64(i)));
        }
    }
}
