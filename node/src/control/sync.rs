//! Log sync between members: push on append (an `Announce` of our summary to every connected
//! member), pull when a peer's summary shows something we lack (one batch per `Sync`, asked
//! again while more follow), and anti-entropy (every few seconds each member shows its summary
//! again, so a push or pull lost with a closing connection heals).

use super::messages::{self, Binding, Request, Response};
use super::{Action, Core, admission};
use libp2p::PeerId;
use membership::sync::missing_for;
use membership::{DeviceStatus, SyncMessage};
use minicbor::bytes::ByteVec;
use std::time::Duration;

/// How often a node shows its log summary to its peers unasked (anti-entropy).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5);

impl Core {
    /// Our log's summary (a guest has no log: nothing).
    pub(super) fn summary(&self) -> Vec<u8> {
        self.book.log().map(|log| SyncMessage::Summary(log.summary()).encode()).unwrap_or_default()
    }

    /// Our heads alone, for a check that nobody is behind ([`membership::Log::heads_summary`]).
    pub(super) fn heads_summary(&self) -> Vec<u8> {
        self.book.log().map(|log| SyncMessage::Summary(log.heads_summary()).encode()).unwrap_or_default()
    }

    /// Shows this log's summary to every connected member; whoever lacks something pulls it.
    pub(super) fn announce(&mut self) {
        let summary: ByteVec = self.summary().into();
        let mut peers: Vec<PeerId> = self.by_peer.keys().copied().collect();
        peers.sort();
        for peer in peers {
            self.push(Action::Send { peer, request: Request::Announce { summary: summary.clone() } });
        }
    }

    /// Anti-entropy, and a circuit reservation refused or lost is asked for again. While the
    /// network settles the summary goes to everyone at once; in the idle round it rides in the
    /// path exchange instead ([`Self::exchange_paths`]), one exchange per connection.
    pub(super) fn anti_entropy(&mut self, idle: bool) {
        if !idle {
            self.announce();
        }
        if let Some((device, endpoint)) = self.relay
            && let Some(peer) = self.reach.get(&device).and_then(|r| r.peer_id)
            && self.is_connected(&peer)
        {
            self.listen_via_relay(peer, endpoint.port());
        }
    }

    /// A member's summary (pushed, or in a path exchange): pull what we miss of its log, or,
    /// as a guest, of its view.
    pub(super) fn compare_summary(&mut self, peer: PeerId, summary: &[u8]) {
        self.pull_if_behind(peer, summary);
        self.pull_view_if_changed(peer, summary);
    }

    pub(super) fn pull_if_behind(&mut self, peer: PeerId, summary: &[u8]) {
        if let Some(log) = self.book.log()
            && let Some(summary) = messages::decode_summary(summary)
            && !membership::sync::has_everything_of(log, &summary)
        {
            self.request_sync(peer);
        }
    }

    pub(super) fn request_sync(&mut self, peer: PeerId) {
        let request = Request::Sync { binding: Some(self.binding.clone()), invite: None, summary: self.summary().into() };
        self.push(Action::Send { peer, request });
    }

    /// Members get everything; a revoked device gets the log up to its revocation (so it
    /// learns it was cut off) and nothing newer; anyone else nothing — a joiner reads the log
    /// once it has joined.
    pub(super) fn serve_sync(&mut self, peer: PeerId, binding: Option<Binding>, summary: &[u8]) -> Response {
        let mut horizon = None;
        let Some(log) = self.book.log() else { return messages::refused(super::book::GUEST_CANNOT) };
        match binding.and_then(|b| self.verify_signed_binding(&peer, &b)) {
            Some((device, _)) if log.state().devices.get(&device).is_some_and(|d| d.record.role == membership::Role::Guest) => {
                return messages::refused(super::guests::NOT_FOR_GUESTS);
            }
            Some((_, DeviceStatus::Active)) => {}
            Some((device, DeviceStatus::Revoked)) => {
                horizon = log.revocation_of(&device);
                if horizon.is_none() {
                    return messages::refused(admission::NOT_A_MEMBER);
                }
            }
            None => return messages::refused(admission::NOT_A_MEMBER),
        }
        let Some(summary) = messages::decode_summary(summary) else { return messages::refused("malformed summary") };
        let batches = match horizon {
            Some(horizon) => membership::sync::missing_up_to(log, &summary, horizon),
            None => missing_for(log, &summary),
        };
        let mut batches = batches.into_iter();
        let batch = batches.next().unwrap_or_default();
        Response::Entries { batch: batch.into_iter().map(Into::into).collect(), more: batches.next().is_some() }
    }

    /// A batch a peer sent for our summary: verified atomically, and asked for again while
    /// more follow. Only from a proven, current member (or one that told us we are revoked
    /// and was asked to show it): a revoked device cannot push its forks into our log.
    pub(super) fn ingest_batch(&mut self, peer: PeerId, batch: Vec<ByteVec>, more: bool) {
        if !self.by_peer.contains_key(&peer) && !self.revocation_checks.contains(&peer) {
            tracing::debug!("log entries from a peer that is not a proven member dropped");
            return;
        }
        let batch: Vec<Vec<u8>> = batch.into_iter().map(|b| b.to_vec()).collect();
        let Ok(store) = self.book.store_mut() else { return };
        match store.ingest_encoded(&batch) {
            Ok(0) => {}
            Ok(_) => {
                self.membership_changed();
                if more {
                    self.request_sync(peer);
                }
            }
            Err(error) => tracing::debug!(%error, "sync batch refused"),
        }
    }
}
