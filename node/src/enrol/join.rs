//! `pal join CODE`: a new device reaches a member named in the invite code, proves it holds the
//! invite's secret, pulls and verifies the whole log, signs its `Join` with its own key and the
//! invite's, and hands it to the member. Nothing is kept unless the member accepted.

use super::invite::InviteCode;
use crate::control::admission::sign_invite_proof;
use crate::control::messages::{Request, Response};
use crate::p2p::{self, EnrolEvent};
use crate::statedir::{Identity, StateDir};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, request_response};
use membership::sync::Summary;
use membership::{DeviceRecord, Entry, EntryContents, Log, Operation, SyncMessage};
use std::time::Duration;

/// How long `pal join` tries before giving up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

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

async fn exchange(state: &StateDir, identity: &Identity, code: &InviteCode, name: &str) -> Result<()> {
    let mut swarm = p2p::build(&identity.libp2p, |_, _| p2p::enrol_behaviour())?;
    let local_peer = *swarm.local_peer_id();
    for address in &code.bootstrap {
        let _ = swarm.dial(address.clone());
    }
    let proof = sign_invite_proof(&code.secret, &code.invite, &code.network, &local_peer);
    // Any member holding the invite entry can admit us, so the first that answers is asked;
    // if it refuses (say, it has not yet heard of the invite), the next connected one is.
    let mut member: Option<PeerId> = None;
    let mut waiting: Vec<PeerId> = Vec::new();
    let mut log: Option<Log> = None;
    let mut join_entry: Option<Entry> = None;
    let sync_request = |log: &Option<Log>| {
        let summary = match log {
            Some(log) => log.summary(),
            None => Summary { network: code.network, heads: Vec::new(), sample: Vec::new() },
        };
        Request::Sync { binding: None, invite: Some(proof.clone()), summary: SyncMessage::Summary(summary).encode().into() }
    };
    loop {
        let event = swarm.select_next_some().await;
        let failure = match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                if member.is_none() {
                    member = Some(peer_id);
                    swarm.behaviour_mut().control.send_request(&peer_id, sync_request(&log));
                } else if member != Some(peer_id) && !waiting.contains(&peer_id) {
                    waiting.push(peer_id);
                }
                None
            }
            SwarmEvent::Behaviour(EnrolEvent::Control(request_response::Event::Message {
                peer,
                message: request_response::Message::Response { response, .. },
                ..
            })) => match response {
                Response::Entries { batch, more } => {
                    let batch: Vec<Vec<u8>> = batch.into_iter().map(|b| b.to_vec()).collect();
                    super::ingest_batch(&mut log, &batch, Some(code.network), "member")?;
                    if more {
                        swarm.behaviour_mut().control.send_request(&peer, sync_request(&log));
                        continue;
                    }
                    let current = log.as_ref().context("log")?;
                    let entry = make_join(current, identity, code, name, crate::clock::unix_secs())?;
                    swarm.behaviour_mut().control.send_request(&peer, Request::Join { entry: entry.encoded().to_vec().into() });
                    join_entry = Some(entry);
                    None
                }
                Response::Accepted => {
                    let (Some(mut log), Some(entry)) = (log.take(), join_entry.take()) else { continue };
                    log.ingest(vec![entry]).context("our own join does not verify")?;
                    super::persist(state, &log)?;
                    state.cache_peers(&code.bootstrap.iter().map(ToString::to_string).collect::<Vec<_>>())?;
                    return Ok(());
                }
                Response::Refused { reason } => Some(crate::control::messages::printable(&reason)),
                Response::Hello { .. } | Response::Paths { .. } | Response::Revoked => None,
            },
            SwarmEvent::Behaviour(EnrolEvent::Control(request_response::Event::OutboundFailure { error, .. })) => {
                Some(format!("the member did not answer: {error}"))
            }
            _ => None,
        };
        if let Some(reason) = failure {
            if waiting.is_empty() {
                bail!("{reason}");
            }
            let next = waiting.remove(0);
            member = Some(next);
            join_entry = None;
            swarm.behaviour_mut().control.send_request(&next, sync_request(&log));
        }
    }
}

/// Our `Join`, signed with our device key and the invite's: checked against the log as every
/// member will check it.
pub fn make_join(log: &Log, identity: &Identity, code: &InviteCode, name: &str, unix: u64) -> Result<Entry> {
    let state = log.state();
    let invite = state.usable_invite(&code.invite, unix).map_err(|error| match error {
        membership::InviteUnusable::Unknown => anyhow::anyhow!("this invite is not in the network's log"),
        other => anyhow::anyhow!("{other}"),
    })?;
    if invite.key != code.secret.public_key() {
        bail!("this invite code is garbled; copy it again from `pal device invite`");
    }
    let founder = log.founder().context("empty log")?;
    let me = identity.device.public_key().device_id();
    let (overlay_ipv4, overlay_ipv6) = state.allocate_overlay(&founder, &me).context("no free overlay address")?;
    let device = DeviceRecord {
        name: name.to_owned(),
        signing_key: identity.device.public_key(),
        static_key: identity.static_secret.public_key(),
        role: invite.role,
        overlay_ipv4,
        overlay_ipv6,
    };
    let contents = EntryContents {
        network: Some(log.network()),
        parents: log.heads().iter().copied().collect(),
        author: identity.device.public_key(),
        time: unix,
        operation: Operation::Join { invite: code.invite, invite_key: code.secret.public_key(), device },
    };
    let entry = Entry::sign(contents, &identity.device, Some(&code.secret)).context("cannot sign the join")?;
    log.state().check(&entry).map_err(|e| anyhow::anyhow!("cannot join: {e}"))?;
    Ok(entry)
}
