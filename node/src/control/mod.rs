//! The sans-IO control core: everything a node decides on the control plane, with no swarm, no
//! sockets, no tokio and no clock reads (quinn's and Firezone connlib's shape).
//!
//! Inputs are `handle_*(…, time)` calls — connection news, control requests and
//! responses from peers, DHT records, the data plane's view, local admin requests, timeouts —
//! and outputs are [`Action`]s taken with [`Core::poll_action`] plus the deadline of
//! [`Core::poll_timeout`]. The driver in [`crate::p2p`] maps libp2p's `SwarmEvent`s to inputs
//! and actions to the swarm; the app ([`crate::app`]) hands data-plane actions to the packet
//! thread. Several cores run in one process on virtual time in `node/tests/control_core.rs`.
//!
//! One idea per file: [`members`] (log → data-plane peers, revocation), [`sync`] (pull, push,
//! anti-entropy), [`admission`] (bindings, invite proofs, rate limits), [`discovery`]
//! (presence, redials, peer cache), [`signalling`] (path candidates, relay choice), [`admin`]
//! (invite, add, revoke, local views), [`timers`] (the one timer table); [`messages`] and
//! [`presence`] are the wire formats.

pub mod addr;
pub mod admin;
pub mod admission;
pub mod book;
pub mod discovery;
pub mod exit;
pub mod guests;
pub mod members;
pub mod mesh;
pub mod messages;
pub mod presence;
pub mod reach;
pub mod signalling;
pub mod sync;
pub mod timers;

use crate::dataplane::commands::{DataCommand, DataView};
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use membership::NetworkId;
use minicbor::bytes::ByteArray;
use messages::{Binding, Request, Response};
use protocol::{DeviceId, DeviceSigningKey};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use timers::{Timer, Timers};

pub use admin::{NewDevice, ReplyId};
pub use reach::{Dial, DialWhen, Reach};
pub use exit::{DnsReply, ExitChoice};

/// What a revoked device answers to anything that needs the network.
pub const REVOKED: &str = "this device has been revoked from the network; its tunnel is stopped";

/// The two clocks, read once by the shell per input: monotonic for timers, wall time for the
/// log (expiry, entry times) and presence records.
#[derive(Debug, Clone, Copy)]
pub struct Time {
    pub now: Instant,
    /// Since the Unix epoch.
    pub unix: Duration,
}

impl Time {
    pub fn unix_secs(&self) -> u64 {
        self.unix.as_secs()
    }

    /// The same instant `by` later on both clocks (virtual time in tests).
    pub fn advanced(self, by: Duration) -> Self {
        Time { now: self.now + by, unix: self.unix + by }
    }
}

/// Who this node is and what it does.
#[derive(Debug)]
pub struct Config {
    pub signing_key: DeviceSigningKey,
    pub peer_id: PeerId,
    /// Where the data plane listens (UDP); peers learn it from our Hello.
    pub data_port: u16,
    /// Relay duty (`pal up --cloudpal`).
    pub cloudpal: bool,
    /// Addresses to dial while no member is connected: the invite's and the peer cache's.
    pub bootstrap: Vec<Multiaddr>,
    /// The exit this device chose before (persisted by the shell).
    pub exit: Option<ExitChoice>,
    /// CloudPal: the egress pool (`--egress-pool`) that rotation draws from.
    pub egress_pool: Vec<membership::IpNet>,
    /// `pal dns on` was given before (persisted by the shell).
    pub dns_on: bool,
    /// CloudPal: where the TCP/TLS fallback listens, and its certificate's SHA-256; announced
    /// beside every plain TCP listen address ([`crate::relaylink`]).
    pub fallback: Option<(SocketAddr, [u8; 32])>,
}

