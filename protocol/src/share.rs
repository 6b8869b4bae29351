//! Relay duty's capacity, shared fairly among the members that use it (issue #15).
//!
//! One token bucket holds the relay's whole rate (the policy's cap). While it is comfortably
//! full, any member takes what it needs — a member alone gets the whole relay. Once it runs
//! low (contention), a member may send no more in a window than an equal share of the rate
//! among the members active in that window or the one before; members under their share still
//! get through on the half of the bucket the others cannot reach. So a member may use what the
//! others leave, and a flood from one cannot starve the others (max-min fairness, as a
//! weighted-fair queue would give, in a few integer operations per envelope and no queue).
//!
//! Sans-IO like everything in this crate: the caller passes the time.

use std::time::{Duration, Instant};

/// The accounting window for shares.
pub const WINDOW: Duration = Duration::from_millis(100);
/// The bucket's depth at least: what the relay may pass back to back.
pub const MIN_BURST_BYTES: u64 = 4 << 20;

/// The bucket's depth for `rate`: half a second of it, and at least [`MIN_BURST_BYTES`]. A
/// limit that drops rather than queues cuts a TCP flow's window again and again when its
/// bucket is shallow (under a 1 Gbit/s cap, one run: 0.34 Gbit/s with 4 MiB, 0.47 with a tenth
/// of a second); the depth is only a number, it holds no packets.
pub fn burst_bytes(rate: u64) -> u64 {
    (rate / 2).max(MIN_BURST_BYTES)
}
/// The relay's rate when the policy names none: 1 Gbit/s, a common data-center port. An owner
/// whose CloudPal has a faster (or slower) link sets it (`pal policy set --relay-rate`).
pub const DEFAULT_RATE_BYTES_PER_SECOND: u64 = 125_000_000;

/// The relay's shared budget.
#[derive(Debug, Clone)]
pub struct FairShare {
    /// `None`: no cap (the host's link and CPU are the only limit).
    bucket: Option<Bucket>,
    anchor: Option<Instant>,
    window: u64,
    /// Members that sent in the current window, and in the one before.
    active: u64,
    active_before: u64,
}

/// Bytes in billionths, refilled by the rate every nanosecond: exact at any rate from a byte a
/// second to far beyond any link (a per-unit bucket rounds 1e9 / rate).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: u64,
    burst: u64,
    level: u128,
    last: Option<Instant>,
}

const NANOS: u128 = 1_000_000_000;

impl Bucket {
    fn new(rate: u64) -> Self {
        let burst = burst_bytes(rate);
        Bucket { rate, burst, level: u128::from(burst) * NANOS, last: None }
    }

    fn available(&mut self, now: Instant) -> u64 {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_nanos().saturating_mul(u128::from(self.rate));
            self.level = self.level.saturating_add(refill).min(u128::from(self.burst) * NANOS);
        }
        self.last = Some(now);
        u64::try_from(self.level / NANOS).unwrap_or(u64::MAX)
    }

    fn take(&mut self, bytes: u64, now: Instant) -> bool {
        if self.available(now) < bytes {
            return false;
        }
        self.level -= u128::from(bytes) * NANOS;
        true
    }
}

/// One member's use of the relay, kept with the member.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// The window its bytes are in; `None` before its first envelope.
    window: Option<u64>,
    bytes: u64,
}

impl Default for FairShare {
    fn default() -> Self {
        Self::new(Some(DEFAULT_RATE_BYTES_PER_SECOND))
    }
}

impl FairShare {
    /// A relay passing `rate` bytes a second at most in all (`None`: no cap).
    pub fn new(rate: Option<u64>) -> Self {
        FairShare { bucket: rate.map(|r| Bucket::new(r.max(1))), anchor: None, window: 0, active: 0, active_before: 0 }
    }

    /// The cap in bytes a second, `None` for none.
    pub fn rate(&self) -> Option<u64> {
        self.bucket.as_ref().map(|bucket| bucket.rate)
    }

    /// Whether `member` may pass `len` more bytes at `now`; charged to the relay and the member
    /// if so, nothing changes if not.
    pub fn admit(&mut self, member: &mut Usage, len: u64, now: Instant) -> bool {
        let window = self.window_at(now);
        if member.window != Some(window) {
            member.window = Some(window);
            member.bytes = 0;
            self.active += 1;
        }
        let Some(bucket) = self.bucket.as_mut() else {
            member.bytes = member.bytes.saturating_add(len);
            return true;
        };
        let members = self.active.max(self.active_before);
        // Shares matter only where someone else is there to be protected: alone, a member has
        // the bucket (a share check would cut it off at the end of every window at the rate).
        if members > 1 && bucket.available(now) < bucket.burst / 2 {
            let share = (u128::from(bucket.rate) * WINDOW.as_nanos() / Duration::from_secs(1).as_nanos()) as u64 / members;
            if member.bytes.saturating_add(len) > share {
                return false;
            }
        }
        if !bucket.take(len, now) {
            return false;
        }
        member.bytes = member.bytes.saturating_add(len);
        true
    }

