//! The relay envelope: how a WireGuard message travels through the owner's CloudPal when no
//! direct path works (DESIGN.md "Relay"; DERP-like, but UDP).
//!
//! ```text
//! 0      1        4             12                20          28          44
//! | kind | 0 0 0  | sender id (8) | destination (8) | counter (8) | tag (16) | WireGuard message… |
//! ```
//!
//! Each hop (a device and its relay) has a pairwise secret, the [`HopKey`] (X25519 of their
//! static keys, hashed with a domain label). The tag is a keyed BLAKE2s MAC over the header
//! before it, the inner message's length and — for a message of up to 256 bytes (handshakes,
//! cookie replies, keepalives) — the whole inner message, or for a longer one (transport data)
//! its first and last 16 bytes: WireGuard's type, receiver index and counter, and its
//! Poly1305 tag, which binds every byte between them end to end. So the relay authenticates
//! the sender and the destination authenticates the relay; nobody else can inject or redirect
//! envelopes, and a body altered on the way is dropped by the destination's AEAD like any
//! corrupted packet. (Tagging every byte as well cost four BLAKE2s passes over each packet:
//! 80% of a relay's CPU, a fifth of the direct path's throughput.) The relay reads the
//! destination and the sender and nothing else: the inner message is the end-to-end Noise
//! transport, so a relay that alters or replays it is caught by the destination's tag and
//! replay checks (RL-01, RL-02).
//!
//! Replays on a hop: each sender numbers its envelopes per hop (starting from its clock, so a
//! restart never goes back) and each receiver keeps a replay window per hop, moved only after
//! the tag verified; a relay moves a member's endpoint only for an envelope newer than any
//! before (issue #12). Nothing in clear names a device for an on-path observer: the sender id
//! is derived from the hop key and the hour (it changes every hour and differs per hop), and
//! the destination's id is masked with a keystream of the hop key and the counter (it differs
//! in every envelope); only the relay, which holds the hop key, reads either (DP-17).

use crate::keys::{StaticPublic, StaticSecret};
pub use crate::wire::RELAY_HEADER_LEN;
use crate::wire::KIND_RELAY_ENVELOPE;
use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};

const SENDER_AT: usize = 4;
const DESTINATION_AT: usize = 12;
const COUNTER_AT: usize = 20;
const TAG_AT: usize = 28;
const TAG_LEN: usize = 16;
/// The smallest inner message is a cookie reply or keepalive (32 bytes).
pub const MIN_ENVELOPE_LEN: usize = RELAY_HEADER_LEN + 32;
/// A hop keepalive is a bare header addressed to the relay itself: it holds the member's NAT
/// mapping toward the relay open (and tells the relay where the member is now) without a
/// session, a handshake or anything to forward.
pub const HOP_KEEPALIVE_LEN: usize = RELAY_HEADER_LEN;
/// Inner messages up to this long are tagged whole; longer ones by their ends (module notes).
pub const WHOLE_MAC_UP_TO: usize = 256;
/// The bytes tagged at each end of a longer inner message: WireGuard's 16-byte transport
/// header (type, receiver, counter) and its 16-byte Poly1305 tag.
const BOUND_LEN: usize = 16;
/// How long a sender id holds: an hour, so a relay's table of ids is rebuilt hourly.
pub const ID_EPOCH_SECONDS: u64 = 3600;

/// A device's name on the relay: the first 8 bytes of its static key. It never appears in
/// clear in an envelope (see the module's notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShortId(pub [u8; 8]);

impl ShortId {
    pub fn of(key: &StaticPublic) -> Self {
        let mut id = [0u8; 8];
        id.copy_from_slice(&key.as_bytes()[..8]);
        ShortId(id)
    }
}

/// The id epoch of a wall-clock time (Unix seconds).
pub fn epoch_of(unix_seconds: u64) -> u64 {
    unix_seconds / ID_EPOCH_SECONDS
}

/// The MAC key of one hop, the same from both ends.
#[derive(Clone)]
pub struct HopKey {
    key: [u8; 32],
    /// Keyed with `key`, the envelope's constant first word already absorbed: BLAKE2s
    /// compresses the key block once here instead of for every envelope, and a transport
    /// envelope's tag then costs one compression.
    mac: Blake2sMac<U16>,
    /// The sender id of the epoch last asked for (the same for an hour of envelopes).
    id: std::cell::Cell<Option<(u64, ShortId)>>,
}

