//! Admission: who may use the members-only protocols. A member proves itself with a binding
//! (its device key signs the network id and its libp2p peer id); a joiner proves it holds an
//! invite's secret (the invite key signs the network id and its peer id), checked a few times
//! per source and then slowly (INV-03); a join entry is admitted only if the log's rules say so.

use super::messages::{self, Binding, InviteProof, Response};
use super::{Core, Time};
use libp2p::PeerId;
use membership::{DeviceStatus, Entry, EntryHash, NetworkId};
use protocol::{DeviceId, DevicePublicKey, DeviceSigningKey};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

pub const NOT_A_MEMBER: &str = "not a member of this network";
/// How long a connected peer has to prove membership (a Hello binding) or a usable invite
/// before it is disconnected: outsiders get no lasting connection to query the DHT over.
pub const PROVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
/// Invite attempts per source: a burst (a join takes one), then one per interval.
pub const INVITE_ATTEMPT_BURST: u32 = 10;
pub const INVITE_ATTEMPT_INTERVAL: Duration = Duration::from_secs(6);
/// At most one pull from every member per this, for invites we do not know.
const INVITE_PULL_INTERVAL: Duration = Duration::from_secs(1);

/// Invite attempts are counted per source *and* invite: someone guessing the secret of one
/// invite behind a carrier NAT (or through the relay, where every source looks the same)
/// slows only guesses at that invite from there, never other joiners with their own invites.
pub(super) type InviteLimiter = protocol::ratelimit::RateLimiter<(protocol::ratelimit::SourceKey, [u8; 32])>;

pub(super) fn invite_limiter() -> InviteLimiter {
    InviteLimiter::new(INVITE_ATTEMPT_INTERVAL, INVITE_ATTEMPT_BURST)
}

/// What a binding signs: the network id and the peer id of the connection.
pub fn binding_message(network: &NetworkId, peer: &PeerId) -> Vec<u8> {
    domain_message(messages::BINDING_DOMAIN, network, peer)
}

/// What an invite proof signs: the network id and the joiner's peer id.
pub fn invite_proof_message(network: &NetworkId, peer: &PeerId) -> Vec<u8> {
    domain_message(messages::INVITE_PROOF_DOMAIN, network, peer)
}

fn domain_message(domain: &[u8], network: &NetworkId, peer: &PeerId) -> Vec<u8> {
    let mut message = domain.to_vec();
    message.extend_from_slice(&network.0);
    message.extend_from_slice(&peer.to_bytes());
    message
}

/// Our binding: signed once at start-up (it covers only the network id and our own peer id).
pub fn sign_binding(key: &DeviceSigningKey, network: &NetworkId, peer: &PeerId) -> Binding {
    Binding {
        device_key: (*key.public_key().as_bytes()).into(),
        signature: (*key.sign(&binding_message(network, peer)).as_bytes()).into(),
    }
}

/// A joiner's proof that it holds the invite `invite`'s secret.
pub fn sign_invite_proof(secret: &DeviceSigningKey, invite: &EntryHash, network: &NetworkId, peer: &PeerId) -> InviteProof {
    InviteProof { invite: invite.0.into(), signature: (*secret.sign(&invite_proof_message(network, peer)).as_bytes()).into() }
}

/// What a Hello says, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hello<'a> {
    pub binding: &'a Binding,
    pub data_port: u16,
    pub summary: &'a [u8],
    pub candidates: &'a [String],
    pub relay: bool,
    pub listen: &'a [String],
    pub nat: Option<&'a super::messages::NatInfo>,
}

/// A network's fingerprint: 80 bits of a hash of its id, as four groups of four base32
/// characters (`k3m9-x2pq-…`). Shown by `pal init` and `pal status`; `pal request --network`
/// takes it, so that a fresh device accepts only its owner's network. It does not reveal the
/// network id.
pub fn fingerprint(network: &membership::NetworkId) -> String {
    use blake2::{Blake2s256, Digest};
    let digest = Blake2s256::new().chain_update(b"cloudpal/network-fingerprint/v1").chain_update(network.0).finalize();
    let text = data_encoding::BASE32_NOPAD.encode(&digest[..10]).to_ascii_lowercase();
    grouped(&text)
}

