//! Paths and the relay, three devices on a virtual network with virtual time: two members
//! (A, B) and the owner's CloudPal (R) doing relay duty. The direct link between A and B can be
//! cut and restored; the relay can tamper with what it forwards. One Noise session between A
//! and B carries everything, whichever path it takes.

mod common;
use common::Datagram;
use protocol::paths::{DIRECT_TRUST, PROBE_INTERVAL, PathKind};
use protocol::relay::{self, HopKey};
use protocol::testing::{VirtualNet, ipv4_udp_packet};
use protocol::{Device, Error, Received, StaticPublic, StaticSecret};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const A: usize = 0;
const B: usize = 1;
const R: usize = 2;
const LATENCY: Duration = Duration::from_millis(2);


/// What the relay does to each envelope it forwards (a test's tampering).
type Tamper = Box<dyn FnMut(&mut Vec<u8>)>;

struct Net {
    now: Instant,
    devices: Vec<Device>,
    keys: Vec<StaticPublic>,
    addresses: Vec<SocketAddr>,
    overlays: Vec<IpAddr>,
    in_flight: VecDeque<Datagram>,
    /// The direct link between A and B works.
    direct: bool,
    /// Applied to every envelope the relay forwards.
    tamper: Option<Tamper>,
    /// The relay forwards nothing (it drops every envelope).
    relay_drops: bool,
    /// Forwarded envelopes, as they left the relay.
    forwarded: Vec<Vec<u8>>,
    /// Envelopes members sent to the relay, as they left the member.
    to_relay: Vec<Vec<u8>>,
    /// Every datagram sent: by whom, to where.
    sent: Vec<(usize, SocketAddr)>,
    delivered: Vec<Vec<Vec<u8>>>,
    errors: Vec<Vec<Error>>,
}

impl Net {
    fn new() -> Self {
        let now = Instant::now();
        let common::Trio { devices, keys, addresses, overlays } = common::members_and_relay(now, 0);
        Net {
            now,
            devices,
            keys,
            addresses,
            overlays,
            in_flight: VecDeque::new(),
            direct: false,
            tamper: None,
            relay_drops: false,
            forwarded: Vec::new(),
            to_relay: Vec::new(),
            sent: Vec::new(),
            delivered: vec![Vec::new(); 3],
            errors: vec![Vec::new(); 3],
        }
    }

    fn index_of(&self, address: SocketAddr) -> Option<usize> {
        self.addresses.iter().position(|a| *a == address)
    }

