//! The per-peer tunnel: a deterministic state machine that owns the handshake, the sessions
//! and WireGuard's timers for one peer (boringtun's `Tunn`, in quinn's sans-IO shape).
//!
//! - [`Tunnel::encapsulate`] turns an IP packet into a datagram in the caller's buffer, or
//!   queues it and starts a handshake when no session can carry it.
//! - [`Tunnel::decapsulate`] consumes a datagram from the peer: data (to an IP packet in the
//!   caller's buffer), handshake response or cookie reply. Initiations arrive already decrypted
//!   through [`Tunnel::handle_initiation`], because only the multi-peer [`crate::Device`] can
//!   tell which tunnel an identity-hiding initiation is for.
//! - [`Tunnel::handle_timeout`], [`Tunnel::poll_timeout`] and [`Tunnel::poll_transmit`] run the
//!   timers and hand out handshake messages, keepalives and packets released by a handshake.
//!
//! Sessions rotate through `next` → `current` → `previous`, as in wireguard-go: a responder's
//! new session waits in `next` until the initiator proves it has the keys (its first data
//! packet), so a responder never sends on unconfirmed keys (DP-13); `previous` keeps decrypting
//! in-flight packets after a rekey, so traffic never stalls.
//!
//! The data path allocates nothing: the one padding buffer grows to the largest packet seen.

use crate::cookie::MacSender;
use crate::handshake::{InitiatorHandshake, ReceivedInitiation};
use crate::keys::{PresharedKey, StaticPublic, StaticSecret};
use crate::session::Session;
use crate::time::{Tai64N, WallClock};
use crate::timers::*;
use crate::wire::{
    self, DATA_OVERHEAD, INITIATION_LEN, MAX_PACKET_LEN, Message, RESPONSE_LEN,
};
use crate::{Error, ReceiverIndex};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Packets held while a handshake is in flight; older ones are dropped first (wireguard-go's
/// `QueueStagedSize`).
pub const MAX_QUEUED_PACKETS: usize = 128;
/// Handshake messages waiting for `poll_transmit`; at most one initiation and one response
/// are ever useful, the rest is slack for callers that poll late.
pub const MAX_QUEUED_CONTROL: usize = 8;

/// Configuration of one tunnel.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    pub local_static: StaticSecret,
    pub peer_static: StaticPublic,
    pub psk: PresharedKey,
    /// Send a keepalive after this much silence, to hold NAT mappings open.
    pub persistent_keepalive: Option<Duration>,
    /// The overlay MTU: plaintext is padded to a multiple of 16 up to this size.
    pub mtu: usize,
    pub clock: WallClock,
}

/// What [`Tunnel::encapsulate`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulated {
    /// A data message of this length is at the start of the output buffer.
    Datagram(usize),
    /// No session yet: the packet waits for the handshake; see `poll_transmit`.
    Queued,
}

/// What [`Tunnel::decapsulate`] found in an authenticated datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decapsulated {
    /// An IP packet of this length is at the start of the output buffer.
    Packet(usize),
    /// A keepalive: authenticated, no payload.
    Keepalive,
    /// Our handshake completed; queued packets are ready in `poll_transmit`.
    HandshakeComplete,
    /// A cookie reply was accepted (not proof of the peer's identity: never roam on it).
    CookieAccepted,
    /// A path control message ([`wire::PATH_PROBE`] or [`wire::PATH_PONG`]) of this length
    /// is at the start of the output buffer.
    PathControl(usize),
}

impl Decapsulated {
    /// Whether the datagram proved it came from the peer (so its source may become the
    /// peer's endpoint).
    pub fn is_authenticated(&self) -> bool {
        !matches!(self, Decapsulated::CookieAccepted)
    }
}

/// Counters for `status` and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
    /// Data packets refused by the replay window (DP-01).
    pub rx_replay: u64,
    /// Data packets whose tag did not verify (DP-05).
    pub rx_invalid: u64,
    pub handshakes_completed: u64,
    pub handshakes_given_up: u64,
    /// Packets dropped because the handshake queue was full or the handshake failed.
    pub queued_dropped: u64,
}

/// A change to the set of receiver indices this tunnel answers to, for the index table of a
/// multi-peer device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexChange {
    Added(ReceiverIndex),
    Retired(ReceiverIndex),
}

#[derive(Debug)]
struct PendingHandshake {
    /// `None` until the first initiation is sent, and after a bad response spoiled it.
    noise: Option<InitiatorHandshake>,
    next_send: Instant,
    attempts: u32,
    cookie_retry_used: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Previous,
    Next,
}

