//! Direct paths under a mix of NATs (issue #17): real data-plane [`Device`]s — their path
//! probing, NAT check and birthday punching, unchanged — behind modelled NATs, with the
//! owner's CloudPal relaying and reflecting on a public address. The control plane's part is
//! played the way the control core does it: each member learns every other's NAT (kind and
//! reflexive address, as the path exchange carries it) and its candidates (where CloudPal
//! heard it from).
//!
//! The NATs follow RFC 4787's terms: a mapping is endpoint-independent (one public port per
//! inside socket, whatever the destination) or endpoint-dependent ("symmetric": a fresh random
//! port per destination); filtering admits any source (full cone) or only the addresses and
//! ports the inside sent to in the last 30 s (Linux's unreplied conntrack lifetime). A
//! carrier-grade NAT shares one public address among many subscribers and hairpins, as
//! RFC 4787 REQ-9 and RFC 6888 ask. A network that blocks UDP drops every datagram (such
//! devices reach the others over the TCP/443 relay stream, tested in the namespace suite;
//! here they only count as not direct).

use crate::agenda::Agenda;
use crate::links;
use protocol::birthday::{NatKind, PeerNat, reflector_of};
use protocol::paths::PathKind;
use protocol::testing::ipv4_udp_packet;
use protocol::{Device, DeviceConfig, IpPrefix, PeerConfig, PresharedKey, Received, StaticPublic, StaticSecret, WallClock};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

/// What stands between a device and the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatType {
    /// A public address (or an open IPv6 one): no translation, no filter.
    Open,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering: a Linux
    /// masquerade and most home routers.
    PortRestricted,
    /// Endpoint-dependent mapping (a random port per destination), address-and-port filtering.
    Symmetric,
    /// A carrier's NAT, endpoint-independent, on an address shared with other subscribers.
    CgnatIndependent,
    /// A carrier's NAT, endpoint-dependent, on a shared address.
    CgnatSymmetric,
    /// No UDP at all.
    UdpBlocked,
}

impl NatType {
    pub fn label(self) -> &'static str {
        match self {
            NatType::Open => "open",
            NatType::FullCone => "full cone",
            NatType::PortRestricted => "port-restricted",
            NatType::Symmetric => "symmetric",
            NatType::CgnatIndependent => "CGNAT (independent)",
            NatType::CgnatSymmetric => "CGNAT (symmetric)",
            NatType::UdpBlocked => "UDP blocked",
        }
    }

    fn dependent(self) -> bool {
        matches!(self, NatType::Symmetric | NatType::CgnatSymmetric)
    }

    fn filtered(self) -> bool {
        !matches!(self, NatType::Open | NatType::FullCone)
    }

    fn carrier(self) -> bool {
        matches!(self, NatType::CgnatIndependent | NatType::CgnatSymmetric)
    }
}

/// A population of devices: the share behind each kind of NAT.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub name: &'static str,
    pub shares: &'static [(NatType, f64)],
    /// The share of device pairs that must end direct.
    pub goal: f64,
    /// Carriers the CGNAT devices are spread over.
    pub carriers: u32,
}

/// Home broadband: mostly one port-restricted home router, some symmetric routers and
/// carrier NAT (DS-Lite, fibre CGNAT), a few public addresses, a few networks without UDP.
/// Our assumption, after the field's measurements (STUNT's home-router survey, Richter et al.'s
/// CGN study, the libp2p hole-punching campaign): stated here so it can be argued with.
pub const HOME_BROADBAND: Mix = Mix {
    name: "home broadband",
    shares: &[
        (NatType::Open, 0.08),
        (NatType::FullCone, 0.10),
        (NatType::PortRestricted, 0.58),
        (NatType::Symmetric, 0.10),
        (NatType::CgnatIndependent, 0.10),
        (NatType::UdpBlocked, 0.04),
    ],
    goal: 0.85,
    carriers: 3,
};

/// Mobile-heavy: over half the devices on cellular, where carrier NAT is the rule and much
/// of it is symmetric; the rest at home; more networks that block UDP (offices, hotels).
pub const MOBILE_HEAVY: Mix = Mix {
    name: "mobile-heavy",
    shares: &[
        (NatType::Open, 0.03),
        (NatType::FullCone, 0.04),
        (NatType::PortRestricted, 0.28),
        (NatType::Symmetric, 0.05),
        (NatType::CgnatIndependent, 0.30),
        (NatType::CgnatSymmetric, 0.24),
        (NatType::UdpBlocked, 0.06),
    ],
    goal: 0.65,
    carriers: 3,
};

