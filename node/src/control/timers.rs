//! The core's one timer table: each periodic job has a deadline; [`Timers::take_due`] hands
//! out the due ones and re-arms them one interval later. (Per-member redials and delivery
//! expiries are deadlines computed from their own state, see [`super::Core::poll_timeout`].)
//!
//! Each job has two paces. While something is happening — the node just started, a
//! connection came or went, the log or our addresses changed — for [`BUSY_FOR`] the jobs run
//! at their busy intervals (seconds), as a network settling needs. Once nothing has happened
//! for that long, they fall back to their idle intervals (minutes): an idle network has nothing
//! to say but the rare check that nothing was missed (issue #15, quiet when idle). Any news
//! brings every job's next run forward to its busy pace at once.

use std::time::{Duration, Instant};

/// How long after the last news the jobs keep their busy pace.
pub const BUSY_FOR: Duration = Duration::from_secs(30);

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

    /// The interval while the network is settling.
    pub fn busy_interval(self) -> Duration {
        match self {
            Timer::Paths => super::signalling::PATHS_INTERVAL,
            Timer::Announce => super::sync::ANNOUNCE_INTERVAL,
            Timer::Presence => super::discovery::PRESENCE_INTERVAL,
            Timer::Lookup => super::discovery::PRESENCE_LOOKUP_INTERVAL,
            Timer::CandidateDial => super::discovery::REDIAL_INTERVAL,
        }
    }

    /// The interval once nothing has happened for [`BUSY_FOR`]. Candidates and the log are
    /// pushed when they change, so these only catch what a lost push missed; a presence
    /// record lives an hour ([`super::presence::RECORD_TTL`]) and is republished well inside it.
    pub fn idle_interval(self) -> Duration {
        match self {
            Timer::Paths => Duration::from_secs(2 * 3600),
            Timer::Announce => Duration::from_secs(2 * 3600),
            Timer::Presence => Duration::from_secs(20 * 60),
            Timer::Lookup => Duration::from_secs(5 * 60),
            Timer::CandidateDial => Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Debug)]
pub struct Timers {
    due: [Instant; Timer::ALL.len()],
    started: Instant,
    busy_until: Instant,
}

impl Timers {
    /// Every job runs first at `start`, and the node is busy for [`BUSY_FOR`] after it.
    pub fn new(start: Instant) -> Self {
        Timers { due: [start; Timer::ALL.len()], started: start, busy_until: start + BUSY_FOR }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn next(&self) -> Option<Instant> {
        self.due.iter().min().copied()
    }

    /// Whether the jobs run at their busy pace at `now`.
    pub fn is_busy(&self, now: Instant) -> bool {
        now < self.busy_until
    }

    /// News at `now`: busy pace for [`BUSY_FOR`], and no job later than one busy interval.
    pub fn news(&mut self, now: Instant, what: &'static str) {
        tracing::debug!(what, "news: busy pace");
        self.busy_until = self.busy_until.max(now + BUSY_FOR);
        for (index, timer) in Timer::ALL.into_iter().enumerate() {
            self.due[index] = self.due[index].min(now + timer.busy_interval());
        }
    }

    /// The jobs due at `now`, each re-armed one interval from `now`: the busy one if that
    /// run still falls in the busy spell, else the idle one (so no busy-paced run trails the
    /// spell into the quiet).
    pub fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        let mut due = Vec::new();
        for (index, timer) in Timer::ALL.into_iter().enumerate() {
            if self.due[index] <= now {
                let busy = now + timer.busy_interval();
                self.due[index] = if busy < self.busy_until { busy } else { now + timer.idle_interval() };
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
        assert_eq!(timers.next(), Some(start + Timer::Paths.busy_interval()));
        assert!(timers.take_due(start + Duration::from_millis(1999)).is_empty());
        assert_eq!(timers.take_due(start + Duration::from_secs(2)), vec![Timer::Paths]);
        assert_eq!(timers.take_due(start + Duration::from_secs(5)), vec![Timer::Paths, Timer::Announce, Timer::Lookup, Timer::CandidateDial]);
    }

    #[test]
    fn after_a_quiet_spell_jobs_slow_to_their_idle_pace_and_news_brings_them_back() {
        let start = Instant::now();
        let mut timers = Timers::new(start);
        let mut last = start;
        timers.take_due(start);
        while timers.next().expect("jobs") < start + BUSY_FOR + Duration::from_secs(60) {
            last = timers.next().expect("jobs");
            timers.take_due(last);
        }
        assert!(last <= start + BUSY_FOR, "a busy-paced run after the busy spell");
        let idle = start + BUSY_FOR + Duration::from_secs(60);
        assert!(!timers.is_busy(idle));
        assert!(timers.next().expect("jobs") >= last + Duration::from_secs(60), "an idle job runs within a minute");
        for timer in Timer::ALL {
            assert!(timer.idle_interval() >= Duration::from_secs(60) && timer.busy_interval() >= Duration::from_secs(1), "{timer:?}");
        }
        // A connection comes: every job within its busy interval again.
        timers.news(idle, "a test");
        assert!(timers.is_busy(idle));
        assert_eq!(timers.next(), Some(idle + Timer::Paths.busy_interval()));
        assert_eq!(timers.take_due(idle + Duration::from_secs(5)), vec![Timer::Paths, Timer::Announce, Timer::Lookup, Timer::CandidateDial]);
        assert!(timers.take_due(idle + BUSY_FOR + Duration::from_secs(60)).contains(&Timer::Paths));
        assert!(timers.next().expect("jobs") >= idle + BUSY_FOR + Duration::from_secs(120), "idle pace after the busy spell");
    }
}
