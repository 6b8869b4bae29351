//! Key and identity types.
//!
//! Three kinds of key, never the same bytes reused across protocols (DESIGN.md "Keys and
//! identity"):
//! - [`DeviceSigningKey`] (ed25519) signs membership-log entries;
//! - [`StaticSecret`] (X25519) is the device's Noise static key on the data plane;
//! - [`PresharedKey`] is mixed into every handshake of one network (`psk2`).
//!
//! Secret types zeroize on drop and print as `<redacted>` in `Debug`; none implements
//! `Display`. Public types print a short prefix only, so a stray `{:?}` in a log never carries
//! a whole key.

use blake2::{Blake2s256, Digest};
use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length in bytes of every key in this module.
pub const KEY_LEN: usize = 32;

/// How many bytes of a public key `Debug` shows: enough to tell keys apart in a test failure,
/// too few to identify a device from a log line.
const DEBUG_PREFIX_BYTES: usize = 4;

/// Domain separator for [`DeviceId`] derivation.
const DEVICE_ID_LABEL: &[u8] = b"cloudpal/device-id/v1";

/// A device's X25519 static secret for the Noise handshake.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StaticSecret([u8; KEY_LEN]);

/// A device's X25519 static public key; certified by the membership log entry that adds it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StaticPublic([u8; KEY_LEN]);

/// The network-wide pre-shared key mixed into each handshake (Noise `psk2`).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey([u8; KEY_LEN]);

/// A device's ed25519 signing key for the membership log.
#[derive(Clone)]
pub struct DeviceSigningKey(ed25519_dalek::SigningKey);

/// A device's ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevicePublicKey([u8; KEY_LEN]);

/// A device's stable identifier: a domain-separated hash of its [`DevicePublicKey`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId([u8; DeviceId::LEN]);

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);

/// A key or signature could not be decoded or did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a valid ed25519 public key")]
    InvalidPublicKey,
    #[error("signature does not verify")]
    BadSignature,
}

impl StaticSecret {
    /// A fresh secret from a cryptographic RNG.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw secret, for persisting to the (0600) state directory and for snow.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn public_key(&self) -> StaticPublic {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        StaticPublic(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
}

impl StaticPublic {
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl PresharedKey {
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The all-zero PSK: Noise IKpsk2 without a shared secret, as WireGuard without `PresharedKey`.
    pub const fn none() -> Self {
        Self([0; KEY_LEN])
    }

    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl DeviceSigningKey {
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self(ed25519_dalek::SigningKey::generate(rng))
    }

    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(bytes))
    }

    /// The raw seed, for persisting to the (0600) state directory.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }

    pub fn public_key(&self) -> DevicePublicKey {
        DevicePublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.0.sign(message).to_bytes())
    }
}

impl DevicePublicKey {
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn device_id(&self) -> DeviceId {
        let mut hasher = Blake2s256::new();
        hasher.update(DEVICE_ID_LABEL);
        hasher.update(self.0);
        let digest = hasher.finalize();
        let mut id = [0u8; DeviceId::LEN];
        id.copy_from_slice(&digest[..DeviceId::LEN]);
        DeviceId(id)
    }

    /// Verifies with `verify_strict`: rejects small-order keys and non-canonical signatures,
    /// so every platform reaches the same verdict on the same bytes (ML-14).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), KeyError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.0)
            .map_err(|_| KeyError::InvalidPublicKey)?;
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &signature).map_err(|_| KeyError::BadSignature)
    }
}

impl DeviceId {
    /// 128 bits: collision-free for any one owner's devices, short enough to print.
    pub const LEN: usize = 16;

    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// Lower-case hex, the form the CLI prints.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl Signature {
    pub const LEN: usize = 64;

    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

macro_rules! redacted_debug {
    ($($name:ident),*) => {$(
        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    )*};
}
redacted_debug!(StaticSecret, PresharedKey, DeviceSigningKey);

macro_rules! prefix_debug {
    ($($name:ident),*) => {$(
        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, concat!(stringify!($name), "({}…)"), hex(&self.0[..DEBUG_PREFIX_BYTES]))
            }
        }
    )*};
}
prefix_debug!(StaticPublic, DevicePublicKey, DeviceId, Signature);

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn priv03_secret_types_print_redacted() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let static_secret = StaticSecret::generate(&mut rng);
        let signing = DeviceSigningKey::generate(&mut rng);
        let psk = PresharedKey::from_bytes([7; 32]);
        for (printed, secret) in [
            (format!("{static_secret:?}"), static_secret.expose_secret().to_vec()),
            (format!("{signing:?}"), signing.expose_secret().to_vec()),
            (format!("{psk:?}"), psk.expose_secret().to_vec()),
        ] {
            assert!(printed.contains("<redacted>"), "{printed}");
            assert!(!printed.contains(&hex(&secret[..4])), "{printed}");
        }
    }

    #[test]
    fn public_keys_print_only_a_prefix() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let public = StaticSecret::generate(&mut rng).public_key();
        let printed = format!("{public:?}");
        assert!(printed.contains(&hex(&public.as_bytes()[..4])));
        assert!(!printed.contains(&hex(&public.as_bytes()[..8])));
    }

    #[test]
    fn x25519_public_key_matches_snow() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let secret = StaticSecret::generate(&mut rng);
        let params: snow::params::NoiseParams =
            crate::handshake::NOISE_PARAMS.parse().expect("valid params");
        // snow derives the public key itself when building an initiator; both must agree or
        // the responder's identity check would reject every honest peer.
        use snow::resolvers::CryptoResolver;
        let mut dh = snow::resolvers::DefaultResolver.resolve_dh(&params.dh).expect("x25519 available");
        dh.set(secret.expose_secret());
        assert_eq!(dh.pubkey(), secret.public_key().as_bytes());
    }

    #[test]
    fn signatures_verify_and_reject_tampering() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let key = DeviceSigningKey::generate(&mut rng);
        let signature = key.sign(b"entry");
        assert_eq!(key.public_key().verify(b"entry", &signature), Ok(()));
        assert_eq!(key.public_key().verify(b"entrY", &signature), Err(KeyError::BadSignature));
    }

    #[test]
    fn device_id_is_stable_and_distinct() {
        let a = DevicePublicKey::from_bytes([1; 32]).device_id();
        let b = DevicePublicKey::from_bytes([2; 32]).device_id();
        assert_ne!(a, b);
        assert_eq!(a, DevicePublicKey::from_bytes([1; 32]).device_id());
    }
}
