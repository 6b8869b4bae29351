//! `pal join CODE`: a new device reaches a member named in the invite code, proves it holds the
//! invite's secret and is told what its `Join` must carry (parents, role, free overlay
//! addresses) — nothing more of the log: an invite holder who never joins learns nothing of the
//! network. It signs its `Join` with its own key and the invite's, hands it to the member and,
//! once a member, pulls and verifies the whole log. Nothing is kept unless the log it receives
//! lists it.

use super::invite::InviteCode;
use crate::control::admission::{sign_binding, sign_invite_proof};
use crate::control::messages::{Request, Response};
use crate::p2p::{self, EnrolEvent};
use crate::statedir::{Identity, StateDir};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, request_response};
use membership::sync::Summary;
use membership::{DeviceRecord, Entry, EntryContents, EntryHash, Log, Operation, Role, SyncMessage};
use minicbor::bytes::ByteArray;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// How long `pal join` tries before giving up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A member that does not know the invite is asked again after 250 ms, 0.5, 1 and 2 s (3.75 s
/// in all: within the time a member gives an unproven peer, and within INV-03's burst).
const UNKNOWN_INVITE_RETRIES: u32 = 4;
const UNKNOWN_INVITE_BACKOFF: Duration = Duration::from_millis(250);

pub async fn join(state: &StateDir, code: &str, name: &str) -> Result<()> {
    let code = InviteCode::decode(code)?;
    super::check_new_device(state, name)?;
    let identity = state.create_identity()?;
    let result = tokio::time::timeout(JOIN_TIMEOUT, exchange(state, &identity, &code, name)).await;
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow::anyhow!("no member answered at the invite's addresses; is the inviting device running `pal up`?")),
    };
    if outcome.is_err() {
        super::discard(state);
    }
    outcome
}

/// What a member said our `Join` must carry.
#[derive(Debug, Clone)]
pub struct Template {
    pub parents: Vec<EntryHash>,
    pub role: Role,
    pub overlay_ipv4: Ipv4Addr,
    pub overlay_ipv6: Ipv6Addr,
}

impl Template {
    fn from_response(parents: Vec<ByteArray<32>>, role: &str, overlay_ipv4: [u8; 4], overlay_ipv6: [u8; 16]) -> Result<Self> {
        let role = role.parse().map_err(|_| anyhow::anyhow!("the member sent an unknown role; update pal"))?;
        Ok(Template { parents: parents.into_iter().map(|p| EntryHash(*p)).collect(), role, overlay_ipv4: overlay_ipv4.into(), overlay_ipv6: overlay_ipv6.into() })
    }
}

/// The two steps after a member answered: our join, then (as a member) the log.
#[derive(Debug)]
enum Step {
    /// Asked a member for the template.
    Enrolling,
    /// Sent our `Join`.
    Joining,
    /// Joined; pulling the log.
    Syncing,
    /// Joined as a guest; asking for its view (a guest gets no log).
    Viewing,
}