    fn send(&mut self, from: usize, to: SocketAddr, bytes: Vec<u8>) {
        self.sent.push((from, to));
        if from != R && to == self.addresses[R] && relay::is_envelope(&bytes) {
            self.to_relay.push(bytes.clone());
        }
        let link_ok = match (from, self.index_of(to)) {
            (A, Some(B)) | (B, Some(A)) => self.direct,
            _ => true,
        };
        if link_ok {
            self.in_flight.push_back(Datagram { at: self.now + LATENCY, from: self.addresses[from], to, bytes });
        }
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
    fn send_ip(&mut self, from: usize, to: usize, payload: &[u8]) {
        let (source, target) = (self.overlays[from], self.overlays[to]);
        if let Some((destination, bytes)) = common::encapsulate_ip(&mut self.devices[from], source, target, payload, self.now) {
            self.send(from, destination, bytes);
        }
        self.flush();
    }

    fn deliver(&mut self, datagram: Datagram) {
        let Some(to) = self.index_of(datagram.to) else { return };
        let mut out = vec![0u8; 65_536];
        match self.devices[to].decapsulate(datagram.from, &datagram.bytes, &mut out, self.now) {
            Ok(Received::Packet { len, .. }) => self.delivered[to].push(out[..len].to_vec()),
            Ok(Received::Forward(_)) if self.relay_drops => {}
            Ok(Received::Forward(transmit)) => {
                let mut bytes = out[..transmit.len].to_vec();
                if let Some(tamper) = self.tamper.as_mut() {
                    tamper(&mut bytes);
                }
                self.forwarded.push(bytes.clone());
                self.send(to, transmit.destination, bytes);
            }
            Ok(Received::Nothing) => {}
            Err(error) => self.errors[to].push(error),
        }
    }


    fn path(&self, from: usize, to: usize) -> PathKind {
        self.devices[from].peer_path(&self.keys[to], self.now)
    }

    /// Sends a packet A → B and lets it arrive; whether it did.
    fn a_to_b(&mut self, payload: &[u8]) -> bool {
        let before = self.delivered[B].len();
        self.send_ip(A, B, payload);
        self.run_for(Duration::from_millis(50));
        self.delivered[B][before..].iter().any(|p| p.ends_with(payload))
    }

    /// Members say hello to CloudPal so it knows where they are (as their keepalives do).
    fn register(&mut self) {
        self.send_ip(A, R, b"hello");
        self.send_ip(B, R, b"hello");
        self.run_for(Duration::from_millis(100));
    }

    fn handshakes(&self, who: usize, with: usize) -> u64 {
        self.devices[who].peer_stats(&self.keys[with]).expect("peer").handshakes_completed
    }
}


virtual_net!(Net);

#[test]
fn relay_carries_the_first_packet_when_no_direct_path_is_known() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"first"), "errors {:?}", net.errors);
    assert_eq!(net.path(A, B), PathKind::Relay);
    assert_eq!(net.path(B, A), PathKind::Relay);
    assert!(!net.forwarded.is_empty());
    assert_eq!(net.devices[R].stats().relay_forwarded as usize, net.forwarded.len());
}

/// A device that tries to reach a peer before it knows any route (no endpoint, no relay yet)
/// sends the handshake as soon as the relay is known, not after WireGuard's 5 s retry.
#[test]
fn a_handshake_dropped_for_want_of_a_route_goes_out_as_soon_as_one_appears() {
    let mut net = Net::new();
    net.register();
    net.devices[A].set_relay(None, net.now);
    // The node greets a member it learns of before its relay is known (or any endpoint).
    let (now, b) = (net.now, net.keys[B]);
    net.devices[A].connect(&b, now);
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.handshakes(A, B), 0, "a handshake without a route");
    // A packet sent meanwhile waits for it rather than being dropped.
    let packet = ipv4_udp_packet(net.overlays[A], net.overlays[B], b"early bird");
    let mut out = vec![0u8; 65_536];
    let now = net.now;
    assert!(matches!(net.devices[A].encapsulate(&packet, &mut out, now), Ok(None)), "not queued");
    net.devices[A].set_relay(Some((net.addresses[R], net.keys[R])), now);
    net.run_for(Duration::from_millis(300));
    assert_eq!(net.handshakes(A, B), 1, "the handshake waited for its retry timer");
    assert!(net.delivered[B].iter().any(|p| p.ends_with(b"early bird")), "the waiting packet was lost");
    assert!(net.a_to_b(b"now"), "errors {:?}", net.errors);
}

/// Two members greet each other at the same moment (both start a handshake; one also has a
/// packet waiting): the crossing handshakes settle, and the waiting packet arrives at once.
#[test]
fn crossing_handshakes_deliver_the_waiting_packet() {
    let mut net = Net::new();
    net.register();
    let (now, a) = (net.now, net.keys[A]);
    net.devices[B].connect(&a, now);
    let packet = ipv4_udp_packet(net.overlays[A], net.overlays[B], b"waiting");
    let mut out = vec![0u8; 65_536];
    assert!(matches!(net.devices[A].encapsulate(&packet, &mut out, now), Ok(None)), "queued behind the handshake");
    net.run_for(Duration::from_millis(100));
    assert!(net.delivered[B].iter().any(|p| p.ends_with(b"waiting")), "the waiting packet never arrived; errors {:?}", net.errors);
}

