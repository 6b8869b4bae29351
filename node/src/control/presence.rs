//! Presence records: how members find each other's current addresses in the network's own
//! Kademlia DHT, without trusting the DHT.
//!
//! Each device publishes one record under `H("cloudpal/presence/v2" ‖ secret ‖ epoch ‖
//! device_id)`, where `secret` is the network secret of the log's state (the network id
//! hashed, re-mixed after every revocation) — computable only by current members, different
//! every epoch (DHT-05) — whose value says which libp2p peer the device runs and where, with a
//! sequence number and an expiry, signed by the device's signing key from the membership log,
//! and sealed (XChaCha20-Poly1305) under a key derived from the secret and the record key: a
//! DHT node storing it sees ciphertext under a key it cannot link to anything (PRIV-07), and a
//! revoked device can neither find nor read what is published after its revocation. A node stores a record
//! someone puts to it (`StoreInserts::FilterBoth`) and dials a record it looks up only if
//! [`verify`] accepts it: the right key for a current member, that member's signature, not
//! expired, newer than what it has (DHT-01), under 1 KiB (DHT-04). Everything else is dropped
//! unseen. Sans-IO: the runtime feeds bytes, the log's state and the time.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use libp2p::{Multiaddr, PeerId, kad};
use membership::state::NetworkSecret;
use membership::{DeviceStatus, State};
use minicbor::bytes::{ByteArray, ByteVec};
use minicbor::{Decode, Encode};
use protocol::{DeviceId, DevicePublicKey, DeviceSigningKey, Signature};
use std::time::Duration;

/// A record's size cap, well under Kademlia's 65 KiB default (DHT-04).
pub const MAX_RECORD_LEN: usize = 1024;
/// How long a published record is valid.
pub const RECORD_TTL: Duration = Duration::from_secs(3600);
/// Addresses a record carries.
pub const MAX_ADDRESSES: usize = 8;
/// Tolerated clock skew for a record's expiry.
const SKEW: u64 = 300;
const EPOCH: u64 = 24 * 3600;
const DOMAIN: &[u8] = b"cloudpal/presence/v2";
/// A sealed value: a random nonce, the signed record, the AEAD tag.
pub const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// What a verified record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub device: DeviceId,
    pub peer: PeerId,
    pub addresses: Vec<Multiaddr>,
    pub seq: u64,
    pub expires: u64,
}

/// Why a record was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("record over the size cap")]
    Oversized,
    #[error("malformed record")]
    Malformed,
    #[error("record under another key than its device's")]
    WrongKey,
    #[error("record of a device that is not a member")]
    NotAMember,
    #[error("record of a revoked device")]
    Revoked,
    #[error("record signature does not verify")]
    BadSignature,
    #[error("expired record")]
    Expired,
    #[error("record expiry too far ahead")]
    TooFarAhead,
    #[error("record older than one already held")]
    Stale,
    #[error("record does not open with the network secret")]
    Sealed,
}

#[derive(Encode, Decode)]
struct Unsigned {
    #[n(0)]
    device: ByteArray<16>,
    #[n(1)]
    peer: ByteVec,
    #[n(2)]
    addresses: Vec<ByteVec>,
    #[n(3)]
    seq: u64,
    #[n(4)]
    expires: u64,
}

#[derive(Encode, Decode)]
struct Signed {
    #[n(0)]
    body: Unsigned,
    #[n(1)]
    signature: ByteArray<64>,
}

/// The DHT key of `device`'s record in the epoch of `unix_time`: computable only with the
/// network secret of the current members (it changes with each revocation, DHT-05).
pub fn key(secret: &NetworkSecret, unix_time: u64, device: &DeviceId) -> kad::RecordKey {
    use blake2::{Blake2s256, Digest};
    let mut hasher = Blake2s256::new();
    hasher.update(DOMAIN);
    hasher.update(secret.0);
    hasher.update((unix_time / EPOCH).to_be_bytes());
    hasher.update(device.as_bytes());
    kad::RecordKey::new(&hasher.finalize().as_slice())
}

fn signed_message(secret: &NetworkSecret, key: &[u8], body: &[u8]) -> Vec<u8> {
    [DOMAIN, secret.0.as_slice(), key, body].concat()
}

