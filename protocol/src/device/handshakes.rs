//! Handshake messages on [`Device`]: the DoS gate every one passes (mac1 always; under load
//! mac2, else a cookie reply, and the per-source rate limit) and answering an initiation from
//! a configured, authorized peer.

use super::{Device, Received, Via, MAX_QUEUED_COOKIE_REPLIES};
use crate::handshake::ReceivedInitiation;
use crate::wire::{self, COOKIE_REPLY_LEN};
use crate::{Error, ReceiverIndex};
use rand_core::Rng;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

impl Device {
    pub(super) fn receive_initiation(
        &mut self,
        source: SocketAddr,
        via: Via,
        initiation: &wire::Initiation<'_>,
        now: Instant,
    ) -> Result<Received, Error> {
        if !self.handshake_message_admitted(source, initiation.bytes, initiation.sender, now)? {
            return Ok(Received::Nothing);
        }
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let received = ReceivedInitiation::read(&self.static_secret, &self.psk, initiation, seed)
            .inspect_err(|_| self.stats.rx_handshake_failed += 1)
            .map_err(|_| Error::HandshakeFailed)?;
        let key = received.initiator;
        let Some(peer) = self.peers.get_mut(&key) else {
            self.stats.rx_unknown_peer += 1;
            return Err(Error::UnknownPeer);
        };
        if !(self.authorize)(&key) {
            self.stats.rx_unauthorized += 1;
            return Err(Error::NotAuthorized);
        }
        let result = peer.tunnel.handle_initiation(received, now);
        if result.is_ok() {
            match via {
                Via::Direct => peer.paths.heard_direct(source, now),
                Via::Relay => peer.paths.heard_relay(now),
            }
        }
        self.sync_peer(&key, now);
        result.map(|()| Received::Nothing)
    }

    /// The DoS gate for handshake messages: mac1 always; under load, mac2 (else a cookie
    /// reply) and the per-source rate limit. `Ok(false)`: answered with a cookie, stop here.
    pub(super) fn handshake_message_admitted(
        &mut self,
        source: SocketAddr,
        bytes: &[u8],
        sender: ReceiverIndex,
        now: Instant,
    ) -> Result<bool, Error> {
        if !self.macs.mac1_is_valid(bytes) {
            self.stats.rx_invalid_mac1 += 1;
            return Err(Error::InvalidMac1);
        }
        if self.load.record(now) <= self.under_load_threshold {
            return Ok(true);
        }
        if !self.macs.mac2_is_valid(bytes, source, now) {
            if self.cookie_replies.len() < MAX_QUEUED_COOKIE_REPLIES {
                let (nonce, sealed) = self.macs.make_cookie_reply(bytes, source, now, &mut self.rng);
                let mut reply = [0u8; COOKIE_REPLY_LEN];
                wire::emit_cookie_reply(&mut reply, sender, &nonce, &sealed);
                self.cookie_replies.push_back((source, reply));
                self.stats.cookie_replies_sent += 1;
            }
            return Ok(false);
        }
        if !self.limiter.allow(source.ip(), now) {
            self.stats.rx_rate_limited += 1;
            return Err(Error::RateLimited);
        }
        Ok(true)
    }
}

/// Handshake messages counted per one-second window; "under load" lasts into the next window.
#[derive(Debug, Default)]
pub(super) struct LoadMeter {
    window_start: Option<Instant>,
    count: u32,
    previous: u32,
}

impl LoadMeter {
    /// Counts one handshake message; returns the busier of this window and the last.
    pub(super) fn record(&mut self, now: Instant) -> u32 {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {}
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(2) => {
                self.previous = self.count;
                self.count = 0;
                self.window_start = Some(now);
            }
            _ => {
                self.previous = 0;
                self.count = 0;
                self.window_start = Some(now);
            }
        }
        self.count = self.count.saturating_add(1);
        self.count.max(self.previous)
    }
}