#[test]
fn traffic_moves_to_direct_when_probes_get_through_and_back_to_the_relay_when_they_stop() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"via relay"));
    // Candidates arrive by signalling; the direct link starts working.
    let (a_address, b_address) = (net.addresses[A], net.addresses[B]);
    net.devices[A].set_peer_candidates(&net.keys[B].clone(), &[b_address], net.now);
    net.devices[B].set_peer_candidates(&net.keys[A].clone(), &[a_address], net.now);
    net.direct = true;
    net.run_for(PROBE_INTERVAL * 2);
    assert_eq!(net.path(A, B), PathKind::Direct);
    assert_eq!(net.path(B, A), PathKind::Direct);
    let forwarded = net.forwarded.len();
    assert!(net.a_to_b(b"direct now"));
    assert_eq!(net.forwarded.len(), forwarded, "the relay saw none of it");
    // Learned reflexive addresses: how A's probes looked to B.
    assert_eq!(net.devices[A].observed_addresses().find(|(k, _)| **k == net.keys[B]).map(|(_, a)| *a), Some(a_address));

    // The direct link dies mid-session: within the trust window plus a probe interval,
    // traffic is back on the relay, in the same session.
    let sessions = net.handshakes(A, B);
    net.direct = false;
    let broke_at = net.now;
    let mut back_on_relay = None;
    for i in 0..100u32 {
        net.send_ip(A, B, format!("tick {i}").as_bytes());
        net.run_for(Duration::from_millis(20));
        if net.path(A, B) == PathKind::Relay && net.delivered[B].last().is_some_and(|p| p.ends_with(format!("tick {i}").as_bytes())) {
            back_on_relay = Some(net.now - broke_at);
            break;
        }
    }
    let took = back_on_relay.expect("fell back to the relay");
    assert!(took <= DIRECT_TRUST + PROBE_INTERVAL, "fallback took {took:?}");
    assert_eq!(net.handshakes(A, B), sessions, "no new handshake: the session survived the switch");

    // And back to direct when the link returns.
    net.direct = true;
    net.run_for(PROBE_INTERVAL * 2);
    net.send_ip(A, B, b"keep going");
    net.run_for(PROBE_INTERVAL * 2);
    assert_eq!(net.path(A, B), PathKind::Direct);
}

#[test]
fn rl02_frames_altered_or_replayed_by_the_relay_are_dropped() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"establish"));
    // Flip a bit of the inner message and re-tag for the next hop as a malicious relay
    // could (it holds the hop key): the end-to-end tag still catches it.
    let relay_to_b = HopKey::between(&StaticSecret::from_bytes([3; 32]), &net.keys[B]);
    net.tamper = Some(Box::new(move |bytes: &mut Vec<u8>| {
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        relay::retag(bytes, &relay_to_b);
    }));
    assert!(!net.a_to_b(b"altered"), "an altered frame was delivered");
    assert!(net.errors[B].contains(&Error::DecryptionFailed), "caught end to end: {:?}", net.errors[B]);
    net.tamper = None;
    // Replay: the relay sends an earlier frame again.
    assert!(net.a_to_b(b"original"));
    let replay = net.forwarded.last().expect("forwarded").clone();
    let before = net.delivered[B].len();
    let (relay, b) = (net.addresses[R], net.addresses[B]);
    net.in_flight.push_back(Datagram { at: net.now, from: relay, to: b, bytes: replay });
    net.run_for(Duration::from_millis(10));
    assert_eq!(net.delivered[B].len(), before, "a replayed frame was delivered");
    assert!(net.errors[B].iter().any(|e| matches!(e, Error::Replay(_))), "{:?}", net.errors[B]);
}

/// The hop tag covers a transport message's header, length and Poly1305 tag, not every byte
/// between (relay.rs); a body altered on the wire by someone without any key passes the hop
/// and is dropped by the destination's end-to-end check, like any corrupted packet.
#[test]
fn rl02_a_body_altered_on_the_wire_is_dropped_end_to_end() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"establish"));
    net.tamper = Some(Box::new(|bytes: &mut Vec<u8>| {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x80;
    }));
    let payload = vec![0x5a; 1200];
    assert!(!net.a_to_b(&payload), "an altered body was delivered");
    assert!(net.errors[B].contains(&Error::DecryptionFailed), "caught end to end: {:?}", net.errors[B]);
    net.tamper = None;
    assert!(net.a_to_b(&payload), "the session survives");
}

