//! Where the engine's randomness comes from: operation ids, etags, generated enrollment keys,
//! CA verification codes, TPM challenge and hub keys (and the blobs that wrap them), and the
//! tracking ids of error bodies. Injected like the time ([`crate::Clock`]), so that an engine
//! built with a [`SeededRandom`] and a fixed clock answers the same inputs with the same bytes —
//! engine tests are reproducible.

use parking_lot::Mutex;
use rand::{CryptoRng, RngCore, SeedableRng};

/// A source of random bytes. Production uses [`SystemRandom`]; tests use [`SeededRandom`].
pub trait Random: Send + Sync + 'static {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's CSPRNG (through `rand`'s thread-local generator, seeded from it).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRandom;

impl Random for SystemRandom {
    fn fill(&self, buf: &mut [u8]) {
        rand::thread_rng().fill_bytes(buf);
    }
}

/// A deterministic generator for tests: the same seed gives the same bytes in the same order.
/// Its output is predictable to anyone who knows the seed, so it must never serve real devices
/// (keys made from it are not secret).
#[derive(Debug)]
pub struct SeededRandom(Mutex<rand::rngs::StdRng>);

impl SeededRandom {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }
}

impl Random for SeededRandom {
    fn fill(&self, buf: &mut [u8]) {
        self.0.lock().fill_bytes(buf);
    }
}

/// [`Random`] as a `rand` generator, for APIs that take one (the TPM blob's OAEP seeds). It is
/// exactly as good as the source: the OS CSPRNG in production.
pub(crate) struct RngOf<'a>(pub(crate) &'a dyn Random);

impl RngCore for RngOf<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

impl CryptoRng for RngOf<'_> {}

/// A version-4 UUID from `random`.
pub(crate) fn uuid(random: &dyn Random) -> uuid::Uuid {
    let mut b = [0u8; 16];
    random.fill(&mut b);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_repeats_and_another_seed_does_not() {
        let (a, b, c) = (SeededRandom::new(7), SeededRandom::new(7), SeededRandom::new(8));
        assert_eq!(uuid(&a), uuid(&b));
        assert_ne!(uuid(&a), uuid(&c));
        assert_eq!(uuid(&a).get_version_num(), 4);
        assert_ne!(uuid(&SystemRandom), uuid(&SystemRandom));
    }
}
