//! The libp2p side of the shell: the one swarm builder (TCP, Noise, Yamux, relay client
//! transport, under the device's libp2p identity), the node's behaviour, the control protocol's
//! codec, and the [`driver`] that maps `SwarmEvent`s to the control core's inputs and its
//! actions to the swarm.

pub mod codec;
pub mod driver;

use anyhow::{Context, Result};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, PeerId, Swarm, dcutr, identity, kad, noise, ping, relay, tcp, yamux};
use membership::NetworkId;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The network's own Kademlia DHT (not the public IPFS one), under a protocol name only
/// members can compute: an outsider who connects cannot even open a DHT stream, so it can
/// neither list members nor read records (issue #12). There is no identify protocol either
/// (members exchange addresses in their Hello), so nothing names the protocol to outsiders.
pub fn kad_protocol(network: &NetworkId) -> libp2p::StreamProtocol {
    use blake2::{Blake2s256, Digest};
    let mut hasher = Blake2s256::new();
    hasher.update(b"cloudpal/kad-protocol/v1");
    hasher.update(network.0);
    let digest = hasher.finalize();
    let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    libp2p::StreamProtocol::try_from_owned(format!("/cloudpal/kad/{name}/1.0.0")).expect("a valid protocol name")
}
/// Tail latency under churn is set by the per-query timeout, not hop count.
pub const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// One DHT request over an open connection: a round trip and a retransmission or two. At
/// libp2p's 10 s, a switched-off peer held one of a query's three slots past the whole 5 s
/// query, and with half the nodes off most lookups died (issue #17's model and swarms).
pub const KAD_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A new connection, from the first SYN to Yamux: three round trips, with room for a lost
/// SYN. Without it, a dial to a machine that is off waited for TCP's two minutes.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Requests a DHT query keeps in flight (Kademlia's α). libp2p-kad's default is 3;
/// go-libp2p-kad-dht, which the IPFS Amino DHT runs, uses 10. At 3, one switched-off peer
/// holds a third of the query for its whole timeout; issue #17's simulations (30 % and 50 %
/// of 10,000 CloudPals off) set this.
pub const KAD_PARALLELISM: usize = 10;
/// Control connections are never closed for being idle: one TCP connection per pair stays up
/// for free (a NAT keeps a TCP mapping for hours, RFC 5382; a UDP one, as QUIC would need,
/// for tens of seconds), so an idle network sends nothing to keep it (issue #15). A dead one
/// is noticed when a request on it goes unanswered ([`REQUEST_TIMEOUT`]) and redialled.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
/// libp2p's ping only measures the round trip (`status` shows it); at its default of 15 s it
/// would be most of an idle node's traffic, and even every 30 minutes it was half of it at
/// 1,000 devices (issue #17): every two hours, like the idle path exchange.
pub const PING_INTERVAL: Duration = Duration::from_secs(2 * 3600);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Control streams one connection may have open at once (libp2p's default is 100, each able
/// to hold a message of up to a megabyte).
const MAX_CONTROL_STREAMS: usize = 16;
/// Connections: a network has at most 512 devices, CloudPal is connected to all of them.
const MAX_ESTABLISHED_INCOMING: u32 = 640;
const MAX_PENDING_INCOMING: u32 = 64;
const MAX_CONNECTIONS_PER_PEER: u32 = 8;

#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // libp2p's behaviours have no Debug
pub struct Behaviour {
    /// Bounds on connections (issue #12): per peer, pending and established inbound.
    pub limits: libp2p::connection_limits::Behaviour,
    pub control: request_response::Behaviour<codec::Codec>,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// CloudPal relays control connections between members that cannot reach each other
    /// (members only; IP packets never ride it), and DCUtR upgrades them to direct ones.
    pub relay: Toggle<relay::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub dcutr: dcutr::Behaviour,
}

/// The behaviour of `pal join` and `pal request`, before the device is a member: the control
/// protocol only.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)]
pub struct Enrol {
    pub control: request_response::Behaviour<codec::Codec>,
}

/// The peers that proved membership, as the relay's gate sees them. The driver alone writes
/// it (from the core's [`crate::control::Action::MemberPeers`]); libp2p's relay reads it.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<RwLock<HashSet<PeerId>>>);

impl Gate {
    pub fn set(&self, members: HashSet<PeerId>) {
        if let Ok(mut current) = self.0.write() {
            *current = members;
        }
    }
}

/// Reservations and circuits only for peers that proved membership (their Hello binding
/// verified). Plugged in where libp2p puts its rate limiters.
struct MembersOnly(Gate);

impl relay::RateLimiter for MembersOnly {
    fn try_next(&mut self, peer: PeerId, _: &Multiaddr, _: std::time::Instant) -> bool {
        self.0.0.read().is_ok_and(|members| members.contains(&peer))
    }
}

/// The one transport stack, under the libp2p identity of `seed` in the current identity epoch
/// ([`identity_epoch`]), with whatever behaviour `make` builds (it also gets the relay
/// client, which only a member's node uses).
pub fn build<B: NetworkBehaviour>(seed: &[u8; 32], make: impl FnOnce(&identity::Keypair, relay::client::Behaviour) -> B) -> Result<Swarm<B>> {
    build_for_epoch(seed, identity_epoch(crate::clock::unix_secs()), None, make)
}

/// As [`build`], for identity epoch `epoch`; `fallback` (CloudPal) also serves the TCP/TLS
/// fallback. Every swarm dials fallback addresses ([`crate::relaylink`]).
pub fn build_for_epoch<B: NetworkBehaviour>(seed: &[u8; 32], epoch: u64, fallback: Option<crate::relaylink::transport::Serving>, make: impl FnOnce(&identity::Keypair, relay::client::Behaviour) -> B) -> Result<Swarm<B>> {
    use libp2p::Transport as _;
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair(seed, epoch)?)
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            // As `with_tcp` builds it, with a bound on the dial.
            Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                .outbound_timeout(DIAL_TIMEOUT))
        })?
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            Ok(crate::relaylink::transport::FallbackTransport::new(fallback)
                .upgrade(libp2p::core::upgrade::Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default()))
        })?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| make(key, relay_client))?
        .with_swarm_config(swarm_config)
        .build())
}

