//! Which way a peer's datagrams go: a direct address or the relay, chosen per datagram from
//! what was recently *heard* on each — all within one session, so switching never drops it.
//!
//! - A direct address is trusted while authenticated datagrams arrive from it (data, or
//!   pongs to our probes) at most [`DIRECT_TRUST`] ago. Without a relay, the last direct
//!   address is used regardless (plain WireGuard roaming).
//! - With a relay, traffic uses it from the first packet whenever no direct path is trusted,
//!   and falls back to it [`DIRECT_TRUST`] after the direct path goes quiet.
//! - While the peer is active (traffic in the last [`ACTIVE_WINDOW`], or new candidates), a
//!   probe goes to every candidate and the current direct address each [`PROBE_INTERVAL`];
//!   simultaneous probes from both ends are what opens endpoint-independent NATs. The first
//!   pong from an address makes it the direct path.
//!
//! Pure state: the [`crate::Device`] feeds it what it hears and asks it where to send.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a direct path stays trusted after the last authenticated datagram on it: three
/// probe intervals, so one or two lost probes do not flap the path, and a dead path falls
/// back to the relay in about a second and a half.
pub const DIRECT_TRUST: Duration = Duration::from_millis(1500);
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// A peer counts as active this long after its last traffic; idle peers are not probed.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(10);
/// Candidate addresses kept per peer (a member can make us probe no more than this).
pub const MAX_CANDIDATES: usize = 8;

/// Where one datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct(SocketAddr),
    Relay,
}

/// What `status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Direct,
    Relay,
    /// Through the relay over the TCP/443 fallback ([`crate::fallback`]); the device says so,
    /// [`Paths`] never does.
    RelayTcp,
    None,
}

#[derive(Debug, Clone, Default)]
pub struct Paths {
    direct: Option<SocketAddr>,
    direct_heard: Option<Instant>,
    relay_heard: Option<Instant>,
    candidates: Vec<SocketAddr>,
    active_until: Option<Instant>,
    next_probe: Option<Instant>,
}

impl Paths {
    pub fn with_endpoint(endpoint: Option<SocketAddr>) -> Self {
        Paths { direct: endpoint, ..Paths::default() }
    }

    pub fn direct(&self) -> Option<SocketAddr> {
        self.direct
    }

    /// Sets the direct address from outside (configuration, a guess from signalling) until
    /// the peer has been heard from: after that, only authenticated datagrams move it.
    pub fn set_direct(&mut self, endpoint: SocketAddr) {
        if self.direct_heard.is_none() {
            self.direct = Some(endpoint);
        }
    }

    /// Replaces the candidates (deduplicated, at most [`MAX_CANDIDATES`]) and probes them soon.
    pub fn set_candidates(&mut self, candidates: impl IntoIterator<Item = SocketAddr>, now: Instant) {
        let mut fresh: Vec<SocketAddr> = Vec::new();
        for candidate in candidates {
            if !fresh.contains(&candidate) && fresh.len() < MAX_CANDIDATES {
                fresh.push(candidate);
            }
        }
        if fresh != self.candidates {
            self.candidates = fresh;
            self.active_until = Some(now + ACTIVE_WINDOW);
            self.next_probe = Some(now);
        }
    }

    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    /// Whether the direct path is trusted now (heard from within [`DIRECT_TRUST`]).
    pub fn direct_trusted(&self, now: Instant) -> bool {
        self.direct.is_some() && self.direct_heard.is_some_and(|at| now.saturating_duration_since(at) < DIRECT_TRUST)
    }

    /// Where the next datagram goes; `relay` says whether a relay can reach this peer.
    pub fn route(&self, now: Instant, relay: bool) -> Option<Route> {
        match (self.direct_trusted(now), relay, self.direct) {
            (true, _, Some(address)) => Some(Route::Direct(address)),
            (false, true, _) => Some(Route::Relay),
            (_, false, Some(address)) => Some(Route::Direct(address)),
            _ => None,
        }
    }

    pub fn kind(&self, now: Instant, relay: bool) -> PathKind {
        let recently = |heard: Option<Instant>| heard.is_some_and(|at| now.saturating_duration_since(at) < ACTIVE_WINDOW);
        match self.route(now, relay) {
            Some(Route::Direct(_)) if self.direct_heard.is_some() => PathKind::Direct,
            Some(Route::Relay) if recently(self.relay_heard) => PathKind::Relay,
            _ => PathKind::None,
        }
    }

    /// An authenticated datagram arrived directly from `source`: it becomes the direct path
    /// (roaming), trusted from now.
    pub fn heard_direct(&mut self, source: SocketAddr, now: Instant) {
        self.direct = Some(source);
        self.direct_heard = Some(now);
    }

    /// An authenticated datagram arrived through the relay.
    pub fn heard_relay(&mut self, now: Instant) {
        self.relay_heard = Some(now);
    }

    /// Whether the peer had traffic (or new candidates) within [`ACTIVE_WINDOW`].
    pub fn is_active(&self, now: Instant) -> bool {
        self.active_until.is_some_and(|until| until > now)
    }

