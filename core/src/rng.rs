//! Randomness, from the caller. Ids the core hands out (client ids, session ids, turn ids, epochs)
//! must not be guessable, so a gateway gives the core an [`Entropy`] backed by the operating
//! system's CSPRNG (`adapters/common`'s `OsEntropy`); the in-memory driver, the tests and the
//! examples give it a seeded [`Rng`] instead, so a run is reproducible. The core never reads a
//! random source itself.

/// Where the core's random bytes come from.
pub trait Entropy: Send {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// The core's random draws, over whichever [`Entropy`] the caller supplied.
pub struct Random {
    source: Box<dyn Entropy>,
}

impl std::fmt::Debug for Random {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Random")
    }
}

impl Random {
    /// Draws from `source` (the OS CSPRNG in a gateway, a seeded [`Rng`] in simulation).
    pub fn new(source: Box<dyn Entropy>) -> Self {
        Random { source }
    }

    /// 64 random bits (an epoch is one such draw in hex).
    pub fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.source.fill(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    /// A value in `low..=high` (the modulo bias is negligible for the small ranges used: jitter).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// A random (version 4) UUID: 122 random bits, kept as 16 bytes; `format_uuid` gives its
    /// text form.
    pub fn uuid_v4(&mut self) -> u128 {
        let mut bytes = [0u8; 16];
        self.source.fill(&mut bytes);
        bytes[6] = (bytes[6] & 0x0F) | 0x40;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        u128::from_be_bytes(bytes)
    }
}

/// SplitMix64, seeded: small, fast, reproducible. For the in-memory driver and tests only; its
/// output is predictable from its seed, so a gateway never uses it for ids.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The next value of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// A random (version 4) UUID, kept as 16 bytes; `format_uuid` gives its text form.
    pub fn uuid_v4(&mut self) -> u128 {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[6] = (bytes[6] & 0x0F) | 0x40;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        u128::from_be_bytes(bytes)
    }
}

/// The canonical text form of a UUID.
pub fn format_uuid(uuid: u128) -> String {
    let bytes = uuid.to_be_bytes();
    {
        let mut out = String::with_capacity(36);
        for (index, byte) in bytes.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                out.push('-');
            }
            out.push(char::from(HEX[(byte >> 4) as usize]));
            out.push(char::from(HEX[(byte & 0xF) as usize]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Entropy for Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_has_version_and_variant_bits() {
        let mut rng = Rng::new(7);
        let id = format_uuid(rng.uuid_v4());
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(id, format_uuid(rng.uuid_v4()));
        let mut random = Random::new(Box::new(Rng::new(7)));
        let id = format_uuid(random.uuid_v4());
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn random_over_a_seeded_source_is_reproducible() {
        let mut a = Random::new(Box::new(Rng::new(42)));
        let mut b = Random::new(Box::new(Rng::new(42)));
        for _ in 0..10 {
            assert_eq!(a.uuid_v4(), b.uuid_v4());
            let jitter = a.range(1000, 5000);
            assert_eq!(jitter, b.range(1000, 5000));
            assert!((1000..=5000).contains(&jitter));
        }
        let mut bytes = [0u8; 13];
        Rng::new(1).fill(&mut bytes);
        assert_ne!(bytes, [0u8; 13]);
    }

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }
}
