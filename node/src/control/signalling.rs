//! Signalling: data-plane path candidates and the relay. Members tell each other where their
//! data planes can be reached (interface addresses at the data port, and the reflexive address
//! a peer saw), relay what they know of the others, and pick the member doing relay duty
//! (CloudPal) as the path of last resort, with a circuit reservation there for control traffic.

use super::messages::{self, NatInfo, PeerAddresses, Request, Response};
use super::admission;
use minicbor::bytes::{ByteArray, ByteVec};
use protocol::birthday::{NatKind, PeerNat};
use super::{Action, Core};
use crate::control_api::ControlLink;
use crate::dataplane::commands::DataCommand;
use crate::control::addr::{circuit_address, multiaddr_ip};
use libp2p::PeerId;
use protocol::DeviceId;
use protocol::paths::PathKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How often members exchange path candidates.
pub const PATHS_INTERVAL: Duration = Duration::from_secs(2);

impl Core {
    /// Our data-plane candidates: the addresses of our interfaces (from libp2p's listen
    /// addresses) at the data port, and how peers saw us (reflexive).
    pub fn own_candidates(&self) -> Vec<String> {
        let mut candidates: Vec<SocketAddr> = self
            .listen_addrs
            .iter()
            .filter_map(multiaddr_ip)
            .filter(|ip| super::addr::is_underlay_ip(*ip) && !self.is_overlay(*ip))
            .map(|ip| SocketAddr::new(ip, self.data_port))
            .chain(self.view.observed.iter().copied())
            .collect();
        candidates.sort();
        candidates.dedup();
        candidates.truncate(protocol::paths::MAX_CANDIDATES);
        candidates.iter().map(ToString::to_string).collect()
    }

    /// Whether `ip` is a member's overlay address (libp2p lists the TUN interface among its
    /// listen addresses; as a data-plane candidate it would route the tunnel through itself).
    fn is_overlay(&self, ip: IpAddr) -> bool {
        self.book.state().devices.values().any(|d| ip == IpAddr::V4(d.record.overlay_ipv4) || ip == IpAddr::V6(d.record.overlay_ipv6))
    }

    /// Every few seconds, our candidates to every connected member; the answers say what they
    /// know of the others.
    /// While the network settles, to every connected member. In the idle round (it only
    /// catches what a lost push missed) one side of each connection asks — the one with the
    /// lower peer id — and the exchange carries both sides' log summaries too: one request
    /// and its answer per connection and round, instead of four.
    pub(super) fn exchange_paths(&mut self, idle: bool) {
        let candidates = self.own_candidates();
        let listen = self.own_listen_addresses();
        let summary: Option<ByteVec> = idle.then(|| self.heads_summary().into());
        let own = self.peer_id;
        let mut peers: Vec<PeerId> = self.by_peer.keys().copied().filter(|peer| self.is_connected(peer) && (!idle || own < *peer)).collect();
        peers.sort();
        for peer in peers {
            let known = self.by_peer.get(&peer).and_then(|device| self.paths_heard.get(device)).copied();
            let request = Request::Paths { candidates: candidates.clone(), listen: listen.clone(), nat: self.own_nat(), summary: summary.clone(), known };
            self.push(Action::Send { peer, request });
        }
    }

    /// A member's path exchange: we learn its candidates, NAT and control addresses, and
    /// answer with what we know of the members it keeps — nothing, when that is what its
    /// digest says it heard last — and, in the idle round, our heads for its.
    pub(super) fn serve_paths(&mut self, peer: PeerId, candidates: &[String], listen: &[String], nat: Option<&NatInfo>, summary: Option<ByteVec>, known: Option<ByteArray<16>>) -> Response {
        let Some(device) = self.by_peer.get(&peer).copied() else {
            return messages::refused(admission::NOT_A_MEMBER);
        };
        self.learn_candidates(device, candidates, false);
        self.learn_nat(device, nat);
        self.admit_to_dht(peer, device, listen, false);
        let summary = summary.map(|theirs| {
            self.compare_summary(peer, &theirs);
            self.heads_summary().into()
        });
        let mut peers = self.known_peers(&device);
        if known.is_some_and(|known| known == messages::paths_digest(&peers)) {
            peers.clear();
        }
        Response::Paths { peers, summary }
    }

