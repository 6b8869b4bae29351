//! Outgoing datagram batching for UDP generic segmentation offload (GSO).
//!
//! The data plane encrypts a batch of packets into one contiguous buffer, and this module
//! groups consecutive datagrams into *runs* the kernel can send with one `sendmsg` and a
//! `UDP_SEGMENT` size: same destination, same length, except that the last datagram of a run
//! may be shorter (the kernel's rule, and wireguard-go's and quinn's). A run also stops at the
//! kernel's segment limit and before its total would exceed one maximum UDP payload.
//!
//! Pure bookkeeping over byte ranges, no I/O: the tests below pin every rule.

use std::net::SocketAddr;
use std::ops::Range;

/// Room reserved for one datagram: a TUN packet of at most the MTU plus the data header, tag
/// and padding (1384 + 32 + 15 < 2048, with room for the relay envelope). Larger packets fail to
/// encapsulate and are dropped.
pub const SLOT: usize = 2048;
/// Most bytes one run may carry: the largest UDP payload over IPv4.
pub const MAX_RUN_BYTES: usize = protocol::wire::MAX_DATAGRAM_LEN;

/// Consecutive datagrams to one destination, sent with one system call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub destination: SocketAddr,
    /// The run's bytes in [`SendBatch::bytes`].
    pub range: Range<usize>,
    /// Every datagram but the last is exactly this long; `None` for a single datagram.
    pub segment_size: Option<usize>,
}

#[derive(Debug)]
struct Open {
    destination: SocketAddr,
    start: usize,
    segment: usize,
    count: usize,
}

/// A buffer of encrypted datagrams grouped into [`Run`]s.
#[derive(Debug)]
pub struct SendBatch {
    bytes: Vec<u8>,
    end: usize,
    open: Option<Open>,
    ready: Vec<Run>,
    max_segments: usize,
}

impl SendBatch {
    /// `slots` datagrams fit before the batch must be sent; `max_segments` is what the socket
    /// can send per call (1 where the kernel has no GSO).
    pub fn new(slots: usize, max_segments: usize) -> Self {
        SendBatch { bytes: vec![0; slots * SLOT], end: 0, open: None, ready: Vec::with_capacity(slots), max_segments: max_segments.max(1) }
    }

