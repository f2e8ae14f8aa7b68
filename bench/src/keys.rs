//! Pre-built keys and values, and how clients pick the next key.
//!
//! Key `i` is `i` in zero-padded decimal of `--key-size` digits (`00000042` for `i = 42` with the
//! default size 8), so keys sort like their indexes. All keys and the one value (`--val-size` bytes
//! of `a..z` repeated) are built before the run, so a request only copies bytes.

use std::sync::atomic::{AtomicU64, Ordering};

use clap::ValueEnum;

/// How a client chooses the key of its next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyOrder {
    /// Uniformly at random over the key space, an independent generator per client.
    Random,
    /// One sequence 0, 1, 2, ... shared by all clients, wrapping at the end of the key space.
    Sequential,
}

impl KeyOrder {
    pub fn name(self) -> &'static str {
        match self {
            KeyOrder::Random => "random",
            KeyOrder::Sequential => "sequential",
        }
    }
}

/// The key of index `i`: `i` in zero-padded decimal of `width` digits.
pub fn key(i: u64, width: usize) -> Vec<u8> {
    format!("{i:0width$}").into_bytes()
}

/// Keys `0..n` of `width` digits.
pub fn key_table(n: u64, width: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| key(i, width)).collect()
}

/// The index of `key` if it is one of this tool's keys of `width` digits below `n`.
pub fn key_index(key: &[u8], width: usize, n: u64) -> Option<usize> {
    if key.len() != width || !key.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let i = std::str::from_utf8(key).ok()?.parse::<u64>().ok()?;
    (i < n).then_some(i as usize)
}

/// A value of `size` bytes: the letters `a..z` repeated.
pub fn value(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Picks key indexes in `0..n` for one client.
pub enum KeyPicker<'a> {
    Random { state: u64, n: u64 },
    Sequential { next: &'a AtomicU64, n: u64 },
}

impl<'a> KeyPicker<'a> {
    /// A picker over `0..n`; `seed` seeds the random order, `shared` is the sequential counter.
    pub fn new(order: KeyOrder, n: u64, seed: u64, shared: &'a AtomicU64) -> Self {
        match order {
            // splitmix64 of the seed, so that consecutive seeds give unrelated streams; never 0.
            KeyOrder::Random => KeyPicker::Random {
                state: splitmix64(seed) | 1,
                n,
            },
            KeyOrder::Sequential => KeyPicker::Sequential { next: shared, n },
        }
    }

    pub fn next_index(&mut self) -> usize {
        match self {
            KeyPicker::Random { state, n } => {
                // xorshift64*, then Lemire's multiply-shift to map onto 0..n without division.
                *state ^= *state >> 12;
                *state ^= *state << 25;
                *state ^= *state >> 27;
                let x = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
                ((u128::from(x) * u128::from(*n)) >> 64) as usize
            }
            KeyPicker::Sequential { next, n } => {
                (next.fetch_add(1, Ordering::Relaxed) % *n) as usize
            }
        }
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_zero_padded_and_parse_back() {
        assert_eq!(key(42, 8), b"00000042");
        assert_eq!(key_index(b"00000042", 8, 100), Some(42));
        assert_eq!(key_index(b"00000142", 8, 100), None);
        assert_eq!(key_index(b"0000042", 8, 100), None);
        assert_eq!(key_index(b"0000004x", 8, 100), None);
    }

    #[test]
    fn pickers_stay_in_range_and_cover_it() {
        let counter = AtomicU64::new(0);
        for order in [KeyOrder::Random, KeyOrder::Sequential] {
            let mut picker = KeyPicker::new(order, 10, 7, &counter);
            let mut seen = [false; 10];
            for _ in 0..1000 {
                seen[picker.next_index()] = true;
            }
            assert!(seen.iter().all(|s| *s), "{order:?} missed a key");
        }
    }

    #[test]
    fn value_has_the_requested_size() {
        assert_eq!(value(0).len(), 0);
        assert_eq!(&value(28)[..], b"abcdefghijklmnopqrstuvwxyzab");
    }
}
