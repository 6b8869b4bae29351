//! Presence records: how members find each other's current addresses in the network's own
//! Kademlia DHT, without trusting the DHT.
//!
//! Each device publishes one record under `H("cloudpal/presence/v1" ‖ network_id ‖ epoch ‖
//! device_id)` — computable only with the network id, different every epoch (DHT-05) — whose
//! value says which libp2p peer the device runs and where, with a sequence number and an
//! expiry, signed by the device's signing key from the membership log. A node stores a record
//! someone puts to it (`StoreInserts::FilterBoth`) and dials a record it looks up only if
//! [`verify`] accepts it: the right key for a current member, that member's signature, not
//! expired, newer than what it has (DHT-01), under 1 KiB (DHT-04). Everything else is dropped
//! unseen. Sans-IO: the runtime feeds bytes, the log's state and the time.

use libp2p::{Multiaddr, PeerId, kad};
use membership::{DeviceStatus, NetworkId, State};
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
const DOMAIN: &[u8] = b"cloudpal/presence/v1";

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

/// The DHT key of `device`'s record in the epoch of `unix_time`.
pub fn key(network: &NetworkId, unix_time: u64, device: &DeviceId) -> kad::RecordKey {
    use blake2::{Blake2s256, Digest};
    let mut hasher = Blake2s256::new();
    hasher.update(DOMAIN);
    hasher.update(network.0);
    hasher.update((unix_time / EPOCH).to_be_bytes());
    hasher.update(device.as_bytes());
    kad::RecordKey::new(&hasher.finalize().as_slice())
}

fn signed_message(network: &NetworkId, key: &[u8], body: &[u8]) -> Vec<u8> {
    [DOMAIN, network.0.as_slice(), key, body].concat()
}

/// This device's record for the epoch of `now` (unix seconds): its key and value.
pub fn publish(
    network: &NetworkId,
    signer: &DeviceSigningKey,
    peer: &PeerId,
    addresses: &[Multiaddr],
    seq: u64,
    now: u64,
) -> (kad::RecordKey, Vec<u8>) {
    let device = signer.public_key().device_id();
    let key = key(network, now, &device);
    let body = Unsigned {
        device: (*device.as_bytes()).into(),
        peer: peer.to_bytes().into(),
        addresses: addresses.iter().take(MAX_ADDRESSES).map(|a| a.to_vec().into()).collect(),
        seq,
        expires: now + RECORD_TTL.as_secs(),
    };
    let encoded = minicbor::to_vec(&body).expect("encoding to a Vec cannot fail");
    let signature = signer.sign(&signed_message(network, key.as_ref(), &encoded));
    let value = minicbor::to_vec(Signed { body, signature: (*signature.as_bytes()).into() }).expect("encoding to a Vec cannot fail");
    (key, value)
}

