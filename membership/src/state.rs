//! The membership state a log folds to, and the rules each operation must satisfy.
//!
//! Every collection is a `BTreeMap`/`BTreeSet` and [`State::encode`] is canonical CBOR, so two
//! nodes that folded the same entries hold byte-identical state (ML-06).

use crate::cbor::Writer;
use crate::entry::{DeviceRecord, Entry, EntryHash, NetworkId, Operation, Role, validate_name};
use crate::policy::Policy;
use crate::share::{MAX_SHARES, Share};
use protocol::{DeviceId, DevicePublicKey};
use std::collections::{BTreeMap, BTreeSet};

/// At most this many devices, active or revoked, in one network (ML-13; a thousand devices
/// is what the simulations of issue #17 run).
pub const MAX_DEVICES: usize = 1024;
/// Unconsumed, unexpired invites at once; an admin flooding invites is refused past this.
pub const MAX_OPEN_INVITES: usize = 512;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub network: Option<NetworkId>,
    pub network_name: String,
    pub devices: BTreeMap<DeviceId, DeviceState>,
    pub invites: BTreeMap<EntryHash, InviteState>,
    /// Signing and static keys of revoked devices: never admitted again.
    pub revoked_keys: BTreeSet<[u8; 32]>,
    pub policy: Policy,
    /// Per guest: what it may reach, and the entry that said so (its join, or the latest
    /// `Share`), which its view carries ([`crate::guest`]).
    pub shares: BTreeMap<DeviceId, GuestShares>,
    /// What only current members know: the network id hashed, then each rotation (appended
    /// after a revocation) mixed in. Presence records are keyed and encrypted under it.
    pub secret: NetworkSecret,
    /// What the active devices hold that a new one may not share, to check a join without
    /// walking them all.
    taken: Taken,
}

/// A Bloom filter of every admitted device's name, overlay addresses and static key (two bits
/// of 65,536 per value). A new device none of whose values is in it clashes with no active
/// device; a hit (a clash, a revoked device's old value, or about one in twenty new devices
/// of a thousand-device network, by chance) is settled by walking the devices, as without the
/// filter. It is trusted only while it has seen every device (`admitted == devices.len()`):
/// a state built by other means (a guest's view) walks. A cache of `devices`, so it takes no
/// part in equality or encoding. 8 KB a state; before it, the walk (a thousand string
/// compares per join, a fold of a thousand joins each time a log refolds) was a fifth of a
/// 1,000-device simulation's partition, and a sorted index cost as much in moving memory
/// (issue #17).
#[derive(Clone, Default)]
struct Taken {
    bits: Vec<u64>,
    admitted: usize,
}

impl PartialEq for Taken {
    fn eq(&self, _: &Taken) -> bool {
        true
    }
}

impl Eq for Taken {}

impl core::fmt::Debug for Taken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Taken({} devices)", self.admitted)
    }
}

impl Taken {
    const WORDS: usize = 1024;

    /// The two bit positions of each of `record`'s four values.
    fn bits(record: &DeviceRecord) -> [[usize; 2]; 4] {
        use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
        let hash = |tag: u8, bytes: &[u8]| BuildHasherDefault::<DefaultHasher>::default().hash_one((tag, bytes));
        let values = [
            hash(0, record.name.as_bytes()),
            hash(1, &record.overlay_ipv4.octets()),
            hash(2, &record.overlay_ipv6.octets()),
            hash(3, record.static_key.as_bytes()),
        ];
        let size = Self::WORDS * 64;
        values.map(|v| [(v as usize) % size, ((v >> 32) as usize) % size])
    }

    fn add(&mut self, record: &DeviceRecord) {
        if self.bits.is_empty() {
            self.bits = vec![0; Self::WORDS];
        }
        for bit in Self::bits(record).into_iter().flatten() {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
        self.admitted += 1;
    }

    /// Whether `record` surely clashes with no active device of `devices`.
    fn surely_free(&self, record: &DeviceRecord, devices: usize) -> bool {
        // Free unless both bits of some value are set (none are before the first admission).
        self.admitted == devices && Self::bits(record).iter().all(|pair| pair.iter().any(|bit| self.bits.get(bit / 64).is_none_or(|word| word & (1 << (bit % 64)) == 0)))
    }
}

/// The network secret of [`State::secret`]; redacted in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NetworkSecret(pub [u8; 32]);

impl core::fmt::Debug for NetworkSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NetworkSecret(<redacted>)")
    }
}

