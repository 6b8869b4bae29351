//! Overlay addresses: an IPv4 address in 100.64.0.0/10 and an IPv6 address in the network's
//! ULA /48, derived from the device id and recorded in the log.
//!
//! The /48 comes from the founder's device id rather than the network id, because the network
//! id is the hash of the genesis entry, which already holds the founder's addresses.
use blake2::{Blake2s256, Digest};
use protocol::DeviceId;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The shared address space of RFC 6598, as Tailscale uses.
pub const OVERLAY_IPV4_PREFIX: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);

/// The length of the network's IPv6 ULA prefix.
pub const OVERLAY_IPV6_PREFIX_LEN: u8 = 48;

/// Whether `ip` lies in the overlay's IPv4 range (100.64.0.0/10).
pub fn is_overlay_ipv4(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - OVERLAY_IPV4_PREFIX.1);
    u32::from(ip) & mask == u32::from(OVERLAY_IPV4_PREFIX.0)
}

/// The network's IPv6 ULA /48: `fd` + 40 bits from the founder's id (RFC 4193's global ID).
pub fn ula_prefix(founder: &DeviceId) -> Ipv6Addr {
    let digest = labelled(b"cloudpal/overlay/ula/v1", founder.as_bytes(), 0);
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&digest[..5]);
    Ipv6Addr::from(octets)
}

/// The `attempt`-th candidate addresses for a device; an adder tries attempts until both are
/// free in the current state.
pub fn derive(founder: &DeviceId, device: &DeviceId, attempt: u32) -> (Ipv4Addr, Ipv6Addr) {
    let digest = labelled(b"cloudpal/overlay/device/v1", device.as_bytes(), attempt);
    // 22 host bits of 100.64.0.0/10; avoid the all-zero and all-one hosts.
    let host = (u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) & 0x003f_ffff).clamp(1, 0x003f_fffe);
    let ipv4 = Ipv4Addr::from(u32::from(OVERLAY_IPV4_PREFIX.0) | host);
    let mut octets = ula_prefix(founder).octets();
    octets[8..16].copy_from_slice(&digest[4..12]);
    (ipv4, Ipv6Addr::from(octets))
}

/// Whether an address pair lies in the overlay ranges (any ULA for IPv6).
pub fn in_overlay_ranges(ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> bool {
    is_overlay_ipv4(ipv4) && ipv6.octets()[0] == 0xfd
}

fn labelled(label: &[u8], data: &[u8], attempt: u32) -> [u8; 32] {
    let mut hasher = Blake2s256::new();
    hasher.update(label);
    hasher.update(data);
    hasher.update(attempt.to_be_bytes());
    hasher.finalize().into()
}