    /// Room for the next datagram, or `None` when the batch is full and must be sent and
    /// cleared first.
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        self.bytes.get_mut(self.end..self.end + SLOT)
    }

    /// Records that the slot now holds a `len`-byte datagram for `destination`.
    pub fn commit(&mut self, len: usize, destination: SocketAddr) {
        debug_assert!(len <= SLOT && len > 0);
        let start = self.end;
        if let Some(open) = &mut self.open {
            let joins = open.destination == destination
                && len <= open.segment
                && open.count < self.max_segments
                && start - open.start + len <= MAX_RUN_BYTES;
            if joins {
                open.count += 1;
                self.end += len;
                if len < open.segment || open.count == self.max_segments {
                    self.close();
                }
                return;
            }
            self.close();
        }
        self.end += len;
        self.open = Some(Open { destination, start, segment: len, count: 1 });
        if self.max_segments == 1 {
            self.close();
        }
    }

    /// Ends the open run, if any, so that [`Self::runs`] includes it.
    pub fn close(&mut self) {
        if let Some(open) = self.open.take() {
            let segment_size = (open.count > 1).then_some(open.segment);
            self.ready.push(Run { destination: open.destination, range: open.start..self.end, segment_size });
        }
    }

    /// The closed runs, in order.
    pub fn runs(&self) -> &[Run] {
        &self.ready
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// Forgets everything once the runs are sent.
    pub fn clear(&mut self) {
        self.end = 0;
        self.open = None;
        self.ready.clear();
    }

    /// Lowers the segment limit after the kernel refused a GSO send.
    pub fn set_max_segments(&mut self, max_segments: usize) {
        self.max_segments = max_segments.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 1], port))
    }

    fn push(batch: &mut SendBatch, len: usize, destination: SocketAddr) {
        let slot = batch.slot().expect("room");
        slot[..len].fill(len as u8);
        batch.commit(len, destination);
    }

    fn shape(batch: &SendBatch) -> Vec<(u16, usize, Option<usize>)> {
        batch.runs().iter().map(|run| (run.destination.port(), run.range.len(), run.segment_size)).collect()
    }

    #[test]
    fn equal_datagrams_to_one_destination_form_one_run() {
        let mut batch = SendBatch::new(16, 64);
        for _ in 0..5 {
            push(&mut batch, 1452, addr(1));
        }
        batch.close();
        assert_eq!(shape(&batch), vec![(1, 5 * 1452, Some(1452))]);
        assert!(batch.bytes()[..5 * 1452].iter().all(|&b| b == (1452usize as u8)));
    }

    #[test]
    fn a_shorter_datagram_ends_the_run_and_belongs_to_it() {
        let mut batch = SendBatch::new(16, 64);
        push(&mut batch, 1452, addr(1));
        push(&mut batch, 1452, addr(1));
        push(&mut batch, 100, addr(1));
        push(&mut batch, 1452, addr(1));
        batch.close();
        assert_eq!(shape(&batch), vec![(1, 2 * 1452 + 100, Some(1452)), (1, 1452, None)]);
    }

    #[test]
    fn a_longer_datagram_or_another_destination_starts_a_new_run() {
        let mut batch = SendBatch::new(16, 64);
        push(&mut batch, 100, addr(1));
        push(&mut batch, 200, addr(1));
        push(&mut batch, 200, addr(2));
        push(&mut batch, 200, addr(2));
        push(&mut batch, 200, addr(1));
        batch.close();
        assert_eq!(shape(&batch), vec![(1, 100, None), (1, 200, None), (2, 400, Some(200)), (1, 200, None)]);
        let ranges: Vec<_> = batch.runs().iter().map(|run| run.range.clone()).collect();
        assert_eq!(ranges, vec![0..100, 100..300, 300..700, 700..900], "runs tile the buffer in order");
    }

    #[test]
    fn runs_stop_at_the_segment_limit_and_the_largest_udp_payload() {
        let mut batch = SendBatch::new(128, 4);
        for _ in 0..9 {
            push(&mut batch, 1000, addr(1));
        }
        batch.close();
        assert_eq!(shape(&batch), vec![(1, 4000, Some(1000)), (1, 4000, Some(1000)), (1, 1000, None)]);

        let mut batch = SendBatch::new(128, 64);
        for _ in 0..50 {
            push(&mut batch, 1452, addr(1));
        }
        batch.close();
        let per_run = MAX_RUN_BYTES / 1452;
        assert_eq!(batch.runs()[0].range.len(), per_run * 1452);
        assert!(batch.runs().iter().all(|run| run.range.len() <= MAX_RUN_BYTES));
        assert_eq!(batch.runs().iter().map(|run| run.range.len()).sum::<usize>(), 50 * 1452);
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_run() {
        let mut batch = SendBatch::new(8, 1);
        for _ in 0..3 {
            push(&mut batch, 500, addr(1));
        }
        batch.close();
        assert_eq!(shape(&batch), vec![(1, 500, None); 3]);
    }

    #[test]
    fn a_full_batch_has_no_slot_until_cleared() {
        let mut batch = SendBatch::new(2, 64);
        push(&mut batch, SLOT, addr(1));
        push(&mut batch, SLOT, addr(1));
        assert!(batch.slot().is_none());
        batch.close();
        assert_eq!(shape(&batch), vec![(1, 2 * SLOT, Some(SLOT))]);
        batch.clear();
        assert!(batch.is_empty() && batch.runs().is_empty() && batch.slot().is_some());
    }
}
