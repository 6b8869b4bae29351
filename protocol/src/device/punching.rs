//! The birthday punch and the NAT check it rests on ([`crate::birthday`]), on [`Device`]:
//! - asking the relay's data port and its reflector port how they see us, and classifying
//!   our NAT from the two answers;
//! - relay duty's side of it: answering probes that reach the reflector port with the source
//!   they came from, and nothing else (it is never a path);
//! - the hard side: handing the shell one sealed probe to send from many sockets, then the
//!   go signal through the relay;
//! - the easy side: spraying the hard side's public address, paced, until it answers.

use super::{Control, Device, MAX_QUEUED_CONTROL};
use crate::birthday::{self, NatKind, PeerNat};
use crate::paths::Route;
use crate::tunnel::Decapsulated;
use crate::wire::{self, Message, PathControl};
use crate::StaticPublic;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The NAT check sends its two probes again this often while an answer is missing…
const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// …this many times; and it waits for a session with the relay at most this long.
const CHECK_TRIES: u8 = 3;
const CHECK_WAITS: Duration = Duration::from_secs(30);

/// What the device knows of its own NAT.
#[derive(Debug, Default)]
pub(super) struct NatCheck {
    pub(super) kind: Option<NatKind>,
    /// How the relay's reflector port saw us.
    reflected: Option<SocketAddr>,
    due: Option<Instant>,
    tries: u8,
    started: Option<Instant>,
}

/// The hard side's sockets, for the shell to open: send the `len` bytes written to `out` from
/// each of `sockets` fresh sockets to `destination`, and keep them open for
/// [`birthday::HOLD_SOCKETS`]. The first whose answer authenticates becomes the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PunchOpen {
    pub destination: SocketAddr,
    pub len: usize,
    pub sockets: usize,
}

impl Device {
    /// Whether this device takes part in birthday punches (on by default; off where a burst
    /// of probes to random ports would alarm a network's intrusion detection).
    pub fn set_birthday_punch(&mut self, enabled: bool) {
        self.birthday_punch = enabled;
    }

    /// What our NAT does, once the relay answered both probes of the check.
    pub fn nat_kind(&self) -> Option<NatKind> {
        self.nat.kind
    }

    /// Our public address as the relay's data port sees it.
    pub fn reflexive_address(&self) -> Option<SocketAddr> {
        let relay = self.relay.as_ref()?;
        self.observed.get(&relay.key).copied()
    }

    /// What a peer told us of its NAT; `None` when it did not say. A go signal that came
    /// just before it (the peer punched the moment its own check was done, before it could
    /// tell us) is answered now.
    pub fn set_peer_nat(&mut self, key: &StaticPublic, nat: Option<PeerNat>, now: Instant) {
        let Some(peer) = self.peers.get_mut(key) else { return };
        peer.nat = nat;
        if nat.is_some_and(|nat| nat.kind == NatKind::EndpointDependent)
            && let Some(at) = peer.punch_signal.take()
            && now.saturating_duration_since(at) < birthday::HOLD_SOCKETS
        {
            self.on_punch_signal(key, now);
        }
    }

    /// Whether an authenticated datagram from `source` just made it some peer's direct path
    /// (the shell keeps the socket it came in on).
    pub fn is_direct_endpoint(&self, source: SocketAddr, now: Instant) -> bool {
        self.peers.values().any(|peer| peer.paths.direct() == Some(source) && peer.paths.direct_trusted(now))
    }

    /// The relay's reflector, when `source` is it.
    pub(super) fn is_reflector(&self, key: &StaticPublic, source: SocketAddr) -> bool {
        self.relay.as_ref().is_some_and(|relay| relay.key == *key && birthday::reflector_of(relay.address) == Some(source))
    }

    /// A (new) relay, or our address as it sees us changed: check the NAT again.
    pub(super) fn recheck_nat(&mut self, now: Instant) {
        self.nat.due = Some(now);
        self.nat.started = Some(now);
        self.nat.tries = 0;
        self.nat.reflected = None;
    }

    /// A pong from the relay: from its data port (`reflected` false) or its reflector.
    pub(super) fn relay_saw(&mut self, key: StaticPublic, observed: SocketAddr, reflected: bool, now: Instant) {
        if reflected {
            self.nat.reflected = Some(observed);
        } else if self.observed.insert(key, observed).is_some_and(|before| before != observed) {
            self.recheck_nat(now);
        }
        if let (Some(main), Some(other)) = (self.reflexive_address(), self.nat.reflected) {
            self.nat.kind = Some(birthday::classify(main, other));
            self.nat.due = None;
        }
    }

    /// The NAT check's probes, when due: one to the relay's data port, one to its reflector.
    pub(super) fn check_nat(&mut self, now: Instant) {
        if self.nat.due.is_none_or(|due| due > now) || self.relay_server {
            return;
        }
        let Some(relay) = self.relay.as_ref() else {
            self.nat.due = None;
            return;
        };
        let (key, address) = (relay.key, relay.address);
        let Some(reflector) = birthday::reflector_of(address) else {
            self.nat.due = None;
            return;
        };
        if !self.peer_has_session(&key, now) {
            // The session with the relay is coming (it is always kept): look again soon.
            let waited = self.nat.started.is_some_and(|at| now.saturating_duration_since(at) >= CHECK_WAITS);
            self.nat.due = (!waited).then_some(now + RECHECK_AFTER);
            return;
        }
        for target in [address, reflector] {
            if self.control.len() < MAX_QUEUED_CONTROL {
                self.next_probe_id += 1;
                self.control.push_back((key, Route::Direct(target), Control::Probe(self.next_probe_id)));
            }
        }
        self.nat.tries += 1;
        self.nat.due = (self.nat.tries < CHECK_TRIES).then_some(now + RECHECK_AFTER);
    }

