//! Members: the membership state projected onto the data plane (every active member a peer
//! with its overlay addresses as allowed IPs, every revoked one gone at once), and what the
//! node does when the log changes or says this device is revoked.

use super::{Action, Core, REVOKED};
use crate::dataplane::commands::DataCommand;
use libp2p::PeerId;
use membership::DeviceStatus;
use libp2p::Multiaddr;
use protocol::{DeviceId, IpPrefix, PeerConfig};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Keepalive towards the relay: holds the NAT mapping it forwards to open.
pub const RELAY_KEEPALIVE: Duration = Duration::from_secs(25);
/// How long a just-revoked device stays connected: enough to pull its own revocation.
pub const REVOKED_GRACE: Duration = Duration::from_secs(10);

impl Core {
    /// Makes the data plane match the membership state.
    pub(super) fn apply_membership(&mut self) {
        let state = self.book.state();
        self.mesh = if self.is_guest() { None } else { super::mesh::Mesh::of(state) };
        self.wanted = self.mesh.as_ref().filter(|_| !self.cloudpal).and_then(|mesh| mesh.wanted(&self.me));
        self.redial_due.set(None);
        // What the walk below needs of each device (not a clone of the whole state, names and
        // all, at every change of a thousand-device log).
        let devices: Vec<(DeviceId, protocol::StaticPublic, DeviceStatus, std::net::Ipv4Addr, std::net::Ipv6Addr)> =
            state.devices.iter().map(|(id, d)| (*id, d.record.static_key, d.status, d.record.overlay_ipv4, d.record.overlay_ipv6)).collect();
        let relay = state.policy.relay.rate;
        let mut active = BTreeSet::new();
        for (id, key, status, overlay_ipv4, overlay_ipv6) in devices {
            let id = &id;
            if status == DeviceStatus::Revoked {
                self.command(DataCommand::RemovePeer(key));
                self.peer_cache_stale |= self.reach_remove(id).is_some();
                continue;
            }
            if *id != self.me && !self.deals_with(id) {
                // A guest nothing here is shared with: no peer, no handshake (GUEST-01).
                self.command(DataCommand::RemovePeer(key));
                self.peer_cache_stale |= self.reach_remove(id).is_some();
                continue;
            }
            active.insert(key);
            if *id == self.me {
                continue;
            }
            let mut allowed_ips = vec![IpPrefix::host(IpAddr::V4(overlay_ipv4)), IpPrefix::host(IpAddr::V6(overlay_ipv6))];
            if self.exit_device() == Some(*id) {
                // The exit: the internet, both families, behind it (longest prefix wins, so
                // every member's own address still routes to that member).
                allowed_ips.extend(IpPrefix::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0));
                allowed_ips.extend(IpPrefix::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0));
            }
            self.command(DataCommand::UpsertPeer(PeerConfig {
                static_public: key,
                allowed_ips,
                endpoint: self.reach.get(id).and_then(|r| r.data_endpoint),
                // The relay's mapping is held by hop keepalives (signalling), not a session.
                persistent_keepalive: None,
                guest: self.guest_rules(id),
            }));
            self.reach_entry(*id);
        }
        // Whose handshakes the data plane answers: current members only.
        self.command(DataCommand::SetMembers(active));
        if self.cloudpal {
            let rate = relay_rate_bytes(relay);
            if self.relay_rate != Some(rate) {
                self.relay_rate = Some(rate);
                self.command(DataCommand::SetRelayRate(rate));
            }
        }
        self.apply_exit();
    }

    /// After the log changed: refresh the data plane and tell every connected member.
    pub(super) fn membership_changed(&mut self) {
        self.timers.news(self.last_now, "the log changed");
        self.apply_membership();
        if self.revoked() {
            if !self.said_revoked {
                self.said_revoked = true;
                tracing::warn!("{REVOKED}");
            }
            self.command(DataCommand::RemoveAll);
            // No network, no exit: the full tunnel comes out rather than strand the host.
            self.exit.choice = None;
            self.exit.dns_on = false;
            self.apply_exit();
            return;
        }
        // Push on append, to every connected device we knew as a member — including one just
        // revoked, which then pulls the log up to its revocation and stops by itself.
        self.announce();
        // A revoked device is cut off on the control plane too: out of the relay's gate and
        // the candidates at once, never redialled, and its connections closed (with its DHT
        // entries) once it has had a moment to pull the log up to its own revocation.
        let state = self.book.state();
        // So is a guest that nothing here is shared with any more.
        let gone = |device: &DeviceId| state.devices.get(device).is_none_or(|d| d.status != DeviceStatus::Active) || !self.deals_with(device);
        let revoked: Vec<PeerId> = self.by_peer.iter().filter(|(_, device)| gone(device)).map(|(peer, _)| *peer).collect();
        for peer in &revoked {
            self.by_peer.remove(peer);
        }
        for peer in revoked {
            self.candidates.remove(&peer);
            self.cut_off.insert(peer, self.last_now + REVOKED_GRACE);
        }
        self.share_members();
    }

    pub(super) fn next_cut_off(&self) -> Option<std::time::Instant> {
        self.cut_off.values().min().copied()
    }

    /// Closes the connections of revoked devices whose grace is over.
    pub(super) fn cut_off_revoked(&mut self, now: std::time::Instant) {
        let due: Vec<PeerId> = self.cut_off.iter().filter(|(_, at)| **at <= now).map(|(peer, _)| *peer).collect();
        for peer in due {
            self.cut_off.remove(&peer);
            self.push(Action::Disconnect(peer));
        }
    }

    /// Whether the log says this device has been revoked.
    pub fn revoked(&self) -> bool {
        self.book.state().devices.get(&self.me).is_some_and(|d| d.status == DeviceStatus::Revoked)
    }

    /// Publishes who the proven members are to the relay's gate.
    pub(super) fn share_members(&mut self) {
        let members = self.by_peer.keys().copied().collect();
        self.push(Action::MemberPeers(members));
    }

    /// A peer proved to be member `device`: where its data plane listens, and (now that it is
    /// known to be a member) its control-plane addresses go to Kademlia.
    pub(super) fn learn_peer(&mut self, peer: PeerId, device: DeviceId, data_port: u16, listen: &[String]) {
        self.by_peer.insert(peer, device);
        self.unproven.remove(&peer);
        // Proven: redialled through its reach from now on, not as a reported candidate.
        self.candidates.remove(&peer);
        self.share_members();
        self.admit_to_dht(peer, device, listen, true);
        let endpoint = self.connection_ips.get(&peer).map(|ip| SocketAddr::new(*ip, data_port));
        self.peer_cache_stale = true;
        let reach = self.reach_entry(device);
        reach.peer_id = Some(peer);
        reach.connected = true;
        reach.met = true;
        reach.redials = 0;
        if let Some(endpoint) = endpoint {
            reach.data_endpoint = Some(endpoint);
            if let Some(record) = self.book.state().devices.get(&device) {
                let key = record.record.static_key;
                self.command(DataCommand::SetEndpoint(key, endpoint));
            }
        }
        self.exit_peer_connected(device);
    }

    /// Feeds a verified member's listen addresses (from its Hello) to Kademlia and to its
    /// reach (members only: the routing table is how others find us, so outsiders stay out).
    /// `listen` comes in a Hello (all of it goes to Kademlia) or a path exchange (only what
    /// is new does).
    pub(super) fn admit_to_dht(&mut self, peer: PeerId, device: DeviceId, listen: &[String], hello: bool) {
        let addresses: Vec<Multiaddr> = listen
            .iter()
            .filter_map(|a| a.parse().ok())
            .filter(|a| self.dialable(a))
            .take(super::discovery::MAX_CANDIDATE_ADDRESSES)
            .collect();
        // Addresses only: nothing a redial's time rests on.
        let known = &mut self.reach.entry(device).or_default().multiaddrs;
        let mut new = Vec::new();
        for address in addresses {
            let remembered = Self::remember_bounded(known, &address);
            self.peer_cache_stale |= remembered;
            if remembered || hello {
                new.push(address);
            }
        }
        for address in new {
            self.push(Action::KadAddAddress { peer, address });
        }
    }

    /// Our own control-plane addresses worth handing to members.
    /// What our Hello says of where we listen (for tests: the core's own view).
    pub fn hello_listen(&self) -> Vec<String> {
        self.own_listen_addresses()
    }

    pub(super) fn own_listen_addresses(&self) -> Vec<String> {
        self.listen_addrs
            .iter()
            .filter(|a| self.dialable(a))
            .take(super::discovery::MAX_CANDIDATE_ADDRESSES)
            .map(ToString::to_string)
            .collect()
    }
}

/// The policy's relay rate in bytes a second (`None`: no cap).
pub fn relay_rate_bytes(rate: membership::RelayRate) -> Option<u64> {
    match rate {
        membership::RelayRate::Default => Some(protocol::share::DEFAULT_RATE_BYTES_PER_SECOND),
        membership::RelayRate::Mbit(mbit) => Some(u64::from(mbit) * 125_000),
        membership::RelayRate::Unlimited => None,
    }
}
