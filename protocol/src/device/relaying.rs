//! The relay side of [`Device`]: sealing envelopes for our relay, opening the relay's, and
//! relay duty — finding a sender by its hourly id, refusing replays, charging the fair share,
//! moving an endpoint only for a member's newest envelope, and resealing for the next hop.

use super::{Device, DeviceStats, Peer, Received, Route, Via};
use crate::fallback::HopAction;
use crate::relay::{self, RELAY_HEADER_LEN, ShortId};
use crate::{Error, StaticPublic, Transmit};
use std::net::SocketAddr;
use crate::share::FairShare;
use std::time::{Duration, Instant};

impl Device {
    /// Turns `len` bytes of WireGuard message, written where [`inner_buffer`] said, into a
    /// transmit: as is for a direct route, in a sealed envelope to the relay otherwise
    /// (`None` only if the relay went away in between, which `route` rules out).
    pub(super) fn wrap(&mut self, route: Route, key: &StaticPublic, out: &mut [u8], len: usize, now: Instant) -> Option<Transmit> {
        match route {
            Route::Direct(destination) => {
                if self.relay.as_ref().is_some_and(|relay| relay.address == destination) {
                    self.relay_sent_at = Some(now);
                }
                Some(Transmit { destination: self.hop_destination(destination, true, now), len })
            }
            Route::Relay => self.seal_to_relay(ShortId::of(key), out, len, now),
        }
    }

    /// Seals the `len` bytes of inner message after the header in `out` into an envelope for
    /// `destination` through our relay.
    fn seal_to_relay(&mut self, destination: ShortId, out: &mut [u8], len: usize, now: Instant) -> Option<Transmit> {
        let counter = self.next_envelope();
        let epoch = self.id_epoch(now);
        let relay = self.relay.as_ref()?;
        relay::seal(out.get_mut(..RELAY_HEADER_LEN + len)?, Some(destination), counter, epoch, &relay.hop);
        let address = relay.address;
        self.relay_sent_at = Some(now);
        // A hop keepalive (nothing inside) is the one thing nobody answers.
        Some(Transmit { destination: self.hop_destination(address, len > 0, now), len: RELAY_HEADER_LEN + len })
    }

    /// Where a datagram for `destination` goes: the stream, for the relay's UDP address while
    /// the hop runs over it. One that expects an answer (`answered`) and goes to the relay over
    /// UDP starts the hop's clock ([`crate::fallback`]).
    fn hop_destination(&mut self, destination: SocketAddr, answered: bool, now: Instant) -> SocketAddr {
        if self.relay.as_ref().is_none_or(|relay| relay.address != destination) {
            return destination;
        }
        if self.hop.over_stream() {
            return self.hop.destination(destination);
        }
        if answered {
            self.hop.sent_udp(now);
        }
        destination
    }

    /// The TCP fallback's stream to the relay came up (the address its datagrams come from and
    /// go to) or went down.
    pub fn set_relay_stream(&mut self, stream: Option<SocketAddr>, now: Instant) {
        self.hop.set_stream(stream, now);
    }

    /// Whether the node should bring the stream up (or keep it): UDP to the relay fails, or
    /// the hop runs over it.
    pub fn relay_stream_wanted(&self, now: Instant) -> bool {
        self.relay.is_some() && self.hop.wants_stream(now, self.relay_session(now))
    }

    /// Whether the hop to the relay runs over the stream now.
    pub fn relay_over_stream(&self) -> bool {
        self.relay.is_some() && self.hop.over_stream()
    }

    fn relay_session(&self, now: Instant) -> bool {
        self.relay.as_ref().is_some_and(|relay| self.peer_has_session(&relay.key, now))
    }

    pub(super) fn hop_due(&self) -> Option<Instant> {
        self.relay.as_ref()?;
        self.hop.poll_timeout(self.relay_session(self.last_hop_now))
    }

