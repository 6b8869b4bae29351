//! Discovery: how members find each other. Each publishes a signed presence record in the
//! network's own DHT and looks up the records of members it is not connected to; records put
//! to us are stored only if they verify (DHT-01). Members we know are redialled on a plan
//! (never-met ones sooner), addresses other members report are kept as candidates, the
//! bootstrap addresses are dialled while no member is connected, and the addresses that
//! worked go to the peer cache for the next start.

use super::messages::PeerAddresses;
use super::{Action, Core, Dial, DialWhen, Time, presence};
use crate::control::addr::circuit_address;
use libp2p::{Multiaddr, PeerId};
use membership::DeviceStatus;
use protocol::DeviceId;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often candidate addresses are redialled while the network settles.
pub const REDIAL_INTERVAL: Duration = Duration::from_secs(3);
/// The wait before each of a lost member's first [`QUICK_REDIALS`] redials (a restart, a
/// roam: it is usually back within seconds)…
pub const FIRST_DIAL_INTERVAL: Duration = Duration::from_secs(1);
pub const QUICK_REDIALS: u32 = 5;
/// …after which each wait doubles, up to this (a member offline for long costs next to
/// nothing).
pub const MAX_REDIAL_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Addresses remembered per candidate peer: bounds what a member can make us dial.
pub const MAX_CANDIDATE_ADDRESSES: usize = 16;
/// How often a node republishes its presence record.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(30);
/// How often a node looks up the records of members it is not connected to.
pub const PRESENCE_LOOKUP_INTERVAL: Duration = Duration::from_secs(5);

impl Core {
    /// Publishes this device's signed presence record: its peer id and listen addresses.
    pub(super) fn publish_presence(&mut self, time: Time) {
        if self.is_guest() {
            return; // it knows no network secret, and members find it through its Hello
        }
        if self.mesh.is_some() && !self.cloudpal && self.cloudpal_connected() {
            return; // past a full mesh, the CloudPals tell whoever keeps us where we are
        }
        let addresses: Vec<Multiaddr> = self.listen_addrs.iter().filter(|a| self.dialable(a)).cloned().collect();
        let seq = u64::try_from(time.unix.as_millis()).unwrap_or(u64::MAX);
        let mut nonce = [0u8; presence::NONCE_LEN];
        rand_core::Rng::fill_bytes(&mut self.rng, &mut nonce);
        let secret = &self.book.state().secret;
        let (key, value) = presence::publish(secret, &self.signing_key, &self.peer_id, &addresses, seq, time.unix_secs(), nonce);
        self.push(Action::KadPut { key: key.to_vec(), value, ttl: presence::RECORD_TTL });
    }

    pub(super) fn look_up_absent_members(&mut self, time: Time) {
        if self.is_guest() {
            return;
        }
        if self.mesh.is_some() && (self.cloudpal || self.cloudpal_connected()) {
            // Past a full mesh, a CloudPal hears from everyone that is up, and tells each
            // member where those it keeps are: a DHT walk (tens of kilobytes) per absent
            // member every few minutes would be most of an idle network's traffic.
            return;
        }
        let state = self.book.state();
        let keys: Vec<Vec<u8>> = state
            .active_devices()
            .filter(|(_, d)| d.record.role != membership::Role::Guest)
            .filter(|(id, _)| **id != self.me && self.wants(id) && !self.reach.get(*id).is_some_and(|r| r.connected))
            .map(|(id, _)| presence::key(&state.secret, time.unix_secs(), id).to_vec())
            .collect();
        for key in keys {
            self.push(Action::KadGet { key });
        }
    }

    /// A record someone put to us, `held` the sequence number of the one stored under its key:
    /// how long to keep it if a current member signed it for its own key and it is newer
    /// (DHT-01); `None` drops it unseen.
    pub fn handle_put_record(&self, key: &[u8], value: &[u8], held: Option<u64>, time: Time) -> Option<Duration> {
        let unix = time.unix_secs();
        match presence::verify(self.book.state(), key, value, unix, held) {
            Ok(presence) => Some(Duration::from_secs(presence.expires.saturating_sub(unix))),
            Err(reason) => {
                tracing::debug!(%reason, "dropped a DHT record");
                None
            }
        }
    }