    /// Traffic in either direction: keep probing for a while.
    pub fn activity(&mut self, now: Instant) {
        let was_idle = self.active_until.is_none_or(|until| until <= now);
        self.active_until = Some(now + ACTIVE_WINDOW);
        if was_idle {
            self.next_probe = Some(now);
        }
    }

    /// Probing is for choosing between paths: with no relay and no candidates there is one
    /// path, and the peer behaves as plain WireGuard.
    fn probing(&self, relay: bool) -> bool {
        relay || !self.candidates.is_empty()
    }

    /// When probes are next due, if the peer is active and there is a choice to make.
    pub fn poll_timeout(&self, relay: bool) -> Option<Instant> {
        self.next_probe.filter(|_| self.active_until.is_some() && self.probing(relay))
    }

    /// If probes are due, the addresses to probe (current direct first, then candidates), and
    /// schedules the next round; nothing once the peer has gone idle.
    pub fn due_probes(&mut self, now: Instant, relay: bool, out: &mut Vec<SocketAddr>) {
        if !self.probing(relay) {
            return;
        }
        let Some(due) = self.next_probe else { return };
        if due > now {
            return;
        }
        if self.active_until.is_none_or(|until| until <= now) {
            self.next_probe = None;
            self.active_until = None;
            return;
        }
        self.next_probe = Some(now + PROBE_INTERVAL);
        out.extend(self.direct);
        out.extend(self.candidates.iter().filter(|c| Some(**c) != self.direct));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, last], 41641))
    }

    #[test]
    fn without_a_relay_the_last_direct_address_is_used_as_wireguard_would() {
        let now = Instant::now();
        let mut paths = Paths::with_endpoint(Some(addr(1)));
        assert_eq!(paths.route(now, false), Some(Route::Direct(addr(1))));
        paths.heard_direct(addr(2), now);
        assert_eq!(paths.route(now + Duration::from_secs(60), false), Some(Route::Direct(addr(2))), "roamed");
        assert_eq!(Paths::default().route(now, false), None);
    }

    #[test]
    fn with_a_relay_untrusted_direct_paths_wait_and_the_relay_carries_the_first_packet() {
        let now = Instant::now();
        let mut paths = Paths::with_endpoint(Some(addr(1)));
        assert_eq!(paths.route(now, true), Some(Route::Relay));
        paths.heard_direct(addr(1), now);
        assert_eq!(paths.route(now, true), Some(Route::Direct(addr(1))));
        // Quiet for less than the trust window: still direct; past it: back to the relay.
        assert_eq!(paths.route(now + DIRECT_TRUST - Duration::from_millis(1), true), Some(Route::Direct(addr(1))));
        assert_eq!(paths.route(now + DIRECT_TRUST, true), Some(Route::Relay));
    }

    #[test]
    fn probes_go_to_direct_and_candidates_while_active_then_stop() {
        let start = Instant::now();
        let mut paths = Paths::with_endpoint(Some(addr(1)));
        paths.set_candidates([addr(2), addr(1), addr(2), addr(3)], start);
        let mut due = Vec::new();
        paths.due_probes(start, false, &mut due);
        assert_eq!(due, vec![addr(1), addr(2), addr(3)], "direct first, deduplicated");
        due.clear();
        paths.due_probes(start + PROBE_INTERVAL / 2, false, &mut due);
        assert!(due.is_empty(), "not due yet");
        assert_eq!(paths.poll_timeout(false), Some(start + PROBE_INTERVAL));
        // No traffic: probing stops after the active window.
        let mut at = start;
        let mut rounds = 0;
        while let Some(next) = paths.poll_timeout(false) {
            at = next;
            due.clear();
            paths.due_probes(at, false, &mut due);
            rounds += usize::from(!due.is_empty());
            assert!(rounds < 100);
        }
        assert!(at >= start + ACTIVE_WINDOW && rounds >= 19, "probed {rounds} rounds until {:?}", at - start);
        // Traffic wakes it up again at once.
        paths.activity(at + Duration::from_secs(1));
        assert_eq!(paths.poll_timeout(false), Some(at + Duration::from_secs(1)));
    }

    #[test]
    fn a_single_path_without_relay_is_never_probed() {
        let now = Instant::now();
        let mut paths = Paths::with_endpoint(Some(addr(1)));
        paths.activity(now);
        assert_eq!(paths.poll_timeout(false), None);
        let mut due = Vec::new();
        paths.due_probes(now, false, &mut due);
        assert!(due.is_empty());
        assert_eq!(paths.poll_timeout(true), Some(now), "with a relay the direct path is probed");
    }

    #[test]
    fn candidates_are_capped() {
        let now = Instant::now();
        let mut paths = Paths::default();
        paths.set_candidates((1..=20).map(addr), now);
        assert_eq!(paths.candidates().len(), MAX_CANDIDATES);
    }

    #[test]
    fn status_kind_follows_what_was_heard() {
        let now = Instant::now();
        let mut paths = Paths::with_endpoint(Some(addr(1)));
        assert_eq!(paths.kind(now, true), PathKind::None);
        paths.heard_relay(now);
        assert_eq!(paths.kind(now, true), PathKind::Relay);
        paths.heard_direct(addr(1), now);
        assert_eq!(paths.kind(now, true), PathKind::Direct);
        assert_eq!(paths.kind(now, false), PathKind::Direct);
    }
}
