//! Wall-clock time for handshake timestamps, derived from a caller-supplied anchor so that the
//! sans-IO core never reads a clock.

use std::time::{Duration, Instant};

/// TAI64N: 8 bytes of seconds since 1970 offset by 2^62, 4 bytes of nanoseconds, both
/// big-endian, so that byte order is time order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Tai64N(pub [u8; 12]);

const TAI64_EPOCH: u64 = 1 << 62;
/// Nanoseconds are rounded down to a multiple of 2^24 (≈16.8 ms), as wireguard-go does, so a
/// timestamp does not leak the initiator's precise clock. Less than the 20 ms initiation
/// interval, so two accepted initiations never share a timestamp.
const WHITENER_MASK: u32 = (1 << 24) - 1;

impl Tai64N {
    pub fn from_unix(since_epoch: Duration) -> Self {
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&(TAI64_EPOCH + since_epoch.as_secs()).to_be_bytes());
        bytes[8..].copy_from_slice(&(since_epoch.subsec_nanos() & !WHITENER_MASK).to_be_bytes());
        Self(bytes)
    }
}

/// Maps the monotonic clock onto wall time: `unix_time_at_anchor` was the wall time when
/// `anchor` was read. The event loop builds one at start-up; tests pick any values.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    pub anchor: Instant,
    pub unix_time_at_anchor: Duration,
}

impl WallClock {
    pub fn timestamp(&self, now: Instant) -> Tai64N {
        Tai64N::from_unix(self.unix_time_at_anchor + now.saturating_duration_since(self.anchor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_times_compare_greater_after_whitening() {
        let t0 = Tai64N::from_unix(Duration::from_millis(1_700_000_000_000));
        let t1 = Tai64N::from_unix(Duration::from_millis(1_700_000_000_020));
        let same = Tai64N::from_unix(Duration::from_millis(1_700_000_000_001));
        assert!(t1 > t0);
        assert_eq!(t0, same, "sub-16 ms differences are whitened away");
    }
}