/// Checks a record found under `key` against the log's `state` at `now` (unix seconds);
/// `held` is the sequence number of the newest record already accepted for that device.
pub fn verify(network: &NetworkId, state: &State, key: &[u8], value: &[u8], now: u64, held: Option<u64>) -> Result<Presence, Rejected> {
    if value.len() > MAX_RECORD_LEN {
        return Err(Rejected::Oversized);
    }
    let signed: Signed = minicbor::decode(value).map_err(|_| Rejected::Malformed)?;
    let body = &signed.body;
    let device = DeviceId::from_bytes(*body.device);
    // The key must be this device's for the current epoch (or a neighbouring one, for clocks
    // on either side of midnight).
    let epochs = [now.saturating_sub(EPOCH), now, now + EPOCH];
    if !epochs.iter().any(|t| self::key(network, *t, &device).as_ref() == key) {
        return Err(Rejected::WrongKey);
    }
    let member = state.devices.get(&device).ok_or(Rejected::NotAMember)?;
    if member.status == DeviceStatus::Revoked {
        return Err(Rejected::Revoked);
    }
    let encoded = minicbor::to_vec(body).map_err(|_| Rejected::Malformed)?;
    let signer: DevicePublicKey = member.record.signing_key;
    signer
        .verify(&signed_message(network, key, &encoded), &Signature::from_bytes(*signed.signature))
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

/// The sequence number in a record, unverified (to compare with a newcomer under the same key).
pub fn seq_of(value: &[u8]) -> Option<u64> {
    minicbor::decode::<Signed>(value).ok().map(|s| s.body.seq)
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

    fn check(f: &Fixture, key: &kad::RecordKey, value: &[u8], now: u64, held: Option<u64>) -> Result<Presence, Rejected> {
        verify(&f.net.log.network(), f.net.log.state(), key.as_ref(), value, now, held)
    }

    #[test]
    fn a_members_record_verifies_and_says_where_it_is() {
        let f = fixture();
        let (key, value) = publish(&f.net.log.network(), &f.member, &f.peer, &f.addresses, 7, NOW);
        let presence = check(&f, &key, &value, NOW + 60, Some(6)).expect("valid");
        assert_eq!((presence.peer, presence.addresses, presence.seq), (f.peer, f.addresses.clone(), 7));
        assert!(value.len() <= MAX_RECORD_LEN);
        assert_eq!(check(&f, &key, &value, NOW + RECORD_TTL.as_secs(), None), Err(Rejected::Expired));
        // Published just before midnight, still found just after it (the previous epoch's key).
        let late = (NOW / EPOCH + 1) * EPOCH - 10;
        let (key, value) = publish(&f.net.log.network(), &f.member, &f.peer, &f.addresses, 8, late);
        assert!(check(&f, &key, &value, late + 20, None).is_ok());
    }

    #[test]
    fn dht01_spoofed_records_are_rejected() {
        let f = fixture();
        let network = f.net.log.network();
        let member_key = key(&network, NOW, &f.member.public_key().device_id());
        // Unsigned: a valid record's signature zeroed.
        let (_, value) = publish(&network, &f.member, &f.peer, &f.addresses, 1, NOW);
        let mut signed: Signed = minicbor::decode(&value).expect("decode");
        signed.signature = [0u8; 64].into();
        let unsigned = minicbor::to_vec(&signed).expect("encode");
        assert_eq!(check(&f, &member_key, &unsigned, NOW, None), Err(Rejected::BadSignature));
        // Signed by a non-member, under its own key and under a member's key.
        let (outsider_key, outsider_value) = publish(&network, &f.outsider, &f.peer, &f.addresses, 1, NOW);
        assert_eq!(check(&f, &outsider_key, &outsider_value, NOW, None), Err(Rejected::NotAMember));
        assert_eq!(check(&f, &member_key, &outsider_value, NOW, None), Err(Rejected::WrongKey));
        // Claiming to be the member, signed by someone else.
        let mut forged: Signed = minicbor::decode(&outsider_value).expect("decode");
        forged.body.device = (*f.member.public_key().device_id().as_bytes()).into();
        assert_eq!(check(&f, &member_key, &minicbor::to_vec(&forged).expect("encode"), NOW, None), Err(Rejected::BadSignature));
        // Signed by a revoked device.
        let (revoked_key, revoked_value) = publish(&network, &f.revoked, &f.peer, &f.addresses, 1, NOW);
        assert_eq!(check(&f, &revoked_key, &revoked_value, NOW, None), Err(Rejected::Revoked));
        // Expired, and an older sequence number than one held.
        let (old_key, old_value) = publish(&network, &f.member, &f.peer, &f.addresses, 1, NOW - RECORD_TTL.as_secs() - 1);
        assert_eq!(check(&f, &old_key, &old_value, NOW, None), Err(Rejected::Expired));
        let (key, value) = publish(&network, &f.member, &f.peer, &f.addresses, 5, NOW);
        assert_eq!(check(&f, &key, &value, NOW, Some(5)), Err(Rejected::Stale));
        // From another network.
        let other = NetworkId([0xee; 32]);
        let (other_key, other_value) = publish(&other, &f.member, &f.peer, &f.addresses, 9, NOW);
        assert!(check(&f, &other_key, &other_value, NOW, None).is_err());
        // Garbage.
        assert_eq!(check(&f, &member_key, &[0xff; 40], NOW, None), Err(Rejected::Malformed));
    }

    #[test]
    fn dht04_oversized_records_are_rejected() {
        let f = fixture();
        let key = key(&f.net.log.network(), NOW, &f.member.public_key().device_id());
        assert_eq!(check(&f, &key, &vec![0u8; MAX_RECORD_LEN + 1], NOW, None), Err(Rejected::Oversized));
        // A record stays under the cap even with the most and longest addresses we publish.
        let long: Multiaddr = "/ip6/2001:db8::1/udp/41642/quic-v1".parse().expect("addr");
        let (_, value) = publish(&f.net.log.network(), &f.member, &f.peer, &vec![long; MAX_ADDRESSES + 4], 1, NOW);
        assert!(value.len() <= MAX_RECORD_LEN, "{} bytes", value.len());
    }

    #[test]
    fn dht05_keys_rotate_per_epoch_and_per_device() {
        let f = fixture();
        let network = f.net.log.network();
        let device = f.member.public_key().device_id();
        assert_ne!(key(&network, NOW, &device), key(&network, NOW + EPOCH, &device));
        assert_ne!(key(&network, NOW, &device), key(&network, NOW, &f.outsider.public_key().device_id()));
        assert_ne!(key(&network, NOW, &device), key(&NetworkId([1; 32]), NOW, &device));
    }
}
