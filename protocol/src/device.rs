//! The multi-peer data plane of one node: the sans-IO equivalent of a WireGuard interface.
//!
//! It owns the node's static key and one [`Tunnel`] per peer, and does what no single tunnel
//! can: routes outgoing packets by destination (cryptokey routing), dispatches datagrams by
//! receiver index, answers identity-hiding initiations (MACs, cookies under load, per-source
//! rate limits, the caller's membership check), checks inner source addresses of decrypted
//! packets (DP-16), and tracks each peer's endpoint from authenticated packets (roaming,
//! DP-14). Anything unauthenticated gets silence: no reply, no state (DP-07, DP-12).

use crate::cookie::MacChecker;
use crate::handshake::ReceivedInitiation;
use crate::keys::{PresharedKey, StaticPublic, StaticSecret};
use crate::ratelimit::RateLimiter;
use crate::time::WallClock;
use crate::tunnel::{Decapsulated, Encapsulated, IndexChange, Tunnel, TunnelConfig, TunnelStats};
use crate::wire::{self, COOKIE_REPLY_LEN, Message};
use crate::{Error, IpPrefix, ReceiverIndex};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Handshake messages per second above which the device is "under load" and demands cookies.
/// A personal network sees a handful a minute; 64/s leaves room for a whole fleet restarting.
pub const DEFAULT_UNDER_LOAD_THRESHOLD: u32 = 64;
/// Cookie replies waiting to be sent; beyond this, under a flood, new ones are dropped.
pub const MAX_QUEUED_COOKIE_REPLIES: usize = 256;

#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub static_secret: StaticSecret,
    pub psk: PresharedKey,
    pub under_load_threshold: u32,
    /// The overlay MTU (see [`crate::wire::DEFAULT_MTU`]).
    pub mtu: usize,
    pub clock: WallClock,
}

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub static_public: StaticPublic,
    /// Inner addresses this peer may send from and that we route to it.
    pub allowed_ips: Vec<IpPrefix>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<Duration>,
}

/// A datagram to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub len: usize,
}

/// What [`Device::decapsulate`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// An IP packet of `len` bytes from `peer` is at the start of the output buffer.
    Packet { peer: StaticPublic, len: usize },
    /// Consumed (handshake, keepalive, cookie); check `poll_transmit`.
    Nothing,
}

/// Counters of what the device refused, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    pub rx_malformed: u64,
    pub rx_invalid_mac1: u64,
    pub cookie_replies_sent: u64,
    pub rx_rate_limited: u64,
    pub rx_handshake_failed: u64,
    pub rx_unknown_peer: u64,
    pub rx_unauthorized: u64,
    pub rx_unknown_index: u64,
    pub rx_source_not_allowed: u64,
}

/// Decides whether a static key may complete a handshake now (membership plugs in here).
pub type Authorizer = Box<dyn Fn(&StaticPublic) -> bool + Send + Sync>;

pub struct Device {
    static_secret: StaticSecret,
    static_public: StaticPublic,
    psk: PresharedKey,
    clock: WallClock,
    mtu: usize,
    macs: MacChecker,
    limiter: RateLimiter,
    load: LoadMeter,
    under_load_threshold: u32,
    authorize: Authorizer,
    rng: ChaCha20Rng,
    peers: BTreeMap<StaticPublic, Peer>,
    indices: HashMap<ReceiverIndex, StaticPublic>,
    wants_transmit: BTreeSet<StaticPublic>,
    cookie_replies: VecDeque<(SocketAddr, [u8; COOKIE_REPLY_LEN])>,
    stats: DeviceStats,
}

struct Peer {
    tunnel: Tunnel,
    allowed_ips: Vec<IpPrefix>,
    endpoint: Option<SocketAddr>,
}

/// Handshake messages counted per one-second window; "under load" lasts into the next window.
#[derive(Debug, Default)]
struct LoadMeter {
    window_start: Option<Instant>,
    count: u32,
    previous: u32,
}

