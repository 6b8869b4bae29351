//! The network between simulated nodes: a one-way latency per pair of nodes, drawn once from
//! the seed, and loss.
//!
//! The control plane rides TCP, so a lost segment is not a lost message: it is the same
//! message a retransmission timeout later (Linux: the RTO is the smoothed RTT plus four
//! deviations, at least 200 ms; RFC 6298). A message of `loss` probability is delayed by one
//! RTO, and again with the same probability.

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Links {
    seed: u64,
    pub min: Duration,
    pub max: Duration,
    /// Probability that a segment is lost.
    pub loss: f64,
}

/// Linux's floor on the retransmission timeout.
pub const MIN_RTO: Duration = Duration::from_millis(200);

impl Links {
    pub fn new(seed: u64, min: Duration, max: Duration, loss: f64) -> Self {
        Links { seed, min, max, loss }
    }

    /// The one-way latency between `a` and `b` (the same both ways), uniform in
    /// [`min`, `max`].
    pub fn latency(&self, a: usize, b: usize) -> Duration {
        let (low, high) = (a.min(b) as u64, a.max(b) as u64);
        let mixed = splitmix(self.seed ^ splitmix(low << 32 | high));
        let span = self.max.saturating_sub(self.min).as_micros() as u64;
        self.min + Duration::from_micros(if span == 0 { 0 } else { mixed % (span + 1) })
    }

    /// How long one message from `a` to `b` takes, with retransmissions drawn from `rng`.
    pub fn delivery(&self, a: usize, b: usize, rng: &mut ChaCha20Rng) -> Duration {
        let one_way = self.latency(a, b);
        let rto = (one_way * 2 + one_way / 2).max(MIN_RTO);
        let mut delay = one_way;
        let mut backoff = rto;
        while self.loss > 0.0 && unit(rng) < self.loss {
            delay += backoff;
            backoff *= 2;
        }
        delay
    }
}

/// A uniform draw in [0, 1).
pub fn unit(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A seeded generator for one part of a run (so that adding draws to one part leaves the
/// others' the same).
pub fn rng(seed: u64, part: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(splitmix(seed ^ splitmix(part)))
}

/// SplitMix64's finaliser: a cheap, well-mixed hash of a number.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_symmetric_in_range_and_seeded() {
        let links = Links::new(3, Duration::from_millis(20), Duration::from_millis(200), 0.0);
        let all: Vec<Duration> = (0..200).map(|i| links.latency(i, i + 7)).collect();
        assert!(all.iter().all(|l| *l >= links.min && *l <= links.max));
        assert_eq!(links.latency(5, 9), links.latency(9, 5));
        assert_ne!(Links::new(4, links.min, links.max, 0.0).latency(5, 9), links.latency(5, 9));
        let mean = all.iter().sum::<Duration>() / all.len() as u32;
        assert!(mean > Duration::from_millis(90) && mean < Duration::from_millis(130), "{mean:?}");
    }

    #[test]
    fn loss_delays_a_message_by_retransmissions_and_never_loses_it() {
        let links = Links::new(1, Duration::from_millis(50), Duration::from_millis(50), 0.5);
        let mut rng = rng(1, 1);
        let delays: Vec<Duration> = (0..1000).map(|_| links.delivery(0, 1, &mut rng)).collect();
        let on_time = delays.iter().filter(|d| **d == Duration::from_millis(50)).count();
        assert!((400..600).contains(&on_time), "{on_time}");
        assert!(delays.iter().any(|d| *d >= Duration::from_millis(50 + 200 + 400)));
    }
}
