//! A network of real control cores ([`node::control::Core`]) on virtual time, at a size no
//! namespace test reaches: every node holds the real log ([`membership::Store::volatile`],
//! its entries shared between nodes), speaks the real control messages (encoded with the real
//! codec to count their bytes) and runs its real timers. Only the swarm is modelled: a
//! connection comes up one handshake after its dial if the other side is online and not cut
//! off, a message arrives after the pair's latency plus any TCP retransmissions
//! ([`crate::links`]), and the network's own Kademlia DHT holds every presence record put to it
//! and answers a lookup after a modelled walk. What the swarm adds around each message is
//! counted from the wire formats (see [`overhead`]).

use crate::agenda::Agenda;
use crate::links::{self, Links};
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use membership::testkit::{Member, Network, START_TIME};
use membership::{Log, Role, Store};
use node::control::messages::{Request, Response};
use node::control::{Action, Config, Connection, Core, Time};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The bytes libp2p adds around the control plane's own, from the wire formats (IPv4, TCP
/// with timestamps, Noise transport frames, Yamux frames, multistream-select).
pub mod overhead {
    /// IPv4 (20) and TCP with the timestamp option (32) per segment.
    pub const SEGMENT: u64 = 52;
    /// A Noise transport frame: its 2-byte length and 16-byte tag.
    pub const NOISE: u64 = 18;
    /// A Yamux frame header.
    pub const YAMUX: u64 = 12;
    /// multistream-select on a new stream: `/multistream/1.0.0` and `/cloudpal/control/1`,
    /// each length-prefixed and newline-terminated.
    pub const SELECT: u64 = 20 + 21;
    /// A request: a new stream (SYN), the protocol proposed, the 4-byte length, the data, and
    /// the stream's close (FIN), in one Noise frame and one segment, and the peer's bare ACK.
    pub const REQUEST: u64 = 3 * YAMUX + SELECT + 4 + NOISE + 2 * SEGMENT;
    /// A response: the protocol confirmed, the length, the data, the close; and its ACK.
    pub const RESPONSE: u64 = 2 * YAMUX + SELECT + 4 + NOISE + 2 * SEGMENT;
    /// A libp2p ping and its pong (32 bytes each way on a long-lived stream) with an ACK.
    pub const PING: u64 = 2 * (32 + YAMUX + NOISE + SEGMENT) + SEGMENT;
    /// A new connection: TCP's three segments and FIN exchange, multistream-select for Noise
    /// and Yamux, the Noise XX handshake with both identity payloads (32-byte keys, Ed25519
    /// identity and its signature), Yamux's first window updates.
    pub const CONNECT: u64 = 7 * SEGMENT + 2 * (20 + 9) + 2 * (20 + 10) + 32 + (32 + 48 + 120) + (48 + 120) + 4 * YAMUX;
    /// A Kademlia request-response (FIND_NODE, GET_VALUE, PUT_VALUE) beside its payload.
    pub const KAD_EXCHANGE: u64 = REQUEST + RESPONSE - 2 * SELECT + 2 * (20 + 12);
    /// A peer in a FIND_NODE answer: its id and one or two addresses.
    pub const KAD_PEER: u64 = 38 + 2 * 12;
}

/// Kademlia's parameters in libp2p-kad 0.57: the replication factor (k), the lookup's
/// parallelism (α), and the walk a lookup or a put makes in a DHT of `n` nodes (rounds of α
/// requests until the k closest are known: log₂(n)/log₂(k)·α + k is what libp2p-kad's
/// iterative query sends; see [`crate::dht`] for the model of its latency).
pub mod kad {
    pub const K: u64 = 20;
    pub const ALPHA: u64 = node::p2p::KAD_PARALLELISM as u64;

    /// FIND_NODE (or GET_VALUE) requests of one walk in a DHT of `nodes`.
    pub fn walk_requests(nodes: usize) -> u64 {
        let nodes = nodes.max(2) as f64;
        let rounds = (nodes.log2() / (K as f64).log2()).ceil().max(1.0) as u64;
        (rounds + 1) * ALPHA + K.min(nodes as u64)
    }
}

/// Messages of one kind a node sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub count: u64,
    pub bytes: u64,
}

impl Sent {
    pub fn add(&mut self, other: Sent) {
        self.count += other.count;
        self.bytes += other.bytes;
    }
}

impl Node {
    fn count(&mut self, kind: &'static str, bytes: u64) {
        self.messages.entry(kind).or_default().add(Sent { count: 1, bytes });
    }
}

