//! Invite codes: everything a new device needs to join, in one copyable string.
//!
//! `pal1` + base32 (no padding) of: version, network id, invite entry hash, the invite's
//! one-time secret (an ed25519 seed: 256 bits of entropy), and where members can be reached —
//! the inviter first, then CloudPal and other members, so that any of them can admit the new
//! device while the inviter is offline. Addresses are binary multiaddrs grouped by peer, which
//! keeps a code naming two members under 400 characters. Base32 is case-insensitive, so the upper-case
//! form fits a QR code's compact alphanumeric mode. The code is a secret: `Debug` redacts it
//! and it is printed only where asked (INV-06).

use super::codes;
use anyhow::{Result, bail};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use membership::{EntryHash, NetworkId};
use protocol::DeviceSigningKey;

const PREFIX: &str = "pal1";
const VERSION: u8 = 1;
/// Members named in a code, and addresses per member: more only make it unwieldy.
pub const MAX_PEERS: usize = 4;
pub const MAX_ADDRESSES_PER_PEER: usize = 3;

pub struct InviteCode {
    pub network: NetworkId,
    pub invite: EntryHash,
    pub secret: DeviceSigningKey,
    /// Members' addresses, each ending in `/p2p/PEER`, in the order to try them.
    pub bootstrap: Vec<Multiaddr>,
}

impl InviteCode {
    pub fn encode(&self) -> String {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&self.network.0);
        bytes.extend_from_slice(&self.invite.0);
        bytes.extend_from_slice(self.secret.expose_secret());
        let peers = group_by_peer(&self.bootstrap);
        bytes.push(peers.len() as u8);
        for (peer, addresses) in peers {
            codes::push_prefixed(&mut bytes, &peer.to_bytes());
            bytes.push(addresses.len() as u8);
            for address in addresses {
                codes::push_prefixed(&mut bytes, &address.to_vec());
            }
        }
        codes::encode(PREFIX, &bytes)
    }

    pub fn decode(code: &str) -> Result<Self> {
        let garbled = || anyhow::anyhow!("this invite code is garbled; copy it again from `pal device invite`");
        let bytes = codes::body(code, PREFIX, &garbled)?;
        let mut reader = codes::Reader::new(&bytes, &garbled);
        if reader.byte()? != VERSION {
            bail!("this invite code is from a newer CloudPal; update pal");
        }
        let network = NetworkId(reader.array()?);
        let invite = EntryHash(reader.array()?);
        let secret: [u8; 32] = reader.array()?;
        let mut bootstrap = Vec::new();
        for _ in 0..reader.count(MAX_PEERS)? {
            let peer = PeerId::from_bytes(reader.prefixed()?).map_err(|_| garbled())?;
            for _ in 0..reader.count(MAX_ADDRESSES_PER_PEER)? {
                let address = Multiaddr::try_from(reader.prefixed()?.to_vec()).map_err(|_| garbled())?;
                bootstrap.push(address.with(Protocol::P2p(peer)));
            }
        }
        reader.finish()?;
        Ok(Self { network, invite, secret: DeviceSigningKey::from_bytes(&secret), bootstrap })
    }

    /// The code as a QR code drawn with Unicode half blocks, two modules per character cell,
    /// dark on a light terminal or light on a dark one alike (a quiet zone surrounds it).
    pub fn qr(&self) -> Result<String> {
        let code = qrcode::QrCode::with_error_correction_level(self.encode().to_ascii_uppercase(), qrcode::EcLevel::L)?;
        Ok(code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build())
    }
}

/// `/…/p2p/PEER` addresses grouped by peer in first-seen order, within the code's limits;
/// addresses without a peer are skipped (a member is dialled by who it is).
fn group_by_peer(addresses: &[Multiaddr]) -> Vec<(PeerId, Vec<Multiaddr>)> {
    let mut peers: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
    for address in addresses {
        let mut base = address.clone();
        let Some(Protocol::P2p(peer)) = base.pop() else { continue };
        if base.to_vec().len() > usize::from(u8::MAX) {
            continue;
        }
        if let Some((_, list)) = peers.iter_mut().find(|(p, _)| *p == peer) {
            if list.contains(&base) {
                continue;
            }
            if list.len() < MAX_ADDRESSES_PER_PEER {
                list.push(base);
            } else if crate::relaylink::is_fallback(&base) && !list.iter().any(crate::relaylink::is_fallback) {
                // A full list still makes room for CloudPal's TCP/TLS fallback: without it, a
                // device whose network lets only TCP 443 out could not join.
                list[MAX_ADDRESSES_PER_PEER - 1] = base;
            }
        } else if peers.len() < MAX_PEERS {
            peers.push((peer, vec![base]));
        }
    }
    peers
}