    /// The sequence number of a stored record, if it opens with the network secret.
    pub fn record_seq(&self, key: &[u8], value: &[u8]) -> Option<u64> {
        presence::seq_of(&self.book.state().secret, key, value)
    }

    /// A record a lookup found: dialled only if it verifies and is newer than the last one.
    pub fn handle_found_record(&mut self, key: &[u8], value: &[u8], time: Time) {
        let state = self.book.state();
        let Ok(presence) = presence::verify(state, key, value, time.unix_secs(), None) else { return };
        if self.presence_seq.get(&presence.device).is_some_and(|held| presence.seq <= *held) {
            return;
        }
        self.presence_seq.insert(presence.device, presence.seq);
        if presence.device == self.me || presence.peer == self.peer_id || self.is_connected(&presence.peer) {
            return;
        }
        let addresses: Vec<Multiaddr> = presence.addresses.into_iter().filter(|a| self.dialable(a)).collect();
        let _ = self.remember_addresses(presence.peer, &addresses);
        // Dialled even while another dial to the peer is under way: a redial to an old address
        // must not swallow the news.
        self.push(Action::Dial(Dial { peer: Some(presence.peer), addresses, when: DialWhen::Disconnected }));
    }

    /// Addresses of a member another member told us about: dial it now if we are not
    /// connected, and keep them as candidates for the redials. Who it is gets proven by its
    /// own Hello binding, never by what we were told.
    pub(super) fn learn_addresses(&mut self, entry: PeerAddresses) {
        let Ok(peer_id) = PeerId::from_bytes(&entry.peer_id) else { return };
        if peer_id == self.peer_id {
            return;
        }
        if let Some(device) = entry.device.map(|id| DeviceId::from_bytes(*id))
            && device != self.me
            && self.book.state().devices.get(&device).is_some_and(|d| d.status == DeviceStatus::Active)
        {
            let reported = self.reported.entry(device).or_default();
            for candidate in entry.candidates.iter().filter_map(|c| c.parse::<SocketAddr>().ok()) {
                if reported.len() < protocol::paths::MAX_CANDIDATES {
                    reported.insert(candidate);
                }
            }
            self.apply_candidates(device);
            if !self.wants(&device) {
                return; // reached on the data plane; no control connection of ours (mesh)
            }
        }
        let addresses: Vec<Multiaddr> =
            entry.multiaddrs.iter().filter_map(|a| a.parse().ok()).filter(|a| self.dialable(a)).take(MAX_CANDIDATE_ADDRESSES).collect();
        if let Some(device) = self.by_peer.get(&peer_id).copied() {
            // Addresses only: nothing a redial's time rests on.
            let known = &mut self.reach.entry(device).or_default().multiaddrs;
            for address in &addresses {
                self.peer_cache_stale |= Self::remember_bounded(known, address);
            }
        }
        let kept = self.remember_addresses(peer_id, &addresses);
        if kept && !self.is_connected(&peer_id) {
            self.push(Action::Dial(Dial { peer: Some(peer_id), addresses, when: DialWhen::Idle }));
        }
    }

    /// Whether a CloudPal of the network is connected to us now.
    pub(super) fn cloudpal_connected(&self) -> bool {
        let state = self.book.state();
        self.by_peer.iter().any(|(peer, device)| self.is_connected(peer) && state.devices.get(device).is_some_and(|d| d.record.role == membership::Role::CloudPal))
    }