async fn exchange(state: &StateDir, identity: &Identity, code: &InviteCode, name: &str) -> Result<()> {
    let mut swarm = p2p::build(&identity.libp2p, |_, _| p2p::enrol_behaviour())?;
    let local_peer = *swarm.local_peer_id();
    // Dialled by address alone: the code may name a member's PeerId of an earlier identity
    // epoch; whoever answers proves its network by the log, whose genesis is the code's.
    for address in &code.bootstrap {
        let _ = swarm.dial(crate::control::addr::without_peer_id(address.clone()));
    }
    let proof = sign_invite_proof(&code.secret, &code.invite, &code.network, &local_peer);
    let enrol = Request::Enrol {
        proof,
        name: name.to_owned(),
        signing_key: (*identity.device.public_key().as_bytes()).into(),
        static_key: (*identity.static_secret.public_key().as_bytes()).into(),
    };
    let binding = sign_binding(&identity.device, &code.network, &local_peer);
    let sync_request = |log: &Option<Log>| {
        let summary = match log {
            Some(log) => log.summary(),
            None => Summary { network: code.network, heads: Vec::new(), sample: Vec::new() },
        };
        Request::Sync { binding: Some(binding.clone()), invite: None, summary: SyncMessage::Summary(summary).encode().into() }
    };
    // Any member holding the invite entry can admit us, so the first that answers is asked;
    // if it refuses (say, it has not yet heard of the invite), the next connected one is.
    let mut member: Option<PeerId> = None;
    let mut waiting: Vec<PeerId> = Vec::new();
    let mut step = Step::Enrolling;
    let mut log: Option<Log> = None;
    let mut guest = false;
    let view_request = Request::View { binding: binding.clone() };
    let me = identity.device.public_key().device_id();
    // A member that does not know the invite yet (made a moment ago elsewhere) pulls the log
    // from the others; we ask it again a little later, a few times, before believing it.
    let unknown = membership::InviteUnusable::Unknown.to_string();
    let mut unknown_retries = 0u32;
    let mut retry: Option<(tokio::time::Instant, PeerId)> = None;
    loop {
        let retry_due = async {
            match retry {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        let event = tokio::select! {
            event = swarm.select_next_some() => event,
            () = retry_due => {
                if let Some((_, peer)) = retry.take() {
                    swarm.behaviour_mut().control.send_request(&peer, enrol.clone());
                }
                continue;
            }
        };
        let failure = match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                if member.is_none() {
                    member = Some(peer_id);
                    swarm.behaviour_mut().control.send_request(&peer_id, enrol.clone());
                } else if member != Some(peer_id) && !waiting.contains(&peer_id) {
                    waiting.push(peer_id);
                }
                None
            }
            SwarmEvent::Behaviour(EnrolEvent::Control(request_response::Event::Message {
                peer,
                message: request_response::Message::Response { response, .. },
                ..
            })) => match (&step, response) {
                (Step::Enrolling, Response::Template { parents, role, overlay_ipv4, overlay_ipv6 }) => {
                    let template = Template::from_response(parents, &role, *overlay_ipv4, *overlay_ipv6)?;
                    guest = template.role == Role::Guest;
                    let entry = make_join(&template, identity, code, name, crate::clock::unix_secs())?;
                    swarm.behaviour_mut().control.send_request(&peer, Request::Join { entry: entry.encoded().to_vec().into() });
                    step = Step::Joining;
                    None
                }
                (Step::Joining, Response::Accepted) if guest => {
                    // A guest now: what it may reach is ours to read, and no more.
                    step = Step::Viewing;
                    swarm.behaviour_mut().control.send_request(&peer, view_request.clone());
                    None
                }
                (Step::Joining, Response::Accepted) => {
                    // We are a member now: the log is ours to read.
                    step = Step::Syncing;
                    swarm.behaviour_mut().control.send_request(&peer, sync_request(&log));
                    None
                }
                (Step::Viewing, Response::View { entries }) => {
                    let view: Vec<Vec<u8>> = entries.into_iter().map(|e| e.to_vec()).collect();
                    crate::control::book::GuestBook::new(code.network, me, view.clone())
                        .map_err(|e| anyhow::anyhow!("the member accepted the join but sent a view that does not check ({e}); ask for a new invite"))?;
                    state.save_guest_view(&code.network, &view)?;
                    state.cache_peers(&code.bootstrap.iter().map(ToString::to_string).collect::<Vec<_>>())?;
                    return Ok(());
                }
                (Step::Syncing, Response::Entries { batch, more }) => {
                    let batch: Vec<Vec<u8>> = batch.into_iter().map(|b| b.to_vec()).collect();
                    super::ingest_batch(&mut log, &batch, Some(code.network), "member")?;
                    if more {
                        swarm.behaviour_mut().control.send_request(&peer, sync_request(&log));
                        continue;
                    }
                    let log = log.take().context("the member sent no log")?;
                    if log.state().devices.get(&me).is_none_or(|d| d.status != membership::DeviceStatus::Active) {
                        bail!("the member accepted the join but its log does not list this device; ask for a new invite");
                    }
                    super::persist(state, &log)?;
                    state.cache_peers(&code.bootstrap.iter().map(ToString::to_string).collect::<Vec<_>>())?;
                    return Ok(());
                }
                (Step::Enrolling, Response::Refused { reason }) if reason == unknown && waiting.is_empty() && unknown_retries < UNKNOWN_INVITE_RETRIES => {
                    retry = Some((tokio::time::Instant::now() + UNKNOWN_INVITE_BACKOFF * 2u32.pow(unknown_retries), peer));
                    unknown_retries += 1;
                    None
                }
                (_, Response::Refused { reason }) => Some(crate::control::messages::printable(&reason)),
                _ => None,
            },
            SwarmEvent::Behaviour(EnrolEvent::Control(request_response::Event::OutboundFailure { error, .. })) => {
                Some(format!("the member did not answer: {error}"))
            }
            _ => None,
        };
        if let Some(reason) = failure {
            // Once joined, only the log is missing: any member can serve it.
            if waiting.is_empty() {
                bail!("{reason}");
            }
            let next = waiting.remove(0);
            member = Some(next);
            let request = match step {
                Step::Syncing => sync_request(&log),
                Step::Viewing => view_request.clone(),
                _ => {
                    step = Step::Enrolling;
                    enrol.clone()
                }
            };
            swarm.behaviour_mut().control.send_request(&next, request);
        }
    }
}

/// Our `Join` on the member's `template`, signed with our device key and the invite's.
pub fn make_join(template: &Template, identity: &Identity, code: &InviteCode, name: &str, unix: u64) -> Result<Entry> {
    let device = DeviceRecord {
        name: name.to_owned(),
        signing_key: identity.device.public_key(),
        static_key: identity.static_secret.public_key(),
        role: template.role,
        overlay_ipv4: template.overlay_ipv4,
        overlay_ipv6: template.overlay_ipv6,
    };
    let contents = EntryContents {
        network: Some(code.network),
        parents: template.parents.clone(),
        author: identity.device.public_key(),
        time: unix,
        operation: Operation::Join { invite: code.invite, invite_key: code.secret.public_key(), device },
    };
    Entry::sign(contents, &identity.device, Some(&code.secret)).context("the member sent parents no entry can carry")
}