/// The swarm's settings (the simulations' swarms use them too). A new stream sends its first
/// message with its protocol's name instead of a round trip later (multistream-select's
/// `V1Lazy`): each of our streams offers exactly one protocol, so there is nothing to
/// negotiate, and every control request and DHT request is one round trip shorter.
pub fn swarm_config(config: libp2p::swarm::Config) -> libp2p::swarm::Config {
    config
        .with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
        .with_max_negotiating_inbound_streams(MAX_CONTROL_STREAMS)
        .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
}

/// The node's Kademlia settings (the simulations' swarms use them too).
pub fn kad_config(protocol: libp2p::StreamProtocol) -> kad::Config {
    let mut config = kad::Config::new(protocol);
    config.set_query_timeout(KAD_QUERY_TIMEOUT);
    config.set_substreams_timeout(KAD_REQUEST_TIMEOUT);
    config.set_parallelism(std::num::NonZeroUsize::new(KAD_PARALLELISM).expect("α is not zero"));
    // Nothing is stored unseen: a record put to us is checked first (DHT-01), and provider
    // records, which nobody signs, are never stored at all.
    config.set_record_filtering(kad::StoreInserts::FilterBoth);
    // Quiet when idle: the routing table is fed by the members' Hellos, not by a bootstrap
    // walk every five minutes, and presence records are republished by their owners (the
    // core's presence timer), not replicated hourly by every node that holds one.
    config.set_periodic_bootstrap_interval(None);
    config.set_replication_interval(None);
    config.set_publication_interval(None);
    config
}

