//! Rendezvous lookups in a DHT of CloudPals (issue #17): a model of libp2p-kad 0.57's
//! iterative `GET_VALUE` query on virtual time, at sizes no swarm here reaches.
//!
//! What is modelled, with libp2p-kad's defaults where the node keeps them
//! (`node/src/p2p/mod.rs`): 256-bit ids under the XOR metric (the top 128 bits, which decide
//! every distance here); each node's k-buckets filled with up to K = 20 random nodes of each
//! prefix range (an ideal table: libp2p fills them from the peers it meets); a record stored at
//! the K nodes closest to its key; a query that starts from the K closest in the asker's table
//! and keeps α = 3 requests in flight (K once it stalls: no closer peer among α answers), each
//! answered after a new connection's two round trips (TCP, then Noise and Yamux with the
//! request) plus the answer's, 20–200 ms one way per pair ([`crate::links`]); a node that is
//! off never answers and its request counts as failed after libp2p-kad's 10 s peer timeout; the
//! query ends at the first answer holding the record, when the K closest known have all
//! answered or failed, or at the node's 5 s query timeout. Not modelled yet: the calibration
//! against real libp2p-kad swarms the issue asks for, connections already open, and loss.

use crate::links::{self, Links};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

pub const K: usize = 20;
pub const ALPHA: usize = 3;
/// libp2p-kad's default wait for one peer's answer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// The node's query timeout (`KAD_QUERY_TIMEOUT`).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Dht {
    ids: Vec<u128>,
    pub online: Vec<bool>,
    /// Each node's routing table (indices of other nodes).
    tables: Vec<Vec<u32>>,
    links: Links,
}

/// What one lookup did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// When it found the record; `None`: it did not.
    pub found: Option<Duration>,
    pub requests: usize,
}

