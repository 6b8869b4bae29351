//! Which members a device keeps a control connection to.
//!
//! A personal network of a few dozen devices is a full mesh: every member dials every other,
//! and news (a revocation, an address) is one hop from anyone. A full mesh of a thousand costs
//! each device a thousand connections and their idle chatter (the simulations of issue #17:
//! about 0.5 MB an hour each), so past [`FULL_MESH_UP_TO`] each device keeps connections to
//! every CloudPal (the super-peers, which keep one to everyone) and to a few members chosen so
//! that the graph stays connected with a short diameter without them: its neighbours on a ring
//! of the members ordered by device id, and [`CHORDS`] chords to members picked from its own
//! id (a small world: Watts and Strogatz). The relation is symmetric — each side computes the
//! same set from the same log — so both ends want the connection and neither drops it. Others
//! are still reached on the data plane: their path candidates come through the CloudPals'
//! path exchanges, and their connections are accepted when they dial.

use membership::{DeviceStatus, Role, State};
use protocol::DeviceId;
use std::collections::BTreeSet;

/// Up to this many members (not counting guests), every member connects to every other.
pub const FULL_MESH_UP_TO: usize = 32;
/// Ring neighbours on each side.
pub const RING: usize = 1;
/// Chords each member picks (it also keeps the chords others picked to it).
pub const CHORDS: usize = 2;

/// The ring of a network past a full mesh, worked out once per log change: who keeps a
/// connection to whom, for any member, in a few steps (a CloudPal answers a thousand members'
/// path exchanges with what each of them wants).
#[derive(Debug, Clone)]
pub struct Mesh {
    /// Active members (not guests) by device id, with their roles.
    ring: Vec<(DeviceId, Role)>,
    /// (chord target, chord source) positions, sorted: the chords picked to each member.
    incoming: Vec<(u32, u32)>,
    /// The CloudPals, whom everyone keeps (not found by walking the ring at each question).
    cloudpals: Vec<DeviceId>,
}

impl Mesh {
    /// `None` for a full mesh.
    pub fn of(state: &State) -> Option<Mesh> {
        let ring: Vec<(DeviceId, Role)> = state
            .devices
            .iter()
            .filter(|(_, d)| d.status == DeviceStatus::Active && d.record.role != Role::Guest)
            .map(|(id, d)| (*id, d.record.role))
            .collect();
        if ring.len() <= FULL_MESH_UP_TO {
            return None;
        }
        let count = ring.len();
        let mut incoming: Vec<(u32, u32)> =
            ring.iter().enumerate().flat_map(|(source, (id, _))| chords(id, source, count).map(move |target| (target as u32, source as u32))).collect();
        incoming.sort_unstable();
        let cloudpals = ring.iter().filter(|(_, role)| *role == Role::CloudPal).map(|(id, _)| *id).collect();
        Some(Mesh { ring, incoming, cloudpals })
    }

    /// The members `device` keeps a control connection to: `None` for all of them (it is a
    /// CloudPal, or not in the ring at all).
    pub fn wanted(&self, device: &DeviceId) -> Option<BTreeSet<DeviceId>> {
        let position = self.ring.binary_search_by(|(id, _)| id.cmp(device)).ok()?;
        if self.ring[position].1 == Role::CloudPal {
            return None;
        }
        let ring = &self.ring;
        let count = ring.len();
        let mut wanted: BTreeSet<DeviceId> = self.cloudpals.iter().copied().collect();
        for step in 1..=RING {
            wanted.insert(ring[(position + step) % count].0);
            wanted.insert(ring[(position + count - step) % count].0);
        }
        wanted.extend(chords(&ring[position].0, position, count).map(|chord| ring[chord].0));
        let from = self.incoming.partition_point(|(target, _)| (*target as usize) < position);
        wanted.extend(self.incoming[from..].iter().take_while(|(target, _)| *target as usize == position).map(|(_, source)| ring[*source as usize].0));
        wanted.remove(device);
        Some(wanted)
    }
}

/// The ring positions the member at `position` picks as chords: drawn from its id (a hash of
/// its key, so uniform), past its ring neighbours.
fn chords(id: &DeviceId, position: usize, count: usize) -> impl Iterator<Item = usize> {
    let bytes = *id.as_bytes();
    let span = count.saturating_sub(2 * RING + 1).max(1);
    (0..CHORDS).map(move |i| {
        let draw = u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        (position + RING + 1 + (draw % span as u64) as usize) % count
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use membership::testkit::Network;
    use std::collections::VecDeque;

    /// What a member running with relay duty (`cloudpal`) or not keeps.
    fn wanted(state: &State, me: &DeviceId, cloudpal: bool) -> Option<BTreeSet<DeviceId>> {
        if cloudpal {
            return None;
        }
        Mesh::of(state)?.wanted(me)
    }

    fn network(devices: usize, cloudpals: usize) -> Network {
        let mut network = Network::new(7);
        for i in 1..devices {
            let role = if i <= cloudpals { Role::CloudPal } else { Role::Member };
            network.add(&format!("d{i}"), role);
        }
        network
    }

    #[test]
    fn a_small_network_is_a_full_mesh() {
        let network = network(FULL_MESH_UP_TO, 0);
        let me = network.founder.record.signing_key.device_id();
        assert_eq!(wanted(network.log.state(), &me, false), None);
    }

    #[test]
    fn past_the_full_mesh_the_relation_is_symmetric_small_and_connected_without_cloudpals() {
        let network = network(400, 0);
        let state = network.log.state();
        let ids: Vec<DeviceId> = state.devices.keys().copied().collect();
        let sets: Vec<BTreeSet<DeviceId>> = ids.iter().map(|id| wanted(state, id, false).expect("a bounded mesh")).collect();
        let index = |id: &DeviceId| ids.iter().position(|x| x == id).expect("a member");
        for (i, set) in sets.iter().enumerate() {
            assert!(set.len() >= 2 * RING && set.len() <= 2 * RING + 4 * CHORDS + 4, "{} wanted", set.len());
            for other in set {
                assert!(sets[index(other)].contains(&ids[i]), "asymmetric");
            }
        }
        // Breadth-first from the first member: everyone within a few hops.
        let mut hops = vec![usize::MAX; ids.len()];
        hops[0] = 0;
        let mut queue = VecDeque::from([0]);
        while let Some(at) = queue.pop_front() {
            for next in &sets[at] {
                let next = index(next);
                if hops[next] == usize::MAX {
                    hops[next] = hops[at] + 1;
                    queue.push_back(next);
                }
            }
        }
        let diameter = hops.iter().max().copied().expect("members");
        assert!(diameter <= 8, "eccentricity {diameter}");
    }

    #[test]
    fn everyone_keeps_every_cloudpal_and_a_cloudpal_keeps_everyone() {
        let network = network(100, 2);
        let state = network.log.state();
        let cloudpals: Vec<DeviceId> = state.devices.iter().filter(|(_, d)| d.record.role == Role::CloudPal).map(|(id, _)| *id).collect();
        for id in state.devices.keys() {
            match wanted(state, id, false) {
                Some(set) => assert!(cloudpals.iter().all(|c| set.contains(c))),
                None => assert!(cloudpals.contains(id)),
            }
        }
        assert_eq!(wanted(state, &cloudpals[0], true), None);
    }
}