#[test]
fn rl03_a_non_member_cannot_use_the_relay() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"warm up"));
    let genuine = net.forwarded.last().expect("forwarded").clone();
    let refused_before = net.devices[R].stats().relay_refused;
    let forwarded_before = net.devices[R].stats().relay_forwarded;
    // An outsider claims to be A (A's sender id), but cannot make A's tag.
    let mut forged = net.to_relay.last().expect("A's envelope").clone();
    forged[20..28].copy_from_slice(&u64::MAX.to_be_bytes());
    forged[28..44].fill(0x55);
    // An outsider with its own id, unknown to the relay.
    let mut stranger = genuine;
    stranger[4..12].fill(0x77);
    let relay = net.addresses[R];
    for bytes in [forged, stranger] {
        net.in_flight.push_back(Datagram { at: net.now, from: "192.0.2.99:1".parse().expect("addr"), to: relay, bytes });
    }
    net.run_for(Duration::from_millis(10));
    assert_eq!(net.devices[R].stats().relay_forwarded, forwarded_before);
    assert_eq!(net.devices[R].stats().relay_refused, refused_before + 2);
}

#[test]
fn members_over_their_relay_quota_are_dropped() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"warm up"));
    let payload = vec![7u8; 1300];
    // Far more than the burst, all at one instant.
    for _ in 0..(protocol::share::burst_bytes(protocol::share::DEFAULT_RATE_BYTES_PER_SECOND) / 1300 + 100) {
        net.send_ip(A, B, &payload);
    }
    net.run_for(Duration::from_millis(10));
    assert!(net.devices[R].stats().relay_over_quota > 0);
    // The budget refills: later traffic flows again.
    net.run_for(Duration::from_secs(1));
    assert!(net.a_to_b(b"later"));
}

/// Issue #12: a captured envelope replayed from elsewhere (the relay hop has no other
/// protection against it) is neither forwarded again nor allowed to move the sender's endpoint
/// at CloudPal, and costs the sender none of its quota.
#[test]
fn dp14_a_replayed_envelope_neither_moves_the_sender_nor_is_forwarded() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"captured"));
    let captured = net.to_relay.last().expect("an envelope to the relay").clone();
    let forwarded_before = net.devices[R].stats().relay_forwarded;
    let attacker: SocketAddr = "192.0.2.66:4444".parse().expect("addr");
    for _ in 0..3 {
        net.in_flight.push_back(Datagram { at: net.now, from: attacker, to: net.addresses[R], bytes: captured.clone() });
    }
    net.run_for(Duration::from_millis(10));
    assert_eq!(net.devices[R].stats().relay_forwarded, forwarded_before, "a replay was forwarded");
    assert_eq!(net.devices[R].stats().relay_replayed, 3);
    assert_eq!(net.devices[R].peer_endpoint(&net.keys[A]), Some(net.addresses[A]), "a replay moved A's endpoint at CloudPal");
    // A, still where it was, keeps getting through, both ways.
    assert!(net.a_to_b(b"after the replay"));
    net.send_ip(B, A, b"reply");
    net.run_for(Duration::from_millis(50));
    assert!(net.delivered[A].iter().any(|p| p.ends_with(b"reply")));
}

