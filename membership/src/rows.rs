//! The ML and INV rows of SECURITY-TESTS.md, one or more tests each, named by row.

use crate::entry::{Entry, EntryContents, EntryError, EntryHash, NetworkId, Operation, Role};
use crate::log::{Log, LogError};
use crate::policy::Policy;
use crate::state::{DeviceStatus, MAX_DEVICES, RuleError};
use crate::testkit::{Member, Network};
use crate::CborError;
use proptest::prelude::*;
use protocol::{DeviceId, DeviceSigningKey};

/// The rule an ingestion broke (the test fails if it was accepted or failed otherwise).
fn rule(result: Result<usize, LogError>) -> RuleError {
    match result.map_err(unwrap_batch) {
        Err(LogError::Rule(rule)) => rule,
        other => panic!("expected a rule error, got {other:?}"),
    }
}

fn unwrap_batch(error: LogError) -> LogError {
    match error {
        LogError::InBatch { error, .. } => *error,
        other => other,
    }
}

fn revoke(id: DeviceId) -> Operation {
    Operation::RevokeDevice { device: id }
}

fn id(member: &Member) -> DeviceId {
    member.key.public_key().device_id()
}

/// Flips one bit of the signed contents inside an encoded entry and re-encodes, keeping
/// the (now wrong) signature.
fn tamper(entry: &Entry) -> Vec<u8> {
    let mut bytes = entry.encoded().to_vec();
    // The contents bstr starts after the array header (1 byte) and its own length header.
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    bytes
}

#[test]
fn ml01_bad_signature_is_rejected_and_state_unchanged() {
    let mut net = Network::new(1);
    let laptop = net.member("laptop", Role::Member);
    let founder = net.founder.key.clone();
    let entry = Network::entry_on(&net.log, &founder, Operation::AddDevice { device: laptop.record }, net.now, None);
    let before = (net.log.state().encode(), net.log.heads().clone());
    let mut bytes = entry.encoded().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // inside the signature
    assert_eq!(Entry::decode(&bytes), Err(EntryError::BadSignature));
    assert!(Entry::decode(&tamper(&entry)).is_err());
    assert!(net.log.ingest_encoded(&[bytes]).is_err());
    assert_eq!((net.log.state().encode(), net.log.heads().clone()), before);
}

#[test]
fn ml02_unsigned_entry_or_wrong_length_key_is_rejected() {
    let net = Network::new(2);
    let genesis = net.log.entries().next().expect("genesis").clone();
    // Re-assemble the genesis with no signatures: [contents, []].
    let encoded = genesis.encoded();
    let signatures_at = encoded.len() - (1 + 2 + 64); // array(1) header, bstr(64) header, 64 bytes
    let mut unsigned = encoded[..signatures_at].to_vec();
    unsigned.push(0x80); // empty array
    assert_eq!(Entry::decode(&unsigned), Err(EntryError::Unsigned));
    // A 31-byte author key: the whole contents no longer parse.
    let mut short_key = encoded.to_vec();
    let author_at = short_key.windows(2).position(|w| w == [0x58, 0x20]).expect("a 32-byte bstr");
    short_key[author_at + 1] = 0x1f;
    assert!(Entry::decode(&short_key).is_err());
}

#[test]
fn ml03_unknown_or_unordered_parents_are_rejected() {
    let mut net = Network::new(3);
    let founder = net.founder.key.clone();
    let mut contents = EntryContents {
        network: Some(net.log.network()),
        parents: vec![EntryHash([0xab; 32])],
        author: founder.public_key(),
        time: net.now,
        operation: Operation::SetPolicy { policy: Policy::default() },
    };
    let orphan = Entry::sign(contents.clone(), &founder, None).expect("signs");
    assert_eq!(net.log.ingest(vec![orphan]).map_err(unwrap_batch), Err(LogError::UnknownParent));
    let head = *net.log.heads().first().expect("head");
    contents.parents = vec![head, head];
    // Unordered or duplicate parents are never even signed (nor decoded: see entry.rs).
    assert_eq!(Entry::sign(contents.clone(), &founder, None).err(), Some(EntryError::BadParents));
    // Nor more parents than any decoder takes.
    contents.parents = (0..=membership_max_parents()).map(|i| EntryHash([i as u8; 32])).collect();
    assert_eq!(Entry::sign(contents, &founder, None).err(), Some(EntryError::BadParents));
}

