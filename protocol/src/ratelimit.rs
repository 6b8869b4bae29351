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
pub enum SourceKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

/// A budget refilled over time: `burst` units at most, one more every `per_unit`. Kept in
/// nanoseconds of refill (u128), so no rate or idle time overflows it. The one bucket behind
/// the per-source limiter and the relay's per-member byte quota.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    level: u128,
    capacity: u128,
    unit: u128,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket of `burst` units, refilled one per `per_unit`.
    pub fn new(per_unit: Duration, burst: u64) -> Self {
        let unit = per_unit.as_nanos().max(1);
        let capacity = unit.saturating_mul(u128::from(burst.max(1)));
        TokenBucket { level: capacity, capacity, unit, last: None }
    }

    /// A full bucket refilled at `rate` units per second.
    pub fn per_second(rate: u64, burst: u64) -> Self {
        Self::new(Duration::from_nanos(1_000_000_000 / rate.max(1)), burst)
    }

    /// Takes `units` if the bucket holds them at `now`.
    pub fn take(&mut self, units: u64, now: Instant) -> bool {
        self.refill(now);
        let cost = self.unit.saturating_mul(u128::from(units));
        if self.level < cost {
            return false;
        }
        self.level -= cost;
        true
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            self.level = self.level.saturating_add(now.saturating_duration_since(last).as_nanos()).min(self.capacity);
        }
        self.last = Some(now);
    }

    /// How long an untouched bucket takes to fill from empty.
    pub fn fill_time(&self) -> Duration {
        Duration::from_nanos(u64::try_from(self.capacity).unwrap_or(u64::MAX))
    }

    fn idle_since(&self, now: Instant) -> Duration {
        self.last.map_or(Duration::MAX, |last| now.saturating_duration_since(last))
    }
}

/// Token buckets by key, bounded, idle ones forgotten: the per-source limiter is one over
/// [`SourceKey`]s; a caller may key by more (a source and what it asks for, say).
#[derive(Debug)]
pub struct RateLimiter<K = SourceKey> {
    buckets: HashMap<K, TokenBucket>,
    last_sweep: Option<Instant>,
    template: TokenBucket,
}

impl Default for RateLimiter {
    /// Handshake initiations: wireguard-go's 20 per second, bursts of 5.
    fn default() -> Self {
        Self::new(Duration::from_secs(1) / INITIATIONS_PER_SECOND, INITIATION_BURST)
    }
}

impl RateLimiter {
    /// Takes one token from `source`'s bucket; `false` means drop the initiation.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        self.allow_key(SourceKey::from(source), now)
    }
}

impl<K: std::hash::Hash + Eq + Clone> RateLimiter<K> {
    /// One token per `interval` per key, at most `burst` saved up.
    pub fn new(interval: Duration, burst: u32) -> Self {
        Self { buckets: HashMap::new(), last_sweep: None, template: TokenBucket::new(interval, u64::from(burst)) }
    }

    /// How long a quiet bucket takes to fill: idle longer, it carries no information.
    fn idle_expiry(&self) -> Duration {
        self.template.fill_time().max(Duration::from_secs(1))
    }

    /// Takes one token from `key`'s bucket; `false` means refuse.
    pub fn allow_key(&mut self, key: K, now: Instant) -> bool {
        self.sweep(now);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_TRACKED_SOURCES {
            return false;
        }
        self.buckets.entry(key).or_insert(self.template).take(1, now)
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
        self.buckets.retain(|_, bucket| bucket.idle_since(now) < expiry);
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
    fn a_byte_quota_neither_overflows_nor_refills_past_its_burst_after_a_long_idle() {
        let mut bucket = TokenBucket::per_second(12_500_000, 4 << 20);
        let now = Instant::now();
        assert!(bucket.take(4 << 20, now));
        assert!(!bucket.take(1, now));
        assert!(bucket.take(12_500, now + Duration::from_millis(1)), "1 ms refills 12.5 kB");
        // Idle for a year: full again, never more than the burst, no overflow.
        let later = now + Duration::from_secs(365 * 24 * 3600);
        assert!(bucket.take(4 << 20, later));
        assert!(!bucket.take(1, later));
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
