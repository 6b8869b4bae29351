//! One transport session: the keys from one handshake, the send counter and the replay window.

use crate::handshake::EstablishedKeys;
use crate::replay::ReplayWindow;
use crate::timers::{REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_TIME, REKEY_AFTER_TIME_RECEIVING};
use crate::wire::{self, DATA_HEADER_LEN};
use crate::{Error, ReceiverIndex};
use snow::StatelessTransportState;
use std::time::Instant;

pub struct Session {
    transport: StatelessTransportState,
    pub local_index: ReceiverIndex,
    pub remote_index: ReceiverIndex,
    /// The next counter to send.
    sending_counter: u64,
    replay: ReplayWindow,
    pub established: Instant,
    /// Deadlines precomputed once, so the per-packet checks are comparisons, not subtractions.
    pub reject_at: Instant,
    rekey_at: Instant,
    rekey_on_receive_at: Instant,
    /// Whether we initiated the handshake that made this session (initiators rekey on time).
    pub initiator: bool,
}

impl Session {
    pub fn new(keys: EstablishedKeys, now: Instant) -> Self {
        Self {
            transport: keys.transport,
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            sending_counter: 0,
            replay: ReplayWindow::default(),
            established: now,
            reject_at: now + REJECT_AFTER_TIME,
            rekey_at: now + REKEY_AFTER_TIME,
            rekey_on_receive_at: now + REKEY_AFTER_TIME_RECEIVING,
            initiator: keys.initiator,
        }
    }

    /// Whether this session may still send or receive at `now`.
    pub fn is_alive(&self, now: Instant) -> bool {
        now < self.reject_at && self.sending_counter < REJECT_AFTER_MESSAGES
    }

    /// Whether this session is too old to accept packets.
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.reject_at
    }

    /// Whether sending on this session should start a new handshake (initiator after
    /// REKEY_AFTER_TIME; anyone after REKEY_AFTER_MESSAGES).
    pub fn wants_rekey_on_send(&self, now: Instant) -> bool {
        self.sending_counter >= crate::timers::REKEY_AFTER_MESSAGES || (self.initiator && now >= self.rekey_at)
    }

    /// Whether receiving on this session should start a new handshake (initiator after 165 s).
    pub fn wants_rekey_on_receive(&self, now: Instant) -> bool {
        self.initiator && now >= self.rekey_on_receive_at
    }

    pub fn sending_counter(&self) -> u64 {
        self.sending_counter
    }

    /// Encrypts an already padded plaintext into a complete data message in `out`; returns its
    /// length.
    pub fn seal(&mut self, padded: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        let counter = self.sending_counter;
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(Error::CounterExhausted);
        }
        let body = wire::emit_data_header(out, self.remote_index, counter)?;
        let written = self
            .transport
            .write_message(counter, padded, body)
            .map_err(|_| Error::BufferTooSmall)?;
        self.sending_counter = counter + 1;
        Ok(DATA_HEADER_LEN + written)
    }

    /// Decrypts a data message's ciphertext into `out`; the replay window moves only once the
    /// tag verified. Returns the plaintext length (still padded).
    pub fn open(&mut self, counter: u64, ciphertext: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(Error::CounterExhausted);
        }
        self.replay.check(counter)?;
        if out.len() < ciphertext.len() {
            return Err(Error::BufferTooSmall);
        }
        let len = self
            .transport
            .read_message(counter, ciphertext, out)
            .map_err(|_| Error::DecryptionFailed)?;
        self.replay.accept(counter)?;
        Ok(len)
    }

    #[cfg(test)]
    pub(crate) fn set_sending_counter(&mut self, counter: u64) {
        self.sending_counter = counter;
    }
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("sending_counter", &self.sending_counter)
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}
