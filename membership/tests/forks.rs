//! ML-13 and issue #12's first finding: however wide a log is forked — a stolen admin's
//! sibling entries before its revocation, or more forks it sends through sync afterwards —
//! appends stay decodable, the owner's revocation goes through, every node converges on the
//! same state and every store reopens.

use membership::entry::MAX_PARENTS;
use membership::sync::{MAX_HEADS, SyncMessage, has_everything_of, missing_for};
use membership::testkit::Network;
use membership::{DeviceStatus, Entry, Log, Operation, Role, Store};
use proptest::prelude::*;
use protocol::DeviceSigningKey;

/// What `peer` lacks by definition: every entry of `log`, in fold order, that is not an
/// ancestor of a head or sample entry of the summary (the oracle for `missing_for`'s walk).
fn lacking(log: &Log, peer: &membership::sync::Summary) -> Vec<Vec<u8>> {
    let known = log.ancestors_of(peer.heads.iter().chain(&peer.sample).copied().filter(|h| log.contains(h)));
    log.entries().filter(|e| !known.contains(&e.hash())).map(|e| e.encoded().to_vec()).collect()
}

/// Pulls both ways, summaries through the wire encoding, until both hold the same entries.
fn sync(a: &mut Log, b: &mut Log) {
    for _ in 0..64 {
        let decoded = |log: &Log| match SyncMessage::decode(&SyncMessage::Summary(log.summary()).encode()) {
            Ok(SyncMessage::Summary(summary)) => summary,
            other => panic!("a summary must always decode: {other:?}"),
        };
        let (sa, sb) = (decoded(a), decoded(b));
        assert_eq!(missing_for(a, &sb).concat(), lacking(a, &sb), "what b lacks, painted down, is what it lacks");
        assert_eq!(missing_for(b, &sa).concat(), lacking(b, &sa), "what a lacks, painted down, is what it lacks");
        for batch in missing_for(a, &sb) {
            b.ingest_encoded(&batch).expect("b ingests");
        }
        for batch in missing_for(b, &sa) {
            a.ingest_encoded(&batch).expect("a ingests");
        }
        if a.heads() == b.heads() {
            assert!(has_everything_of(a, &decoded(b)) || b.heads().len() >= MAX_HEADS);
            return;
        }
    }
    panic!("did not converge");
}

/// `count` sibling invites by `author` on top of `base`'s heads.
fn siblings(base: &Log, author: &DeviceSigningKey, count: usize, time: u64) -> Vec<Entry> {
    (0..count)
        .map(|i| {
            // A fresh invite key per fork (keys are never reused, even across branches).
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&time.to_le_bytes());
            seed[8..16].copy_from_slice(&(i as u64).to_le_bytes());
            seed[16..24].copy_from_slice(author.public_key().as_bytes()[..8].try_into().expect("8 bytes"));
            let secret = DeviceSigningKey::from_bytes(&seed);
            Network::entry_on(base, author, Operation::Invite { invite_key: secret.public_key(), role: Role::Member, expires: time + 3600 + i as u64, name_hint: format!("f{i}"), shares: Vec::new() }, time, None)
        })
        .collect()
}