    /// A member's answer to our path exchange.
    pub(super) fn paths_answered(&mut self, peer: PeerId, peers: Vec<PeerAddresses>, summary: Option<ByteVec>) {
        let Some(device) = self.by_peer.get(&peer).copied() else { return };
        // An empty answer is "as before" (or nothing to tell): the digest stays.
        if !peers.is_empty() {
            self.paths_heard.insert(device, messages::paths_digest(&peers));
        }
        for entry in peers {
            self.learn_addresses(entry);
        }
        if let Some(summary) = summary {
            self.compare_summary(peer, &summary);
        }
    }

    /// What our NAT does, for members to punch with (once the data plane checked it).
    pub(super) fn own_nat(&self) -> Option<NatInfo> {
        let (kind, reflexive) = self.view.nat?;
        Some(NatInfo { symmetric: kind == NatKind::EndpointDependent, reflexive: reflexive.to_string() })
    }

    /// What a member said of its NAT; the data plane punches with it.
    pub(super) fn learn_nat(&mut self, device: DeviceId, nat: Option<&NatInfo>) {
        let Some(record) = self.book.state().devices.get(&device) else { return };
        let key = record.record.static_key;
        let nat = nat.and_then(|info| {
            let reflexive = info.reflexive.parse().ok()?;
            let kind = if info.symmetric { NatKind::EndpointDependent } else { NatKind::EndpointIndependent };
            Some(PeerNat { kind, reflexive })
        });
        tracing::debug!(symmetric = nat.map(|n| n.kind == NatKind::EndpointDependent), "a member's NAT");
        self.command(DataCommand::SetPeerNat(key, nat));
    }

    /// What a member said of itself in a Hello or a path exchange.
    pub(super) fn learn_candidates(&mut self, device: DeviceId, candidates: &[String], relay: bool) {
        let parsed: Vec<SocketAddr> =
            candidates.iter().filter_map(|c| c.parse().ok()).take(protocol::paths::MAX_CANDIDATES).collect();
        self.announced.insert(device, parsed);
        self.apply_candidates(device);
        // Relay duty is CloudPal's: a member that merely claims it is not believed.
        let cloudpal = self.book.state().devices.get(&device).is_some_and(|d| d.record.role == membership::Role::CloudPal);
        if relay && cloudpal && self.relay.is_none_or(|(current, _)| current == device) {
            self.use_relay(device);
        }
    }

    /// Tells the data plane every candidate we know for `device`.
    pub(super) fn apply_candidates(&mut self, device: DeviceId) {
        let Some(record) = self.book.state().devices.get(&device) else { return };
        let key = record.record.static_key;
        let mut all: Vec<SocketAddr> = self.reported.get(&device).into_iter().flatten().copied().collect();
        all.extend(self.announced.get(&device).into_iter().flatten().copied());
        all.sort();
        all.dedup();
        self.command(DataCommand::SetCandidates(key, all));
        // The member is online: have a session ready. After this node restarts, the peer's
        // old session is dead on our side, and it would otherwise take WireGuard's 15 s
        // no-reply rule on its side to notice. A no-op while a session or handshake exists.
        self.command(DataCommand::Connect(key));
    }

    /// Sends through `device` (a member doing relay duty) whenever no direct path works, and
    /// keeps a session with it so that it always knows where we are.
    fn use_relay(&mut self, device: DeviceId) {
        let Some(endpoint) = self.reach.get(&device).and_then(|r| r.data_endpoint) else { return };
        let Some(key) = self.book.state().devices.get(&device).map(|d| d.record.static_key) else { return };
        if self.relay == Some((device, endpoint)) {
            return;
        }
        self.relay = Some((device, endpoint));
        self.command(DataCommand::SetRelay(Some((endpoint, key))));
        self.update_relay_keepalive();
        self.apply_membership();
        self.command(DataCommand::Connect(key));
        tracing::info!("relay available");
    }

    /// `pal netcheck`: what the data plane's `view` and the control plane know of our network.
    pub fn netcheck(&self, view: &crate::dataplane::DataView) -> crate::control_api::NetcheckReply {
        let state = self.book.state();
        let cloudpal = self.relay.and_then(|(device, _)| state.devices.get(&device));
        let udp = cloudpal.and_then(|d| view.peers.get(&d.record.static_key)).is_some_and(|v| v.path == PathKind::Direct);
        let rtt = self.relay.and_then(|(device, _)| self.reach.get(&device)).and_then(|r| r.rtt);
        let ipv6 = self.listen_addrs.iter().filter_map(multiaddr_ip).any(|ip| ip.is_ipv6() && super::addr::is_underlay_ip(ip) && !self.is_overlay(ip));
        crate::control_api::NetcheckReply {
            cloudpal: cloudpal.map(|d| d.record.name.clone()),
            udp,
            behind_nat: self.behind_nat(),
            nat_mapping: view.nat.map(|(kind, _)| kind.as_str().to_owned()),
            public_address: view.nat.map(|(_, address)| address.to_string()),
            reflexive: view.observed.iter().map(ToString::to_string).collect(),
            ipv6,
            cloudpal_rtt_ms: rtt.map(|r| r.as_secs_f64() * 1000.0),
            // Probed by the shell, which owns sockets.
            tcp_443: None,
            tcp_443_ms: None,
        }
    }