/// An envelope that arrives late from an old address (reordered behind a newer one, say
/// after a roam) is still forwarded, but the sender's endpoint stays where the newest came from.
#[test]
fn only_the_newest_envelope_moves_an_endpoint() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"warm up"));
    net.send_ip(A, B, b"late");
    let relay = net.addresses[R];
    let position = net.in_flight.iter().rposition(|d| d.to == relay).expect("in flight to the relay");
    let late = net.in_flight.remove(position).expect("present");
    assert!(net.a_to_b(b"newer"));
    let forwarded_before = net.devices[R].stats().relay_forwarded;
    let old_address: SocketAddr = "192.0.2.77:41641".parse().expect("addr");
    net.in_flight.push_back(Datagram { at: net.now, from: old_address, to: relay, bytes: late.bytes });
    net.run_for(Duration::from_millis(10));
    assert_eq!(net.devices[R].stats().relay_forwarded, forwarded_before + 1, "a late envelope still goes on");
    assert_eq!(net.devices[R].peer_endpoint(&net.keys[A]), Some(net.addresses[A]), "but does not move A");
}

/// RL-04: a relay that drops (or delays) everything costs availability and nothing else: the
/// session survives, no key or path is given up to it, the direct path carries the traffic
/// where there is one, and relayed traffic resumes when the relay forwards again.
#[test]
fn rl04_a_relay_that_drops_everything_degrades_availability_only() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"through the relay"));
    let sessions = net.handshakes(A, B);
    net.relay_drops = true;
    assert!(!net.a_to_b(b"dropped"), "a dropping relay delivered");
    // Where a direct path exists, probes find it and traffic flows without the relay.
    let (a_address, b_address) = (net.addresses[A], net.addresses[B]);
    net.devices[A].set_peer_candidates(&net.keys[B].clone(), &[b_address], net.now);
    net.devices[B].set_peer_candidates(&net.keys[A].clone(), &[a_address], net.now);
    net.direct = true;
    net.run_for(PROBE_INTERVAL * 2);
    assert!(net.a_to_b(b"direct now"), "no direct fallback: {:?}", net.errors);
    assert_eq!(net.path(A, B), PathKind::Direct);
    // The relay forwards again and the direct path goes: relayed traffic resumes, same session.
    net.relay_drops = false;
    net.direct = false;
    let mut resumed = false;
    for i in 0..200 {
        net.send_ip(A, B, format!("again {i}").as_bytes());
        net.run_for(Duration::from_millis(20));
        if net.delivered[B].last().is_some_and(|p| p.ends_with(format!("again {i}").as_bytes())) {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "relayed traffic never resumed");
    assert_eq!(net.handshakes(A, B), sessions, "the session survived the dropping relay");
}

/// RL-05 for our own path signalling (the data plane's DCUtR): a member that hands out bogus
/// or third parties' addresses as candidates costs at most a bounded number of probes per
/// round, and nothing answering at them — an impostor replaying a genuine datagram, say — can
/// move the path there: only a packet of the peer's own session can.
#[test]
fn rl05_bogus_candidates_cost_bounded_probes_and_win_no_path() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"warm up"));
    let bogus: Vec<SocketAddr> = (1..=50u16).map(|i| SocketAddr::from(([192, 0, 2, 200], 1000 + i))).collect();
    net.devices[A].set_peer_candidates(&net.keys[B].clone(), &bogus, net.now);
    let before = net.sent.len();
    net.send_ip(A, B, b"keep the peer active");
    net.run_for(PROBE_INTERVAL * 4);
    let probes: std::collections::BTreeSet<SocketAddr> = net.sent[before..].iter().filter(|(from, to)| *from == A && bogus.contains(to)).map(|(_, to)| *to).collect();
    assert!(!probes.is_empty(), "the candidates were never probed");
    assert!(probes.len() <= protocol::paths::MAX_CANDIDATES, "{} bogus addresses probed", probes.len());
    // An impostor at a bogus address answers with a datagram it captured on the relay's link.
    let captured = net.forwarded.last().expect("a forwarded datagram").clone();
    let impostor = *probes.iter().next().expect("probed");
    net.in_flight.push_back(Datagram { at: net.now, from: impostor, to: net.addresses[A], bytes: captured });
    net.run_for(Duration::from_millis(10));
    assert_eq!(net.path(A, B), PathKind::Relay, "an impostor's address became the path");
    assert!(net.a_to_b(b"still through the relay"));
}

