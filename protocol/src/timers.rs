//! WireGuard's protocol constants (paper §6), by their spec names.

use std::time::Duration;

/// Initiator starts a new handshake after sending this many messages on one session.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No message is sent or accepted with a counter at or above this (2^64 − 2^13 − 1).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// Initiator starts a new handshake when sending on a session this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A session this old is never used to send or receive.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Give up a handshake (and drop queued packets) after trying this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Retransmit an unanswered initiation after this, plus jitter.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Up to this much random jitter is added to every retransmission.
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Send a keepalive when we received data but sent nothing for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Initiator of the current session rekeys on receive when it is this old (165 s), so the
/// responder's keys never expire under a one-way flow.
pub const REKEY_AFTER_TIME_RECEIVING: Duration =
    REJECT_AFTER_TIME.saturating_sub(KEEPALIVE_TIMEOUT).saturating_sub(REKEY_TIMEOUT);
/// Start a new handshake when we sent data and heard nothing back for this long (15 s).
pub const NEW_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Erase all key material this long after the last handshake (540 s).
pub const ZERO_KEYS_AFTER: Duration = Duration::from_secs(540);
/// At most one initiation per peer per this interval, in both directions.
pub const INITIATION_MIN_INTERVAL: Duration = Duration::from_millis(20);
/// Initiations sent for one handshake before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT.
pub const MAX_HANDSHAKE_ATTEMPTS: u32 = 18;
