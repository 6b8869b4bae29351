//! The TCP/TLS-443 fallback to CloudPal, for networks that let only TCP 443 out (campus,
//! hotel, some offices).
//!
//! CloudPal listens on TCP 443 (`pal up --cloudpal --tcp-listen ADDR:PORT|off`) with TLS that
//! looks like HTTPS: a self-signed certificate members pin by hash ([`tls`]), ALPN
//! `http/1.1`, and an HTTP upgrade to one of two channels; anything else gets a 404
//! ([`frame`]). Each channel is its own TCP connection, so bulk data never holds up the
//! control plane behind it:
//!
//! - **control**: the libp2p connection itself. The fallback is a libp2p transport
//!   ([`transport`]) for addresses `/ip4/…/tcp/443/tls/certhash/…`, which CloudPal announces
//!   beside its plain TCP ones (in the invite code, its Hello and presence records). A member
//!   dials them with the others, so a device whose UDP and plain TCP are blocked joins,
//!   syncs and signals over it from its first second.
//! - **data**: datagrams for CloudPal's data port, framed ([`link`]). At each end a UDP socket
//!   on loopback stands in for the other: the device's data plane sends to its *stream
//!   address* and CloudPal's hears the device from its end's, so neither data plane changes —
//!   the device's hop state ([`protocol::fallback`]) decides when to use it, and asks the node
//!   for it only when UDP to CloudPal goes unanswered.

pub mod frame;
pub mod link;
pub mod tls;
pub mod transport;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use libp2p::multiaddr::multihash::Multihash;
use std::net::{IpAddr, SocketAddr};

/// CloudPal's default fallback port: HTTPS's.
pub const DEFAULT_PORT: u16 = 443;
/// The multihash code of SHA-256.
const SHA2_256: u64 = 0x12;

/// Where a member reaches CloudPal's fallback, and the certificate it must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub address: SocketAddr,
    pub certhash: [u8; 32],
}

/// `/ip4/ADDR/tcp/PORT/tls/certhash/HASH` (or `/ip6/…`).
pub fn multiaddr(address: SocketAddr, certhash: &[u8; 32]) -> Multiaddr {
    let hash = Multihash::<64>::wrap(SHA2_256, certhash).expect("32 bytes fit a multihash");
    crate::control::addr::socket_multiaddr(address, false).with(Protocol::Tls).with(Protocol::Certhash(hash))
}

/// The fallback target an address names (a trailing `/p2p/…` is allowed).
pub fn target(address: &Multiaddr) -> Option<Target> {
    let mut parts = address.iter();
    let socket = tls_socket(&mut parts)?;
    let Protocol::Certhash(hash) = parts.next()? else { return None };
    if hash.code() != SHA2_256 {
        return None;
    }
    let certhash: [u8; 32] = hash.digest().try_into().ok()?;
    match parts.next() {
        None | Some(Protocol::P2p(_)) => Some(Target { address: socket, certhash }),
        _ => None,
    }
}

/// The `/ip…/tcp/PORT/tls` at the start of a multiaddr, as a socket address.
pub(crate) fn tls_socket<'a>(parts: &mut impl Iterator<Item = Protocol<'a>>) -> Option<SocketAddr> {
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    let Protocol::Tcp(port) = parts.next()? else { return None };
    let Protocol::Tls = parts.next()? else { return None };
    Some(SocketAddr::new(ip, port))
}

/// Whether a connection's address is the fallback's (its remote address on either side).
pub fn is_fallback(address: &Multiaddr) -> bool {
    address.iter().any(|p| matches!(p, Protocol::Tls))
}

/// Where a local socket reaches a data socket bound at `local`: loopback when it is bound to
/// every address, else that address.
pub fn local_target(local: SocketAddr) -> SocketAddr {
    if local.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], local.port())) } else { local }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_addresses_round_trip_and_nothing_else_parses_as_one() {
        let hash = [7u8; 32];
        for address in ["203.0.113.1:443", "[2001:db8::1]:8443"] {
            let address: SocketAddr = address.parse().expect("address");
            let multiaddr = multiaddr(address, &hash);
            assert!(is_fallback(&multiaddr));
            assert_eq!(target(&multiaddr), Some(Target { address, certhash: hash }), "{multiaddr}");
            let peer = libp2p::identity::Keypair::ed25519_from_bytes([1; 32]).expect("key").public().to_peer_id();
            assert_eq!(target(&multiaddr.clone().with(Protocol::P2p(peer))).map(|t| t.address), Some(address));
            assert!(crate::control::addr::is_dialable(&multiaddr));
        }
        for other in ["/ip4/203.0.113.1/tcp/443", "/ip4/203.0.113.1/tcp/443/tls", "/ip4/203.0.113.1/udp/443/quic-v1"] {
            let other: Multiaddr = other.parse().expect("multiaddr");
            assert_eq!(target(&other), None, "{other}");
        }
    }
}
