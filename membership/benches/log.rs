//! Verify+apply throughput, and a full sync of a 10,000-entry log between two in-memory redb
//! stores. Run: `cargo bench -p membership --bench log`.

use criterion::{Criterion, Throughput};
use membership::sync::missing_for;
use membership::testkit::Network;
use membership::{Entry, Log, Operation, Policy, Role, Store};
use std::hint::black_box;
use std::time::{Duration, Instant};

const LOG_LEN: usize = 10_000;

/// A realistic 10,000-entry log: 400 devices, then policy changes by the founder.
fn big_network() -> Network {
    let mut net = Network::new(7);
    let founder = net.founder.key.clone();
    for i in 0..400 {
        net.add(&format!("device{i}"), Role::Member);
    }
    while net.log.len() < LOG_LEN {
        let mut policy = Policy::default();
        policy.exit.rotate_egress = net.log.len().is_multiple_of(2);
        net.append(&founder, Operation::SetPolicy { policy });
    }
    net
}

fn main() {
    let net = big_network();
    let entries: Vec<Entry> = net.log.entries().cloned().collect();
    let encoded: Vec<Vec<u8>> = entries.iter().map(|e| e.encoded().to_vec()).collect();
    let mut criterion = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(10)).configure_from_args();

    let mut group = criterion.benchmark_group("membership");
    group.throughput(Throughput::Elements(LOG_LEN as u64 - 1));
    group.bench_function("decode+verify+apply 10k entries", |bench| {
        bench.iter(|| {
            let mut log = Log::from_genesis(entries[0].clone()).expect("genesis");
            for chunk in encoded[1..].chunks(membership::log::MAX_BATCH_ENTRIES) {
                log.ingest_encoded(chunk).expect("valid");
            }
            black_box(log.len())
        })
    });
    let sender = loaded_store(&net.log, &entries[0]);
    group.bench_function("full sync of 10k entries between in-memory stores", |bench| {
        bench.iter(|| black_box(sync_into_fresh_store(&sender, &entries[0])))
    });
    group.finish();
    criterion.final_summary();

    if std::env::args().any(|a| a == "--bench") {
        let start = Instant::now();
        let synced = sync_into_fresh_store(&sender, &entries[0]);
        let elapsed = start.elapsed();
        println!("\nfull sync of {synced} entries into a fresh in-memory store: {elapsed:.2?} ({:.0} entries/s)", synced as f64 / elapsed.as_secs_f64());
    }
}

fn loaded_store(source: &Log, genesis: &Entry) -> Store {
    let mut store = Store::in_memory(genesis.clone()).expect("store");
    for chunk in source.entries().skip(1).cloned().collect::<Vec<_>>().chunks(membership::log::MAX_BATCH_ENTRIES) {
        store.ingest(chunk.to_vec()).expect("sender loads");
    }
    store
}

/// Sender: a store with the full log. Receiver: a store holding only genesis. One summary,
/// then every batch, each verified and committed atomically.
fn sync_into_fresh_store(sender: &Store, genesis: &Entry) -> usize {
    let mut receiver = Store::in_memory(genesis.clone()).expect("store");
    for batch in missing_for(sender.log(), &receiver.log().summary()) {
        receiver.ingest_encoded(&batch).expect("receiver ingests");
    }
    assert_eq!(receiver.log().state().encode(), sender.log().state().encode());
    receiver.log().len()
}