    /// The hop's timers: a UDP check probe, or the move to the stream (after which handshakes
    /// under way go again at once, over it, rather than after WireGuard's 5 s retry).
    pub(super) fn poll_hop(&mut self, now: Instant) {
        self.last_hop_now = now;
        let Some(relay) = self.relay.as_ref() else { return };
        let (key, address) = (relay.key, relay.address);
        match self.hop.poll(now, self.relay_session(now)) {
            Some(HopAction::ProbeUdp) => {
                if self.control.len() < super::MAX_QUEUED_CONTROL {
                    self.next_probe_id += 1;
                    self.control.push_back((key, Route::Direct(address), super::Control::UdpCheck(self.next_probe_id)));
                }
            }
            Some(HopAction::MovedToStream) => {
                let waiting: Vec<StaticPublic> = self.peers.iter().filter(|(_, p)| !p.tunnel.has_session(now)).map(|(k, _)| *k).collect();
                for key in waiting {
                    if let Some(peer) = self.peers.get_mut(&key) {
                        peer.tunnel.retry_handshake(now);
                    }
                    self.sync_peer(&key, now);
                }
            }
            None => {}
        }
    }

    /// Holds the NAT mapping toward the relay open: a hop keepalive after `every` of silence
    /// toward it (`None`: never, as on a network without NAT). Relayed traffic for us can then
    /// reach us however long we were idle, with no session kept alive for it.
    pub fn set_relay_keepalive(&mut self, every: Option<Duration>) {
        self.relay_keepalive = every;
    }

    /// When the next hop keepalive is due, if one is wanted.
    pub(super) fn relay_keepalive_due(&self) -> Option<Instant> {
        let every = self.relay_keepalive?;
        self.relay.as_ref()?;
        // The stream needs no NAT mapping held open for it.
        if self.hop.over_stream() {
            return None;
        }
        // Never sent: due at once (the caller's `now`).
        Some(self.relay_sent_at.map_or(self.clock.anchor, |at| at + every))
    }

    /// The hop keepalive, if one is due: a bare envelope addressed to the relay itself.
    pub(super) fn hop_keepalive(&mut self, out: &mut [u8], now: Instant) -> Option<Transmit> {
        if self.relay_keepalive_due().is_none_or(|due| due > now) {
            return None;
        }
        let relay = ShortId::of(&self.relay.as_ref()?.key);
        self.seal_to_relay(relay, out, 0, now)
    }

    /// Switches relay duty on: envelopes between members are forwarded (CloudPal).
    pub fn set_relay_server(&mut self, enabled: bool) {
        self.relay_server = enabled;
    }

    pub fn is_relay_server(&self) -> bool {
        self.relay_server
    }

    /// Relay duty: the relay's whole rate in bytes a second, shared fairly among the members
    /// that use it (`None`: no cap). [`crate::share::DEFAULT_RATE_BYTES_PER_SECOND`] until set.
    pub fn set_relay_rate(&mut self, rate: Option<u64>) {
        if self.relay_share.rate() != rate {
            self.relay_share = FairShare::new(rate);
        }
    }

    pub(super) fn next_envelope(&mut self) -> u64 {
        self.envelope_counter = self.envelope_counter.wrapping_add(1);
        self.envelope_counter
    }

    /// The relay-id epoch at `now`, by this device's wall clock.
    pub(super) fn id_epoch(&self, now: Instant) -> u64 {
        let unix = self.clock.unix_time_at_anchor + now.saturating_duration_since(self.clock.anchor);
        relay::epoch_of(unix.as_secs())
    }

    /// Relay duty: the peer whose sender id `id` is, remaking the table when the hour turned.
    pub(super) fn relay_sender(&mut self, id: &ShortId, now: Instant) -> Option<StaticPublic> {
        let epoch = self.id_epoch(now);
        if self.relay_ids_epoch != Some(epoch) {
            self.relay_ids.clear();
            for (key, peer) in &self.peers {
                for epoch in epoch.saturating_sub(1)..=epoch + 1 {
                    self.relay_ids.entry(peer.hop.id(epoch)).or_insert(*key);
                }
            }
            self.relay_ids_epoch = Some(epoch);
        }
        self.relay_ids.get(id).copied()
    }

