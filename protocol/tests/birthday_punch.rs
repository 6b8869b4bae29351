//! Birthday punching on virtual time: real [`Device`]s behind modelled NATs.
//!
//! - E sits behind an endpoint-independent NAT (one public port; inbound only from addresses
//!   E sent to, as a Linux masquerade's conntrack admits).
//! - H sits behind a symmetric NAT (a fresh random public port per inside socket and
//!   destination; inbound only from that destination), and so does H2 behind another.
//! - R is the owner's CloudPal, on a public address, relaying and answering the NAT check on
//!   its reflector port.
//!
//! The harness plays the shell: it opens the hard side's sockets when the device asks
//! (`poll_punch`), keeps the one whose answer authenticates, and plays the control plane by
//! handing each device what the other said of its NAT.

mod common;
use common::Datagram;
use protocol::birthday::{ATTEMPT_EVERY, NatKind, PeerNat, SPRAY_PROBES, reflector_of};
use protocol::paths::PathKind;
use protocol::testing::{VirtualNet, ipv4_udp_packet};
use protocol::{Device, DeviceConfig, IpPrefix, PeerConfig, PresharedKey, Received, StaticPublic, StaticSecret, WallClock};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

const E: usize = 0;
const H: usize = 1;
const H2: usize = 2;
const R: usize = 3;
const LATENCY: Duration = Duration::from_millis(10);
/// How long a Linux conntrack entry for UDP seen one way lives (`nf_conntrack_udp_timeout`).
const UNREPLIED_LIFETIME: Duration = Duration::from_secs(30);
/// The main socket of a device; punch sockets count up from 1.
const MAIN: usize = 0;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}


/// A NAT in front of one device.
enum Nat {
    /// One public address; inbound admitted from destinations sent to within
    /// [`UNREPLIED_LIFETIME`].
    Independent { public: SocketAddr, sent_to: BTreeMap<SocketAddr, Instant> },
    /// A public port per (socket, destination), random; inbound admitted from that
    /// destination only.
    Symmetric { ip: IpAddr, by_port: BTreeMap<u16, (usize, SocketAddr)>, by_flow: BTreeMap<(usize, SocketAddr), u16> },
    /// No NAT (CloudPal).
    None,
}

struct Net {
    now: Instant,
    rng: ChaCha20Rng,
    devices: Vec<Device>,
    keys: Vec<StaticPublic>,
    overlays: Vec<IpAddr>,
    nats: Vec<Nat>,
    relay: SocketAddr,
    reflector: SocketAddr,
    in_flight: VecDeque<Datagram>,
    /// The hard sides' open punch sockets, and the socket each remote is reached by.
    punch_sockets: Vec<Vec<usize>>,
    next_socket: Vec<usize>,
    adopted: Vec<BTreeMap<SocketAddr, usize>>,
    /// Direct datagrams between E and H are lost while this is set (an attempt that fails).
    cut: bool,
    delivered: Vec<usize>,
}

impl Net {
    fn new(seed: u64) -> Self {
        Self::with_third(seed, false)
    }

