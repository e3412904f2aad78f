//! The seeded random numbers behind every artifact (data order, initial weights, task items,
//! random children, sampled tokens, synthetic search instances).
//!
//! `rand` documents `StdRng` and its distributions (`random_range`, `shuffle`) as free to change
//! between versions, so a seed could give another data split or another task suite after a
//! dependency update, and every cached artifact would silently differ from a fresh one. Here the
//! stream is the ChaCha20 keystream (RFC 8439, through `rand_chacha`, whose output is
//! value-stable), keyed by the seed's little-endian bytes, and every draw on top of it (floats,
//! ranges, shuffles, normals) is written out below, so a seed means the same numbers for good.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// A portable seeded generator: same seed, same numbers, whatever the dependency versions.
#[derive(Clone, Debug)]
pub struct SeededRng(ChaCha20Rng);

impl SeededRng {
    /// The stream for `seed`: the ChaCha20 key is the seed's 8 little-endian bytes, then zeros.
    pub fn new(seed: u64) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        Self(ChaCha20Rng::from_seed(key))
    }

    /// The next 64 bits of the keystream (two little-endian 32-bit words).
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform in 0..n without modulo bias (draws below 2^64 mod n are rejected). Panics on 0.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "SeededRng::below(0): an empty range");
        let n = n as u64;
        let reject = n.wrapping_neg() % n;
        loop {
            let x = self.next_u64();
            if x >= reject {
                return (x % n) as usize;
            }
        }
    }

    /// Uniform in lo..=hi.
    pub fn int_in(&mut self, lo: i64, hi: i64) -> i64 {
        assert!(lo <= hi, "SeededRng::int_in({lo}, {hi}): an empty range");
        let span = hi.wrapping_sub(lo) as u64;
        if span == u64::MAX {
            return self.next_u64() as i64;
        }
        lo.wrapping_add(self.below((span + 1) as usize) as i64)
    }

    /// Fisher-Yates, from the back.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// A standard normal draw (Box-Muller; one draw per call, the sine half is not kept).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_zero_is_the_rfc_8439_chacha20_keystream() {
        // RFC 8439 appendix A.1, test vector 1 (all-zero key, nonce and counter): keystream
        // 76 b8 e0 ad a0 f1 3d 90 40 5d 6a e5 53 86 bd 28 ...
        let mut r = SeededRng::new(0);
        assert_eq!(r.next_u64(), 0x903d_f1a0_ade0_b876);
        assert_eq!(r.next_u64(), 0x28bd_8653_e56a_5d40);
    }

    #[test]
    fn draws_are_in_range_and_unbiased_enough() {
        let mut r = SeededRng::new(7);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[r.below(3)] += 1;
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            let k = r.int_in(-2, 2);
            assert!((-2..=2).contains(&k));
        }
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 500.0, "{counts:?}");
        }
        let mut v: Vec<usize> = (0..10).collect();
        r.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(v, sorted, "a shuffle of 10 left them in order (1 in 3.6M)");
        // Box-Muller: mean 0, variance 1 to within sampling error of 20,000 draws.
        let xs: Vec<f64> = (0..20_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.04,
            "{mean} {var}"
        );
    }

    #[test]
    fn a_seed_is_a_stream() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = SeededRng::new(42);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = SeededRng::new(42);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map({
                let mut r = SeededRng::new(43);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
