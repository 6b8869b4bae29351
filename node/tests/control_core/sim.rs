//! An in-process network of control cores on virtual time (quinn's `Pair`, grown to N): no
//! root, no namespaces, no sockets. Connections, control messages and a DHT are simulated;
//! every action a core emits is either carried out here or recorded for the test to read.

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use membership::testkit::{Member, Network, START_TIME};
use membership::{Log, Store};
use node::control::messages::{Request, Response};
use node::control::{Action, Config, Connection, Core, Dial, Time};
use node::control_api::AddReply;
use node::dataplane::DataCommand;
use protocol::DeviceSigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

pub const DATA_PORT: u16 = 41641;

/// One simulated node and everything its core asked for that the simulation only records.
pub struct Node {
    pub core: Core,
    pub name: String,
    pub peer: PeerId,
    pub ip: IpAddr,
    pub key: DeviceSigningKey,
    pub data: Vec<DataCommand>,
    pub dials: Vec<(Instant, Dial)>,
    pub sent: Vec<(Instant, PeerId, Request)>,
    pub kad_addresses: Vec<(PeerId, Multiaddr)>,
    pub kad_puts: Vec<Instant>,
    pub kad_gets: Vec<(Instant, Vec<u8>)>,
    pub kad_store: HashMap<Vec<u8>, Vec<u8>>,
    pub circuits: Vec<Multiaddr>,
    pub member_peers: HashSet<PeerId>,
    pub disconnected: Vec<PeerId>,
    pub cached: Vec<Vec<String>>,
    pub finished: Vec<(u64, Result<AddReply, String>)>,
    pub external: Vec<Multiaddr>,
    pub exit_client: Vec<Option<node::control::ExitChoice>>,
    pub exit_served: Vec<node::exit::ExitRules>,
    pub dns_served: Vec<node::dns::server::DnsConfig>,
    pub client_dns: Vec<Option<(std::net::Ipv4Addr, bool)>>,
    /// A guest: the views it asked the shell to keep.
    pub saved_views: Vec<Vec<Vec<u8>>>,
    /// The answers it gave: when, to whom.
    pub answered: Vec<(Instant, PeerId, Response)>,
}

impl Node {
    pub fn address(&self) -> Multiaddr {
        node::control::addr::socket_multiaddr(SocketAddr::new(self.ip, DATA_PORT), false)
    }

    pub fn log(&self) -> &Log {
        self.core.log().expect("a member holds the log")
    }

    /// Data-plane commands recorded since the last call.
    pub fn take_data(&mut self) -> Vec<DataCommand> {
        std::mem::take(&mut self.data)
    }
}

/// A message on its way.
enum Message {
    Request { from: usize, to: usize, request: Request },
    Response { from: usize, to: usize, response: Response },
}

pub struct Sim {
    pub time: Time,
    pub start: Instant,
    pub nodes: Vec<Node>,
    /// Open connections between node indices (smaller first), with their ids.
    pub connections: HashMap<(usize, usize), ConnectionId>,
    next_connection: usize,
    /// Pairs that cannot reach each other.
    cut: HashSet<(usize, usize)>,
    queue: VecDeque<Message>,
    /// Requests the network loses.
    drops: Vec<Drop>,
    /// Whether dials are carried out (off: the test reads them).
    pub auto_dial: bool,
    /// DHT-03: Sybils own the DHT: puts vanish and every lookup finds garbage.
    pub eclipse: bool,
    /// CloudPals added from now on serve the TCP/TLS fallback here (its port; `[::]`).
    pub fallback: Option<(SocketAddr, [u8; 32])>,
}

/// Requests from `.0` to `.1` that `.2` picks are lost.
type Drop = (usize, usize, fn(&Request) -> bool);

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// A network of `names` devices, each added by the founder (the first name) with `role`s
/// given, all holding the same log.
pub fn network(seed: u64, devices: &[(&str, membership::Role)]) -> (Network, Vec<Member>) {
    let mut network = Network::new(seed);
    let mut members = vec![network.founder.clone()];
    for (name, role) in &devices[1..] {
        members.push(network.add(name, *role));
    }
    (network, members)
}