/// How long a filter stays open after the inside sent to an address (`nf_conntrack_udp_timeout`).
const FILTER_LIFETIME: Duration = Duration::from_secs(30);
/// The inside socket every device sends from; punch sockets count up from 1.
const MAIN: usize = 0;
const CLOUDPAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 41641);

/// One public port of a NAT and who is behind it.
struct Mapping {
    device: usize,
    socket: usize,
    /// Endpoint-dependent: the only remote it was made for.
    remote: Option<SocketAddr>,
    /// Where the inside sent from this mapping, and when last.
    sent_to: HashMap<SocketAddr, Instant>,
    filtered: bool,
}

struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// The devices (the last is CloudPal) and the internet between them.
struct Net {
    now: Instant,
    rng: ChaCha20Rng,
    devices: Vec<Device>,
    keys: Vec<StaticPublic>,
    overlays: Vec<IpAddr>,
    kinds: Vec<NatType>,
    /// Each device's public address (its NAT's, or its carrier's, with the port of its main
    /// mapping for the independent ones).
    public_ip: Vec<IpAddr>,
    /// One-way delay from each device to the internet's core.
    access: Vec<Duration>,
    mappings: HashMap<SocketAddr, Mapping>,
    /// (device, socket, remote for dependent mappings) → public address.
    flows: HashMap<(usize, usize, Option<SocketAddr>), SocketAddr>,
    in_flight: Agenda<Datagram>,
    /// The punch sockets each device has open, and the one it adopted per remote.
    punch_sockets: Vec<Vec<usize>>,
    next_socket: Vec<usize>,
    adopted: Vec<BTreeMap<SocketAddr, usize>>,
    buffer: Vec<u8>,
    /// Each device's next timeout, as last asked, and whether it may have changed since: a
    /// `Device` walks all its peers' timers to answer, and asking all 41 after every datagram
    /// was half of the scenario's time.
    due: Vec<Option<Instant>>,
    dirty: Vec<bool>,
}

impl Net {
    fn cloudpal(&self) -> usize {
        self.devices.len() - 1
    }