fn reopen(log: &Log, name: &str) -> Store {
    let path = std::env::temp_dir().join(format!("pal-forks-{}-{name}.redb", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut entries = log.entries().cloned();
    let mut store = Store::create(&path, entries.next().expect("genesis")).expect("create");
    let rest: Vec<Entry> = entries.collect();
    for chunk in rest.chunks(membership::log::MAX_BATCH_ENTRIES) {
        store.ingest(chunk.to_vec()).expect("ingest");
    }
    drop(store);
    let reopened = Store::open(&path).expect("the store reopens");
    let _ = std::fs::remove_file(&path);
    reopened
}

#[test]
fn nine_sibling_heads_no_longer_block_the_owners_revocation() {
    let mut net = Network::new(21);
    let thief = net.add("stolen", Role::Admin);
    let base = net.log.clone();
    net.log.ingest(siblings(&base, &thief.key, 9, net.now + 1)).expect("nine forks");
    assert_eq!(net.log.heads().len(), 9);
    let founder = net.founder.key.clone();
    let revocation = net.append(&founder, Operation::RevokeDevice { device: thief.key.public_key().device_id() });
    assert!(revocation.parents().len() <= MAX_PARENTS);
    Entry::decode(revocation.encoded()).expect("the revocation decodes everywhere");
    assert_eq!(net.log.state().devices[&thief.key.public_key().device_id()].status, DeviceStatus::Revoked);
    // The next append merges what the revocation left.
    net.add("after", Role::Member);
    assert!(net.log.heads().len() <= 2, "{} heads", net.log.heads().len());
    reopen(&net.log, "nine");
}

#[test]
fn a_log_forked_wider_than_a_summary_still_syncs() {
    let mut net = Network::new(22);
    let thief = net.add("stolen", Role::Admin);
    let base = net.log.clone();
    let mut fresh = base.clone();
    net.log.ingest(siblings(&base, &thief.key, 200, net.now + 1)[..200].to_vec()).expect("forks");
    assert!(net.log.heads().len() > MAX_HEADS);
    assert!(net.log.summary().heads.len() <= MAX_HEADS);
    sync(&mut net.log, &mut fresh);
    assert_eq!(fresh.state().encode(), net.log.state().encode());
    assert_eq!(fresh.len(), net.log.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Forks by any author (the founder, a member admin, the thief) at any earlier point,
    /// spread over three nodes in any order, then the founder's revocation of the thief and
    /// more forks from it afterwards: every node converges on one state with the thief revoked,
    /// every entry decodes, every store reopens.
    #[test]
    fn ml13_any_forks_then_a_revocation_converge_and_reopen(
        rounds in proptest::collection::vec((0usize..3, 0usize..4, 1usize..12, 0usize..3), 1..6),
        late_forks in 0usize..40,
    ) {
        let mut net = Network::new(23);
        let thief = net.add("stolen", Role::Admin);
        let helper = net.add("helper", Role::Admin);
        let authors = [net.founder.key.clone(), helper.key.clone(), thief.key.clone()];
        let mut nodes = vec![net.log.clone(), net.log.clone(), net.log.clone()];
        let mut history = vec![net.log.clone()];
        let mut time = net.now;
        for (author, back, count, node) in rounds {
            time += 1;
            let base = history[history.len().saturating_sub(1 + back)].clone();
            let forks = siblings(&base, &authors[author], count, time);
            // A fork whose base a node lacks arrives there later, through sync.
            let target = &mut nodes[node];
            for entry in base.entries().filter(|e| !target.contains(&e.hash())).cloned().collect::<Vec<_>>().chunks(200) {
                target.ingest(entry.to_vec()).expect("base");
            }
            target.ingest(forks).expect("forks are valid in their causal past");
            history.push(target.clone());
        }
        // The owner revokes the thief on node 0, however many heads it holds.
        let thief_id = thief.key.public_key().device_id();
        let founder = net.founder.key.clone();
        time += 1;
        let revocation = nodes[0].append(Operation::RevokeDevice { device: thief_id }, &founder, None, time).expect("the revocation is appended");
        prop_assert!(revocation.parents().len() <= MAX_PARENTS);
        // After its revocation the thief sends forks built on an old point to node 2.
        let old = history[history.len() / 2].clone();
        let late = siblings(&old, &thief.key, late_forks, time + 1);
        let target = &mut nodes[2];
        for entry in old.entries().filter(|e| !target.contains(&e.hash())).cloned().collect::<Vec<_>>().chunks(200) {
            target.ingest(entry.to_vec()).expect("base");
        }
        target.ingest(late).expect("old-branch forks");
        // Everyone syncs with everyone.
        for _ in 0..2 {
            for (a, b) in [(0, 1), (1, 2), (0, 2)] {
                let (left, right) = nodes.split_at_mut(b);
                sync(&mut left[a], &mut right[0]);
            }
        }
        let states: Vec<Vec<u8>> = nodes.iter().map(|n| n.state().encode()).collect();
        prop_assert!(states.windows(2).all(|w| w[0] == w[1]), "byte-identical state");
        for node in &nodes {
            prop_assert_eq!(node.state().devices[&thief_id].status, DeviceStatus::Revoked);
            for entry in node.entries() {
                prop_assert!(Entry::decode(entry.encoded()).is_ok());
            }
        }
        // An honest append after all that still decodes and merges.
        time += 1;
        let next = nodes[1].append(Operation::SetPolicy { policy: membership::Policy::default() }, &helper.key, None, time).expect("an append");
        prop_assert!(next.parents().len() <= MAX_PARENTS);
        let reopened = reopen(&nodes[1], "prop");
        prop_assert_eq!(reopened.log().state().encode(), nodes[1].state().encode());
    }
}
