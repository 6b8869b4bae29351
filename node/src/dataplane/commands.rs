//! What the control side tells the packet thread, and what the packet thread tells back:
//! plain typed values, no channels and no JSON, so that the control core can emit them and
//! tests can read them.

use crate::control_api::PingReport;
use protocol::paths::PathKind;
use protocol::{PeerConfig, StaticPublic, TunnelStats};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

/// Names a query so that its answer finds its asker.
pub type Token = u64;
/// The token of the views the packet thread pushes by itself when its view changed; local
/// queries count up from 1.
pub const PUSHED_VIEW: Token = 0;

#[derive(Debug, Clone, PartialEq)]
pub enum DataCommand {
    UpsertPeer(PeerConfig),
    RemovePeer(StaticPublic),
    /// Every peer at once: the device has left the network.
    RemoveAll,
    /// The static keys whose handshakes are answered: the current members.
    SetMembers(BTreeSet<StaticPublic>),
    SetEndpoint(StaticPublic, SocketAddr),
    SetCandidates(StaticPublic, Vec<SocketAddr>),
    /// Send through this relay (CloudPal's data address and key) when no direct path works.
    SetRelay(Option<(SocketAddr, StaticPublic)>),
    /// The TCP fallback's stream to the relay is up at this local address, or down.
    SetRelayStream(Option<SocketAddr>),
    /// Hold the NAT mapping toward the relay open with a hop keepalive after this much
    /// silence toward it (`None` where no NAT needs it).
    SetRelayKeepalive(Option<std::time::Duration>),
    /// Relay duty: the relay's whole rate in bytes a second, shared fairly (`None`: no cap).
    SetRelayRate(Option<u64>),
    /// What a peer told us of its NAT (for birthday punching).
    SetPeerNat(StaticPublic, Option<protocol::birthday::PeerNat>),
    /// Start a handshake with this peer now (the relay: it must know where we are).
    Connect(StaticPublic),
    /// Answer with [`DataEvent::View`].
    QueryView(Token),
    /// `count` echo requests over the overlay; answered with [`DataEvent::PingDone`].
    Ping { token: Token, source: Ipv4Addr, target: Ipv4Addr, count: u16 },
}

#[derive(Debug, Clone)]
pub enum DataEvent {
    View { token: Token, view: DataView },
    PingDone { token: Token, report: PingReport },
    /// UDP to the relay fails (bring the TCP fallback's stream up) or works again (take it
    /// down): sent when it changes.
    RelayStream { wanted: bool },
}

/// What `status` shows of one peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerView {
    pub stats: TunnelStats,
    pub endpoint: Option<SocketAddr>,
    pub path: PathKind,
    /// Birthday punch attempts with the peer, in either role.
    pub punches: u64,
}

/// The data plane's view for the control plane: peers, and how peers see us.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataView {
    pub peers: BTreeMap<StaticPublic, PeerView>,
    /// Our source address as each peer saw it (reflexive candidates).
    pub observed: Vec<SocketAddr>,
    /// What our NAT does and our public address as the relay sees it, once checked.
    pub nat: Option<(protocol::birthday::NatKind, SocketAddr)>,
    /// Every counter of the device, in answers to queries only (the views the packet thread
    /// pushes leave it zero, so that counting does not make a view new).
    pub stats: protocol::DeviceStats,
}