impl NetworkSecret {
    /// The secret of a network before any rotation: its id hashed.
    pub fn genesis(network: &NetworkId) -> Self {
        NetworkSecret::default().mixed(b"cloudpal/network-secret/v1", &network.0)
    }

    fn mixed(&self, label: &[u8], input: &[u8]) -> Self {
        use blake2::{Blake2s256, Digest};
        let mut hasher = Blake2s256::new();
        hasher.update(label);
        hasher.update(self.0);
        hasher.update(input);
        NetworkSecret(hasher.finalize().into())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    pub record: DeviceRecord,
    pub status: DeviceStatus,
    /// The entry that admitted the device.
    pub admitted_by: EntryHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestShares {
    pub shares: Vec<Share>,
    pub set_by: EntryHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceStatus {
    Active,
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteState {
    pub key: DevicePublicKey,
    pub role: Role,
    pub expires: u64,
    pub name_hint: String,
    pub created_by: DeviceId,
    /// Set once, forever: a consumed invite stays consumed even if its device is revoked.
    pub consumed_by: Option<DeviceId>,
    /// A guest invite: what the guest will reach once it joins.
    pub shares: Vec<Share>,
}

/// Why an invite cannot admit a device; each reads as one line a user can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InviteUnusable {
    #[error("this invite code is not valid for this network")]
    Unknown,
    #[error("this invite code has already been used")]
    Used,
    #[error("this invite code has expired; ask for a new one")]
    Expired,
    #[error("this invite code was made by a device that has since been revoked; ask for a new one")]
    CreatorRevoked,
}

/// Why an operation is not allowed in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("the first entry must be a genesis")]
    NotGenesis,
    #[error("a network has exactly one genesis")]
    SecondGenesis,
    #[error("the founder must be an admin")]
    FounderNotAdmin,
    #[error("author is not a device of this network")]
    UnknownAuthor,
    #[error("author is revoked")]
    AuthorRevoked,
    #[error("only admins may do this")]
    NotAdmin,
    #[error("device already added")]
    DuplicateDevice,
    #[error("key belongs to a revoked device")]
    KeyRevoked,
    #[error("name already used by an active device")]
    NameTaken,
    #[error("overlay address already used by an active device")]
    AddressTaken,
    #[error("static key already used by an active device")]
    StaticKeyTaken,
    #[error("invalid device name")]
    BadName,
    #[error("too many devices")]
    TooManyDevices,
    #[error("too many open invites")]
    TooManyInvites,
    #[error("invite key already used")]
    DuplicateInviteKey,
    #[error("invite expires before it is made")]
    InviteAlreadyExpired,
    #[error("no such invite")]
    UnknownInvite,
    #[error("invite already used")]
    InviteConsumed,
    #[error("invite expired")]
    InviteExpired,
    #[error("invite key does not match the invite")]
    InviteKeyMismatch,
    #[error("the device that made this invite has been revoked")]
    InviterRevoked,
    #[error("joining device claims a role its invite does not grant")]
    RoleMismatch,
    #[error("no such device")]
    UnknownDevice,
    #[error("device already revoked")]
    AlreadyRevoked,
    #[error("the last admin cannot be revoked")]
    LastAdmin,
    #[error("policy exceeds its limits")]
    PolicyTooLarge,
    #[error("overlay address outside the overlay prefixes")]
    AddressOutOfRange,
    #[error("only a guest has shares, and only an active guest")]
    NotAGuest,
    #[error("a share names a device that is not an active member (guests share nothing)")]
    BadShare,
}

impl State {
    /// Checks whether `entry` may be applied; changes nothing.
    pub fn check(&self, entry: &Entry) -> Result<(), RuleError> {
        let time = entry.contents().time;
        if let Operation::Genesis { founder, .. } = entry.operation() {
            if self.network.is_some() {
                return Err(RuleError::SecondGenesis);
            }
            if founder.role != Role::Admin {
                return Err(RuleError::FounderNotAdmin);
            }
            return self.check_new_device(founder);
        }
        if self.network.is_none() {
            return Err(RuleError::NotGenesis);
        }
        if let Operation::Join { invite, invite_key, device } = entry.operation() {
            // The author is the joining device itself, admitted by this very entry.
            let invite = self.invites.get(invite).ok_or(RuleError::UnknownInvite)?;
            if invite.key != *invite_key {
                return Err(RuleError::InviteKeyMismatch);
            }
            if invite.consumed_by.is_some() {
                return Err(RuleError::InviteConsumed);
            }
            if time > invite.expires {
                return Err(RuleError::InviteExpired);
            }
            // A stolen admin device's invites die with it: the thief cannot enrol a device of
            // its own with an invite made before the revocation.
            if self.devices.get(&invite.created_by).is_some_and(|d| d.status == DeviceStatus::Revoked) {
                return Err(RuleError::InviterRevoked);
            }
            if device.role != invite.role {
                return Err(RuleError::RoleMismatch);
            }
            return self.check_new_device(device);
        }
        let author = self.devices.get(&entry.author()).ok_or(RuleError::UnknownAuthor)?;
        if author.status == DeviceStatus::Revoked {
            return Err(RuleError::AuthorRevoked);
        }
        if author.record.role != Role::Admin {
            return Err(RuleError::NotAdmin);
        }
        match entry.operation() {
            Operation::AddDevice { device } if device.role == Role::Guest => Err(RuleError::NotAGuest),
            Operation::AddDevice { device } => self.check_new_device(device),
            Operation::Invite { role, shares, .. } if (*role != Role::Guest && !shares.is_empty()) || !self.shareable(shares) => Err(RuleError::BadShare),
            Operation::Share { guest, shares } => {
                match self.devices.get(guest) {
                    Some(d) if d.record.role == Role::Guest && d.status == DeviceStatus::Active => {}
                    _ => return Err(RuleError::NotAGuest),
                }
                if self.shareable(shares) { Ok(()) } else { Err(RuleError::BadShare) }
            }
            Operation::Invite { invite_key, expires, .. } => {
                if *expires <= time {
                    return Err(RuleError::InviteAlreadyExpired);
                }
                if self.invites.values().any(|i| i.key == *invite_key) {
                    return Err(RuleError::DuplicateInviteKey);
                }
                let open = self.invites.values().filter(|i| i.consumed_by.is_none() && i.expires > time).count();
                if open >= MAX_OPEN_INVITES {
                    return Err(RuleError::TooManyInvites);
                }
                Ok(())
            }
            Operation::RevokeDevice { device } => {
                let target = self.devices.get(device).ok_or(RuleError::UnknownDevice)?;
                if target.status == DeviceStatus::Revoked {
                    return Err(RuleError::AlreadyRevoked);
                }
                if target.record.role == Role::Admin && self.active_admins().count() <= 1 {
                    return Err(RuleError::LastAdmin);
                }
                Ok(())
            }
            Operation::SetPolicy { policy } => {
                if policy.is_within_limits() { Ok(()) } else { Err(RuleError::PolicyTooLarge) }
            }
            Operation::Genesis { .. } | Operation::Join { .. } | Operation::RotateSecret { .. } => Ok(()),
        }
    }

    /// Applies `entry` if [`Self::check`] allows it; otherwise changes nothing.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), RuleError> {
        self.check(entry)?;
        let hash = entry.hash();
        match entry.operation() {
            Operation::Genesis { network_name, founder } => {
                self.network = Some(NetworkId::from(hash));
                self.secret = NetworkSecret::genesis(&NetworkId::from(hash));
                self.network_name = network_name.clone();
                self.admit(founder, hash);
            }
            Operation::AddDevice { device } => self.admit(device, hash),
            Operation::Invite { invite_key, role, expires, name_hint, shares } => {
                self.invites.insert(
                    hash,
                    InviteState {
                        key: *invite_key,
                        role: *role,
                        expires: *expires,
                        name_hint: name_hint.clone(),
                        created_by: entry.author(),
                        consumed_by: None,
                        shares: shares.clone(),
                    },
                );
            }
            Operation::Join { invite, device, .. } => {
                if device.role == Role::Guest {
                    let shares = self.invites.get(invite).map(|i| i.shares.clone()).unwrap_or_default();
                    self.shares.insert(device.signing_key.device_id(), GuestShares { shares, set_by: hash });
                }
                if let Some(invite) = self.invites.get_mut(invite) {
                    invite.consumed_by = Some(device.signing_key.device_id());
                }
                self.admit(device, hash);
            }
            Operation::Share { guest, shares } => {
                self.shares.insert(*guest, GuestShares { shares: shares.clone(), set_by: hash });
            }
            Operation::RevokeDevice { device } => {
                if let Some(target) = self.devices.get_mut(device) {
                    target.status = DeviceStatus::Revoked;
                    self.revoked_keys.insert(*target.record.signing_key.as_bytes());
                    self.revoked_keys.insert(*target.record.static_key.as_bytes());
                }
            }
            Operation::SetPolicy { policy } => self.policy = policy.clone(),
            Operation::RotateSecret { secret } => self.secret = self.secret.mixed(b"cloudpal/network-secret/rotate/v1", &secret.0),
        }
        Ok(())
    }

    pub fn active_devices(&self) -> impl Iterator<Item = (&DeviceId, &DeviceState)> {
        self.devices.iter().filter(|(_, d)| d.status == DeviceStatus::Active)
    }

    pub fn active_admins(&self) -> impl Iterator<Item = (&DeviceId, &DeviceState)> {
        self.active_devices().filter(|(_, d)| d.record.role == Role::Admin)
    }

    pub fn device_by_name(&self, name: &str) -> Option<(&DeviceId, &DeviceState)> {
        // An active device first: a revoked device's name may be reused.
        self.active_devices()
            .find(|(_, d)| d.record.name == name)
            .or_else(|| self.devices.iter().find(|(_, d)| d.record.name == name))
    }

    /// The invite `hash` if it can still admit a device at `now` (unix seconds): the one
    /// check a member makes before answering a joiner and a joiner makes before signing.
    pub fn usable_invite(&self, hash: &EntryHash, now: u64) -> Result<&InviteState, InviteUnusable> {
        let invite = self.invites.get(hash).ok_or(InviteUnusable::Unknown)?;
        if invite.consumed_by.is_some() {
            return Err(InviteUnusable::Used);
        }
        if invite.expires < now {
            return Err(InviteUnusable::Expired);
        }
        if self.devices.get(&invite.created_by).is_some_and(|d| d.status == DeviceStatus::Revoked) {
            return Err(InviteUnusable::CreatorRevoked);
        }
        Ok(invite)
    }

    /// Free overlay addresses for `device`: the first derivation attempt that no active device
    /// holds yet (an adder and a joiner pick the same way).
    pub fn allocate_overlay(&self, founder: &DeviceId, device: &DeviceId) -> Option<(std::net::Ipv4Addr, std::net::Ipv6Addr)> {
        (0..64).map(|attempt| crate::overlay::derive(founder, device, attempt)).find(|(v4, v6)| {
            !self.active_devices().any(|(_, d)| d.record.overlay_ipv4 == *v4 || d.record.overlay_ipv6 == *v6)
        })
    }

    /// Whether the device holding this Noise static key may handshake now.
    pub fn is_active_static_key(&self, key: &protocol::StaticPublic) -> bool {
        self.active_devices().any(|(_, d)| d.record.static_key == *key)
    }

    /// Canonical bytes of the whole state: equal bytes ⇔ equal state.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.array(7);
        match &self.network {
            Some(network) => w.bytes(&network.0),
            None => w.null(),
        }
        w.str(&self.network_name);
        w.array(self.devices.len());
        for (id, device) in &self.devices {
            w.array(4);
            w.bytes(id.as_bytes());
            w.bytes(&crate::entry::encode_device_bytes(&device.record));
            w.u64(match device.status {
                DeviceStatus::Active => 0,
                DeviceStatus::Revoked => 1,
            });
            w.bytes(&device.admitted_by.0);
        }
        w.array(self.invites.len());
        for (hash, invite) in &self.invites {
            w.array(7);
            w.bytes(&hash.0);
            w.bytes(invite.key.as_bytes());
            w.u64(invite.role.code());
            w.u64(invite.expires);
            w.bytes(invite.created_by.as_bytes());
            match &invite.consumed_by {
                Some(device) => w.bytes(device.as_bytes()),
                None => w.null(),
            }
            crate::share::encode(&mut w, &invite.shares);
        }
        w.array(self.revoked_keys.len());
        for key in &self.revoked_keys {
            w.bytes(key);
        }
        self.policy.encode(&mut w);
        w.array(self.shares.len());
        for (guest, shares) in &self.shares {
            w.array(3);
            w.bytes(guest.as_bytes());
            crate::share::encode(&mut w, &shares.shares);
            w.bytes(&shares.set_by.0);
        }
        w.finish()
    }