    fn new(kinds: Vec<NatType>, carriers: u32, seed: u64) -> Self {
        let now = Instant::now();
        let count = kinds.len() + 1;
        let mut rng = links::rng(seed, 21);
        let secrets: Vec<StaticSecret> = (0..count)
            .map(|i| {
                let mut bytes = [0u8; 32];
                bytes[..8].copy_from_slice(&links::splitmix(seed ^ (i as u64 + 1)).to_le_bytes());
                bytes[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                StaticSecret::from_bytes(bytes)
            })
            .collect();
        let keys: Vec<StaticPublic> = secrets.iter().map(StaticSecret::public_key).collect();
        let overlays: Vec<IpAddr> = (0..count).map(|i| IpAddr::V4(Ipv4Addr::from(0x6440_0001u32 + i as u32))).collect();
        let clock = WallClock { anchor: now, unix_time_at_anchor: SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default() };
        let mut devices: Vec<Device> = secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| {
                let config = DeviceConfig { static_secret: secret.clone(), psk: PresharedKey::from_bytes([9; 32]), under_load_threshold: 64, mtu: 1420, clock };
                let mut seed_bytes = [0u8; 32];
                seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
                seed_bytes[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                Device::new(config, seed_bytes)
            })
            .collect();
        let cloudpal = count - 1;
        for (i, device) in devices.iter_mut().enumerate() {
            for j in (0..count).filter(|j| *j != i) {
                let endpoint = (j == cloudpal).then_some(CLOUDPAL);
                device.upsert_peer(PeerConfig { static_public: keys[j], allowed_ips: vec![IpPrefix::host(overlays[j])], endpoint, persistent_keepalive: None, guest: None });
            }
        }
        devices[cloudpal].set_relay_server(true);
        for device in devices.iter_mut().take(cloudpal) {
            device.set_relay(Some((CLOUDPAL, keys[cloudpal])), now);
        }
        // Home NATs and open hosts in 192.0.2.0/24 and 198.51.100.0/24, carriers' shared
        // addresses at the start of 203.0.113.0/24 (CloudPal is 203.0.113.1).
        let public_ip = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                if kind.carrier() {
                    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10 + (rng.next_u32() % carriers.max(1)) as u8))
                } else {
                    IpAddr::V4(Ipv4Addr::from(0xc000_0201u32 + (i as u32 % 250) + if i >= 250 { 0x0633_6200 } else { 0 }))
                }
            })
            .chain(std::iter::once(CLOUDPAL.ip()))
            .collect();
        let access = (0..count).map(|_| Duration::from_millis(5 + u64::from(rng.next_u32() % 36))).collect();
        let mut kinds = kinds;
        kinds.push(NatType::Open);
        Net {
            now,
            rng,
            devices,
            keys,
            overlays,
            kinds,
            public_ip,
            access,
            mappings: HashMap::new(),
            flows: HashMap::new(),
            in_flight: Agenda::default(),
            punch_sockets: vec![Vec::new(); count],
            next_socket: vec![1; count],
            adopted: vec![BTreeMap::new(); count],
            buffer: vec![0u8; 65_536],
            due: vec![None; count],
            dirty: vec![true; count],
        }
    }

    /// The public address `device`'s datagram from `socket` to `to` leaves with.
    fn translate(&mut self, device: usize, socket: usize, to: SocketAddr) -> Option<SocketAddr> {
        let kind = self.kinds[device];
        if kind == NatType::UdpBlocked {
            return None;
        }
        if device == self.cloudpal() {
            return Some(if socket == MAIN { CLOUDPAL } else { reflector_of(CLOUDPAL).expect("a reflector") });
        }
        let key = (device, socket, kind.dependent().then_some(to));
        let public = match self.flows.get(&key) {
            Some(public) => *public,
            None => {
                let ip = self.public_ip[device];
                let preserved = matches!(kind, NatType::Open | NatType::FullCone | NatType::PortRestricted) && socket == MAIN;
                let public = loop {
                    let port = if preserved { 41641 } else { 1024 + (self.rng.next_u32() % 64_512) as u16 };
                    let candidate = SocketAddr::new(ip, port);
                    if !self.mappings.contains_key(&candidate) {
                        break candidate;
                    }
                    assert!(!preserved, "two devices preserving one port on one address");
                };
                self.mappings.insert(public, Mapping { device, socket, remote: key.2, sent_to: HashMap::new(), filtered: kind.filtered() });
                self.flows.insert(key, public);
                public
            }
        };
        if let Some(mapping) = self.mappings.get_mut(&public) {
            mapping.sent_to.insert(to, self.now);
        }
        Some(public)
    }

    fn send(&mut self, from: usize, socket: usize, to: SocketAddr, bytes: Vec<u8>) {
        let Some(source) = self.translate(from, socket, to) else { return };
        let destination = self.mappings.get(&to).map_or(self.cloudpal(), |m| m.device);
        let delay = self.access[from] + self.access[destination] + Duration::from_millis(10);
        self.in_flight.push(self.now + delay, Datagram { from: source, to, bytes });
    }

    /// Where a datagram from `from` to the public `to` ends up, if a NAT admits it.
    fn admit(&self, from: SocketAddr, to: SocketAddr) -> Option<(usize, usize)> {
        if to == CLOUDPAL {
            return Some((self.cloudpal(), MAIN));
        }
        if Some(to) == reflector_of(CLOUDPAL) {
            return Some((self.cloudpal(), 1));
        }
        let mapping = self.mappings.get(&to)?;
        if mapping.remote.is_some_and(|remote| remote != from) {
            return None;
        }
        if mapping.filtered && !mapping.sent_to.get(&from).is_some_and(|at| self.now.saturating_duration_since(*at) < FILTER_LIFETIME) {
            return None;
        }
        (self.kinds[mapping.device] != NatType::UdpBlocked).then_some((mapping.device, mapping.socket))
    }

    fn deliver(&mut self, datagram: Datagram) {
        let Some((to, socket)) = self.admit(datagram.from, datagram.to) else { return };
        let cloudpal = self.cloudpal();
        self.dirty[to] = true;
        let mut out = std::mem::take(&mut self.buffer);
        if to == cloudpal && socket == 1 {
            if let Some(len) = self.devices[cloudpal].reflect(datagram.from, &datagram.bytes, &mut out, self.now) {
                self.send(cloudpal, 1, datagram.from, out[..len].to_vec());
            }
        } else if socket == MAIN || self.punch_sockets[to].contains(&socket) || self.adopted[to].values().any(|s| *s == socket) {
            if let Ok(Received::Forward(transmit)) = self.devices[to].decapsulate(datagram.from, &datagram.bytes, &mut out, self.now) {
                self.send(cloudpal, MAIN, transmit.destination, out[..transmit.len].to_vec());
            }
            if self.punch_sockets[to].contains(&socket) && self.devices[to].is_direct_endpoint(datagram.from, self.now) {
                // The shell keeps the winning socket of the open set for that peer and closes
                // the others (`node/src/dataplane/punch.rs`); an adopted socket's datagrams
                // are that peer's, and leave the set of a later attempt alone.
                self.adopted[to].insert(datagram.from, socket);
                self.punch_sockets[to].clear();
            }
        }
        self.buffer = out;
    }

    fn flush(&mut self) {
        let mut out = std::mem::take(&mut self.buffer);
        for i in 0..self.devices.len() {
            if let Some(open) = self.devices[i].poll_punch(&mut out, self.now) {
                self.punch_sockets[i].clear();
                for _ in 0..open.sockets {
                    let socket = self.next_socket[i];
                    self.next_socket[i] += 1;
                    self.punch_sockets[i].push(socket);
                    self.send(i, socket, open.destination, out[..open.len].to_vec());
                }
                self.dirty[i] = true;
            }
            while let Some(transmit) = self.devices[i].poll_transmit(&mut out, self.now) {
                self.dirty[i] = true;
                let socket = self.adopted[i].get(&transmit.destination).copied().unwrap_or(MAIN);
                self.send(i, socket, transmit.destination, out[..transmit.len].to_vec());
            }
        }
        self.buffer = out;
    }

    /// Asks the devices that may have changed for their next timeout.
    fn refresh_due(&mut self) {
        for (i, device) in self.devices.iter().enumerate() {
            if std::mem::take(&mut self.dirty[i]) {
                self.due[i] = device.poll_timeout();
            }
        }
    }

    fn run_for(&mut self, duration: Duration) {
        let deadline = self.now + duration;
        // Whatever happened since the last run (traffic, signalling) may have changed anyone.
        self.dirty.fill(true);
        loop {
            self.flush();
            self.refresh_due();
            let next_timer = self.due.iter().flatten().min().copied();
            let next_delivery = self.in_flight.next_at();
            let Some(next) = [next_delivery, next_timer].into_iter().flatten().min().filter(|n| *n <= deadline) else {
                self.now = deadline;
                return;
            };
            self.now = self.now.max(next);
            while let Some((_, datagram)) = self.in_flight.pop_due(self.now) {
                self.deliver(datagram);
            }
            self.refresh_due();
            let now = self.now;
            for (i, device) in self.devices.iter_mut().enumerate() {
                if self.due[i].is_some_and(|at| at <= now) {
                    device.handle_timeout(now);
                    self.dirty[i] = true;
                }
            }
        }
    }

    /// What the control plane tells each member of every other: its NAT (kind and reflexive
    /// address, from its own check) and its candidates (where CloudPal hears it from).
    fn signal(&mut self) {
        let cloudpal = self.cloudpal();
        let told: Vec<Option<PeerNat>> = (0..cloudpal).map(|i| Some(PeerNat { kind: self.devices[i].nat_kind()?, reflexive: self.devices[i].reflexive_address()? })).collect();
        let heard: Vec<Option<SocketAddr>> = (0..cloudpal).map(|i| self.devices[cloudpal].peer_endpoint(&self.keys[i])).collect();
        let now = self.now;
        for i in 0..cloudpal {
            for j in (0..cloudpal).filter(|j| *j != i) {
                let key = self.keys[j];
                self.devices[i].set_peer_nat(&key, told[j], now);
                let candidates: Vec<SocketAddr> = heard[j].into_iter().collect();
                self.devices[i].set_peer_candidates(&key, &candidates, now);
            }
        }
    }

    /// One packet each way between every pair of members, every `every`, for `duration`.
    fn traffic(&mut self, duration: Duration, every: Duration) {
        let cloudpal = self.cloudpal();
        let end = self.now + duration;
        while self.now < end {
            for a in 0..cloudpal {
                for b in (0..cloudpal).filter(|b| *b != a) {
                    let packet = ipv4_udp_packet(self.overlays[a], self.overlays[b], b"pair");
                    let mut out = std::mem::take(&mut self.buffer);
                    let sealed = self.devices[a].encapsulate(&packet, &mut out, self.now);
                    if let Ok(Some(transmit)) = sealed {
                        let socket = self.adopted[a].get(&transmit.destination).copied().unwrap_or(MAIN);
                        self.send(a, socket, transmit.destination, out[..transmit.len].to_vec());
                    }
                    self.buffer = out;
                }
            }
            self.run_for(every);
        }
    }
}

