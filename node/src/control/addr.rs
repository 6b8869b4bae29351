//! Multiaddr helpers shared by the core and the shell.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::net::{IpAddr, SocketAddr};

/// `/ip4/ADDR/tcp/PORT` or, with `quic`, `/ip4/ADDR/udp/PORT/quic-v1` (likewise IPv6).
pub fn socket_multiaddr(address: SocketAddr, quic: bool) -> Multiaddr {
    let mut multiaddr = Multiaddr::empty();
    multiaddr.push(match address.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    });
    if quic {
        multiaddr.push(Protocol::Udp(address.port()));
        multiaddr.push(Protocol::QuicV1);
    } else {
        multiaddr.push(Protocol::Tcp(address.port()));
    }
    multiaddr
}

/// `/ip/ADDR/tcp/PORT/p2p/RELAY/p2p-circuit`: the relay's circuit, to listen on or to dial a
/// member through (with its `/p2p/PEER` appended).
pub fn circuit_address(relay_tcp: SocketAddr, relay: PeerId) -> Multiaddr {
    socket_multiaddr(relay_tcp, false).with(Protocol::P2p(relay)).with(Protocol::P2pCircuit)
}

/// `address` without a trailing `/p2p/PEER`: to dial whoever answers there (the PeerId in a
/// cached or an invite's address may be an earlier identity epoch's).
pub fn without_peer_id(mut address: Multiaddr) -> Multiaddr {
    if matches!(address.iter().last(), Some(Protocol::P2p(_))) {
        address.pop();
    }
    address
}

/// The IP address a multiaddr starts with.
pub fn multiaddr_ip(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Addresses worth giving to others: not loopback, not unspecified, not in the overlay.
pub fn is_dialable(address: &Multiaddr) -> bool {
    multiaddr_ip(address).is_some_and(is_underlay_ip)
}

/// An address another machine could reach us at: not loopback, unspecified or link-local
/// (an IPv6 link-local address needs a scope no other machine knows), not in the overlay.
pub fn is_underlay_ip(ip: IpAddr) -> bool {
    !ip.is_loopback()
        && !ip.is_unspecified()
        && !matches!(ip, IpAddr::V4(v4) if membership::overlay::is_overlay_ipv4(v4) || v4.is_link_local())
        && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local() || v6.to_ipv4_mapped().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_loopback_and_unspecified_addresses_are_not_handed_out() {
        for (address, dialable) in [
            ("/ip4/192.0.2.7/tcp/41641", true),
            ("/ip6/2001:db8::1/udp/41642/quic-v1", true),
            ("/ip4/100.64.0.9/tcp/41641", false),
            ("/ip4/100.127.255.1/tcp/41641", false),
            ("/ip4/100.128.0.1/tcp/41641", true),
            ("/ip4/127.0.0.1/tcp/41641", false),
            ("/ip4/0.0.0.0/tcp/41641", false),
            ("/ip6/fe80::1/tcp/41641", false),
            ("/ip6/::/tcp/41641", false),
            ("/ip4/169.254.1.1/tcp/41641", false),
        ] {
            let address: Multiaddr = address.parse().expect("multiaddr");
            assert_eq!(is_dialable(&address), dialable, "{address}");
        }
    }
}