    /// As [`Net::new`], with the third device (H2) behind an endpoint-independent NAT of its
    /// own when `easy`.
    fn with_third(seed: u64, easy: bool) -> Self {
        let now = Instant::now();
        let secrets: Vec<StaticSecret> = (1..=4u8).map(|i| StaticSecret::from_bytes([i; 32])).collect();
        let keys: Vec<StaticPublic> = secrets.iter().map(StaticSecret::public_key).collect();
        let overlays: Vec<IpAddr> = (1..=4u8).map(|i| IpAddr::from([100, 64, 0, i])).collect();
        let clock = WallClock { anchor: now, unix_time_at_anchor: SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default() };
        let relay = addr("203.0.113.1:41641");
        let mut devices: Vec<Device> = secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| {
                let config = DeviceConfig { static_secret: secret.clone(), psk: PresharedKey::from_bytes([9; 32]), under_load_threshold: 64, mtu: 1420, clock };
                let mut seed_bytes = [i as u8; 32];
                seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
                Device::new(config, seed_bytes)
            })
            .collect();
        for (i, device) in devices.iter_mut().enumerate() {
            for j in (0..4).filter(|j| *j != i) {
                let endpoint = (j == R).then_some(relay);
                device.upsert_peer(PeerConfig { static_public: keys[j], allowed_ips: vec![IpPrefix::host(overlays[j])], endpoint, persistent_keepalive: None, guest: None });
            }
        }
        devices[R].set_relay_server(true);
        for member in [E, H, H2] {
            devices[member].set_relay(Some((relay, keys[R])), now);
        }
        let symmetric = |ip: &str| Nat::Symmetric { ip: ip.parse().expect("ip"), by_port: BTreeMap::new(), by_flow: BTreeMap::new() };
        let third = if easy { Nat::Independent { public: addr("192.0.2.2:41641"), sent_to: BTreeMap::new() } } else { symmetric("198.51.100.2") };
        let nats = vec![Nat::Independent { public: addr("192.0.2.1:41641"), sent_to: BTreeMap::new() }, symmetric("198.51.100.1"), third, Nat::None];
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Net {
            now,
            rng: ChaCha20Rng::from_seed(seed_bytes),
            devices,
            keys,
            overlays,
            nats,
            relay,
            reflector: reflector_of(relay).expect("reflector"),
            in_flight: VecDeque::new(),
            punch_sockets: vec![Vec::new(); 4],
            next_socket: vec![1; 4],
            adopted: vec![BTreeMap::new(); 4],
            cut: false,
            delivered: vec![0; 4],
        }
    }

    /// Sends from device `from`'s `socket`, through its NAT.
    fn send(&mut self, from: usize, socket: usize, to: SocketAddr, bytes: Vec<u8>) {
        let source = match &mut self.nats[from] {
            Nat::Independent { public, sent_to } => {
                sent_to.insert(to, self.now);
                *public
            }
            Nat::Symmetric { ip, by_port, by_flow } => {
                let port = match by_flow.get(&(socket, to)) {
                    Some(port) => *port,
                    None => loop {
                        let port = 1024 + (self.rng.next_u32() % 64_512) as u16;
                        if !by_port.contains_key(&port) {
                            by_port.insert(port, (socket, to));
                            by_flow.insert((socket, to), port);
                            break port;
                        }
                    },
                };
                SocketAddr::new(*ip, port)
            }
            Nat::None => if socket == MAIN { self.relay } else { self.reflector },
        };
        self.in_flight.push_back(Datagram { at: self.now + LATENCY, from: source, to, bytes });
    }

    /// Where a datagram to `to` from `from` ends up: (device, socket), if its NAT admits it.
    fn admit(&self, from: SocketAddr, to: SocketAddr) -> Option<(usize, usize)> {
        if to == self.relay {
            return Some((R, MAIN));
        }
        if to == self.reflector {
            return Some((R, 1));
        }
        self.nats.iter().enumerate().find_map(|(device, nat)| match nat {
            Nat::Independent { public, sent_to } => {
                let open = sent_to.get(&from).is_some_and(|at| self.now.saturating_duration_since(*at) < UNREPLIED_LIFETIME);
                (*public == to && open).then_some((device, MAIN))
            }
            Nat::Symmetric { ip, by_port, .. } if *ip == to.ip() => {
                by_port.get(&to.port()).filter(|(_, destination)| *destination == from).map(|(socket, _)| (device, *socket))
            }
            _ => None,
        })
    }

    fn is_direct_between_e_and_h(&self, from: SocketAddr, to: SocketAddr) -> bool {
        let public = |device: usize| match &self.nats[device] {
            Nat::Independent { public, .. } => Some(public.ip()),
            Nat::Symmetric { ip, .. } => Some(*ip),
            Nat::None => None,
        };
        let (e, h) = (public(E), public(H));
        (Some(from.ip()) == e && Some(to.ip()) == h) || (Some(from.ip()) == h && Some(to.ip()) == e)
    }

    fn deliver(&mut self, datagram: Datagram) {
        if self.cut && self.is_direct_between_e_and_h(datagram.from, datagram.to) {
            return;
        }
        let Some((to, socket)) = self.admit(datagram.from, datagram.to) else { return };
        let mut out = vec![0u8; 65_536];
        if to == R && socket == 1 {
            if let Some(len) = self.devices[R].reflect(datagram.from, &datagram.bytes, &mut out, self.now) {
                self.send(R, 1, datagram.from, out[..len].to_vec());
            }
            return;
        }
        if socket != MAIN && !self.punch_sockets[to].contains(&socket) && !self.adopted[to].values().any(|s| *s == socket) {
            return; // closed
        }
        match self.devices[to].decapsulate(datagram.from, &datagram.bytes, &mut out, self.now) {
            Ok(Received::Packet { .. }) => self.delivered[to] += 1,
            Ok(Received::Forward(transmit)) => self.send(R, MAIN, transmit.destination, out[..transmit.len].to_vec()),
            _ => {}
        }
        if socket != MAIN && self.devices[to].is_direct_endpoint(datagram.from, self.now) {
            // The shell keeps the winner as the peer's socket and closes the others.
            self.adopted[to].insert(datagram.from, socket);
            self.punch_sockets[to].clear();
        }
    }

    fn flush(&mut self) {
        let mut out = vec![0u8; 65_536];
        for i in 0..4 {
            if let Some(open) = self.devices[i].poll_punch(&mut out, self.now) {
                self.punch_sockets[i].clear();
                for _ in 0..open.sockets {
                    let socket = self.next_socket[i];
                    self.next_socket[i] += 1;
                    self.punch_sockets[i].push(socket);
                    self.send(i, socket, open.destination, out[..open.len].to_vec());
                }
            }
            while let Some(transmit) = self.devices[i].poll_transmit(&mut out, self.now) {
                let socket = self.adopted[i].get(&transmit.destination).copied().unwrap_or(MAIN);
                self.send(i, socket, transmit.destination, out[..transmit.len].to_vec());
            }
        }
    }


    /// The control plane's part: each member tells the others what its NAT does.
    fn tell_nats(&mut self) {
        let told: Vec<Option<PeerNat>> = (0..4).map(|i| Some(PeerNat { kind: self.devices[i].nat_kind()?, reflexive: self.devices[i].reflexive_address()? })).collect();
        for i in [E, H, H2] {
            for j in [E, H, H2].into_iter().filter(|j| *j != i) {
                let (key, now) = (self.keys[j], self.now);
                self.devices[i].set_peer_nat(&key, told[j], now);
            }
        }
    }

    /// Traffic from `from` to `to` for `duration`, a packet every 100 ms, both ways.
    fn traffic(&mut self, a: usize, b: usize, duration: Duration) {
        let end = self.now + duration;
        let mut out = vec![0u8; 65_536];
        while self.now < end {
            for (from, to) in [(a, b), (b, a)] {
                let packet = ipv4_udp_packet(self.overlays[from], self.overlays[to], b"traffic");
                if let Ok(Some(transmit)) = self.devices[from].encapsulate(&packet, &mut out, self.now) {
                    let socket = self.adopted[from].get(&transmit.destination).copied().unwrap_or(MAIN);
                    self.send(from, socket, transmit.destination, out[..transmit.len].to_vec());
                }
            }
            self.run_for(Duration::from_millis(100));
        }
    }

    fn path(&self, from: usize, to: usize) -> PathKind {
        self.devices[from].peer_path(&self.keys[to], self.now)
    }

    /// Sessions with CloudPal, the NAT check, and what each says of its NAT.
    fn settle(&mut self) {
        for member in [E, H, H2] {
            let key = self.keys[R];
            let now = self.now;
            self.devices[member].connect(&key, now);
        }
        self.run_for(Duration::from_secs(3));
        self.tell_nats();
    }
}


