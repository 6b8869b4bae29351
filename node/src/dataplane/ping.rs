//! `pal ping`: echo requests over the overlay from the packet thread itself, each reply with
//! the path it came back on.

use super::commands::Token;
use crate::control_api::{PingReply, PingReport};
use protocol::paths::PathKind;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Interval between the echo requests of one `pal ping`, and how long to wait for the last.
pub const PING_INTERVAL: Duration = Duration::from_millis(500);
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct PingJob {
    pub token: Token,
    pub source: Ipv4Addr,
    pub target: Ipv4Addr,
    count: usize,
    sent: BTreeMap<u16, Instant>,
    replies: Vec<PingReply>,
    last_sent: Option<Instant>,
}

/// What the job wants next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send the echo request with this sequence number.
    Send(u16),
    Wait,
    Done,
}

impl PingJob {
    pub fn new(token: Token, source: Ipv4Addr, target: Ipv4Addr, count: u16) -> Self {
        PingJob { token, source, target, count: usize::from(count), sent: BTreeMap::new(), replies: Vec::new(), last_sent: None }
    }

    /// Sends the next echo request if due (`sequence` is the next free number); done when all
    /// replies are in or the last is late.
    pub fn step(&mut self, sequence: u16, now: Instant) -> Step {
        let late = self.last_sent.is_some_and(|at| now - at > PING_TIMEOUT);
        if self.replies.len() == self.count || (self.sent.len() == self.count && late) {
            return Step::Done;
        }
        if self.sent.len() < self.count && self.last_sent.is_none_or(|at| now - at >= PING_INTERVAL) {
            self.sent.insert(sequence, now);
            self.last_sent = Some(now);
            return Step::Send(sequence);
        }
        Step::Wait
    }

    /// Records a reply to this ping; false if it is not ours.
    pub fn reply(&mut self, sequence: u16, path: PathKind, now: Instant) -> bool {
        let Some(sent) = self.sent.get(&sequence) else { return false };
        let rtt = now.saturating_duration_since(*sent);
        self.replies.push(PingReply { seq: sequence, rtt_ms: rtt.as_secs_f64() * 1000.0, path: path.into() });
        true
    }

    pub fn report(self) -> PingReport {
        PingReport { sent: self.sent.len(), received: self.replies.len(), replies: self.replies }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_on_the_interval_and_finishes_when_replies_are_in_or_late() {
        let start = Instant::now();
        let mut job = PingJob::new(1, Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2), 2);
        assert_eq!(job.step(10, start), Step::Send(10));
        assert_eq!(job.step(11, start + Duration::from_millis(100)), Step::Wait);
        assert!(job.reply(10, PathKind::Direct, start + Duration::from_millis(3)));
        assert!(!job.reply(99, PathKind::Direct, start), "a stranger's sequence is not ours");
        assert_eq!(job.step(11, start + PING_INTERVAL), Step::Send(11));
        assert_eq!(job.step(12, start + PING_INTERVAL + Duration::from_secs(1)), Step::Wait);
        assert_eq!(job.step(12, start + PING_INTERVAL + PING_TIMEOUT + Duration::from_millis(1)), Step::Done);
        let report = job.report();
        assert_eq!((report.sent, report.received), (2, 1));
        assert!((report.replies[0].rtt_ms - 3.0).abs() < 1e-9);
    }
}
