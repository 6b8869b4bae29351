//! Birthday punching: a direct path between a device behind an endpoint-independent NAT (the
//! "easy" side: one outside port whatever the destination) and one behind a symmetric NAT (the
//! "hard" side: a fresh random outside port per destination), where simultaneous probing of
//! reflexive addresses cannot work — the hard side's port toward us is never the one anybody
//! observed.
//!
//! The method is Tailscale's ("How NAT traversal works", the birthday paradox):
//! 1. The hard side opens [`HARD_SOCKETS`] sockets and sends one probe from each to the easy
//!    side's reflexive address. Its NAT opens a mapping per socket (each a random public
//!    port, each admitting replies from that address); the easy side's NAT drops the probes.
//! 2. It then tells the easy side, inside the session through the relay, to spray.
//! 3. The easy side sends up to [`SPRAY_PROBES`] probes from its one socket to random ports
//!    of the hard side's public address, paced, [`SPRAY_BATCH`] every [`SPRAY_TICK`]. Each
//!    opens the easy NAT toward that port. A probe that lands on one of the 256 mappings
//!    reaches one of the hard side's sockets; its pong goes back through the same mapping and
//!    is admitted by the easy NAT. The first answer stops the spray.
//!
//! With 256 mappings among 64,512 ports, 1,024 random probes miss them all with probability
//! (1 − 256/64512)^1024 ≈ 1.7 %. Every probe is an authenticated path probe in the session:
//! nobody else can answer one or trigger a spray. A pair tries at most once per
//! [`ATTEMPT_EVERY`], in either role; two hard sides, or a side whose NAT is unknown, never
//! try (their odds are nil: a port each side picks blindly).
//!
//! A device learns which side it is on by asking the relay twice ([`classify`]): a probe to
//! its data port and one to its reflector port (the next port). Behind an endpoint-independent
//! NAT both see the same source; behind a symmetric one, two.
//!
//! Pure state, like [`crate::paths`]: the [`crate::Device`] feeds it and asks it what is due.

use rand_core::Rng;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Sockets the hard side opens for one attempt.
pub const HARD_SOCKETS: usize = 256;
/// Probes the easy side sends at most in one attempt.
pub const SPRAY_PROBES: usize = 1024;
/// Probes per tick: 1,024 take 320 ms, paced so that no NAT table or link sees a burst.
pub const SPRAY_BATCH: usize = 64;
pub const SPRAY_TICK: Duration = Duration::from_millis(20);
/// One attempt per pair at most this often, whichever side it is on.
pub const ATTEMPT_EVERY: Duration = Duration::from_secs(60);
/// How long the hard side keeps its sockets open for an answer.
pub const HOLD_SOCKETS: Duration = Duration::from_secs(5);
/// Ports a spray picks from: the range NATs allocate from (below it, most keep to the
/// privileged and well-known ports).
pub const SPRAY_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;

/// How a device's NAT maps one inside socket toward different destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// One outside address whatever the destination (or no NAT at all): the easy side.
    EndpointIndependent,
    /// A different outside address per destination (symmetric): the hard side.
    EndpointDependent,
}

impl NatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NatKind::EndpointIndependent => "endpoint-independent",
            NatKind::EndpointDependent => "endpoint-dependent",
        }
    }
}

/// The relay saw our data port's datagrams come from `main`, and those to its reflector port
/// from `reflected`: one mapping for both destinations, or one per destination.
pub fn classify(main: SocketAddr, reflected: SocketAddr) -> NatKind {
    if main == reflected { NatKind::EndpointIndependent } else { NatKind::EndpointDependent }
}

/// The reflector of a relay at `relay`: the next port.
pub fn reflector_of(relay: SocketAddr) -> Option<SocketAddr> {
    Some(SocketAddr::new(relay.ip(), relay.port().checked_add(1)?))
}

/// What one peer told us of its NAT (through the control plane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNat {
    pub kind: NatKind,
    /// Its public address as the relay saw it: where the hard side aims its sockets, and
    /// whose address the easy side sprays.
    pub reflexive: SocketAddr,
}

/// One pair's birthday state.
#[derive(Debug, Clone, Default)]
pub struct Birthday {
    last_attempt: Option<Instant>,
    /// Attempts this pair made, in either role (`pal status` shows them per peer).
    attempts: u64,
    spray: Option<Spray>,
}

#[derive(Debug, Clone)]
struct Spray {
    ip: IpAddr,
    /// Ports still to probe, in random order.
    ports: Vec<u16>,
    next_at: Instant,
}

impl Birthday {
    /// Whether this pair may try now (never before, or [`ATTEMPT_EVERY`] ago).
    pub fn may_try(&self, now: Instant) -> bool {
        self.last_attempt.is_none_or(|at| now.saturating_duration_since(at) >= ATTEMPT_EVERY)
    }

    /// The hard side starts an attempt (its sockets are the shell's to open).
    pub fn start_hard(&mut self, now: Instant) -> bool {
        if !self.may_try(now) {
            return false;
        }
        self.last_attempt = Some(now);
        self.attempts += 1;
        true
    }

