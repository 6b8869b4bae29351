//! The sliding replay window for transport counters (RFC 6479 style, as wireguard-go).
//!
//! A ring of 128 64-bit blocks remembers which of the last [`WINDOW_SIZE`] counters were seen.
//! [`ReplayWindow::check`] is the cheap pre-check before decryption; the window only moves in
//! [`ReplayWindow::accept`], which the caller invokes after the AEAD tag verified, so a forged
//! packet with a huge counter cannot advance it (DP-04).

const BLOCK_BITS_LOG: u32 = 6;
const BLOCK_BITS: u64 = 1 << BLOCK_BITS_LOG;
/// 128 blocks × 64 bits = 8 KiB of history in 1 KiB of memory.
const RING_BLOCKS: u64 = 128;
/// Counters more than this far behind the highest seen are rejected: wireguard-go's 8128, which
/// tolerates the reordering of multi-queue NICs and GRO batches at 10 Gbit/s.
pub const WINDOW_SIZE: u64 = (RING_BLOCKS - 1) * BLOCK_BITS;

#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far (meaningless until `any_seen`).
    last: u64,
    any_seen: bool,
    ring: [u64; RING_BLOCKS as usize],
}

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("counter already received")]
    Duplicate,
    #[error("counter older than the replay window")]
    TooOld,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self { last: 0, any_seen: false, ring: [0; RING_BLOCKS as usize] }
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow").field("last", &self.last).finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if !self.any_seen || counter > self.last {
            return Ok(());
        }
        if self.last - counter > WINDOW_SIZE {
            return Err(ReplayError::TooOld);
        }
        if self.ring[block_of(counter)] & bit_of(counter) != 0 {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    /// Whether `counter` is newer than every counter accepted so far.
    pub fn is_newest(&self, counter: u64) -> bool {
        !self.any_seen || counter > self.last
    }

    /// Records `counter` as received, moving the window forward if it is the newest. Call only
    /// after the packet authenticated. Returns the same verdict as [`Self::check`] would have.
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        if !self.any_seen || counter > self.last {
            let current = if self.any_seen { self.last >> BLOCK_BITS_LOG } else { 0 };
            let target = counter >> BLOCK_BITS_LOG;
            // Clear the blocks the window slides over; past a whole ring, clear it all.
            let first_cleared = if self.any_seen { current + 1 } else { 0 };
            let span = (target + 1).saturating_sub(first_cleared).min(RING_BLOCKS);
            for offset in 0..span {
                self.ring[((target - offset) % RING_BLOCKS) as usize] = 0;
            }
            self.last = counter;
            self.any_seen = true;
        }
        self.ring[block_of(counter)] |= bit_of(counter);
        Ok(())
    }
}

fn block_of(counter: u64) -> usize {
    ((counter >> BLOCK_BITS_LOG) % RING_BLOCKS) as usize
}

fn bit_of(counter: u64) -> u64 {
    1 << (counter & (BLOCK_BITS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn dp01_duplicate_counter_is_refused() {
        let mut window = ReplayWindow::default();
        assert_eq!(window.accept(0), Ok(()));
        assert_eq!(window.accept(0), Err(ReplayError::Duplicate));
        assert_eq!(window.accept(1), Ok(()));
        assert_eq!(window.check(1), Err(ReplayError::Duplicate));
    }

    #[test]
    fn dp02_counters_behind_the_window_are_refused() {
        let mut window = ReplayWindow::default();
        window.accept(WINDOW_SIZE + 10).expect("fresh");
        assert_eq!(window.check(9), Err(ReplayError::TooOld));
        assert_eq!(window.check(10), Ok(()), "exactly WINDOW_SIZE behind is still inside");
        assert_eq!(window.accept(10), Ok(()));
    }

    #[test]
    fn dp04_check_alone_never_moves_the_window() {
        let mut window = ReplayWindow::default();
        window.accept(5).expect("fresh");
        assert_eq!(window.check(u64::MAX - 1), Ok(()));
        // The forged counter was only checked, never accepted: old counters still pass.
        assert_eq!(window.accept(4), Ok(()));
    }

    #[test]
    fn a_jump_beyond_the_ring_clears_stale_bits() {
        let mut window = ReplayWindow::default();
        for counter in 0..100 {
            window.accept(counter).expect("fresh");
        }
        let far = 100 + 10 * WINDOW_SIZE;
        window.accept(far).expect("fresh");
        // The counter that maps to the same ring slot as an old seen one must be accepted.
        assert_eq!(window.accept(far - 64 * 3), Ok(()));
    }

    proptest! {
        /// DP-02 model check: the window behaves exactly like a set of seen counters restricted
        /// to the last WINDOW_SIZE below the maximum.
        #[test]
        fn dp02_window_matches_a_btreeset_model(
            counters in proptest::collection::vec(
                prop_oneof![0u64..20_000, (0u64..64).prop_map(|c| c * 8000)], 1..600)
        ) {
            let mut window = ReplayWindow::default();
            let mut seen = BTreeSet::new();
            let mut max: Option<u64> = None;
            for counter in counters {
                let model_ok = !seen.contains(&counter)
                    && max.is_none_or(|m| counter > m || m - counter <= WINDOW_SIZE);
                prop_assert_eq!(window.accept(counter).is_ok(), model_ok, "counter {}", counter);
                if model_ok {
                    seen.insert(counter);
                    max = Some(max.map_or(counter, |m| m.max(counter)));
                }
            }
        }
    }
}