virtual_net!(Net);

#[test]
fn the_nat_check_tells_an_endpoint_independent_nat_from_a_symmetric_one() {
    let mut net = Net::new(1);
    net.settle();
    assert_eq!(net.devices[E].nat_kind(), Some(NatKind::EndpointIndependent));
    assert_eq!(net.devices[H].nat_kind(), Some(NatKind::EndpointDependent));
    assert_eq!(net.devices[H2].nat_kind(), Some(NatKind::EndpointDependent));
    assert_eq!(net.devices[E].reflexive_address(), Some(addr("192.0.2.1:41641")));
    assert_eq!(net.devices[R].nat_kind(), None, "CloudPal checks nothing");
    // The reflector is never a path: CloudPal still reaches each member at its data address.
    let h_public = net.devices[R].peer_endpoint(&net.keys[H]).expect("endpoint");
    assert_eq!(Some(h_public), net.devices[H].reflexive_address());
}

#[test]
fn a_symmetric_and_an_endpoint_independent_side_go_direct_in_nearly_every_run() {
    let runs = 20;
    let mut direct = 0;
    for seed in 0..runs {
        let mut net = Net::new(seed);
        net.settle();
        net.traffic(E, H, Duration::from_secs(3));
        let punched = net.path(E, H) == PathKind::Direct && net.path(H, E) == PathKind::Direct;
        let (e, h) = (net.devices[E].stats(), net.devices[H].stats());
        assert_eq!(h.punch_opened, 1, "seed {seed}: one attempt");
        assert_eq!(e.punch_sprays, 1, "seed {seed}: one spray");
        assert!(e.punch_probes <= SPRAY_PROBES as u64);
        if punched {
            direct += 1;
            assert!(e.punch_probes < SPRAY_PROBES as u64, "seed {seed}: the answer did not stop the spray");
            // The traffic now goes direct: CloudPal forwards nothing more.
            let forwarded = net.devices[R].stats().relay_forwarded;
            net.traffic(E, H, Duration::from_secs(1));
            assert_eq!(net.devices[R].stats().relay_forwarded, forwarded, "seed {seed}: still relayed");
            assert!(net.delivered[H] > 0 && net.delivered[E] > 0);
        }
    }
    eprintln!("direct in {direct} of {runs} runs");
    assert!(direct >= 18, "direct in {direct} of {runs} runs");
}