/// An endpoint inside the overlay (a member's overlay address, as a control connection that ran
/// through the tunnel would report it) is never taken as a peer's direct path: the tunnel would
/// carry itself. Traffic keeps its path and nothing is sent there.
#[test]
fn an_endpoint_inside_the_overlay_is_never_a_direct_path() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"warm up"));
    let inside = SocketAddr::new(net.overlays[B], 41641);
    let before = net.sent.len();
    net.devices[A].set_peer_endpoint(&net.keys[B].clone(), inside, net.now);
    assert!(net.a_to_b(b"still delivered"), "{:?}", net.errors);
    net.send_ip(A, B, b"keep the peer active");
    net.run_for(PROBE_INTERVAL * 3);
    assert!(!net.sent[before..].iter().any(|(_, to)| *to == inside), "a datagram went to an overlay address");
    assert_eq!(net.path(A, B), PathKind::Relay);
}

/// Issue #15 (quiet when idle): a member behind a NAT holds its mapping toward the relay with
/// hop keepalives alone — bare authenticated headers, one per interval of silence, no session
/// and no handshake kept up for them. The relay follows the member to a new address by them
/// (a forged or replayed one moves nothing), and after ten idle minutes the other member's
/// packet reaches it through the relay.
#[test]
fn an_idle_member_holds_its_relay_mapping_with_hop_keepalives_alone() {
    let mut net = Net::new();
    net.register();
    assert!(net.a_to_b(b"before"), "errors {:?}", net.errors);
    let every = Duration::from_secs(25);
    net.devices[A].set_relay_keepalive(Some(every));
    // (The NAT check's three rounds, unanswered here, are over by then.)
    net.run_for(Duration::from_secs(5));
    let (sent_before, to_relay_before) = (net.sent.len(), net.to_relay.len());
    let handshakes_before = (net.handshakes(A, R), net.handshakes(A, B));
    net.run_for(Duration::from_secs(600));
    let sent_by_a: Vec<SocketAddr> = net.sent[sent_before..].iter().filter(|(who, _)| *who == A).map(|(_, to)| *to).collect();
    assert!((23..=25).contains(&sent_by_a.len()), "{} datagrams in ten idle minutes", sent_by_a.len());
    assert!(sent_by_a.iter().all(|to| *to == net.addresses[R]), "an idle member sent elsewhere than its relay");
    // (B's one WireGuard keepalive for the packet it got goes through the relay too.)
    let keepalives: Vec<Vec<u8>> = net.to_relay[to_relay_before..].iter().filter(|k| k.len() == relay::HOP_KEEPALIVE_LEN).cloned().collect();
    assert_eq!(keepalives.len(), sent_by_a.len(), "the idle member sent something else than hop keepalives");
    assert_eq!(net.devices[R].stats().relay_keepalives as usize, keepalives.len());
    assert_eq!((net.handshakes(A, R), net.handshakes(A, B)), handshakes_before, "a handshake for nothing");
    assert_eq!(net.path(B, A), PathKind::None, "the sessions lapsed as WireGuard's do");

    // A forged keepalive from elsewhere moves nothing; neither does a replayed one.
    let elsewhere: SocketAddr = "192.0.2.66:41641".parse().expect("address");
    let mut forged = keepalives.last().expect("a keepalive").clone();
    relay::retag(&mut forged, &HopKey::between(&StaticSecret::from_bytes([7; 32]), &net.keys[R]));
    let replayed = keepalives[0].clone();
    for bytes in [forged, replayed] {
        let at = net.now;
        net.in_flight.push_back(Datagram { at, from: elsewhere, to: net.addresses[R], bytes });
        net.run_for(Duration::from_millis(10));
    }
    assert_eq!(net.devices[R].peer_endpoint(&net.keys[A]), Some(net.addresses[A]), "a forged or replayed keepalive moved the member");

    // The member's NAT gives it a new outside address: the next keepalive tells the relay.
    let roamed: SocketAddr = "192.0.2.99:1024".parse().expect("address");
    net.addresses[A] = roamed;
    net.run_for(every + Duration::from_secs(1));
    assert_eq!(net.devices[R].peer_endpoint(&net.keys[A]), Some(roamed));
    let before = net.delivered[A].len();
    net.send_ip(B, A, b"after ten minutes");
    net.run_for(Duration::from_millis(100));
    assert!(net.delivered[A][before..].iter().any(|p| p.ends_with(b"after ten minutes")), "errors {:?}", net.errors);
}