    /// Whether something between us and the others translates our address: a peer saw us at
    /// an address that is none of ours (or nobody told us yet, which is taken as yes).
    pub fn behind_nat(&self) -> bool {
        let own = |seen: &SocketAddr| seen.port() == self.data_port && self.listen_addrs.iter().filter_map(multiaddr_ip).any(|ip| ip == seen.ip());
        self.view.observed.is_empty() || self.view.observed.iter().any(|seen| !own(seen))
    }

    /// Hop keepalives toward the relay where a NAT mapping needs holding open, every
    /// [`super::members::RELAY_KEEPALIVE`] of silence; none on an open network.
    pub(super) fn update_relay_keepalive(&mut self) {
        let wanted = (self.relay.is_some() && !self.cloudpal && self.behind_nat()).then_some(super::members::RELAY_KEEPALIVE);
        if wanted != self.relay_keepalive {
            self.relay_keepalive = wanted;
            self.command(DataCommand::SetRelayKeepalive(wanted));
        }
    }

    /// Reserves a circuit at CloudPal (`relay`, listening for control traffic at `port`), so
    /// that members which cannot reach us directly reach us through it, and DCUtR can then try
    /// a direct connection. Once; CloudPal itself does not.
    pub(super) fn listen_via_relay(&mut self, relay: PeerId, port: u16) {
        if self.cloudpal || self.relay_listen {
            return;
        }
        let Some(ip) = self.connection_ips.get(&relay).copied() else { return };
        self.relay_listen = true;
        self.push(Action::ListenOnCircuit(circuit_address(SocketAddr::new(ip, port), relay)));
    }

    /// What we tell `asker` of where the others are (a guest hears only of what it may reach).
    pub(super) fn known_peers(&self, asker: &DeviceId) -> Vec<PeerAddresses> {
        let state = self.book.state();
        // Past a full mesh, only the members the asker keeps connections to: a thousand
        // members' addresses in every answer would be most of an idle network's traffic.
        // A CloudPal, which keeps everyone, hears of those we keep.
        let theirs = self.mesh.as_ref().and_then(|mesh| mesh.wanted(asker)).or_else(|| self.wanted.clone());
        let asker_role = state.devices.get(asker).map(|d| d.record.role);
        self.reach_of(theirs.as_ref())
            .filter(|(device, _)| *device != asker)
            .filter_map(|(device, reach)| {
                let record = &state.devices.get(device)?.record;
                let peer_id = reach.peer_id?;
                if !super::guests::may_know(state, (asker, asker_role), (device, Some(record.role))) {
                    return None;
                }
                let key = record.static_key;
                // What it announced, and where our data plane last heard it from: behind a
                // NAT, that is its reflexive address.
                let heard = self.view.peers.get(&key).filter(|v| v.path == PathKind::Direct).and_then(|v| v.endpoint);
                let mut candidates: Vec<String> = heard.iter().map(ToString::to_string).collect();
                candidates.extend(self.announced.get(device).into_iter().flatten().map(ToString::to_string));
                Some(PeerAddresses {
                    peer_id: peer_id.to_bytes().into(),
                    multiaddrs: reach.multiaddrs.iter().map(ToString::to_string).collect(),
                    device: Some((*device.as_bytes()).into()),
                    candidates,
                })
            })
            .collect()
    }

    /// How the control plane reaches `peer`.
    pub fn control_link(&self, peer: Option<PeerId>) -> ControlLink {
        let mut links = self.control_links.values().filter(|link| Some(link.peer) == peer).map(|link| link.relayed).peekable();
        if links.peek().is_none() {
            return ControlLink::None;
        }
        if links.any(|relayed| !relayed) { ControlLink::Direct } else { ControlLink::Relayed }
    }
}
