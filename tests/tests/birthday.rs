//! Birthday punching (#15 item 3), real `pal` binaries in namespaces: a laptop behind a home
//! router (endpoint-independent NAT), CloudPal on the internet, and ten cars behind one
//! carrier's symmetric NAT (`masquerade fully-random`: a random outside port per destination,
//! replies only from that destination). Each car–laptop pair is one run of the punch: the car
//! opens 256 mappings toward the laptop, the laptop sprays the carrier's address, and the pair
//! goes direct when a probe lands on a mapping. A van behind another carrier's symmetric NAT
//! stays relayed with a car (two symmetric sides), and neither spends a probe on the other.

use std::time::{Duration, Instant};
use tests::{Lan, Mapping, NatRouter, PalNode, cloudpal_added_by, founding_laptop, wait_until};

/// Ten pairs, ten runs (`BIRTHDAY_CARS` sets fewer while debugging).
fn car_count() -> usize {
    std::env::var("BIRTHDAY_CARS").ok().and_then(|n| n.parse().ok()).unwrap_or(10)
}

fn path(from: &PalNode, to: &str) -> Option<String> {
    let output = from.pal(&["ping", to, "-c", "1"]);
    let text = String::from_utf8_lossy(&output.stdout);
    output.status.success().then(|| text.split("path=").nth(1)?.split_whitespace().next().map(str::to_owned)).flatten()
}

fn punches(node: &PalNode) -> (u64, u64, u64) {
    let status = node.status();
    let count = |field: &str| status["punches"][field].as_u64().unwrap_or_else(|| panic!("no punch counts: {status}"));
    (count("opened"), count("sprays"), count("probes"))
}

/// Birthday attempts `node` made with the peer named `other`, in either role.
fn pair_punches(node: &PalNode, other: &str) -> u64 {
    let status = node.status();
    let peer = status["peers"].as_array().and_then(|peers| peers.iter().find(|p| p["name"] == other).cloned());
    peer.and_then(|p| p["punches"].as_u64()).unwrap_or_else(|| panic!("{}: no punch count for {other}: {status}", node.name))
}

