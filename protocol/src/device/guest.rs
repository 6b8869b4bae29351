//! The per-peer filter for guests (SECURITY-TESTS GUEST-01): what a guest's decrypted packets
//! may reach through this device, and which of this device's packets may go to it. Cryptokey
//! routing already pins a guest's *source* to its own overlay address; this pins the rest.
//!
//! Like Tailscale's sharing, a shared device answers a guest but does not call it: towards the
//! guest only replies leave (from a shared port, or an ICMP echo reply or error), unless
//! every port is shared. Anything a guest sends to another member's address — say, through
//! CloudPal's kernel, which would route it on — is dropped here, before the kernel sees it.

use crate::IpPrefix;
use crate::keys::StaticPublic;
use std::collections::BTreeSet;
use std::net::IpAddr;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// What one guest may do through this device; members have none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestRules {
    /// This device's own overlay addresses.
    pub local: Vec<IpAddr>,
    /// Whether this device is shared with the guest, and on which ports (`Some(empty)`: all).
    pub shared: Option<Vec<(u16, u16)>>,
    /// The guest may reach the internet through this device (CloudPal, when the policy lets
    /// it use the exit).
    pub internet: bool,
    /// The overlay's prefixes: never "the internet".
    pub overlay: Vec<IpPrefix>,
    /// Relay duty: whom this guest may reach through the relay (the devices shared with it).
    pub relay_to: BTreeSet<StaticPublic>,
}

/// The parts of an IP header the filter looks at.
struct Header {
    source: IpAddr,
    destination: IpAddr,
    protocol: u8,
    /// TCP/UDP ports, or ICMP type in `source_port`; `None` for a non-first fragment or an
    /// IPv6 extension header chain (no transport header to read).
    ports: Option<(u16, u16)>,
}

fn parse(packet: &[u8]) -> Option<Header> {
    let (source, destination, protocol, transport, first_fragment) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            let fragment_offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
            (
                IpAddr::from(*packet.get(12..16)?.first_chunk::<4>()?),
                IpAddr::from(*packet.get(16..20)?.first_chunk::<4>()?),
                *packet.get(9)?,
                ihl,
                fragment_offset == 0,
            )
        }
        6 => (
            IpAddr::from(*packet.get(8..24)?.first_chunk::<16>()?),
            IpAddr::from(*packet.get(24..40)?.first_chunk::<16>()?),
            *packet.get(6)?,
            40,
            true,
        ),
        _ => return None,
    };
    let ports = match protocol {
        TCP | UDP if first_fragment => packet
            .get(transport..transport + 4)
            .map(|p| (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]))),
        ICMP | ICMPV6 if first_fragment => packet.get(transport).map(|t| (u16::from(*t), 0)),
        _ => None,
    };
    Some(Header { source, destination, protocol, ports })
}

fn in_ranges(ranges: &[(u16, u16)], port: u16) -> bool {
    ranges.iter().any(|(first, last)| (*first..=*last).contains(&port))
}

impl GuestRules {
    fn is_overlay(&self, ip: IpAddr) -> bool {
        self.overlay.iter().any(|p| p.contains(ip))
    }

    /// A packet the guest sent, decrypted: may it go on?
    pub fn inbound_allowed(&self, packet: &[u8]) -> bool {
        self.allows(packet, Way::FromGuest)
    }

    /// A packet this device would send the guest: may it?
    pub fn outbound_allowed(&self, packet: &[u8]) -> bool {
        self.allows(packet, Way::ToGuest)
    }

    fn allows(&self, packet: &[u8], way: Way) -> bool {
        let Some(h) = parse(packet) else { return false };
        // Our end of the packet, its port there, and whether it is ICMP the guest may get:
        // from the guest, a ping of a shared device; to it, echo replies and the errors that
        // tell it why.
        let (ours, port, icmp) = match way {
            Way::FromGuest => (h.destination, h.ports.map(|p| p.1), matches!((h.protocol, h.ports), (ICMP, Some((8, _))) | (ICMPV6, Some((128, _))))),
            Way::ToGuest => (h.source, h.ports.map(|p| p.0), matches!((h.protocol, h.ports), (ICMP, Some((0 | 3 | 11, _))) | (ICMPV6, Some((1..=3 | 129, _))))),
        };
        if self.local.contains(&ours) {
            return match &self.shared {
                // Not shared: nothing, except that a guest on this exit may ping it (how it
                // tells the exit answers).
                None => self.internet && icmp,
                Some(ranges) if ranges.is_empty() => true,
                Some(ranges) => match h.protocol {
                    TCP | UDP => port.is_some_and(|p| in_ranges(ranges, p)),
                    _ => icmp,
                },
            };
        }
        // The exit: the internet only, never another member routed on (either way).
        self.internet && !self.is_overlay(ours)
    }
}

