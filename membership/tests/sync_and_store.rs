//! Sync between logs and stores, and the store's persistence and crash safety (ML-12).

use membership::sync::{SyncMessage, has_everything_of, missing_for, missing_up_to};
use membership::testkit::Network;
use membership::{Log, Operation, Policy, Role, Store, StoreError};
use std::process::Command;
use std::time::Duration;

/// Runs the two-message exchange both ways until neither side lacks anything; returns rounds.
fn sync(a: &mut Log, b: &mut Log) -> usize {
    for round in 1..=8 {
        let (sa, sb) = (a.summary(), b.summary());
        let to_b = missing_for(a, &sb);
        let to_a = missing_for(b, &sa);
        for batch in to_b {
            let message = SyncMessage::decode(&SyncMessage::Entries(batch).encode()).expect("round trip");
            let SyncMessage::Entries(batch) = message else { panic!("entries") };
            b.ingest_encoded(&batch).expect("b ingests");
        }
        for batch in to_a {
            a.ingest_encoded(&batch).expect("a ingests");
        }
        if has_everything_of(a, &b.summary()) && has_everything_of(b, &a.summary()) {
            return round;
        }
    }
    panic!("did not converge");
}

#[test]
fn a_fresh_log_catches_up_in_one_round() {
    let mut net = Network::new(1);
    for i in 0..300 {
        net.add(&format!("d{i}"), Role::Member);
    }
    let mut fresh = Network::new(1).log;
    assert_eq!(sync(&mut net.log, &mut fresh), 1);
    assert_eq!(fresh.state().encode(), net.log.state().encode());
}

#[test]
fn a_revoked_device_learns_its_revocation_and_nothing_after() {
    let mut net = Network::new(3);
    let stolen = net.add("stolen", Role::Member);
    let mut stolen_log = net.log.clone();
    let before = net.add("before", Role::Member);
    let founder = net.founder.key.clone();
    let id = stolen.key.public_key().device_id();
    let revocation = net.append(&founder, Operation::RevokeDevice { device: id });
    let after = net.add("after", Role::Member);
    assert_eq!(net.log.revocation_of(&id), Some(revocation.hash()));
    assert_eq!(net.log.revocation_of(&before.key.public_key().device_id()), None);

    for batch in missing_up_to(&net.log, &stolen_log.summary(), revocation.hash()) {
        stolen_log.ingest_encoded(&batch).expect("the revoked device ingests its revocation");
    }
    let state = stolen_log.state();
    assert_eq!(state.devices[&id].status, membership::DeviceStatus::Revoked);
    assert!(state.devices.contains_key(&before.key.public_key().device_id()));
    assert!(!state.devices.contains_key(&after.key.public_key().device_id()), "leaked a device added after the revocation");
    // Already up to date: nothing more to send.
    assert!(missing_up_to(&net.log, &stolen_log.summary(), revocation.hash()).is_empty());
}

#[test]
fn diverged_logs_merge_and_agree() {
    let mut net = Network::new(2);
    let founder = net.founder.key.clone();
    let admin = net.add("admin2", Role::Admin);
    for i in 0..50 {
        net.add(&format!("common{i}"), Role::Member);
    }
    let mut left = net.branch(1);
    let mut right = net.branch(2);
    for i in 0..20 {
        left.add(&format!("left{i}"), Role::Member);
        let device = right.member(&format!("right{i}"), Role::Member);
        right.append(&admin.key, Operation::AddDevice { device: device.record });
    }
    left.append(&founder, Operation::SetPolicy { policy: Policy::default() });
    let (mut a, mut b) = (left.log, right.log);
    let sent_before: usize = missing_for(&a, &b.summary()).iter().map(Vec::len).sum();
    assert!(sent_before <= 25, "sends only the divergent part, not {sent_before}");
    sync(&mut a, &mut b);
    assert_eq!(a.state().encode(), b.state().encode());
    assert_eq!(a.heads(), b.heads());
    assert_eq!(a.state().active_devices().count(), 1 + 1 + 50 + 40);
}

#[test]
fn rob01_oversized_and_malformed_sync_messages_are_refused() {
    assert!(SyncMessage::decode(&vec![0x82; 2 << 20]).is_err());
    assert!(SyncMessage::decode(&[0x82, 0x01, 0x9f, 0xff]).is_err(), "indefinite array");
    let mut huge_count = vec![0x82, 0x01, 0x9a, 0xff, 0xff, 0xff, 0xff];
    huge_count.extend_from_slice(&[0x40; 16]);
    assert!(SyncMessage::decode(&huge_count).is_err(), "a count beyond the batch cap");
    let net = Network::new(3);
    let summary = SyncMessage::Summary(net.log.summary());
    assert_eq!(SyncMessage::decode(&summary.encode()), Ok(summary));
}

