//! Builders for tests, fuzzing, benchmarks and simulations: a network with a founder, and
//! helpers that make devices, invites and signed entries deterministically from a seed.

use crate::entry::{DeviceRecord, Entry, EntryContents, EntryHash, Operation, Role};
use crate::log::Log;
use crate::overlay;
use protocol::{DeviceSigningKey, StaticSecret};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// A device's keys and record.
#[derive(Debug, Clone)]
pub struct Member {
    pub key: DeviceSigningKey,
    pub static_secret: StaticSecret,
    pub record: DeviceRecord,
}

/// A network under test: its log, founder and a clock in unix seconds.
#[derive(Debug, Clone)]
pub struct Network {
    pub log: Log,
    pub founder: Member,
    pub now: u64,
    rng: ChaCha20Rng,
}

pub const START_TIME: u64 = 1_800_000_000;

impl Network {
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let key = DeviceSigningKey::generate(&mut rng);
        let founder_id = key.public_key().device_id();
        let founder = member_with(key, StaticSecret::generate(&mut rng), "founder", Role::Admin, &founder_id, 0);
        let genesis = Entry::sign(
            EntryContents {
                network: None,
                parents: Vec::new(),
                author: founder.key.public_key(),
                time: START_TIME,
                operation: Operation::Genesis { network_name: "home".into(), founder: founder.record.clone() },
            },
            &founder.key,
            None,
        )
        .expect("genesis signs");
        let log = Log::from_genesis(genesis).expect("genesis is valid");
        Self { log, founder, now: START_TIME + 1, rng }
    }

    /// A copy of this network to append to concurrently (a partition); it draws fresh keys.
    pub fn branch(&self, salt: u64) -> Self {
        let mut seed = [0u8; 32];
        self.rng.clone().fill_bytes(&mut seed);
        seed[..8].copy_from_slice(&salt.to_le_bytes());
        Self { log: self.log.clone(), founder: self.founder.clone(), now: self.now, rng: ChaCha20Rng::from_seed(seed) }
    }

    /// A new device's keys and record, with overlay addresses free in the current state.
    pub fn member(&mut self, name: &str, role: Role) -> Member {
        let key = DeviceSigningKey::generate(&mut self.rng);
        let static_secret = StaticSecret::generate(&mut self.rng);
        let founder = self.founder.key.public_key().device_id();
        let id = key.public_key().device_id();
        let attempt = (0..)
            .find(|attempt| {
                let (v4, v6) = overlay::derive(&founder, &id, *attempt);
                !self.log.state().active_devices().any(|(_, d)| d.record.overlay_ipv4 == v4 || d.record.overlay_ipv6 == v6)
            })
            .unwrap_or(0);
        member_with(key, static_secret, name, role, &founder, attempt)
    }

    /// The founder adds a device.
    pub fn add(&mut self, name: &str, role: Role) -> Member {
        let member = self.member(name, role);
        let founder = self.founder.key.clone();
        self.append(&founder, Operation::AddDevice { device: member.record.clone() });
        member
    }

    /// Appends an entry by `author` at the current heads, advancing the clock.
    pub fn append(&mut self, author: &DeviceSigningKey, operation: Operation) -> Entry {
        self.now += 1;
        self.log.append(operation, author, None, self.now).expect("entry allowed")
    }

    /// An admin's invite: the invite entry's hash and the one-time secret.
    pub fn invite(&mut self, admin: &DeviceSigningKey, role: Role, ttl: u64) -> (EntryHash, DeviceSigningKey) {
        let secret = DeviceSigningKey::generate(&mut self.rng);
        let entry = self.append(
            admin,
            Operation::Invite { invite_key: secret.public_key(), role, expires: self.now + 1 + ttl, name_hint: String::new(), shares: Vec::new() },
        );
        (entry.hash(), secret)
    }

    /// A guest invite sharing `shares`.
    pub fn guest_invite(&mut self, admin: &DeviceSigningKey, shares: Vec<crate::Share>) -> (EntryHash, DeviceSigningKey) {
        let secret = DeviceSigningKey::generate(&mut self.rng);
        let operation = Operation::Invite { invite_key: secret.public_key(), role: Role::Guest, expires: self.now + 3600, name_hint: String::new(), shares: crate::share::canonical(shares) };
        (self.append(admin, operation).hash(), secret)
    }

    /// A guest invited with `shares` that has joined.
    pub fn join_guest(&mut self, name: &str, shares: Vec<crate::Share>) -> Member {
        let founder = self.founder.key.clone();
        let invite = self.guest_invite(&founder, shares);
        let guest = self.member(name, Role::Guest);
        self.now += 1;
        let join = Self::join_entry(&self.log, (invite.0, &invite.1), &guest, self.now);
        self.log.ingest(vec![join]).expect("guest joins");
        guest
    }

    /// A signed entry on top of `log`'s heads (as many as an entry takes), not ingested.
    pub fn entry_on(log: &Log, author: &DeviceSigningKey, operation: Operation, time: u64, invite: Option<&DeviceSigningKey>) -> Entry {
        let parents = log.parents_for(&author.public_key().device_id(), &operation);
        Entry::sign(
            EntryContents {
                network: Some(log.network()),
                parents,
                author: author.public_key(),
                time,
                operation,
            },
            author,
            invite,
        )
        .expect("signs")
    }

    /// A `Join` redeeming `invite` for `member`, on top of `log`'s heads.
    pub fn join_entry(log: &Log, invite: (EntryHash, &DeviceSigningKey), member: &Member, time: u64) -> Entry {
        Self::entry_on(
            log,
            &member.key,
            Operation::Join { invite: invite.0, invite_key: invite.1.public_key(), device: member.record.clone() },
            time,
            Some(invite.1),
        )
    }
}

fn member_with(
    key: DeviceSigningKey,
    static_secret: StaticSecret,
    name: &str,
    role: Role,
    founder: &protocol::DeviceId,
    attempt: u32,
) -> Member {
    let (overlay_ipv4, overlay_ipv6) = overlay::derive(founder, &key.public_key().device_id(), attempt);
    let record = DeviceRecord {
        name: name.into(),
        signing_key: key.public_key(),
        static_key: static_secret.public_key(),
        role,
        overlay_ipv4,
        overlay_ipv6,
    };
    Member { key, static_secret, record }
}
