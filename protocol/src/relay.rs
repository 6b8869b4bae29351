//! The relay envelope: how a WireGuard message travels through the owner's CloudPal when no
//! direct path works (DESIGN.md "Relay"; DERP-like, but UDP).
//!
//! ```text
//! 0      1        4              12             20                 36
//! | kind | 0 0 0  | destination  | sender       | tag (16)         | WireGuard message… |
//! ```
//!
//! Devices are named by [`ShortId`]s: the first 8 bytes of their static public key. The tag
//! is a keyed BLAKE2s MAC over the header before it and the whole inner message, keyed by a
//! pairwise secret between the hop's two ends (X25519 of their static keys, hashed with a
//! domain label). So the relay authenticates the sender (a member it shares a key with), and
//! the destination authenticates the relay; nobody else can inject or redirect envelopes. The
//! relay reads the destination and the sender and nothing else: the inner message is the
//! end-to-end Noise transport, so a relay that alters or replays it is caught by the
//! destination's tag and replay checks (RL-01, RL-02).

use crate::keys::{StaticPublic, StaticSecret};
pub use crate::wire::RELAY_HEADER_LEN;
use crate::wire::KIND_RELAY_ENVELOPE;
use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};

const TAG_AT: usize = 20;
const TAG_LEN: usize = 16;
/// The smallest inner message is a cookie reply or keepalive (32 bytes).
pub const MIN_ENVELOPE_LEN: usize = RELAY_HEADER_LEN + 32;

/// A device's name on the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShortId(pub [u8; 8]);

impl ShortId {
    pub fn of(key: &StaticPublic) -> Self {
        let mut id = [0u8; 8];
        id.copy_from_slice(&key.as_bytes()[..8]);
        ShortId(id)
    }
}

/// The MAC key of one hop, the same from both ends.
#[derive(Clone)]
pub struct HopKey([u8; 32]);

impl HopKey {
    pub fn between(local: &StaticSecret, remote: &StaticPublic) -> Self {
        let secret = x25519_dalek::StaticSecret::from(*local.expose_secret());
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*remote.as_bytes()));
        let mut hasher = Blake2s256::new();
        hasher.update(b"cloudpal/relay-hop/v1");
        hasher.update(shared.as_bytes());
        HopKey(hasher.finalize().into())
    }

    fn tag(&self, envelope: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(&self.0).expect("32-byte key fits BLAKE2s");
        mac.update(&envelope[..TAG_AT]);
        mac.update(&envelope[RELAY_HEADER_LEN..]);
        mac.finalize().into_bytes().into()
    }
}

impl core::fmt::Debug for HopKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HopKey(…)")
    }
}

/// The fields of a well-formed envelope (its tag not yet checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub destination: ShortId,
    pub sender: ShortId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a relay envelope")]
    Malformed,
    #[error("relay envelope tag did not verify")]
    BadTag,
}

/// Whether a datagram is an envelope (by its kind byte).
pub fn is_envelope(datagram: &[u8]) -> bool {
    datagram.first() == Some(&KIND_RELAY_ENVELOPE)
}

/// Reads the header of an envelope.
pub fn parse(datagram: &[u8]) -> Result<Envelope, EnvelopeError> {
    if datagram.len() < MIN_ENVELOPE_LEN || !is_envelope(datagram) || datagram[1..4] != [0, 0, 0] {
        return Err(EnvelopeError::Malformed);
    }
    let id = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&datagram[at..at + 8]);
        ShortId(bytes)
    };
    Ok(Envelope { destination: id(4), sender: id(12) })
}

/// Checks the tag with the hop's key (constant time).
pub fn verify(datagram: &[u8], key: &HopKey) -> Result<(), EnvelopeError> {
    parse(datagram)?;
    let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(&key.0).expect("32-byte key fits BLAKE2s");
    mac.update(&datagram[..TAG_AT]);
    mac.update(&datagram[RELAY_HEADER_LEN..]);
    mac.verify_slice(&datagram[TAG_AT..RELAY_HEADER_LEN]).map_err(|_| EnvelopeError::BadTag)
}

/// Writes the header in front of the inner message already at `buffer[RELAY_HEADER_LEN..]`
/// and tags the whole with the hop's key.
pub fn seal(buffer: &mut [u8], envelope: Envelope, key: &HopKey) {
    buffer[0] = KIND_RELAY_ENVELOPE;
    buffer[1..4].fill(0);
    buffer[4..12].copy_from_slice(&envelope.destination.0);
    buffer[12..20].copy_from_slice(&envelope.sender.0);
    let tag = key.tag(buffer);
    buffer[TAG_AT..RELAY_HEADER_LEN].copy_from_slice(&tag);
}

/// Re-tags an envelope for its next hop (the relay forwarding it), header otherwise kept.
pub fn retag(buffer: &mut [u8], key: &HopKey) {
    let tag = key.tag(buffer);
    buffer[TAG_AT..RELAY_HEADER_LEN].copy_from_slice(&tag);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (StaticSecret, StaticSecret) {
        (StaticSecret::from_bytes([1; 32]), StaticSecret::from_bytes([2; 32]))
    }

    fn envelope(inner: &[u8], key: &HopKey) -> Vec<u8> {
        let mut buffer = vec![0u8; RELAY_HEADER_LEN + inner.len()];
        buffer[RELAY_HEADER_LEN..].copy_from_slice(inner);
        seal(&mut buffer, Envelope { destination: ShortId([7; 8]), sender: ShortId([9; 8]) }, key);
        buffer
    }

    #[test]
    fn both_ends_derive_the_same_hop_key_and_others_do_not() {
        let (a, b) = keys();
        let c = StaticSecret::from_bytes([3; 32]);
        let ab = HopKey::between(&a, &b.public_key());
        let ba = HopKey::between(&b, &a.public_key());
        let cb = HopKey::between(&c, &b.public_key());
        let sealed = envelope(&[4; 64], &ab);
        assert_eq!(verify(&sealed, &ba), Ok(()));
        assert_eq!(verify(&sealed, &cb), Err(EnvelopeError::BadTag));
        assert_eq!(parse(&sealed), Ok(Envelope { destination: ShortId([7; 8]), sender: ShortId([9; 8]) }));
    }

    #[test]
    fn any_changed_byte_fails_the_tag() {
        let (a, b) = keys();
        let key = HopKey::between(&a, &b.public_key());
        let sealed = envelope(&[4; 48], &key);
        for at in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[at] ^= 0x01;
            assert!(verify(&altered, &key).is_err(), "byte {at} changed unnoticed");
        }
    }

    #[test]
    fn retagging_moves_the_envelope_to_the_next_hop() {
        let (a, b) = keys();
        let c = StaticSecret::from_bytes([3; 32]);
        let first = HopKey::between(&a, &b.public_key());
        let second = HopKey::between(&b, &c.public_key());
        let mut sealed = envelope(&[4; 48], &first);
        retag(&mut sealed, &second);
        assert_eq!(verify(&sealed, &HopKey::between(&c, &b.public_key())), Ok(()));
        assert!(verify(&sealed, &first).is_err());
    }

    #[test]
    fn short_or_foreign_datagrams_are_not_envelopes() {
        assert_eq!(parse(&[6; 10]), Err(EnvelopeError::Malformed));
        assert_eq!(parse(&[4; 100]), Err(EnvelopeError::Malformed));
        let mut bad_reserved = vec![0u8; 100];
        bad_reserved[0] = 6;
        bad_reserved[2] = 1;
        assert_eq!(parse(&bad_reserved), Err(EnvelopeError::Malformed));
    }
}
