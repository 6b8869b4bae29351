//! MAC1/MAC2 and cookies (WireGuard §5.4.4 and §5.4.7), the DoS defence of the handshake.
//!
//! - `mac1 = MAC(HASH(LABEL_MAC1 ‖ responder_static), msg[..mac1])` proves the sender knows the
//!   responder's public key: garbage costs the responder one BLAKE2s and no state (DP-12).
//! - Under load, the responder requires `mac2 = MAC(cookie, msg[..mac2])` where
//!   `cookie = MAC(secret, source address)` and `secret` rotates every [`COOKIE_SECRET_LIFETIME`].
//!   A sender without a valid mac2 gets a 64-byte cookie reply — smaller than the 148-byte
//!   initiation, so no amplification (DP-11) — and retries with the cookie, proving it can
//!   receive at its claimed address.
//! - The cookie travels encrypted with XChaCha20-Poly1305 under `HASH(LABEL_COOKIE ‖
//!   responder_static)`, with the message's mac1 as associated data, so only the real sender
//!   of that message can use it.

use crate::keys::StaticPublic;
use crate::wire::{COOKIE_LEN, COOKIE_NONCE_LEN, MAC_LEN, TAG_LEN};
use blake2::digest::{KeyInit, Mac, consts::U16};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::CryptoRng;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Domain-separated labels (not WireGuard's, so our MACs never validate as WireGuard's).
const LABEL_MAC1: &[u8] = b"cloudpal/v1/mac1";
const LABEL_COOKIE: &[u8] = b"cloudpal/v1/cookie";

/// How long a responder's cookie secret lives (WireGuard: 120 s).
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// How long an initiator may use a received cookie: a little less than the secret's lifetime
/// so it never sends a cookie the responder has already forgotten.
pub const COOKIE_VALIDITY: Duration = Duration::from_secs(120 - 5);

pub type MacBytes = [u8; MAC_LEN];

/// Keys derived from one responder static key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct MacKeys {
    mac1: [u8; 32],
    cookie: [u8; 32],
}

impl MacKeys {
    fn for_responder(responder: &StaticPublic) -> Self {
        Self {
            mac1: labelled_hash(LABEL_MAC1, responder.as_bytes()),
            cookie: labelled_hash(LABEL_COOKIE, responder.as_bytes()),
        }
    }
}

/// The initiator's (or any sender's) side: stamps MACs on messages sent to one peer and keeps
/// the cookie that peer last gave us.
#[derive(Clone)]
pub struct MacSender {
    keys: MacKeys,
    cookie: Option<(MacBytes, Instant)>,
    /// mac1 of the last message sent: the associated data of the cookie reply it may trigger.
    last_mac1: Option<MacBytes>,
}

/// The responder's side: checks MACs and makes cookies for its own static key.
pub struct MacChecker {
    keys: MacKeys,
    secret: [u8; 32],
    secret_born: Option<Instant>,
}

/// A cookie reply that did not decrypt or answered no message of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cookie reply does not match a message we sent")]
pub struct InvalidCookieReply;

impl MacSender {
    pub fn new(peer: &StaticPublic) -> Self {
        Self { keys: MacKeys::for_responder(peer), cookie: None, last_mac1: None }
    }

