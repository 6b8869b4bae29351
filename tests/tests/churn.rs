//! ROB-02 and PRIV-08 with real nodes in namespaces.
//!
//! ROB-02: a node whose peers come and go (restarts, a rogue client, pings) holds no more
//! descriptors and threads afterwards than before. PRIV-08: nothing leaves a node's namespace
//! except to its peers — no DNS, no bootstrap servers, no telemetry, no update checks — which
//! an nftables counter on every other destination shows.

use std::time::Duration;
use tests::{LanNetwork, wait_until};

fn count(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn rob02_peers_coming_and_going_leak_no_descriptors_or_threads() {
    let mut net = LanNetwork::form(&["laptop", "phone", "desktop"]);
    assert!(net.wait_for_membership(Duration::from_secs(20)), "membership did not converge");
    assert!(wait_until(Duration::from_secs(15), || net.node("laptop").pal(&["ping", "phone", "-c", "1"]).status.success()));
    let pid = net.node("laptop").pid().expect("laptop running");
    // Let the first connections settle (connected data sockets, control connections).
    std::thread::sleep(Duration::from_secs(2));
    let (fds_before, threads_before) = (count(pid, "fd"), count(pid, "task"));
    for round in 0..4 {
        for peer in ["phone", "desktop"] {
            net.node_mut(peer).down();
            net.node_mut(peer).up();
        }
        let back = wait_until(Duration::from_secs(20), || {
            net.node("laptop").pal(&["ping", "phone", "-c", "1"]).status.success() && net.node("laptop").pal(&["ping", "desktop", "-c", "1"]).status.success()
        });
        assert!(back, "round {round}: the peers did not come back: {}", net.node("laptop").log());
    }
    // Give closed connections and idle sockets their timeouts' worth of time.
    std::thread::sleep(Duration::from_secs(3));
    let (fds_after, threads_after) = (count(pid, "fd"), count(pid, "task"));
    eprintln!("laptop: {fds_before} → {fds_after} descriptors, {threads_before} → {threads_after} threads over 4 rounds of churn");
    // A handful of sockets may differ (which connection a peer's redial landed on); a leak
    // grows with each round.
    assert!(fds_after <= fds_before + 6, "descriptors grew from {fds_before} to {fds_after}");
    assert!(threads_after <= threads_before + 2, "threads grew from {threads_before} to {threads_after}");
}

#[test]
fn priv08_nothing_leaves_a_node_but_traffic_to_its_peers() {
    let net = LanNetwork::form(&["laptop", "phone"]);
    // Count every packet to anything that is not the LAN of the two peers, the overlay, or
    // IPv6 link-local neighbour discovery: a DNS lookup, a public bootstrap peer, a STUN server,
    // an update check would all show up here.
    for name in ["laptop", "phone"] {
        let netns = &net.node(name).netns;
        let ruleset = r#"table inet priv08 {
            counter stray {}
            chain output {
                type filter hook output priority 0; policy accept;
                oifname "pal0" accept
                oifname "lo" accept
                ip daddr 198.51.100.0/24 accept
                ip6 daddr fe80::/10 accept
                ip6 daddr ff02::/16 accept
                counter name stray
            }
        }"#;
        let path = std::env::temp_dir().join(tests::unique("priv08-"));
        std::fs::write(&path, ruleset).expect("ruleset");
        netns.exec_ok("nft", &["-f", path.to_str().expect("path")]);
        let _ = std::fs::remove_file(&path);
    }
    assert!(net.wait_for_membership(Duration::from_secs(20)), "membership did not converge");
    assert!(wait_until(Duration::from_secs(15), || net.node("laptop").pal(&["ping", "phone", "-c", "2"]).status.success()));
    let (_, phone_v6) = net.node("phone").overlay();
    net.node("laptop").netns.exec("ping", &["-6", "-c", "2", "-W", "2", &phone_v6]);
    net.node("laptop").pal_ok(&["device", "invite", "--name", "later"]);
    // Presence publications, lookups, anti-entropy and path exchanges all run meanwhile.
    std::thread::sleep(Duration::from_secs(8));
    for name in ["laptop", "phone"] {
        let listed = net.node(name).netns.exec_ok("nft", &["list", "counter", "inet", "priv08", "stray"]);
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        assert!(text.contains("packets 0 bytes 0"), "{name} sent packets elsewhere than to its peers: {text}");
    }
}