    /// Whether every share names an active device that is not a guest, once, in order.
    fn shareable(&self, shares: &[Share]) -> bool {
        shares.len() <= MAX_SHARES
            && shares.windows(2).all(|pair| pair[0].device < pair[1].device)
            && shares.iter().all(|s| self.devices.get(&s.device).is_some_and(|d| d.status == DeviceStatus::Active && d.record.role != Role::Guest))
    }

    /// What `guest` may reach on `device` now: `None` when nothing (not a guest, revoked, or
    /// not shared with it); else the ports (empty: all).
    pub fn shared_ports(&self, guest: &DeviceId, device: &DeviceId) -> Option<&[crate::share::PortRange]> {
        let active = |id: &DeviceId| self.devices.get(id).is_some_and(|d| d.status == DeviceStatus::Active);
        if !active(guest) || !active(device) || self.devices.get(guest).is_none_or(|d| d.record.role != Role::Guest) {
            return None;
        }
        self.shares.get(guest)?.shares.iter().find(|s| s.device == *device).map(|s| s.ports.as_slice())
    }

    /// Whether the policy lets `device` use an exit: a member when the exit list allows it
    /// (everyone by default), a guest only when the list names it.
    pub fn may_use_exit(&self, device: &DeviceId) -> bool {
        let Some(d) = self.devices.get(device).filter(|d| d.status == DeviceStatus::Active) else { return false };
        match (&self.policy.exit.devices, d.record.role) {
            (crate::policy::ExitDevices::Only(names), Role::Guest) => names.contains(&d.record.name),
            (_, Role::Guest) => false,
            (devices, _) => devices.allows(&d.record.name),
        }
    }

