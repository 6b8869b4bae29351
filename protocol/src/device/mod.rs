//! The multi-peer data plane of one node: the sans-IO equivalent of a WireGuard interface.
//!
//! It owns the node's static key and one [`Tunnel`] per peer, and does what no single tunnel
//! can: routes outgoing packets by destination (cryptokey routing), dispatches datagrams by
//! receiver index, answers identity-hiding initiations (MACs, cookies under load, per-source
//! rate limits, the caller's membership check), checks inner source addresses of decrypted
//! packets (DP-16), and tracks each peer's paths from authenticated packets (roaming, DP-14;
//! direct or through the relay, [`crate::paths`]). Anything unauthenticated gets silence: no
//! reply, no state (DP-07, DP-12). On CloudPal it also does relay duty: forwarding envelopes
//! between members ([`crate::relay`]).

mod guest;
mod handshakes;
mod inner;
mod punching;
mod relaying;
use handshakes::LoadMeter;
pub use guest::GuestRules;
pub use inner::{destination_of, source_of};
pub use punching::PunchOpen;
use crate::birthday::{Birthday, PeerNat};
use crate::fallback::RelayHop;
use crate::cookie::MacChecker;
use crate::keys::{PresharedKey, StaticPublic, StaticSecret};
use crate::paths::{PathKind, Paths, Route};
use crate::relay::{self, HopKey, RELAY_HEADER_LEN, ShortId};
use crate::replay::ReplayWindow;
use crate::ratelimit::RateLimiter;
use crate::share::{FairShare, Usage};
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub static_public: StaticPublic,
    /// Inner addresses this peer may send from and that we route to it.
    pub allowed_ips: Vec<IpPrefix>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<Duration>,
    /// A guest: what it may reach through us, and what of ours may reach it.
    pub guest: Option<GuestRules>,
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
    /// Consumed (handshake, keepalive, cookie, path control); check `poll_transmit`.
    Nothing,
    /// Relay duty: an envelope for another member, re-tagged for it, is at the start of the
    /// output buffer; send it as the transmit says.
    Forward(Transmit),
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
    /// A guest's packets to what is not shared with it, and packets to a guest it may not get.
    pub rx_guest_refused: u64,
    pub tx_guest_refused: u64,
    /// Envelopes refused: malformed, bad tag, unknown sender or destination (RL-03).
    pub relay_refused: u64,
    /// Envelopes dropped because their sender was over its relay quota.
    pub relay_over_quota: u64,
    /// Envelopes dropped as replays (a number already seen on their hop).
    pub relay_replayed: u64,
    pub relay_forwarded: u64,
    /// Relay duty: hop keepalives accepted from members.
    pub relay_keepalives: u64,
    /// Birthday punches: attempts started on the hard side (each opens up to 256 sockets),
    /// sprays started on the easy side, and the probes the sprays sent.
    pub punch_opened: u64,
    pub punch_sprays: u64,
    pub punch_probes: u64,
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
    /// Peers by the first 8 bytes of their static key: how a masked destination is found.
    short_ids: HashMap<ShortId, StaticPublic>,
    /// Relay duty: each peer's hourly sender ids (the last, this and the next hour's, for
    /// clocks on either side of the hour), and the hour they were made for.
    relay_ids: HashMap<ShortId, StaticPublic>,
    relay_ids_epoch: Option<u64>,
    /// The number of the next envelope this device seals, on any hop: starts at the wall
    /// clock in microseconds, so a restarted device never reuses a number.
    envelope_counter: u64,
    /// The relay this device may send through (the owner's CloudPal), if any.
    relay: Option<RelayConfig>,
    /// Send a hop keepalive to the relay after this much silence toward it (behind a NAT).
    relay_keepalive: Option<Duration>,
    /// When a datagram last went to the relay's address (relayed, or to it as a peer).
    relay_sent_at: Option<Instant>,
    /// Relay duty (CloudPal): forward envelopes between members.
    relay_server: bool,
    relay_share: FairShare,
    /// Probes and pongs waiting for `poll_transmit`, bounded.
    control: VecDeque<(StaticPublic, Route, Control)>,
    next_probe_id: u64,
    /// How each peer last saw our source address (from its pongs): reflexive candidates.
    observed: BTreeMap<StaticPublic, SocketAddr>,
    probe_targets: Vec<SocketAddr>,
    /// Birthday punching ([`crate::birthday`]): whether we take part, what our NAT does, and
    /// the hard side's attempt waiting for `poll_punch` (peer, its reflexive address).
    birthday_punch: bool,
    nat: punching::NatCheck,
    punch_open: Option<(StaticPublic, SocketAddr)>,
    /// The attempt whose sockets are open: with whom, until when.
    punching: Option<(StaticPublic, Instant)>,
    /// The hop to the relay: UDP, or the TCP/443 fallback's stream ([`crate::fallback`]).
    hop: RelayHop,
    /// The datagram being decapsulated came over the stream.
    rx_over_stream: bool,
    /// The time of the last timer run (whether the relay's session is live, for the hop's
    /// next timer).
    last_hop_now: Instant,
}

