//! The hop to the relay over UDP, or over the TCP/443 fallback when UDP does not get through
//! (hotel, campus and office networks that let only TCP 443 out).
//!
//! The fallback is a stream the node keeps to CloudPal (TLS on TCP 443, `node::relaylink`),
//! whose local end the data plane sees as one more UDP address, the *stream address*: a datagram
//! sent there reaches CloudPal's data port, and what CloudPal sends back arrives from it. The
//! device swaps that address for the relay's when the hop runs over the stream, so sessions,
//! paths and envelopes never know the difference — like Mullvad's udp-over-tcp under WireGuard.
//!
//! When to use it, happy-eyeballs style:
//! - A send to the relay's UDP address starts a clock that any authenticated datagram from that
//!   address stops. Hop keepalives do not start it: nothing answers them.
//! - After [`CHECK_AFTER`] unanswered, with a session to the relay, one probe goes to it over
//!   UDP (a one-way flow through the relay is not a dead path).
//! - After [`FALLBACK_AFTER`] unanswered, and once that probe had [`CHECK_WAIT`] (or at once
//!   without a session, when the handshake itself went unanswered), UDP is *failing*: the node
//!   is asked for the stream, and the hop moves to it as soon as it is there.
//! - Over the stream, a probe goes to the relay's UDP address every [`UDP_RETRY`]; its answer
//!   moves the hop back to UDP at once.
//!
//! Pure state: the [`crate::Device`] feeds it what it sends and hears.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const CHECK_AFTER: Duration = Duration::from_millis(500);
pub const CHECK_WAIT: Duration = Duration::from_millis(500);
pub const FALLBACK_AFTER: Duration = Duration::from_secs(1);
/// Over the stream, how often UDP is tried again: well within the 30 s in which a device
/// should be back on UDP once it works.
pub const UDP_RETRY: Duration = Duration::from_secs(10);

/// What the hop wants the device to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopAction {
    /// Send a probe to the relay's UDP address (never over the stream).
    ProbeUdp,
    /// The hop moved to the stream: handshakes under way go again, over it.
    MovedToStream,
}

#[derive(Debug, Clone, Default)]
pub struct RelayHop {
    /// The stream's local address, while the node has one up.
    stream: Option<SocketAddr>,
    over_stream: bool,
    /// The first send to the relay's UDP address that nothing has answered since.
    unanswered_since: Option<Instant>,
    /// When the check probe went out over UDP, if one is outstanding.
    check: Option<Instant>,
    /// Over the stream: when to try UDP again.
    next_retry: Option<Instant>,
    /// UDP failed while no stream was up: the node has been asked for one (no timer runs
    /// until it comes).
    asked: bool,
}

impl RelayHop {
    /// The stream came up (its local address) or went down (`None`, which moves the hop back to
    /// UDP: if that still fails, the stream is asked for again).
    pub fn set_stream(&mut self, stream: Option<SocketAddr>, now: Instant) {
        self.stream = stream;
        if stream.is_none() && self.over_stream {
            self.over_stream = false;
            self.next_retry = None;
            self.unanswered_since = Some(now);
            self.check = None;
            self.asked = false;
        }
    }

    pub fn stream(&self) -> Option<SocketAddr> {
        self.stream
    }

    pub fn over_stream(&self) -> bool {
        self.over_stream && self.stream.is_some()
    }

    /// Where a datagram for the relay's UDP address `relay` goes.
    pub fn destination(&self, relay: SocketAddr) -> SocketAddr {
        match self.stream {
            Some(stream) if self.over_stream => stream,
            _ => relay,
        }
    }

    /// A datagram that expects an answer went to the relay's UDP address.
    pub fn sent_udp(&mut self, now: Instant) {
        self.unanswered_since.get_or_insert(now);
    }

    /// An authenticated datagram came from the relay's UDP address: UDP works.
    pub fn heard_udp(&mut self) {
        self.unanswered_since = None;
        self.check = None;
        self.over_stream = false;
        self.next_retry = None;
        self.asked = false;
    }

    /// Whether UDP to the relay is failing (see the module's notes).
    fn failing(&self, now: Instant, session: bool) -> bool {
        let Some(since) = self.unanswered_since else { return false };
        let checked = !session || self.check.is_some_and(|at| now.saturating_duration_since(at) >= CHECK_WAIT);
        now.saturating_duration_since(since) >= FALLBACK_AFTER && checked
    }

    /// Whether the node should have the stream up: the hop runs over it, or UDP is failing.
    pub fn wants_stream(&self, now: Instant, session: bool) -> bool {
        self.over_stream || self.failing(now, session)
    }

    /// Moves the hop along; `session` says whether a session with the relay exists.
    pub fn poll(&mut self, now: Instant, session: bool) -> Option<HopAction> {
        if self.over_stream {
            if self.next_retry.is_some_and(|at| at <= now) {
                self.next_retry = Some(now + UDP_RETRY);
                return session.then_some(HopAction::ProbeUdp);
            }
            return None;
        }
        let since = self.unanswered_since?;
        if session && self.check.is_none() && now.saturating_duration_since(since) >= CHECK_AFTER {
            self.check = Some(now);
            return Some(HopAction::ProbeUdp);
        }
        if !self.failing(now, session) {
            return None;
        }
        if self.stream.is_none() {
            self.asked = true;
            return None;
        }
        {
            self.over_stream = true;
            self.next_retry = Some(now + UDP_RETRY);
            self.check = None;
            Some(HopAction::MovedToStream)
        }
    }