fn membership_max_parents() -> usize {
    crate::entry::MAX_PARENTS
}

#[test]
fn ml04_unauthorised_signers_are_rejected() {
    let mut net = Network::new(4);
    let member = net.add("phone", Role::Member);
    let stranger = DeviceSigningKey::from_bytes(&[9; 32]);
    let newcomer = net.member("tablet", Role::Member);
    let add = Operation::AddDevice { device: newcomer.record.clone() };
    let by_stranger = Network::entry_on(&net.log, &stranger, add.clone(), net.now, None);
    assert_eq!(rule(net.log.ingest(vec![by_stranger])), RuleError::UnknownAuthor);
    let by_member = Network::entry_on(&net.log, &member.key, add, net.now, None);
    assert_eq!(rule(net.log.ingest(vec![by_member])), RuleError::NotAdmin);
    // Self-promotion: a member invited as member claims admin in its join.
    let founder = net.founder.key.clone();
    let (invite, secret) = net.invite(&founder, Role::Member, 3600);
    let mut greedy = net.member("greedy", Role::Admin);
    greedy.record.role = Role::Admin;
    let join = Network::join_entry(&net.log, (invite, &secret), &greedy, net.now);
    assert_eq!(rule(net.log.ingest(vec![join])), RuleError::RoleMismatch);
    // CloudPal is not an admin: it cannot add devices either.
    let cloudpal = net.add("cloudpal", Role::CloudPal);
    let by_cloudpal = Network::entry_on(&net.log, &cloudpal.key, Operation::AddDevice { device: newcomer.record }, net.now, None);
    assert_eq!(rule(net.log.ingest(vec![by_cloudpal])), RuleError::NotAdmin);
}

#[test]
fn ml05_revoked_device_cannot_add_at_head() {
    let mut net = Network::new(5);
    let stolen = net.add("laptop", Role::Admin);
    let founder = net.founder.key.clone();
    net.append(&founder, revoke(id(&stolen)));
    let accomplice = net.member("evil", Role::Member);
    let at_head = Network::entry_on(&net.log, &stolen.key, Operation::AddDevice { device: accomplice.record.clone() }, net.now, None);
    assert_eq!(rule(net.log.ingest(vec![at_head])), RuleError::AuthorRevoked);
    let re_add_self = Network::entry_on(&net.log, &founder, Operation::AddDevice { device: stolen.record.clone() }, net.now, None);
    assert_eq!(rule(net.log.ingest(vec![re_add_self])), RuleError::DuplicateDevice);
}

/// A stolen admin forks from before its revocation, `depth` entries deep, adding an accomplice
/// and revoking the owner; the owner's revocation branch must win whatever the depth.
fn stolen_admin_fork(seed: u64, depth: usize, revocation_first: bool) -> (Log, Member, Member, Member) {
    let mut net = Network::new(seed);
    let stolen = net.add("laptop", Role::Admin);
    let founder = net.founder.key.clone();
    let fork_point = net.log.clone();
    let fork_log = fork_point.clone();
    // The attacker's branch, built on the pre-revocation log.
    let mut attacker = net.branch(1);
    attacker.log = fork_point;
    let accomplice = attacker.member("evil", Role::Admin);
    attacker.append(&stolen.key, Operation::AddDevice { device: accomplice.record.clone() });
    for i in 0..depth {
        attacker.append(&stolen.key, Operation::SetPolicy { policy: Policy { exit: crate::policy::ExitPolicy { rotate_egress: i % 2 == 0, logging: true, ..Default::default() }, ..Policy::default() } });
    }
    attacker.append(&accomplice.key, revoke(id(&net.founder)));
    // The owner's branch.
    net.append(&founder, revoke(id(&stolen)));
    let honest = net.add("phone", Role::Member);
    let attack: Vec<Entry> = attacker.log.entries().filter(|e| !net.log.contains(&e.hash())).cloned().collect();
    let revocation_side: Vec<Entry> = net.log.entries().filter(|e| !fork_log.contains(&e.hash())).cloned().collect();
    // Merge in either order into a node that saw neither branch.
    let mut merged = fork_log;
    if revocation_first {
        merged.ingest(revocation_side).expect("owner branch");
        merged.ingest(attack).expect("attack branch is well-formed");
    } else {
        merged.ingest(attack).expect("attack branch is well-formed");
        merged.ingest(revocation_side).expect("owner branch");
    }
    (merged, stolen, accomplice, honest)
}