struct Peer {
    tunnel: Tunnel,
    allowed_ips: Vec<IpPrefix>,
    guest: Option<GuestRules>,
    paths: Paths,
    /// The MAC key for relay envelopes exchanged with this peer directly.
    hop: HopKey,
    /// Relay duty: envelopes from this peer seen (replays refused).
    relay_seen: ReplayWindow,
    /// Relay duty: this peer's use of the relay's shared rate.
    relay_use: Usage,
    /// A handshake message was dropped for want of any route: it is sent again the moment
    /// one appears instead of after the 5 s retry timer.
    stalled: bool,
    /// What the peer told us of its NAT, and the pair's birthday punch.
    nat: Option<PeerNat>,
    birthday: Birthday,
    /// A go signal from the peer before it told us its NAT: when it came.
    punch_signal: Option<Instant>,
}

#[derive(Debug, Clone)]
struct RelayConfig {
    address: SocketAddr,
    key: StaticPublic,
    hop: HopKey,
    /// Envelopes from the relay seen (replays refused).
    seen: ReplayWindow,
}

#[derive(Debug, Clone, Copy)]
enum Control {
    Probe(u64),
    Pong(u64, Option<SocketAddr>),
    Punch(u64),
    /// A probe to the relay's UDP address that never goes over the stream.
    UdpCheck(u64),
}

/// Whence a datagram came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Relay,
}

