//! Deterministic identifiers drawn from seeded generators.
//!
//! Each concern (directory, channels/tokens, conversation model, system frames) has its own
//! stream derived from the seed, so the order of REST calls cannot shift the conversation ids.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Independent generator streams derived from one seed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    Directory = 1,
    Channels = 2,
    Model = 3,
    System = 4,
}

pub(crate) fn rng_for(seed: u64, stream: Stream) -> SmallRng {
    let mixed = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((stream as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    SmallRng::seed_from_u64(mixed)
}

/// A random (version 4 formatted) UUID from the given generator.
pub(crate) fn uuid(rng: &mut SmallRng) -> String {
    let bytes: [u8; 16] = rng.gen();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Lower-case alphanumeric string, like the tail of a Genesys channel id.
pub(crate) fn alnum(rng: &mut SmallRng, len: usize) -> String {
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A channel id shaped like Genesys' (`streaming-0-` + 26 characters).
pub(crate) fn channel_id(rng: &mut SmallRng) -> String {
    format!("streaming-0-{}", alnum(rng, 26))
}

/// An opaque bearer token.
pub(crate) fn token(rng: &mut SmallRng) -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 48];
    rng.fill(&mut bytes[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_distinct() {
        let a = uuid(&mut rng_for(7, Stream::Model));
        let b = uuid(&mut rng_for(7, Stream::Model));
        let c = uuid(&mut rng_for(7, Stream::Directory));
        let d = uuid(&mut rng_for(8, Stream::Model));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(a.len(), 36);
        let id = channel_id(&mut rng_for(1, Stream::Channels));
        assert!(id.starts_with("streaming-0-") && id.len() == 38);
    }
}
