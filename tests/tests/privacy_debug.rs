//! PRIV-02: debug mode is still privacy-safe. With `PAL_LOG=debug` (pal's own code at debug),
//! a network that forms, carries kernel and `pal ping` traffic over IPv4 and IPv6, invites and
//! revokes logs no inner destination address — nor any overlay or underlay address, key or
//! PeerId — anywhere (tailscale's TestLoggingPrivacy asserts the same of internet destinations).

use std::time::Duration;
use tests::{LanNetwork, wait_until};

#[test]
fn priv02_debug_logs_name_no_destination() {
    // SAFETY: the only test of this binary sets it before any thread or node starts.
    unsafe { std::env::set_var("PAL_LOG", "debug") };
    let mut net = LanNetwork::form(&["laptop", "phone", "desktop"]);
    assert!(net.wait_for_membership(Duration::from_secs(20)), "membership did not converge");
    assert!(wait_until(Duration::from_secs(15), || net.node("laptop").pal(&["ping", "phone", "-c", "2"]).status.success()));
    let (phone_v4, phone_v6) = net.node("phone").overlay();
    let (desktop_v4, _) = net.node("desktop").overlay();
    net.node("laptop").netns.exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", &phone_v4]);
    net.node("laptop").netns.exec("ping", &["-6", "-c", "3", "-i", "0.2", "-W", "2", &phone_v6]);
    net.node("phone").netns.exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", &desktop_v4]);
    // A destination outside the overlay through the tunnel's interface: no route, dropped,
    // and not named either.
    net.node("laptop").netns.exec("ping", &["-c", "1", "-W", "1", "-I", "pal0", "203.0.113.77"]);
    net.node("laptop").pal_ok(&["device", "invite", "--name", "spare"]);
    net.node("laptop").pal_ok(&["device", "revoke", "desktop"]);
    std::thread::sleep(Duration::from_secs(3));
    let mut secrets: Vec<(String, String)> = Vec::new();
    for node in &net.nodes {
        let (v4, v6) = node.overlay();
        secrets.push((format!("{}'s overlay IPv4", node.name), v4));
        secrets.push((format!("{}'s overlay IPv6", node.name), v6));
        secrets.push((format!("{}'s underlay address", node.name), node.address.clone()));
        let seed: [u8; 32] = std::fs::read(node.state.join("libp2p.key")).expect("key").try_into().expect("32 bytes");
        secrets.push((format!("{}'s PeerId", node.name), node::p2p::peer_id(&seed).expect("peer id").to_string()));
    }
    secrets.push(("an internet destination".into(), "203.0.113.77".into()));
    for node in &mut net.nodes {
        node.down();
    }
    let mut saw_debug = false;
    for node in &net.nodes {
        let output = node.log();
        saw_debug |= output.contains(" DEBUG ");
        for (what, text) in &secrets {
            assert!(!output.contains(text.as_str()), "{} logged {what} ({text}) at debug:\n{output}", node.name);
        }
    }
    assert!(saw_debug, "no debug line at all: PAL_LOG=debug did not take effect");
}