/// The key a record under `key` is sealed with.
fn seal_key(secret: &NetworkSecret, key: &[u8]) -> [u8; 32] {
    use blake2::{Blake2s256, Digest};
    let mut hasher = Blake2s256::new();
    hasher.update(b"cloudpal/presence-seal/v1");
    hasher.update(secret.0);
    hasher.update(key);
    hasher.finalize().into()
}

/// `nonce ‖ XChaCha20-Poly1305(signed record)`, the record key as associated data: a DHT node
/// storing it sees ciphertext under a key it cannot link to a device or an earlier epoch.
fn seal(secret: &NetworkSecret, key: &[u8], plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new((&seal_key(secret, key)).into());
    let mut body = plaintext.to_vec();
    let mut value = nonce.to_vec();
    match cipher.encrypt_inout_detached(&XNonce::from(nonce), key, body.as_mut_slice().into()) {
        Ok(tag) => {
            value.extend_from_slice(&body);
            value.extend_from_slice(&tag);
        }
        // XChaCha20-Poly1305 fails only for inputs over 256 GiB.
        Err(_) => value.clear(),
    }
    value
}

fn open(secret: &NetworkSecret, key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, rest) = value.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let tag: [u8; TAG_LEN] = tag.try_into().ok()?;
    let mut plaintext = body.to_vec();
    let cipher = XChaCha20Poly1305::new((&seal_key(secret, key)).into());
    cipher.decrypt_inout_detached(&XNonce::from(nonce), key, plaintext.as_mut_slice().into(), (&tag).into()).ok()?;
    Some(plaintext)
}

/// This device's record for the epoch of `now` (unix seconds): its key and sealed value.
/// `nonce` is fresh randomness from the caller.
pub fn publish(
    secret: &NetworkSecret,
    signer: &DeviceSigningKey,
    peer: &PeerId,
    addresses: &[Multiaddr],
    seq: u64,
    now: u64,
    nonce: [u8; NONCE_LEN],
) -> (kad::RecordKey, Vec<u8>) {
    let device = signer.public_key().device_id();
    let key = key(secret, now, &device);
    let body = Unsigned {
        device: (*device.as_bytes()).into(),
        peer: peer.to_bytes().into(),
        addresses: addresses.iter().take(MAX_ADDRESSES).map(|a| a.to_vec().into()).collect(),
        seq,
        expires: now + RECORD_TTL.as_secs(),
    };
    let encoded = minicbor::to_vec(&body).expect("encoding to a Vec cannot fail");
    let signature = signer.sign(&signed_message(secret, key.as_ref(), &encoded));
    let signed = minicbor::to_vec(Signed { body, signature: (*signature.as_bytes()).into() }).expect("encoding to a Vec cannot fail");
    let value = seal(secret, key.as_ref(), &signed, nonce);
    (key, value)
}

/// Checks a record found under `key` against the log's `state` at `now` (unix seconds);
/// `held` is the sequence number of the newest record already accepted for that device.
pub fn verify(state: &State, key: &[u8], value: &[u8], now: u64, held: Option<u64>) -> Result<Presence, Rejected> {
    if value.len() > MAX_RECORD_LEN {
        return Err(Rejected::Oversized);
    }
    let secret = &state.secret;
    let plaintext = open(secret, key, value).ok_or(Rejected::Sealed)?;
    let signed: Signed = minicbor::decode(&plaintext).map_err(|_| Rejected::Malformed)?;
    let body = &signed.body;
    let device = DeviceId::from_bytes(*body.device);
    // The key must be this device's for the current epoch (or a neighbouring one, for clocks
    // on either side of midnight).
    let epochs = [now.saturating_sub(EPOCH), now, now + EPOCH];
    if !epochs.iter().any(|t| self::key(secret, *t, &device).as_ref() == key) {
        return Err(Rejected::WrongKey);
    }
    let member = state.devices.get(&device).ok_or(Rejected::NotAMember)?;
    if member.status == DeviceStatus::Revoked {
        return Err(Rejected::Revoked);
    }
    let encoded = minicbor::to_vec(body).map_err(|_| Rejected::Malformed)?;
    let signer: DevicePublicKey = member.record.signing_key;
    signer
        .verify(&signed_message(secret, key, &encoded), &Signature::from_bytes(*signed.signature))
        .map_err(|_| Rejected::BadSignature)?;
    if body.expires <= now {
        return Err(Rejected::Expired);
    }
    if body.expires > now + RECORD_TTL.as_secs() + SKEW {
        return Err(Rejected::TooFarAhead);
    }
    if held.is_some_and(|held| body.seq <= held) {
        return Err(Rejected::Stale);
    }
    let peer = PeerId::from_bytes(&body.peer).map_err(|_| Rejected::Malformed)?;
    if body.addresses.len() > MAX_ADDRESSES {
        return Err(Rejected::Malformed);
    }
    let addresses = body.addresses.iter().map(|a| Multiaddr::try_from(a.to_vec())).collect::<Result<Vec<_>, _>>().map_err(|_| Rejected::Malformed)?;
    Ok(Presence { device, peer, addresses, seq: body.seq, expires: body.expires })
}