/// One simulated device.
#[derive(Debug)]
pub struct Node {
    pub core: Core,
    pub name: String,
    pub role: Role,
    pub peer: PeerId,
    pub ip: IpAddr,
    pub online: bool,
    /// Bytes this node sent and received on the control plane (with overhead).
    pub sent: u64,
    pub received: u64,
    /// Control messages it sent, by kind: how many, and their bytes (the control plane's own,
    /// without the framing).
    pub messages: BTreeMap<&'static str, Sent>,
    armed: Option<Instant>,
}

enum Event {
    Connect { from: usize, to: usize },
    /// `size`: the message's encoded length, counted once.
    Request { from: usize, to: usize, id: ConnectionId, request: Request, size: u64 },
    Response { from: usize, to: usize, id: ConnectionId, response: Response, size: u64 },
    Found { node: usize, key: Vec<u8>, value: Vec<u8> },
    Ping { from: usize, to: usize, id: ConnectionId },
    Timer { node: usize },
}

pub const DATA_PORT: u16 = 41641;
/// How often each side of a connection pings.
pub use node::p2p::PING_INTERVAL;

/// What the network looks like.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub seed: u64,
    pub devices: usize,
    /// Of them, how many are CloudPals (relay duty, connected to everyone).
    pub cloudpals: usize,
    /// A second admin (device 1 then), for a network that appends on two sides at once.
    pub second_admin: bool,
    pub links: Links,
}

impl std::fmt::Debug for ControlSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSim").field("nodes", &self.nodes.len()).field("elapsed", &self.elapsed()).finish_non_exhaustive()
    }
}

pub struct ControlSim {
    pub time: Time,
    pub start: Instant,
    pub nodes: Vec<Node>,
    pub members: Vec<Member>,
    pub links: Links,
    by_peer: HashMap<PeerId, usize>,
    by_ip: HashMap<IpAddr, usize>,
    connections: HashMap<(usize, usize), ConnectionId>,
    connection_pairs: HashMap<ConnectionId, (usize, usize)>,
    next_connection: usize,
    /// Pairs the network keeps apart (a partition).
    cut: HashSet<(usize, usize)>,
    /// The network's DHT: what was put under each key.
    dht: HashMap<Vec<u8>, Vec<u8>>,
    queue: Agenda<Event>,
    rng: ChaCha20Rng,
    /// Events handled (a measure of the run's work).
    pub events: u64,
    /// The nodes whose cores the last event reached (what a check after it needs to look at).
    pub touched: [Option<usize>; 2],
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// The founder (device 0) adds everyone else; device 1 is a second admin when asked, the
/// last `cloudpals` are CloudPals.
pub fn network(shape: &Shape) -> (Log, Vec<Member>) {
    let mut network = Network::new(shape.seed);
    let mut members = vec![network.founder.clone()];
    for index in 1..shape.devices {
        let role = if index >= shape.devices - shape.cloudpals {
            Role::CloudPal
        } else if index == 1 && shape.second_admin {
            Role::Admin
        } else {
            Role::Member
        };
        members.push(network.add(&format!("device-{index}"), role));
    }
    (network.log, members)
}

impl ControlSim {
    /// Every device online with the first CloudPal (or the founder) as its bootstrap: they
    /// find each other the way a real network does, through its Hellos and path exchanges.
    pub fn new(shape: &Shape) -> Self {
        let (log, members) = network(shape);
        let start = Instant::now();
        let time = Time { now: start, unix: Duration::from_secs(START_TIME + 100) };
        let ip = |index: usize| IpAddr::V4(Ipv4Addr::from(0xc633_6400u32 + index as u32 + 1)); // 198.51.100.0/22 and on
        let bootstrap_index = if shape.cloudpals > 0 { shape.devices - shape.cloudpals } else { 0 };
        let bootstrap = vec![node::control::addr::socket_multiaddr(SocketAddr::new(ip(bootstrap_index), DATA_PORT), false)];
        let mut nodes = Vec::with_capacity(members.len());
        for (index, member) in members.iter().enumerate() {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&links::splitmix(shape.seed ^ index as u64).to_le_bytes());
            seed[8..16].copy_from_slice(&(index as u64).to_le_bytes());
            let peer = node::p2p::peer_id_in(&seed, 0).expect("a peer id");
            let cloudpal = member.record.role == Role::CloudPal;
            let config = Config {
                signing_key: member.key.clone(),
                peer_id: peer,
                data_port: DATA_PORT,
                cloudpal,
                bootstrap: if index == bootstrap_index { Vec::new() } else { bootstrap.clone() },
                exit: None,
                egress_pool: Vec::new(),
                dns_on: false,
                fallback: None,
            };
            let mut core = Core::new(config, Store::volatile(log.clone()), links::rng(shape.seed, 1_000_000 + index as u64), time).expect("a core");
            // What a new core asks first is for its data plane and relay gate (no connection,
            // no listen address yet): dropped now, so that a thousand cores never hold a
            // thousand peer configurations each at once.
            while core.poll_action().is_some() {}
            nodes.push(Node {
                core,
                name: member.record.name.clone(),
                role: member.record.role,
                peer,
                ip: ip(index),
                online: true,
                sent: 0,
                received: 0,
                messages: BTreeMap::new(),
                armed: None,
            });
        }
        let by_peer = nodes.iter().enumerate().map(|(i, n)| (n.peer, i)).collect();
        let by_ip = nodes.iter().enumerate().map(|(i, n)| (n.ip, i)).collect();
        let mut sim = ControlSim {
            time,
            start,
            nodes,
            members,
            links: shape.links,
            by_peer,
            by_ip,
            connections: HashMap::new(),
            connection_pairs: HashMap::new(),
            next_connection: 1,
            cut: HashSet::new(),
            dht: HashMap::new(),
            queue: Agenda::default(),
            rng: links::rng(shape.seed, 7),
            events: 0,
            touched: [None; 2],
        };
        for index in 0..sim.nodes.len() {
            let address = sim.address(index);
            sim.nodes[index].core.handle_new_listen_addr(address);
            sim.drain(index);
        }
        sim
    }