/// GUEST-01 in the data plane: A is a guest. CloudPal relays for it only towards a device
/// shared with it; that device takes only its shared port, never a forged source, and sends
/// the guest nothing from a port it did not share.
#[test]
fn guest01_a_guest_reaches_only_its_shared_port_through_the_relay() {
    use protocol::{GuestRules, IpPrefix, PeerConfig};
    use std::collections::BTreeSet;
    let mut net = Net::new();
    let (a_key, a_overlay, b_key) = (net.keys[A], net.overlays[A], net.keys[B]);
    let (b_overlay, r_overlay) = (net.overlays[B], net.overlays[R]);
    let guest = |local: IpAddr, shared: Option<Vec<(u16, u16)>>, relay_to: BTreeSet<StaticPublic>| PeerConfig {
        static_public: a_key,
        allowed_ips: vec![IpPrefix::host(a_overlay)],
        endpoint: None,
        persistent_keepalive: None,
        guest: Some(GuestRules { local: vec![local], shared, internet: false, overlay: vec![IpPrefix::new("100.64.0.0".parse().unwrap(), 10).unwrap()], relay_to }),
    };
    // B shares port 4000 (where the test packets go); CloudPal relays nothing for A yet.
    net.devices[R].upsert_peer(guest(r_overlay, None, BTreeSet::new()));
    net.devices[B].upsert_peer(guest(b_overlay, Some(vec![(4000, 4000)]), BTreeSet::new()));
    net.register();
    let refused = net.devices[R].stats().relay_refused;
    assert!(!net.a_to_b(b"not shared at the relay"));
    assert!(net.devices[R].stats().relay_refused > refused, "the relay forwarded for a guest to an unshared device");
    // Shared with B: the relay carries it (once the handshake is retried).
    net.devices[R].upsert_peer(guest(r_overlay, None, [b_key].into()));
    net.send_ip(A, B, b"shared now");
    net.run_for(Duration::from_secs(6));
    assert!(net.delivered[B].iter().any(|p| p.ends_with(b"shared now")), "errors {:?}", net.errors);
    // Only the shared port: with port 22 shared instead, the same packet is dropped at B.
    net.devices[B].upsert_peer(guest(b_overlay, Some(vec![(22, 22)]), BTreeSet::new()));
    let refused = net.devices[B].stats().rx_guest_refused;
    assert!(!net.a_to_b(b"wrong port"));
    assert_eq!(net.devices[B].stats().rx_guest_refused, refused + 1);
    // A forged source (CloudPal's overlay address) is dropped by cryptokey routing.
    net.devices[B].upsert_peer(guest(b_overlay, Some(vec![]), BTreeSet::new()));
    let now = net.now;
    let (destination, bytes) = common::encapsulate_ip(&mut net.devices[A], r_overlay, b_overlay, b"forged", now).expect("sent");
    net.send(A, destination, bytes);
    net.run_for(Duration::from_millis(50));
    assert!(!net.delivered[B].iter().any(|p| p.ends_with(b"forged")));
    assert!(net.errors[B].contains(&Error::SourceNotAllowed));
    // B never calls the guest from a port it did not share.
    net.devices[B].upsert_peer(guest(b_overlay, Some(vec![(22, 22)]), BTreeSet::new()));
    let packet = ipv4_udp_packet(b_overlay, a_overlay, b"unasked");
    let mut out = vec![0u8; 65_536];
    assert_eq!(net.devices[B].encapsulate(&packet, &mut out, now), Err(Error::GuestRefused));
    assert_eq!(net.devices[B].stats().tx_guest_refused, 1);
}
