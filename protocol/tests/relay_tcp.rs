//! The TCP/443 fallback on virtual time: member A's network drops all its UDP (both ways), so
//! its hop to CloudPal (R) must run over the stream the node keeps to R — modelled here as
//! what the node makes of it, a pair of loopback addresses: what A sends to its stream address
//! reaches R from R's end of the stream, and back. B is an ordinary member. One Noise session
//! per pair carries everything, whichever way the hop goes.

mod common;
use common::Datagram;
use protocol::fallback::{FALLBACK_AFTER, UDP_RETRY};
use protocol::paths::PathKind;
use protocol::testing::VirtualNet;
use protocol::{Device, Received, StaticPublic};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const A: usize = 0;
const B: usize = 1;
const R: usize = 2;
const LATENCY: Duration = Duration::from_millis(5);

struct Net {
    now: Instant,
    devices: Vec<Device>,
    keys: Vec<StaticPublic>,
    addresses: Vec<SocketAddr>,
    overlays: Vec<IpAddr>,
    in_flight: VecDeque<Datagram>,
    /// A's network drops every UDP datagram to or from it.
    a_udp_blocked: bool,
    /// A's stream to R is up (the node's TLS link).
    stream_up: bool,
    /// Datagrams that went over the stream, and over UDP from A to R.
    over_stream: usize,
    a_udp_to_r: usize,
    delivered: Vec<Vec<Vec<u8>>>,
}

/// A's end of the stream (where its data plane sends), and R's (whence R hears A).
fn a_stream() -> SocketAddr {
    "127.0.0.1:50001".parse().expect("address")
}
fn r_stream() -> SocketAddr {
    "127.0.0.1:60001".parse().expect("address")
}

impl Net {
    fn new() -> Self {
        let now = Instant::now();
        let common::Trio { devices, keys, addresses, overlays } = common::members_and_relay(now, 20);
        Net {
            now,
            devices,
            keys,
            addresses,
            overlays,
            in_flight: VecDeque::new(),
            a_udp_blocked: true,
            stream_up: false,
            over_stream: 0,
            a_udp_to_r: 0,
            delivered: vec![Vec::new(); 3],
        }
    }

    fn send(&mut self, from: usize, to: SocketAddr, bytes: Vec<u8>) {
        let at = self.now + LATENCY;
        // The stream, both ways (a TCP connection loses nothing).
        if from == A && to == a_stream() {
            assert!(self.stream_up, "A sent to a stream that is down");
            self.over_stream += 1;
            self.in_flight.push_back(Datagram { at, from: r_stream(), to: self.addresses[R], bytes });
            return;
        }
        if from == R && to == r_stream() {
            if self.stream_up {
                self.over_stream += 1;
                self.in_flight.push_back(Datagram { at, from: a_stream(), to: self.addresses[A], bytes });
            }
            return;
        }
        if from == A && to == self.addresses[R] {
            self.a_udp_to_r += 1;
        }
        let touches_a = from == A || to == self.addresses[A];
        if touches_a && self.a_udp_blocked {
            return;
        }
        self.in_flight.push_back(Datagram { at, from: self.addresses[from], to, bytes });
    }

    fn flush(&mut self) {
        loop {
            let sent = common::poll_all(&mut self.devices, self.now);
            if sent.is_empty() {
                return;
            }
            for (from, to, bytes) in sent {
                self.send(from, to, bytes);
            }
        }
    }

    /// A packet from `from`'s overlay address to `to`'s, through the tunnel.
    fn deliver(&mut self, datagram: Datagram) {
        let Some(to) = self.addresses.iter().position(|a| *a == datagram.to) else { return };
        let mut out = vec![0u8; 65_536];
        match self.devices[to].decapsulate(datagram.from, &datagram.bytes, &mut out, self.now) {
            Ok(Received::Packet { len, .. }) => self.delivered[to].push(out[..len].to_vec()),
            Ok(Received::Forward(transmit)) => {
                let bytes = out[..transmit.len].to_vec();
                self.send(to, transmit.destination, bytes);
            }
            Ok(Received::Nothing) | Err(_) => {}
        }
    }

    /// A packet from `from`'s overlay address to `to`'s, through the tunnel.
    fn send_ip(&mut self, from: usize, to: usize, payload: &[u8]) {
        let (source, target) = (self.overlays[from], self.overlays[to]);
        if let Some((destination, bytes)) = common::encapsulate_ip(&mut self.devices[from], source, target, payload, self.now) {
            self.send(from, destination, bytes);
        }
        self.flush();
    }

    /// What the node does with the data plane's wish: brings the stream up (or down).
    fn node_follows_the_wish(&mut self) {
        let now = self.now;
        let wanted = self.devices[A].relay_stream_wanted(now);
        if wanted != self.stream_up {
            self.stream_up = wanted;
            self.devices[A].set_relay_stream(wanted.then(a_stream), now);
            self.flush();
        }
    }

    /// Runs `duration` in steps of 50 ms, the node following the data plane's wish, A sending
    /// to B each step when `traffic`.
    fn run_with(&mut self, duration: Duration, traffic: bool) {
        let end = self.now + duration;
        while self.now < end {
            if traffic {
                self.send_ip(A, B, b"tick");
            }
            self.run_for(Duration::from_millis(50));
            self.node_follows_the_wish();
        }
    }

