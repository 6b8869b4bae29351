//! Issue #14's block-list goals: a 1,000,000-entry list loads in under 2 s and takes under
//! 100 MB; a lookup costs under 1 µs. `cargo bench -p node --bench blocklist` prints the
//! load time and heap size once, then criterion's lookup numbers.

use criterion::{Criterion, criterion_group, criterion_main};
use node::dns::blocklist::BlockList;
use std::hint::black_box;
use std::time::Instant;

/// A hosts-format list of `count` distinct names, like the big public lists.
fn hosts_file(count: usize) -> String {
    let mut text = String::with_capacity(count * 40);
    text.push_str("# a generated block list\n");
    for i in 0..count {
        text.push_str(&format!("0.0.0.0 ad{i}.tracker{}.example.com\n", i % 5000));
    }
    text
}

fn blocklist(c: &mut Criterion) {
    // In `cargo test` (test mode) criterion runs each function once: keep the list small there.
    let count = if std::env::args().any(|a| a == "--bench") { 1_000_000 } else { 10_000 };
    let text = hosts_file(count);
    let started = Instant::now();
    let mut list = BlockList::default();
    let added = list.add_text(&text);
    let load = started.elapsed();
    println!("block list: {added} names loaded in {:.0} ms, {:.1} MB on the heap", load.as_secs_f64() * 1000.0, list.heap_bytes() as f64 / 1e6);
    assert_eq!(added, count);
    let hit = format!("x.y.ad{}.tracker{}.example.com", count / 2, (count / 2) % 5000);
    c.bench_function("blocklist lookup, listed parent (5 labels)", |b| b.iter(|| assert!(list.blocks(black_box(&hit)))));
    c.bench_function("blocklist lookup, not listed (4 labels)", |b| b.iter(|| assert!(!list.blocks(black_box("www.shop.example.org")))));
}

criterion_group!(benches, blocklist);
criterion_main!(benches);