/// The sequence number in a record, its signature unchecked (to compare with a newcomer under
/// the same key); `None` if it does not open with the network secret.
pub fn seq_of(secret: &NetworkSecret, key: &[u8], value: &[u8]) -> Option<u64> {
    let plaintext = open(secret, key, value)?;
    minicbor::decode::<Signed>(&plaintext).ok().map(|s| s.body.seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use membership::Role;
    use membership::testkit::{Network, START_TIME};

    struct Fixture {
        net: Network,
        member: DeviceSigningKey,
        revoked: DeviceSigningKey,
        outsider: DeviceSigningKey,
        peer: PeerId,
        addresses: Vec<Multiaddr>,
    }

    fn fixture() -> Fixture {
        let mut net = Network::new(5);
        let member = net.add("phone", Role::Member).key;
        let revoked = net.add("stolen", Role::Member).key;
        let founder = net.founder.key.clone();
        net.append(&founder, membership::Operation::RevokeDevice { device: revoked.public_key().device_id() });
        let outsider = DeviceSigningKey::from_bytes(&[9; 32]);
        let peer = libp2p::identity::Keypair::ed25519_from_bytes([3; 32]).expect("key").public().to_peer_id();
        let addresses = vec!["/ip4/192.0.2.7/tcp/41641".parse().expect("addr")];
        Fixture { net, member, revoked, outsider, peer, addresses }
    }

    const NOW: u64 = START_TIME + 100;

    fn secret(f: &Fixture) -> NetworkSecret {
        f.net.log.state().secret.clone()
    }

    fn publish_as(f: &Fixture, signer: &DeviceSigningKey, seq: u64, now: u64) -> (kad::RecordKey, Vec<u8>) {
        publish(&secret(f), signer, &f.peer, &f.addresses, seq, now, [seq as u8; NONCE_LEN])
    }

    fn check(f: &Fixture, key: &kad::RecordKey, value: &[u8], now: u64, held: Option<u64>) -> Result<Presence, Rejected> {
        verify(f.net.log.state(), key.as_ref(), value, now, held)
    }

    #[test]
    fn a_members_record_verifies_and_says_where_it_is() {
        let f = fixture();
        let (key, value) = publish_as(&f, &f.member, 7, NOW);
        let presence = check(&f, &key, &value, NOW + 60, Some(6)).expect("valid");
        assert_eq!((presence.peer, presence.addresses, presence.seq), (f.peer, f.addresses.clone(), 7));
        assert!(value.len() <= MAX_RECORD_LEN);
        assert_eq!(seq_of(&secret(&f), key.as_ref(), &value), Some(7));
        assert_eq!(check(&f, &key, &value, NOW + RECORD_TTL.as_secs(), None), Err(Rejected::Expired));
        // Published just before midnight, still found just after it (the previous epoch's key).
        let late = (NOW / EPOCH + 1) * EPOCH - 10;
        let (key, value) = publish_as(&f, &f.member, 8, late);
        assert!(check(&f, &key, &value, late + 20, None).is_ok());
    }

    #[test]
    fn dht01_spoofed_records_are_rejected() {
        let f = fixture();
        let secret = secret(&f);
        let member_key = key(&secret, NOW, &f.member.public_key().device_id());
        // Signed by a non-member, under its own key and under a member's key.
        let (outsider_key, outsider_value) = publish_as(&f, &f.outsider, 1, NOW);
        assert_eq!(check(&f, &outsider_key, &outsider_value, NOW, None), Err(Rejected::NotAMember));
        assert_eq!(check(&f, &member_key, &outsider_value, NOW, None), Err(Rejected::Sealed), "sealed under another record key");
        // Signed by a revoked device.
        let (revoked_key, revoked_value) = publish_as(&f, &f.revoked, 1, NOW);
        assert_eq!(check(&f, &revoked_key, &revoked_value, NOW, None), Err(Rejected::Revoked));
        // Expired, and an older sequence number than one held.
        let (old_key, old_value) = publish_as(&f, &f.member, 1, NOW - RECORD_TTL.as_secs() - 1);
        assert_eq!(check(&f, &old_key, &old_value, NOW, None), Err(Rejected::Expired));
        let (key, value) = publish_as(&f, &f.member, 5, NOW);
        assert_eq!(check(&f, &key, &value, NOW, Some(5)), Err(Rejected::Stale));
        // A flipped bit anywhere in the sealed value.
        for at in [0, NONCE_LEN + 3, value.len() - 1] {
            let mut altered = value.clone();
            altered[at] ^= 1;
            assert_eq!(check(&f, &key, &altered, NOW, None), Err(Rejected::Sealed));
        }
        // Garbage.
        assert_eq!(check(&f, &member_key, &[0xff; 40], NOW, None), Err(Rejected::Sealed));
    }

    #[test]
    fn dht04_oversized_records_are_rejected() {
        let f = fixture();
        let key = key(&secret(&f), NOW, &f.member.public_key().device_id());
        assert_eq!(check(&f, &key, &vec![0u8; MAX_RECORD_LEN + 1], NOW, None), Err(Rejected::Oversized));
        // A record stays under the cap even with the most and longest addresses we publish.
        let long: Multiaddr = "/ip6/2001:db8::1/udp/41642/quic-v1".parse().expect("addr");
        let (_, value) = publish(&secret(&f), &f.member, &f.peer, &vec![long; MAX_ADDRESSES + 4], 1, NOW, [0; NONCE_LEN]);
        assert!(value.len() <= MAX_RECORD_LEN, "{} bytes", value.len());
    }

    /// DHT-05 and PRIV-07: a crawler recording puts over two epochs sees no common key, peer
    /// id or value; without the network secret nothing opens; and after a revocation (the
    /// secret rotated) the revoked device's copy of the secret neither finds nor opens the
    /// records published since.
    #[test]
    fn dht05_priv07_records_are_unlinkable_across_epochs_and_closed_to_the_revoked() {
        let mut f = fixture();
        let before = secret(&f);
        let device = f.member.public_key().device_id();
        let (key_today, value_today) = publish_as(&f, &f.member, 1, NOW);
        let (key_tomorrow, value_tomorrow) = publish_as(&f, &f.member, 2, NOW + EPOCH);
        assert_ne!(key_today, key_tomorrow);
        assert_ne!(key(&before, NOW, &device), key(&before, NOW, &f.outsider.public_key().device_id()));
        let peer_bytes = f.peer.to_bytes();
        for value in [&value_today, &value_tomorrow] {
            assert!(!value.windows(peer_bytes.len()).any(|w| w == peer_bytes), "the peer id in clear");
            assert!(!value.windows(16).any(|w| w == device.as_bytes()), "the device id in clear");
        }
        let common = value_today.windows(8).filter(|w| value_tomorrow.windows(8).any(|v| v == *w)).count();
        assert_eq!(common, 0, "two epochs' values share a run of 8 bytes");
        assert_eq!(seq_of(&NetworkSecret([0; 32]), key_today.as_ref(), &value_today), None);
        // A revocation rotates the secret: records made since are out of the revoked device's reach.
        let founder = f.net.founder.key.clone();
        f.net.append(&founder, membership::Operation::RotateSecret { secret: membership::entry::RotationSecret([0x42; 32]) });
        let after = secret(&f);
        assert_ne!(before, after);
        let (key_now, value_now) = publish_as(&f, &f.member, 3, NOW);
        assert_ne!(key(&before, NOW, &device), key_now, "the old secret does not find it");
        assert_eq!(seq_of(&before, key_now.as_ref(), &value_now), None, "nor open it");
        assert!(check(&f, &key_now, &value_now, NOW, None).is_ok(), "current members do");
    }
}
