//! Log entries: what is signed (`EntryContents`), and the signed, hashed `Entry`.
//!
//! Wire form, canonical CBOR (definite lengths, shortest integers, arrays only — no maps, so
//! no key order or duplicate keys to get wrong):
//!
//! ```text
//! entry    = [ contents: bstr, signatures: [ sig: bstr(64) ... ] ]
//! contents = [ version, network: bstr(32) / null, parents: [bstr(32)...], author: bstr(32),
//!              time, operation ]
//! ```
//!
//! The signatures cover a domain separator followed by the exact `contents` bytes, and the
//! entry hash is a domain-separated BLAKE2s of those same bytes: nothing is ever re-encoded to
//! verify. Decoding re-encodes what it parsed and compares bytes, which rejects every
//! non-canonical form (long integers, indefinite lengths, tags, trailing bytes) in one rule.

use crate::cbor::{self, Reader, Writer};
use crate::policy::Policy;
use crate::share::{self as share, Share};
use blake2::{Blake2s256, Digest};
use protocol::keys::hex;
use protocol::{DeviceId, DevicePublicKey, DeviceSigningKey, Signature, StaticPublic};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Format version carried in every entry.
pub const FORMAT_VERSION: u64 = 2;
/// Entries are small; anything larger is an attack or a bug (ML-10).
pub const MAX_ENTRY_LEN: usize = 4096;
/// Merges of more than eight branches at once are never needed by honest nodes.
pub const MAX_PARENTS: usize = 8;
/// Device and network names: short, printable labels.
pub const MAX_NAME_LEN: usize = 64;

const SIGNATURE_DOMAIN: &[u8] = b"cloudpal/membership/entry/v1\0";
const INVITE_SIGNATURE_DOMAIN: &[u8] = b"cloudpal/membership/join-invite/v1\0";
const HASH_DOMAIN: &[u8] = b"cloudpal/membership/hash/v1\0";

/// BLAKE2s-256 of an entry's signed bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryHash(pub [u8; 32]);

/// A network's identity: the hash of its genesis entry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkId(pub [u8; 32]);

impl NetworkId {
    /// The data plane's handshake PSK: only members (and invitees) know the network id.
    pub fn data_plane_psk(&self) -> protocol::PresharedKey {
        use blake2::{Blake2s256, Digest};
        let mut hasher = Blake2s256::new();
        hasher.update(b"cloudpal/data-plane-psk/v1");
        hasher.update(self.0);
        protocol::PresharedKey::from_bytes(hasher.finalize().into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// May add, invite, revoke and set policy.
    Admin,
    Member,
    /// An always-on member with super-peer duties; not an admin unless made one.
    CloudPal,
    /// A friend's device: reaches only the devices (and ports) shared with it, is reached by
    /// nobody else, and is given only the part of the log that proves those devices
    /// ([`crate::guest`]).
    Guest,
}

/// Everything the network knows about one device, fixed when it is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub name: String,
    pub signing_key: DevicePublicKey,
    pub static_key: StaticPublic,
    pub role: Role,
    pub overlay_ipv4: Ipv4Addr,
    pub overlay_ipv6: Ipv6Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Genesis { network_name: String, founder: DeviceRecord },
    AddDevice { device: DeviceRecord },
    /// A one-time invite: whoever holds the secret of `invite_key` may join once, before
    /// `expires` (unix seconds), with `role`.
    /// A guest invite also says what the guest will reach (`shares`, empty otherwise).
    Invite { invite_key: DevicePublicKey, role: Role, expires: u64, name_hint: String, shares: Vec<Share> },
    /// Signed by the joining device and by the invite key.
    Join { invite: EntryHash, invite_key: DevicePublicKey, device: DeviceRecord },
    RevokeDevice { device: DeviceId },
    SetPolicy { policy: Policy },
    /// Mixes fresh randomness into the network secret (see [`crate::State::secret`]). An admin
    /// appends one right after each revocation, as its child: a revoked device is served the
    /// log only up to its revocation, so it never learns the secret that follows.
    RotateSecret { secret: RotationSecret },
    /// What a guest may reach from now on (replacing what it could before).
    Share { guest: DeviceId, shares: Vec<Share> },
}

/// The randomness of a [`Operation::RotateSecret`]; redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct RotationSecret(pub [u8; 32]);

impl core::fmt::Debug for RotationSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RotationSecret(<redacted>)")
    }
}

