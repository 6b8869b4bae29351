//! Privacy rows with real nodes (SECURITY-TESTS.md 5.2): PRIV-01, at the default log level a
//! scenario with handshakes, direct and relayed traffic, a roaming device, an invite and a
//! revocation leaves no addresses, inner destinations, keys, PeerIDs, network id, invite code
//! or DHT record key in any node's output; PRIV-05, the state directory holds only the
//! allow-listed files, and only the peer cache holds addresses.

use protocol::DeviceSigningKey;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tests::adversary::static_secret;
use tests::{NatNetwork, PalNode, wait_until};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn device_id(node: &PalNode) -> protocol::DeviceId {
    let seed: [u8; 32] = std::fs::read(node.state.join("device.key")).expect("device.key").try_into().expect("32 bytes");
    DeviceSigningKey::from_bytes(&seed).public_key().device_id()
}

/// What must never appear in a node's output: (what it is, the text).
fn secrets_of(node: &PalNode) -> Vec<(String, String)> {
    let name = &node.name;
    let read32 = |file: &str| -> [u8; 32] { std::fs::read(node.state.join(file)).expect(file).try_into().expect("32 bytes") };
    let signing = DeviceSigningKey::from_bytes(&read32("device.key")).public_key();
    let peer_id = node::p2p::peer_id(&read32("libp2p.key")).expect("peer id");
    let (v4, v6) = node.overlay();
    vec![
        (format!("{name}'s underlay address"), node.address.clone()),
        (format!("{name}'s overlay IPv4 (an inner destination)"), v4),
        (format!("{name}'s overlay IPv6 (an inner destination)"), v6),
        (format!("{name}'s static public key"), hex(static_secret(node).public_key().as_bytes())),
        (format!("{name}'s signing key"), hex(signing.as_bytes())),
        (format!("{name}'s device id"), signing.device_id().to_hex()),
        (format!("{name}'s PeerID"), peer_id.to_string()),
    ]
}

#[test]
fn priv01_priv05_default_logs_say_nothing_and_state_holds_only_what_it_must() {
    let mut net = NatNetwork::form(|_| {});
    // Direct and relayed traffic, kernel and `pal ping`.
    let relayed = wait_until(Duration::from_secs(15), || net.ping_path("car", "laptop").is_some());
    assert!(relayed, "car cannot reach the laptop");
    let direct = wait_until(Duration::from_secs(20), || net.ping_path("laptop", "desktop").as_deref() == Some("direct"));
    assert!(direct, "no direct path laptop-desktop");
    let (desktop_v4, _) = net.node("desktop").overlay();
    net.node("phone").netns.exec_ok("ping", &["-c", "3", "-i", "0.2", &desktop_v4]);

    let mut secrets: Vec<(String, String)> = net.nodes.iter().flat_map(secrets_of).collect();
    for router in &net.routers {
        secrets.push(("a router's public address".into(), router.public_address.clone()));
    }
    let log: serde_json::Value = serde_json::from_str(&net.node("laptop").pal_ok(&["log", "--json"])).expect("log");
    let network_hex = log[0]["hash"].as_str().expect("genesis").to_owned();
    let network = membership::NetworkId(
        (0..64).step_by(2).map(|i| u8::from_str_radix(&network_hex[i..i + 2], 16).expect("hex")).collect::<Vec<u8>>().try_into().expect("32"),
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    secrets.push(("the network id".into(), network_hex));
    for device in net.nodes.iter().map(device_id) {
        // Under the secret the records were published with before the test's revocation.
        let secret = membership::state::NetworkSecret::genesis(&network);
        secrets.push(("a presence record key".into(), hex(node::control::presence::key(&secret, now.as_secs(), &device).as_ref())));
    }
    secrets.push(("the data port".into(), "41641".into()));

    // Roaming: the desktop moves to a new LAN address; traffic follows.
    let desktop = &net.node("desktop").netns;
    desktop.ip(&["addr", "del", &format!("{}/24", net.node("desktop").address), "dev", "eth0"]);
    desktop.ip(&["addr", "add", "10.2.0.201/24", "dev", "eth0"]);
    desktop.ip(&["route", "replace", "default", "via", &net.routers[1].gateway]);
    secrets.push(("the desktop's new underlay address".into(), "10.2.0.201".into()));
    let moved = wait_until(Duration::from_secs(20), || net.ping_path("laptop", "desktop").is_some());
    assert!(moved, "the desktop was lost after moving");

    // An invite code, and a revocation the revoked device hears about.
    let invite = net.node("laptop").pal_ok(&["device", "invite", "--name", "spare"]);
    let code = invite.lines().last().expect("code").trim().to_owned();
    secrets.push(("an invite code".into(), code[4..40].to_owned()));
    secrets.push(("an invite code (upper case)".into(), code[4..40].to_ascii_uppercase()));
    net.node("laptop").pal_ok(&["device", "revoke", "car"]);
    let told = wait_until(Duration::from_secs(10), || net.node("car").log().contains("has been revoked"));
    assert!(told, "the car was not told: {}", net.node("car").log());

    // Everything every node printed, after a clean stop.
    for node in &mut net.nodes {
        node.down();
    }
    for node in &net.nodes {
        let output = node.log();
        assert!(output.contains("node up") && output.contains("node down"), "{}: not the whole log: {output}", node.name);
        for (what, text) in &secrets {
            assert!(!output.contains(text.as_str()), "{} logged {what} ({text}):\n{output}", node.name);
        }
        for line in output.lines() {
            assert!(line.contains(" INFO ") || line.contains(" WARN "), "{}: not a lifecycle line: {line}", node.name);
        }
    }

    // PRIV-05: only the allow-listed files; only the peer cache holds addresses.
    // (CloudPal also keeps its TCP fallback's self-signed certificate and key.)
    const ALLOWED: [&str; 8] = ["device.key", "static.key", "libp2p.key", "membership.redb", "peers.txt", "pal.lock", "tls.crt", "tls.key"];
    let addresses: Vec<&(String, String)> = secrets.iter().filter(|(what, _)| what.contains("address")).collect();
    for node in &net.nodes {
        for entry in std::fs::read_dir(&node.state).expect("state dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
            assert!(ALLOWED.contains(&name.as_str()), "{}: unexpected file {name} in the state directory", node.name);
            if name == "peers.txt" {
                continue;
            }
            let bytes = std::fs::read(&path).expect("read");
            // (As text: four raw octets would match by chance somewhere in a database file.)
            for (what, text) in &addresses {
                assert!(!bytes.windows(text.len()).any(|w| w == text.as_bytes()), "{}: {name} holds {what}", node.name);
            }
        }
    }
}