/// What the core asks of the shell.
#[derive(Debug)]
pub enum Action {
    /// A control request to a peer; its response comes back through [`Core::handle_response`].
    Send { peer: PeerId, request: Request },
    Dial(Dial),
    /// A proven member's address for the DHT's routing table.
    KadAddAddress { peer: PeerId, address: Multiaddr },
    /// Publish a record under `key`.
    KadPut { key: Vec<u8>, value: Vec<u8>, ttl: Duration },
    /// Look `key` up; what is found comes back through [`Core::handle_found_record`].
    KadGet { key: Vec<u8> },
    /// Listen for control connections through CloudPal's relay circuit.
    ListenOnCircuit(Multiaddr),
    /// An address others may dial us at (CloudPal's own, handed out by its relay).
    AddExternalAddress(Multiaddr),
    /// The peers proven to be members: the relay's gate admits only these.
    MemberPeers(HashSet<PeerId>),
    /// Close every connection to `peer` and forget it in the DHT (a revoked device).
    Disconnect(PeerId),
    /// Close this one connection (a second one to a peer that has a better one).
    CloseConnection(ConnectionId),
    /// For the data plane.
    Data(DataCommand),
    /// Put this device's full tunnel through the exit in place (or take it out: `None`).
    ExitClient(Option<ExitChoice>),
    /// CloudPal: enforce these exit rules now.
    ExitServe(crate::exit::ExitRules),
    /// CloudPal: the resolver's settings changed.
    DnsServe(crate::dns::server::DnsConfig),
    /// Point the system resolver at this overlay address (with the old resolvers after it
    /// when `true`), or put it back (`None`).
    ClientDns(Option<(std::net::Ipv4Addr, bool)>),
    /// Addresses for the peer cache file.
    CachePeers(Vec<String>),
    /// A guest: its view changed; keep it on disk.
    SaveView(Vec<Vec<u8>>),
    /// A local request answered later (`pal device add`).
    Finished { reply: ReplyId, result: Result<crate::control_api::AddReply, String> },
}

/// How long a second connection to a peer stays open before it is closed.
pub const DUPLICATE_GRACE: Duration = Duration::from_secs(10);

/// What the core keeps of one control connection.
#[derive(Debug, Clone, Copy)]
struct Link {
    peer: PeerId,
    relayed: bool,
    /// Over the TCP/TLS fallback: kept only while no plain connection is there.
    fallback: bool,
    /// We dialled it.
    ours: bool,
    order: u64,
    /// Our address on it, where the shell knows it (the accepting side's).
    local_ip: Option<IpAddr>,
}

/// A new control connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: PeerId,
    pub id: ConnectionId,
    /// The remote's address.
    pub remote: Multiaddr,
    /// We dialled (we greet first).
    pub dialer: bool,
    /// Through CloudPal's relay circuit.
    pub relayed: bool,
    /// Our own address on it, where known (libp2p gives it for accepted connections only).
    pub local: Option<Multiaddr>,
}

pub struct Core {
    signing_key: DeviceSigningKey,
    me: DeviceId,
    peer_id: PeerId,
    network: NetworkId,
    binding: Binding,
    data_port: u16,
    cloudpal: bool,
    /// Where CloudPal's TCP/TLS fallback listens, and its certificate's hash.
    fallback: Option<(SocketAddr, [u8; 32])>,
    /// The log (a member) or the view (a guest).
    book: book::Book,
    rng: ChaCha20Rng,
    timers: Timers,
    actions: VecDeque<Action>,

    // Links: what the swarm told us of connections.
    /// Open connections per peer.
    connections: HashMap<PeerId, usize>,
    /// Every control connection: whose, and how good (for choosing one per peer).
    control_links: HashMap<ConnectionId, Link>,
    /// Links numbered in the order they came (the older of two equal ones stays).
    links_made: u64,
    /// Second connections to a peer, and when they are closed: after a grace that lets the
    /// requests already on them finish.
    duplicates: BTreeMap<ConnectionId, Instant>,
    connection_ips: HashMap<PeerId, IpAddr>,