#[derive(Debug, Clone, Copy)]
enum Way {
    FromGuest,
    ToGuest,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{tcp_packet_v4, udp_packet_v4};
    use std::net::Ipv4Addr;

    const ME: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
    const GUEST: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 9);
    const OTHER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);
    const WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

    /// An ICMP packet of `kind` (8: echo request, 0: echo reply).
    fn icmp_v4(src: Ipv4Addr, dst: Ipv4Addr, kind: u8) -> Vec<u8> {
        let mut packet = udp_packet_v4(src, dst, 0, 0);
        packet[9] = ICMP;
        packet[20] = kind;
        packet
    }

    fn rules(shared: Option<Vec<(u16, u16)>>, internet: bool) -> GuestRules {
        GuestRules {
            local: vec![IpAddr::V4(ME)],
            shared,
            internet,
            overlay: vec![IpPrefix::new(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)), 10).unwrap()],
            relay_to: BTreeSet::new(),
        }
    }

    #[test]
    fn guest01_only_shared_ports_of_this_device_are_reached() {
        let r = rules(Some(vec![(22, 22), (8000, 8100)]), false);
        assert!(r.inbound_allowed(&tcp_packet_v4(GUEST, ME, 40000, 22)));
        assert!(r.inbound_allowed(&udp_packet_v4(GUEST, ME, 40000, 8050)));
        assert!(!r.inbound_allowed(&tcp_packet_v4(GUEST, ME, 40000, 23)));
        assert!(!r.inbound_allowed(&tcp_packet_v4(GUEST, OTHER, 40000, 22)), "another member, through us");
        assert!(!r.inbound_allowed(&tcp_packet_v4(GUEST, WEB, 40000, 443)), "no exit for this guest");
        assert!(!r.inbound_allowed(&[0x45, 0, 0]), "truncated");
        // Replies go back from the shared port; nothing else calls the guest.
        assert!(r.outbound_allowed(&tcp_packet_v4(ME, GUEST, 22, 40000)));
        assert!(!r.outbound_allowed(&tcp_packet_v4(ME, GUEST, 50000, 22)));
        assert!(!r.outbound_allowed(&tcp_packet_v4(OTHER, GUEST, 22, 40000)), "a member's packet routed on by us");
    }

    #[test]
    fn a_device_not_shared_passes_nothing_and_the_exit_only_the_internet() {
        let relay_only = rules(None, false);
        assert!(!relay_only.inbound_allowed(&tcp_packet_v4(GUEST, ME, 40000, 22)));
        assert!(!relay_only.outbound_allowed(&tcp_packet_v4(ME, GUEST, 22, 40000)));
        let exit = rules(None, true);
        assert!(exit.inbound_allowed(&tcp_packet_v4(GUEST, WEB, 40000, 443)));
        assert!(exit.inbound_allowed(&icmp_v4(GUEST, ME, 8)) && exit.outbound_allowed(&icmp_v4(ME, GUEST, 0)), "the guest's exit answers its ping");
        assert!(!exit.inbound_allowed(&tcp_packet_v4(GUEST, ME, 40000, 53)), "but nothing else of the exit itself");
        assert!(!relay_only.inbound_allowed(&icmp_v4(GUEST, ME, 8)));
        assert!(exit.outbound_allowed(&tcp_packet_v4(WEB, GUEST, 443, 40000)));
        assert!(!exit.inbound_allowed(&tcp_packet_v4(GUEST, OTHER, 40000, 22)), "the exit is not a way into the mesh");
        assert!(!exit.outbound_allowed(&tcp_packet_v4(OTHER, GUEST, 22, 40000)));
        let everything = rules(Some(vec![]), false);
        assert!(everything.inbound_allowed(&tcp_packet_v4(GUEST, ME, 40000, 5)));
        assert!(everything.outbound_allowed(&udp_packet_v4(ME, GUEST, 5, 6)));
    }
}