#[test]
fn ml05_revoked_admin_fork_from_before_revocation_never_wins() {
    for depth in [0, 1, 5, 40] {
        for revocation_first in [true, false] {
            let (log, stolen, accomplice, honest) = stolen_admin_fork(50 + depth as u64, depth, revocation_first);
            let state = log.state();
            assert_eq!(state.devices[&id(&stolen)].status, DeviceStatus::Revoked, "depth {depth}");
            assert!(!state.devices.contains_key(&id(&accomplice)), "accomplice admitted at depth {depth}");
            assert_eq!(state.devices[&id(&honest)].status, DeviceStatus::Active);
            let founder = state.active_admins().count();
            assert_eq!(founder, 1, "the owner is still the admin at depth {depth}");
            assert_eq!(state.policy, Policy::default(), "the attacker's policy is void at depth {depth}");
        }
    }
}

#[test]
fn ml05_concurrent_mutual_revocation_is_won_by_the_senior_admin() {
    let mut net = Network::new(55);
    let junior = net.add("laptop", Role::Admin);
    let founder = net.founder.key.clone();
    let fork = net.log.clone();
    net.append(&founder, revoke(id(&junior)));
    let mut other = net.branch(2);
    other.log = fork;
    other.append(&junior.key, revoke(id(&net.founder)));
    let theirs: Vec<Entry> = other.log.entries().filter(|e| !net.log.contains(&e.hash())).cloned().collect();
    net.log.ingest(theirs).expect("well-formed");
    assert_eq!(net.log.state().devices[&id(&junior)].status, DeviceStatus::Revoked);
    assert_eq!(net.log.state().devices[&id(&net.founder)].status, DeviceStatus::Active);
}

#[test]
fn ml07_invalid_or_foreign_genesis_is_rejected() {
    let mut net = Network::new(7);
    let other = Network::new(8);
    let foreign_genesis = other.log.entries().next().expect("genesis").clone();
    assert_eq!(net.log.ingest(vec![foreign_genesis]).map_err(unwrap_batch), Err(LogError::SecondGenesis));
    let mut elsewhere = other.clone();
    let founder = other.founder.key.clone();
    let foreign = elsewhere.append(&founder, Operation::SetPolicy { policy: Policy::default() });
    assert_eq!(net.log.ingest(vec![foreign]).map_err(unwrap_batch), Err(LogError::WrongNetwork));
    let founder = net.founder.key.clone();
    let add = net.append(&founder, Operation::SetPolicy { policy: Policy::default() });
    assert_eq!(Log::from_genesis(add).map(|_| ()), Err(LogError::Rule(RuleError::NotGenesis)));
    // A genesis whose founder is not an admin.
    let mut member = net.member("x", Role::Member);
    member.record.role = Role::Member;
    let bad = Entry::sign(
        EntryContents { network: None, parents: vec![], author: member.key.public_key(), time: 1, operation: Operation::Genesis { network_name: "n".into(), founder: member.record } },
        &member.key,
        None,
    )
    .expect("signs");
    assert_eq!(Log::from_genesis(bad).map(|_| ()), Err(LogError::Rule(RuleError::FounderNotAdmin)));
}

