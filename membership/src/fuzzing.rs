//! Bodies of the fuzz targets in `membership/fuzz`; `cargo test` replays each committed corpus
//! through them.

use crate::entry::Entry;
use crate::sync::SyncMessage;
use crate::testkit::Network;
use crate::Role;

/// Any bytes: decoding never panics, and whatever decodes re-encodes to the same bytes.
pub fn entry_decode(data: &[u8]) {
    if let Ok(entry) = Entry::decode(data) {
        assert_eq!(entry.encoded(), data);
        assert_eq!(Entry::decode(entry.encoded()).map(|e| e.hash()), Ok(entry.hash()));
    }
}

/// Any bytes as a sync message into a small live network: never panics, and a refused batch
/// leaves the log exactly as it was (ML-09).
pub fn sync_batch(data: &[u8]) {
    let Ok(message) = SyncMessage::decode(data) else { return };
    let mut net = Network::new(1);
    net.add("laptop", Role::Member);
    match message {
        SyncMessage::Entries(batch) => {
            let before = (net.log.state().encode(), net.log.heads().clone(), net.log.len());
            if net.log.ingest_encoded(&batch).is_err() {
                assert_eq!((net.log.state().encode(), net.log.heads().clone(), net.log.len()), before);
            }
        }
        SyncMessage::Summary(summary) => {
            let _ = crate::sync::missing_for(&net.log, &summary);
        }
    }
}

/// Seed inputs for the corpora: real messages from a small network.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut net = Network::new(1);
    net.add("laptop", Role::Member);
    let mut other = net.branch(7);
    let founder = other.founder.key.clone();
    other.add("phone", Role::Member);
    let (invite, secret) = other.invite(&founder, Role::Member, 60);
    let joiner = other.member("tablet", Role::Member);
    let join = Network::join_entry(&other.log, (invite, &secret), &joiner, other.now);
    other.log.ingest(vec![join]).expect("join");
    let mut seeds = Vec::new();
    for (i, entry) in other.log.entries().enumerate() {
        seeds.push(("entry_decode", format!("entry{i}"), entry.encoded().to_vec()));
    }
    for (i, batch) in crate::sync::missing_for(&other.log, &net.log.summary()).into_iter().enumerate() {
        seeds.push(("sync_batch", format!("batch{i}"), SyncMessage::Entries(batch).encode()));
    }
    seeds.push(("sync_batch", "summary".into(), SyncMessage::Summary(net.log.summary()).encode()));
    seeds
}

#[cfg(test)]
mod tests {
    fn replay(target: &str, body: fn(&[u8])) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        protocol::testing::replay_corpus(&dir, body);
    }

    #[test]
    fn ml10_fuzz_corpus_entry_decode_replays() {
        replay("entry_decode", super::entry_decode);
    }

    #[test]
    fn ml09_fuzz_corpus_sync_batch_replays() {
        replay("sync_batch", super::sync_batch);
    }
}
