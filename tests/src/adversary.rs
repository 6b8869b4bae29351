//! A device that does not play by the rules: hand-made handshake initiations, replays and
//! packets from places they should not come from, sent at a real node — for the security
//! rows of SECURITY-TESTS.md that need one (DP-07, DP-08, DP-09, DP-14).

use crate::{Netns, PalNode};
use membership::NetworkId;
use protocol::{PresharedKey, StaticPublic, StaticSecret, Tunnel, TunnelConfig, WallClock};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A node's static (Noise) key pair, read from its state directory.
pub fn static_secret(node: &PalNode) -> StaticSecret {
    let bytes = std::fs::read(node.state.join("static.key")).expect("static.key");
    StaticSecret::from_bytes(bytes.try_into().expect("32-byte static key"))
}

/// The handshake PSK of `node`'s network (what any member, or former member, knows).
pub fn network_psk(node: &PalNode) -> PresharedKey {
    let log: serde_json::Value = serde_json::from_str(&node.pal_ok(&["log", "--json"])).expect("log JSON");
    let genesis = log[0]["hash"].as_str().expect("genesis hash");
    let bytes: Vec<u8> = (0..genesis.len()).step_by(2).map(|i| u8::from_str_radix(&genesis[i..i + 2], 16).expect("hex")).collect();
    NetworkId(bytes.try_into().expect("32-byte network id")).data_plane_psk()
}

/// One handshake initiation from `local` to `peer` (mac1 valid: it is keyed by the peer's
/// public key, which an attacker can know).
pub fn initiation(local: &StaticSecret, peer: StaticPublic, psk: PresharedKey) -> Vec<u8> {
    let now = Instant::now();
    let clock = WallClock { anchor: now, unix_time_at_anchor: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() };
    let config = TunnelConfig { local_static: local.clone(), peer_static: peer, psk, persistent_keepalive: None, mtu: 1420, clock };
    let mut tunnel = Tunnel::new(config, [7; 32]);
    tunnel.connect(now);
    let mut out = vec![0u8; 2048];
    let len = tunnel.poll_transmit(&mut out, now).expect("an initiation");
    out.truncate(len);
    out
}

/// Sends `datagram` to `target` from a fresh socket in `netns` (bound to `from`, or any
/// address); every datagram that comes back within `wait`.
pub fn send_and_listen(netns: &Netns, from: &str, datagram: &[u8], target: SocketAddr, wait: Duration) -> Vec<Vec<u8>> {
    let socket = netns.udp_socket(from);
    send_on(&socket, datagram, target, wait)
}

/// As [`send_and_listen`], on a socket the caller keeps.
pub fn send_on(socket: &UdpSocket, datagram: &[u8], target: SocketAddr, wait: Duration) -> Vec<Vec<u8>> {
    socket.send_to(datagram, target).expect("send");
    let deadline = Instant::now() + wait;
    let mut answers = Vec::new();
    let mut buffer = vec![0u8; 65_536];
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        socket.set_read_timeout(Some(left)).expect("timeout");
        match socket.recv_from(&mut buffer) {
            Ok((len, _)) => answers.push(buffer[..len].to_vec()),
            Err(_) => break,
        }
    }
    answers
}

/// UDP datagrams in captured frames (Ethernet + IPv4), as (source, destination, payload).
pub fn udp_datagrams(frames: &[Vec<u8>]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|frame| {
            let ip = frame.get(14..)?;
            if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
                return None;
            }
            let header = usize::from(ip[0] & 0x0f) * 4;
            let udp = ip.get(header..)?;
            let source = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let destination = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            let port = |at: usize| u16::from_be_bytes([udp[at], udp[at + 1]]);
            let payload = udp.get(8..usize::from(port(4)).min(udp.len()))?.to_vec();
            Some((SocketAddr::from((source, port(0))), SocketAddr::from((destination, port(2))), payload))
        })
        .collect()
}