    pub fn elapsed(&self) -> Duration {
        self.time.now - self.start
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.queue.push(self.time.now + after, event);
    }

    /// Runs until `end` of virtual time (since the start), or until `stop` says so after an
    /// event; whether `stop` did.
    pub fn run_until(&mut self, end: Duration, mut stop: impl FnMut(&Self) -> bool) -> bool {
        let end = self.start + end;
        while let Some((at, event)) = self.queue.pop_due(end) {
            if at > self.time.now {
                self.time = self.time.advanced(at - self.time.now);
            }
            self.events += 1;
            self.handle(event);
            if stop(self) {
                return true;
            }
        }
        if end > self.time.now {
            self.time = self.time.advanced(end - self.time.now);
        }
        false
    }

    pub fn run_for(&mut self, duration: Duration) {
        let end = self.elapsed() + duration;
        self.run_until(end, |_| false);
    }

    fn handle(&mut self, event: Event) {
        let time = self.time;
        self.touched = match &event {
            Event::Timer { node } | Event::Found { node, .. } => [Some(*node), None],
            Event::Connect { from, to } => [Some(*from), Some(*to)],
            Event::Request { to, .. } | Event::Response { to, .. } => [Some(*to), None],
            Event::Ping { .. } => [None, None],
        };
        match event {
            Event::Timer { node } => {
                if self.nodes[node].armed.is_some_and(|at| at <= time.now) {
                    self.nodes[node].armed = None;
                    if self.nodes[node].online {
                        self.nodes[node].core.handle_timeout(time);
                    }
                    self.drain(node);
                }
            }
            Event::Connect { from, to } => {
                if self.reachable(from, to) && !self.connections.contains_key(&pair(from, to)) {
                    self.establish(from, to);
                }
            }
            Event::Request { from, to, id, request, size } => {
                if self.connections.get(&pair(from, to)) == Some(&id) {
                    self.nodes[to].received += size + overhead::REQUEST;
                    let peer = self.nodes[from].peer;
                    let response = self.nodes[to].core.handle_request(peer, request, time);
                    let size = message_len(&response);
                    self.nodes[to].sent += size + overhead::RESPONSE;
                    self.nodes[to].count("response", size);
                    let delay = self.links.delivery(to, from, &mut self.rng);
                    self.schedule(delay, Event::Response { from: to, to: from, id, response, size });
                    self.drain(to);
                }
            }
            Event::Response { from, to, id, response, size } => {
                if self.connections.get(&pair(from, to)) == Some(&id) {
                    self.nodes[to].received += size + overhead::RESPONSE;
                    let peer = self.nodes[from].peer;
                    self.nodes[to].core.handle_response(peer, response, time);
                    self.drain(to);
                }
            }
            Event::Found { node, key, value } => {
                if self.nodes[node].online {
                    self.nodes[node].core.handle_found_record(&key, &value, time);
                    self.drain(node);
                }
            }
            Event::Ping { from, to, id } => {
                if self.connections.get(&pair(from, to)) == Some(&id) {
                    self.nodes[from].sent += overhead::PING / 2;
                    self.nodes[from].received += overhead::PING / 2;
                    self.nodes[to].sent += overhead::PING / 2;
                    self.nodes[to].received += overhead::PING / 2;
                    self.schedule(PING_INTERVAL, Event::Ping { from, to, id });
                }
            }
        }
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        a != b && self.nodes[a].online && self.nodes[b].online && !self.cut.contains(&pair(a, b))
    }