/// A member node's behaviour; `cloudpal` adds relay duty behind the members-only `gate`.
pub fn node_behaviour(key: &identity::Keypair, relay_client: relay::client::Behaviour, cloudpal: bool, gate: &Gate, network: &NetworkId) -> Behaviour {
    let peer = key.public().to_peer_id();
    let config = kad_config(kad_protocol(network));
    let store_config = kad::store::MemoryStoreConfig {
        max_value_bytes: crate::control::presence::MAX_RECORD_LEN,
        max_records: 4096,
        max_providers_per_key: 0,
        ..Default::default()
    };
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::with_config(peer, store_config), config);
    // Every node serves the network's own DHT: it is small, and a restarted device must find
    // the others through any of them.
    kad.set_mode(Some(kad::Mode::Server));
    let relay = cloudpal.then(|| {
        // Control traffic only: limits well above libp2p's defaults (2 min, 128 KiB per
        // circuit; 4 circuits per peer, 16 in all), which suit strangers, not one owner's
        // devices syncing their log — with the defaults, a sixth device behind a NAT found
        // the laptop's circuits full. Only members pass the limiters below.
        let devices = membership::state::MAX_DEVICES;
        let config = relay::Config {
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 64 << 20,
            max_reservations: devices,
            max_reservations_per_peer: 4,
            max_circuits: 2 * devices,
            max_circuits_per_peer: devices,
            reservation_rate_limiters: vec![Box::new(MembersOnly(gate.clone()))],
            circuit_src_rate_limiters: vec![Box::new(MembersOnly(gate.clone()))],
            ..Default::default()
        };
        relay::Behaviour::new(peer, config)
    });
    let limits = libp2p::connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
        .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER));
    Behaviour {
        limits: libp2p::connection_limits::Behaviour::new(limits),
        control: control_behaviour(),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
        kad,
        relay: relay.into(),
        relay_client,
        dcutr: dcutr::Behaviour::new(peer),
    }
}

pub fn enrol_behaviour() -> Enrol {
    Enrol { control: control_behaviour() }
}

fn control_behaviour() -> request_response::Behaviour<codec::Codec> {
    let config = request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT).with_max_concurrent_streams(MAX_CONTROL_STREAMS);
    request_response::Behaviour::new([(codec::PROTOCOL, ProtocolSupport::Full)], config)
}

/// How long one libp2p identity lasts: a day, like the DHT keys (`PAL_IDENTITY_EPOCH`
/// seconds where a test wants to see a rotation).
pub fn identity_epoch_length() -> u64 {
    std::env::var("PAL_IDENTITY_EPOCH").ok().and_then(|s| s.parse().ok()).filter(|s: &u64| *s >= 5).unwrap_or(86_400)
}

/// The identity epoch of a wall-clock time (Unix seconds).
pub fn identity_epoch(unix: u64) -> u64 {
    unix / identity_epoch_length()
}

/// When identity epoch `epoch` ends (Unix seconds).
pub fn identity_epoch_end(epoch: u64) -> u64 {
    (epoch + 1) * identity_epoch_length()
}

/// The libp2p identity of a 32-byte seed (the state directory's `libp2p.key`) in identity
/// epoch `epoch`: a fresh key every epoch, so nobody outside the network can follow a device
/// from one day to the next by its PeerId (DHT-05); members learn each day's from the Hello,
/// which the device key signs.
pub fn keypair(seed: &[u8; 32], epoch: u64) -> Result<identity::Keypair> {
    use blake2::{Blake2s256, Digest};
    let mut bytes: [u8; 32] = Blake2s256::new().chain_update(b"cloudpal/libp2p-identity/v1").chain_update(seed).chain_update(epoch.to_be_bytes()).finalize().into();
    identity::Keypair::ed25519_from_bytes(&mut bytes).context("the libp2p key in the state directory is unusable; restore it from a backup or join again")
}

/// The peer id a node with `seed` has now.
pub fn peer_id(seed: &[u8; 32]) -> Result<PeerId> {
    peer_id_in(seed, identity_epoch(crate::clock::unix_secs()))
}

/// The peer id a node with `seed` has in identity epoch `epoch`.
pub fn peer_id_in(seed: &[u8; 32], epoch: u64) -> Result<PeerId> {
    Ok(keypair(seed, epoch)?.public().to_peer_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DHT-05: no PeerId lasts beyond its epoch, and the next cannot be told from a stranger's.
    #[test]
    fn dht05_the_peer_id_changes_every_epoch() {
        let seed = [7u8; 32];
        let ids: Vec<PeerId> = (100..104).map(|epoch| peer_id_in(&seed, epoch).expect("peer id")).collect();
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert_eq!(peer_id_in(&seed, 101).expect("id"), ids[1], "the same epoch gives the same id");
        assert_ne!(peer_id_in(&[8u8; 32], 100).expect("id"), ids[0]);
    }
}