    /// What we know of the members in `members` (all of them for `None`).
    pub(super) fn reach_of<'a>(&'a self, members: Option<&'a BTreeSet<DeviceId>>) -> Box<dyn Iterator<Item = (&'a DeviceId, &'a super::Reach)> + 'a> {
        match members {
            Some(members) => Box::new(members.iter().filter_map(|id| Some((id, self.reach.get(id)?)))),
            None => Box::new(self.reach.iter()),
        }
    }

    /// A member's reach, to change (forgets when the next redial is due).
    pub(super) fn reach_mut(&mut self, id: &DeviceId) -> Option<&mut super::Reach> {
        self.redial_due.set(None);
        self.reach.get_mut(id)
    }

    /// A member's reach, made if need be, to change.
    pub(super) fn reach_entry(&mut self, id: DeviceId) -> &mut super::Reach {
        self.redial_due.set(None);
        self.reach.entry(id).or_default()
    }

    pub(super) fn reach_remove(&mut self, id: &DeviceId) -> Option<super::Reach> {
        self.redial_due.set(None);
        self.reach.remove(id)
    }

    /// Whether we keep a control connection to `device` ([`super::mesh`]).
    pub(super) fn wants(&self, device: &DeviceId) -> bool {
        self.wanted.as_ref().is_none_or(|wanted| wanted.contains(device))
    }

    /// Keeps `addresses` for the redials of `peer`, within the per-peer bound; false if `peer`
    /// is beyond the bound on candidate peers (no more than a network has devices).
    fn remember_addresses(&mut self, peer: PeerId, addresses: &[Multiaddr]) -> bool {
        if !self.candidates.contains_key(&peer) && self.candidates.len() >= membership::state::MAX_DEVICES {
            return self.by_peer.contains_key(&peer);
        }
        let candidates = self.candidates.entry(peer).or_default();
        for address in addresses {
            Self::remember_bounded(candidates, address);
        }
        true
    }

    /// Adds `address` to `known` unless that holds [`MAX_CANDIDATE_ADDRESSES`] already; whether
    /// it is new there.
    pub(super) fn remember_bounded(known: &mut std::collections::BTreeSet<Multiaddr>, address: &Multiaddr) -> bool {
        known.len() < MAX_CANDIDATE_ADDRESSES && known.insert(address.clone())
    }

    /// The wait after a member's last redial: a second for the first few, then doubling with
    /// each redial that found nobody, each doubled wait shortened by a random part of up to
    /// half, so that the members that lost one another at the same moment (a partition, an
    /// outage) do not all redial in the same second for ever after.
    fn redial_interval(reach: &super::Reach) -> Duration {
        let doublings = reach.redials.saturating_sub(QUICK_REDIALS).min(16);
        let wait = FIRST_DIAL_INTERVAL.saturating_mul(1 << doublings).min(MAX_REDIAL_INTERVAL);
        if doublings == 0 { wait } else { wait.mul_f64(1.0 - f64::from(reach.jitter) / 2000.0) }
    }

    /// When the next member redial is due.
    pub(super) fn next_redial(&self) -> Option<Instant> {
        if let Some(due) = self.redial_due.get() {
            debug_assert_eq!(due, self.work_out_next_redial(), "a change to what redials rest on did not forget `redial_due`");
            return due;
        }
        let due = self.work_out_next_redial();
        self.redial_due.set(Some(due));
        due
    }

    fn work_out_next_redial(&self) -> Option<Instant> {
        if self.revoked() {
            return None;
        }
        // Past a full mesh, only the few we keep connections to (this runs at every input).
        self.reach_of(self.wanted.as_ref())
            .filter(|(id, reach)| **id != self.me && !reach.connected && reach.peer_id.is_some())
            .map(|(_, reach)| reach.last_dial.map(|at| at + Self::redial_interval(reach)))
            .min_by_key(|due| *due)
            .map(|due| due.unwrap_or_else(|| self.timers.started()))
    }