#[test]
fn cars_behind_a_symmetric_nat_go_direct_with_a_laptop_by_birthday_punching() {
    let mut internet = Lan::new("203.0.113");
    let mut home = NatRouter::new(&mut internet, "10.1.0", Mapping::EndpointIndependent);
    let mut carrier = NatRouter::new(&mut internet, "10.3.0", Mapping::Symmetric);
    let mut other_carrier = NatRouter::new(&mut internet, "10.4.0", Mapping::Symmetric);
    let laptop = founding_laptop(&mut home);
    let cloudpal = cloudpal_added_by(&laptop, &mut internet);
    let mut cars = Vec::new();
    let count = car_count();
    for index in 0..=count {
        // The last one is the van, behind the other carrier.
        let (name, router) = if index < count { (format!("car{index}"), &mut carrier) } else { ("van".to_owned(), &mut other_carrier) };
        let (netns, address) = router.host(&name);
        let mut car = PalNode::new(&name, netns, address);
        let invite = laptop.pal_ok(&["device", "invite", "--name", &name]);
        let code = invite.lines().last().expect("code on the last line").trim().to_owned();
        car.pal_ok(&["join", &code, "--name", &name]);
        car.up();
        cars.push(car);
    }
    let van = cars.pop().expect("the van");

    // Each side knows its NAT once CloudPal answered the check on its two ports.
    let checked = |node: &PalNode, kind: &str| wait_until(Duration::from_secs(20), || node.status()["nat"] == kind);
    assert!(checked(&laptop, "endpoint-independent"), "laptop: {}", laptop.status());
    for car in cars.iter().chain([&van]) {
        assert!(checked(car, "endpoint-dependent"), "{}: {}", car.name, car.status());
    }
    // `pal netcheck` says the same, with the carrier's address as the car's public one.
    let report: serde_json::Value = serde_json::from_str(&cars[0].pal_ok(&["netcheck", "--json"])).expect("netcheck is JSON");
    assert_eq!(report["nat_mapping"], "endpoint-dependent", "{report}");
    assert_eq!((report["udp"].as_bool(), report["behind_nat"].as_bool()), (Some(true), Some(true)), "{report}");
    let public = report["public_address"].as_str().unwrap_or_default();
    assert!(public.starts_with(&format!("{}:", carrier.public_address)), "{report}");
    assert_eq!(report["cloudpal"], "cloudpal");
    let report: serde_json::Value = serde_json::from_str(&laptop.pal_ok(&["netcheck", "--json"])).expect("netcheck is JSON");
    assert_eq!(report["nat_mapping"], "endpoint-independent", "{report}");
    assert!(report["public_address"].as_str().unwrap_or_default().starts_with(&format!("{}:", home.public_address)), "{report}");

    // Each car–laptop pair: relayed first, then direct.
    let mut direct = 0;
    for car in &cars {
        let start = Instant::now();
        let first = wait_until(Duration::from_secs(20), || path(&laptop, &car.name).is_some());
        assert!(first, "laptop never reached {}: {}", car.name, car.log());
        let punched = wait_until(Duration::from_secs(15), || path(&laptop, &car.name).as_deref() == Some("direct"));
        eprintln!("laptop -> {}: {} after {:?} {:?}", car.name, if punched { "direct" } else { "still relayed" }, start.elapsed(), punches(car));
        if !punched {
            for line in car.log().lines().chain(laptop.log().lines()).filter(|l| l.contains("birthday") || l.contains("member's NAT")) {
                eprintln!("  {line}");
            }
        }
        direct += usize::from(punched);
    }
    let (_, sprays, probes) = punches(&laptop);
    eprintln!("{direct} of {count} pairs direct; the laptop sprayed {sprays} times, {probes} probes");
    assert!(direct * 10 >= count * 9, "only {direct} of {count} car-laptop pairs went direct");
    assert!(probes <= sprays * protocol::birthday::SPRAY_PROBES as u64, "more probes than the budget");

    // A punched path carries kernel traffic both ways, and the car's status says direct.
    let (laptop_v4, _) = laptop.overlay();
    let car = &cars[0];
    let ping = car.netns.exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", &laptop_v4]);
    assert!(ping.status.success(), "no traffic over the punched path: {}", String::from_utf8_lossy(&ping.stdout));

    // Two symmetric sides: relayed, and no attempt between them. (Each side's totals are no
    // measure: the van, the last to join, may still punch the laptop meanwhile.)
    let relayed = wait_until(Duration::from_secs(20), || path(&cars[0], "van").as_deref() == Some("relay"));
    assert!(relayed, "car0 never reached the van through the relay: {}", cars[0].log());
    let (van_v4, _) = van.overlay();
    let traffic = cars[0].netns.exec("ping", &["-c", "10", "-i", "0.3", "-W", "2", &van_v4]);
    assert!(traffic.status.success(), "car0 -> van through the relay failed");
    assert_eq!(path(&cars[0], "van").as_deref(), Some("relay"), "two symmetric NATs were punched?");
    for (node, other) in [(&cars[0], "van"), (&van, "car0")] {
        assert_eq!(pair_punches(node, other), 0, "{} tried a punch toward another symmetric NAT", node.name);
        let (_, sprays, probes) = punches(node);
        assert_eq!((sprays, probes), (0, 0), "{} (symmetric) sprayed", node.name);
    }
    // The per-peer counts are the ones a punch moves: the laptop's (the easy side, which only
    // sprays) add up to its sprays, in one snapshot.
    let status = laptop.status();
    let per_peer: u64 = status["peers"].as_array().expect("peers").iter().filter_map(|p| p["punches"].as_u64()).sum();
    assert_eq!(Some(per_peer), status["punches"]["sprays"].as_u64(), "per-peer punches do not add up: {status}");
    drop(cloudpal);
}
