//! Encapsulate + decapsulate of 1420-byte packets on one core: our `Tunnel` (and the whole
//! `Device`) against boringtun's `Tunn` in the same run, then the ratio.
//!
//! Criterion measures each implementation; because clock-frequency drift favours whichever
//! runs at the better moment, the ratio printed at the end comes from an interleaved A/B loop
//! (median over rounds), not from comparing two sequential criterion runs.
//!
//! Run: `cargo bench -p protocol --bench throughput`

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use criterion::{BenchmarkId, Criterion, Throughput};
use protocol::testing::{Pair, Side, ipv4_udp_packet};
use protocol::handshake::ReceivedInitiation;
use protocol::wire::{DEFAULT_MTU, Message};
use protocol::{Decapsulated, Encapsulated, PresharedKey, StaticSecret, Tunnel, TunnelConfig, WallClock};
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The MTU every peer uses on the benchmark topology.
const PACKET_LEN: usize = 1420;
/// Interleaved rounds and packets per round for the printed ratio.
const ROUNDS: usize = 101;
const PACKETS_PER_ROUND: u32 = 20_000;

/// One implementation's sender and receiver, already past the handshake.
trait RoundTrip {
    fn name(&self) -> &'static str;
    /// Encapsulates one packet and decapsulates the datagram.
    fn round_trip(&mut self, packet: &[u8]);
}

fn main() {
    let packet = packet();
    let mut implementations: Vec<Box<dyn RoundTrip>> =
        vec![Box::new(OurTunnel::new()), Box::new(OurDevice::new()), Box::new(Boringtun::new())];
    let mut criterion = Criterion::default().measurement_time(Duration::from_secs(4)).configure_from_args();
    let mut group = criterion.benchmark_group("encap_decap_1420");
    group.throughput(Throughput::Bytes(PACKET_LEN as u64));
    for implementation in &mut implementations {
        group.bench_function(BenchmarkId::from_parameter(implementation.name()), |bench| {
            bench.iter(|| implementation.round_trip(black_box(&packet)))
        });
    }
    group.finish();
    criterion.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        print_interleaved(&mut implementations, &packet);
    }
}

fn print_interleaved(implementations: &mut [Box<dyn RoundTrip>], packet: &[u8]) {
    let mut per_packet: Vec<Vec<f64>> = vec![Vec::new(); implementations.len()];
    for _ in 0..ROUNDS {
        for (i, implementation) in implementations.iter_mut().enumerate() {
            let start = Instant::now();
            for _ in 0..PACKETS_PER_ROUND {
                implementation.round_trip(black_box(packet));
            }
            per_packet[i].push(start.elapsed().as_nanos() as f64 / f64::from(PACKETS_PER_ROUND));
        }
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let medians: Vec<f64> = per_packet.iter_mut().map(median).collect();
    let boringtun = medians[medians.len() - 1];
    println!("\nencapsulate+decapsulate, {PACKET_LEN}-byte packets, one core, median of {ROUNDS} interleaved rounds:");
    for (implementation, ns) in implementations.iter().zip(&medians) {
        println!(
            "  {:<18} {:7.1} ns/packet  {:.3} GB/s  {:.3}x boringtun",
            implementation.name(),
            ns,
            PACKET_LEN as f64 / ns,
            boringtun / ns
        );
    }
}

fn packet() -> Vec<u8> {
    let src: IpAddr = "100.64.0.1".parse().expect("ip");
    let dst: IpAddr = "100.64.0.2".parse().expect("ip");
    ipv4_udp_packet(src, dst, &vec![0xab; PACKET_LEN - 28])
}

/// A connected harness pair whose tunnels the benchmark then drives directly.
fn connected_pair() -> Pair {
    let mut pair = Pair::new(1);
    let hello = pair.packet(Side::A, b"hello");
    pair.send_ip(Side::A, &hello).expect("queued");
    pair.run_for(Duration::from_millis(50));
    assert_eq!(pair.b.delivered.len(), 1, "handshake completed");
    pair
}

struct Buffers {
    datagram: Vec<u8>,
    plaintext: Vec<u8>,
}

impl Buffers {
    fn new() -> Self {
        Self { datagram: vec![0; 2048], plaintext: vec![0; 2048] }
    }
}

/// CloudPal's per-peer `Tunnel`, the layer comparable to boringtun's `Tunn`, held directly
/// and handshaken through the public API.
struct OurTunnel {
    a: Tunnel,
    b: Tunnel,
    now: Instant,
    buffers: Buffers,
}

impl OurTunnel {
    fn new() -> Self {
        let now = Instant::now();
        let clock = WallClock { anchor: now, unix_time_at_anchor: Duration::from_secs(1_800_000_000) };
        let (secret_a, secret_b) = (StaticSecret::from_bytes([1; 32]), StaticSecret::from_bytes([2; 32]));
        let config = |local: &StaticSecret, peer: &StaticSecret| TunnelConfig {
            local_static: local.clone(),
            peer_static: peer.public_key(),
            psk: PresharedKey::none(),
            persistent_keepalive: None,
            mtu: DEFAULT_MTU,
            clock,
        };
        let mut a = Tunnel::new(config(&secret_a, &secret_b), [1; 32]);
        let mut b = Tunnel::new(config(&secret_b, &secret_a), [2; 32]);
        let mut buffers = Buffers::new();
        let Buffers { datagram, plaintext } = &mut buffers;
        // -> initiation
        assert_eq!(a.encapsulate(&packet(), datagram, now), Ok(Encapsulated::Queued));
        let len = a.poll_transmit(datagram, now).expect("initiation");
        let Ok(Message::Initiation(initiation)) = Message::parse(&datagram[..len]) else { panic!("initiation") };
        let received = ReceivedInitiation::read(&secret_b, &PresharedKey::none(), &initiation, [3; 32]).expect("read");
        b.handle_initiation(received, now).expect("accepted");
        // <- response
        let len = b.poll_transmit(datagram, now).expect("response");
        assert_eq!(a.decapsulate(&datagram[..len], plaintext, now), Ok(Decapsulated::HandshakeComplete));
        // -> the queued packet confirms the keys
        let len = a.poll_transmit(datagram, now).expect("queued packet");
        assert!(matches!(b.decapsulate(&datagram[..len], plaintext, now), Ok(Decapsulated::Packet(_))));
        Self { a, b, now, buffers }
    }
}

impl RoundTrip for OurTunnel {
    fn name(&self) -> &'static str {
        "cloudpal Tunnel"
    }

    fn round_trip(&mut self, packet: &[u8]) {
        let Buffers { datagram, plaintext } = &mut self.buffers;
        let Ok(Encapsulated::Datagram(len)) = self.a.encapsulate(packet, datagram, self.now) else {
            panic!("no session")
        };
        black_box(self.b.decapsulate(&datagram[..len], plaintext, self.now).expect("decapsulate"));
    }
}