    fn establish(&mut self, from: usize, to: usize) {
        let id = ConnectionId::new_unchecked(self.next_connection);
        self.next_connection += 1;
        self.connections.insert(pair(from, to), id);
        self.connection_pairs.insert(id, pair(from, to));
        for side in [from, to] {
            self.nodes[side].sent += overhead::CONNECT / 2;
            self.nodes[side].received += overhead::CONNECT / 2;
        }
        let (peer_from, peer_to) = (self.nodes[from].peer, self.nodes[to].peer);
        let (address_from, address_to) = (self.address(from), self.address(to));
        let time = self.time;
        self.nodes[from].core.handle_connection_established(Connection { peer: peer_to, id, remote: address_to.clone(), dialer: true, relayed: false, local: None }, time);
        self.nodes[to].core.handle_connection_established(Connection { peer: peer_from, id, remote: address_from, dialer: false, relayed: false, local: Some(address_to) }, time);
        // Both sides ping once per interval, at a phase of their own.
        for (a, b) in [(from, to), (to, from)] {
            let phase = PING_INTERVAL.mul_f64(links::unit(&mut self.rng));
            self.schedule(phase, Event::Ping { from: a, to: b, id });
        }
        self.drain(from);
        self.drain(to);
    }

    pub fn is_connected(&self, a: usize, b: usize) -> bool {
        self.connections.contains_key(&pair(a, b))
    }

    /// Whether some open connection's two ends satisfy `which`.
    pub fn any_connection(&self, which: impl Fn(usize, usize) -> bool) -> bool {
        self.connections.keys().any(|(a, b)| which(*a, *b))
    }

