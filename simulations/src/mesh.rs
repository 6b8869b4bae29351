//! A full mesh: every node knows every other and sends each one packet; the simulation runs
//! until every pair holds a session both ways or the deadline passes.

use protocol::testing::ipv4_udp_packet;
use protocol::wire::DEFAULT_MTU;
use protocol::{Device, DeviceConfig, IpPrefix, PeerConfig, PresharedKey, Received, StaticSecret, WallClock};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Parameters of one mesh run.
#[derive(Debug, Clone, Copy)]
pub struct MeshParameters {
    pub nodes: usize,
    pub seed: u64,
    /// Probability that any one datagram is lost.
    pub loss: f64,
    pub latency: Duration,
    /// Give up after this much virtual time.
    pub deadline: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshReport {
    /// Ordered pairs (i, j) where i holds a confirmed session with j.
    pub sessions: usize,
    pub ordered_pairs: usize,
    /// Virtual time until the last session was confirmed, if all were.
    pub converged_after: Option<Duration>,
    pub datagrams_sent: u64,
    pub datagrams_lost: u64,
    /// Inner packets delivered to the right node from the right source.
    pub packets_delivered: u64,
}

/// One scheduled delivery; ordered by time, then by sequence for determinism.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Delivery {
    at: Instant,
    sequence: u64,
    to: usize,
    from: usize,
    bytes: Vec<u8>,
}

pub fn run_mesh(parameters: MeshParameters) -> MeshReport {
    let mut rng = ChaCha20Rng::seed_from_u64(parameters.seed);
    let start = Instant::now();
    let clock = WallClock { anchor: start, unix_time_at_anchor: Duration::from_secs(1_800_000_000) };
    let psk = PresharedKey::from_bytes([9; 32]);
    let count = parameters.nodes;
    let overlay = |i: usize| IpAddr::V4(Ipv4Addr::from(0x6440_0000u32 + 1 + i as u32));
    let underlay = |i: usize| SocketAddr::from((Ipv4Addr::from(0xc000_0200u32 + (i as u32 % 250)), 10_000 + (i / 250) as u16));
    let address_owner = |address: SocketAddr| {
        let SocketAddr::V4(v4) = address else { return None };
        let host = (u32::from(*v4.ip()) - 0xc000_0200) as usize;
        Some(host + 250 * usize::from(v4.port() - 10_000)).filter(|i| *i < count)
    };
    let secrets: Vec<StaticSecret> = (0..count).map(|_| StaticSecret::generate(&mut rng)).collect();
    let mut devices: Vec<Device> = secrets
        .iter()
        .map(|secret| {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            Device::new(
                DeviceConfig {
                    static_secret: secret.clone(),
                    psk: psk.clone(),
                    under_load_threshold: protocol::device::DEFAULT_UNDER_LOAD_THRESHOLD,
                    mtu: DEFAULT_MTU,
                    clock,
                },
                seed,
            )
        })
        .collect();
    for (i, device) in devices.iter_mut().enumerate() {
        for (j, secret) in secrets.iter().enumerate().filter(|(j, _)| *j != i) {
            device.upsert_peer(PeerConfig {
                static_public: secret.public_key(),
                allowed_ips: vec![IpPrefix::host(overlay(j))],
                endpoint: Some(underlay(j)),
                persistent_keepalive: None,
                guest: None,
            });
        }
    }

    let mut queue = BinaryHeap::new();
    let mut sequence = 0u64;
    let mut report = MeshReport {
        sessions: 0,
        ordered_pairs: count * count.saturating_sub(1),
        converged_after: None,
        datagrams_sent: 0,
        datagrams_lost: 0,
        packets_delivered: 0,
    };
    let mut buffer = vec![0u8; 65_536];
    let mut now = start;
    // Every node greets every other: the packets wait behind the handshakes they trigger.
    for (i, device) in devices.iter_mut().enumerate() {
        for j in (0..count).filter(|j| *j != i) {
            let packet = ipv4_udp_packet(overlay(i), overlay(j), b"hello");
            if let Ok(Some(transmit)) = device.encapsulate(&packet, &mut buffer, now) {
                schedule(&mut queue, &mut sequence, &mut report, &mut rng, parameters, now, i, transmit, &buffer, address_owner);
            }
        }
    }
    let deadline = start + parameters.deadline;
    loop {
        for (i, device) in devices.iter_mut().enumerate() {
            while let Some(transmit) = device.poll_transmit(&mut buffer, now) {
                schedule(&mut queue, &mut sequence, &mut report, &mut rng, parameters, now, i, transmit, &buffer, address_owner);
            }
        }
        if report.converged_after.is_none() && count_sessions(&devices, &secrets, now) == report.ordered_pairs {
            report.converged_after = Some(now - start);
        }
        if report.converged_after.is_some() && report.packets_delivered == report.ordered_pairs as u64 {
            break;
        }
        let next_delivery = queue.peek().map(|Reverse(d)| d.at);
        let next_timer = devices.iter().filter_map(Device::poll_timeout).min();
        let Some(next) = [next_delivery, next_timer].into_iter().flatten().min() else { break };
        if next > deadline {
            break;
        }
        now = now.max(next);
        while queue.peek().is_some_and(|Reverse(d)| d.at <= now) {
            let Some(Reverse(delivery)) = queue.pop() else { break };
            let from = underlay(delivery.from);
            if let Ok(Received::Packet { len, .. }) = devices[delivery.to].decapsulate(from, &delivery.bytes, &mut buffer, now)
                && protocol::device::source_of(&buffer[..len]) == Some(overlay(delivery.from))
            {
                report.packets_delivered += 1;
            }
        }
        for device in &mut devices {
            device.handle_timeout(now);
        }
    }
    report.sessions = count_sessions(&devices, &secrets, now);
    report
}

