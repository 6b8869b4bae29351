//! The data-plane security rows that need real nodes (SECURITY-TESTS.md 4.1): an outsider's
//! handshake (DP-07), a replayed handshake (DP-09), forged and replayed packets from a new
//! address (DP-14), an inner source spoofed by a member (DP-16), and what a passive observer of
//! the handshake learns (DP-17). The attacker sits on the same LAN, with a capture of the
//! devices' traffic.

use protocol::wire::{KIND_DATA, KIND_INITIATION};
use protocol::{DeviceSigningKey, StaticSecret};
use std::net::SocketAddr;
use std::time::Duration;
use tests::adversary::{initiation, network_psk, send_and_listen, static_secret, udp_datagrams};
use tests::{LanNetwork, PalNode, wait_until};

/// Every identifier of a device that must never cross the wire in the clear.
fn identifiers(node: &PalNode) -> Vec<(String, Vec<u8>)> {
    let signing = std::fs::read(node.state.join("device.key")).expect("device.key");
    let signing = DeviceSigningKey::from_bytes(&signing.try_into().expect("32 bytes")).public_key();
    let name = &node.name;
    vec![
        (format!("{name}'s static public key"), static_secret(node).public_key().as_bytes().to_vec()),
        (format!("{name}'s signing key"), signing.as_bytes().to_vec()),
        (format!("{name}'s device id"), signing.device_id().as_bytes().to_vec()),
        (format!("{name}'s device id (hex)"), signing.device_id().to_hex().into_bytes()),
        (format!("{name}'s name"), name.as_bytes().to_vec()),
    ]
}

fn endpoint_of(node: &PalNode, peer: &str) -> Option<String> {
    let status = node.status();
    status["peers"].as_array()?.iter().find(|p| p["name"] == peer)?["endpoint"].as_str().map(str::to_owned)
}