    /// The open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    pub fn disconnect(&mut self, a: usize, b: usize) {
        if let Some(id) = self.connections.remove(&pair(a, b)) {
            self.connection_pairs.remove(&id);
            let (peer_a, peer_b) = (self.nodes[a].peer, self.nodes[b].peer);
            self.nodes[a].core.handle_connection_closed(peer_b, id);
            self.nodes[b].core.handle_connection_closed(peer_a, id);
            self.drain(a);
            self.drain(b);
        }
    }

    /// Takes a device off the network (its connections close) or brings it back.
    pub fn set_online(&mut self, index: usize, online: bool) {
        if !online {
            let peers: Vec<usize> = self.connections.keys().filter(|(a, b)| *a == index || *b == index).map(|(a, b)| if *a == index { *b } else { *a }).collect();
            for other in peers {
                self.disconnect(index, other);
            }
        }
        self.nodes[index].online = online;
        if online {
            self.drain(index);
        }
    }

    /// Cuts every link between the two groups (closing their connections).
    pub fn partition(&mut self, left: &[usize], right: &[usize]) {
        let right_set: HashSet<usize> = right.iter().copied().collect();
        let crossing: Vec<(usize, usize)> = self.connections.keys().filter(|(a, b)| right_set.contains(a) != right_set.contains(b)).copied().collect();
        for &a in left {
            for &b in right {
                self.cut.insert(pair(a, b));
            }
        }
        for (a, b) in crossing {
            self.disconnect(a, b);
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Carries out everything node `index`'s core asked for, and re-arms its timer.
    pub fn drain(&mut self, index: usize) {
        while let Some(action) = self.nodes[index].core.poll_action() {
            if self.nodes[index].online {
                self.carry_out(index, action);
            }
        }
        let due = if self.nodes[index].online { self.nodes[index].core.poll_timeout() } else { None };
        if due != self.nodes[index].armed {
            self.nodes[index].armed = due;
            if let Some(at) = due {
                let after = at.saturating_duration_since(self.time.now);
                self.schedule(after, Event::Timer { node: index });
            }
        }
    }

    fn carry_out(&mut self, index: usize, action: Action) {
        match action {
            Action::Send { peer, request } => {
                let Some(to) = self.by_peer.get(&peer).copied() else { return };
                let Some(id) = self.connections.get(&pair(index, to)).copied() else { return };
                let size = message_len(&request);
                self.nodes[index].sent += size + overhead::REQUEST;
                self.nodes[index].count(request_kind(&request), size);
                let delay = self.links.delivery(index, to, &mut self.rng);
                self.schedule(delay, Event::Request { from: index, to, id, request, size });
            }
            Action::Dial(dial) => {
                let target = match dial.peer {
                    Some(peer) => self.by_peer.get(&peer).copied(),
                    None => dial.addresses.iter().find_map(|a| node::control::addr::multiaddr_ip(a).and_then(|ip| self.by_ip.get(&ip).copied())),
                };
                self.nodes[index].count("dial", 0);
                if let Some(to) = target
                    && self.reachable(index, to)
                    && !self.is_connected(index, to)
                {
                    // TCP's handshake, then Noise XX and Yamux: two round trips.
                    let rtt = self.links.latency(index, to) * 2;
                    self.schedule(rtt * 2, Event::Connect { from: index, to });
                }
            }
            Action::KadPut { key, value, .. } => {
                let nodes = self.nodes.len();
                let walk = kad::walk_requests(nodes);
                let bytes = walk * (overhead::KAD_EXCHANGE + 40 + kad::K * overhead::KAD_PEER) + kad::K * (overhead::KAD_EXCHANGE + 2 * (key.len() + value.len()) as u64);
                self.nodes[index].sent += bytes / 2;
                self.nodes[index].received += bytes / 2;
                self.nodes[index].count("kad-put", bytes / 2);
                // Those who answered and stored it carry the other half (spread evenly).
                self.dht.insert(key, value);
            }
            Action::KadGet { key } => {
                let walk = kad::walk_requests(self.nodes.len());
                let found = self.dht.get(&key).cloned();
                let bytes = walk * (overhead::KAD_EXCHANGE + 40 + kad::K * overhead::KAD_PEER) + found.as_ref().map_or(0, |v| v.len() as u64);
                self.nodes[index].sent += bytes / 2;
                self.nodes[index].received += bytes / 2;
                self.nodes[index].count("kad-get", bytes / 2);
                if let Some(value) = found {
                    // A walk's rounds, each a round trip to a random member.
                    let other = (rand_core::Rng::next_u64(&mut self.rng) % self.nodes.len() as u64) as usize;
                    let rounds = (walk / kad::ALPHA).max(1) as u32;
                    let after = self.links.latency(index, other) * 2 * rounds;
                    self.schedule(after, Event::Found { node: index, key, value });
                }
            }
            Action::Disconnect(peer) => {
                if let Some(other) = self.by_peer.get(&peer).copied() {
                    self.disconnect(index, other);
                }
            }
            Action::CloseConnection(id) => {
                if let Some((a, b)) = self.connection_pairs.get(&id).copied() {
                    self.disconnect(a, b);
                }
            }
            // The data plane, the relay, the host: not what these runs look at.
            Action::Data(_)
            | Action::KadAddAddress { .. }
            | Action::ListenOnCircuit(_)
            | Action::AddExternalAddress(_)
            | Action::MemberPeers(_)
            | Action::ExitClient(_)
            | Action::ExitServe(_)
            | Action::DnsServe(_)
            | Action::ClientDns(_)
            | Action::CachePeers(_)
            | Action::SaveView(_)
            | Action::Finished { .. } => {}
        }
    }

    /// One line on the network: its size, who is online, its links, its connections.
    pub fn describe(&self) -> String {
        let online = self.nodes.iter().filter(|n| n.online).count();
        let cloudpals = self.nodes.iter().filter(|n| n.role == Role::CloudPal).count();
        format!(
            "{} devices ({} CloudPals, {} online), {}–{} ms links, {:.0} % loss, {} control connections",
            self.nodes.len(),
            cloudpals,
            online,
            self.links.min.as_millis(),
            self.links.max.as_millis(),
            self.links.loss * 100.0,
            self.connections.len()
        )
    }

    /// A node's address, as a dial would name it.
    pub fn address(&self, index: usize) -> Multiaddr {
        node::control::addr::socket_multiaddr(SocketAddr::new(self.nodes[index].ip, DATA_PORT), false)
    }

    /// Resets every node's byte and message counters.
    pub fn reset_counters(&mut self) {
        for node in &mut self.nodes {
            node.sent = 0;
            node.received = 0;
            node.messages.clear();
        }
    }
}

/// A control message's length on the wire: its CBOR.
fn message_len<T: minicbor::Encode<()>>(message: &T) -> u64 {
    node::control::messages::encode(message).map_or(0, |bytes| bytes.len() as u64)
}

fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Hello { .. } => "hello",
        Request::Deliver { .. } => "deliver",
        Request::Paths { .. } => "paths",
        Request::Sync { .. } => "sync",
        Request::Enrol { .. } => "enrol",
        Request::Join { .. } => "join",
        Request::Announce { .. } => "announce",
        Request::ExitSession { .. } => "exit",
        Request::View { .. } => "view",
    }
}

/// The `p`th percentile of a sorted sample (nearest rank); the default of `T` for none.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