#[allow(clippy::too_many_arguments)]
fn schedule(
    queue: &mut BinaryHeap<Reverse<Delivery>>,
    sequence: &mut u64,
    report: &mut MeshReport,
    rng: &mut ChaCha20Rng,
    parameters: MeshParameters,
    now: Instant,
    from: usize,
    transmit: protocol::Transmit,
    buffer: &[u8],
    address_owner: impl Fn(SocketAddr) -> Option<usize>,
) {
    report.datagrams_sent += 1;
    let lost = (rng.next_u64() as f64 / u64::MAX as f64) < parameters.loss;
    match address_owner(transmit.destination) {
        Some(to) if !lost => {
            *sequence += 1;
            queue.push(Reverse(Delivery {
                at: now + parameters.latency,
                sequence: *sequence,
                to,
                from,
                bytes: buffer[..transmit.len].to_vec(),
            }));
        }
        _ => report.datagrams_lost += 1,
    }
}

fn count_sessions(devices: &[Device], secrets: &[StaticSecret], now: Instant) -> usize {
    devices
        .iter()
        .enumerate()
        .map(|(i, device)| {
            secrets
                .iter()
                .enumerate()
                .filter(|(j, secret)| *j != i && device.peer_has_session(&secret.public_key(), now))
                .count()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameters(nodes: usize, loss: f64) -> MeshParameters {
        MeshParameters {
            nodes,
            seed: 7,
            loss,
            latency: Duration::from_millis(30),
            deadline: Duration::from_secs(120),
        }
    }

    #[test]
    fn a_lossless_mesh_of_twenty_connects_every_pair_within_a_few_round_trips() {
        let report = run_mesh(parameters(20, 0.0));
        assert_eq!(report.sessions, report.ordered_pairs);
        let converged = report.converged_after.expect("converged");
        assert!(converged <= Duration::from_millis(200), "{converged:?}");
        assert_eq!(report.packets_delivered, 20 * 19, "every greeting delivered");
    }

    #[test]
    fn a_mesh_with_twenty_percent_loss_still_connects_every_pair() {
        let report = run_mesh(parameters(16, 0.2));
        assert_eq!(report.sessions, report.ordered_pairs, "{report:?}");
        assert!(report.datagrams_lost > 0);
        let converged = report.converged_after.expect("converged");
        assert!(converged <= Duration::from_secs(60), "{converged:?}");
    }

    #[test]
    fn the_same_seed_replays_bit_for_bit() {
        let first = run_mesh(parameters(10, 0.3));
        let second = run_mesh(parameters(10, 0.3));
        assert_eq!(first, second);
    }
}