    /// Fills the last `2 * MAC_LEN` bytes of a handshake message with mac1 and mac2 (zeros
    /// unless we hold a fresh cookie).
    pub fn stamp(&mut self, message: &mut [u8], now: Instant) {
        let mac1_at = message.len() - 2 * MAC_LEN;
        let mac1 = mac(&self.keys.mac1, &message[..mac1_at]);
        message[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let mac2 = match self.cookie {
            Some((cookie, received)) if now.saturating_duration_since(received) < COOKIE_VALIDITY => {
                mac(&cookie, &message[..mac1_at + MAC_LEN])
            }
            _ => [0; MAC_LEN],
        };
        message[mac1_at + MAC_LEN..].copy_from_slice(&mac2);
    }

    /// Decrypts and stores the cookie from a reply to the last message we stamped.
    pub fn consume_reply(
        &mut self,
        nonce: &[u8; COOKIE_NONCE_LEN],
        encrypted_cookie: &[u8; COOKIE_LEN + TAG_LEN],
        now: Instant,
    ) -> Result<(), InvalidCookieReply> {
        let last_mac1 = self.last_mac1.ok_or(InvalidCookieReply)?;
        let cipher = XChaCha20Poly1305::new((&self.keys.cookie).into());
        let mut cookie: MacBytes = [0; COOKIE_LEN];
        cookie.copy_from_slice(&encrypted_cookie[..COOKIE_LEN]);
        let tag = encrypted_cookie[COOKIE_LEN..].try_into().map_err(|_| InvalidCookieReply)?;
        cipher
            .decrypt_inout_detached(&XNonce::from(*nonce), &last_mac1, (&mut cookie[..]).into(), tag)
            .map_err(|_| InvalidCookieReply)?;
        self.cookie = Some((cookie, now));
        Ok(())
    }

    pub fn has_fresh_cookie(&self, now: Instant) -> bool {
        self.cookie.is_some_and(|(_, at)| now.saturating_duration_since(at) < COOKIE_VALIDITY)
    }
}

impl MacChecker {
    pub fn new(local: &StaticPublic) -> Self {
        Self { keys: MacKeys::for_responder(local), secret: [0; 32], secret_born: None }
    }

    /// Constant-time mac1 check: one keyed BLAKE2s, no state.
    pub fn mac1_is_valid(&self, message: &[u8]) -> bool {
        let Some(mac1_at) = message.len().checked_sub(2 * MAC_LEN) else { return false };
        let expected = mac(&self.keys.mac1, &message[..mac1_at]);
        bool::from(expected.ct_eq(&message[mac1_at..mac1_at + MAC_LEN]))
    }

    /// Constant-time mac2 check against the cookie `source` would hold now.
    pub fn mac2_is_valid(&self, message: &[u8], source: SocketAddr, now: Instant) -> bool {
        let Some(mac1_at) = message.len().checked_sub(2 * MAC_LEN) else { return false };
        if !self.secret_is_fresh(now) {
            return false;
        }
        let cookie = self.cookie_for(source);
        let expected = mac(&cookie, &message[..mac1_at + MAC_LEN]);
        bool::from(expected.ct_eq(&message[mac1_at + MAC_LEN..]))
    }

    /// The encrypted cookie for `source`, bound to `message`'s mac1, and the random nonce.
    pub fn make_cookie_reply<R: CryptoRng + ?Sized>(
        &mut self,
        message: &[u8],
        source: SocketAddr,
        now: Instant,
        rng: &mut R,
    ) -> ([u8; COOKIE_NONCE_LEN], [u8; COOKIE_LEN + TAG_LEN]) {
        if !self.secret_is_fresh(now) {
            rng.fill_bytes(&mut self.secret);
            self.secret_born = Some(now);
        }
        let cookie = self.cookie_for(source);
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mac1_at = message.len().saturating_sub(2 * MAC_LEN);
        let associated = &message[mac1_at..(mac1_at + MAC_LEN).min(message.len())];
        let cipher = XChaCha20Poly1305::new((&self.keys.cookie).into());
        let mut sealed = [0u8; COOKIE_LEN + TAG_LEN];
        sealed[..COOKIE_LEN].copy_from_slice(&cookie);
        let (body, tag_out) = sealed.split_at_mut(COOKIE_LEN);
        match cipher.encrypt_inout_detached(&XNonce::from(nonce), associated, body.into()) {
            Ok(tag) => tag_out.copy_from_slice(&tag),
            // XChaCha20-Poly1305 fails only for inputs over 256 GiB; a 16-byte cookie cannot.
            Err(_) => sealed = [0; COOKIE_LEN + TAG_LEN],
        }
        (nonce, sealed)
    }