    /// When [`RelayHop::poll`] next has something to do.
    pub fn poll_timeout(&self, session: bool) -> Option<Instant> {
        if self.over_stream {
            return self.next_retry;
        }
        let since = self.unanswered_since?;
        if session && self.check.is_none() {
            return Some(since + CHECK_AFTER);
        }
        // Failing already and asked for the stream: nothing to do until it comes (the
        // command that brings it wakes the device).
        if self.asked && self.stream.is_none() {
            return None;
        }
        self.failing_at(since, session)
    }

    fn failing_at(&self, since: Instant, session: bool) -> Option<Instant> {
        let check = if session { self.check.map(|at| at + CHECK_WAIT)? } else { since };
        Some((since + FALLBACK_AFTER).max(check))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000))
    }

    fn relay() -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 1], 41641))
    }

    #[test]
    fn an_answered_udp_hop_never_asks_for_the_stream() {
        let now = Instant::now();
        let mut hop = RelayHop::default();
        hop.set_stream(Some(stream()), now);
        for step in 0..100u64 {
            let at = now + Duration::from_millis(100 * step);
            hop.sent_udp(at);
            assert_eq!(hop.poll(at, true), None);
            hop.heard_udp();
            assert!(!hop.wants_stream(at, true));
        }
        assert_eq!(hop.destination(relay()), relay());
    }

    #[test]
    fn a_one_way_flow_is_checked_with_a_probe_and_stays_on_udp_when_it_is_answered() {
        let now = Instant::now();
        let mut hop = RelayHop::default();
        hop.set_stream(Some(stream()), now);
        hop.sent_udp(now);
        assert_eq!(hop.poll_timeout(true), Some(now + CHECK_AFTER));
        assert_eq!(hop.poll(now + CHECK_AFTER, true), Some(HopAction::ProbeUdp));
        assert_eq!(hop.poll(now + CHECK_AFTER, true), None, "one check at a time");
        hop.heard_udp();
        assert_eq!(hop.poll(now + FALLBACK_AFTER * 3, true), None);
        assert!(!hop.over_stream());
    }

    #[test]
    fn an_unanswered_handshake_moves_the_hop_to_the_stream_and_a_udp_answer_moves_it_back() {
        let now = Instant::now();
        let mut hop = RelayHop::default();
        hop.sent_udp(now);
        // No session: the handshake was the check. Failing, but no stream yet: ask for it.
        assert_eq!(hop.poll_timeout(false), Some(now + FALLBACK_AFTER), "wakes to ask for the stream");
        assert_eq!(hop.poll(now + FALLBACK_AFTER, false), None);
        assert!(hop.wants_stream(now + FALLBACK_AFTER, false));
        assert_eq!(hop.poll_timeout(false), None, "asked: no timer until the stream comes");
        assert!(!hop.wants_stream(now + FALLBACK_AFTER - Duration::from_millis(1), false));
        let up = now + FALLBACK_AFTER + Duration::from_millis(30);
        hop.set_stream(Some(stream()), up);
        assert_eq!(hop.poll_timeout(false), Some(now + FALLBACK_AFTER));
        assert_eq!(hop.poll(up, false), Some(HopAction::MovedToStream));
        assert_eq!(hop.destination(relay()), stream());
        // UDP is tried again every UDP_RETRY while over the stream.
        assert_eq!(hop.poll_timeout(true), Some(up + UDP_RETRY));
        assert_eq!(hop.poll(up + UDP_RETRY, true), Some(HopAction::ProbeUdp));
        assert_eq!(hop.poll(up + UDP_RETRY, true), None);
        hop.heard_udp();
        assert!(!hop.over_stream());
        assert_eq!(hop.destination(relay()), relay());
        assert!(!hop.wants_stream(up + UDP_RETRY, true));
    }

    #[test]
    fn with_a_session_the_hop_falls_back_only_after_the_check_probe_went_unanswered() {
        let now = Instant::now();
        let mut hop = RelayHop::default();
        hop.set_stream(Some(stream()), now);
        hop.sent_udp(now);
        assert_eq!(hop.poll(now + CHECK_AFTER, true), Some(HopAction::ProbeUdp));
        assert_eq!(hop.poll_timeout(true), Some(now + FALLBACK_AFTER));
        assert_eq!(hop.poll(now + FALLBACK_AFTER - Duration::from_millis(1), true), None);
        assert_eq!(hop.poll(now + FALLBACK_AFTER, true), Some(HopAction::MovedToStream));
    }

    #[test]
    fn losing_the_stream_goes_back_to_udp_and_asks_for_it_again_if_udp_still_fails() {
        let now = Instant::now();
        let mut hop = RelayHop::default();
        hop.set_stream(Some(stream()), now);
        hop.sent_udp(now);
        assert_eq!(hop.poll(now + FALLBACK_AFTER, false), Some(HopAction::MovedToStream));
        let lost = now + Duration::from_secs(5);
        hop.set_stream(None, lost);
        assert!(!hop.over_stream());
        assert_eq!(hop.destination(relay()), relay());
        assert!(!hop.wants_stream(lost, false));
        assert!(hop.wants_stream(lost + FALLBACK_AFTER, false));
        assert_eq!(hop.poll_timeout(false), Some(lost + FALLBACK_AFTER));
    }
}