    /// B says hello to R, so that R knows where it is (as its keepalives do); A starts its
    /// session with R, as the node does once it knows its relay.
    fn start(&mut self) {
        self.send_ip(B, R, b"hello");
        self.run_for(Duration::from_millis(100));
        let (now, r) = (self.now, self.keys[R]);
        self.devices[A].connect(&r, now);
    }

    fn path(&self, from: usize, to: usize) -> PathKind {
        self.devices[from].peer_path(&self.keys[to], self.now)
    }

    fn received(&self, who: usize, payload: &[u8]) -> bool {
        self.delivered[who].iter().any(|p| p.ends_with(payload))
    }
}

virtual_net!(Net);

#[test]
fn a_device_without_udp_moves_its_hop_to_the_stream_and_its_first_packet_arrives() {
    let mut net = Net::new();
    net.start();
    net.send_ip(A, B, b"first");
    net.run_with(FALLBACK_AFTER - Duration::from_millis(100), false);
    assert!(!net.stream_up, "asked for the stream before UDP had its chance");
    net.run_with(Duration::from_millis(700), false);
    assert!(net.stream_up, "UDP unanswered for a second, and no stream asked for");
    assert!(net.devices[A].relay_over_stream());
    assert!(net.received(B, b"first"), "the packet waiting behind the handshake was lost");
    assert_eq!(net.path(A, B), PathKind::RelayTcp);
    assert_eq!(net.path(A, R), PathKind::RelayTcp);
    // B's side is an ordinary relayed peer; R hears A at its end of the stream.
    assert_eq!(net.path(B, A), PathKind::Relay);
    assert_eq!(net.devices[R].peer_endpoint(&net.keys[A]), Some(r_stream()));
    // Replies come back the same way.
    net.send_ip(B, A, b"reply");
    net.run_for(Duration::from_millis(50));
    assert!(net.received(A, b"reply"));
    // Over the stream, the relay's view of A (the stream's far end) is no reflexive address.
    assert!(net.devices[A].observed_addresses().all(|(_, seen)| !seen.ip().is_loopback()));
}

#[test]
fn the_hop_moves_back_to_udp_within_one_retry_of_udp_working() {
    let mut net = Net::new();
    net.start();
    net.run_with(Duration::from_secs(3), true);
    assert_eq!(net.path(A, B), PathKind::RelayTcp);
    // Over the stream, idle or not, A tries UDP only every UDP_RETRY: a probe, not its traffic.
    let udp_before = net.a_udp_to_r;
    net.run_with(UDP_RETRY * 3, true);
    let probes = net.a_udp_to_r - udp_before;
    assert!((2..=4).contains(&probes), "{probes} datagrams over blocked UDP in {:?}", UDP_RETRY * 3);
    net.a_udp_blocked = false;
    let unblocked = net.now;
    let mut back = None;
    while net.now < unblocked + UDP_RETRY + Duration::from_secs(1) {
        net.run_with(Duration::from_millis(100), true);
        if net.path(A, B) == PathKind::Relay {
            back = Some(net.now - unblocked);
            break;
        }
    }
    let back = back.expect("still over the stream a retry after UDP works");
    assert!(back <= UDP_RETRY + Duration::from_millis(200), "{back:?}");
    assert!(!net.stream_up, "the stream stays up though UDP works");
    let streamed = net.over_stream;
    net.run_with(Duration::from_secs(5), true);
    assert_eq!(net.over_stream, streamed, "traffic still over the stream");
    assert!(net.received(B, b"tick"));
    assert_eq!(net.devices[R].peer_endpoint(&net.keys[A]), Some(net.addresses[A]), "R still sends to the stream");
}

#[test]
fn a_one_way_flow_over_working_udp_never_asks_for_the_stream() {
    let mut net = Net::new();
    net.a_udp_blocked = false;
    net.start();
    // Only A sends; B answers nothing but what WireGuard's timers make it.
    for _ in 0..600 {
        net.send_ip(A, B, b"one way");
        net.run_for(Duration::from_millis(50));
        assert!(!net.devices[A].relay_stream_wanted(net.now), "asked for the stream at {:?}", net.now);
    }
    assert_eq!(net.over_stream, 0);
    assert_eq!(net.path(A, B), PathKind::Relay);
}

#[test]
fn losing_the_stream_falls_back_to_udp_and_asks_for_it_again() {
    let mut net = Net::new();
    net.start();
    net.run_with(Duration::from_secs(2), true);
    assert!(net.devices[A].relay_over_stream());
    // The TLS connection breaks; the node says so.
    net.stream_up = false;
    let now = net.now;
    net.devices[A].set_relay_stream(None, now);
    assert!(!net.devices[A].relay_over_stream());
    assert_ne!(net.path(A, B), PathKind::RelayTcp);
    net.run_with(Duration::from_secs(2), true);
    assert!(net.stream_up, "not asked for again");
    assert_eq!(net.path(A, B), PathKind::RelayTcp);
    // The control plane telling the data plane of the same relay again changes nothing.
    let (now, relay) = (net.now, (net.addresses[R], net.keys[R]));
    net.devices[A].set_relay(Some(relay), now);
    assert!(net.devices[A].relay_over_stream(), "the same relay again took the hop off the stream");
}
