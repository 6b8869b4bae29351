//! Where the core wants to reach a peer: a dial for the swarm, and what the node knows of
//! each member's reachability.

use libp2p::{Multiaddr, PeerId};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A dial the swarm should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// Who must answer (libp2p authenticates it); `None` for a bare bootstrap address.
    pub peer: Option<PeerId>,
    pub addresses: Vec<Multiaddr>,
    pub when: DialWhen,
}

/// When a dial to a known peer goes ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialWhen {
    /// Not connected and no dial under way (redials).
    Idle,
    /// Not connected, even while another dial is under way (fresh news of where it is must
    /// not wait behind a dial to an old address).
    Disconnected,
    /// Always (a log delivery to a device whose old connection may be stale).
    Always,
}

/// What the node knows of one member's reachability.
#[derive(Debug, Default, Clone)]
pub struct Reach {
    pub peer_id: Option<PeerId>,
    pub multiaddrs: BTreeSet<Multiaddr>,
    /// Its data-plane address as the control connection showed it.
    pub data_endpoint: Option<SocketAddr>,
    pub connected: bool,
    /// Whether a connection to it ever verified: a member never met yet (one just added, as
    /// a CloudPal that is about to come up) is redialled sooner.
    pub met: bool,
    pub rtt: Option<Duration>,
    pub last_dial: Option<Instant>,
    /// Redials since it was last connected: after the first few, each waits twice as long as
    /// the one before, up to [`discovery::MAX_REDIAL_INTERVAL`].
    pub redials: u32,
    /// How much shorter than its doubled wait the next redial comes, in thousandths of half
    /// of it (drawn at each redial).
    pub jitter: u16,
}