impl HopKey {
    pub fn between(local: &StaticSecret, remote: &StaticPublic) -> Self {
        let secret = x25519_dalek::StaticSecret::from(*local.expose_secret());
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*remote.as_bytes()));
        let mut hasher = Blake2s256::new();
        hasher.update(b"cloudpal/relay-hop/v1");
        hasher.update(shared.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(&key).expect("32-byte key fits BLAKE2s");
        mac.update(&[KIND_RELAY_ENVELOPE, 0, 0, 0]);
        HopKey { key, mac, id: std::cell::Cell::new(None) }
    }

    /// The sender id of this hop in `epoch`.
    pub fn id(&self, epoch: u64) -> ShortId {
        if let Some((cached, id)) = self.id.get()
            && cached == epoch
        {
            return id;
        }
        let digest = self.derive(b"cloudpal/relay-id/v1", epoch);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        self.id.set(Some((epoch, ShortId(id))));
        ShortId(id)
    }

    /// The keystream that masks the destination of envelope `counter` on this hop.
    fn mask(&self, counter: u64) -> [u8; 8] {
        let digest = self.derive(b"cloudpal/relay-dst/v2", counter);
        let mut mask = [0u8; 8];
        mask.copy_from_slice(&digest[..8]);
        mask
    }

    /// One BLAKE2s compression: label, key and value fit one 64-byte block (labels ≤ 24 bytes).
    fn derive(&self, label: &[u8], value: u64) -> [u8; 32] {
        debug_assert!(label.len() <= 24);
        let mut hasher = Blake2s256::new();
        hasher.update(label);
        hasher.update(self.key);
        hasher.update(value.to_be_bytes());
        hasher.finalize().into()
    }

    /// The MAC of an envelope whose first word is the constant one (`parse` checks it).
    fn mac(&self, envelope: &[u8]) -> Blake2sMac<U16> {
        let mut mac = self.mac.clone();
        mac.update(&envelope[SENDER_AT..TAG_AT]);
        let inner = &envelope[RELAY_HEADER_LEN..];
        // The length first: no short message's input can equal a long one's. (A datagram is
        // never longer than 65,535 bytes.)
        mac.update(&(inner.len() as u16).to_be_bytes());
        if inner.len() <= WHOLE_MAC_UP_TO {
            mac.update(inner);
        } else {
            mac.update(&inner[..BOUND_LEN]);
            mac.update(&inner[inner.len() - BOUND_LEN..]);
        }
        mac
    }
}

impl core::fmt::Debug for HopKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HopKey(…)")
    }
}

/// The fields of a well-formed envelope (its tag not yet checked, its destination masked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub sender: ShortId,
    masked_destination: [u8; 8],
    pub counter: u64,
}

impl Header {
    /// The destination, unmasked with the key of the hop it arrived on.
    pub fn destination(&self, key: &HopKey) -> ShortId {
        let mask = key.mask(self.counter);
        ShortId(std::array::from_fn(|i| self.masked_destination[i] ^ mask[i]))
    }
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

/// Reads the header of an envelope (a hop keepalive's too: the caller checks the length for
/// what the destination is).
pub fn parse(datagram: &[u8]) -> Result<Header, EnvelopeError> {
    if datagram.len() < HOP_KEEPALIVE_LEN || !is_envelope(datagram) || datagram[1..SENDER_AT] != [0, 0, 0] {
        return Err(EnvelopeError::Malformed);
    }
    let field = |at: usize| -> [u8; 8] { datagram[at..at + 8].try_into().unwrap_or_default() };
    Ok(Header { sender: ShortId(field(SENDER_AT)), masked_destination: field(DESTINATION_AT), counter: u64::from_be_bytes(field(COUNTER_AT)) })
}

/// Checks the tag with the hop's key (constant time).
pub fn verify(datagram: &[u8], key: &HopKey) -> Result<(), EnvelopeError> {
    parse(datagram)?;
    key.mac(datagram).verify_slice(&datagram[TAG_AT..RELAY_HEADER_LEN]).map_err(|_| EnvelopeError::BadTag)
}

/// Writes the header in front of the inner message already at `buffer[RELAY_HEADER_LEN..]`:
/// this hop's sender id for `epoch`, `destination` masked (none on the relay's last hop: the
/// destination is whoever holds the hop key), envelope number `counter`; then tags the whole.
pub fn seal(buffer: &mut [u8], destination: Option<ShortId>, counter: u64, epoch: u64, key: &HopKey) {
    buffer[0] = KIND_RELAY_ENVELOPE;
    buffer[1..SENDER_AT].fill(0);
    buffer[SENDER_AT..DESTINATION_AT].copy_from_slice(&key.id(epoch).0);
    let mask = key.mask(counter);
    let destination = destination.map_or([0; 8], |d| d.0);
    for i in 0..8 {
        buffer[DESTINATION_AT + i] = destination[i] ^ mask[i];
    }
    buffer[COUNTER_AT..TAG_AT].copy_from_slice(&counter.to_be_bytes());
    retag(buffer, key);
}

/// Re-tags an envelope with its header as it is (a tampering relay in tests).
pub fn retag(buffer: &mut [u8], key: &HopKey) {
    let tag: [u8; TAG_LEN] = key.mac(buffer).finalize().into_bytes().into();
    buffer[TAG_AT..RELAY_HEADER_LEN].copy_from_slice(&tag);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (StaticSecret, StaticSecret) {
        (StaticSecret::from_bytes([1; 32]), StaticSecret::from_bytes([2; 32]))
    }

    fn envelope(inner: &[u8], key: &HopKey, counter: u64) -> Vec<u8> {
        let mut buffer = vec![0u8; RELAY_HEADER_LEN + inner.len()];
        buffer[RELAY_HEADER_LEN..].copy_from_slice(inner);
        seal(&mut buffer, Some(ShortId([7; 8])), counter, 5, key);
        buffer
    }

    #[test]
    fn both_ends_derive_the_same_hop_key_and_others_do_not() {
        let (a, b) = keys();
        let c = StaticSecret::from_bytes([3; 32]);
        let ab = HopKey::between(&a, &b.public_key());
        let ba = HopKey::between(&b, &a.public_key());
        let cb = HopKey::between(&c, &b.public_key());
        let sealed = envelope(&[4; 64], &ab, 9);
        assert_eq!(verify(&sealed, &ba), Ok(()));
        assert_eq!(verify(&sealed, &cb), Err(EnvelopeError::BadTag));
        let header = parse(&sealed).expect("parses");
        assert_eq!((header.sender, header.counter), (ba.id(5), 9));
        assert_eq!(header.destination(&ba), ShortId([7; 8]));
        assert_ne!(header.destination(&cb), ShortId([7; 8]), "only the hop's ends unmask it");
    }

    #[test]
    fn any_changed_byte_fails_the_tag() {
        let (a, b) = keys();
        let key = HopKey::between(&a, &b.public_key());
        let sealed = envelope(&[4; 48], &key, 1);
        for at in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[at] ^= 0x01;
            assert!(verify(&altered, &key).is_err(), "byte {at} changed unnoticed");
        }
    }

