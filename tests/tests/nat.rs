//! The NAT router fixture behaves like the routers it stands for: an endpoint-independent NAT
//! shows one outside port to every destination, a symmetric NAT a different one to each, and
//! both admit from outside only what answers a packet sent from inside. The NAT traversal
//! tests (#5) rely on exactly these properties.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use tests::{Lan, Mapping, NatRouter};

/// What `server` sees as the source of a datagram from `client`.
fn observed(client: &UdpSocket, server: &UdpSocket, server_address: SocketAddr) -> SocketAddr {
    client.send_to(b"probe", server_address).expect("send");
    let mut buffer = [0u8; 64];
    let (_, source) = server.recv_from(&mut buffer).expect("the probe arrives");
    source
}

fn arrives(socket: &UdpSocket) -> bool {
    let mut buffer = [0u8; 64];
    socket.recv_from(&mut buffer).is_ok()
}

fn mappings(mapping: Mapping) -> (SocketAddr, SocketAddr, String, bool, bool) {
    let mut internet = Lan::new("203.0.113");
    let mut nat = NatRouter::new(&mut internet, "10.1.0", mapping);
    let (inside, _) = nat.host("in");
    let (one, one_address) = internet.host("s1");
    let (two, two_address) = internet.host("s2");
    let client = inside.udp_socket("0.0.0.0:5000");
    client.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let server_one = one.udp_socket("0.0.0.0:7000");
    let server_two = two.udp_socket("0.0.0.0:7000");
    server_one.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    server_two.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let to_one: SocketAddr = format!("{one_address}:7000").parse().expect("address");
    let to_two: SocketAddr = format!("{two_address}:7000").parse().expect("address");

    let seen_by_one = observed(&client, &server_one, to_one);
    // Before the inside host sent anything to server two, server two is filtered out even
    // at the mapping server one saw.
    server_two.send_to(b"unsolicited", seen_by_one).expect("send");
    let unsolicited_arrived = arrives(&client);
    let seen_by_two = observed(&client, &server_two, to_two);
    // A reply from a destination the inside host contacted comes back in.
    server_one.send_to(b"reply", seen_by_one).expect("send");
    let reply_arrived = arrives(&client);
    (seen_by_one, seen_by_two, nat.public_address.clone(), unsolicited_arrived, reply_arrived)
}

#[test]
fn endpoint_independent_nat_shows_one_mapping_to_every_destination() {
    let (one, two, public, unsolicited, reply) = mappings(Mapping::EndpointIndependent);
    assert_eq!(one.ip().to_string(), public, "the inside address is hidden");
    assert_eq!(one, two, "one mapping for both destinations");
    assert!(!unsolicited, "an uncontacted host got through");
    assert!(reply, "a reply did not get back in");
}

#[test]
fn symmetric_nat_shows_a_different_mapping_to_each_destination() {
    let (one, two, public, unsolicited, reply) = mappings(Mapping::Symmetric);
    assert_eq!(one.ip().to_string(), public);
    assert_eq!(one.ip(), two.ip());
    assert_ne!(one.port(), two.port(), "a symmetric NAT reused its mapping");
    assert!(!unsolicited, "an uncontacted host got through");
    assert!(reply, "a reply did not get back in");
}