/// What an entry's signatures cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryContents {
    /// `None` only in the genesis entry, whose hash *is* the network id.
    pub network: Option<NetworkId>,
    /// Strictly ascending, unique; empty only for genesis.
    pub parents: Vec<EntryHash>,
    pub author: DevicePublicKey,
    /// Wall-clock unix seconds, as claimed by the author.
    pub time: u64,
    pub operation: Operation,
}

/// A signed entry, with the exact bytes it was received or created as.
///
/// Immutable once made, and shared: a clone is a reference count (a thousand logs of one
/// network in one process — a simulation — hold each entry once).
#[derive(Clone, PartialEq, Eq)]
pub struct Entry(std::sync::Arc<Signed>);

#[derive(PartialEq, Eq)]
struct Signed {
    contents: EntryContents,
    signed: Vec<u8>,
    signatures: Vec<Signature>,
    hash: EntryHash,
    encoded: Vec<u8>,
}

/// Why bytes are not an entry, or an entry's signatures do not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Cbor(#[from] cbor::CborError),
    #[error("entry larger than {MAX_ENTRY_LEN} bytes")]
    TooLarge,
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u64),
    #[error("unknown operation {0}")]
    UnknownOperation(u64),
    #[error("unknown role {0}")]
    UnknownRole(u64),
    #[error("parents must be strictly ascending, at most {MAX_PARENTS}")]
    BadParents,
    #[error("genesis must have no parents and no network; other entries need both")]
    GenesisShape,
    #[error("name empty, too long or not printable")]
    BadName,
    #[error("unsigned entry")]
    Unsigned,
    #[error("wrong number of signatures for the operation")]
    WrongSignatureCount,
    #[error("signature does not verify")]
    BadSignature,
    #[error("the author is not the device the operation names")]
    AuthorMismatch,
}

