//! Guests on the control plane (issue #16 item 1, SECURITY-TESTS GUEST-01/02).
//!
//! A member deals with a guest only if something is shared with it from this device, or this
//! is CloudPal (its relay, and its exit when the policy names it). Everyone else refuses the
//! guest's Hello like an outsider's. A guest may greet, exchange path candidates, ask for its
//! view and for an exit session; never the log, never presence records. What it is told of
//! other devices is only what is shared with it, and CloudPal. A guest learns that its view
//! is stale from a member's `Announce`, whose summary changes with the log, and pulls it.

use super::book::Book;
use super::messages::{self, Binding, Request, Response};
use super::{Action, Core, admission};
use libp2p::PeerId;
use membership::{DeviceStatus, Role};
use minicbor::bytes::ByteVec;
use protocol::{DeviceId, GuestRules, IpPrefix};
use std::net::IpAddr;

/// What members answer a guest that asks for what it may not have.
pub const NOT_FOR_GUESTS: &str = "a guest device is not given this";

impl Core {
    pub fn is_guest(&self) -> bool {
        self.book.is_guest()
    }

    fn role_of(&self, device: &DeviceId) -> Option<Role> {
        self.book.state().devices.get(device).map(|d| d.record.role)
    }

    /// Whether this node has anything to do with `device`: every member with every member;
    /// a guest only where something is shared with it, or on CloudPal.
    pub(super) fn deals_with(&self, device: &DeviceId) -> bool {
        if self.is_guest() {
            // Its view also proves the admins that added those; they are not its to reach.
            return self.role_of(device) == Some(Role::CloudPal) || self.book.state().shared_ports(&self.me, device).is_some();
        }
        match self.role_of(device) {
            Some(Role::Guest) => self.cloudpal || self.book.state().may_talk(&self.me, device),
            Some(_) => true,
            None => false,
        }
    }

    /// Whether a request from `peer` is one a guest may not make.
    pub(super) fn refused_to_guest(&self, peer: &PeerId, request: &Request) -> bool {
        let guest = self.by_peer.get(peer).is_some_and(|device| self.role_of(device) == Some(Role::Guest));
        guest && !matches!(request, Request::Hello { .. } | Request::Paths { .. } | Request::View { .. } | Request::Announce { .. } | Request::ExitSession { .. })
    }

    /// A guest asks for its view: the entries proving what it may reach (a revoked guest: up
    /// to its own revocation, so that it sees it).
    pub(super) fn serve_view(&self, peer: &PeerId, binding: &Binding) -> Response {
        let Some((device, _)) = self.verify_signed_binding(peer, binding) else { return messages::refused(admission::NOT_A_MEMBER) };
        let Some(log) = self.book.log() else { return messages::refused(super::book::GUEST_CANNOT) };
        match membership::guest::view_for(log, &device) {
            Some(view) => Response::View { entries: view.into_iter().map(Into::into).collect() },
            None => messages::refused(NOT_FOR_GUESTS),
        }
    }

    /// A guest: a member's summary differs from the one our view came with, so ask for it.
    pub(super) fn pull_view_if_changed(&mut self, peer: PeerId, summary: &[u8]) {
        if !self.is_guest() {
            return;
        }
        // The heads say whether the member's log moved (a pushed summary and a path
        // exchange's heads-only one compare alike).
        let Some(heads) = messages::decode_summary(summary).map(|s| s.heads) else { return };
        if self.view_summary.get(&peer).is_some_and(|seen| *seen == heads) {
            return;
        }
        self.view_summary.insert(peer, heads);
        self.push(Action::Send { peer, request: Request::View { binding: self.binding.clone() } });
    }

    /// A guest: a view a member served, kept if it checks.
    pub(super) fn view_answered(&mut self, peer: PeerId, entries: Vec<ByteVec>) {
        if !self.by_peer.contains_key(&peer) {
            return;
        }
        let Book::Guest(book) = &mut self.book else { return };
        let before: Vec<(DeviceId, protocol::StaticPublic)> = book.state().devices.iter().map(|(id, d)| (*id, d.record.static_key)).collect();
        match book.update(entries.into_iter().map(|e| e.to_vec()).collect()) {
            Ok(changed) => {
                let view = book.view().to_vec();
                self.push(Action::SaveView(view));
                if changed {
                    // A device no longer shared leaves the view altogether: its peer goes too.
                    for (id, key) in before {
                        if !self.book.state().devices.contains_key(&id) {
                            self.command(crate::dataplane::commands::DataCommand::RemovePeer(key));
                            self.reach_remove(&id);
                            self.peer_cache_stale = true;
                        }
                    }
                    self.membership_changed();
                }
            }
            Err(error) => tracing::debug!(%error, "a guest view was refused"),
        }
    }

    /// The data-plane filter for `device` if it is a guest (members have none).
    pub(super) fn guest_rules(&self, device: &DeviceId) -> Option<GuestRules> {
        if self.is_guest() || self.role_of(device) != Some(Role::Guest) {
            return None;
        }
        let state = self.book.state();
        let mine = state.devices.get(&self.me)?;
        let shared = state.shared_ports(device, &self.me).map(|ports| ports.iter().map(|p| (p.first, p.last)).collect());
        let internet = self.cloudpal && !state.policy.firewall.mesh_only && state.may_use_exit(device);
        let relay_to = if self.cloudpal {
            state.shares.get(device).into_iter().flat_map(|s| &s.shares).filter_map(|s| state.devices.get(&s.device)).filter(|d| d.status == DeviceStatus::Active).map(|d| d.record.static_key).collect()
        } else {
            Default::default()
        };
        let (v4, v4_len) = membership::overlay::OVERLAY_IPV4_PREFIX;
        let mut overlay: Vec<IpPrefix> = IpPrefix::new(IpAddr::V4(v4), v4_len).into_iter().collect();
        if let Some(founder) = self.book.founder() {
            overlay.extend(IpPrefix::new(IpAddr::V6(membership::overlay::ula_prefix(&founder)), membership::overlay::OVERLAY_IPV6_PREFIX_LEN));
        }
        Some(GuestRules { local: vec![IpAddr::V4(mine.record.overlay_ipv4), IpAddr::V6(mine.record.overlay_ipv6)], shared, internet, overlay, relay_to })
    }
}

/// Whether `asker` may be told where `device` is: a guest learns of what is shared with it and
/// of CloudPal; a guest is shown to those it shares with and to CloudPal. The roles come
/// looked up (`known_peers` asks this of every member the asker keeps).
pub(super) fn may_know(state: &membership::State, (asker, asker_role): (&DeviceId, Option<Role>), (device, device_role): (&DeviceId, Option<Role>)) -> bool {
    match (asker_role, device_role) {
        (Some(Role::Guest), Some(Role::CloudPal)) | (Some(Role::CloudPal), Some(Role::Guest)) => true,
        (Some(Role::Guest), _) | (_, Some(Role::Guest)) => state.may_talk(asker, device),
        _ => true,
    }
}
