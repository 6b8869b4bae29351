//! The scenarios of issue #17. The control-plane ones run as the life of one network, so that
//! `all` builds and settles it once: it idles for an hour (the idle traffic), the founder
//! revokes a device (the spread), and the network splits in two for an hour and heals (the
//! partition).

pub mod idle;
pub mod lookup;
pub mod partition;
pub mod revocation;

use crate::control::{ControlSim, Shape};
use crate::links::{self, Links};
use std::time::Duration;

/// The network of the control-plane scenarios.
#[derive(Debug, Clone, Copy)]
pub struct Life {
    pub seed: u64,
    pub devices: usize,
    pub cloudpals: usize,
    /// Share of the devices off (asleep, out of battery) throughout.
    pub offline: f64,
    pub loss: f64,
}

impl Life {
    pub fn full(seed: u64) -> Self {
        Life { seed, devices: 1000, cloudpals: 2, offline: 0.1, loss: 0.02 }
    }

    pub fn small(seed: u64) -> Self {
        Life { devices: 80, ..Self::full(seed) }
    }

    /// The network built, its devices online (but the offline share), found each other and
    /// fallen quiet. Device 0 is the founder, 1 a second admin, 2 the one to be revoked; the
    /// last are the CloudPals; none of those is off.
    pub fn settled(&self) -> ControlSim {
        let shape = Shape {
            seed: self.seed,
            devices: self.devices,
            cloudpals: self.cloudpals,
            second_admin: true,
            links: Links::new(self.seed, Duration::from_millis(20), Duration::from_millis(200), self.loss),
        };
        let mut sim = ControlSim::new(&shape);
        let mut rng = links::rng(self.seed, 11);
        for index in 3..self.devices - self.cloudpals {
            if links::unit(&mut rng) < self.offline {
                sim.set_online(index, false);
            }
        }
        sim.run_for(Duration::from_secs(10 * 60));
        sim
    }
}

/// The device the revocation scenario revokes.
pub const REVOKED: usize = 2;