/// Probes and pongs queued at most (a probe round for every peer fits).
const MAX_QUEUED_CONTROL: usize = 1024;


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
            short_ids: HashMap::new(),
            relay_ids: HashMap::new(),
            relay_ids_epoch: None,
            envelope_counter: u64::try_from(config.clock.unix_time_at_anchor.as_micros()).unwrap_or(u64::MAX / 2),
            relay: None,
            relay_keepalive: None,
            relay_sent_at: None,
            relay_server: false,
            relay_share: FairShare::default(),
            control: VecDeque::new(),
            next_probe_id: 0,
            observed: BTreeMap::new(),
            probe_targets: Vec::new(),
            birthday_punch: true,
            nat: punching::NatCheck::default(),
            punch_open: None,
            punching: None,
            hop: RelayHop::default(),
            rx_over_stream: false,
            last_hop_now: config.clock.anchor,
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
            peer.guest = config.guest;
            peer.tunnel.set_persistent_keepalive(config.persistent_keepalive);
            if let Some(endpoint) = config.endpoint {
                peer.paths.set_direct(endpoint);
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
        let hop = HopKey::between(&self.static_secret, &key);
        let paths = Paths::with_endpoint(config.endpoint);
        if let Some(epoch) = self.relay_ids_epoch {
            for epoch in epoch.saturating_sub(1)..=epoch + 1 {
                self.relay_ids.entry(hop.id(epoch)).or_insert(key);
            }
        }
        self.peers.insert(key, Peer { tunnel, allowed_ips: config.allowed_ips, guest: config.guest, paths, hop, relay_seen: ReplayWindow::default(), relay_use: Usage::default(), stalled: false, nat: None, birthday: Birthday::default(), punch_signal: None });
        // Two keys sharing a short id could not be told apart on the relay: the second one
        // is simply not reachable through it (2^-64 per pair).
        self.short_ids.entry(ShortId::of(&key)).or_insert(key);
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
        if self.short_ids.get(&ShortId::of(key)) == Some(key) {
            self.short_ids.remove(&ShortId::of(key));
        }
        self.relay_ids.retain(|_, peer| peer != key);
        self.control.retain(|(peer, _, _)| peer != key);
        self.observed.remove(key);
        if self.punch_open.is_some_and(|(peer, _)| peer == *key) {
            self.punch_open = None;
        }
        true
    }

    pub fn peers(&self) -> impl Iterator<Item = &StaticPublic> {
        self.peers.keys()
    }

    /// The peer's direct address (configured, or last heard from).
    pub fn peer_endpoint(&self, key: &StaticPublic) -> Option<SocketAddr> {
        self.peers.get(key).and_then(|p| p.paths.direct())
    }

    pub fn set_peer_endpoint(&mut self, key: &StaticPublic, endpoint: SocketAddr, now: Instant) {
        // An address inside the overlay would send the tunnel through itself.
        if self.route(endpoint.ip()).is_some() {
            return;
        }
        if let Some(peer) = self.peers.get_mut(key) {
            peer.paths.set_direct(endpoint);
        }
        self.unstall(key, now);
    }

    /// Addresses at which the peer might be reached directly (LAN, reflexive, IPv6), from
    /// signalling; they are probed while the peer is active.
    pub fn set_peer_candidates(&mut self, key: &StaticPublic, candidates: &[SocketAddr], now: Instant) {
        // An address inside the overlay would send the tunnel through itself.
        let usable: Vec<SocketAddr> = candidates.iter().copied().filter(|c| self.route(c.ip()).is_none()).collect();
        if let Some(peer) = self.peers.get_mut(key) {
            peer.paths.set_candidates(usable, now);
        }
        self.unstall(key, now);
    }

    /// The path the peer's traffic takes now.
    pub fn peer_path(&self, key: &StaticPublic, now: Instant) -> PathKind {
        let Some(peer) = self.peers.get(key) else { return PathKind::None };
        let kind = peer.paths.kind(now, self.relays_to(key));
        let over_stream = self.hop.over_stream()
            && self.relay.as_ref().is_some_and(|relay| kind == PathKind::Relay || (relay.key == *key && peer.paths.direct() == Some(relay.address)));
        if over_stream && kind != PathKind::None { PathKind::RelayTcp } else { kind }
    }

    /// Sends through the relay at `address` (CloudPal, itself a peer with `key`) whenever no
    /// direct path is trusted; `None` for direct paths only.
    pub fn set_relay(&mut self, relay: Option<(SocketAddr, StaticPublic)>, now: Instant) {
        let previous = self.relay.as_ref().map(|r| (r.address, r.key));
        self.relay = relay.map(|(address, key)| {
            // The same relay again keeps its replay window.
            let seen = self.relay.as_ref().filter(|old| old.key == key).map(|old| old.seen.clone()).unwrap_or_default();
            RelayConfig { address, key, hop: HopKey::between(&self.static_secret, &key), seen }
        });
        // A different relay starts its hop afresh (the stream, if any, is the node's to move).
        if self.relay.as_ref().map(|r| (r.address, r.key)) != previous {
            let stream = self.hop.stream();
            self.hop = RelayHop::default();
            self.hop.set_stream(stream, now);
        }
        self.recheck_nat(now);
        let stalled: Vec<StaticPublic> = self.peers.iter().filter(|(_, p)| p.stalled).map(|(k, _)| *k).collect();
        for key in stalled {
            self.unstall(&key, now);
        }
    }

    /// Resends a handshake that was dropped for want of a route, if there is one now.
    fn unstall(&mut self, key: &StaticPublic, now: Instant) {
        let relays = self.relays_to(key);
        let Some(peer) = self.peers.get_mut(key) else { return };
        if peer.stalled && peer.paths.route(now, relays).is_some() {
            peer.stalled = false;
            peer.tunnel.retry_handshake(now);
            self.sync_peer(key, now);
        }
    }

    /// Starts a handshake with the peer unless a session exists or one is under way.
    pub fn connect(&mut self, key: &StaticPublic, now: Instant) {
        if let Some(peer) = self.peers.get_mut(key) {
            peer.tunnel.connect(now);
        }
        self.sync_peer(key, now);
    }


    /// How peers see this device's source address (from their pongs): its reflexive
    /// addresses, worth telling others as candidates.
    pub fn observed_addresses(&self) -> impl Iterator<Item = (&StaticPublic, &SocketAddr)> {
        self.observed.iter()
    }

    /// Whether the relay can carry traffic to `key` (there is one, and it is not `key`).
    fn relays_to(&self, key: &StaticPublic) -> bool {
        self.relay.as_ref().is_some_and(|relay| relay.key != *key)
    }

    pub fn peer_stats(&self, key: &StaticPublic) -> Option<TunnelStats> {
        self.peers.get(key).map(|p| p.tunnel.stats())
    }

    /// Birthday punch attempts with `key`, in either role.
    pub fn peer_punches(&self, key: &StaticPublic) -> u64 {
        self.peers.get(key).map_or(0, |p| p.birthday.attempts())
    }

    pub fn peer_has_session(&self, key: &StaticPublic, now: Instant) -> bool {
        self.peers.get(key).is_some_and(|p| p.tunnel.has_session(now))
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
        let relays = self.relays_to(&key);
        let peer = self.peers.get_mut(&key).ok_or(Error::NoRoute)?;
        if peer.guest.as_ref().is_some_and(|rules| !rules.outbound_allowed(packet)) {
            self.stats.tx_guest_refused += 1;
            return Err(Error::GuestRefused);
        }
        let Some(route) = peer.paths.route(now, relays) else {
            // Nowhere to send it yet (a device just up, before signalling told it where the
            // peer is). Without a session, the packet waits behind a handshake that goes out
            // the moment a route appears; with one, it is dropped as WireGuard would.
            if peer.tunnel.has_session(now) {
                return Err(Error::NoEndpoint);
            }
            peer.paths.activity(now);
            let queued = peer.tunnel.encapsulate(packet, out, now);
            peer.stalled = true;
            self.sync_peer(&key, now);
            return match queued? {
                Encapsulated::Queued => Ok(None),
                Encapsulated::Datagram(_) => Err(Error::NoEndpoint),
            };
        };
        peer.paths.activity(now);
        let result = peer.tunnel.encapsulate(packet, inner_buffer(route, out)?, now);
        self.sync_peer(&key, now);
        match result? {
            Encapsulated::Datagram(len) => self.wrap(route, &key, out, len, now).map(Some).ok_or(Error::NoRelay),
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
        // From the TCP fallback's stream: as if from the relay's UDP address (but not proof
        // that UDP works).
        self.rx_over_stream = false;
        let source = match &self.relay {
            Some(relay) if self.hop.stream() == Some(source) => {
                self.rx_over_stream = true;
                relay.address
            }
            _ => source,
        };
        if relay::is_envelope(datagram) {
            return self.receive_envelope(source, datagram, out, now);
        }
        self.receive(source, Via::Direct, datagram, out, now)
    }

    /// One WireGuard message that arrived `via` a path, from `source` (the relay's address
    /// when relayed).
    fn receive(&mut self, source: SocketAddr, via: Via, datagram: &[u8], out: &mut [u8], now: Instant) -> Result<Received, Error> {
        let message = Message::parse(datagram).inspect_err(|_| self.stats.rx_malformed += 1)?;
        let receiver = match message {
            Message::Initiation(initiation) => return self.receive_initiation(source, via, &initiation, now),
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
        let Some(peer) = self.peers.get(&key) else {
            return Err(Error::UnknownReceiverIndex);
        };
        // The relay's reflector answers the NAT check and is never a path.
        let reflected = via == Via::Direct && self.is_reflector(&key, source);
        // Checked only when the source is new (roaming), not per packet.
        let roaming = via == Via::Direct && !reflected && peer.paths.direct() != Some(source);
        let nested = roaming && self.route(source.ip()).is_some();
        let Some(peer) = self.peers.get_mut(&key) else {
            return Err(Error::UnknownReceiverIndex);
        };
        let result = peer.tunnel.handle_message(message, out, now);
        let over_stream = self.rx_over_stream;
        if let Ok(outcome) = &result
            && outcome.is_authenticated()
        {
            if !over_stream && self.relay.as_ref().is_some_and(|relay| relay.address == source) {
                self.hop.heard_udp();
            }
            match via {
                // A datagram from an overlay address came through a tunnel: not a path.
                Via::Direct if nested || reflected => {}
                Via::Direct => {
                    peer.paths.heard_direct(source, now);
                    peer.birthday.answered();
                }
                Via::Relay => peer.paths.heard_relay(now),
            }
        }
        let mut relay_saw = None;
        let mut punch_signal = false;
        let result = match result {
            Ok(Decapsulated::Packet(len)) => match source_of(&out[..len]) {
                Some(inner) if peer.allowed_ips.iter().any(|p| p.contains(inner)) => {
                    if peer.guest.as_ref().is_some_and(|rules| !rules.inbound_allowed(&out[..len])) {
                        self.stats.rx_guest_refused += 1;
                        Err(Error::GuestRefused)
                    } else {
                        peer.paths.activity(now);
                        Ok(Received::Packet { peer: key, len })
                    }
                }
                _ => {
                    self.stats.rx_source_not_allowed += 1;
                    Err(Error::SourceNotAllowed)
                }
            },
            Ok(Decapsulated::PathControl(len)) => {
                let route = match via {
                    Via::Direct => Route::Direct(source),
                    Via::Relay => Route::Relay,
                };
                match wire::parse_path_control(&out[..len]) {
                    Some(wire::PathControl::Probe(id)) if self.control.len() < MAX_QUEUED_CONTROL => {
                        let observed = (via == Via::Direct).then_some(source);
                        self.control.push_back((key, route, Control::Pong(id, observed)));
                    }
                    Some(wire::PathControl::Probe(_)) => {}
                    // Over the stream, the relay sees the stream's far end, not us.
                    Some(wire::PathControl::Pong(_, Some(_))) if over_stream => {}
                    Some(wire::PathControl::Pong(_, Some(observed))) if self.relay.as_ref().is_some_and(|r| r.key == key) => {
                        relay_saw = Some(observed);
                    }
                    Some(wire::PathControl::Pong(_, Some(observed))) => {
                        self.observed.insert(key, observed);
                    }
                    Some(wire::PathControl::Punch(_)) => punch_signal = true,
                    Some(wire::PathControl::Pong(_, None)) | None => {}
                }
                Ok(Received::Nothing)
            }
            Ok(_) => Ok(Received::Nothing),
            Err(error) => Err(error),
        };
        if let Some(observed) = relay_saw {
            self.relay_saw(key, observed, reflected, now);
        }
        if punch_signal {
            self.on_punch_signal(&key, now);
        }
        self.sync_peer(&key, now);
        result
    }

    /// Runs due timers of every peer.
    pub fn handle_timeout(&mut self, now: Instant) {
        let keys: Vec<StaticPublic> = self.peers.keys().copied().collect();
        for key in keys {
            let relays = self.relays_to(&key);
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.tunnel.handle_timeout(now);
                let mut targets = std::mem::take(&mut self.probe_targets);
                targets.clear();
                peer.paths.due_probes(now, relays, &mut targets);
                if peer.tunnel.has_session(now) {
                    for target in &targets {
                        if self.control.len() < MAX_QUEUED_CONTROL {
                            self.next_probe_id += 1;
                            self.control.push_back((key, Route::Direct(*target), Control::Probe(self.next_probe_id)));
                        }
                    }
                }
                self.probe_targets = targets;
            }
            self.spray(&key, now);
            self.consider_punch(&key, now);
            self.sync_peer(&key, now);
        }
        self.check_nat(now);
        self.poll_hop(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .iter()
            .flat_map(|(key, p)| [p.tunnel.poll_timeout(), p.paths.poll_timeout(self.relays_to(key)), p.birthday.poll_timeout()])
            .flatten()
            .chain(self.relay_keepalive_due())
            .chain(self.nat_check_due())
            .chain(self.hop_due())
            .min()
    }

    /// The next datagram to send, written into `out`.
    pub fn poll_transmit(&mut self, out: &mut [u8], now: Instant) -> Option<Transmit> {
        if let Some((destination, reply)) = self.cookie_replies.pop_front() {
            out.get_mut(..COOKIE_REPLY_LEN)?.copy_from_slice(&reply);
            return Some(Transmit { destination, len: COOKIE_REPLY_LEN });
        }
        while let Some((key, route, control)) = self.control.pop_front() {
            let mut message = [0u8; wire::PATH_PONG_LEN];
            let len = wire::emit_path_control(&mut message, control.into());
            let Some(peer) = self.peers.get_mut(&key) else { continue };
            let Ok(buffer) = inner_buffer(route, out) else { continue };
            if let Ok(Some(sealed)) = peer.tunnel.encapsulate_control(&message[..len], buffer, now) {
                let transmit = match (control, route) {
                    (Control::UdpCheck(_), Route::Direct(destination)) => Some(Transmit { destination, len: sealed }),
                    _ => self.wrap(route, &key, out, sealed, now),
                };
                if let Some(transmit) = transmit {
                    return Some(transmit);
                }
            }
        }
        while let Some(key) = self.wants_transmit.first().copied() {
            let relays = self.relays_to(&key);
            let Some(peer) = self.peers.get_mut(&key) else {
                self.wants_transmit.remove(&key);
                continue;
            };
            let route = peer.paths.route(now, relays);
            let Some(buffer) = route.and_then(|route| inner_buffer(route, out).ok()) else {
                // Nowhere to send it: drop, as a WireGuard peer without an endpoint does, and
                // remember to try again as soon as a route appears.
                if peer.tunnel.poll_transmit(out, now).is_none() {
                    self.wants_transmit.remove(&key);
                } else {
                    peer.stalled = true;
                }
                continue;
            };
            match (peer.tunnel.poll_transmit(buffer, now), route) {
                (Some(len), Some(route)) => {
                    self.sync_peer(&key, now);
                    if let Some(transmit) = self.wrap(route, &key, out, len, now) {
                        return Some(transmit);
                    }
                }
                _ => {
                    self.wants_transmit.remove(&key);
                }
            }
        }
        self.hop_keepalive(out, now)
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

/// Where to write a WireGuard message for `route`: after room for the envelope header when
/// it goes through the relay.
fn inner_buffer(route: Route, out: &mut [u8]) -> Result<&mut [u8], Error> {
    match route {
        Route::Direct(_) => Ok(out),
        Route::Relay => out.get_mut(RELAY_HEADER_LEN..).ok_or(Error::BufferTooSmall),
    }
}

impl From<Control> for wire::PathControl {
    fn from(control: Control) -> Self {
        match control {
            Control::Probe(id) => wire::PathControl::Probe(id),
            Control::Pong(id, observed) => wire::PathControl::Pong(id, observed),
            Control::Punch(id) => wire::PathControl::Punch(id),
            Control::UdpCheck(id) => wire::PathControl::Probe(id),
        }
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