/// What one mix measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub mix: Mix,
    pub seed: u64,
    pub devices: usize,
    /// Unordered pairs of members.
    pub pairs: usize,
    /// Of them, direct both ways at the end.
    pub direct: usize,
    /// Per pair of NAT kinds (the lesser first): (direct, pairs).
    pub by_kinds: BTreeMap<(NatType, NatType), (usize, usize)>,
    /// Devices whose own NAT check ended as each kind: (independent, dependent, none).
    pub checked: (usize, usize, usize),
    pub after: Duration,
}

impl Report {
    pub fn share(&self) -> f64 {
        self.direct as f64 / self.pairs.max(1) as f64
    }

    pub fn met(&self) -> bool {
        self.share() >= self.mix.goal
    }
}

/// The NAT kinds of `devices` devices drawn from `mix`: each kind its rounded share, the rest
/// port-restricted, shuffled by `seed`.
pub fn population(mix: &Mix, devices: usize, seed: u64) -> Vec<NatType> {
    let mut kinds = Vec::with_capacity(devices);
    for (kind, share) in mix.shares {
        let count = (share * devices as f64).round() as usize;
        kinds.extend(std::iter::repeat_n(*kind, count.min(devices - kinds.len())));
    }
    kinds.resize(devices, NatType::PortRestricted);
    let mut rng = links::rng(seed, 23);
    for i in (1..kinds.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        kinds.swap(i, j);
    }
    kinds
}