    // Members.
    /// What a redial's time rests on (who is here, peer ids, connections, dials) changes only
    /// where `redial_due` is forgotten: [`Core::reach_mut`], [`Core::reach_entry`],
    /// [`Core::reach_remove`] and a few loops that forget it themselves.
    reach: BTreeMap<DeviceId, Reach>,
    /// When the next member redial is due, as last worked out; `None` once anything it rests
    /// on (a member's reach, whom we keep, our membership) may have changed. A CloudPal keeps
    /// every member, and walking a thousand of them at every input was a tenth of a 1,000-device
    /// simulation's partition (issue #17).
    redial_due: std::cell::Cell<Option<Option<Instant>>>,
    /// The members we keep a control connection to, past a full mesh ([`mesh`]), and the
    /// ring that says whom every member keeps.
    wanted: Option<BTreeSet<DeviceId>>,
    mesh: Option<mesh::Mesh>,
    by_peer: HashMap<PeerId, DeviceId>,
    said_revoked: bool,
    /// A guest: the log summary each member last showed, when we asked it for our view.
    view_summary: HashMap<PeerId, Vec<membership::EntryHash>>,

    // Admission.
    /// Members that told us we are revoked and were asked for the log (once each).
    revocation_checks: HashSet<PeerId>,
    /// Invite proofs checked per source address (INV-03).
    invite_attempts: admission::InviteLimiter,
    /// When we last asked every member for the log because a joiner showed an invite we did
    /// not know (it may be newer than our log).
    invite_pull_at: Option<std::time::Instant>,

    // Discovery.
    listen_addrs: BTreeSet<Multiaddr>,
    /// Dials asked for before the swarm listened anywhere, made once it does: a TCP dial made
    /// before then leaves from a random port instead of the listening one (libp2p reuses the
    /// listener's port only once it knows it), and a connection from a random port is neither
    /// what the peer can dial back nor what the exit's kill switch lets out.
    held_dials: Vec<Dial>,
    bootstrap: Vec<Multiaddr>,
    /// Peers other members told us about, not yet proven or connected: redialled.
    candidates: BTreeMap<PeerId, BTreeSet<Multiaddr>>,
    /// The newest presence record acted on per member (its sequence number).
    presence_seq: HashMap<DeviceId, u64>,
    /// What the peer cache holds, to write it only on change.
    cached_peers: Vec<(PeerId, Multiaddr)>,
    /// Whether a member's peer id or addresses may have changed since the cache was compared
    /// (comparing all of them at every timeout was a fifth of a 1,000-device simulation).
    peer_cache_stale: bool,

    // Signalling.
    /// The member doing relay duty for us, and its data address.
    relay: Option<(DeviceId, SocketAddr)>,
    /// Whether a circuit listener at the relay is asked for (cleared when it is refused or
    /// lost, so that it is asked again).
    relay_listen: bool,
    /// Data-plane candidates each member announced for itself, and those others reported.
    announced: BTreeMap<DeviceId, Vec<SocketAddr>>,
    /// The digest of each connected member's last path answer ([`messages::paths_digest`]).
    paths_heard: BTreeMap<DeviceId, ByteArray<16>>,
    reported: BTreeMap<DeviceId, BTreeSet<SocketAddr>>,
    /// The data plane's latest view (paths, reflexive addresses).
    view: DataView,
    /// The hop keepalive interval the data plane was told (behind a NAT only).
    relay_keepalive: Option<Duration>,
    /// CloudPal: the relay rate last given to the data plane (`Some(None)`: no cap).
    relay_rate: Option<Option<u64>>,

    // Admin.
    deliveries: HashMap<PeerId, admin::Delivery>,
    /// Revoked devices' peers and when their connections are closed.
    cut_off: BTreeMap<PeerId, Instant>,
    /// Connected peers that have not proven membership yet, and when they are disconnected.
    unproven: BTreeMap<PeerId, Instant>,
    /// The latest time an input carried (for deadlines set outside a timed input).
    last_now: Instant,

    // The personal VPN exit.
    exit: exit::ExitSide,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("me", &self.me).field("members", &self.by_peer.len()).finish_non_exhaustive()
    }
}