    /// The easy side starts a spray of `ip`: [`SPRAY_PROBES`] distinct random ports.
    pub fn start_spray(&mut self, ip: IpAddr, rng: &mut impl Rng, now: Instant) -> bool {
        if !self.may_try(now) || self.spray.is_some() {
            return false;
        }
        self.last_attempt = Some(now);
        self.attempts += 1;
        let span = u32::from(SPRAY_PORTS.end() - SPRAY_PORTS.start()) + 1;
        let mut picked = BTreeSet::new();
        let mut ports = Vec::with_capacity(SPRAY_PROBES);
        while ports.len() < SPRAY_PROBES {
            let port = SPRAY_PORTS.start() + (rng.next_u32() % span) as u16;
            if picked.insert(port) {
                ports.push(port);
            }
        }
        self.spray = Some(Spray { ip, ports, next_at: now });
        true
    }

    /// Attempts this pair made, in either role.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    pub fn spraying(&self) -> bool {
        self.spray.is_some()
    }

    /// The addresses of the probes due now, at most [`SPRAY_BATCH`]; the spray ends when
    /// its ports run out.
    pub fn due_spray(&mut self, now: Instant, out: &mut Vec<SocketAddr>) {
        let Some(spray) = self.spray.as_mut() else { return };
        if spray.next_at > now {
            return;
        }
        let take = spray.ports.len().min(SPRAY_BATCH);
        out.extend(spray.ports.drain(..take).map(|port| SocketAddr::new(spray.ip, port)));
        spray.next_at = now + SPRAY_TICK;
        if spray.ports.is_empty() {
            self.spray = None;
        }
    }

    /// The peer answered directly: the spray has done its work.
    pub fn answered(&mut self) {
        self.spray = None;
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.spray.as_ref().map(|spray| spray.next_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 9], port))
    }

    #[test]
    fn one_mapping_for_both_destinations_is_endpoint_independent() {
        assert_eq!(classify(addr(41641), addr(41641)), NatKind::EndpointIndependent);
        assert_eq!(classify(addr(41641), addr(5000)), NatKind::EndpointDependent);
        assert_eq!(reflector_of(addr(41641)), Some(addr(41642)));
        assert_eq!(reflector_of(addr(65535)), None);
    }

    #[test]
    fn a_spray_sends_distinct_ports_paced_and_stops_when_answered_or_done() {
        let start = Instant::now();
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let mut pair = Birthday::default();
        assert!(pair.start_spray(addr(0).ip(), &mut rng, start));
        let mut sent = Vec::new();
        let mut at = start;
        let mut ticks = 0;
        while let Some(due) = pair.poll_timeout() {
            assert!(due >= at);
            at = due;
            let before = sent.len();
            pair.due_spray(at, &mut sent);
            assert!(sent.len() - before <= SPRAY_BATCH, "a burst of {}", sent.len() - before);
            ticks += 1;
        }
        assert_eq!(sent.len(), SPRAY_PROBES);
        assert_eq!(ticks, SPRAY_PROBES / SPRAY_BATCH);
        assert_eq!(at - start, SPRAY_TICK * (ticks - 1) as u32, "paced over {:?}", at - start);
        let distinct: BTreeSet<SocketAddr> = sent.iter().copied().collect();
        assert_eq!(distinct.len(), SPRAY_PROBES, "a port probed twice");
        assert!(sent.iter().all(|a| a.ip() == addr(0).ip() && SPRAY_PORTS.contains(&a.port())));

        // Not again within the minute, in either role; then again.
        assert!(!pair.start_spray(addr(0).ip(), &mut rng, start + ATTEMPT_EVERY - Duration::from_secs(1)));
        assert!(!pair.start_hard(start + Duration::from_secs(30)));
        assert_eq!(pair.attempts(), 1, "refused attempts are not counted");
        assert!(pair.start_spray(addr(0).ip(), &mut rng, start + ATTEMPT_EVERY));
        assert!(pair.start_hard(start + ATTEMPT_EVERY * 2));
        assert_eq!(pair.attempts(), 3, "both roles count");
        sent.clear();
        pair.due_spray(start + ATTEMPT_EVERY, &mut sent);
        assert_eq!(sent.len(), SPRAY_BATCH);
        pair.answered();
        assert_eq!(pair.poll_timeout(), None, "an answer stops the spray");
        sent.clear();
        pair.due_spray(start + ATTEMPT_EVERY + SPRAY_TICK, &mut sent);
        assert!(sent.is_empty());
    }

    /// The odds the module promises, checked by simulation on seeded randomness: 256 random
    /// mappings against 1,024 random probes, over many attempts.
    #[test]
    fn two_hundred_fifty_six_mappings_and_a_thousand_probes_meet_about_98_times_in_100() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let span = u32::from(SPRAY_PORTS.end() - SPRAY_PORTS.start()) + 1;
        let attempts = 2000;
        let mut met = 0;
        for _ in 0..attempts {
            let mappings: BTreeSet<u16> = (0..HARD_SOCKETS).map(|_| SPRAY_PORTS.start() + (rng.next_u32() % span) as u16).collect();
            let mut pair = Birthday::default();
            pair.start_spray(addr(0).ip(), &mut rng, Instant::now());
            let mut sent = Vec::new();
            while let Some(due) = pair.poll_timeout() {
                pair.due_spray(due, &mut sent);
            }
            met += usize::from(sent.iter().any(|a| mappings.contains(&a.port())));
        }
        let rate = met as f64 / attempts as f64;
        assert!((0.96..=0.995).contains(&rate), "met in {rate:.3} of attempts");
    }
}
