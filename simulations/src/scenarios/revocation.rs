//! How fast a revocation from one admin reaches every online device: real cores, the real log
//! and sync, links of 20–200 ms one way with 2 % segment loss.

use crate::control::{ControlSim, percentile};
use crate::table::{Table, human, verdict};
use membership::DeviceStatus;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Report {
    pub network: String,
    /// When the revocation reached each online device, after the admin appended it.
    pub arrivals: Vec<Duration>,
    pub online: usize,
    /// Online devices it never reached.
    pub missed: usize,
    pub events: u64,
    /// Times a node that knew of the revocation still served the revoked device as a member.
    pub violations: usize,
    /// Every online node ends with byte-identical state.
    pub identical: bool,
}

pub const GOAL_P99: Duration = Duration::from_secs(2);

/// The founder revokes device `revoked`; runs until every online device knows, checking after
/// every event that none that knows still serves it.
pub fn spread(sim: &mut ControlSim, revoked: usize) -> Report {
    let events = sim.events;
    let name = sim.nodes[revoked].name.clone();
    let device = sim.members[revoked].record.signing_key.device_id();
    let revoked_peer = sim.nodes[revoked].peer;
    let time = sim.time;
    sim.nodes[0].core.revoke(&name, time).expect("the founder revokes");
    sim.drain(0);
    let began = sim.elapsed();
    let online: Vec<usize> = (0..sim.nodes.len()).filter(|i| *i != revoked && sim.nodes[*i].online).collect();
    let mut pending: Vec<usize> = online.clone();
    let mut reached: Vec<usize> = Vec::new();
    let mut arrivals = Vec::new();
    let mut violations = 0;
    sim.run_until(began + Duration::from_secs(120), |sim| {
        pending.retain(|&index| {
            let knows = sim.nodes[index].core.state().devices.get(&device).is_some_and(|d| d.status == DeviceStatus::Revoked);
            if knows {
                arrivals.push(sim.elapsed() - began);
                reached.push(index);
            }
            !knows
        });
        violations += reached.iter().filter(|&&index| sim.nodes[index].core.member_peers().contains_key(&revoked_peer)).count();
        pending.is_empty()
    });
    arrivals.sort();
    let first = sim.nodes[online[0]].core.state().encode();
    let identical = online.iter().all(|&i| sim.nodes[i].core.state().encode() == first);
    Report { network: sim.describe(), online: online.len(), missed: pending.len(), arrivals, events: sim.events - events, violations, identical }
}

impl Report {
    pub fn p(&self, percent: f64) -> Duration {
        percentile(&self.arrivals, percent)
    }

    pub fn met(&self) -> bool {
        self.missed == 0 && self.violations == 0 && self.identical && self.p(99.0) <= GOAL_P99
    }

    pub fn table(&self) -> Table {
        let mut table = Table::new(
            format!("revocation from the founder to every online device — {}; {} events", self.network, self.events),
            &["p50", "p90", "p99", "max", "missed", "served after", "identical state", "goal p99 ≤ 2 s"],
        );
        table.row(vec![
            human(self.p(50.0)),
            human(self.p(90.0)),
            human(self.p(99.0)),
            human(self.p(100.0)),
            self.missed.to_string(),
            self.violations.to_string(),
            self.identical.to_string(),
            verdict(self.met()),
        ]);
        table
    }
}
