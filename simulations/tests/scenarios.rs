//! Each control-plane scenario of issue #17 at a small size (80 devices, so past the full
//! mesh), on one settled network, with its goals and invariants asserted; and the same seed
//! gives the same run.

use simulations::scenarios::{self, Life};
use std::time::Duration;

#[test]
fn a_small_network_idles_quietly_spreads_a_revocation_and_heals_a_partition() {
    let mut sim = Life::small(5).settled();
    let devices = sim.nodes.len();
    // Past the full mesh: each device keeps a handful of connections, not one to everyone.
    assert!(sim.connection_count() < devices * 8, "{} connections for {devices} devices", sim.connection_count());

    let idle = scenarios::idle::measure(&mut sim, Duration::from_secs(2 * 3600));
    assert!(!idle.devices.is_empty());
    // Issue #17's goal: 20 KB/h for every device (the busiest here is about 7).
    assert!(idle.met(), "{}", idle.table().render());
    assert!(idle.devices[0] > 0, "an idle device still pings and checks: {}", idle.table().render());
    assert!(!idle.messages.contains_key("kad-get"), "no DHT walks while a CloudPal is there: {:?}", idle.messages);

    let spread = scenarios::revocation::spread(&mut sim, scenarios::REVOKED);
    assert_eq!(spread.missed, 0, "{}", spread.table().render());
    assert_eq!(spread.violations, 0);
    assert!(spread.identical);
    assert_eq!(spread.arrivals.len(), spread.online);
    assert!(spread.met(), "{}", spread.table().render());

    let partition = scenarios::partition::run(&mut sim, Duration::from_secs(3600));
    assert_eq!(partition.lost, 0, "{}", partition.table().render());
    assert!(partition.identical && partition.disagreements == 0);
    assert!(partition.appended >= 6, "both sides appended: {}", partition.appended);
    assert!(partition.met(), "{}", partition.table().render());
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut sim = Life { devices: 40, ..Life::small(seed) }.settled();
        let spread = scenarios::revocation::spread(&mut sim, scenarios::REVOKED);
        (spread.arrivals, sim.events)
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9).0, run(10).0);
}

/// The NAT mixes at 16 devices: the share of direct pairs meets issue #17's goals, and the path
/// code's cases hold — an open or full-cone side goes direct with anyone who has UDP, two
/// endpoint-independent sides always do, an independent and a symmetric one nearly always
/// (birthday punching), two symmetric ones and a side without UDP never do — and each device's
/// own NAT check names its mapping right.
#[test]
fn nat_mixes_go_direct_where_the_nats_allow_it() {
    use simulations::nat::{self, NatType};
    for mix in [nat::HOME_BROADBAND, nat::MOBILE_HEAVY] {
        let report = nat::run(&mix, 16, 3, Duration::from_secs(120));
        assert_eq!(report.pairs, 16 * 15 / 2);
        let kinds = nat::population(&mix, 16, 3);
        let dependent = kinds.iter().filter(|k| matches!(k, NatType::Symmetric | NatType::CgnatSymmetric)).count();
        let blocked = kinds.iter().filter(|k| **k == NatType::UdpBlocked).count();
        assert_eq!(report.checked, (16 - dependent - blocked, dependent, blocked), "{}", report.table().render());
        let independent = |k: NatType| matches!(k, NatType::Open | NatType::FullCone | NatType::PortRestricted | NatType::CgnatIndependent);
        for ((a, b), (direct, pairs)) in &report.by_kinds {
            let table = report.table().render();
            if *a == NatType::UdpBlocked || *b == NatType::UdpBlocked || (!independent(*a) && !independent(*b)) {
                assert_eq!(*direct, 0, "{a:?} + {b:?}: {table}");
            } else if (independent(*a) && independent(*b)) || matches!(a, NatType::Open | NatType::FullCone) {
                assert_eq!(direct, pairs, "{a:?} + {b:?}: {table}");
            } else {
                // An endpoint-independent side and a symmetric one: birthday punching, one
                // attempt a minute per pair (each about nine in ten), one at a time per device.
                assert!(*direct * 10 >= *pairs * 8, "{a:?} + {b:?}: {table}");
            }
        }
        assert!(report.met(), "{}", report.table().render());
    }
}

/// The DHT model at 1,000 nodes: with everyone on every lookup finds the record, in a few
/// requests (a handful of rounds of α); nodes off make lookups slower and rarer, never faster;
/// and the K holders are the K closest by XOR.
#[test]
fn dht_lookups_find_records_and_suffer_from_nodes_off() {
    use simulations::scenarios::lookup;
    let report = lookup::run(4, 1000, 200);
    let (all, thirty, half) = (&report.runs[0], &report.runs[1], &report.runs[2]);
    assert_eq!(all.success(), 1.0, "{}", report.table().render());
    assert!(all.requests() >= 1.0 && all.requests() <= 20.0, "{}", report.table().render());
    assert!(thirty.success() <= all.success() && half.success() <= thirty.success() + 0.02, "{}", report.table().render());
    assert!(all.latency(50.0) <= thirty.latency(50.0).or(Some(std::time::Duration::MAX)));
    // Requests grow with the DHT (log n), from the calibration sizes up.
    let sizes: Vec<f64> = report.calibration.iter().filter(|r| r.offline == 0.0).map(|r| r.requests()).collect();
    assert!(sizes.len() >= 2, "the calibration's sizes: {sizes:?}");
    assert!(sizes.windows(2).all(|w| w[0] <= w[1] + 0.3), "{sizes:?}");
    let dht = simulations::dht::Dht::new(300, 9, simulations::links::Links::new(9, std::time::Duration::from_millis(20), std::time::Duration::from_millis(200), 0.0), simulations::dht::Settings::NODE);
    let holders = dht.holders(12345);
    assert_eq!(holders.len(), simulations::dht::K);
}
