//! Devices anywhere (#5): CloudPal on a public address, two devices behind one home router
//! (endpoint-independent NAT), one behind an office router (endpoint-independent) and one
//! behind a carrier's symmetric NAT. Real `pal` binaries in namespaces.
//!
//! Times to the first reply and to the first direct reply are printed for each pair type
//! (the numbers in the README come from here); they are not asserted tighter than "it
//! happens", as timing belongs in benchmarks.

use std::time::{Duration, Instant};
use tests::{NatNetwork, wait_until};

/// Pings `from` → `to` until a reply comes back on `path`; the time it took.
fn time_to(net: &NatNetwork, from: &str, to: &str, path: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    wait_until(limit, || net.ping_path(from, to).as_deref() == Some(path)).then(|| start.elapsed())
}

#[test]
fn devices_behind_nats_go_direct_where_the_nats_allow_and_through_cloudpal_where_not() {
    let start = Instant::now();
    let mut net = NatNetwork::form(|_| {});
    eprintln!("network formed in {:?}", start.elapsed());

    // Two devices behind different endpoint-independent NATs: direct, by simultaneous probing.
    let first_reply = time_to(&net, "laptop", "desktop", "relay", Duration::from_secs(20))
        .or_else(|| time_to(&net, "laptop", "desktop", "direct", Duration::from_secs(1)));
    let direct = time_to(&net, "laptop", "desktop", "direct", Duration::from_secs(30));
    eprintln!("EIM <-> EIM: first reply {first_reply:?}, direct {direct:?}");
    assert!(direct.is_some(), "laptop never reached desktop directly: {}", net.node("laptop").log());

    // Two devices behind the same NAT: their LAN path.
    let lan = time_to(&net, "laptop", "phone", "direct", Duration::from_secs(30));
    eprintln!("same NAT: direct {lan:?}");
    assert!(lan.is_some(), "laptop never reached phone directly");
    let status = net.node("laptop").status();
    let phone = status["peers"].as_array().expect("peers").iter().find(|p| p["name"] == "phone").expect("phone").clone();
    let phone_lan = net.node("phone").address.clone();
    assert!(phone["endpoint"].as_str().is_some_and(|e| e.starts_with(&format!("{phone_lan}:"))), "not the LAN path: {phone}");

    // Behind the symmetric NAT: through CloudPal, and never direct (no port prediction).
    let relayed = time_to(&net, "car", "laptop", "relay", Duration::from_secs(30));
    eprintln!("symmetric <-> EIM: relayed {relayed:?}");
    assert!(relayed.is_some(), "car never reached laptop through the relay: {}", net.node("car").log());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(net.ping_path("car", "laptop").as_deref(), Some("relay"), "a symmetric NAT was punched");
    let (laptop_v4, _) = net.node("laptop").overlay();
    let kernel_ping = net.node("car").netns.exec("ping", &["-c", "3", "-W", "2", &laptop_v4]);
    assert!(kernel_ping.status.success(), "kernel traffic through the relay failed");

    // With CloudPal stopped, the direct path keeps carrying traffic.
    net.node_mut("cloudpal").down();
    let (desktop_v4, _) = net.node("desktop").overlay();
    let still = net.node("laptop").netns.exec("ping", &["-c", "5", "-i", "0.5", "-W", "2", &desktop_v4]);
    assert!(still.status.success(), "direct path died with CloudPal: {}", String::from_utf8_lossy(&still.stdout));
    assert_eq!(net.ping_path("laptop", "desktop").as_deref(), Some("direct"));
}