impl Entry {
    /// Signs `contents` as `author` (and, for a `Join`, with the invite secret too).
    pub fn sign(
        contents: EntryContents,
        author: &DeviceSigningKey,
        invite: Option<&DeviceSigningKey>,
    ) -> Result<Self, EntryError> {
        // What no node could decode is never made (more parents than the decoder takes, or
        // out of order): such an entry would be stored here and refused everywhere else.
        if contents.parents.len() > MAX_PARENTS || contents.parents.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(EntryError::BadParents);
        }
        let signed = encode_contents(&contents);
        let mut signatures = vec![author.sign(&signing_message(SIGNATURE_DOMAIN, &signed))];
        if let Some(invite) = invite {
            signatures.push(invite.sign(&signing_message(INVITE_SIGNATURE_DOMAIN, &signed)));
        }
        let entry = Self::assemble(contents, signed, signatures);
        entry.verify_signatures()?;
        Ok(entry)
    }

    /// Decodes and checks an entry from the network or disk: size, canonical form, shape and
    /// signatures. Whether it is *allowed* is for the log to decide.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        if bytes.len() > MAX_ENTRY_LEN {
            return Err(EntryError::TooLarge);
        }
        let mut reader = Reader::new(bytes);
        reader.array(2)?;
        let signed = reader.bytes()?.to_vec();
        let count = reader.array_up_to(2)?;
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            signatures.push(Signature::from_bytes(reader.fixed_bytes::<64>()?));
        }
        reader.finish()?;
        let contents = decode_contents(&signed)?;
        let entry = Self::assemble(contents, signed, signatures);
        if entry.0.encoded != bytes {
            return Err(cbor::CborError::NonCanonical.into());
        }
        entry.verify_signatures()?;
        Ok(entry)
    }

    pub fn contents(&self) -> &EntryContents {
        &self.0.contents
    }

    pub fn operation(&self) -> &Operation {
        &self.0.contents.operation
    }

    pub fn parents(&self) -> &[EntryHash] {
        &self.0.contents.parents
    }

    pub fn author(&self) -> DeviceId {
        self.0.contents.author.device_id()
    }

    pub fn hash(&self) -> EntryHash {
        self.0.hash
    }

    /// The exact bytes to store or send.
    pub fn encoded(&self) -> &[u8] {
        &self.0.encoded
    }

    fn assemble(contents: EntryContents, signed: Vec<u8>, signatures: Vec<Signature>) -> Self {
        let mut hasher = Blake2s256::new();
        hasher.update(HASH_DOMAIN);
        hasher.update(&signed);
        let hash = EntryHash(hasher.finalize().into());
        let mut writer = Writer::new();
        writer.array(2);
        writer.bytes(&signed);
        writer.array(signatures.len());
        for signature in &signatures {
            writer.bytes(signature.as_bytes());
        }
        Self(std::sync::Arc::new(Signed { contents, signed, signatures, hash, encoded: writer.finish() }))
    }

    fn verify_signatures(&self) -> Result<(), EntryError> {
        let author = &self.0.contents.author;
        let expected = match &self.0.contents.operation {
            Operation::Join { .. } => 2,
            _ => 1,
        };
        match self.0.signatures.len() {
            0 => return Err(EntryError::Unsigned),
            n if n != expected => return Err(EntryError::WrongSignatureCount),
            _ => {}
        }
        author
            .verify(&signing_message(SIGNATURE_DOMAIN, &self.0.signed), &self.0.signatures[0])
            .map_err(|_| EntryError::BadSignature)?;
        match &self.0.contents.operation {
            Operation::Join { invite_key, device, .. } => {
                if device.signing_key != *author {
                    return Err(EntryError::AuthorMismatch);
                }
                invite_key
                    .verify(&signing_message(INVITE_SIGNATURE_DOMAIN, &self.0.signed), &self.0.signatures[1])
                    .map_err(|_| EntryError::BadSignature)
            }
            Operation::Genesis { founder, .. } if founder.signing_key != *author => Err(EntryError::AuthorMismatch),
            _ => Ok(()),
        }
    }
}

fn signing_message(domain: &[u8], signed: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + signed.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(signed);
    message
}

// ---- contents encoding ------------------------------------------------------------------------

const OP_GENESIS: u64 = 0;
const OP_ADD_DEVICE: u64 = 1;
const OP_INVITE: u64 = 2;
const OP_JOIN: u64 = 3;
const OP_REVOKE_DEVICE: u64 = 4;
const OP_SET_POLICY: u64 = 5;
const OP_ROTATE_SECRET: u64 = 6;
const OP_SHARE: u64 = 7;

pub(crate) fn encode_contents(contents: &EntryContents) -> Vec<u8> {
    let mut w = Writer::new();
    w.array(6);
    w.u64(FORMAT_VERSION);
    match &contents.network {
        Some(network) => w.bytes(&network.0),
        None => w.null(),
    }
    w.array(contents.parents.len());
    for parent in &contents.parents {
        w.bytes(&parent.0);
    }
    w.bytes(contents.author.as_bytes());
    w.u64(contents.time);
    match &contents.operation {
        Operation::Genesis { network_name, founder } => {
            w.array(3);
            w.u64(OP_GENESIS);
            w.str(network_name);
            encode_device(&mut w, founder);
        }
        Operation::AddDevice { device } => {
            w.array(2);
            w.u64(OP_ADD_DEVICE);
            encode_device(&mut w, device);
        }
        Operation::Invite { invite_key, role, expires, name_hint, shares } => {
            // A guest invite carries its shares; any other has none and keeps its old shape.
            let guest = *role == Role::Guest;
            w.array(if guest { 6 } else { 5 });
            w.u64(OP_INVITE);
            w.bytes(invite_key.as_bytes());
            w.u64(role.code());
            w.u64(*expires);
            w.str(name_hint);
            if guest {
                share::encode(&mut w, shares);
            }
        }
        Operation::Join { invite, invite_key, device } => {
            w.array(4);
            w.u64(OP_JOIN);
            w.bytes(&invite.0);
            w.bytes(invite_key.as_bytes());
            encode_device(&mut w, device);
        }
        Operation::RevokeDevice { device } => {
            w.array(2);
            w.u64(OP_REVOKE_DEVICE);
            w.bytes(device.as_bytes());
        }
        Operation::SetPolicy { policy } => {
            w.array(2);
            w.u64(OP_SET_POLICY);
            policy.encode(&mut w);
        }
        Operation::RotateSecret { secret } => {
            w.array(2);
            w.u64(OP_ROTATE_SECRET);
            w.bytes(&secret.0);
        }
        Operation::Share { guest, shares } => {
            w.array(3);
            w.u64(OP_SHARE);
            w.bytes(guest.as_bytes());
            share::encode(&mut w, shares);
        }
    }
    w.finish()
}