    /// Whether two devices may talk: members with members; a guest only with what is shared
    /// with it.
    pub fn may_talk(&self, a: &DeviceId, b: &DeviceId) -> bool {
        let role = |id: &DeviceId| self.devices.get(id).filter(|d| d.status == DeviceStatus::Active).map(|d| d.record.role);
        match (role(a), role(b)) {
            (None, _) | (_, None) | (Some(Role::Guest), Some(Role::Guest)) => false,
            (Some(Role::Guest), _) => self.shared_ports(a, b).is_some(),
            (_, Some(Role::Guest)) => self.shared_ports(b, a).is_some(),
            _ => true,
        }
    }

    fn check_new_device(&self, device: &DeviceRecord) -> Result<(), RuleError> {
        if !validate_name(&device.name) {
            return Err(RuleError::BadName);
        }
        if !crate::overlay::in_overlay_ranges(device.overlay_ipv4, device.overlay_ipv6) {
            return Err(RuleError::AddressOutOfRange);
        }
        let id = device.signing_key.device_id();
        if self.devices.contains_key(&id) {
            return Err(RuleError::DuplicateDevice);
        }
        if self.revoked_keys.contains(device.signing_key.as_bytes())
            || self.revoked_keys.contains(device.static_key.as_bytes())
        {
            return Err(RuleError::KeyRevoked);
        }
        if self.devices.len() >= MAX_DEVICES {
            return Err(RuleError::TooManyDevices);
        }
        if self.taken.surely_free(device, self.devices.len()) {
            return Ok(());
        }
        for (_, other) in self.active_devices() {
            let other = &other.record;
            if other.name == device.name {
                return Err(RuleError::NameTaken);
            }
            if other.overlay_ipv4 == device.overlay_ipv4 || other.overlay_ipv6 == device.overlay_ipv6 {
                return Err(RuleError::AddressTaken);
            }
            if other.static_key == device.static_key {
                return Err(RuleError::StaticKeyTaken);
            }
        }
        Ok(())
    }

    fn admit(&mut self, device: &DeviceRecord, by: EntryHash) {
        self.taken.add(device);
        self.devices.insert(
            device.signing_key.device_id(),
            DeviceState { record: device.clone(), status: DeviceStatus::Active, admitted_by: by },
        );
    }
}
