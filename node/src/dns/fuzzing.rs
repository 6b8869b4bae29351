//! The body of the `dns_query` fuzz target (`node/fuzz`); `cargo test` replays its committed
//! corpus (DNS-05: malformed queries, compression loops, oversized names, truncation).

use super::blocklist::BlockList;
use super::resolver::{Client, Resolver, Settings, Transmit};
use rand_core::SeedableRng;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Any bytes as a member's query, then as an upstream's answer to whatever was forwarded:
/// never a panic, at most one answer per query, nothing kept once answered.
pub fn dns_query(data: &[u8]) {
    let member = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
    let settings = Settings { clients: [member].into_iter().collect(), upstreams: vec!["udp://192.0.2.53:53".into()], ..Settings::default() };
    let mut blocks = BlockList::default();
    blocks.add_text("ads.example.com\n");
    let mut resolver = Resolver::new(settings, blocks, rand_chacha::ChaCha20Rng::seed_from_u64(0));
    let now = Instant::now();
    resolver.handle_query(Client::Udp(SocketAddr::new(member, 5353)), member, data, now);
    let mut answers = 0;
    let mut forwarded = Vec::new();
    while let Some(transmit) = resolver.poll_transmit() {
        match transmit {
            Transmit::Answer { bytes, .. } => {
                answers += 1;
                assert!(bytes.len() <= 512, "a UDP answer over 512 bytes without EDNS");
            }
            Transmit::Upstream { bytes, .. } => forwarded.push(bytes),
        }
    }
    assert!(answers + forwarded.len() <= 1, "one query, one outcome");
    // The same bytes as the upstream's answer, with the forwarded query's id spliced in.
    if let Some(query) = forwarded.first() {
        let mut answer = data.to_vec();
        if answer.len() >= 2 {
            answer[..2].copy_from_slice(&query[..2]);
        }
        resolver.handle_upstream(0, &answer, now);
        resolver.handle_timeout(now + Duration::from_secs(10));
        let replies = std::iter::from_fn(|| resolver.poll_transmit()).filter(|t| matches!(t, Transmit::Answer { .. })).count();
        assert_eq!(replies, 1, "a forwarded query is answered exactly once (by upstream or SERVFAIL)");
        assert_eq!(resolver.poll_timeout(), None, "nothing left waiting");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dns05_fuzz_corpus_dns_query_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dns_query");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            super::dns_query(&std::fs::read(&path).expect("read"));
            count += 1;
        }
        assert!(count > 0, "empty corpus");
    }
}
