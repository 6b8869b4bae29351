//! Rendezvous lookups in a DHT of CloudPals (issue #17): a model of libp2p-kad 0.57's
//! iterative `GET_VALUE` query on virtual time, at sizes no swarm here reaches, calibrated
//! against real libp2p-kad swarms ([`crate::swarms`]) at 250–1,000 nodes.
//!
//! What is modelled, with the node's Kademlia settings (`node::p2p::kad_config`): 256-bit ids
//! under the XOR metric (the top 128 bits, which decide every distance here); each node's
//! k-buckets filled with up to K = 20 random nodes of each prefix range (an ideal table:
//! libp2p fills them from the peers it meets), and a connection kept open to each of them (the
//! node keeps connections; the table's peers are the ones it has talked to); a record stored
//! at the K nodes closest to its key; a query that starts from the K closest in the asker's
//! table and keeps α requests in flight (the node's 10; K once it stalls: no closer peer among α
//! answers). A request over an open connection is answered after one round trip (two with
//! libp2p's default stream negotiation, which waits for the protocol's name to be echoed);
//! one that needs a new connection after two more (TCP, then Noise with Yamux's name), and
//! the connection then stays open. Links are 20–200 ms one way per pair ([`crate::links`]). A
//! node that is off never answers: a request to it fails after the node's request timeout
//! over an open connection, or its dial times out, each at most libp2p-kad's 10 s peer
//! timeout. The query ends at the first answer holding the record, when the K closest known
//! have all answered or failed, or at the node's query timeout. Not modelled: loss, and what
//! a failed peer teaches the asker (libp2p drops its address; the model keeps asking it).

use crate::links::{self, Links};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

pub const K: usize = 20;
/// libp2p-kad's wait for one peer's answer before the query stops counting it (fixed).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings a query lives by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The whole query.
    pub query: Duration,
    /// One request over an open connection.
    pub request: Duration,
    /// A new connection, up to its multiplexer.
    pub dial: Duration,
    /// A new stream sends its request with its protocol's name (multistream-select's
    /// `V1Lazy`) instead of a round trip after it (`V1`, libp2p's default).
    pub lazy: bool,
    /// Requests a query keeps in flight (α) until it stalls.
    pub alpha: usize,
}

impl Settings {
    /// The node's.
    pub const NODE: Settings = Settings { query: node::p2p::KAD_QUERY_TIMEOUT, request: node::p2p::KAD_REQUEST_TIMEOUT, dial: node::p2p::DIAL_TIMEOUT, lazy: true, alpha: node::p2p::KAD_PARALLELISM };
    /// libp2p's defaults (10 s request timeout, no dial timeout, `V1` streams) with the
    /// node's query timeout: what the node ran before.
    pub const LIBP2P: Settings = Settings { query: node::p2p::KAD_QUERY_TIMEOUT, request: Duration::from_secs(10), dial: Duration::from_secs(100 * 365 * 24 * 3600), lazy: false, alpha: 3 };

    /// Round trips of a request over an open connection, and over a new one (TCP; Noise,
    /// with Yamux's name; then the stream).
    pub fn round_trips(&self) -> (u32, u32) {
        let stream = if self.lazy { 1 } else { 2 };
        (stream, stream + 2)
    }
}

#[derive(Debug)]
pub struct Dht {
    ids: Vec<u128>,
    pub online: Vec<bool>,
    /// Each node's routing table (indices of other nodes).
    tables: Vec<Vec<u32>>,
    /// Each node's open connections (sorted indices): its table's peers, the nodes whose
    /// tables hold it, and those its lookups have dialled since.
    open: Vec<Vec<u32>>,
    links: Links,
    pub settings: Settings,
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
    pub fn new(nodes: usize, seed: u64, links: Links, settings: Settings) -> Self {
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
        let mut open: Vec<Vec<u32>> = tables.clone();
        for (node, table) in tables.iter().enumerate() {
            for peer in table {
                open[*peer as usize].push(node as u32);
            }
        }
        for peers in &mut open {
            peers.sort_unstable();
            peers.dedup();
        }
        Dht { ids, online: vec![true; nodes], tables, open, links, settings }
    }

    fn is_open(&self, a: usize, b: u32) -> bool {
        self.open[a].binary_search(&b).is_ok()
    }

    fn connect(&mut self, a: usize, b: usize) {
        for (from, to) in [(a, b as u32), (b, a as u32)] {
            if let Err(at) = self.open[from].binary_search(&to) {
                self.open[from].insert(at, to);
            }
        }
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
    pub fn lookup(&mut self, asker: usize, key: u128, holders: &[usize]) -> Lookup {
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
            let parallelism = if stalled { K } else { self.settings.alpha };
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
                let open = self.is_open(asker, peer);
                let rtt = self.links.latency(asker, index) * 2;
                if self.online[index] {
                    if !open {
                        self.connect(asker, index);
                    }
                    let (over_open, over_new) = self.settings.round_trips();
                    events.push(Reverse((now + rtt * if open { over_open } else { over_new }, peer, true)));
                } else {
                    let waited = if open { self.settings.request } else { self.settings.dial };
                    events.push(Reverse((now + waited.min(PEER_TIMEOUT), peer, false)));
                }
            }
            let Some(Reverse((at, peer, answered))) = events.pop() else {
                return Lookup { found: None, requests };
            };
            if at > self.settings.query {
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
                stalled = answers_since_progress >= self.settings.alpha;
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
/// each look up a random key whose record was stored (while all were on) at its K closest,
/// and which they do not hold themselves.
pub fn lookups(dht: &mut Dht, count: usize, offline: f64, seed: u64) -> Vec<Lookup> {
    let mut rng: ChaCha20Rng = links::rng(seed, 35);
    dht.take_offline(offline, seed);
    let online: Vec<usize> = (0..dht.len()).filter(|i| dht.online[*i]).collect();
    (0..count)
        .map(|_| {
            let key = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            let holders = dht.holders(key);
            let asker = asker(&mut rng, &online, &holders);
            dht.lookup(asker, key, &holders)
        })
        .collect()
}

/// A random node of `online` that holds none of the record (`holders`), unless all of them do:
/// a lookup that starts at the record would measure nothing.
pub fn asker(rng: &mut impl Rng, online: &[usize], holders: &[usize]) -> usize {
    loop {
        let asker = online[(rng.next_u64() % online.len() as u64) as usize];
        if !holders.contains(&asker) || online.len() <= holders.len() {
            return asker;
        }
    }
}
