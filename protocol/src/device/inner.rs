//! The inner (tunnelled) packet's addresses, read without parsing the rest.

use std::net::IpAddr;

/// The destination address of an IPv4 or IPv6 packet.
pub fn destination_of(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => Some(IpAddr::from(*packet.get(16..20)?.first_chunk::<4>()?)),
        6 => Some(IpAddr::from(*packet.get(24..40)?.first_chunk::<16>()?)),
        _ => None,
    }
}

/// The source address of an IPv4 or IPv6 packet.
pub fn source_of(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => Some(IpAddr::from(*packet.get(12..16)?.first_chunk::<4>()?)),
        6 => Some(IpAddr::from(*packet.get(8..24)?.first_chunk::<16>()?)),
        _ => None,
    }
}
