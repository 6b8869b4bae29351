//! What a simulation will deliver, in the order of virtual time: the earliest first, and among
//! things due at the same instant the one scheduled first (so a seed replays bit for bit).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

struct Scheduled<T> {
    at: Instant,
    sequence: u64,
    item: T,
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl<T> Eq for Scheduled<T> {}
impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Scheduled<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

impl<T> std::fmt::Debug for Agenda<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agenda").field("due", &self.heap.len()).field("next", &self.next_at()).finish()
    }
}

pub struct Agenda<T> {
    heap: BinaryHeap<Reverse<Scheduled<T>>>,
    sequence: u64,
}

impl<T> Default for Agenda<T> {
    fn default() -> Self {
        Agenda { heap: BinaryHeap::new(), sequence: 0 }
    }
}

impl<T> Agenda<T> {
    pub fn push(&mut self, at: Instant, item: T) {
        self.sequence += 1;
        self.heap.push(Reverse(Scheduled { at, sequence: self.sequence, item }));
    }

    /// When the next item is due.
    pub fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(next)| next.at)
    }

    /// The next item if it is due by `by`.
    pub fn pop_due(&mut self, by: Instant) -> Option<(Instant, T)> {
        if self.next_at()? > by {
            return None;
        }
        self.heap.pop().map(|Reverse(next)| (next.at, next.item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_comes_first_and_ties_keep_their_order() {
        let start = Instant::now();
        let mut agenda = Agenda::default();
        agenda.push(start + Duration::from_millis(5), "late");
        agenda.push(start + Duration::from_millis(1), "first");
        agenda.push(start + Duration::from_millis(1), "second");
        assert_eq!(agenda.pop_due(start), None);
        assert_eq!(agenda.pop_due(start + Duration::from_millis(1)).map(|(_, i)| i), Some("first"));
        assert_eq!(agenda.pop_due(start + Duration::from_millis(9)).map(|(_, i)| i), Some("second"));
        assert_eq!(agenda.next_at(), Some(start + Duration::from_millis(5)));
    }
}
