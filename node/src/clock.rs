//! The shell's only clock reads: the core, the log and the data plane's state machines get
//! time as arguments (DESIGN.md "Workspace").

use crate::control::Time;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Both clocks, now.
pub fn now() -> Time {
    Time { now: Instant::now(), unix: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() }
}

/// Wall-clock seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    now().unix_secs()
}