impl Dht {
    /// `nodes` nodes with ids from `seed`, each with a full routing table.
    pub fn new(nodes: usize, seed: u64, links: Links) -> Self {
        let mut rng = links::rng(seed, 31);
        let ids: Vec<u128> = (0..nodes).map(|_| (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())).collect();
        let mut sorted: Vec<u32> = (0..nodes as u32).collect();
        sorted.sort_by_key(|i| ids[*i as usize]);
        let sorted_ids: Vec<u128> = sorted.iter().map(|i| ids[*i as usize]).collect();
        let mut tables = Vec::with_capacity(nodes);
        for id in &ids {
            let mut table = Vec::new();
            for bit in 0..128u32 {
                let range = |prefix: u128| {
                    let low = prefix << (127 - bit);
                    let high = low | ((1u128 << (127 - bit)) - 1);
                    sorted_ids.partition_point(|x| *x < low)..sorted_ids.partition_point(|x| *x <= high)
                };
                // The nodes that share our top `bit` bits and differ in the next.
                let theirs = &sorted[range((id >> (127 - bit)) ^ 1)];
                if theirs.len() <= K {
                    table.extend_from_slice(theirs);
                } else {
                    let mut picked: Vec<u32> = Vec::with_capacity(K);
                    while picked.len() < K {
                        let candidate = theirs[(rng.next_u64() % theirs.len() as u64) as usize];
                        if !picked.contains(&candidate) {
                            picked.push(candidate);
                        }
                    }
                    table.extend(picked);
                }
                // Past the prefix only we hold, every deeper bucket is empty.
                if range(id >> (127 - bit)).len() <= 1 {
                    break;
                }
            }
            tables.push(table);
        }
        Dht { ids, online: vec![true; nodes], tables, links }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Takes a `share` of the nodes off, at random from `seed` (at least one stays on).
    pub fn take_offline(&mut self, share: f64, seed: u64) {
        let mut rng = links::rng(seed, 33);
        for online in &mut self.online {
            *online = links::unit(&mut rng) >= share;
        }
        if let Some(first) = self.online.first_mut() {
            *first = true;
        }
    }

    /// The K nodes closest to `key` among all (where a put stores a record).
    pub fn holders(&self, key: u128) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.ids.len()).collect();
        all.sort_by_key(|i| self.ids[*i] ^ key);
        all.truncate(K);
        all
    }

    fn closest_in(&self, node: usize, key: u128) -> Vec<u32> {
        let mut known = self.tables[node].clone();
        known.sort_by_key(|i| self.ids[*i as usize] ^ key);
        known.truncate(K);
        known
    }

    /// `asker` looks up the record under `key`, held by `holders`.
    pub fn lookup(&self, asker: usize, key: u128, holders: &[usize]) -> Lookup {
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum State {
            Waiting,
            Answered,
            Failed,
        }
        // Candidates by distance; the state of those contacted.
        let mut candidates: BTreeMap<u128, u32> = BTreeMap::new();
        for peer in self.closest_in(asker, key) {
            candidates.insert(self.ids[peer as usize] ^ key, peer);
        }
        let mut state: BTreeMap<u32, State> = BTreeMap::new();
        // Events: (when, peer, answered).
        let mut events: BinaryHeap<Reverse<(Duration, u32, bool)>> = BinaryHeap::new();
        let mut now = Duration::ZERO;
        let mut requests = 0;
        let mut in_flight = 0usize;
        let mut stalled = false;
        let mut closest_seen = candidates.keys().next().copied();
        let mut answers_since_progress = 0usize;
        loop {
            // Send while there is room and someone not yet asked.
            let parallelism = if stalled { K } else { ALPHA };
            while in_flight < parallelism {
                let next = candidates.values().copied().find(|peer| !state.contains_key(peer));
                let Some(peer) = next else { break };
                // Only the K closest known are worth asking.
                let rank = candidates.values().position(|p| *p == peer).unwrap_or(usize::MAX);
                if rank >= K {
                    break;
                }
                state.insert(peer, State::Waiting);
                requests += 1;
                in_flight += 1;
                let index = peer as usize;
                if self.online[index] {
                    let rtt = self.links.latency(asker, index) * 2;
                    events.push(Reverse((now + rtt * 3, peer, true)));
                } else {
                    events.push(Reverse((now + PEER_TIMEOUT, peer, false)));
                }
            }
            let Some(Reverse((at, peer, answered))) = events.pop() else {
                return Lookup { found: None, requests };
            };
            if at > QUERY_TIMEOUT {
                return Lookup { found: None, requests };
            }
            now = at;
            in_flight -= 1;
            if !answered {
                state.insert(peer, State::Failed);
                continue;
            }
            state.insert(peer, State::Answered);
            if holders.contains(&(peer as usize)) {
                return Lookup { found: Some(now), requests };
            }
            for other in self.closest_in(peer as usize, key) {
                if other as usize != asker {
                    candidates.insert(self.ids[other as usize] ^ key, other);
                }
            }
            let closest = candidates.keys().next().copied();
            if closest < closest_seen {
                closest_seen = closest;
                answers_since_progress = 0;
                stalled = false;
            } else {
                answers_since_progress += 1;
                stalled = answers_since_progress >= ALPHA;
            }
            // Done when the K closest known have all answered or failed.
            let finished = candidates.values().take(K).all(|p| matches!(state.get(p), Some(State::Answered | State::Failed)));
            if finished {
                return Lookup { found: None, requests };
            }
        }
    }
}

/// One run of lookups: `offline` of the nodes go off, then `count` random online askers
/// each look up a random key whose record was stored (while all were on) at its K closest.
pub fn lookups(dht: &mut Dht, count: usize, offline: f64, seed: u64) -> Vec<Lookup> {
    let mut rng: ChaCha20Rng = links::rng(seed, 35);
    dht.take_offline(offline, seed);
    let online: Vec<usize> = (0..dht.len()).filter(|i| dht.online[*i]).collect();
    (0..count)
        .map(|_| {
            let key = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            let asker = online[(rng.next_u64() % online.len().max(1) as u64) as usize];
            let holders = dht.holders(key);
            dht.lookup(asker, key, &holders)
        })
        .collect()
}