    #[test]
    fn a_transport_envelope_is_tagged_by_its_header_length_and_both_ends() {
        let (a, b) = keys();
        let key = HopKey::between(&a, &b.public_key());
        let inner: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
        let sealed = envelope(&inner, &key, 1);
        let body = RELAY_HEADER_LEN + BOUND_LEN..sealed.len() - BOUND_LEN;
        for at in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[at] ^= 0x01;
            // Between the ends, the inner message's own Poly1305 tag is what catches it
            // (relay_paths: rl02_a_body_altered_on_the_wire_is_dropped_end_to_end).
            assert_eq!(verify(&altered, &key).is_ok(), body.contains(&at), "byte {at}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(verify(&longer, &key).is_err(), "the length is tagged");
        let mut shorter = sealed;
        shorter.remove(RELAY_HEADER_LEN + 100);
        assert!(verify(&shorter, &key).is_err(), "the length is tagged");
    }

    /// DP-17: nothing in an envelope's header stays the same from one envelope to the next
    /// but the hourly sender id, and no 8-byte prefix of a static key appears in clear.
    #[test]
    fn dp17_headers_name_no_device_in_clear() {
        let (a, b) = keys();
        let key = HopKey::between(&a, &b.public_key());
        let destination = ShortId::of(&StaticSecret::from_bytes([4; 32]).public_key());
        let sealed: Vec<Vec<u8>> = (0..4)
            .map(|counter| {
                let mut buffer = vec![0u8; RELAY_HEADER_LEN + 32];
                seal(&mut buffer, Some(destination), 1000 + counter, 7, &key);
                buffer
            })
            .collect();
        let fields: std::collections::BTreeSet<&[u8]> = sealed.iter().map(|s| &s[DESTINATION_AT..COUNTER_AT]).collect();
        assert_eq!(fields.len(), 4, "the destination field differs in every envelope");
        for header in &sealed {
            for key in [a.public_key(), b.public_key(), StaticSecret::from_bytes([4; 32]).public_key()] {
                assert!(!header[..RELAY_HEADER_LEN].windows(8).any(|w| w == &key.as_bytes()[..8]), "a key prefix in clear");
            }
        }
        assert_ne!(key.id(7), key.id(8), "the sender id changes every epoch");
    }

    #[test]
    fn retagging_moves_the_envelope_to_the_next_hop() {
        let (a, b) = keys();
        let c = StaticSecret::from_bytes([3; 32]);
        let first = HopKey::between(&a, &b.public_key());
        let second = HopKey::between(&b, &c.public_key());
        let mut sealed = envelope(&[4; 48], &first, 1);
        retag(&mut sealed, &second);
        assert_eq!(verify(&sealed, &HopKey::between(&c, &b.public_key())), Ok(()));
        assert!(verify(&sealed, &first).is_err());
    }

    #[test]
    fn short_or_foreign_datagrams_are_not_envelopes() {
        assert_eq!(parse(&[6; 10]), Err(EnvelopeError::Malformed));
        assert_eq!(parse(&[6; HOP_KEEPALIVE_LEN - 1]), Err(EnvelopeError::Malformed));
        assert_eq!(parse(&[4; 100]), Err(EnvelopeError::Malformed));
        let mut bad_reserved = vec![0u8; 100];
        bad_reserved[0] = 6;
        bad_reserved[2] = 1;
        assert_eq!(parse(&bad_reserved), Err(EnvelopeError::Malformed));
    }
}