/// Every member meets CloudPal (sessions, the NAT check), hears of the others' NATs and
/// candidates, and then each pair exchanges a packet each way every second for `traffic`:
/// the share of pairs direct both ways at the end.
pub fn run(mix: &Mix, devices: usize, seed: u64, traffic: Duration) -> Report {
    let kinds = population(mix, devices, seed);
    let mut net = Net::new(kinds.clone(), mix.carriers, seed);
    let cloudpal = net.cloudpal();
    for member in 0..cloudpal {
        let (key, now) = (net.keys[cloudpal], net.now);
        net.devices[member].connect(&key, now);
    }
    net.run_for(Duration::from_secs(5));
    net.signal();
    net.traffic(traffic, Duration::from_secs(1));
    let mut by_kinds: BTreeMap<(NatType, NatType), (usize, usize)> = BTreeMap::new();
    let mut direct = 0;
    let mut pairs = 0;
    for a in 0..cloudpal {
        for b in a + 1..cloudpal {
            let both = [(a, b), (b, a)].iter().all(|(x, y)| net.devices[*x].peer_path(&net.keys[*y], net.now) == PathKind::Direct);
            let entry = by_kinds.entry((kinds[a].min(kinds[b]), kinds[a].max(kinds[b]))).or_default();
            entry.1 += 1;
            pairs += 1;
            if both {
                entry.0 += 1;
                direct += 1;
            }
        }
    }
    let mut checked = (0, 0, 0);
    for device in net.devices.iter().take(cloudpal) {
        match device.nat_kind() {
            Some(NatKind::EndpointIndependent) => checked.0 += 1,
            Some(NatKind::EndpointDependent) => checked.1 += 1,
            None => checked.2 += 1,
        }
    }
    Report { mix: *mix, seed, devices, pairs, direct, by_kinds, checked, after: traffic }
}

impl Report {
    pub fn table(&self) -> crate::table::Table {
        let mut table = crate::table::Table::new(
            format!(
                "direct device pairs, {} mix — {} devices behind their NATs and one CloudPal, a packet each way per pair every second for {} s (seed {})",
                self.mix.name,
                self.devices,
                self.after.as_secs(),
                self.seed
            ),
            &["NATs of the pair", "pairs", "direct"],
        );
        for ((a, b), (direct, pairs)) in &self.by_kinds {
            table.row(vec![format!("{} + {}", a.label(), b.label()), pairs.to_string(), format!("{direct} ({:.0} %)", 100.0 * *direct as f64 / (*pairs).max(1) as f64)]);
        }
        table.row(vec![
            format!("all (NAT check: {} independent, {} symmetric, {} none)", self.checked.0, self.checked.1, self.checked.2),
            self.pairs.to_string(),
            format!("{} ({:.1} %) — goal ≥ {:.0} %: {}", self.direct, 100.0 * self.share(), 100.0 * self.mix.goal, crate::table::verdict(self.met())),
        ]);
        table
    }
}