/// A symmetric side with two endpoint-independent peers punches to one, then the other: the
/// shell has one set of sockets open at a time, and a second attempt must not close the first
/// one's sockets before its answer came.
#[test]
fn one_symmetric_side_punches_to_two_peers_one_after_the_other() {
    let mut net = Net::with_third(21, true);
    net.settle();
    assert_eq!(net.devices[H2].nat_kind(), Some(NatKind::EndpointIndependent));
    // E learns late what H's NAT is (as after H restarts): its answer to H's first attempt
    // comes a second after the go signal, while H has traffic with H2 too.
    let (h, now) = (net.keys[H], net.now);
    net.devices[E].set_peer_nat(&h, None, now);
    net.traffic(E, H, Duration::from_millis(300));
    net.traffic(H2, H, Duration::from_millis(700));
    net.tell_nats();
    let end = net.now + Duration::from_secs(12);
    while net.now < end {
        net.traffic(E, H, Duration::from_millis(200));
        net.traffic(H2, H, Duration::from_millis(200));
    }
    assert_eq!(net.path(H, E), PathKind::Direct);
    assert_eq!(net.path(H, H2), PathKind::Direct);
    assert_eq!(net.devices[H].stats().punch_opened, 2);
}

/// The hard side punches the moment its own NAT check is done, before the control plane has
/// told the easy side what its NAT is: the go signal waits for that instead of being lost.
#[test]
fn a_go_signal_before_the_easy_side_knows_the_peers_nat_is_answered_when_it_learns() {
    let mut net = Net::new(11);
    net.settle();
    let (h, now) = (net.keys[H], net.now);
    net.devices[E].set_peer_nat(&h, None, now);
    net.traffic(E, H, Duration::from_secs(1));
    assert_eq!(net.devices[H].stats().punch_opened, 1, "the hard side did not wait");
    assert_eq!(net.devices[E].stats().punch_sprays, 0, "sprayed without knowing the peer's NAT");
    net.tell_nats();
    net.traffic(E, H, Duration::from_secs(2));
    assert_eq!(net.devices[E].stats().punch_sprays, 1, "the signal was lost");
    assert_eq!(net.path(E, H), PathKind::Direct);
}