#[test]
fn dp07_dp09_dp14_dp16_dp17_outsiders_replays_forgeries_and_spoofers_get_nothing_and_observers_learn_nothing() {
    let mut net = LanNetwork::form(&["laptop", "phone"]);
    assert!(net.wait_for_membership(Duration::from_secs(20)), "membership did not converge");
    let laptop: SocketAddr = format!("{}:41641", net.node("laptop").address).parse().expect("address");
    let psk = network_psk(net.node("laptop"));

    // A fresh handshake and traffic under capture: the phone restarts and pings.
    let capture = net.node("laptop").netns.capture();
    net.node_mut("phone").down();
    net.node_mut("phone").up();
    let back = wait_until(Duration::from_secs(15), || net.node("phone").pal(&["ping", "laptop", "-c", "2"]).status.success());
    assert!(back, "phone cannot reach the laptop after restarting");
    let frames = capture.stop();
    let datagrams = udp_datagrams(&frames);

    // DP-17: no static key, signing key, device id, device name or network id in the clear.
    let log: serde_json::Value = serde_json::from_str(&net.node("laptop").pal_ok(&["log", "--json"])).expect("log");
    let network_hex = log[0]["hash"].as_str().expect("genesis").to_owned();
    let mut secrets = identifiers(net.node("laptop"));
    secrets.extend(identifiers(net.node("phone")));
    secrets.push(("the network id (hex)".into(), network_hex.clone().into_bytes()));
    let network_bytes: Vec<u8> = (0..64).step_by(2).map(|i| u8::from_str_radix(&network_hex[i..i + 2], 16).expect("hex")).collect();
    secrets.push(("the network id".into(), network_bytes));
    assert!(frames.len() > 10, "the capture saw {} frames", frames.len());
    for (what, bytes) in &secrets {
        assert!(!frames.iter().any(|f| f.windows(bytes.len()).any(|w| w == bytes.as_slice())), "{what} crossed the wire in the clear");
    }

    // DP-09: the phone's captured initiation, replayed from elsewhere, is not answered, and the
    // session goes on.
    let (attacker_ns, attacker_address) = net.lan.host("evil");
    let replayed = datagrams
        .iter()
        .find(|(_, to, payload)| *to == laptop && payload.first() == Some(&KIND_INITIATION) && payload.len() == 148)
        .map(|(_, _, payload)| payload.clone())
        .expect("a captured initiation to the laptop");
    let from_anywhere = format!("{attacker_address}:0");
    assert!(send_and_listen(&attacker_ns, &from_anywhere, &replayed, laptop, Duration::from_millis(700)).is_empty(), "a replayed initiation was answered");
    let phone_endpoint = endpoint_of(net.node("laptop"), "phone");
    assert!(phone_endpoint.as_deref().is_some_and(|e| e.starts_with(&net.node("phone").address)), "{phone_endpoint:?}");

    // DP-14: a replayed data packet and a forged one from a new address do not move the
    // phone's endpoint on the laptop.
    let data = datagrams
        .iter()
        .find(|(_, to, payload)| *to == laptop && payload.first() == Some(&KIND_DATA) && payload.len() > 32)
        .map(|(_, _, payload)| payload.clone())
        .expect("a captured data packet to the laptop");
    let mut forged = data.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x80;
    for datagram in [&data, &forged] {
        send_and_listen(&attacker_ns, &from_anywhere, datagram, laptop, Duration::from_millis(200));
    }
    assert_eq!(endpoint_of(net.node("laptop"), "phone"), phone_endpoint, "a replayed or forged packet moved the endpoint");
    let still = net.node("phone").pal_ok(&["ping", "laptop", "-c", "2"]);
    assert!(still.contains("path=direct"), "the session broke: {still}");

    // DP-16: the laptop (a member, authenticated) sends with an inner source that is not
    // its own: the phone drops it; the same ping from its own address arrives.
    let (phone_v4, _) = net.node("phone").overlay();
    let (laptop_v4, _) = net.node("laptop").overlay();
    net.node("laptop").netns.exec_ok("ip", &["addr", "add", "100.64.250.1/32", "dev", "pal0"]);
    let capture = net.node("phone").netns.capture();
    let spoofed = net.node("laptop").netns.exec("ping", &["-c", "2", "-W", "1", "-I", "100.64.250.1", &phone_v4]);
    let honest = net.node("laptop").netns.exec("ping", &["-c", "2", "-W", "1", "-I", &laptop_v4, &phone_v4]);
    let frames = capture.stop();
    assert!(!spoofed.status.success(), "a spoofed inner source got replies");
    assert!(honest.status.success(), "control: the honest ping failed");
    let octets = |a: &str| a.parse::<std::net::Ipv4Addr>().expect("v4").octets();
    let spoofed_header = [[100, 64, 250, 1], octets(&phone_v4)].concat();
    let honest_header = [octets(&laptop_v4), octets(&phone_v4)].concat();
    let seen = |header: &[u8]| frames.iter().any(|f| f.windows(8).any(|w| w == header));
    assert!(seen(&honest_header), "control: the honest ping never reached the phone's TUN");
    assert!(!seen(&spoofed_header), "a packet with a spoofed inner source reached the phone");

    // DP-07: an outsider's initiation (valid mac1: it knows the laptop's public key; even
    // the network's PSK) gets no answer at all; a member's does (control).
    let mut outsider = [0u8; 32];
    outsider[0] = 0x42;
    outsider[31] = 0x24;
    let stranger = initiation(&StaticSecret::from_bytes(outsider), static_secret(net.node("laptop")).public_key(), psk.clone());
    assert!(send_and_listen(&attacker_ns, &from_anywhere, &stranger, laptop, Duration::from_millis(700)).is_empty(), "an outsider's handshake was answered");
    let member = initiation(&static_secret(net.node("phone")), static_secret(net.node("laptop")).public_key(), psk);
    assert!(!send_and_listen(&attacker_ns, &from_anywhere, &member, laptop, Duration::from_millis(700)).is_empty(), "control: a member's handshake got no answer");
}
