//! The DHT model against real libp2p-kad (issue #17): a small network of real swarms in this
//! test, and the checked-in measurement at 250–1,000 nodes. In its own test binary so that no
//! other test shares the cores while the swarms run on the wall clock.

use simulations::dht::{self, Dht, Settings};
use simulations::links::Links;
use simulations::scenarios::lookup::{self, Calibration, Run};
use std::time::Duration;

fn links(seed: u64) -> Links {
    Links::new(seed, Duration::from_millis(20), Duration::from_millis(200), 0.0)
}

/// Whether `model` is within `factor` of `real`, either way.
fn near(model: Duration, real: Duration, factor: f64) -> bool {
    let (m, r) = (model.as_secs_f64(), real.as_secs_f64());
    m <= r * factor && r <= m * factor
}

/// 60 real swarms with the node's settings, all on and 30 % off, beside the model of the same
/// size: both find every record, at medians within a factor of two.
#[test]
fn the_model_agrees_with_real_swarms_at_60_nodes() {
    let seed = 3;
    let measured = simulations::swarms::calibrate(60, &[0.0, 0.3], 40, seed, links(seed), Settings::NODE);
    for (offline, real) in [0.0, 0.3].into_iter().zip(&measured.runs) {
        let real = Run { nodes: 60, offline, lookups: real.clone() };
        let mut dht = Dht::new(60, seed, links(seed), Settings::NODE);
        let model = Run { nodes: 60, offline, lookups: dht::lookups(&mut dht, 400, offline, seed) };
        assert_eq!(real.success(), 1.0, "real swarms, {offline} off: {:?}", real.lookups);
        assert_eq!(model.success(), 1.0, "the model, {offline} off");
        let (real_p50, model_p50) = (real.latency(50.0).expect("found"), model.latency(50.0).expect("found"));
        assert!(near(model_p50, real_p50, 2.0), "{offline} off: model p50 {model_p50:?}, real {real_p50:?}");
        assert!(real.requests() >= 1.0 && model.requests() >= 1.0);
    }
}

/// The checked-in measurement parses, is of the node's current settings (else the scenario's
/// table calls it stale), covers 250 and 500 nodes at each share, and the model beside it
/// stays close: medians within 1.5×, p95 within 2×, no more than a point less found.
#[test]
fn the_checked_in_calibration_is_current_and_the_model_matches_it() {
    let calibration = Calibration::parse(lookup::CALIBRATION).expect("calibration.tsv parses");
    assert_eq!(calibration.settings, format!("{:?}", Settings::NODE), "the node's DHT settings changed: run `cargo run --release -p simulations -- calibrate`");
    let sizes: Vec<usize> = calibration.rows.iter().map(|r| r.nodes).collect();
    assert!(sizes.contains(&250) && sizes.iter().any(|n| *n >= 500), "{sizes:?}");
    for share in lookup::SHARES {
        assert_eq!(calibration.rows.iter().filter(|r| r.offline == share).count(), calibration.rows.len() / lookup::SHARES.len());
    }
    let report = lookup::run(1, 300, 10);
    for (real, model) in calibration.rows.iter().zip(&report.calibration) {
        assert_eq!((real.nodes, real.offline), (model.nodes, model.offline));
        let at = format!("{} nodes, {} off", real.nodes, real.offline);
        assert!(model.success() + 0.01 >= real.found as f64 / real.lookups as f64, "{at}: model found {}", model.success());
        assert!(near(model.latency(50.0).expect("found"), real.p50.expect("found"), 1.5), "{at}: p50 model {:?} real {:?}", model.latency(50.0), real.p50);
        assert!(near(model.latency(95.0).expect("found"), real.p95.expect("found"), 2.0), "{at}: p95 model {:?} real {:?}", model.latency(95.0), real.p95);
    }
    assert!(!report.calibration_table().title.contains("STALE"));
    // What `calibrate` writes is what the scenario reads.
    assert_eq!(Calibration::parse(&calibration.render()).expect("its own rendering parses"), calibration);
}