impl Core {
    /// A core for the device whose keys are in `config`, over its log in `store` (a guest:
    /// its view); `rng` is seeded by the caller (OS randomness in the app, a fixed seed in
    /// tests).
    pub fn new(config: Config, book: impl Into<book::Book>, rng: ChaCha20Rng, time: Time) -> Result<Self, String> {
        let book = book.into();
        let me = config.signing_key.public_key().device_id();
        match book.state().devices.get(&me) {
            Some(device) if device.status == membership::DeviceStatus::Revoked => {
                return Err("this device has been revoked from its network; to come back, join with a new invite in a fresh --state directory".into());
            }
            Some(_) => {}
            None => return Err("this device is not a member of the network in its state directory".into()),
        }
        let network = book.network();
        let binding = admission::sign_binding(&config.signing_key, &network, &config.peer_id);
        let mut core = Core {
            signing_key: config.signing_key,
            me,
            peer_id: config.peer_id,
            network,
            binding,
            data_port: config.data_port,
            cloudpal: config.cloudpal,
            fallback: config.fallback,
            book,
            rng,
            timers: Timers::new(time.now),
            actions: VecDeque::new(),
            connections: HashMap::new(),
            control_links: HashMap::new(),
            links_made: 0,
            duplicates: BTreeMap::new(),
            connection_ips: HashMap::new(),
            reach: BTreeMap::new(),
            redial_due: std::cell::Cell::new(None),
            wanted: None,
            mesh: None,
            by_peer: HashMap::new(),
            said_revoked: false,
            view_summary: HashMap::new(),
            revocation_checks: HashSet::new(),
            invite_attempts: admission::invite_limiter(),
            invite_pull_at: None,
            listen_addrs: BTreeSet::new(),
            held_dials: Vec::new(),
            bootstrap: config.bootstrap,
            candidates: BTreeMap::new(),
            presence_seq: HashMap::new(),
            cached_peers: Vec::new(),
            peer_cache_stale: true,
            relay: None,
            relay_listen: false,
            announced: BTreeMap::new(),
            paths_heard: BTreeMap::new(),
            reported: BTreeMap::new(),
            view: DataView::default(),
            relay_keepalive: None,
            relay_rate: None,
            deliveries: HashMap::new(),
            cut_off: BTreeMap::new(),
            unproven: BTreeMap::new(),
            last_now: time.now,
            exit: exit::ExitSide { choice: config.exit, pool: config.egress_pool, session_wanted: config.exit.map(|_| true), dns_on: config.dns_on, ..Default::default() },
        };
        core.apply_membership();
        for address in core.bootstrap.clone() {
            core.push(Action::Dial(Dial { peer: None, addresses: vec![address], when: DialWhen::Idle }));
        }
        Ok(core)
    }