#[test]
fn two_symmetric_sides_stay_relayed_and_spend_nothing() {
    let mut net = Net::new(7);
    net.settle();
    net.traffic(H, H2, Duration::from_secs(120));
    assert_eq!(net.path(H, H2), PathKind::Relay);
    for side in [H, H2] {
        let stats = net.devices[side].stats();
        assert_eq!((stats.punch_opened, stats.punch_sprays, stats.punch_probes), (0, 0, 0));
    }
    assert!(net.delivered[H2] > 1000, "the relay carried the traffic");
}

#[test]
fn a_failed_attempt_is_tried_again_only_after_a_minute() {
    let mut net = Net::new(3);
    net.settle();
    net.cut = true;
    net.traffic(E, H, Duration::from_secs(30));
    assert_eq!(net.path(E, H), PathKind::Relay);
    assert_eq!(net.devices[H].stats().punch_opened, 1);
    assert_eq!(net.devices[E].stats().punch_probes, SPRAY_PROBES as u64, "the whole budget, once");
    net.traffic(E, H, ATTEMPT_EVERY - Duration::from_secs(31));
    assert_eq!(net.devices[H].stats().punch_opened, 1, "tried again within the minute");
    assert_eq!(net.devices[E].stats().punch_sprays, 1);
    net.cut = false;
    net.traffic(E, H, Duration::from_secs(5));
    assert_eq!(net.path(E, H), PathKind::Direct, "the second attempt failed");
    assert_eq!(net.devices[H].stats().punch_opened, 2);
    assert_eq!(net.devices[E].stats().punch_sprays, 2);
    // A spray without the go signal is never started: a member cannot make us probe at will.
    let (e, h) = (net.devices[E].stats(), net.devices[H].stats());
    assert!(e.punch_sprays <= h.punch_opened);
}

/// The reflector is no open reflector and no path: anything but a member's path probe in its
/// session — junk, handshake-shaped bytes, a member's data packet — gets silence, and nothing
/// it receives moves the member's endpoint at CloudPal.
#[test]
fn the_reflector_answers_a_members_probe_and_nothing_else() {
    let mut net = Net::new(5);
    net.settle();
    let mut out = vec![0u8; 2048];
    let now = net.now;
    let stranger = addr("192.0.2.200:5");
    for junk in [vec![], vec![4u8; 40], vec![1u8; 148], vec![0xffu8; 200], vec![4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9]] {
        assert_eq!(net.devices[R].reflect(stranger, &junk, &mut out, now), None);
    }
    let packet = ipv4_udp_packet(net.overlays[E], net.overlays[R], b"data through the reflector");
    let mut sealed = vec![0u8; 2048];
    let transmit = net.devices[E].encapsulate(&packet, &mut sealed, now).expect("sealed").expect("a datagram");
    let endpoint = net.devices[R].peer_endpoint(&net.keys[E]);
    assert_eq!(net.devices[R].reflect(stranger, &sealed[..transmit.len], &mut out, now), None, "a data packet answered");
    assert_eq!(net.devices[R].peer_endpoint(&net.keys[E]), endpoint, "the reflector moved a path");
    // Only relay duty reflects.
    assert_eq!(net.devices[E].reflect(stranger, &sealed[..transmit.len], &mut out, now), None);
}