#[test]
fn ml08_duplicate_add_unknown_revoke_and_last_admin_are_rejected() {
    let mut net = Network::new(9);
    let phone = net.add("phone", Role::Member);
    let founder = net.founder.key.clone();
    let again = Network::entry_on(&net.log, &founder, Operation::AddDevice { device: phone.record.clone() }, net.now, None);
    assert_eq!(rule(net.log.ingest(vec![again])), RuleError::DuplicateDevice);
    let unknown = Network::entry_on(&net.log, &founder, revoke(DeviceId::from_bytes([1; 16])), net.now, None);
    assert_eq!(rule(net.log.ingest(vec![unknown])), RuleError::UnknownDevice);
    let last_admin = Network::entry_on(&net.log, &founder, revoke(id(&net.founder)), net.now, None);
    assert_eq!(rule(net.log.ingest(vec![last_admin])), RuleError::LastAdmin);
    let mut same_name = net.member("phone", Role::Member);
    same_name.record.name = "phone".into();
    let clash = Network::entry_on(&net.log, &founder, Operation::AddDevice { device: same_name.record }, net.now, None);
    assert_eq!(rule(net.log.ingest(vec![clash])), RuleError::NameTaken);
}

#[test]
fn ml08_revoked_key_can_never_be_added_again() {
    let mut net = Network::new(10);
    let laptop = net.add("laptop", Role::Member);
    let founder = net.founder.key.clone();
    net.append(&founder, revoke(id(&laptop)));
    // Same static key under a fresh signing key: still refused.
    let mut reborn = net.member("laptop2", Role::Member);
    reborn.record.static_key = laptop.record.static_key;
    let entry = Network::entry_on(&net.log, &founder, Operation::AddDevice { device: reborn.record }, net.now, None);
    assert_eq!(rule(net.log.ingest(vec![entry])), RuleError::KeyRevoked);
}

#[test]
fn ml09_a_batch_with_one_bad_entry_commits_nothing() {
    let mut net = Network::new(11);
    let founder = net.founder.key.clone();
    let mut batch: Vec<Entry> = Vec::new();
    let mut staging = net.clone();
    for i in 0..5 {
        let member = staging.member(&format!("device{i}"), Role::Member);
        batch.push(staging.append(&founder, Operation::AddDevice { device: member.record }));
    }
    let bad = Network::entry_on(&staging.log, &founder, revoke(DeviceId::from_bytes([7; 16])), staging.now, None);
    batch.push(bad);
    let before = (net.log.state().encode(), net.log.heads().clone(), net.log.len());
    let result = net.log.ingest(batch.clone());
    assert!(matches!(result, Err(LogError::InBatch { index: 5, .. })), "{result:?}");
    assert_eq!((net.log.state().encode(), net.log.heads().clone(), net.log.len()), before);
    batch.pop();
    assert_eq!(net.log.ingest(batch), Ok(5));
}

#[test]
fn ml10_non_canonical_and_malformed_cbor_is_rejected() {
    let mut net = Network::new(12);
    let founder = net.founder.key.clone();
    let entry = net.append(&founder, Operation::SetPolicy { policy: Policy::default() });
    let bytes = entry.encoded();
    // Indefinite-length outer array.
    let mut indefinite = vec![0x9f];
    indefinite.extend_from_slice(&bytes[1..]);
    indefinite.push(0xff);
    assert!(Entry::decode(&indefinite).is_err());
    // A tag in front.
    let mut tagged = vec![0xc6];
    tagged.extend_from_slice(bytes);
    assert!(Entry::decode(&tagged).is_err());
    // Trailing bytes.
    let mut trailing = bytes.to_vec();
    trailing.push(0);
    assert_eq!(Entry::decode(&trailing), Err(EntryError::Cbor(CborError::TrailingBytes)));
    // Oversized input.
    assert_eq!(Entry::decode(&vec![0x82; 5000]), Err(EntryError::TooLarge));
    // Deep nesting: a thousand nested arrays.
    let mut nested = vec![0x81; 1000];
    nested.push(0x00);
    assert!(Entry::decode(&nested).is_err());
    // Non-canonical integer: the outer array length written as a 1-byte-follows form.
    let mut long_int = vec![0x98, 0x02];
    long_int.extend_from_slice(&bytes[1..]);
    assert!(Entry::decode(&long_int).is_err());
}