fn decode_contents(bytes: &[u8]) -> Result<EntryContents, EntryError> {
    let mut r = Reader::new(bytes);
    r.array(6)?;
    let version = r.u64()?;
    if version != FORMAT_VERSION {
        return Err(EntryError::UnsupportedVersion(version));
    }
    let network = if r.is_null()? { None } else { Some(NetworkId(r.fixed_bytes::<32>()?)) };
    let parent_count = r.array_up_to(MAX_PARENTS)?;
    let mut parents = Vec::with_capacity(parent_count);
    for _ in 0..parent_count {
        parents.push(EntryHash(r.fixed_bytes::<32>()?));
    }
    if parents.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(EntryError::BadParents);
    }
    let author = DevicePublicKey::from_bytes(r.fixed_bytes::<32>()?);
    let time = r.u64()?;
    let op_len = r.array_up_to(6)?;
    let kind = r.u64()?;
    let operation = match (kind, op_len) {
        (OP_GENESIS, 3) => Operation::Genesis { network_name: name(&mut r)?, founder: decode_device(&mut r)? },
        (OP_ADD_DEVICE, 2) => Operation::AddDevice { device: decode_device(&mut r)? },
        (OP_INVITE, 5 | 6) => {
            let invite_key = DevicePublicKey::from_bytes(r.fixed_bytes::<32>()?);
            let role = Role::from_code(r.u64()?)?;
            let expires = r.u64()?;
            let name_hint = name_or_empty(&mut r)?;
            // Shares exactly when a guest is invited (re-encoding checks the shape too).
            if (op_len == 6) != (role == Role::Guest) {
                return Err(cbor::CborError::UnexpectedLength.into());
            }
            let shares = if op_len == 6 { share::decode(&mut r)? } else { Vec::new() };
            Operation::Invite { invite_key, role, expires, name_hint, shares }
        }
        (OP_JOIN, 4) => Operation::Join {
            invite: EntryHash(r.fixed_bytes::<32>()?),
            invite_key: DevicePublicKey::from_bytes(r.fixed_bytes::<32>()?),
            device: decode_device(&mut r)?,
        },
        (OP_REVOKE_DEVICE, 2) => Operation::RevokeDevice { device: DeviceId::from_bytes(r.fixed_bytes::<16>()?) },
        (OP_SET_POLICY, 2) => Operation::SetPolicy { policy: Policy::decode(&mut r)? },
        (OP_ROTATE_SECRET, 2) => Operation::RotateSecret { secret: RotationSecret(r.fixed_bytes::<32>()?) },
        (OP_SHARE, 3) => Operation::Share { guest: DeviceId::from_bytes(r.fixed_bytes::<16>()?), shares: share::decode(&mut r)? },
        (OP_GENESIS..=OP_SHARE, _) => return Err(cbor::CborError::UnexpectedLength.into()),
        (other, _) => return Err(EntryError::UnknownOperation(other)),
    };
    r.finish()?;
    let is_genesis = matches!(operation, Operation::Genesis { .. });
    if is_genesis != (network.is_none() && parents.is_empty()) || (!is_genesis && (network.is_none() || parents.is_empty())) {
        return Err(EntryError::GenesisShape);
    }
    Ok(EntryContents { network, parents, author, time, operation })
}

