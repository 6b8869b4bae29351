//! DHT-05 with real nodes: the control plane's libp2p identity rotates every identity epoch
//! (a day; 20 s here, through `PAL_IDENTITY_EPOCH`), and the network carries on — members
//! reconnect under their new PeerIds, prove themselves anew, and log entries and pings keep
//! flowing. The data plane does not notice: its sessions are not libp2p's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tests::{LanNetwork, wait_until};

const EPOCH: u64 = 20;

fn unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

#[test]
fn dht05_peer_ids_rotate_every_epoch_and_the_network_carries_on() {
    // SAFETY: the only test of this binary sets it before any thread or node starts.
    unsafe { std::env::set_var("PAL_IDENTITY_EPOCH", EPOCH.to_string()) };
    // Start just after a boundary, so that forming the network is not cut by a rotation.
    let into = unix() % EPOCH as f64;
    std::thread::sleep(Duration::from_secs_f64(EPOCH as f64 - into + 0.5));
    let mut net = LanNetwork::form(&["laptop", "phone"]);
    assert!(net.wait_for_membership(Duration::from_secs(10)), "membership did not converge");
    let seed: [u8; 32] = std::fs::read(net.node("phone").state.join("libp2p.key")).expect("key").try_into().expect("32 bytes");
    let before = node::p2p::peer_id(&seed).expect("peer id");
    // Across the next boundary: both rotate (and say so), and come back to each other.
    let rotated = wait_until(Duration::from_secs(EPOCH + 5), || {
        ["laptop", "phone"].iter().all(|n| net.node(n).log().contains("control-plane identity rotated"))
    });
    assert!(rotated, "no rotation: {}", net.node("laptop").log());
    let after = node::p2p::peer_id(&seed).expect("peer id");
    assert_ne!(before, after, "the phone's PeerId is the same after the epoch turned");
    let control = |from: &str, to: &str| -> String {
        let status = net.node(from).status();
        status["peers"].as_array().and_then(|peers| peers.iter().find(|p| p["name"] == to)).and_then(|p| p["control"].as_str()).unwrap_or("none").to_owned()
    };
    assert!(wait_until(Duration::from_secs(10), || control("laptop", "phone") == "direct"), "no control connection after the rotation");
    // The log flows over the new connections, and the overlay works.
    net.node("laptop").pal_ok(&["device", "invite", "--name", "after"]);
    let entries = |name: &str| serde_json::from_str::<serde_json::Value>(&net.node(name).pal_ok(&["log", "--json"])).map_or(0, |l| l.as_array().map_or(0, Vec::len));
    let laptop_entries = entries("laptop");
    assert!(wait_until(Duration::from_secs(10), || entries("phone") == laptop_entries), "the invite did not reach the phone after the rotation");
    net.node("laptop").pal_ok(&["ping", "phone", "-c", "2"]);
    net.node_mut("phone").down();
}