    /// The window `now` falls in, turning the counts over when it is a new one.
    fn window_at(&mut self, now: Instant) -> u64 {
        let anchor = *self.anchor.get_or_insert(now);
        let window = (now.saturating_duration_since(anchor).as_nanos() / WINDOW.as_nanos()) as u64;
        if window != self.window {
            self.active_before = if window == self.window + 1 { self.active } else { 0 };
            self.active = 0;
            self.window = window;
        }
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: u64 = 1_420;
    const RATE: u64 = 12_500_000;
    const BURST_BYTES: u64 = RATE / 2;

    /// Members offering `offered[i]` bytes a second each for `seconds`, packets interleaved in
    /// time; what each got through.
    fn run(share: &mut FairShare, offered: &[u64], seconds: u64) -> Vec<u64> {
        let start = Instant::now();
        let mut usage = vec![Usage::default(); offered.len()];
        let mut passed = vec![0u64; offered.len()];
        let mut sent = vec![0u64; offered.len()];
        let step = Duration::from_micros(50);
        let steps = seconds * 1_000_000 / 50;
        for n in 1..=steps {
            let now = start + step * n as u32;
            for (i, rate) in offered.iter().enumerate() {
                // Offer whole packets up to what the member's rate allows by now.
                let due = u128::from(*rate) * u128::from(n) * 50 / 1_000_000;
                while u128::from(sent[i] + PACKET) <= due {
                    sent[i] += PACKET;
                    if share.admit(&mut usage[i], PACKET, now) {
                        passed[i] += PACKET;
                    }
                }
            }
        }
        passed
    }

    #[test]
    fn a_member_alone_gets_the_whole_relay() {
        let mut share = FairShare::new(Some(RATE));
        let got = run(&mut share, &[4 * RATE], 10);
        let expected = 10 * RATE + BURST_BYTES;
        assert!(got[0] <= expected && got[0] >= expected * 95 / 100, "{} of {expected}", got[0]);
    }

    #[test]
    fn a_flood_takes_only_what_the_others_leave() {
        let mut share = FairShare::new(Some(RATE));
        // A floods at ten times the relay's rate; B wants a fifth of it.
        let got = run(&mut share, &[10 * RATE, RATE / 5], 10);
        let b_wanted = 10 * RATE / 5;
        assert!(got[1] >= b_wanted * 99 / 100, "the light member got {} of {b_wanted}", got[1]);
        let a_fair = 10 * RATE * 4 / 5;
        assert!(got[0] >= a_fair * 90 / 100, "the flood got {} of the {a_fair} left", got[0]);
        assert!(got[0] + got[1] <= 10 * RATE + BURST_BYTES, "more than the cap: {got:?}");
    }

    #[test]
    fn two_floods_split_the_relay_evenly() {
        let mut share = FairShare::new(Some(RATE));
        let got = run(&mut share, &[5 * RATE, 3 * RATE], 10);
        let half = 10 * RATE / 2;
        for g in &got {
            assert!(*g >= half * 90 / 100 && *g <= half * 115 / 100, "{got:?}, a half is {half}");
        }
    }

    #[test]
    fn many_light_members_beside_a_flood_all_get_what_they_ask() {
        let mut share = FairShare::new(Some(RATE));
        let mut offered = vec![RATE / 20; 8];
        offered.push(20 * RATE);
        let got = run(&mut share, &offered, 5);
        let wanted = 5 * RATE / 20;
        assert!(got[..8].iter().all(|g| *g >= wanted * 98 / 100), "{got:?} (each of the light ones wanted {wanted})");
        assert!(got[8] >= 5 * RATE * 6 / 10 * 90 / 100, "{got:?}");
    }

    #[test]
    fn with_no_cap_everything_passes() {
        let mut share = FairShare::new(None);
        let got = run(&mut share, &[10 * RATE, RATE], 1);
        assert_eq!(got, [10 * RATE / PACKET * PACKET, RATE / PACKET * PACKET]);
    }
}