    fn secret_is_fresh(&self, now: Instant) -> bool {
        self.secret_born.is_some_and(|born| now.saturating_duration_since(born) < COOKIE_SECRET_LIFETIME)
    }

    fn cookie_for(&self, source: SocketAddr) -> MacBytes {
        let mut address = [0u8; 18];
        let len = match source.ip() {
            IpAddr::V4(ip) => {
                address[..4].copy_from_slice(&ip.octets());
                4
            }
            IpAddr::V6(ip) => {
                address[..16].copy_from_slice(&ip.octets());
                16
            }
        };
        address[len..len + 2].copy_from_slice(&source.port().to_be_bytes());
        mac(&self.secret, &address[..len + 2])
    }
}

impl Drop for MacChecker {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl core::fmt::Debug for MacSender {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MacSender").field("has_cookie", &self.cookie.is_some()).finish_non_exhaustive()
    }
}

impl core::fmt::Debug for MacChecker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MacChecker").finish_non_exhaustive()
    }
}

/// Keyed BLAKE2s with a 16-byte output: WireGuard's `MAC`.
fn mac(key: &[u8], data: &[u8]) -> MacBytes {
    // BLAKE2s takes keys of 1..=32 bytes; every key here is a 16-byte cookie or a 32-byte hash.
    let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(key)
        .expect("MAC keys are 16 or 32 bytes");
    Mac::update(&mut mac, data);
    mac.finalize().into_bytes().into()
}

fn labelled_hash(label: &[u8], data: &[u8]) -> [u8; 32] {
    let mut hasher = Blake2s256::new();
    hasher.update(label);
    hasher.update(data);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::StaticSecret;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn setup() -> (MacSender, MacChecker, ChaCha20Rng) {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let responder = StaticSecret::generate(&mut rng).public_key();
        (MacSender::new(&responder), MacChecker::new(&responder), rng)
    }

    #[test]
    fn stamped_mac1_verifies_and_any_flip_fails() {
        let (mut sender, checker, _) = setup();
        let now = Instant::now();
        let mut message = [0x55u8; 148];
        sender.stamp(&mut message, now);
        assert!(checker.mac1_is_valid(&message));
        for bit in 0..(148 - 16) * 8 {
            let mut flipped = message;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(!checker.mac1_is_valid(&flipped), "bit {bit}");
        }
    }

    #[test]
    fn dp11_cookie_round_trip_makes_mac2_valid_for_that_source_only() {
        let (mut sender, mut checker, mut rng) = setup();
        let now = Instant::now();
        let source: SocketAddr = "192.0.2.7:5000".parse().expect("addr");
        let mut message = [0x11u8; 148];
        sender.stamp(&mut message, now);
        assert!(!checker.mac2_is_valid(&message, source, now), "no cookie yet");
        let (nonce, sealed) = checker.make_cookie_reply(&message, source, now, &mut rng);
        sender.consume_reply(&nonce, &sealed, now).expect("reply decrypts");
        sender.stamp(&mut message, now);
        assert!(checker.mac2_is_valid(&message, source, now));
        let elsewhere: SocketAddr = "192.0.2.8:5000".parse().expect("addr");
        assert!(!checker.mac2_is_valid(&message, elsewhere, now));
        let later = now + COOKIE_SECRET_LIFETIME;
        assert!(!checker.mac2_is_valid(&message, source, later), "secret rotated");
    }

    #[test]
    fn cookie_reply_for_another_message_is_refused() {
        let (mut sender, mut checker, mut rng) = setup();
        let now = Instant::now();
        let source: SocketAddr = "192.0.2.7:5000".parse().expect("addr");
        let mut ours = [0x11u8; 148];
        sender.stamp(&mut ours, now);
        let theirs = [0x22u8; 148];
        let (nonce, sealed) = checker.make_cookie_reply(&theirs, source, now, &mut rng);
        assert_eq!(sender.consume_reply(&nonce, &sealed, now), Err(InvalidCookieReply));
        assert!(!sender.has_fresh_cookie(now));
    }
}