/// CloudPal's whole `Device`: routing, index lookup and source check included.
struct OurDevice {
    pair: Pair,
    from: SocketAddr,
    now: Instant,
    buffers: Buffers,
}

impl OurDevice {
    fn new() -> Self {
        let pair = connected_pair();
        let (from, now) = (pair.a.address, pair.now);
        Self { pair, from, now, buffers: Buffers::new() }
    }
}

impl RoundTrip for OurDevice {
    fn name(&self) -> &'static str {
        "cloudpal Device"
    }

    fn round_trip(&mut self, packet: &[u8]) {
        let Buffers { datagram, plaintext } = &mut self.buffers;
        let transmit = self.pair.a.device.encapsulate(packet, datagram, self.now).expect("ok").expect("sent");
        let received =
            self.pair.b.device.decapsulate(self.from, &datagram[..transmit.len], plaintext, self.now).expect("ok");
        black_box(received);
    }
}

struct Boringtun {
    a: Tunn,
    b: Tunn,
    buffers: Buffers,
}

impl Boringtun {
    fn new() -> Self {
        let secret_a = x25519::StaticSecret::from([1u8; 32]);
        let secret_b = x25519::StaticSecret::from([2u8; 32]);
        let public_a = x25519::PublicKey::from(&secret_a);
        let public_b = x25519::PublicKey::from(&secret_b);
        let mut a = Tunn::new(secret_a, public_b, None, None, 1, None);
        let mut b = Tunn::new(secret_b, public_a, None, None, 2, None);
        let (mut buf1, mut buf2) = (vec![0u8; 2048], vec![0u8; 2048]);
        // -> initiation, <- response, -> keepalive
        let TunnResult::WriteToNetwork(init) = a.format_handshake_initiation(&mut buf1, false) else {
            panic!("initiation")
        };
        let TunnResult::WriteToNetwork(response) = b.decapsulate(None, init, &mut buf2) else { panic!("response") };
        let TunnResult::WriteToNetwork(keepalive) = a.decapsulate(None, response, &mut buf1) else {
            panic!("keepalive")
        };
        let keepalive = keepalive.to_vec();
        let _ = b.decapsulate(None, &keepalive, &mut buf2);
        Self { a, b, buffers: Buffers::new() }
    }
}

impl RoundTrip for Boringtun {
    fn name(&self) -> &'static str {
        "boringtun Tunn"
    }

    fn round_trip(&mut self, packet: &[u8]) {
        let Buffers { datagram, plaintext } = &mut self.buffers;
        let TunnResult::WriteToNetwork(datagram) = self.a.encapsulate(packet, datagram) else { panic!("encapsulate") };
        let TunnResult::WriteToTunnelV4(out, _) = self.b.decapsulate(None, datagram, plaintext) else {
            panic!("decapsulate")
        };
        black_box(out);
    }
}
