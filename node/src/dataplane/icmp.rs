//! ICMP echo over the overlay, for `pal ping`: the node writes echo requests into its own data
//! plane and recognises the replies before they would reach the TUN.

use std::net::Ipv4Addr;

/// Identifies this node's pings among other echo traffic.
pub const PING_IDENTIFIER: u16 = 0xca11;
const PAYLOAD: &[u8; 16] = b"cloudpal-ping-16";

/// An IPv4 ICMP echo request.
pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, sequence: u16) -> Vec<u8> {
    let total = 20 + 8 + PAYLOAD.len();
    let mut packet = vec![0u8; total];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet[8] = 64;
    packet[9] = 1; // ICMP
    packet[12..16].copy_from_slice(&src.octets());
    packet[16..20].copy_from_slice(&dst.octets());
    let header_checksum = checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&header_checksum.to_be_bytes());
    packet[20] = 8; // echo request
    packet[24..26].copy_from_slice(&PING_IDENTIFIER.to_be_bytes());
    packet[26..28].copy_from_slice(&sequence.to_be_bytes());
    packet[28..].copy_from_slice(PAYLOAD);
    let icmp_checksum = checksum(&packet[20..]);
    packet[22..24].copy_from_slice(&icmp_checksum.to_be_bytes());
    packet
}

/// The sequence number if `packet` is an echo reply to one of our pings.
pub fn echo_reply_sequence(packet: &[u8]) -> Option<u16> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || *packet.get(9)? != 1 {
        return None;
    }
    let icmp = packet.get(header_len..header_len + 8)?;
    (icmp[0] == 0 && u16::from_be_bytes([icmp[4], icmp[5]]) == PING_IDENTIFIER)
        .then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let packet = echo_request(Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2), 7);
        assert_eq!(checksum(&packet[..20]), 0);
        assert_eq!(checksum(&packet[20..]), 0);
    }

    #[test]
    fn replies_are_recognised_requests_are_not() {
        let mut packet = echo_request(Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2), 9);
        assert_eq!(echo_reply_sequence(&packet), None);
        packet[20] = 0;
        assert_eq!(echo_reply_sequence(&packet), Some(9));
        assert_eq!(echo_reply_sequence(&[]), None);
    }
}