    pub(super) fn nat_check_due(&self) -> Option<Instant> {
        self.nat.due
    }

    /// Relay duty, on the reflector port: a path probe from a member is answered with the
    /// source it came from, sealed in their session, into `out` (send it back from the
    /// reflector port to `source`). Anything else is dropped: the reflector carries no
    /// traffic, moves no path and answers nobody without a session.
    pub fn reflect(&mut self, source: SocketAddr, datagram: &[u8], out: &mut [u8], now: Instant) -> Option<usize> {
        if !self.relay_server {
            return None;
        }
        let message = Message::parse(datagram).ok()?;
        let Message::Data(data) = &message else { return None };
        let key = *self.indices.get(&data.receiver)?;
        if !(self.authorize)(&key) {
            return None;
        }
        let peer = self.peers.get_mut(&key)?;
        let mut plain = [0u8; 64];
        let id = match peer.tunnel.handle_message(message, &mut plain, now) {
            Ok(Decapsulated::PathControl(len)) => match wire::parse_path_control(&plain[..len]) {
                Some(PathControl::Probe(id)) => id,
                _ => return None,
            },
            _ => return None,
        };
        let mut pong = [0u8; wire::PATH_PONG_LEN];
        let len = wire::emit_path_control(&mut pong, PathControl::Pong(id, Some(source)));
        let sealed = peer.tunnel.encapsulate_control(&pong[..len], out, now).ok().flatten();
        self.sync_peer(&key, now);
        sealed
    }

    /// The hard side: starts an attempt with `key` if one makes sense now — our NAT is
    /// symmetric, the peer's is not, the peer is active, reached only through the relay, and
    /// the pair did not try within the minute.
    pub(super) fn consider_punch(&mut self, key: &StaticPublic, now: Instant) {
        if !self.birthday_punch || self.punch_open.is_some() || self.nat.kind != Some(NatKind::EndpointDependent) {
            return;
        }
        // One attempt's sockets at a time (the shell closes a set when it opens the next):
        // the next peer's turn comes when this one's path is up or its sockets have closed.
        if let Some((peer, until)) = self.punching
            && until > now
            && !self.peers.get(&peer).is_some_and(|p| p.paths.direct_trusted(now))
        {
            return;
        }
        let relays = self.relays_to(key);
        let Some(peer) = self.peers.get_mut(key) else { return };
        let Some(PeerNat { kind: NatKind::EndpointIndependent, reflexive }) = peer.nat else { return };
        if !relays || !peer.tunnel.has_session(now) || peer.paths.direct_trusted(now) || !peer.paths.is_active(now) {
            return;
        }
        if peer.birthday.may_try(now) {
            self.punch_open = Some((*key, reflexive));
        }
    }

    /// The hard side's probe, when an attempt starts: sealed into `out`, for the shell to
    /// send from [`PunchOpen::sockets`] sockets of their own. The go signal for the easy side
    /// is queued behind it, through the relay.
    pub fn poll_punch(&mut self, out: &mut [u8], now: Instant) -> Option<PunchOpen> {
        let (key, destination) = self.punch_open.take()?;
        let peer = self.peers.get_mut(&key)?;
        self.next_probe_id += 1;
        let id = self.next_probe_id;
        let mut probe = [0u8; wire::PATH_PONG_LEN];
        let len = wire::emit_path_control(&mut probe, PathControl::Probe(id));
        // No session to seal it in after all: the attempt waits for the next look.
        let sealed = peer.tunnel.encapsulate_control(&probe[..len], out, now).ok().flatten()?;
        if !peer.birthday.start_hard(now) {
            return None;
        }
        self.control.push_back((key, Route::Relay, Control::Punch(id)));
        self.sync_peer(&key, now);
        self.stats.punch_opened += 1;
        self.punching = Some((key, now + birthday::HOLD_SOCKETS));
        Some(PunchOpen { destination, len: sealed, sockets: birthday::HARD_SOCKETS })
    }

    /// The easy side: the hard side's go signal. Sprays only if our NAT is endpoint-
    /// independent, the peer said its NAT is symmetric, no direct path works, and the pair
    /// did not try within the minute — so a member cannot make us probe at will.
    pub(super) fn on_punch_signal(&mut self, key: &StaticPublic, now: Instant) {
        if !self.birthday_punch || self.nat.kind != Some(NatKind::EndpointIndependent) {
            return;
        }
        let Some(peer) = self.peers.get_mut(key) else { return };
        let Some(PeerNat { kind: NatKind::EndpointDependent, reflexive }) = peer.nat else {
            // Not told yet (or not symmetric): wait a moment for what the peer says.
            peer.punch_signal = Some(now);
            return;
        };
        if peer.paths.direct_trusted(now) {
            return;
        }
        if peer.birthday.start_spray(reflexive.ip(), &mut self.rng, now) {
            self.stats.punch_sprays += 1;
        }
    }

    /// The easy side's probes due now, queued for `poll_transmit`.
    pub(super) fn spray(&mut self, key: &StaticPublic, now: Instant) {
        let Some(peer) = self.peers.get_mut(key) else { return };
        if !peer.birthday.spraying() {
            return;
        }
        let mut targets = std::mem::take(&mut self.probe_targets);
        targets.clear();
        peer.birthday.due_spray(now, &mut targets);
        for target in &targets {
            if self.control.len() < MAX_QUEUED_CONTROL {
                self.next_probe_id += 1;
                self.control.push_back((*key, Route::Direct(*target), Control::Probe(self.next_probe_id)));
                self.stats.punch_probes += 1;
            }
        }
        self.probe_targets = targets;
    }
}