pub struct Tunnel {
    config: TunnelConfig,
    macs: MacSender,
    rng: ChaCha20Rng,
    spare_index: Option<ReceiverIndex>,
    index_changes: Vec<IndexChange>,

    handshake: Option<PendingHandshake>,
    current: Option<Session>,
    previous: Option<Session>,
    next: Option<Session>,

    /// Newest initiation timestamp accepted from the peer (DP-09).
    last_initiation_timestamp: Option<Tai64N>,
    /// When we last accepted an initiation from the peer (DP-10).
    last_initiation_consumed: Option<Instant>,
    last_initiation_sent: Option<Instant>,

    keepalive_due: Option<Instant>,
    new_handshake_due: Option<Instant>,
    zero_keys_due: Option<Instant>,
    persistent_keepalive_due: Option<Instant>,
    keepalive_wanted: bool,

    queue: VecDeque<Vec<u8>>,
    spare_buffers: Vec<Vec<u8>>,
    control: VecDeque<Vec<u8>>,
    padding: Vec<u8>,
    stats: TunnelStats,
}

impl Tunnel {
    /// A tunnel with no session yet; `seed` drives every random choice it makes.
    pub fn new(config: TunnelConfig, seed: [u8; 32]) -> Self {
        Self {
            macs: MacSender::new(&config.peer_static),
            config,
            rng: ChaCha20Rng::from_seed(seed),
            spare_index: None,
            index_changes: Vec::new(),
            handshake: None,
            current: None,
            previous: None,
            next: None,
            last_initiation_timestamp: None,
            last_initiation_consumed: None,
            last_initiation_sent: None,
            keepalive_due: None,
            new_handshake_due: None,
            zero_keys_due: None,
            persistent_keepalive_due: None,
            keepalive_wanted: false,
            queue: VecDeque::new(),
            spare_buffers: Vec::new(),
            control: VecDeque::new(),
            padding: Vec::new(),
            stats: TunnelStats::default(),
        }
    }

    pub fn peer_static(&self) -> &StaticPublic {
        &self.config.peer_static
    }

    pub fn stats(&self) -> TunnelStats {
        self.stats
    }

