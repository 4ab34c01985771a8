//! The one byte-pattern generator of the tests: splitmix64 over a counter, so word `i`
//! of a stream is known without making the words before it (a receiver checks any
//! chunking), and a seed gives the same bytes every run.

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Word `i` of the stream `seed`.
pub fn word(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The first `len` bytes of the stream `seed`.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Rng::new(seed).fill(&mut out);
    out
}

/// The stream `seed` read word by word, as a random number generator.
#[derive(Debug, Clone)]
pub struct Rng {
    seed: u64,
    next: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { seed, next: 0 }
    }

    pub fn next(&mut self) -> u64 {
        let value = word(self.seed, self.next);
        self.next += 1;
        value
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Fills `buf` with the next words.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}
