//! A two-party harness with virtual time over an in-memory link that can lose, duplicate,
//! reorder and delay datagrams. Used by this crate's tests and by `simulations`.
//!
//! Time never sleeps: [`Pair::run_until`] jumps to the next event (a delivery or a timer).

use crate::device::{Device, DeviceConfig, PeerConfig, Received, Transmit};
use crate::keys::{PresharedKey, StaticSecret};
use crate::time::WallClock;
use crate::{Error, IpPrefix};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Large enough for any datagram the harness sends.
const BUFFER_LEN: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Self {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Faults of the in-memory link, as probabilities per datagram.
#[derive(Debug, Clone, Copy)]
pub struct LinkFaults {
    pub loss: f64,
    pub duplicate: f64,
    /// Probability that a datagram is held back by up to `reorder_by`.
    pub reorder: f64,
    pub reorder_by: Duration,
    pub latency: Duration,
}

impl Default for LinkFaults {
    fn default() -> Self {
        Self { loss: 0.0, duplicate: 0.0, reorder: 0.0, reorder_by: Duration::ZERO, latency: Duration::from_millis(10) }
    }
}

/// One endpoint of the pair.
#[derive(Debug)]
pub struct Node {
    pub device: Device,
    pub address: SocketAddr,
    pub overlay: IpAddr,
    /// IP packets the device delivered, in order.
    pub delivered: Vec<Vec<u8>>,
    /// Every datagram this node sent, in order (a passive observer's capture).
    pub sent: Vec<Vec<u8>>,
    /// Errors decapsulate returned, in order.
    pub errors: Vec<Error>,
}

#[derive(Debug, Clone)]
pub struct InFlight {
    pub to: Side,
    pub from_address: SocketAddr,
    pub deliver_at: Instant,
    pub bytes: Vec<u8>,
}

/// A virtual network of several devices for tests: what it holds in flight and how it
/// delivers are its own; [`VirtualNet::run_for`] is the one event loop (flush what the
/// devices queued, jump to the next delivery or timer, deliver what is due, run timers).
pub trait VirtualNet {
    fn now(&self) -> Instant;
    fn set_now(&mut self, now: Instant);
    /// Sends everything the devices have queued.
    fn flush(&mut self);
    /// When the next datagram in flight arrives.
    fn next_delivery(&self) -> Option<Instant>;
    /// Delivers every datagram due by now.
    fn deliver_due(&mut self);
    fn devices(&mut self) -> &mut [Device];

    fn run_for(&mut self, duration: Duration) {
        let deadline = self.now() + duration;
        loop {
            self.flush();
            let next_timer = self.devices().iter().filter_map(Device::poll_timeout).min();
            let Some(next) = [self.next_delivery(), next_timer].into_iter().flatten().min().filter(|n| *n <= deadline) else {
                self.set_now(deadline);
                return;
            };
            let now = self.now().max(next);
            self.set_now(now);
            self.deliver_due();
            for device in self.devices() {
                device.handle_timeout(now);
            }
        }
    }
}

#[derive(Debug)]
pub struct Pair {
    pub now: Instant,
    pub a: Node,
    pub b: Node,
    pub faults: LinkFaults,
    /// When set, datagrams towards that side vanish (a black hole, for timer tests).
    pub black_hole: Option<Side>,
    pub in_flight: Vec<InFlight>,
    rng: ChaCha20Rng,
    buffer: Vec<u8>,
}

impl Pair {
    /// Two devices that know each other, on 192.0.2.1 and 192.0.2.2, overlay 100.64.0.1/.2.
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, |_| {})
    }

    /// As [`Self::new`], letting the caller adjust both device configs.
    pub fn with_config(seed: u64, adjust: impl Fn(&mut DeviceConfig)) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let now = Instant::now();
        let clock = WallClock { anchor: now, unix_time_at_anchor: Duration::from_secs(1_800_000_000) };
        let psk = PresharedKey::from_bytes([0x42; 32]);
        let mut make = |host: u8| {
            let secret = StaticSecret::generate(&mut rng);
            let mut config = DeviceConfig {
                static_secret: secret,
                psk: psk.clone(),
                under_load_threshold: crate::device::DEFAULT_UNDER_LOAD_THRESHOLD,
                mtu: crate::wire::DEFAULT_MTU,
                clock,
            };
            adjust(&mut config);
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            Node {
                device: Device::new(config, seed),
                address: SocketAddr::from(([192, 0, 2, host], 51820)),
                overlay: IpAddr::from([100, 64, 0, host]),
                delivered: Vec::new(),
                sent: Vec::new(),
                errors: Vec::new(),
            }
        };
        let mut a = make(1);
        let mut b = make(2);
        let peer_of = |node: &Node| PeerConfig {
            static_public: *node.device.static_public(),
            allowed_ips: vec![IpPrefix::host(node.overlay)],
            endpoint: Some(node.address),
            persistent_keepalive: None,
            guest: None,
        };
        let (config_a, config_b) = (peer_of(&a), peer_of(&b));
        a.device.upsert_peer(config_b);
        b.device.upsert_peer(config_a);
        let mut link_seed = [0u8; 32];
        rng.fill_bytes(&mut link_seed);
        Self {
            now,
            a,
            b,
            faults: LinkFaults::default(),
            black_hole: None,
            in_flight: Vec::new(),
            rng: ChaCha20Rng::from_seed(link_seed),
            buffer: vec![0; BUFFER_LEN],
        }
    }

    pub fn node(&mut self, side: Side) -> &mut Node {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// An IPv4/UDP packet from `from`'s overlay address to the other side's, carrying `payload`.
    pub fn packet(&self, from: Side, payload: &[u8]) -> Vec<u8> {
        let (src, dst) = match from {
            Side::A => (self.a.overlay, self.b.overlay),
            Side::B => (self.b.overlay, self.a.overlay),
        };
        ipv4_udp_packet(src, dst, payload)
    }

    /// Hands an IP packet to `from`'s device as if read from its TUN.
    pub fn send_ip(&mut self, from: Side, packet: &[u8]) -> Result<(), Error> {
        let now = self.now;
        let mut out = std::mem::take(&mut self.buffer);
        let result = self.node(from).device.encapsulate(packet, &mut out, now);
        if let Ok(Some(transmit)) = result {
            self.transmit(from, transmit, &out);
        }
        self.buffer = out;
        self.flush();
        result.map(|_| ())
    }

    /// Delivers a datagram to `to` right now, as if it arrived from `from_address`.
    pub fn inject(&mut self, to: Side, from_address: SocketAddr, datagram: &[u8]) -> Result<Received, Error> {
        let now = self.now;
        let mut out = std::mem::take(&mut self.buffer);
        let node = self.node(to);
        let result = node.device.decapsulate(from_address, datagram, &mut out, now);
        match &result {
            Ok(Received::Packet { len, .. }) => node.delivered.push(out[..*len].to_vec()),
            Ok(Received::Nothing | Received::Forward(_)) => {}
            Err(error) => node.errors.push(*error),
        }
        self.buffer = out;
        self.flush();
        result
    }

    /// Moves every pending transmit of both devices onto the link.
    pub fn flush(&mut self) {
        let mut out = std::mem::take(&mut self.buffer);
        loop {
            let now = self.now;
            let mut any = false;
            for side in [Side::A, Side::B] {
                while let Some(transmit) = self.node(side).device.poll_transmit(&mut out, now) {
                    self.transmit(side, transmit, &out);
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        self.buffer = out;
    }

    /// Advances virtual time to `deadline`, delivering datagrams and firing timers on the way.
    pub fn run_until(&mut self, deadline: Instant) {
        loop {
            self.flush();
            let next_delivery = self.in_flight.iter().map(|f| f.deliver_at).min();
            let next_timer =
                [self.a.device.poll_timeout(), self.b.device.poll_timeout()].into_iter().flatten().min();
            let Some(next) = [next_delivery, next_timer].into_iter().flatten().min() else {
                self.now = self.now.max(deadline);
                return;
            };
            if next > deadline {
                self.now = self.now.max(deadline);
                return;
            }
            self.now = self.now.max(next);
            self.deliver_due();
            let now = self.now;
            self.a.device.handle_timeout(now);
            self.b.device.handle_timeout(now);
        }
    }

    pub fn run_for(&mut self, duration: Duration) {
        let deadline = self.now + duration;
        self.run_until(deadline);
    }

    /// Takes the datagrams in flight towards `to` off the link, for a test to replay or alter.
    pub fn intercept(&mut self, to: Side) -> Vec<InFlight> {
        let (taken, kept) = std::mem::take(&mut self.in_flight).into_iter().partition(|f| f.to == to);
        self.in_flight = kept;
        taken
    }

    fn deliver_due(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.in_flight).into_iter().partition(|f| f.deliver_at <= now);
        self.in_flight = later;
        let mut due = due;
        due.sort_by_key(|f| f.deliver_at);
        for datagram in due {
            let _ = self.inject(datagram.to, datagram.from_address, &datagram.bytes);
        }
    }

    fn transmit(&mut self, from: Side, transmit: Transmit, out: &[u8]) {
        let bytes = out[..transmit.len].to_vec();
        let from_address = self.node(from).address;
        self.node(from).sent.push(bytes.clone());
        let to = from.other();
        // Datagrams to any other address (say, a spoofed source) leave the link unanswered.
        if transmit.destination != self.node(to).address
            || self.black_hole == Some(to)
            || self.chance(self.faults.loss)
        {
            return;
        }
        let copies = if self.chance(self.faults.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let mut deliver_at = self.now + self.faults.latency;
            if self.chance(self.faults.reorder) {
                let max = self.faults.reorder_by.as_micros().max(1) as u64;
                deliver_at += Duration::from_micros(self.rng.next_u64() % max);
            }
            self.in_flight.push(InFlight { to, from_address, deliver_at, bytes: bytes.clone() });
        }
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < probability
    }
}

/// A minimal IPv4/UDP packet (checksums zero: the data plane never reads them).
pub fn ipv4_udp_packet(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (src, dst) else {
        return ipv6_udp_packet(src, dst, payload);
    };
    let total = 20 + 8 + payload.len();
    let mut packet = vec![0u8; total];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet[8] = 64;
    packet[9] = 17;
    packet[12..16].copy_from_slice(&src.octets());
    packet[16..20].copy_from_slice(&dst.octets());
    packet[20..22].copy_from_slice(&4000u16.to_be_bytes());
    packet[22..24].copy_from_slice(&4000u16.to_be_bytes());
    packet[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    packet[28..].copy_from_slice(payload);
    packet
}

/// An IPv4 packet of `protocol` (TCP or UDP) between two ports, with 8 bytes of transport header.
fn ipv4_ports_packet(protocol: u8, src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut packet = ipv4_udp_packet(IpAddr::V4(src), IpAddr::V4(dst), &[0; 12]);
    packet[9] = protocol;
    packet[20..22].copy_from_slice(&sport.to_be_bytes());
    packet[22..24].copy_from_slice(&dport.to_be_bytes());
    packet
}

/// A minimal IPv4/TCP packet between two ports.
pub fn tcp_packet_v4(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    ipv4_ports_packet(6, src, dst, sport, dport)
}

/// A minimal IPv4/UDP packet between two ports.
pub fn udp_packet_v4(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    ipv4_ports_packet(17, src, dst, sport, dport)
}

/// A minimal IPv6/UDP packet.
pub fn ipv6_udp_packet(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let to_v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut packet = vec![0u8; 40 + 8 + payload.len()];
    packet[0] = 0x60;
    packet[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    packet[6] = 17;
    packet[7] = 64;
    packet[8..24].copy_from_slice(&to_v6(src).octets());
    packet[24..40].copy_from_slice(&to_v6(dst).octets());
    packet[44..46].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    packet[48..].copy_from_slice(payload);
    packet
}

/// Runs `body` over every file in a fuzz target's committed corpus directory, so the target's
/// code path cannot rot while CI never runs a fuzzer. Panics if the corpus is empty.
pub fn replay_corpus(dir: &std::path::Path, body: fn(&[u8])) {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        body(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        count += 1;
    }
    assert!(count > 0, "empty corpus {}", dir.display());
}