impl Device {
    pub fn new(config: DeviceConfig, seed: [u8; 32]) -> Self {
        let static_public = config.static_secret.public_key();
        Self {
            macs: MacChecker::new(&static_public),
            static_public,
            static_secret: config.static_secret,
            psk: config.psk,
            clock: config.clock,
            mtu: config.mtu,
            limiter: RateLimiter::default(),
            load: LoadMeter::default(),
            under_load_threshold: config.under_load_threshold,
            authorize: Box::new(|_| true),
            rng: ChaCha20Rng::from_seed(seed),
            peers: BTreeMap::new(),
            indices: HashMap::new(),
            wants_transmit: BTreeSet::new(),
            cookie_replies: VecDeque::new(),
            stats: DeviceStats::default(),
        }
    }

    pub fn static_public(&self) -> &StaticPublic {
        &self.static_public
    }

    /// Installs the check every initiator must pass, in addition to being a configured peer.
    pub fn set_authorizer(&mut self, authorize: Authorizer) {
        self.authorize = authorize;
    }

    /// Adds a peer, or updates its routes, endpoint and keepalive if it exists.
    pub fn upsert_peer(&mut self, config: PeerConfig) {
        let key = config.static_public;
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.allowed_ips = config.allowed_ips;
            if config.endpoint.is_some() {
                peer.endpoint = config.endpoint;
            }
            return;
        }
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let tunnel = Tunnel::new(
            TunnelConfig {
                local_static: self.static_secret.clone(),
                peer_static: key,
                psk: self.psk.clone(),
                persistent_keepalive: config.persistent_keepalive,
                mtu: self.mtu,
                clock: self.clock,
            },
            seed,
        );
        self.peers.insert(key, Peer { tunnel, allowed_ips: config.allowed_ips, endpoint: config.endpoint });
        self.refresh_indices(&key);
    }

    /// Removes a peer and every session with it at once (revocation, DP-08): its indices stop
    /// resolving, so its packets and handshakes meet silence from this call on.
    pub fn remove_peer(&mut self, key: &StaticPublic) -> bool {
        let Some(mut peer) = self.peers.remove(key) else { return false };
        peer.tunnel.erase_keys();
        for index in peer.tunnel.local_indices().collect::<Vec<_>>() {
            self.indices.remove(&index);
        }
        for change in peer.tunnel.drain_index_changes() {
            if let IndexChange::Retired(index) | IndexChange::Added(index) = change
                && self.indices.get(&index) == Some(key)
            {
                self.indices.remove(&index);
            }
        }
        self.wants_transmit.remove(key);
        true
    }

    pub fn peers(&self) -> impl Iterator<Item = &StaticPublic> {
        self.peers.keys()
    }

    pub fn peer_endpoint(&self, key: &StaticPublic) -> Option<SocketAddr> {
        self.peers.get(key).and_then(|p| p.endpoint)
    }

    pub fn set_peer_endpoint(&mut self, key: &StaticPublic, endpoint: SocketAddr) {
        if let Some(peer) = self.peers.get_mut(key) {
            peer.endpoint = Some(endpoint);
        }
    }

    pub fn peer_stats(&self, key: &StaticPublic) -> Option<TunnelStats> {
        self.peers.get(key).map(|p| p.tunnel.stats())
    }

    pub fn peer_has_session(&self, key: &StaticPublic, now: Instant) -> bool {
        self.peers.get(key).is_some_and(|p| p.tunnel.has_session(now))
    }

    pub fn peer_last_handshake(&self, key: &StaticPublic) -> Option<Instant> {
        self.peers.get(key).and_then(|p| p.tunnel.last_handshake())
    }

    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// Direct access to a peer's tunnel, for white-box tests.
    #[cfg(any(test, feature = "testing"))]
    pub fn tunnel_mut(&mut self, key: &StaticPublic) -> Option<&mut Tunnel> {
        self.peers.get_mut(key).map(|p| &mut p.tunnel)
    }

    /// Source addresses the rate limiter currently tracks (DP-12: floods leave no state).
    pub fn rate_limiter_sources(&self) -> usize {
        self.limiter.tracked_sources()
    }

    /// Routes an IP packet from the local stack to its peer and encrypts it into `out`.
    /// `Ok(None)`: queued behind a handshake (see `poll_transmit`).
    pub fn encapsulate(&mut self, packet: &[u8], out: &mut [u8], now: Instant) -> Result<Option<Transmit>, Error> {
        let destination = destination_of(packet).ok_or(Error::InvalidInnerPacket)?;
        let key = self.route(destination).ok_or(Error::NoRoute)?;
        let peer = self.peers.get_mut(&key).ok_or(Error::NoRoute)?;
        let endpoint = peer.endpoint.ok_or(Error::NoEndpoint)?;
        let result = peer.tunnel.encapsulate(packet, out, now);
        self.sync_peer(&key, now);
        match result? {
            Encapsulated::Datagram(len) => Ok(Some(Transmit { destination: endpoint, len })),
            Encapsulated::Queued => Ok(None),
        }
    }

    /// Consumes one datagram that arrived from `source`.
    pub fn decapsulate(
        &mut self,
        source: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Result<Received, Error> {
        let message = Message::parse(datagram).inspect_err(|_| self.stats.rx_malformed += 1)?;
        let receiver = match message {
            Message::Initiation(initiation) => return self.receive_initiation(source, &initiation, now),
            Message::Response(response) => {
                if !self.handshake_message_admitted(source, response.bytes, response.sender, now)? {
                    return Ok(Received::Nothing);
                }
                response.receiver
            }
            Message::CookieReply(reply) => reply.receiver,
            Message::Data(data) => data.receiver,
        };
        let Some(key) = self.indices.get(&receiver).copied() else {
            self.stats.rx_unknown_index += 1;
            return Err(Error::UnknownReceiverIndex);
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return Err(Error::UnknownReceiverIndex);
        };
        let result = peer.tunnel.handle_message(message, out, now);
        if let Ok(outcome) = &result
            && outcome.is_authenticated()
        {
            peer.endpoint = Some(source);
        }
        let result = match result {
            Ok(Decapsulated::Packet(len)) => match source_of(&out[..len]) {
                Some(inner) if peer.allowed_ips.iter().any(|p| p.contains(inner)) => {
                    Ok(Received::Packet { peer: key, len })
                }
                _ => {
                    self.stats.rx_source_not_allowed += 1;
                    Err(Error::SourceNotAllowed)
                }
            },
            Ok(_) => Ok(Received::Nothing),
            Err(error) => Err(error),
        };
        self.sync_peer(&key, now);
        result
    }

    /// Runs due timers of every peer.
    pub fn handle_timeout(&mut self, now: Instant) {
        let keys: Vec<StaticPublic> = self.peers.keys().copied().collect();
        for key in keys {
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.tunnel.handle_timeout(now);
            }
            self.sync_peer(&key, now);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.tunnel.poll_timeout()).min()
    }

    /// The next datagram to send, written into `out`.
    pub fn poll_transmit(&mut self, out: &mut [u8], now: Instant) -> Option<Transmit> {
        if let Some((destination, reply)) = self.cookie_replies.pop_front() {
            out.get_mut(..COOKIE_REPLY_LEN)?.copy_from_slice(&reply);
            return Some(Transmit { destination, len: COOKIE_REPLY_LEN });
        }
        while let Some(key) = self.wants_transmit.first().copied() {
            let Some(peer) = self.peers.get_mut(&key) else {
                self.wants_transmit.remove(&key);
                continue;
            };
            match (peer.tunnel.poll_transmit(out, now), peer.endpoint) {
                (Some(len), Some(destination)) => {
                    self.sync_peer(&key, now);
                    return Some(Transmit { destination, len });
                }
                // Nowhere to send it: drop, as a WireGuard peer without an endpoint does.
                (Some(_), None) => continue,
                (None, _) => {
                    self.wants_transmit.remove(&key);
                }
            }
        }
        None
    }

    // ---- handshakes ------------------------------------------------------------------------

    fn receive_initiation(
        &mut self,
        source: SocketAddr,
        initiation: &wire::Initiation<'_>,
        now: Instant,
    ) -> Result<Received, Error> {
        if !self.handshake_message_admitted(source, initiation.bytes, initiation.sender, now)? {
            return Ok(Received::Nothing);
        }
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let received = ReceivedInitiation::read(&self.static_secret, &self.psk, initiation, seed)
            .inspect_err(|_| self.stats.rx_handshake_failed += 1)
            .map_err(|_| Error::HandshakeFailed)?;
        let key = received.initiator;
        let Some(peer) = self.peers.get_mut(&key) else {
            self.stats.rx_unknown_peer += 1;
            return Err(Error::UnknownPeer);
        };
        if !(self.authorize)(&key) {
            self.stats.rx_unauthorized += 1;
            return Err(Error::NotAuthorized);
        }
        let result = peer.tunnel.handle_initiation(received, now);
        if result.is_ok() {
            peer.endpoint = Some(source);
        }
        self.sync_peer(&key, now);
        result.map(|()| Received::Nothing)
    }

    /// The DoS gate for handshake messages: mac1 always; under load, mac2 (else a cookie
    /// reply) and the per-source rate limit. `Ok(false)`: answered with a cookie, stop here.
    fn handshake_message_admitted(
        &mut self,
        source: SocketAddr,
        bytes: &[u8],
        sender: ReceiverIndex,
        now: Instant,
    ) -> Result<bool, Error> {
        if !self.macs.mac1_is_valid(bytes) {
            self.stats.rx_invalid_mac1 += 1;
            return Err(Error::InvalidMac1);
        }
        if self.load.record(now) <= self.under_load_threshold {
            return Ok(true);
        }
        if !self.macs.mac2_is_valid(bytes, source, now) {
            if self.cookie_replies.len() < MAX_QUEUED_COOKIE_REPLIES {
                let (nonce, sealed) = self.macs.make_cookie_reply(bytes, source, now, &mut self.rng);
                let mut reply = [0u8; COOKIE_REPLY_LEN];
                wire::emit_cookie_reply(&mut reply, sender, &nonce, &sealed);
                self.cookie_replies.push_back((source, reply));
                self.stats.cookie_replies_sent += 1;
            }
            return Ok(false);
        }
        if !self.limiter.allow(source.ip(), now) {
            self.stats.rx_rate_limited += 1;
            return Err(Error::RateLimited);
        }
        Ok(true)
    }

    /// After any call into a peer's tunnel: apply its index changes, top up its spare index,
    /// and note whether it has something to send.
    fn sync_peer(&mut self, key: &StaticPublic, now: Instant) {
        self.refresh_indices(key);
        if self.peers.get(key).is_some_and(|peer| peer.tunnel.wants_transmit(now)) {
            self.wants_transmit.insert(*key);
        }
    }

    fn refresh_indices(&mut self, key: &StaticPublic) {
        let Some(peer) = self.peers.get_mut(key) else { return };
        for change in peer.tunnel.drain_index_changes() {
            match change {
                IndexChange::Added(index) => {
                    self.indices.insert(index, *key);
                }
                IndexChange::Retired(index) => {
                    if self.indices.get(&index) == Some(key) {
                        self.indices.remove(&index);
                    }
                }
            }
        }
        if peer.tunnel.wants_index() {
            let index = loop {
                let candidate = ReceiverIndex(self.rng.next_u32());
                if !self.indices.contains_key(&candidate) {
                    break candidate;
                }
            };
            self.indices.insert(index, *key);
            peer.tunnel.supply_index(index);
        }
    }

    /// Longest-prefix match over every peer's allowed IPs. Linear: a personal network has
    /// tens of peers; a trie pays off only far beyond that.
    fn route(&self, destination: IpAddr) -> Option<StaticPublic> {
        self.peers
            .iter()
            .flat_map(|(key, peer)| peer.allowed_ips.iter().map(move |prefix| (prefix, key)))
            .filter(|(prefix, _)| prefix.contains(destination))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, key)| *key)
    }
}

impl LoadMeter {
    /// Counts one handshake message; returns the busier of this window and the last.
    fn record(&mut self, now: Instant) -> u32 {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {}
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(2) => {
                self.previous = self.count;
                self.count = 0;
                self.window_start = Some(now);
            }
            _ => {
                self.previous = 0;
                self.count = 0;
                self.window_start = Some(now);
            }
        }
        self.count = self.count.saturating_add(1);
        self.count.max(self.previous)
    }
}

impl core::fmt::Debug for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("peers", &self.peers.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The destination address of an IPv4 or IPv6 packet.
pub fn destination_of(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => Some(IpAddr::from(*packet.get(16..20)?.first_chunk::<4>()?)),
        6 => Some(IpAddr::from(*packet.get(24..40)?.first_chunk::<16>()?)),
        _ => None,
    }
}

/// The source address of an IPv4 or IPv6 packet.
pub fn source_of(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => Some(IpAddr::from(*packet.get(12..16)?.first_chunk::<4>()?)),
        6 => Some(IpAddr::from(*packet.get(8..24)?.first_chunk::<16>()?)),
        _ => None,
    }
}
