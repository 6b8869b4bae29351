//! Datagrams waiting for room in a full socket buffer. The packet thread never sleeps on a
//! send: a datagram that meets a full buffer waits here, the socket is watched for room
//! (EPOLLOUT), and the queue drains when the kernel has room — while every other peer's
//! packets keep moving. Bounded: a datagram that does not fit is dropped, as a full link
//! would drop it (the tunnel's timers and TCP recover). Buffers are reused, so a congested
//! link costs no allocation per packet once warm.

use std::collections::VecDeque;
use std::net::SocketAddr;

/// Datagrams (or GSO runs) held per socket, and bytes in all.
pub const MAX_QUEUED: usize = 256;
pub const MAX_QUEUED_BYTES: usize = 1 << 20;

#[derive(Debug)]
pub struct Queued {
    pub destination: SocketAddr,
    pub segment_size: Option<usize>,
    pub contents: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct SendQueue {
    items: VecDeque<Queued>,
    bytes: usize,
    /// Emptied buffers, for the next datagrams.
    spare: Vec<Vec<u8>>,
    /// Datagrams dropped because the queue was full.
    pub dropped: u64,
}

impl SendQueue {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues a copy of `contents`; false if it was dropped for want of room.
    pub fn push(&mut self, destination: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> bool {
        if self.items.len() >= MAX_QUEUED || self.bytes + contents.len() > MAX_QUEUED_BYTES {
            self.dropped += 1;
            return false;
        }
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(contents);
        self.bytes += buffer.len();
        self.items.push_back(Queued { destination, segment_size, contents: buffer });
        true
    }

    pub fn front(&self) -> Option<&Queued> {
        self.items.front()
    }

    /// Drops the front datagram (sent, or failed for good).
    pub fn pop(&mut self) {
        if let Some(item) = self.items.pop_front() {
            self.bytes -= item.contents.len();
            if self.spare.len() < MAX_QUEUED {
                self.spare.push(item.contents);
            }
        }
    }

    pub fn clear(&mut self) {
        while !self.items.is_empty() {
            self.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 41641))
    }

    #[test]
    fn keeps_order_bounds_itself_and_reuses_buffers() {
        let mut queue = SendQueue::default();
        for index in 0..MAX_QUEUED + 3 {
            let pushed = queue.push(address(), &[index as u8; 100], None);
            assert_eq!(pushed, index < MAX_QUEUED);
        }
        assert_eq!(queue.dropped, 3);
        assert_eq!(queue.bytes(), MAX_QUEUED * 100);
        assert_eq!(queue.front().map(|q| q.contents[0]), Some(0));
        queue.pop();
        assert_eq!(queue.front().map(|q| q.contents[0]), Some(1));
        queue.clear();
        assert!(queue.is_empty() && queue.bytes() == 0);
        assert!(queue.push(address(), &[7; 10], Some(5)));
        assert_eq!(queue.spare.len(), MAX_QUEUED - 1, "a reused buffer came from the spares");
    }

    #[test]
    fn a_byte_bound_drops_large_runs() {
        let mut queue = SendQueue::default();
        let run = vec![0u8; 60_000];
        let fitted = (0..40).filter(|_| queue.push(address(), &run, Some(1_400))).count();
        assert_eq!(fitted, MAX_QUEUED_BYTES / run.len());
        assert!(queue.bytes() <= MAX_QUEUED_BYTES);
    }
}
