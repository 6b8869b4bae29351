//! The core's one timer table: each periodic job has a deadline; [`Timers::take_due`] hands
//! out the due ones and re-arms them one interval later. (Per-member redials and delivery
//! expiries are deadlines computed from their own state, see [`super::Core::poll_timeout`].)

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Path candidates to every connected member.
    Paths,
    /// Anti-entropy: our log summary to every connected member.
    Announce,
    /// Republish our presence record.
    Presence,
    /// Look up the presence of members we are not connected to.
    Lookup,
    /// Redial candidate addresses and, while nobody is around, the bootstrap.
    CandidateDial,
}

impl Timer {
    pub const ALL: [Timer; 5] = [Timer::Paths, Timer::Announce, Timer::Presence, Timer::Lookup, Timer::CandidateDial];

    pub fn interval(self) -> Duration {
        match self {
            Timer::Paths => super::signalling::PATHS_INTERVAL,
            Timer::Announce => super::sync::ANNOUNCE_INTERVAL,
            Timer::Presence => super::discovery::PRESENCE_INTERVAL,
            Timer::Lookup => super::discovery::PRESENCE_LOOKUP_INTERVAL,
            Timer::CandidateDial => super::discovery::REDIAL_INTERVAL,
        }
    }
}

#[derive(Debug)]
pub struct Timers {
    due: [Instant; Timer::ALL.len()],
    started: Instant,
}

impl Timers {
    /// Every job runs first at `start`.
    pub fn new(start: Instant) -> Self {
        Timers { due: [start; Timer::ALL.len()], started: start }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn next(&self) -> Option<Instant> {
        self.due.iter().min().copied()
    }

    /// The jobs due at `now`, each re-armed for one interval from `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        let mut due = Vec::new();
        for (index, timer) in Timer::ALL.into_iter().enumerate() {
            if self.due[index] <= now {
                self.due[index] = now + timer.interval();
                due.push(timer);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_jobs_are_rearmed_one_interval_later() {
        let start = Instant::now();
        let mut timers = Timers::new(start);
        assert_eq!(timers.take_due(start), Timer::ALL.to_vec());
        assert_eq!(timers.next(), Some(start + Timer::Paths.interval()));
        assert!(timers.take_due(start + Duration::from_millis(1999)).is_empty());
        assert_eq!(timers.take_due(start + Duration::from_secs(2)), vec![Timer::Paths]);
        assert_eq!(timers.take_due(start + Duration::from_secs(5)), vec![Timer::Paths, Timer::Announce, Timer::Lookup, Timer::CandidateDial]);
    }
}