    /// Redials every member we are not connected to whose interval has passed. A member behind
    /// a NAT is reachable through CloudPal's relay (where it holds a reservation): its circuit
    /// address is derived, not learnt, so it is always tried.
    pub(super) fn redial_members(&mut self, now: Instant) {
        // Nobody due (the walk below is over every member on a CloudPal, at every timeout).
        if self.next_redial().is_none_or(|due| due > now) {
            return;
        }
        // Someone is due: the dials below change what the next one rests on.
        self.redial_due.set(None);
        let circuit_base = self.relay_circuit_base();
        let mut dials = Vec::new();
        // Past a full mesh, only the few we keep (this runs at every timeout).
        let ids: Vec<DeviceId> = match &self.wanted {
            Some(wanted) => wanted.iter().copied().collect(),
            None => self.reach.keys().copied().collect(),
        };
        for id in &ids {
            let Some(reach) = self.reach.get_mut(id) else { continue };
            let interval = Self::redial_interval(reach);
            if *id == self.me || reach.connected || reach.last_dial.is_some_and(|at| now - at < interval) {
                continue;
            }
            let Some(peer) = reach.peer_id else { continue };
            if reach.last_dial.is_some() {
                reach.redials = reach.redials.saturating_add(1);
                reach.jitter = (rand_core::Rng::next_u32(&mut self.rng) % 1000) as u16;
            }
            reach.last_dial = Some(now);
            let mut addresses: Vec<Multiaddr> = reach.multiaddrs.iter().cloned().collect();
            if let Some(base) = circuit_base.as_ref().filter(|(relay, _)| *relay != peer) {
                addresses.push(base.1.clone().with(libp2p::multiaddr::Protocol::P2p(peer)));
            }
            dials.push(Dial { peer: Some(peer), addresses, when: DialWhen::Idle });
        }
        for dial in dials {
            self.push(Action::Dial(dial));
        }
    }

    /// Candidates other members reported, and the bootstrap addresses while nobody is around.
    pub(super) fn redial_candidates(&mut self) {
        let dials: Vec<Dial> = self
            .candidates
            .iter()
            .filter(|(peer, _)| !self.is_connected(peer))
            .map(|(peer, addresses)| Dial { peer: Some(*peer), addresses: addresses.iter().cloned().collect(), when: DialWhen::Idle })
            .collect();
        for dial in dials {
            self.push(Action::Dial(dial));
        }
        if self.by_peer.is_empty() {
            for address in self.bootstrap.clone() {
                self.push(Action::Dial(Dial { peer: None, addresses: vec![address], when: DialWhen::Idle }));
            }
        }
    }

    /// CloudPal's peer id and `/…/p2p/CLOUDPAL/p2p-circuit`, through which members that hold a
    /// reservation there can be dialled; none without a relay or when we are it.
    pub(super) fn relay_circuit_base(&self) -> Option<(PeerId, Multiaddr)> {
        if self.cloudpal {
            return None;
        }
        let (device, endpoint) = self.relay?;
        let peer = self.reach.get(&device)?.peer_id?;
        Some((peer, circuit_address(endpoint, peer)))
    }

    /// The members' addresses for the peer cache, written only when they change (an fsync per
    /// check would wake the disk and the CPU for nothing). Compared before they are formatted:
    /// this runs at every timeout, and base58 for every member each time was most of a busy
    /// core's work in the simulations of issue #17.
    pub(super) fn update_peer_cache(&mut self) {
        if !std::mem::take(&mut self.peer_cache_stale) {
            return;
        }
        let peers: Vec<(PeerId, Multiaddr)> = self.reach.values().filter_map(|r| Some((r.peer_id?, r.multiaddrs.iter().next()?.clone()))).collect();
        if peers.is_empty() || peers == self.cached_peers {
            return;
        }
        let addresses: Vec<String> = peers.iter().filter_map(|(peer, address)| address.clone().with_p2p(*peer).ok()).map(|a| a.to_string()).collect();
        self.cached_peers = peers;
        self.push(Action::CachePeers(addresses));
    }
}
