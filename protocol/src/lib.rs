//! CloudPal's data plane, sans-IO.
//!
//! Contract: this crate never touches a socket, a TUN device, a runtime or a clock. Time comes
//! in as `now: Instant` (plus a [`WallClock`] anchor for handshake timestamps) and randomness as
//! seeds, so a test or a simulation replays bit for bit. Every function that reads bytes from
//! the network returns a typed error for any input and never panics.
//!
//! Layers, bottom up: [`wire`] (datagram formats), [`handshake`] (Noise IK through snow),
//! [`session`] (transport keys, counters, [`replay`] window), [`tunnel`] (one peer: timers,
//! rekeying, queues), [`device`] (all peers: dispatch, cookies, cryptokey routing).

pub mod birthday;
pub mod cookie;
pub mod device;
pub mod fallback;
#[cfg(any(test, feature = "testing"))]
pub mod fuzzing;
pub mod handshake;
pub mod keys;
pub mod paths;
pub mod ratelimit;
pub mod relay;
pub mod replay;
pub mod session;
pub mod share;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod timers;
pub mod tunnel;
pub mod wire;

#[cfg(test)]
mod tunnel_tests;

pub use device::{Device, DeviceConfig, DeviceStats, GuestRules, PeerConfig, Received, Transmit};
pub use keys::{DeviceId, DevicePublicKey, DeviceSigningKey, PresharedKey, Signature, StaticPublic, StaticSecret};
pub use time::WallClock;
pub use tunnel::{Decapsulated, Encapsulated, Tunnel, TunnelConfig, TunnelStats};

use std::net::IpAddr;

/// The index by which a receiver finds the session a datagram belongs to; random per session
/// so that indices do not link sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReceiverIndex(pub u32);

/// Why a datagram or packet was refused. Callers count and drop; none is fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("invalid mac1")]
    InvalidMac1,
    #[error("handshake rate limit exceeded for this source")]
    RateLimited,
    #[error("handshake message did not decrypt")]
    HandshakeFailed,
    #[error("initiator is not a known peer")]
    UnknownPeer,
    #[error("initiator is not authorized")]
    NotAuthorized,
    #[error("initiation timestamp is not newer than the last accepted one")]
    ReplayedInitiation,
    #[error("initiation less than 20 ms after the previous one")]
    InitiationTooSoon,
    #[error("no session or handshake has this receiver index")]
    UnknownReceiverIndex,
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
    #[error("counter at or past REJECT_AFTER_MESSAGES")]
    CounterExhausted,
    #[error("session older than REJECT_AFTER_TIME")]
    SessionExpired,
    #[error("authentication tag did not verify")]
    DecryptionFailed,
    #[error("payload is not an IPv4 or IPv6 packet")]
    InvalidInnerPacket,
    #[error("inner source address is not allowed for this peer")]
    SourceNotAllowed,
    #[error("a guest may not send or receive this packet")]
    GuestRefused,
    #[error("no peer routes this destination")]
    NoRoute,
    #[error("peer has no known endpoint")]
    NoEndpoint,
    #[error("packet too large")]
    PacketTooLarge,
    #[error("output buffer too small")]
    BufferTooSmall,
    #[error("message kind not accepted here")]
    UnexpectedMessage,
    #[error(transparent)]
    Relay(#[from] relay::EnvelopeError),
    #[error("no relay for this envelope")]
    NoRelay,
    #[error("sender is over its relay quota")]
    RelayQuota,
    #[error(transparent)]
    InvalidCookieReply(#[from] cookie::InvalidCookieReply),
}

/// An IP prefix (`100.64.0.0/10`, `fd7a::/48`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// `None` if `len` exceeds the address family's width.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Self { addr, len })
    }

    /// A prefix holding exactly one address.
    pub fn host(addr: IpAddr) -> Self {
        Self { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl core::str::FromStr for IpPrefix {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').ok_or("expected ADDRESS/LENGTH")?;
        let addr: IpAddr = addr.parse().map_err(|_| "invalid address")?;
        let len: u8 = len.parse().map_err(|_| "invalid prefix length")?;
        Self::new(addr, len).ok_or("prefix length too long")
    }
}

impl core::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_their_addresses_only() {
        let net: IpPrefix = "100.64.0.0/10".parse().expect("prefix");
        assert!(net.contains("100.127.255.255".parse().expect("ip")));
        assert!(!net.contains("100.128.0.0".parse().expect("ip")));
        let all: IpPrefix = "0.0.0.0/0".parse().expect("prefix");
        assert!(all.contains("192.0.2.1".parse().expect("ip")));
        assert!(!all.contains("::1".parse().expect("ip")));
        let v6: IpPrefix = "fd7a:115c::/32".parse().expect("prefix");
        assert!(v6.contains("fd7a:115c:1::2".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<IpPrefix>().is_err());
    }
}