    /// The next thing for the shell to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front();
        if action.is_none() && self.actions.capacity() > 64 {
            // A membership change queues a command per member; the queue's room for them is
            // not kept once they are taken (a thousand actions of a few hundred bytes each).
            self.actions.shrink_to(16);
        }
        action
    }

    /// When [`Core::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.next(),
            self.next_redial(),
            self.next_delivery_expiry(),
            self.next_cut_off(),
            self.unproven.values().min().copied(),
            self.duplicates.values().min().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs whatever is due at `time`.
    pub fn handle_timeout(&mut self, time: Time) {
        self.last_now = time.now;
        self.cut_off_revoked(time.now);
        self.cut_off_unproven(time.now);
        self.close_duplicates(time.now);
        let idle = !self.timers.is_busy(time.now);
        for timer in self.timers.take_due(time.now) {
            if self.revoked() {
                continue; // cut off: nothing to find, nobody to greet
            }
            match timer {
                Timer::Paths => self.exchange_paths(idle),
                Timer::Announce => self.anti_entropy(idle),
                Timer::Presence => self.publish_presence(time),
                Timer::Lookup => self.look_up_absent_members(time),
                Timer::CandidateDial => self.redial_candidates(),
            }
        }
        if self.revoked() {
            return;
        }
        self.expire_deliveries(time.now);
        self.redial_members(time.now);
        self.update_peer_cache();
    }

    // ---- the swarm's news ------------------------------------------------------------------

    pub fn handle_new_listen_addr(&mut self, address: Multiaddr) {
        // libp2p listening on `[::]` reports the overlay interface's address too: the control
        // plane inside the tunnel it sets up would carry its own keys' traffic in circles.
        if self.in_overlay(&address) {
            return;
        }
        // CloudPal's public addresses are its external ones: the relay hands them to the
        // members that reserve a circuit through it.
        if self.cloudpal && self.dialable(&address) {
            self.push(Action::AddExternalAddress(address.clone()));
        }
        if let Some(sibling) = self.fallback_sibling(&address) {
            self.handle_new_listen_addr(sibling);
        }
        if self.listen_addrs.insert(address) {
            for dial in std::mem::take(&mut self.held_dials) {
                self.push(Action::Dial(dial));
            }
            // A new address may be a new network, where the absent may be reachable again.
            self.timers.news(self.last_now, "a new listen address");
            self.redial_due.set(None);
            for reach in self.reach.values_mut() {
                reach.redials = 0;
            }
        }
    }

    /// One of our addresses went (the interface lost it: a new WiFi, the cable out). The direct
    /// connections that may have used it are dead in all but name — their peer's answers go to
    /// an address we no longer have — so they close now instead of at the request timeout, and
    /// the core redials from the addresses we still have. A connection known to be on another
    /// of our addresses stays.
    pub fn handle_expired_listen_addr(&mut self, address: Multiaddr) {
        if let Some(sibling) = self.fallback_sibling(&address) {
            self.listen_addrs.remove(&sibling);
        }
        if !self.listen_addrs.remove(&address) || !self.dialable(&address) {
            return;
        }
        let Some(gone) = crate::control::addr::multiaddr_ip(&address) else { return };
        let dead: Vec<ConnectionId> = self
            .control_links
            .iter()
            .filter(|(_, link)| !link.relayed && link.local_ip.is_none_or(|ip| ip == gone))
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.push(Action::CloseConnection(id));
        }
        self.timers.news(self.last_now, "a listen address went");
    }

    /// CloudPal's fallback address beside a plain TCP listen address at the data port (where
    /// the fallback listens on that address, or on every address).
    fn fallback_sibling(&self, address: &Multiaddr) -> Option<Multiaddr> {
        let (listen, certhash) = self.fallback?;
        let mut parts = address.iter();
        let ip = match parts.next()? {
            libp2p::multiaddr::Protocol::Ip4(ip) => IpAddr::V4(ip),
            libp2p::multiaddr::Protocol::Ip6(ip) => IpAddr::V6(ip),
            _ => return None,
        };
        let plain = matches!(parts.next(), Some(libp2p::multiaddr::Protocol::Tcp(port)) if port == self.data_port) && parts.next().is_none();
        let covered = listen.ip().is_unspecified() && (listen.is_ipv6() || ip.is_ipv4()) || listen.ip() == ip;
        (plain && covered).then(|| crate::relaylink::multiaddr(SocketAddr::new(ip, listen.port()), &certhash))
    }

    /// Where the relay's TCP/TLS fallback is, if it announced one: for the data plane's stream
    /// when UDP to the relay fails. The address we reach its control plane at comes first.
    pub fn relay_fallback(&self) -> Option<crate::relaylink::Target> {
        let (device, _) = self.relay?;
        let reach = self.reach.get(&device)?;
        let peer = reach.peer_id;
        let used = peer.and_then(|peer| self.connection_ips.get(&peer)).copied();
        let mut targets: Vec<crate::relaylink::Target> = reach.multiaddrs.iter().filter_map(crate::relaylink::target).collect();
        targets.sort_by_key(|t| Some(t.address.ip()) != used);
        targets.into_iter().next()
    }

    /// An address worth giving to members or dialling: not loopback, link-local or unspecified
    /// ([`crate::control::addr::is_dialable`]), and not in this network's overlay.
    pub(super) fn dialable(&self, address: &Multiaddr) -> bool {
        crate::control::addr::is_dialable(address) && !self.in_overlay(address)
    }

    /// Whether `address` is inside the overlay: 100.64.0.0/10 or this network's ULA /48.
    fn in_overlay(&self, address: &Multiaddr) -> bool {
        match crate::control::addr::multiaddr_ip(address) {
            Some(std::net::IpAddr::V4(ip)) => membership::overlay::is_overlay_ipv4(ip),
            Some(std::net::IpAddr::V6(ip)) => self.book.founder().is_some_and(|founder| {
                let prefix = membership::overlay::ula_prefix(&founder).octets();
                ip.octets()[..6] == prefix[..6]
            }),
            None => false,
        }
    }

    pub fn handle_connection_established(&mut self, connection: Connection, time: Time) {
        let peer = connection.peer;
        self.last_now = self.last_now.max(time.now);
        *self.connections.entry(peer).or_default() += 1;
        self.links_made += 1;
        let local_ip = connection.local.as_ref().and_then(crate::control::addr::multiaddr_ip);
        let fallback = crate::relaylink::is_fallback(&connection.remote);
        self.control_links.insert(connection.id, Link { peer, relayed: connection.relayed, fallback, ours: connection.dialer, order: self.links_made, local_ip });
        self.mark_duplicates(peer, time.now);
        self.timers.news(self.last_now, "a connection");
        if self.deliveries.contains_key(&peer) {
            self.deliver_next(peer);
            return;
        }
        if let Some(ip) = crate::control::addr::multiaddr_ip(&connection.remote) {
            self.connection_ips.insert(peer, ip);
        }
        // Outsiders learn nothing: a peer that has not proven membership (or shown a usable
        // invite) by then is disconnected.
        if !self.by_peer.contains_key(&peer) {
            self.unproven.entry(peer).or_insert(time.now + admission::PROVE_WITHIN);
        }
        if connection.dialer {
            let hello = self.hello_request();
            self.push(Action::Send { peer, request: hello });
        }
    }

    pub fn handle_connection_closed(&mut self, peer: PeerId, id: ConnectionId) {
        self.control_links.remove(&id);
        self.duplicates.remove(&id);
        self.timers.news(self.last_now, "a connection closed");
        let remaining = self.connections.get_mut(&peer).map(|count| {
            *count = count.saturating_sub(1);
            *count
        });
        if remaining.unwrap_or(0) == 0 {
            // Nothing per connection outlives the peer's last connection.
            self.connections.remove(&peer);
            self.connection_ips.remove(&peer);
            self.revocation_checks.remove(&peer);
            self.unproven.remove(&peer);
            if let Some(device) = self.by_peer.get(&peer) {
                self.paths_heard.remove(device);
            }
            if let Some(reach) = self.by_peer.get(&peer).copied().and_then(|id| self.reach_mut(&id)) {
                reach.connected = false;
                if self.exit.dns_on {
                    // `dns on` falls back to the system's resolvers while no CloudPal answers.
                    self.apply_exit();
                }
            }
        }
    }

    pub fn handle_ping(&mut self, peer: PeerId, rtt: Duration) {
        // Not through `reach_mut`: no redial rests on the round trip.
        if let Some(reach) = self.by_peer.get(&peer).and_then(|id| self.reach.get_mut(id)) {
            reach.rtt = Some(rtt);
        }
    }

    /// Our libp2p identity rotated (a new identity epoch, [`crate::p2p::keypair`]): the old
    /// swarm and every connection went with it. The members' identities rotated too, so they
    /// are found again by the addresses we knew them at (dialled without a peer id), by the
    /// bootstrap addresses and by their fresh presence records, and prove themselves anew.
    pub fn handle_identity_changed(&mut self, peer_id: PeerId, time: Time) {
        self.last_now = self.last_now.max(time.now);
        self.peer_id = peer_id;
        self.binding = admission::sign_binding(&self.signing_key, &self.network, &peer_id);
        self.connections.clear();
        self.control_links.clear();
        self.duplicates.clear();
        self.connection_ips.clear();
        self.unproven.clear();
        self.revocation_checks.clear();
        self.by_peer.clear();
        self.candidates.clear();
        self.presence_seq.clear();
        self.listen_addrs.clear();
        self.held_dials.clear();
        self.relay_listen = false;
        self.share_members();
        let mut addresses: Vec<Multiaddr> = Vec::new();
        self.peer_cache_stale = true;
        self.redial_due.set(None);
        for reach in self.reach.values_mut() {
            reach.connected = false;
            reach.peer_id = None;
            reach.last_dial = None;
            // Two plain addresses, and the TCP/TLS fallback's where there is one.
            let direct = reach.multiaddrs.iter().filter(|a| !a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit)));
            addresses.extend(direct.enumerate().filter(|(i, a)| *i < 2 || crate::relaylink::is_fallback(a)).map(|(_, a)| a.clone()));
        }
        if self.exit.dns_on {
            self.apply_exit();
        }
        addresses.extend(self.bootstrap.iter().cloned());
        addresses.sort();
        addresses.dedup();
        for address in addresses {
            self.push(Action::Dial(Dial { peer: None, addresses: vec![address], when: DialWhen::Idle }));
        }
        self.timers = Timers::new(time.now);
    }

    /// The circuit listener at the relay was refused or closed.
    pub fn handle_relay_listener_closed(&mut self) {
        self.relay_listen = false;
    }

    /// One connection per peer: when a peer has several (both sides dialled at once, a relayed
    /// one and its hole-punched successor), all but the best are closed after
    /// [`DUPLICATE_GRACE`]. Best is direct over relayed, then the one the side with the lower
    /// peer id dialled — both sides compute the same — then the older. Between two the peer
    /// dialled, the peer alone chooses (only it knows which it made first), so the two sides
    /// never close different ones.
    fn mark_duplicates(&mut self, peer: PeerId, now: Instant) {
        let mut links: Vec<(ConnectionId, Link)> = self.control_links.iter().filter(|(_, link)| link.peer == peer).map(|(id, link)| (*id, *link)).collect();
        if links.len() < 2 {
            return;
        }
        // Whether the side with the lower peer id dialled it.
        let dialed_by_lower = |link: &Link| if link.ours { self.peer_id < peer } else { peer < self.peer_id };
        links.sort_by_key(|(_, link)| (link.relayed, link.fallback, !dialed_by_lower(link), link.order));
        let best = links[0].1;
        for (id, link) in links.into_iter().skip(1) {
            let theirs_to_choose = !link.ours && !best.ours && link.relayed == best.relayed && link.fallback == best.fallback;
            if !theirs_to_choose {
                self.duplicates.entry(id).or_insert(now + DUPLICATE_GRACE);
            }
        }
    }

    fn close_duplicates(&mut self, now: Instant) {
        let due: Vec<ConnectionId> = self.duplicates.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
        for id in due {
            self.duplicates.remove(&id);
            self.push(Action::CloseConnection(id));
        }
    }

    /// The shell's clock at an input that carries no time of its own (so that news it brings
    /// is dated right).
    pub fn note_time(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
    }

    /// The data plane's current view (paths, endpoints, how peers see us).
    pub fn handle_data_view(&mut self, view: DataView) {
        if view.observed != self.view.observed || view.nat != self.view.nat {
            // How others see us changed (a new network, a NAT rebinding, a NAT checked): tell
            // them.
            self.timers.news(self.last_now, "how peers see us changed");
        }
        self.view = view;
        self.update_relay_keepalive();
    }

    /// A control request from `peer`; the answer to send back.
    pub fn handle_request(&mut self, peer: PeerId, request: Request, time: Time) -> Response {
        self.last_now = self.last_now.max(time.now);
        if self.refused_to_guest(&peer, &request) {
            return messages::refused(guests::NOT_FOR_GUESTS);
        }
        match request {
            Request::Hello { binding, data_port, summary, candidates, relay, listen, nat } => self.on_hello(
                peer,
                admission::Hello { binding: &binding, data_port, summary: &summary, candidates: &candidates, relay, listen: &listen, nat: nat.as_ref() },
            ),
            Request::Deliver { .. } => messages::refused("this device already belongs to a network"),
            Request::Paths { candidates, listen, nat, summary, known } => self.serve_paths(peer, &candidates, &listen, nat.as_ref(), summary, known),
            Request::Sync { binding, summary, .. } => self.serve_sync(peer, binding, &summary),
            Request::Enrol { proof, name, signing_key, static_key } => self.enrol(peer, &proof, name, *signing_key, *static_key, time),
            Request::Join { entry } => self.admit_join(&entry, time),
            Request::Announce { summary } => {
                if self.by_peer.contains_key(&peer) {
                    self.compare_summary(peer, &summary);
                }
                Response::Accepted
            }
            Request::ExitSession { renew } => self.serve_exit_session(peer, renew),
            Request::View { binding } => self.serve_view(&peer, &binding),
        }
    }

    /// A peer's answer to one of our requests.
    pub fn handle_response(&mut self, peer: PeerId, response: Response, time: Time) {
        self.last_now = self.last_now.max(time.now);
        match response {
            Response::Hello { binding, data_port, summary, peers, candidates, relay, listen, nat } => {
                let Some(device) = self.verify_binding(&peer, &binding).filter(|d| self.deals_with(d)) else { return };
                self.learn_peer(peer, device, data_port, &listen);
                self.learn_candidates(device, &candidates, relay);
                self.learn_nat(device, nat.as_ref());
                if relay && self.relay.is_some_and(|(relay, _)| relay == device) {
                    self.listen_via_relay(peer, data_port);
                }
                for entry in peers {
                    self.learn_addresses(entry);
                }
                self.pull_if_behind(peer, &summary);
                self.pull_view_if_changed(peer, &summary);
            }
            Response::Paths { peers, summary } => self.paths_answered(peer, peers, summary),
            Response::Entries { batch, more } => self.ingest_batch(peer, batch, more),
            Response::View { entries } => self.view_answered(peer, entries),
            Response::Accepted | Response::Refused { .. } if self.deliveries.contains_key(&peer) => {
                self.delivery_answered(peer, response);
            }
            Response::Template { .. } => {}
            Response::Egress { addresses } => self.egress_answered(peer, addresses),
            Response::Revoked => {
                // A member says we are revoked: see for ourselves in the signed log, once.
                if !self.revoked() && self.revocation_checks.insert(peer) {
                    self.request_sync(peer);
                }
            }
            Response::Refused { reason } => tracing::debug!(reason = %messages::printable(&reason), "a peer refused a request"),
            Response::Accepted => {}
        }
    }

    // ---- what the shell and the local API read -------------------------------------------

    pub fn device_id(&self) -> DeviceId {
        self.me
    }

    pub fn network(&self) -> NetworkId {
        self.network
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The whole log (a member's; a guest holds none).
    pub fn log(&self) -> Option<&membership::Log> {
        self.book.log()
    }

    /// The membership state this node enforces.
    pub fn state(&self) -> &membership::State {
        self.book.state()
    }

    /// A guest's view, to keep on disk.
    pub fn guest_view(&self) -> Option<&[Vec<u8>]> {
        match &self.book {
            book::Book::Guest(book) => Some(book.view()),
            book::Book::Log(_) => None,
        }
    }

    pub fn reach(&self, device: &DeviceId) -> Option<&Reach> {
        self.reach.get(device)
    }

    /// The peers proven to be members, by peer id.
    pub fn member_peers(&self) -> &HashMap<PeerId, DeviceId> {
        &self.by_peer
    }

    /// Whether `peer` has an open control connection.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connections.contains_key(peer)
    }

    /// The member doing relay duty for us.
    pub fn relay(&self) -> Option<(DeviceId, SocketAddr)> {
        self.relay
    }

    fn push(&mut self, action: Action) {
        match action {
            Action::Dial(dial) if self.listen_addrs.is_empty() => {
                if !self.held_dials.contains(&dial) {
                    self.held_dials.push(dial);
                }
            }
            action => self.actions.push_back(action),
        }
    }

    fn command(&mut self, command: DataCommand) {
        self.push(Action::Data(command));
    }
}