/// `abcdefgh…` as `abcd-efgh-…`.
fn grouped(bare: &str) -> String {
    bare.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
}

/// A fingerprint as a user typed it: either case, with or without dashes and spaces.
pub fn parse_fingerprint(text: &str) -> anyhow::Result<String> {
    let bare: String = text.chars().filter(|c| !matches!(c, '-' | ' ')).collect::<String>().to_ascii_lowercase();
    let valid = bare.len() == 16 && data_encoding::BASE32_NOPAD.decode(bare.to_ascii_uppercase().as_bytes()).is_ok();
    if !valid {
        anyhow::bail!("--network {text:?} is not a network fingerprint; copy it from `pal status` on an admin device");
    }
    Ok(grouped(&bare))
}

impl Core {
    pub(super) fn hello_request(&self) -> messages::Request {
        messages::Request::Hello {
            binding: self.binding.clone(),
            data_port: self.data_port,
            summary: self.summary().into(),
            candidates: self.own_candidates(),
            relay: self.cloudpal,
            listen: self.own_listen_addresses(),
            nat: self.own_nat(),
        }
    }

    /// A peer greets us: if it proves to be a member, learn where it is and answer in kind.
    pub(super) fn on_hello(&mut self, peer: PeerId, hello: Hello<'_>) -> Response {
        let Hello { binding, data_port, summary, candidates, relay, listen, nat } = hello;
        let device = match self.verify_signed_binding(&peer, binding) {
            Some((device, DeviceStatus::Active)) => device,
            Some((_, DeviceStatus::Revoked)) => return Response::Revoked,
            None => return messages::refused(NOT_A_MEMBER),
        };
        // A guest this device shares nothing with is an outsider here (GUEST-02).
        if !self.deals_with(&device) {
            return messages::refused(NOT_A_MEMBER);
        }
        self.learn_peer(peer, device, data_port, listen);
        self.learn_candidates(device, candidates, relay);
        self.learn_nat(device, nat);
        if relay && self.relay.is_some_and(|(relay, _)| relay == device) {
            self.listen_via_relay(peer, data_port);
        }
        self.pull_if_behind(peer, summary);
        self.pull_view_if_changed(peer, summary);
        Response::Hello {
            binding: self.binding.clone(),
            data_port: self.data_port,
            summary: self.summary().into(),
            peers: self.known_peers(&device),
            candidates: self.own_candidates(),
            relay: self.cloudpal,
            listen: self.own_listen_addresses(),
            nat: self.own_nat(),
        }
    }

    /// The current member `peer` proves to be, if it does.
    pub(super) fn verify_binding(&self, peer: &PeerId, binding: &Binding) -> Option<DeviceId> {
        self.verify_signed_binding(peer, binding).and_then(|(id, status)| (status == DeviceStatus::Active).then_some(id))
    }

    /// The device of the log, active or revoked, whose key signed `peer`'s binding.
    pub(super) fn verify_signed_binding(&self, peer: &PeerId, binding: &Binding) -> Option<(DeviceId, DeviceStatus)> {
        let key = DevicePublicKey::from_bytes(*binding.device_key);
        let signature = protocol::Signature::from_bytes(*binding.signature);
        key.verify(&binding_message(&self.network, peer), &signature).ok()?;
        let id = key.device_id();
        let device = self.book.state().devices.get(&id)?;
        (device.record.signing_key == key).then_some((id, device.status))
    }

    /// INV-03: guessing is hopeless (256-bit secrets) and also slow: a few attempts per source,
    /// then one every few seconds. Then the proof itself.
    pub(super) fn check_invite_attempt(&mut self, peer: &PeerId, proof: &InviteProof, time: Time) -> Result<(), String> {
        let source = self.connection_ips.get(peer).copied().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        if !self.invite_attempts.allow_key((source.into(), *proof.invite), time.now) {
            return Err("too many invite attempts from this address; wait a minute and try again".into());
        }
        if let Err(reason) = self.verify_invite_proof(peer, proof, time.unix_secs()) {
            if reason == membership::InviteUnusable::Unknown {
                self.pull_for_invite(time.now);
            }
            return Err(reason.to_string());
        }
        // A joiner with a usable invite may finish its join (pulling the log in batches).
        self.unproven.remove(peer);
        Ok(())
    }

