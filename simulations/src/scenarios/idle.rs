//! What an idle network of a thousand devices costs each of them on the control plane: every
//! byte its core's messages, pings, dials and DHT walks put on the wire (with what TCP, Noise,
//! Yamux and multistream-select add: [`crate::control::overhead`]), sent and received, over an
//! hour in which nothing happens.

use crate::control::{ControlSim, Sent, percentile};
use crate::table::{Table, verdict};
use membership::Role;
use std::collections::BTreeMap;
use std::time::Duration;

/// Bytes an hour per device, sent and received together.
pub const GOAL_BYTES_PER_HOUR: u64 = 20_000;

#[derive(Debug, Clone)]
pub struct Report {
    pub network: String,
    /// Bytes an hour of each online device that is not a CloudPal, sorted.
    pub devices: Vec<u64>,
    /// Each CloudPal's.
    pub cloudpals: Vec<u64>,
    /// Messages sent in the two hours, by kind, over all nodes.
    pub messages: BTreeMap<&'static str, Sent>,
}

pub fn measure(sim: &mut ControlSim, hour: Duration) -> Report {
    sim.reset_counters();
    sim.run_for(hour);
    let scale = |bytes: u64| (bytes as f64 * 3600.0 / hour.as_secs_f64()) as u64;
    let mut devices: Vec<u64> = sim.nodes.iter().filter(|n| n.online && n.role != Role::CloudPal).map(|n| scale(n.sent + n.received)).collect();
    devices.sort_unstable();
    let cloudpals = sim.nodes.iter().filter(|n| n.role == Role::CloudPal).map(|n| scale(n.sent + n.received)).collect();
    let mut messages = BTreeMap::new();
    for node in &sim.nodes {
        for (kind, sent) in &node.messages {
            messages.entry(*kind).or_insert_with(Sent::default).add(*sent);
        }
    }
    Report { network: sim.describe(), devices, cloudpals, messages }
}

impl Report {
    fn at(&self, percent: f64) -> u64 {
        percentile(&self.devices, percent)
    }

    pub fn met(&self) -> bool {
        self.devices.last().is_some_and(|max| *max <= GOAL_BYTES_PER_HOUR)
    }

    pub fn table(&self) -> Table {
        let mut table = Table::new(
            format!("idle control traffic per device, sent and received, per hour over two idle hours — {}", self.network),
            &["p50", "p99", "max", "each CloudPal", "messages sent in the two hours (mean size)", "goal ≤ 20 KB/h"],
        );
        let kb = |b: u64| format!("{:.1} KB/h", b as f64 / 1000.0);
        table.row(vec![
            kb(self.at(50.0)),
            kb(self.at(99.0)),
            kb(self.devices.last().copied().unwrap_or(0)),
            self.cloudpals.iter().map(|b| kb(*b)).collect::<Vec<_>>().join(", "),
            self.messages.iter().map(|(k, v)| format!("{k} {} ({} B)", v.count, v.bytes / v.count.max(1))).collect::<Vec<_>>().join(", "),
            verdict(self.met()),
        ]);
        table
    }
}