#[test]
fn store_reopens_to_the_same_log() {
    let dir = tempdir();
    let path = dir.join("log.redb");
    let mut net = Network::new(4);
    let genesis = net.log.entries().next().expect("genesis").clone();
    let mut store = Store::create(&path, genesis).expect("create");
    let founder = net.founder.key.clone();
    for i in 0..10 {
        let device = net.member(&format!("d{i}"), Role::Member);
        store.append(Operation::AddDevice { device: device.record }, &founder, None, 1_800_000_100 + i).expect("append");
    }
    let expected = store.log().state().encode();
    drop(store);
    let reopened = Store::open(&path).expect("reopen");
    assert_eq!(reopened.log().state().encode(), expected);
    assert_eq!(reopened.log().len(), 11);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn store_refuses_a_rejected_batch_and_stays_unchanged() {
    let mut net = Network::new(5);
    let genesis = net.log.entries().next().expect("genesis").clone();
    let mut store = Store::in_memory(genesis).expect("create");
    let laptop = net.add("laptop", Role::Member);
    let bad = Network::entry_on(&net.log, &laptop.key, Operation::SetPolicy { policy: Policy::default() }, net.now, None);
    let mut batch: Vec<_> = net.log.entries().skip(1).cloned().collect();
    batch.push(bad);
    assert!(matches!(store.ingest(batch), Err(StoreError::Invalid(_))));
    assert_eq!(store.log().len(), 1);
}

/// ML-12: a writer appending in a loop is killed with SIGKILL at random moments; every reopen
/// yields a valid log whose length never goes backwards.
#[test]
fn ml12_killed_writer_always_reopens_to_a_committed_prefix() {
    if let Some(path) = std::env::var_os("MEMBERSHIP_CRASH_WRITER") {
        writer_loop(std::path::Path::new(&path));
    }
    let dir = tempdir();
    let path = dir.join("crash.redb");
    let mut last_len = 0;
    for round in 0..12u64 {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "ml12_killed_writer_always_reopens_to_a_committed_prefix", "--nocapture"])
            .env("MEMBERSHIP_CRASH_WRITER", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn writer");
        std::thread::sleep(Duration::from_millis(150 + (round * 37) % 200));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        match Store::open(&path) {
            Ok(store) => {
                let len = store.log().len();
                assert!(len >= last_len, "round {round}: log went back from {last_len} to {len}");
                last_len = len;
            }
            // Killed before the very first commit: nothing to open yet.
            Err(_) if last_len == 0 => {}
            Err(error) => panic!("round {round}: reopen failed: {error}"),
        }
    }
    assert!(last_len > 1, "the writer never committed");
    std::fs::remove_dir_all(dir).ok();
}

/// The writer child: open or create, then append policies forever.
fn writer_loop(path: &std::path::Path) -> ! {
    let net = Network::new(99);
    let founder = net.founder.key.clone();
    let mut store = match Store::open(path) {
        Ok(store) => store,
        Err(_) => {
            let _ = std::fs::remove_file(path);
            Store::create(path, net.log.entries().next().expect("genesis").clone()).expect("create")
        }
    };
    let mut time = 1_800_000_100 + store.log().len() as u64;
    loop {
        time += 1;
        let policy = Policy { exit: membership::policy::ExitPolicy { rotate_egress: time.is_multiple_of(2), ..Default::default() }, ..Policy::default() };
        store.append(Operation::SetPolicy { policy }, &founder, None, time).expect("append");
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("membership-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The heads alone (the idle round's check, issue #17) tell "behind" from "not behind" exactly
/// as a full summary does, at a fraction of its size — forked or not.
#[test]
fn a_heads_summary_tells_who_is_behind_like_a_full_one() {
    let mut net = Network::new(5);
    let admin = net.add("admin2", Role::Admin);
    for i in 0..40 {
        net.add(&format!("d{i}"), Role::Member);
    }
    let mut behind = net.log.clone();
    net.add("newer", Role::Member);
    // A fork: the second admin appended on the older heads.
    let invite = Operation::Invite { invite_key: protocol::DeviceSigningKey::from_bytes(&[9; 32]).public_key(), role: Role::Member, expires: net.now + 100, name_hint: String::new(), shares: Vec::new() };
    let side = Network::entry_on(&behind, &admin.key, invite, net.now + 1, None);
    net.log.ingest(vec![side]).expect("a fork");
    assert_eq!(net.log.heads().len(), 2);
    let (full, heads_only) = (net.log.summary(), net.log.heads_summary());
    assert!(heads_only.sample.is_empty());
    assert_eq!(heads_only.heads, full.heads);
    assert!(SyncMessage::Summary(heads_only.clone()).encode().len() * 4 < SyncMessage::Summary(full.clone()).encode().len());
    assert_eq!(has_everything_of(&behind, &heads_only), has_everything_of(&behind, &full));
    assert!(!has_everything_of(&behind, &heads_only));
    // The one behind pulls with its full summary and then has everything.
    for batch in missing_for(&net.log, &behind.summary()) {
        behind.ingest_encoded(&batch).expect("ingests");
    }
    assert!(has_everything_of(&behind, &net.log.heads_summary()));
    assert!(has_everything_of(&net.log, &behind.heads_summary()));
}
