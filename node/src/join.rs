//! `pal join CODE`: a new device reaches a member named in the invite code, proves it holds the
//! invite's secret, pulls and verifies the whole log, signs its `Join` with its own key and the
//! invite's, and hands it to the member. Nothing is kept unless the member accepted.

use crate::invite::InviteCode;
use crate::messages::{self, InviteProof, Request, Response};
use crate::runtime::{build_swarm_for_join, unix_now};
use crate::statedir::StateDir;
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use libp2p::{PeerId, request_response};
use libp2p::swarm::SwarmEvent;
use membership::sync::Summary;
use membership::{DeviceRecord, Entry, EntryContents, Log, Operation, Store, SyncMessage, overlay};
use std::time::Duration;

/// How long `pal join` tries before giving up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn join(state: &StateDir, code: &str, name: &str) -> Result<()> {
    let code = InviteCode::decode(code)?;
    if !membership::entry::validate_name(name) {
        bail!("{name:?} is not a valid device name: use letters, digits, '-', '_' or '.'");
    }
    if state.is_initialised() {
        bail!("{} already holds a device; use another --state directory", state.root().display());
    }
    let identity = state.create_identity()?;
    let result = tokio::time::timeout(JOIN_TIMEOUT, exchange(state, &identity, &code, name)).await;
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow::anyhow!("no member answered at the invite's addresses; is the inviting device running `pal up`?")),
    };
    if outcome.is_err() {
        for file in ["device.key", "static.key", "libp2p.key", "membership.redb"] {
            let _ = std::fs::remove_file(state.root().join(file));
        }
    }
    outcome
}

async fn exchange(state: &StateDir, identity: &crate::statedir::Identity, code: &InviteCode, name: &str) -> Result<()> {
    let mut swarm = build_swarm_for_join(&identity.libp2p)?;
    let local_peer = *swarm.local_peer_id();
    for address in &code.bootstrap {
        let _ = swarm.dial(address.clone());
    }
    let mut proof_message = messages::INVITE_PROOF_DOMAIN.to_vec();
    proof_message.extend_from_slice(&code.network.0);
    proof_message.extend_from_slice(&local_peer.to_bytes());
    let proof = InviteProof {
        invite: code.invite.0.into(),
        signature: (*code.secret.sign(&proof_message).as_bytes()).into(),
    };
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
            SwarmEvent::Behaviour(crate::runtime::JoinEvent::Control(request_response::Event::Message {
                peer,
                message: request_response::Message::Response { response, .. },
                ..
            })) => match response {
                Response::Entries { batch, more } => {
                    let batch: Vec<Vec<u8>> = batch.into_iter().map(|b| b.to_vec()).collect();
                    let mut rest = batch.as_slice();
                    if log.is_none() {
                        let (first, tail) = rest.split_first().context("the member sent an empty log")?;
                        let genesis = Entry::decode(first).context("the member sent an invalid genesis")?;
                        let fresh = Log::from_genesis(genesis).context("the member sent an invalid genesis")?;
                        if fresh.network() != code.network {
                            bail!("the member belongs to another network than this invite");
                        }
                        log = Some(fresh);
                        rest = tail;
                    }
                    let current = log.as_mut().context("log")?;
                    current.ingest_encoded(rest).context("the member sent an invalid log")?;
                    if more {
                        swarm.behaviour_mut().control.send_request(&peer, sync_request(&log));
                        continue;
                    }
                    let entry = make_join(current, identity, code, name)?;
                    swarm.behaviour_mut().control.send_request(&peer, Request::Join { entry: entry.encoded().to_vec().into() });
                    join_entry = Some(entry);
                    None
                }
                Response::Accepted => {
                    let (Some(mut log), Some(entry)) = (log.take(), join_entry.take()) else { continue };
                    log.ingest(vec![entry]).context("our own join does not verify")?;
                    persist(state, &log)?;
                    state.cache_peers(&code.bootstrap.iter().map(ToString::to_string).collect::<Vec<_>>())?;
                    return Ok(());
                }
                Response::Refused { reason } => Some(reason),
                Response::Hello { .. } | Response::Paths { .. } | Response::Revoked => None,
            },
            SwarmEvent::Behaviour(crate::runtime::JoinEvent::Control(request_response::Event::OutboundFailure { error, .. })) => {
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

fn make_join(log: &Log, identity: &crate::statedir::Identity, code: &InviteCode, name: &str) -> Result<Entry> {
    let state = log.state();
    let invite = state.invites.get(&code.invite).context("this invite is not in the network's log")?;
    if invite.consumed_by.is_some() {
        bail!("this invite code has already been used");
    }
    if invite.expires < unix_now() {
        bail!("this invite code has expired; ask for a new one");
    }
    if invite.key != code.secret.public_key() {
        bail!("this invite code is garbled; copy it again from `pal device invite`");
    }
    let founder = log.entries().next().map(|g| g.author()).context("empty log")?;
    let me = identity.device.public_key().device_id();
    let (overlay_ipv4, overlay_ipv6) = (0..64)
        .map(|attempt| overlay::derive(&founder, &me, attempt))
        .find(|(v4, v6)| !state.active_devices().any(|(_, d)| d.record.overlay_ipv4 == *v4 || d.record.overlay_ipv6 == *v6))
        .context("no free overlay address")?;
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
        time: unix_now(),
        operation: Operation::Join { invite: code.invite, invite_key: code.secret.public_key(), device },
    };
    let entry = Entry::sign(contents, &identity.device, Some(&code.secret)).context("cannot sign the join")?;
    log.state().check(&entry).map_err(|e| anyhow::anyhow!("cannot join: {e}"))?;
    Ok(entry)
}

pub(crate) fn persist(state: &StateDir, log: &Log) -> Result<()> {
    let mut entries = log.entries().cloned();
    let genesis = entries.next().context("empty log")?;
    let mut store = Store::create(&state.store_path(), genesis).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rest: Vec<Entry> = entries.collect();
    for chunk in rest.chunks(membership::log::MAX_BATCH_ENTRIES) {
        store.ingest(chunk.to_vec()).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