impl core::fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("InviteCode(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> PeerId {
        libp2p::identity::Keypair::ed25519_from_bytes([seed; 32]).expect("key").public().to_peer_id()
    }

    fn code() -> InviteCode {
        let (inviter, cloudpal) = (peer(1), peer(2));
        InviteCode {
            network: NetworkId([1; 32]),
            invite: EntryHash([2; 32]),
            secret: DeviceSigningKey::from_bytes(&[3; 32]),
            bootstrap: vec![
                format!("/ip4/10.1.0.2/tcp/41641/p2p/{inviter}").parse().expect("addr"),
                format!("/ip4/10.1.0.2/udp/41642/quic-v1/p2p/{inviter}").parse().expect("addr"),
                format!("/ip4/203.0.113.10/tcp/41641/p2p/{cloudpal}").parse().expect("addr"),
                format!("/ip6/2001:db8::1/tcp/41641/p2p/{cloudpal}").parse().expect("addr"),
            ],
        }
    }

    #[test]
    fn round_trips_in_either_case_and_stays_compact() {
        let encoded = code().encode();
        for text in [encoded.clone(), encoded.to_ascii_uppercase(), format!("  {encoded}\n")] {
            let decoded = InviteCode::decode(&text).expect("decodes");
            assert_eq!(decoded.network, NetworkId([1; 32]));
            assert_eq!(decoded.invite, EntryHash([2; 32]));
            assert_eq!(decoded.secret.expose_secret(), &[3; 32]);
            assert_eq!(decoded.bootstrap, code().bootstrap, "order kept: inviter first");
        }
        // Two members with two addresses each (one IPv6) in under 400 characters; the four
        // text multiaddrs alone would take 380, and base32 would then nearly double them.
        assert!(encoded.len() < 400, "{} characters", encoded.len());
    }

    #[test]
    fn inv03_the_secret_carries_256_bits() {
        // The secret is a fresh ed25519 seed from the OS RNG: all 32 bytes travel in the code.
        let mut rng = crate::statedir::os_rng().expect("randomness");
        let secret = DeviceSigningKey::generate(&mut rng);
        let decoded = InviteCode::decode(&InviteCode { secret, ..code() }.encode()).expect("decodes");
        assert_eq!(decoded.secret.expose_secret().len() * 8, 256);
    }

    #[test]
    fn limits_peers_and_addresses_and_skips_addresses_without_a_peer() {
        let mut bootstrap: Vec<Multiaddr> = vec!["/ip4/192.0.2.1/tcp/1".parse().expect("addr")];
        for seed in 10..20u8 {
            for port in 1..6u16 {
                bootstrap.push(format!("/ip4/192.0.2.{seed}/tcp/{port}/p2p/{}", peer(seed)).parse().expect("addr"));
            }
        }
        let decoded = InviteCode::decode(&InviteCode { bootstrap, ..code() }.encode()).expect("decodes");
        assert_eq!(decoded.bootstrap.len(), MAX_PEERS * MAX_ADDRESSES_PER_PEER);
        assert!(decoded.bootstrap[0].to_string().starts_with("/ip4/192.0.2.10/tcp/1/p2p/"));
    }

    #[test]
    fn a_full_list_keeps_room_for_the_tcp_fallback_and_the_code_stays_short() {
        let cloudpal = peer(2);
        let fallback = crate::relaylink::multiaddr("203.0.113.10:443".parse().expect("address"), &[9; 32]);
        let mut bootstrap: Vec<Multiaddr> = (1..=4).map(|i| format!("/ip4/203.0.113.{i}/tcp/41641/p2p/{cloudpal}").parse().expect("addr")).collect();
        bootstrap.push(fallback.clone().with(Protocol::P2p(cloudpal)));
        let decoded = InviteCode::decode(&InviteCode { bootstrap, ..code() }.encode()).expect("decodes");
        assert_eq!(decoded.bootstrap.len(), MAX_ADDRESSES_PER_PEER);
        assert_eq!(decoded.bootstrap.last(), Some(&fallback.with(Protocol::P2p(cloudpal))));
        // The inviter, and CloudPal with two plain addresses and the fallback.
        let mut mixed = code().bootstrap;
        mixed.push(crate::relaylink::multiaddr("203.0.113.10:443".parse().expect("address"), &[9; 32]).with(Protocol::P2p(cloudpal)));
        let encoded = InviteCode { bootstrap: mixed, ..code() }.encode();
        assert!(encoded.len() < 500, "{} characters", encoded.len());
    }

    #[test]
    fn the_qr_code_holds_the_upper_case_code() {
        let qr = code().qr().expect("fits a QR code");
        let rows: Vec<&str> = qr.lines().collect();
        assert!(rows.len() > 20 && rows.iter().all(|r| r.chars().count() == rows[0].chars().count()), "{qr}");
        assert!(qr.chars().all(|c| matches!(c, ' ' | '\u{2580}' | '\u{2584}' | '\u{2588}' | '\n')), "{qr}");
        let matrix = qrcode::QrCode::with_error_correction_level(code().encode().to_ascii_uppercase(), qrcode::EcLevel::L)
            .expect("qr");
        // Alphanumeric mode (the upper-case form) keeps the symbol small.
        assert!(matrix.version().width() <= 77, "QR width {}", matrix.version().width());
    }

    #[test]
    fn inv03_garbled_codes_fail_with_one_clear_line() {
        let good = code().encode();
        for bad in [String::new(), "pal1".into(), good[..good.len() - 3].to_string(), format!("{good}aa"), good.replace("pal1", "xyz1")] {
            let Err(error) = InviteCode::decode(&bad) else { panic!("{bad:?} accepted") };
            let error = error.to_string();
            assert!(!error.contains('\n') && error.contains("invite code"), "{error}");
        }
    }

    #[test]
    fn inv06_debug_is_redacted() {
        let printed = format!("{:?}", code());
        assert_eq!(printed, "InviteCode(<redacted>)");
    }
}