    /// An invite we do not know may be one made a moment ago on another member whose entry
    /// has not reached us: ask every member for what we lack (at most once a second), so the
    /// joiner's retry finds it here.
    fn pull_for_invite(&mut self, now: std::time::Instant) {
        if self.invite_pull_at.is_some_and(|at| now.saturating_duration_since(at) < INVITE_PULL_INTERVAL) {
            return;
        }
        self.invite_pull_at = Some(now);
        let mut members: Vec<PeerId> = self.by_peer.keys().copied().collect();
        members.sort();
        for member in members {
            self.request_sync(member);
        }
    }

    /// Disconnects peers that did not prove membership in time (not one we are delivering a
    /// log to: a device added from a request code is not in our peer table until it greets).
    pub(super) fn cut_off_unproven(&mut self, now: std::time::Instant) {
        let due: Vec<PeerId> = self.unproven.iter().filter(|(_, at)| **at <= now).map(|(peer, _)| *peer).collect();
        for peer in due {
            self.unproven.remove(&peer);
            if !self.by_peer.contains_key(&peer) && !self.deliveries.contains_key(&peer) {
                tracing::debug!("closed a connection that did not prove membership");
                self.push(super::Action::Disconnect(peer));
            }
        }
    }

    /// Whether `peer` holds the secret of a usable invite; the reason if not.
    fn verify_invite_proof(&self, peer: &PeerId, proof: &InviteProof, unix: u64) -> Result<(), membership::InviteUnusable> {
        let state = self.book.state();
        let hash = EntryHash(*proof.invite);
        let invite = state.invites.get(&hash).ok_or(membership::InviteUnusable::Unknown)?;
        let signature = protocol::Signature::from_bytes(*proof.signature);
        invite.key.verify(&invite_proof_message(&self.network, peer), &signature).map_err(|_| membership::InviteUnusable::Unknown)?;
        state.usable_invite(&hash, unix).map(drop)
    }

    /// A joiner proved an invite: what its `Join` must say, and no more of the log.
    pub(super) fn enrol(&mut self, peer: PeerId, proof: &InviteProof, name: String, signing_key: [u8; 32], static_key: [u8; 32], time: Time) -> Response {
        if let Err(reason) = self.check_invite_attempt(&peer, proof, time) {
            return messages::refused(&reason);
        }
        if let Err(error) = membership::entry::check_name(&name) {
            return messages::refused(&error.to_string());
        }
        let Some(log) = self.book.log() else { return messages::refused(super::book::GUEST_CANNOT) };
        let state = log.state();
        let hash = EntryHash(*proof.invite);
        let Some(invite) = state.invites.get(&hash) else { return messages::refused(membership::InviteUnusable::Unknown.to_string().as_str()) };
        let signing_key = DevicePublicKey::from_bytes(signing_key);
        let device = signing_key.device_id();
        let Some(founder) = log.founder() else { return messages::refused("empty log") };
        let Some((overlay_ipv4, overlay_ipv6)) = state.allocate_overlay(&founder, &device) else {
            return messages::refused("no free overlay address");
        };
        let record = membership::DeviceRecord { name, signing_key, static_key: protocol::StaticPublic::from_bytes(static_key), role: invite.role, overlay_ipv4, overlay_ipv6 };
        let operation = membership::Operation::Join { invite: hash, invite_key: invite.key, device: record };
        let parents = log.parents_for(&device, &operation);
        Response::Template {
            parents: parents.iter().map(|p| p.0.into()).collect(),
            role: invite.role.as_str().to_owned(),
            overlay_ipv4: overlay_ipv4.octets().into(),
            overlay_ipv6: overlay_ipv6.octets().into(),
        }
    }

    /// A joiner's `Join` entry: admitted if the log's rules accept it.
    pub(super) fn admit_join(&mut self, entry: &[u8], time: Time) -> Response {
        let result = Entry::decode(entry)
            .map_err(|e| e.to_string())
            .and_then(|entry| self.book.store_mut()?.admit_join(entry, time.unix_secs()).map_err(|e| e.to_string()));
        match result {
            Ok(()) => {
                self.membership_changed();
                Response::Accepted
            }
            Err(reason) => messages::refused(&format!("join refused: {reason}")),
        }
    }
}