/// A store holding `log`.
pub fn store_of(log: &Log) -> Store {
    let mut entries = log.entries().cloned();
    let mut store = Store::in_memory(entries.next().expect("genesis")).expect("store");
    let rest: Vec<_> = entries.collect();
    if !rest.is_empty() {
        store.ingest(rest).expect("ingests");
    }
    store
}

pub fn peer_of(seed: u8) -> PeerId {
    node::p2p::peer_id(&[seed; 32]).expect("peer id")
}

impl Sim {
    pub fn new() -> Self {
        let start = Instant::now();
        Sim {
            time: Time { now: start, unix: Duration::from_secs(START_TIME + 100) },
            start,
            nodes: Vec::new(),
            connections: HashMap::new(),
            next_connection: 1,
            cut: HashSet::new(),
            queue: VecDeque::new(),
            drops: Vec::new(),
            auto_dial: true,
            eclipse: false,
            fallback: None,
        }
    }

    /// Adds a core for `member` over `log`; returns its index.
    pub fn add(&mut self, member: &Member, log: &Log, cloudpal: bool) -> usize {
        self.add_with_bootstrap(member, log, cloudpal, Vec::new())
    }

    pub fn add_with_bootstrap(&mut self, member: &Member, log: &Log, cloudpal: bool, bootstrap: Vec<Multiaddr>) -> usize {
        self.add_core(member, store_of(log).into(), cloudpal, bootstrap)
    }

    /// Adds a guest's core over the view members serve it from `log`; returns its index.
    pub fn add_guest(&mut self, member: &Member, log: &Log, bootstrap: Vec<Multiaddr>) -> usize {
        let me = member.record.signing_key.device_id();
        let view = membership::guest::view_for(log, &me).expect("a guest of the log");
        let book = node::control::book::GuestBook::new(log.network(), me, view).expect("the view checks");
        self.add_core(member, book.into(), false, bootstrap)
    }