    /// Whether a confirmed session can carry packets now.
    pub fn has_session(&self, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|s| s.is_alive(now))
    }

    /// Encrypts `packet` into `out`, or queues it behind a handshake.
    pub fn encapsulate(&mut self, packet: &[u8], out: &mut [u8], now: Instant) -> Result<Encapsulated, Error> {
        if packet.len() > MAX_PACKET_LEN {
            return Err(Error::PacketTooLarge);
        }
        if let Some(len) = self.seal(packet, out, now, true)? {
            return Ok(Encapsulated::Datagram(len));
        }
        self.enqueue(packet);
        self.begin_handshake(now);
        Ok(Encapsulated::Queued)
    }

    /// Starts a handshake now unless a session is alive or a handshake is under way.
    pub fn connect(&mut self, now: Instant) {
        if !self.has_session(now) && self.handshake.is_none() {
            self.begin_handshake(now);
        }
    }

    /// Sends the pending handshake's initiation again now (its last one never left: there was
    /// no route); nothing without a pending handshake.
    pub fn retry_handshake(&mut self, now: Instant) {
        if self.handshake.is_some() {
            self.send_initiation(now);
        }
    }

    /// Seals a path control message in the current session; `None` without one (probes never
    /// start a handshake or wait for one).
    pub fn encapsulate_control(&mut self, message: &[u8], out: &mut [u8], now: Instant) -> Result<Option<usize>, Error> {
        self.seal(message, out, now, false)
    }

    /// Consumes one datagram from the peer (any kind but initiation).
    pub fn decapsulate(&mut self, datagram: &[u8], out: &mut [u8], now: Instant) -> Result<Decapsulated, Error> {
        let message = Message::parse(datagram)?;
        self.handle_message(message, out, now)
    }

    /// As [`Self::decapsulate`], for a message the caller already parsed.
    pub fn handle_message(&mut self, message: Message<'_>, out: &mut [u8], now: Instant) -> Result<Decapsulated, Error> {
        match message {
            Message::Data(data) => self.receive_data(data.receiver, data.counter, data.ciphertext, out, now),
            Message::Response(response) => self.receive_response(&response, now),
            Message::CookieReply(reply) => self.receive_cookie_reply(&reply, now),
            Message::Initiation(_) => Err(Error::UnexpectedMessage),
        }
    }

    /// Answers a decrypted initiation from this tunnel's peer; the response is queued for
    /// `poll_transmit`.
    pub fn handle_initiation(&mut self, initiation: ReceivedInitiation, now: Instant) -> Result<(), Error> {
        if initiation.initiator != self.config.peer_static {
            return Err(Error::UnknownPeer);
        }
        if self.last_initiation_timestamp.is_some_and(|last| initiation.timestamp <= last) {
            return Err(Error::ReplayedInitiation);
        }
        if self
            .last_initiation_consumed
            .is_some_and(|at| now.saturating_duration_since(at) < INITIATION_MIN_INTERVAL)
        {
            return Err(Error::InitiationTooSoon);
        }
        let timestamp = initiation.timestamp;
        let index = self.take_index();
        let mut response = [0u8; RESPONSE_LEN];
        let keys = match initiation.respond(index, &mut response) {
            Ok(keys) => keys,
            Err(_) => {
                self.retire(index);
                return Err(Error::HandshakeFailed);
            }
        };
        self.last_initiation_timestamp = Some(timestamp);
        self.last_initiation_consumed = Some(now);
        self.macs.stamp(&mut response, now);
        // Responder: the new session waits in `next` for key confirmation (DP-13).
        let stale_next = self.next.replace(Session::new(keys, now));
        let stale_previous = self.previous.take();
        self.retire_sessions([stale_next, stale_previous]);
        self.zero_keys_due = Some(now + ZERO_KEYS_AFTER);
        self.push_control(response.to_vec());
        self.packet_sent(now);
        Ok(())
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for slot in [Slot::Previous, Slot::Next, Slot::Current] {
            if self.slot(slot).is_some_and(|s| s.is_expired(now)) {
                let expired = self.slot_mut(slot).take();
                self.retire_sessions([expired]);
            }
        }
        if is_due(self.zero_keys_due, now) {
            self.zero_keys_due = None;
            self.erase_keys();
        }
        if let Some(pending) = &self.handshake
            && now >= pending.next_send
        {
            if pending.attempts >= MAX_HANDSHAKE_ATTEMPTS {
                self.give_up_handshake(now);
            } else {
                self.send_initiation(now);
            }
        }
        if is_due(self.new_handshake_due, now) {
            self.new_handshake_due = None;
            self.begin_handshake(now);
        }
        if is_due(self.keepalive_due, now) {
            self.keepalive_due = None;
            self.keepalive_wanted = true;
        }
        if is_due(self.persistent_keepalive_due, now) {
            self.persistent_keepalive_due = None;
            self.keepalive_wanted = true;
        }
        if self.keepalive_wanted && !self.has_session(now) {
            self.begin_handshake(now);
        }
    }

    /// The earliest instant at which [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiries = [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|s| s.reject_at);
        [
            self.zero_keys_due,
            self.handshake.as_ref().map(|h| h.next_send),
            self.new_handshake_due,
            self.keepalive_due,
            self.persistent_keepalive_due,
        ]
        .into_iter()
        .flatten()
        .chain(expiries)
        .min()
    }

    /// Writes the next datagram to send into `out`: handshake messages first, then packets a
    /// handshake released, then a keepalive.
    pub fn poll_transmit(&mut self, out: &mut [u8], now: Instant) -> Option<usize> {
        while let Some(message) = self.control.pop_front() {
            if let Some(dst) = out.get_mut(..message.len()) {
                dst.copy_from_slice(&message);
                return Some(message.len());
            }
        }
        if !self.has_session(now) {
            return None;
        }
        while let Some(packet) = self.queue.pop_front() {
            let sealed = self.seal(&packet, out, now, true);
            self.recycle(packet);
            if let Ok(Some(len)) = sealed {
                return Some(len);
            }
            self.stats.queued_dropped += 1;
        }
        if self.keepalive_wanted {
            self.keepalive_wanted = false;
            if let Ok(Some(len)) = self.seal(&[], out, now, false) {
                return Some(len);
            }
        }
        None
    }

    /// Whether `poll_transmit` would return something now.
    pub fn wants_transmit(&self, now: Instant) -> bool {
        !self.control.is_empty()
            || (self.has_session(now) && (!self.queue.is_empty() || self.keepalive_wanted))
    }

    /// Forgets every session and handshake, as on revocation or key zeroing.
    pub fn erase_keys(&mut self) {
        let (current, previous, next) = (self.current.take(), self.previous.take(), self.next.take());
        self.retire_sessions([current, previous, next]);
        if let Some(pending) = self.handshake.take()
            && let Some(noise) = pending.noise
        {
            self.retire(noise.local_index());
        }
        self.stats.queued_dropped += self.queue.len() as u64;
        self.queue.clear();
        self.keepalive_wanted = false;
        self.keepalive_due = None;
        self.new_handshake_due = None;
    }

    /// Receiver indices this tunnel answers to now (including the spare one).
    pub fn local_indices(&self) -> impl Iterator<Item = ReceiverIndex> + '_ {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|s| s.local_index)
            .chain(self.handshake.as_ref().and_then(|h| h.noise.as_ref()).map(|n| n.local_index()))
            .chain(self.spare_index)
    }

    /// Whether the tunnel would like a fresh index from its device's index table.
    pub fn wants_index(&self) -> bool {
        self.spare_index.is_none()
    }

    /// Gives the tunnel an index, unique in the caller's table, for its next session.
    pub fn supply_index(&mut self, index: ReceiverIndex) {
        if let Some(old) = self.spare_index.replace(index) {
            self.index_changes.push(IndexChange::Retired(old));
        }
    }

    /// Index changes since the last call; a device applies them to its index table.
    pub fn drain_index_changes(&mut self) -> std::vec::Drain<'_, IndexChange> {
        self.index_changes.drain(..)
    }

    // ---- data path -------------------------------------------------------------------------

    /// Encrypts with the current session; `Ok(None)` when there is none that may send.
    /// `data`: an IP packet (counts as traffic, drives rekeying and the no-reply rule), not
    /// a keepalive or path control message.
    fn seal(&mut self, packet: &[u8], out: &mut [u8], now: Instant, data: bool) -> Result<Option<usize>, Error> {
        let Some(session) = self.current.as_mut().filter(|s| s.is_alive(now)) else {
            return Ok(None);
        };
        let padded = wire::padded_len(packet.len(), self.config.mtu);
        if out.len() < DATA_OVERHEAD + padded {
            return Err(Error::BufferTooSmall);
        }
        let plaintext = if padded == packet.len() {
            // Full-size packets need no padding, so no copy before snow's.
            packet
        } else {
            if self.padding.len() < padded {
                self.padding.resize(padded, 0);
            }
            self.padding[..packet.len()].copy_from_slice(packet);
            self.padding[packet.len()..padded].fill(0);
            &self.padding[..padded]
        };
        let len = session.seal(plaintext, out)?;
        // Only data refreshes keys on the send side (wireguard-go's keepKeyFreshSending):
        // a receive-only initiator's keepalives leave the rekey to the 165 s receive rule.
        let wants_rekey = data && session.wants_rekey_on_send(now);
        self.stats.tx_bytes += len as u64;
        if data {
            self.stats.tx_packets += 1;
            self.new_handshake_due.get_or_insert(now + NEW_HANDSHAKE_TIMEOUT);
        }
        self.packet_sent(now);
        if wants_rekey {
            self.begin_handshake(now);
        }
        Ok(Some(len))
    }

    fn receive_data(
        &mut self,
        receiver: ReceiverIndex,
        counter: u64,
        ciphertext: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Result<Decapsulated, Error> {
        let slot = self.find_slot(receiver).ok_or(Error::UnknownReceiverIndex)?;
        let Some(session) = self.slot_mut(slot).as_mut() else {
            return Err(Error::UnknownReceiverIndex);
        };
        if session.is_expired(now) {
            return Err(Error::SessionExpired);
        }
        let len = match session.open(counter, ciphertext, out) {
            Ok(len) => len,
            Err(error) => {
                match error {
                    Error::Replay(_) => self.stats.rx_replay += 1,
                    Error::DecryptionFailed => self.stats.rx_invalid += 1,
                    _ => {}
                }
                return Err(error);
            }
        };
        // Authenticated from here on.
        if slot == Slot::Next {
            self.confirm_next(now);
        }
        self.packet_received(now);
        self.stats.rx_bytes += (wire::DATA_HEADER_LEN + ciphertext.len()) as u64;
        if self.current.as_ref().is_some_and(|s| s.wants_rekey_on_receive(now)) {
            self.begin_handshake(now);
        }
        if len == 0 {
            return Ok(Decapsulated::Keepalive);
        }
        let packet_len = wire::inner_packet_len(&out[..len]).ok_or(Error::InvalidInnerPacket)?;
        if out[0] >> 4 == wire::PATH_CONTROL_VERSION {
            return Ok(Decapsulated::PathControl(packet_len));
        }
        self.stats.rx_packets += 1;
        self.keepalive_due.get_or_insert(now + KEEPALIVE_TIMEOUT);
        Ok(Decapsulated::Packet(packet_len))
    }

    // ---- handshake -------------------------------------------------------------------------

    fn receive_response(&mut self, response: &wire::Response<'_>, now: Instant) -> Result<Decapsulated, Error> {
        let pending = self
            .handshake
            .as_mut()
            .filter(|p| p.noise.as_ref().is_some_and(|n| n.local_index() == response.receiver))
            .ok_or(Error::UnknownReceiverIndex)?;
        let Some(noise) = pending.noise.take() else { return Err(Error::UnknownReceiverIndex) };
        let index = noise.local_index();
        let keys = match noise.finish(response) {
            Ok(keys) => keys,
            Err(_) => {
                // snow's state is spent; the retransmit timer sends a fresh initiation.
                self.retire(index);
                return Err(Error::HandshakeFailed);
            }
        };
        self.handshake = None;
        // Initiator: the new session is confirmed by the response itself.
        let session = Session::new(keys, now);
        let stale_previous = self.previous.take();
        let stale_current = if let Some(next) = self.next.take() {
            self.previous = Some(next);
            self.current.take()
        } else {
            self.previous = self.current.take();
            None
        };
        self.current = Some(session);
        self.retire_sessions([stale_previous, stale_current]);
        self.handshake_completed(now);
        self.packet_received(now);
        // Confirm the keys to the responder at once if no data is waiting to do it.
        if self.queue.is_empty() {
            self.keepalive_wanted = true;
        }
        Ok(Decapsulated::HandshakeComplete)
    }

    fn receive_cookie_reply(&mut self, reply: &wire::CookieReply<'_>, now: Instant) -> Result<Decapsulated, Error> {
        let answers_ours = self
            .handshake
            .as_ref()
            .and_then(|p| p.noise.as_ref())
            .is_some_and(|n| n.local_index() == reply.receiver)
            || self.next.as_ref().is_some_and(|s| s.local_index == reply.receiver);
        if !answers_ours {
            return Err(Error::UnknownReceiverIndex);
        }
        self.macs.consume_reply(reply.nonce, reply.encrypted_cookie, now)?;
        // Retry at once with the cookie (+1 RTT under load), once per handshake and never
        // faster than the initiation interval; the retry does not use up an attempt.
        if let Some(pending) = self.handshake.as_mut()
            && !pending.cookie_retry_used
        {
            pending.cookie_retry_used = true;
            pending.attempts = pending.attempts.saturating_sub(1);
            pending.next_send =
                self.last_initiation_sent.map_or(now, |at| at + INITIATION_MIN_INTERVAL).max(now);
            if pending.next_send <= now {
                self.send_initiation(now);
            }
        }
        Ok(Decapsulated::CookieAccepted)
    }

    /// Starts a handshake unless one is running; never sends initiations closer together
    /// than REKEY_TIMEOUT unless a cookie asks for a retry.
    fn begin_handshake(&mut self, now: Instant) {
        if self.handshake.is_some() {
            return;
        }
        let next_send = match self.last_initiation_sent {
            Some(at) if now < at + REKEY_TIMEOUT => at + REKEY_TIMEOUT,
            _ => now,
        };
        self.handshake =
            Some(PendingHandshake { noise: None, next_send, attempts: 0, cookie_retry_used: false });
        if next_send <= now {
            self.send_initiation(now);
        }
    }

    fn send_initiation(&mut self, now: Instant) {
        let Some(mut pending) = self.handshake.take() else { return };
        if let Some(old) = pending.noise.take() {
            self.retire(old.local_index());
        }
        let index = self.take_index();
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let timestamp = self.config.clock.timestamp(now);
        let mut message = [0u8; INITIATION_LEN];
        let jitter = Duration::from_millis(u64::from(self.rng.next_u32()) % REKEY_TIMEOUT_JITTER_MAX.as_millis() as u64);
        pending.attempts += 1;
        pending.next_send = now + REKEY_TIMEOUT + jitter;
        match InitiatorHandshake::start(
            &self.config.local_static,
            &self.config.peer_static,
            &self.config.psk,
            index,
            timestamp,
            seed,
            &mut message,
        ) {
            Ok(noise) => {
                pending.noise = Some(noise);
                self.macs.stamp(&mut message, now);
                self.push_control(message.to_vec());
                self.last_initiation_sent = Some(now);
                self.packet_sent(now);
            }
            // Only a malformed key can fail here; the retry timer tries again.
            Err(_) => self.retire(index),
        }
        self.handshake = Some(pending);
    }

    fn give_up_handshake(&mut self, now: Instant) {
        if let Some(pending) = self.handshake.take()
            && let Some(noise) = pending.noise
        {
            self.retire(noise.local_index());
        }
        self.stats.handshakes_given_up += 1;
        self.stats.queued_dropped += self.queue.len() as u64;
        self.queue.clear();
        self.keepalive_wanted = false;
        self.keepalive_due = None;
        self.zero_keys_due.get_or_insert(now + ZERO_KEYS_AFTER);
    }

    /// The initiator used our `next` session: it becomes current (key confirmation).
    fn confirm_next(&mut self, now: Instant) {
        let stale_previous = self.previous.take();
        self.previous = self.current.take();
        self.current = self.next.take();
        self.retire_sessions([stale_previous]);
        self.handshake_completed(now);
    }

    fn handshake_completed(&mut self, now: Instant) {
        self.stats.handshakes_completed += 1;
        self.zero_keys_due = Some(now + ZERO_KEYS_AFTER);
    }

    // ---- timers ----------------------------------------------------------------------------

    /// Changes the persistent keepalive of a running tunnel: from the next packet sent or
    /// received (off at once).
    pub fn set_persistent_keepalive(&mut self, every: Option<Duration>) {
        self.config.persistent_keepalive = every;
        if every.is_none() {
            self.persistent_keepalive_due = None;
        }
    }

    fn packet_sent(&mut self, now: Instant) {
        self.keepalive_due = None;
        self.persistent_keepalive_due = self.config.persistent_keepalive.map(|every| now + every);
    }

    fn packet_received(&mut self, now: Instant) {
        self.new_handshake_due = None;
        self.persistent_keepalive_due = self.config.persistent_keepalive.map(|every| now + every);
    }

    // ---- bookkeeping -----------------------------------------------------------------------

    fn find_slot(&self, index: ReceiverIndex) -> Option<Slot> {
        [Slot::Current, Slot::Previous, Slot::Next]
            .into_iter()
            .find(|&slot| self.slot(slot).is_some_and(|s| s.local_index == index))
    }

    fn slot(&self, slot: Slot) -> Option<&Session> {
        match slot {
            Slot::Current => self.current.as_ref(),
            Slot::Previous => self.previous.as_ref(),
            Slot::Next => self.next.as_ref(),
        }
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut Option<Session> {
        match slot {
            Slot::Current => &mut self.current,
            Slot::Previous => &mut self.previous,
            Slot::Next => &mut self.next,
        }
    }

    fn take_index(&mut self) -> ReceiverIndex {
        match self.spare_index.take() {
            Some(index) => index,
            None => {
                let index = ReceiverIndex(self.rng.next_u32());
                self.index_changes.push(IndexChange::Added(index));
                index
            }
        }
    }

    fn retire(&mut self, index: ReceiverIndex) {
        self.index_changes.push(IndexChange::Retired(index));
    }

    fn retire_sessions<const N: usize>(&mut self, sessions: [Option<Session>; N]) {
        for session in sessions.into_iter().flatten() {
            self.retire(session.local_index);
        }
    }

    fn enqueue(&mut self, packet: &[u8]) {
        if self.queue.len() >= MAX_QUEUED_PACKETS
            && let Some(oldest) = self.queue.pop_front()
        {
            self.stats.queued_dropped += 1;
            self.recycle(oldest);
        }
        let mut buffer = self.spare_buffers.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(packet);
        self.queue.push_back(buffer);
    }

    fn recycle(&mut self, buffer: Vec<u8>) {
        if self.spare_buffers.len() < MAX_QUEUED_PACKETS {
            self.spare_buffers.push(buffer);
        }
    }

    fn push_control(&mut self, message: Vec<u8>) {
        if self.control.len() >= MAX_QUEUED_CONTROL {
            self.control.pop_front();
        }
        self.control.push_back(message);
    }

    #[cfg(test)]
    pub(crate) fn current_session_mut(&mut self) -> Option<&mut Session> {
        self.current.as_mut()
    }

    #[cfg(test)]
    pub(crate) fn has_next_session(&self) -> bool {
        self.next.is_some()
    }
}

impl core::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tunnel")
            .field("current", &self.current)
            .field("previous", &self.previous)
            .field("next", &self.next)
            .field("handshake", &self.handshake)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn is_due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|at| now >= at)
}
