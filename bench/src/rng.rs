//! A small xorshift64* generator: PeerJS-like random tokens and jitter, nothing secret.

use std::time::{SystemTime, UNIX_EPOCH};

pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock and the process id.
    pub fn from_entropy() -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Self::new(t ^ (u64::from(std::process::id()) << 32))
    }

    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// What the peerjs client uses as token: `Math.random().toString(36).slice(2)`, about 11
    /// characters of `[0-9a-z]`.
    pub fn token(&mut self) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        (0..11)
            .map(|_| ALPHABET[self.below(36) as usize] as char)
            .collect()
    }
}