#[test]
fn ml13_resource_limits_hold() {
    let mut net = Network::new(13);
    let founder = net.founder.key.clone();
    for i in 0..MAX_DEVICES - 1 {
        net.add(&format!("d{i}"), Role::Member);
    }
    let one_more = net.member("overflow", Role::Member);
    let entry = Network::entry_on(&net.log, &founder, Operation::AddDevice { device: one_more.record }, net.now, None);
    assert_eq!(rule(net.log.ingest(vec![entry])), RuleError::TooManyDevices);
    let mut big = Policy::default();
    big.firewall.deny = (0..65).map(|i| crate::policy::Rule::Domain(format!("d{i}.example"))).collect();
    let too_big = Network::entry_on(&net.log, &founder, Operation::SetPolicy { policy: big }, net.now, None);
    assert!(Entry::decode(too_big.encoded()).is_err(), "a policy over its limits does not even decode");
    let long_name = "x".repeat(65);
    assert!(!crate::entry::validate_name(&long_name));
    let oversized: Vec<Entry> = (0..crate::log::MAX_BATCH_ENTRIES + 1).map(|_| net.log.entries().next().cloned().expect("g")).collect();
    assert_eq!(net.log.ingest(oversized), Err(LogError::BatchTooLarge));
}

#[test]
fn ml14_signature_malleability_and_identity() {
    let mut net = Network::new(14);
    let laptop = net.add("laptop", Role::Member);
    let founder = net.founder.key.clone();
    let entry = net.append(&founder, revoke(id(&laptop)));
    // S + L (the group order) is a second encoding of the same signature: verify_strict refuses.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut bytes = entry.encoded().to_vec();
    let s_at = bytes.len() - 32;
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(bytes[s_at + i]) + u16::from(L[i]) + carry;
        bytes[s_at + i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(Entry::decode(&bytes), Err(EntryError::BadSignature));
    // The revocation names the device by key id, not by the entry that added it.
    assert!(matches!(entry.operation(), Operation::RevokeDevice { device } if *device == id(&laptop)));
    // The hash covers only the signed contents: same contents, same identity.
    let again = Entry::decode(entry.encoded()).expect("round trip");
    assert_eq!(again.hash(), entry.hash());
}

// ---- invites ------------------------------------------------------------------------------

#[test]
fn inv01_an_invite_is_used_at_most_once() {
    let mut net = Network::new(21);
    let founder = net.founder.key.clone();
    let (invite, secret) = net.invite(&founder, Role::Member, 3600);
    let first = net.member("phone", Role::Member);
    let join = Network::join_entry(&net.log, (invite, &secret), &first, net.now);
    net.log.ingest(vec![join]).expect("first use");
    let second = net.member("tablet", Role::Member);
    let reuse = Network::join_entry(&net.log, (invite, &secret), &second, net.now);
    assert_eq!(rule(net.log.ingest(vec![reuse])), RuleError::InviteConsumed);
}

#[test]
fn inv02_an_expired_invite_is_refused() {
    let mut net = Network::new(22);
    let founder = net.founder.key.clone();
    let (invite, secret) = net.invite(&founder, Role::Member, 60);
    let late = net.member("phone", Role::Member);
    let join = Network::join_entry(&net.log, (invite, &secret), &late, net.now + 3600);
    assert_eq!(rule(net.log.ingest(vec![join])), RuleError::InviteExpired);
}

#[test]
fn inv02_a_backdated_join_presented_after_expiry_is_refused_by_the_admitting_clock() {
    let mut net = Network::new(25);
    let founder = net.founder.key.clone();
    let (invite, secret) = net.invite(&founder, Role::Member, 60);
    let phone = net.member("phone", Role::Member);
    // Signed with a time inside the invite's validity...
    let backdated = Network::join_entry(&net.log, (invite, &secret), &phone, net.now);
    // ...but presented an hour later: the admitting member's clock refuses it.
    let an_hour_later = net.now + 3600;
    assert_eq!(net.log.clone().admit_join(backdated.clone(), an_hour_later).map_err(unwrap_batch), Err(LogError::Rule(RuleError::InviteExpired)));
    // A join claiming a time far from ours is refused too, even before expiry.
    let skewed = Network::join_entry(&net.log, (invite, &secret), &phone, net.now + 50);
    assert_eq!(net.log.clone().admit_join(skewed, net.now - 1000), Err(LogError::ClockSkew));
    // On time, it is admitted.
    assert_eq!(net.log.admit_join(backdated, net.now + 10), Ok(()));
}

#[test]
fn inv03_garbled_or_unknown_invites_are_refused() {
    let mut net = Network::new(23);
    let founder = net.founder.key.clone();
    let (invite, _secret) = net.invite(&founder, Role::Member, 3600);
    let phone = net.member("phone", Role::Member);
    let guess = DeviceSigningKey::from_bytes(&[0x42; 32]);
    let wrong_key = Network::join_entry(&net.log, (invite, &guess), &phone, net.now);
    assert_eq!(rule(net.log.ingest(vec![wrong_key])), RuleError::InviteKeyMismatch);
    let unknown = Network::join_entry(&net.log, (EntryHash([3; 32]), &guess), &phone, net.now);
    assert_eq!(rule(net.log.ingest(vec![unknown])), RuleError::UnknownInvite);
    // The invite secret is a 256-bit ed25519 seed: far beyond 128 bits of entropy.
    assert_eq!(guess.expose_secret().len() * 8, 256);
}

#[test]
fn inv04_revoking_the_enrolled_device_does_not_free_its_invite() {
    let mut net = Network::new(24);
    let founder = net.founder.key.clone();
    let (invite, secret) = net.invite(&founder, Role::Member, 3600);
    let phone = net.member("phone", Role::Member);
    let join = Network::join_entry(&net.log, (invite, &secret), &phone, net.now);
    net.log.ingest(vec![join]).expect("joins");
    net.append(&founder, revoke(id(&phone)));
    let thief = net.member("thief", Role::Member);
    let reuse = Network::join_entry(&net.log, (invite, &secret), &thief, net.now);
    assert_eq!(rule(net.log.ingest(vec![reuse])), RuleError::InviteConsumed);
    assert_eq!(net.log.state().invites[&invite].consumed_by, Some(id(&phone)));
}

#[test]
fn an_invite_made_by_a_device_later_revoked_is_refused() {
    let mut net = Network::new(25);
    let founder = net.founder.key.clone();
    let laptop = net.add("laptop", Role::Admin);
    // The thief, holding the stolen laptop, makes an invite before the owner notices.
    let (invite, secret) = net.invite(&laptop.key, Role::Member, 3600);
    net.append(&founder, revoke(id(&laptop)));
    let thiefs = net.member("thiefs", Role::Member);
    let join = Network::join_entry(&net.log, (invite, &secret), &thiefs, net.now);
    assert_eq!(rule(net.log.ingest(vec![join])), RuleError::InviterRevoked);
    // The founder's own invites are unaffected.
    let (invite, secret) = net.invite(&founder, Role::Member, 3600);
    let phone = net.member("phone", Role::Member);
    net.log.ingest(vec![Network::join_entry(&net.log, (invite, &secret), &phone, net.now)]).expect("joins");
}

/// A network with an invite, redeemed by two devices on two partitions.
fn double_redemption(seed: u64) -> (Vec<Entry>, Member, Member) {
    let mut net = Network::new(seed);
    let founder = net.founder.key.clone();
    let (invite, secret) = net.invite(&founder, Role::Member, 3600);
    let a = net.member("phone", Role::Member);
    let b = net.member("tablet", Role::Member);
    let join_a = Network::join_entry(&net.log, (invite, &secret), &a, net.now);
    let join_b = Network::join_entry(&net.log, (invite, &secret), &b, net.now);
    let mut entries: Vec<Entry> = net.log.entries().skip(1).cloned().collect();
    entries.push(join_a);
    entries.push(join_b);
    (entries, a, b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// INV-05: whatever the order of merging, exactly one join survives, the same one.
    #[test]
    fn inv05_double_redemption_keeps_exactly_one_join(seed in 0u64..1000, swap in any::<bool>()) {
        let (entries, a, b) = double_redemption(seed);
        let (mut first, mut second) = (Network::new(seed).log, Network::new(seed).log);
        let n = entries.len();
        let (mut left, mut right) = (entries.clone(), entries);
        if swap { left.swap(n - 1, n - 2); }
        right.swap(n - 1, n - 2);
        // Each node ingests the joins as separate batches in its order.
        for entry in left { first.ingest(vec![entry]).expect("concurrent join is well-formed"); }
        for entry in right { second.ingest(vec![entry]).expect("concurrent join is well-formed"); }
        let admitted = |log: &Log| [&a, &b].iter().filter(|m| log.state().devices.contains_key(&id(m))).count();
        prop_assert_eq!(admitted(&first), 1);
        prop_assert_eq!(first.state().encode(), second.state().encode());
    }

    /// ML-06: random concurrent entries from several admins, delivered in random orders and
    /// batch splits, fold to byte-identical state.
    #[test]
    fn ml06_any_delivery_order_converges(seed in 0u64..10_000, order in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle()) {
        let mut net = Network::new(seed);
        let founder = net.founder.key.clone();
        let second_admin = net.add("admin2", Role::Admin);
        let base = net.log.clone();
        // Three partitions append concurrently from the same base.
        let mut branches = Vec::new();
        for (branch, author) in [&founder, &second_admin.key, &founder].into_iter().enumerate() {
            let mut part = net.branch(10 + branch as u64);
            part.log = base.clone();
            for i in 0..4 {
                let member = part.member(&format!("b{branch}d{i}"), Role::Member);
                let op = if i == 3 && branch == 1 { revoke(id(&net.founder)) } else { Operation::AddDevice { device: member.record } };
                part.append(author, op);
            }
            branches.push(part.log.entries().skip(base.len()).cloned().collect::<Vec<_>>());
        }
        let all: Vec<Entry> = branches.concat();
        let mut reference = base.clone();
        for branch in &branches { reference.ingest(branch.clone()).expect("branch"); }
        // Deliver in the shuffled order, retrying entries whose parents have not arrived yet.
        let mut other = base.clone();
        let mut pending: Vec<Entry> = order.iter().map(|i| all[*i].clone()).collect();
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|entry| other.ingest(vec![entry.clone()]).is_err());
            prop_assert!(pending.len() < before, "stuck");
        }
        prop_assert_eq!(reference.state().encode(), other.state().encode());
        prop_assert_eq!(reference.heads(), other.heads());
    }

    /// ML-05 as a property: at any depth and merge order the stolen admin's fork is void.
    #[test]
    fn ml05_stolen_admin_fork_never_wins(seed in 0u64..1000, depth in 0usize..12, revocation_first in any::<bool>()) {
        let (log, stolen, accomplice, _) = stolen_admin_fork(seed, depth, revocation_first);
        prop_assert_eq!(log.state().devices[&id(&stolen)].status, DeviceStatus::Revoked);
        prop_assert!(!log.state().devices.contains_key(&id(&accomplice)));
    }
}

#[test]
fn network_id_is_the_genesis_hash() {
    let net = Network::new(30);
    let genesis = net.log.entries().next().expect("genesis");
    assert_eq!(net.log.network(), NetworkId::from(genesis.hash()));
}