    /// An envelope: for us from our relay, or (relay duty) for another member.
    pub(super) fn receive_envelope(&mut self, source: SocketAddr, datagram: &[u8], out: &mut [u8], now: Instant) -> Result<Received, Error> {
        let refused = |stats: &mut DeviceStats| stats.relay_refused += 1;
        let header = relay::parse(datagram).inspect_err(|_| refused(&mut self.stats))?;
        let too_short = datagram.len() < relay::MIN_ENVELOPE_LEN;
        if !self.relay_server {
            if too_short {
                refused(&mut self.stats);
                return Err(Error::Relay(relay::EnvelopeError::Malformed));
            }
            // From our relay: its tag, then a number not seen before on this hop.
            let relay = self.relay.as_mut().ok_or(Error::NoRelay).inspect_err(|_| self.stats.relay_refused += 1)?;
            relay.seen.check(header.counter).inspect_err(|_| self.stats.relay_refused += 1)?;
            relay::verify(datagram, &relay.hop).inspect_err(|_| self.stats.relay_refused += 1)?;
            relay.seen.accept(header.counter)?;
            return self.receive(source, Via::Relay, &datagram[RELAY_HEADER_LEN..], out, now);
        }
        // Relay duty. The sender must be a current member we share a hop key with (RL-03).
        let Some(sender) = self.relay_sender(&header.sender, now) else {
            refused(&mut self.stats);
            return Err(Error::UnknownPeer);
        };
        let Some(from) = self.peers.get_mut(&sender) else { return Err(Error::UnknownPeer) };
        if let Err(error) = from.relay_seen.check(header.counter) {
            self.stats.relay_replayed += 1;
            return Err(error.into());
        }
        if relay::verify(datagram, &from.hop).is_err() {
            refused(&mut self.stats);
            return Err(Error::Relay(relay::EnvelopeError::BadTag));
        }
        let addressed = header.destination(&from.hop);
        if addressed == ShortId::of(&self.static_public) && datagram.len() == relay::HOP_KEEPALIVE_LEN && (self.authorize)(&sender) {
            // A hop keepalive: nothing to forward, but it says where the member is now.
            accept_envelope(from, header.counter, source, now)?;
            self.stats.relay_keepalives += 1;
            return Ok(Received::Nothing);
        }
        if too_short {
            refused(&mut self.stats);
            return Err(Error::Relay(relay::EnvelopeError::Malformed));
        }
        let destination = self.short_ids.get(&addressed).copied();
        let Some(destination) = destination.filter(|d| *d != sender) else {
            refused(&mut self.stats);
            return Err(Error::UnknownPeer);
        };
        if !(self.authorize)(&sender) || !(self.authorize)(&destination) || !self.may_relay(&sender, &destination) {
            refused(&mut self.stats);
            return Err(Error::NotAuthorized);
        }
        // Charged before anything moves: an over-quota member's envelopes change nothing.
        let Some(from) = self.peers.get_mut(&sender) else { return Err(Error::UnknownPeer) };
        if !self.relay_share.admit(&mut from.relay_use, datagram.len() as u64, now) {
            self.stats.relay_over_quota += 1;
            return Err(Error::RelayQuota);
        }
        accept_envelope(from, header.counter, source, now)?;
        let counter = self.next_envelope();
        let epoch = self.id_epoch(now);
        let to = self.peers.get(&destination).ok_or(Error::UnknownPeer)?;
        let target = to.paths.direct().ok_or(Error::NoEndpoint)?;
        let forwarded = out.get_mut(..datagram.len()).ok_or(Error::BufferTooSmall)?;
        forwarded[RELAY_HEADER_LEN..].copy_from_slice(&datagram[RELAY_HEADER_LEN..]);
        relay::seal(forwarded, None, counter, epoch, &to.hop);
        self.stats.relay_forwarded += 1;
        Ok(Received::Forward(Transmit { destination: target, len: datagram.len() }))
    }

}

impl Device {
    /// Relay duty: a guest's envelopes go only to the devices shared with it, and only those
    /// send it any (GUEST-01); members relay to members.
    fn may_relay(&self, a: &StaticPublic, b: &StaticPublic) -> bool {
        let allows = |from: &StaticPublic, to: &StaticPublic| {
            self.peers.get(from).is_some_and(|p| p.guest.as_ref().is_none_or(|rules| rules.relay_to.contains(to)))
        };
        allows(a, b) && allows(b, a)
    }
}

/// Relay duty: an authenticated, fresh envelope from `from` is accepted on its hop, and says
/// where the member is now — but only one newer than all before may move it (a delayed one
/// arriving late from an old address may not).
fn accept_envelope(from: &mut Peer, counter: u64, source: SocketAddr, now: Instant) -> Result<(), Error> {
    let newest = from.relay_seen.is_newest(counter);
    from.relay_seen.accept(counter)?;
    if newest {
        from.paths.heard_direct(source, now);
    }
    Ok(())
}
