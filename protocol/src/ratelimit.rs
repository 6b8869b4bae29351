//! Per-source rate limiting: of handshake initiations while under load (DP-11), and of invite
//! attempts (INV-03).
//!
//! A token bucket per source, keyed by the IPv4 address or the IPv6 /64 (one host usually owns
//! a whole /64, so per-address buckets would be free to evade). Numbers are wireguard-go's:
//! 20 initiations per second, bursts of 5.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sustained initiations per second per source.
pub const INITIATIONS_PER_SECOND: u32 = 20;
/// Bucket depth: initiations a quiet source may send back to back.
pub const INITIATION_BURST: u32 = 5;
/// Sources tracked at once. A flood from more sources than this is refused for new sources
/// until idle entries age out; 65 536 entries is about 3 MiB.
pub const MAX_TRACKED_SOURCES: usize = 65_536;

/// The bucket key: IPv4 address, or the top 64 bits of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens scaled by `TOKEN_SCALE` so refill needs no floating point.
    tokens: u64,
    last: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    buckets: HashMap<SourceKey, Bucket>,
    last_sweep: Option<Instant>,
    /// One token, in nanoseconds of refill time.
    token_cost_nanos: u64,
    capacity_nanos: u64,
}

impl Default for RateLimiter {
    /// Handshake initiations: wireguard-go's 20 per second, bursts of 5.
    fn default() -> Self {
        Self::new(Duration::from_secs(1) / INITIATIONS_PER_SECOND, INITIATION_BURST)
    }
}

impl RateLimiter {
    /// One token per `interval` per source, at most `burst` saved up.
    pub fn new(interval: Duration, burst: u32) -> Self {
        let token_cost_nanos = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX).max(1);
        Self { buckets: HashMap::new(), last_sweep: None, token_cost_nanos, capacity_nanos: token_cost_nanos.saturating_mul(u64::from(burst.max(1))) }
    }

    /// How long a quiet bucket takes to fill: idle longer, it carries no information.
    fn idle_expiry(&self) -> Duration {
        Duration::from_nanos(self.capacity_nanos).max(Duration::from_secs(1))
    }

    /// Takes one token from `source`'s bucket; `false` means drop the initiation.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        self.sweep(now);
        let key = SourceKey::from(source);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_TRACKED_SOURCES {
            return false;
        }
        let bucket = self
            .buckets
            .entry(key)
            .or_insert(Bucket { tokens: self.capacity_nanos, last: now });
        let refill = now.saturating_duration_since(bucket.last).as_nanos();
        bucket.tokens = (u128::from(bucket.tokens) + refill).min(u128::from(self.capacity_nanos)) as u64;
        bucket.last = now;
        if bucket.tokens >= self.token_cost_nanos {
            bucket.tokens -= self.token_cost_nanos;
            true
        } else {
            false
        }
    }

    pub fn tracked_sources(&self) -> usize {
        self.buckets.len()
    }

    /// Drops full, idle buckets at most once per refill time so that the table stays bounded.
    fn sweep(&mut self, now: Instant) {
        let expiry = self.idle_expiry();
        if self.last_sweep.is_some_and(|at| now.saturating_duration_since(at) < expiry) {
            return;
        }
        self.last_sweep = Some(now);
        self.buckets.retain(|_, bucket| now.saturating_duration_since(bucket.last) < expiry);
    }
}

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    SourceKey::V6Prefix(prefix)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_limiter_allows_its_burst_then_one_per_interval() {
        let mut limiter = RateLimiter::new(Duration::from_secs(6), 3);
        let now = Instant::now();
        let ip: IpAddr = "198.51.100.7".parse().expect("ip");
        assert_eq!((0..10).filter(|_| limiter.allow(ip, now)).count(), 3);
        assert!(!limiter.allow(ip, now + Duration::from_secs(5)));
        assert!(limiter.allow(ip, now + Duration::from_secs(6)));
        // Idle buckets are forgotten once full again, not before.
        limiter.allow("198.51.100.8".parse().expect("ip"), now + Duration::from_secs(7));
        assert_eq!(limiter.tracked_sources(), 2);
    }

    #[test]
    fn dp11_burst_of_five_then_twenty_per_second() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let allowed = (0..10).filter(|_| limiter.allow(ip, now)).count();
        assert_eq!(allowed, INITIATION_BURST as usize);
        let one_second_later = now + Duration::from_secs(1);
        // Over one second, refill gives 20 tokens but the bucket holds only 5.
        let allowed = (0..50).filter(|_| limiter.allow(ip, one_second_later)).count();
        assert_eq!(allowed, INITIATION_BURST as usize);
        let mut steady = 0;
        for tick in 1..=100u64 {
            if limiter.allow(ip, one_second_later + Duration::from_millis(tick * 10)) {
                steady += 1;
            }
        }
        assert_eq!(steady, 20, "one second of tries every 10 ms passes 20");
    }

    #[test]
    fn dp11_ipv6_sources_share_a_slash_64() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        let spent = (0..INITIATION_BURST)
            .filter(|i| limiter.allow(format!("2001:db8::{i}").parse().expect("ip"), now))
            .count();
        assert_eq!(spent, INITIATION_BURST as usize);
        assert!(!limiter.allow("2001:db8::ffff".parse().expect("ip"), now));
        assert!(limiter.allow("2001:db8:0:1::1".parse().expect("ip"), now), "another /64");
    }

    #[test]
    fn idle_sources_are_forgotten() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        for i in 0..100u8 {
            limiter.allow(IpAddr::from([198, 51, 100, i]), now);
        }
        assert_eq!(limiter.tracked_sources(), 100);
        limiter.allow(IpAddr::from([203, 0, 113, 1]), now + Duration::from_secs(2));
        assert_eq!(limiter.tracked_sources(), 1);
    }
}
