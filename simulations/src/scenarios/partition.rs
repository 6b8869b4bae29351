//! The network splits into two halves for an hour (each with an admin and a CloudPal), both
//! append to the log, then the split heals: how long until every online device holds the
//! same log and byte-identical state, with no entry of either side lost.

use crate::control::ControlSim;
use crate::table::{Table, human, verdict};
use membership::EntryHash;
use std::collections::BTreeSet;
use std::time::Duration;

pub const GOAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Report {
    pub network: String,
    pub appended: usize,
    /// From the heal until the last online device held every entry; `None` if it never did.
    pub converged: Option<Duration>,
    /// From the heal until the first connection across.
    pub first_across: Option<Duration>,
    pub identical: bool,
    /// Entries appended on either side missing from some online device at the end.
    pub lost: usize,
    /// Times two devices that both held an entry disagreed on the state it settled (checked
    /// at every event among the devices that hold every entry).
    pub disagreements: usize,
}

pub fn run(sim: &mut ControlSim, split_for: Duration) -> Report {
    let count = sim.nodes.len();
    let before: BTreeSet<EntryHash> = sim.nodes[0].core.log().expect("a log").entries().map(|e| e.hash()).collect();
    let (left, right): (Vec<usize>, Vec<usize>) = (0..count).partition(|i| i % 2 == 0);
    sim.partition(&left, &right);
    // The founder (0) on the left, the second admin (1) on the right: each invites a device
    // twice over the hour, and each revokes one member of its own side.
    let rounds = 2u32;
    for round in 0..rounds {
        sim.run_for(split_for / (rounds + 1));
        for (admin, victim) in [(0usize, 4 + 2 * round as usize), (1, 5 + 2 * round as usize)] {
            let time = sim.time;
            let name = format!("visitor-{admin}-{round}");
            sim.nodes[admin].core.invite(&name, membership::Role::Member, &[], Duration::from_secs(7 * 24 * 3600), time).expect("an invite");
            if round == 0 {
                let victim_name = sim.nodes[victim].name.clone();
                sim.nodes[admin].core.revoke(&victim_name, time).expect("a revocation");
            }
            sim.drain(admin);
        }
    }
    sim.run_for(split_for / (rounds + 1));
    // Every entry either side appended while apart (what came before, everyone holds).
    let mut wanted: BTreeSet<EntryHash> = BTreeSet::new();
    for admin in [0usize, 1] {
        wanted.extend(sim.nodes[admin].core.log().expect("a log").entries().map(|e| e.hash()).filter(|h| !before.contains(h)));
    }
    sim.heal();
    let healed = sim.elapsed();
    // The devices that should end with everything: online and not revoked on either side.
    let revoked: BTreeSet<usize> = (0..count)
        .filter(|i| {
            let device = sim.members[*i].record.signing_key.device_id();
            [0usize, 1].iter().any(|admin| sim.nodes[*admin].core.state().devices.get(&device).is_some_and(|d| d.status != membership::DeviceStatus::Active))
        })
        .collect();
    let online: Vec<usize> = (0..count).filter(|i| sim.nodes[*i].online && !revoked.contains(i)).collect();
    let mut pending: BTreeSet<usize> = online.iter().copied().collect();
    // The first device to hold everything (the others are compared against it), and who does.
    let mut first_complete: Option<usize> = None;
    let mut is_complete = vec![false; count];
    // Each complete device's heads when its state was last checked: a state is its log's
    // fold, so one whose log did not move need not be compared again.
    let mut checked: Vec<Option<BTreeSet<EntryHash>>> = vec![None; count];
    let mut first_across = None;
    let mut disagreements = 0;
    let right_set: BTreeSet<usize> = right.iter().copied().collect();
    let converged = sim.run_until(healed + Duration::from_secs(600), |sim| {
        if first_across.is_none() && sim.any_connection(|a, b| right_set.contains(&a) != right_set.contains(&b)) {
            first_across = Some(sim.elapsed() - healed);
        }
        // Only the cores the event reached can have changed.
        for index in sim.touched.into_iter().flatten() {
            let log = sim.nodes[index].core.log().expect("a log");
            if pending.contains(&index) && wanted.iter().all(|hash| log.contains(hash)) {
                pending.remove(&index);
                first_complete.get_or_insert(index);
                is_complete[index] = true;
            }
            // Among those that hold everything, one state: each that moved against the first.
            if let Some(first) = first_complete
                && first != index
                && is_complete[index]
                && sim.nodes[first].core.log().map(|l| l.heads()) == Some(log.heads())
                && checked[index].as_ref() != Some(log.heads())
            {
                checked[index] = Some(log.heads().clone());
                disagreements += usize::from(sim.nodes[first].core.state() != sim.nodes[index].core.state());
            }
        }
        pending.is_empty()
    });
    let converged = converged.then(|| sim.elapsed() - healed);
    let first = sim.nodes[online[0]].core.state().encode();
    let identical = online.iter().all(|&i| sim.nodes[i].core.state().encode() == first);
    let lost = online.iter().map(|&i| wanted.iter().filter(|h| !sim.nodes[i].core.log().expect("a log").contains(h)).count()).max().unwrap_or(0);
    Report { network: sim.describe(), appended: wanted.len(), converged, first_across, identical, lost, disagreements }
}

impl Report {
    pub fn met(&self) -> bool {
        self.converged.is_some_and(|c| c <= GOAL) && self.identical && self.lost == 0 && self.disagreements == 0
    }

    pub fn table(&self) -> Table {
        let mut table = Table::new(
            format!("a partition into two halves for an hour, both appending, then healed — {}", self.network),
            &["entries appended", "first link across", "converged", "identical state", "entries lost", "disagreements", "goal ≤ 10 s"],
        );
        let show = |d: Option<Duration>| d.map_or_else(|| "never".into(), human);
        table.row(vec![
            self.appended.to_string(),
            show(self.first_across),
            show(self.converged),
            self.identical.to_string(),
            self.lost.to_string(),
            self.disagreements.to_string(),
            verdict(self.met()),
        ]);
        table
    }
}