    fn add_core(&mut self, member: &Member, book: node::control::book::Book, cloudpal: bool, bootstrap: Vec<Multiaddr>) -> usize {
        let index = self.nodes.len();
        let peer = peer_of(index as u8 + 1);
        let config = Config { signing_key: member.key.clone(), peer_id: peer, data_port: DATA_PORT, cloudpal, bootstrap, exit: None, egress_pool: Vec::new(), dns_on: false, fallback: self.fallback.filter(|_| cloudpal) };
        let core = Core::new(config, book, ChaCha20Rng::seed_from_u64(index as u64), self.time).expect("a core");
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, index as u8 + 1));
        self.nodes.push(Node {
            core,
            name: member.record.name.clone(),
            peer,
            ip,
            key: member.key.clone(),
            data: Vec::new(),
            dials: Vec::new(),
            sent: Vec::new(),
            kad_addresses: Vec::new(),
            kad_puts: Vec::new(),
            kad_gets: Vec::new(),
            kad_store: HashMap::new(),
            circuits: Vec::new(),
            member_peers: HashSet::new(),
            disconnected: Vec::new(),
            cached: Vec::new(),
            finished: Vec::new(),
            external: Vec::new(),
            exit_client: Vec::new(),
            exit_served: Vec::new(),
            dns_served: Vec::new(),
            client_dns: Vec::new(),
            saved_views: Vec::new(),
            answered: Vec::new(),
        });
        let address = self.nodes[index].address();
        self.nodes[index].core.handle_new_listen_addr(address);
        index
    }

    pub fn index_of(&self, peer: &PeerId) -> Option<usize> {
        self.nodes.iter().position(|n| n.peer == *peer)
    }

    fn index_at(&self, address: &Multiaddr) -> Option<usize> {
        let ip = node::control::addr::multiaddr_ip(address)?;
        self.nodes.iter().position(|n| n.ip == ip)
    }

    pub fn is_connected(&self, a: usize, b: usize) -> bool {
        self.connections.contains_key(&pair(a, b))
    }

    /// Opens a connection from `a` (the dialler) to `b`, if the network lets it.
    pub fn connect(&mut self, a: usize, b: usize) {
        if a == b || self.is_connected(a, b) || self.cut.contains(&pair(a, b)) {
            return;
        }
        let id = ConnectionId::new_unchecked(self.next_connection);
        self.next_connection += 1;
        self.connections.insert(pair(a, b), id);
        let (peer_a, peer_b) = (self.nodes[a].peer, self.nodes[b].peer);
        let (address_a, address_b) = (self.nodes[a].address(), self.nodes[b].address());
        let time = self.time;
        self.nodes[a].core.handle_connection_established(Connection { peer: peer_b, id, remote: address_b.clone(), dialer: true, relayed: false, local: None }, time);
        self.nodes[b].core.handle_connection_established(Connection { peer: peer_a, id, remote: address_a, dialer: false, relayed: false, local: Some(address_b.clone()) }, time);
    }

    pub fn disconnect(&mut self, a: usize, b: usize) {
        if let Some(id) = self.connections.remove(&pair(a, b)) {
            let (peer_a, peer_b) = (self.nodes[a].peer, self.nodes[b].peer);
            self.nodes[a].core.handle_connection_closed(peer_b, id);
            self.nodes[b].core.handle_connection_closed(peer_a, id);
        }
    }

    /// Cuts every link between the two groups (and closes their connections).
    pub fn partition(&mut self, left: &[usize], right: &[usize]) {
        for &a in left {
            for &b in right {
                self.cut.insert(pair(a, b));
                self.disconnect(a, b);
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// The network loses requests from `from` to `to` that `which` picks.
    pub fn drop_requests(&mut self, from: usize, to: usize, which: fn(&Request) -> bool) {
        self.drops.push((from, to, which));
    }

    pub fn stop_dropping(&mut self) {
        self.drops.clear();
    }

    /// Carries out every action and delivers every message until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for index in 0..self.nodes.len() {
                while let Some(action) = self.nodes[index].core.poll_action() {
                    moved = true;
                    self.carry_out(index, action);
                }
            }
            if let Some(message) = self.queue.pop_front() {
                moved = true;
                self.deliver(message);
            }
            if !moved {
                return;
            }
        }
        panic!("the simulation did not settle");
    }

    /// Runs the network for `duration` of virtual time, waking each core at its deadlines.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.time.now + duration;
        self.settle();
        loop {
            let next = self.nodes.iter().filter_map(|n| n.core.poll_timeout()).min();
            let Some(next) = next.filter(|at| *at <= end) else { break };
            let next = next.max(self.time.now);
            self.time = self.time.advanced(next - self.time.now);
            let time = self.time;
            for node in &mut self.nodes {
                if node.core.poll_timeout().is_some_and(|at| at <= time.now) {
                    node.core.handle_timeout(time);
                }
            }
            self.settle();
        }
        self.time = self.time.advanced(end - self.time.now);
        self.settle();
    }

    fn carry_out(&mut self, index: usize, action: Action) {
        let now = self.time.now;
        match action {
            Action::Send { peer, request } => {
                self.nodes[index].sent.push((now, peer, request.clone()));
                if let Some(to) = self.index_of(&peer)
                    && self.is_connected(index, to)
                    && !self.drops.iter().any(|(from, dest, which)| *from == index && *dest == to && which(&request))
                {
                    self.queue.push_back(Message::Request { from: index, to, request });
                }
            }
            Action::Dial(dial) => {
                self.nodes[index].dials.push((now, dial.clone()));
                if self.auto_dial {
                    let target = match dial.peer {
                        Some(peer) => self.index_of(&peer),
                        None => dial.addresses.first().and_then(|a| self.index_at(a)),
                    };
                    if let Some(to) = target {
                        self.connect(index, to);
                    }
                }
            }
            Action::KadAddAddress { peer, address } => self.nodes[index].kad_addresses.push((peer, address)),
            Action::KadPut { .. } if self.eclipse => self.nodes[index].kad_puts.push(now),
            Action::KadGet { key } if self.eclipse => {
                self.nodes[index].kad_gets.push((now, key.clone()));
                let time = self.time;
                self.nodes[index].core.handle_found_record(&key, &[0xa5; 300], time);
            }
            Action::KadPut { key, value, .. } => {
                self.nodes[index].kad_puts.push(now);
                self.nodes[index].kad_store.insert(key.clone(), value.clone());
                let time = self.time;
                for other in 0..self.nodes.len() {
                    if other != index && self.is_connected(index, other) {
                        let node = &mut self.nodes[other];
                        let held = node.kad_store.get(&key).and_then(|v| node.core.record_seq(&key, v));
                        if node.core.handle_put_record(&key, &value, held, time).is_some() {
                            node.kad_store.insert(key.clone(), value.clone());
                        }
                    }
                }
            }
            // A lookup walks the connected peers' stores.
            Action::KadGet { key } => {
                self.nodes[index].kad_gets.push((now, key.clone()));
                let found: Option<Vec<u8>> =
                    (0..self.nodes.len()).filter(|other| self.is_connected(index, *other)).find_map(|other| self.nodes[other].kad_store.get(&key).cloned());
                if let Some(value) = found {
                    let time = self.time;
                    self.nodes[index].core.handle_found_record(&key, &value, time);
                }
            }
            Action::ListenOnCircuit(address) => self.nodes[index].circuits.push(address),
            Action::AddExternalAddress(address) => self.nodes[index].external.push(address),
            Action::MemberPeers(members) => self.nodes[index].member_peers = members,
            Action::ExitClient(choice) => self.nodes[index].exit_client.push(choice),
            Action::ExitServe(rules) => self.nodes[index].exit_served.push(rules),
            Action::DnsServe(config) => self.nodes[index].dns_served.push(config),
            Action::ClientDns(target) => self.nodes[index].client_dns.push(target),
            Action::Disconnect(peer) => {
                self.nodes[index].disconnected.push(peer);
                if let Some(other) = self.index_of(&peer) {
                    self.disconnect(index, other);
                }
            }
            // (One connection per pair here, so a core never sees a duplicate to close.)
            Action::CloseConnection(id) => {
                if let Some((a, b)) = self.connections.iter().find(|(_, c)| **c == id).map(|(pair, _)| *pair) {
                    self.disconnect(a, b);
                }
            }
            Action::Data(command) => self.nodes[index].data.push(command),
            Action::CachePeers(addresses) => self.nodes[index].cached.push(addresses),
            Action::SaveView(view) => self.nodes[index].saved_views.push(view),
            Action::Finished { reply, result } => self.nodes[index].finished.push((reply, result)),
        }
    }

    fn deliver(&mut self, message: Message) {
        let time = self.time;
        match message {
            Message::Request { from, to, request } => {
                if !self.is_connected(from, to) {
                    return;
                }
                let peer = self.nodes[from].peer;
                let response = self.nodes[to].core.handle_request(peer, request, time);
                self.nodes[to].answered.push((time.now, peer, response.clone()));
                self.queue.push_back(Message::Response { from: to, to: from, response });
            }
            Message::Response { from, to, response } => {
                if self.is_connected(from, to) {
                    let peer = self.nodes[from].peer;
                    self.nodes[to].core.handle_response(peer, response, time);
                }
            }
        }
    }

    /// A request from a peer that is no core here (a joiner, an outsider, a requester) to
    /// node `to`, over a connection it opens from `ip`; the answer.
    pub fn ask_as(&mut self, peer: PeerId, ip: Ipv4Addr, to: usize, request: Request) -> Response {
        let id = ConnectionId::new_unchecked(self.next_connection);
        self.next_connection += 1;
        let remote = node::control::addr::socket_multiaddr(SocketAddr::from((ip, DATA_PORT)), false);
        let time = self.time;
        let local = Some(self.nodes[to].address());
        self.nodes[to].core.handle_connection_established(Connection { peer, id, remote, dialer: false, relayed: false, local }, time);
        let response = self.nodes[to].core.handle_request(peer, request, time);
        self.settle();
        response
    }

    /// Every node's libp2p identity rotates at once (a new identity epoch): every connection
    /// goes with the old swarms; each core is told its new peer id.
    pub fn rotate_identities(&mut self, salt: u8) {
        self.connections.clear();
        let time = self.time;
        for (index, node) in self.nodes.iter_mut().enumerate() {
            node.peer = peer_of((index as u8 + 1).wrapping_add(salt));
            node.core.handle_identity_changed(node.peer, time);
            let address = node.address();
            node.core.handle_new_listen_addr(address);
        }
    }

    /// The distinct logs (by heads) the nodes hold.
    pub fn distinct_heads(&self) -> BTreeSet<Vec<membership::EntryHash>> {
        self.nodes.iter().map(|n| n.log().heads().iter().copied().collect()).collect()
    }

    pub fn elapsed(&self) -> Duration {
        self.time.now - self.start
    }
}