fn encode_device(w: &mut Writer, device: &DeviceRecord) {
    w.array(6);
    w.str(&device.name);
    w.bytes(device.signing_key.as_bytes());
    w.bytes(device.static_key.as_bytes());
    w.u64(device.role.code());
    w.bytes(&device.overlay_ipv4.octets());
    w.bytes(&device.overlay_ipv6.octets());
}

/// A device record's canonical bytes, for the state encoding.
pub(crate) fn encode_device_bytes(device: &DeviceRecord) -> Vec<u8> {
    let mut w = Writer::new();
    encode_device(&mut w, device);
    w.finish()
}

fn decode_device(r: &mut Reader<'_>) -> Result<DeviceRecord, EntryError> {
    r.array(6)?;
    Ok(DeviceRecord {
        name: name(r)?,
        signing_key: DevicePublicKey::from_bytes(r.fixed_bytes::<32>()?),
        static_key: StaticPublic::from_bytes(r.fixed_bytes::<32>()?),
        role: Role::from_code(r.u64()?)?,
        overlay_ipv4: Ipv4Addr::from(r.fixed_bytes::<4>()?),
        overlay_ipv6: Ipv6Addr::from(r.fixed_bytes::<16>()?),
    })
}

/// A device or network name: 1..=64 bytes of printable, non-space-padded text.
pub fn validate_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A name a user typed, refused with one line that says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid device name: use letters, digits, '-', '_' or '.'")]
pub struct InvalidName(pub String);

/// [`validate_name`] for input: the one check `init`, `join`, `request`, invites and adds share.
pub fn check_name(name: &str) -> Result<(), InvalidName> {
    if validate_name(name) { Ok(()) } else { Err(InvalidName(name.to_owned())) }
}

fn name(r: &mut Reader<'_>) -> Result<String, EntryError> {
    let text = r.str(MAX_NAME_LEN)?;
    if !validate_name(text) {
        return Err(EntryError::BadName);
    }
    Ok(text.to_owned())
}

fn name_or_empty(r: &mut Reader<'_>) -> Result<String, EntryError> {
    let text = r.str(MAX_NAME_LEN)?;
    if !text.is_empty() && !validate_name(text) {
        return Err(EntryError::BadName);
    }
    Ok(text.to_owned())
}

impl Role {
    pub fn code(self) -> u64 {
        match self {
            Role::Admin => 0,
            Role::Member => 1,
            Role::CloudPal => 2,
            Role::Guest => 3,
        }
    }

    fn from_code(code: u64) -> Result<Self, EntryError> {
        match code {
            0 => Ok(Role::Admin),
            1 => Ok(Role::Member),
            2 => Ok(Role::CloudPal),
            3 => Ok(Role::Guest),
            other => Err(EntryError::UnknownRole(other)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::CloudPal => "cloudpal",
            Role::Guest => "guest",
        }
    }
}

impl core::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            "cloudpal" => Ok(Role::CloudPal),
            "guest" => Ok(Role::Guest),
            other => Err(format!("unknown role {other:?}; use member, admin, cloudpal or guest")),
        }
    }
}

impl core::fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "EntryHash({}…)", hex(&self.0[..6]))
    }
}

impl core::fmt::Debug for NetworkId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The network id is a secret towards outsiders (DESIGN.md): never print it whole.
        write!(f, "NetworkId({}…)", hex(&self.0[..2]))
    }
}

impl core::fmt::Debug for Entry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Entry").field("hash", &self.0.hash).field("contents", &self.0.contents).finish_non_exhaustive()
    }
}

impl From<EntryHash> for NetworkId {
    fn from(hash: EntryHash) -> Self {
        NetworkId(hash.0)
    }
}

impl EntryHash {
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}
