//! `pal request` and `pal device add`: adding a device that members can reach but that cannot
//! reach them — above all a fresh CloudPal in a data centre when every device of the owner sits
//! behind a NAT, so that no invite code could name a reachable member.
//!
//! The new device makes its keys and prints a request code: `palr1` + base32 of its name, its
//! signing and static public keys, its libp2p peer id and its addresses. Nothing in it is
//! secret. An admin pastes it into `pal device add CODE --role ROLE`: its node appends an
//! `AddDevice` entry (it is the admin who vouches for the keys, as with an SSH fingerprint),
//! dials the new device by its peer id (libp2p authenticates that key) and delivers the whole
//! log. The new device keeps the log only if it verifies and lists it, with its own keys, as an
//! active member.

use super::codes;
use crate::control::messages::{Request, Response};
use crate::p2p::{self, EnrolEvent};
use crate::statedir::{Identity, StateDir};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use membership::{DeviceStatus, Log, Role};
use protocol::{DevicePublicKey, StaticPublic};
use std::net::SocketAddr;
use std::time::Duration;

const PREFIX: &str = "palr1";
const VERSION: u8 = 1;
/// Addresses a request code carries.
pub const MAX_ADDRESSES: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCode {
    pub name: String,
    pub signing_key: DevicePublicKey,
    pub static_key: StaticPublic,
    pub peer: PeerId,
    /// Where the requesting device listens (without the `/p2p` suffix).
    pub addresses: Vec<Multiaddr>,
}

impl RequestCode {
    pub fn encode(&self) -> String {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(self.signing_key.as_bytes());
        bytes.extend_from_slice(self.static_key.as_bytes());
        codes::push_prefixed(&mut bytes, &self.peer.to_bytes());
        let name = self.name.as_bytes();
        codes::push_prefixed(&mut bytes, &name[..name.len().min(255)]);
        let addresses: Vec<Vec<u8>> = self.addresses.iter().map(Multiaddr::to_vec).filter(|a| a.len() <= 255).take(MAX_ADDRESSES).collect();
        bytes.push(addresses.len() as u8);
        for address in addresses {
            codes::push_prefixed(&mut bytes, &address);
        }
        codes::encode(PREFIX, &bytes)
    }

    pub fn decode(code: &str) -> Result<Self> {
        let garbled = || anyhow::anyhow!("this request code is garbled; copy it again from `pal request` on the new device");
        let bytes = codes::body(code, PREFIX, &garbled)?;
        let mut reader = codes::Reader::new(&bytes, &garbled);
        if reader.byte()? != VERSION {
            bail!("this request code is from a newer CloudPal; update pal");
        }
        let signing_key = DevicePublicKey::from_bytes(reader.array()?);
        let static_key = StaticPublic::from_bytes(reader.array()?);
        let peer = PeerId::from_bytes(reader.prefixed()?).map_err(|_| garbled())?;
        let name = std::str::from_utf8(reader.prefixed()?).map_err(|_| garbled())?.to_owned();
        let mut addresses = Vec::new();
        for _ in 0..reader.count(MAX_ADDRESSES)? {
            addresses.push(Multiaddr::try_from(reader.prefixed()?.to_vec()).map_err(|_| garbled())?);
        }
        reader.finish()?;
        Ok(Self { name, signing_key, static_key, peer, addresses })
    }
}

/// How long `pal request` waits for an admin before giving up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// Creates this device's keys, shows its request code through `show`, and waits until an admin
/// of the network with fingerprint `expected` (see [`super::fingerprint`]) delivers a log that
/// lists it; returns the role it was given. A log of any other network is refused, and once
/// an admin's delivery has begun nobody else can interrupt it (issue #12).
pub async fn request(state: &StateDir, name: &str, listen: SocketAddr, expected: &str, show: impl FnOnce(&str)) -> Result<Role> {
    super::check_new_device(state, name)?;
    let expected = super::parse_fingerprint(expected)?;
    let identity = state.create_identity()?;
    let outcome = tokio::time::timeout(REQUEST_TIMEOUT, wait_for_admin(state, &identity, name, listen, &expected, show)).await;
    let outcome = outcome.unwrap_or_else(|_| Err(anyhow::anyhow!("no admin added this device within an hour; run `pal request` again")));
    if outcome.is_err() {
        super::discard(state);
    }
    outcome
}

async fn wait_for_admin(
    state: &StateDir,
    identity: &Identity,
    name: &str,
    listen: SocketAddr,
    expected: &str,
    show: impl FnOnce(&str),
) -> Result<Role> {
    let mut swarm = p2p::build(&identity.libp2p, |_, _| p2p::enrol_behaviour())?;
    swarm
        .listen_on(crate::control::addr::socket_multiaddr(listen, false))
        .with_context(|| format!("cannot listen on {listen}: is a node running here?"))?;
    // Collect the listen addresses (one per interface) before printing the code.
    let mut addresses = Vec::new();
    let settle = tokio::time::sleep(Duration::from_millis(300));
    tokio::pin!(settle);
    loop {
        tokio::select! {
            event = swarm.select_next_some() => {
                if let SwarmEvent::NewListenAddr { address, .. } = event
                    && crate::control::addr::is_dialable(&address)
                {
                    addresses.push(address);
                }
            }
            _ = &mut settle => break,
        }
    }
    if addresses.is_empty() {
        bail!("no address to be reached at: pass --listen with this machine's public address");
    }
    let me = identity.device.public_key();
    let code = RequestCode {
        name: name.to_owned(),
        signing_key: me,
        static_key: identity.static_secret.public_key(),
        peer: *swarm.local_peer_id(),
        addresses,
    };
    show(&code.encode());

    let mut log: Option<Log> = None;
    // The admin whose delivery is under way: nobody else may reset or interleave it.
    let mut deliverer: Option<libp2p::PeerId> = None;
    loop {
        let SwarmEvent::Behaviour(EnrolEvent::Control(request_response::Event::Message {
            peer,
            message: request_response::Message::Request { request: Request::Deliver { batch, more }, channel, .. },
            ..
        })) = swarm.select_next_some().await
        else {
            continue;
        };
        if deliverer.is_some_and(|d| d != peer) {
            let busy = Response::Refused { reason: "another admin is delivering this device's log".into() };
            let _ = swarm.behaviour_mut().control.send_response(channel, busy);
            continue;
        }
        let batch: Vec<Vec<u8>> = batch.into_iter().map(|b| b.to_vec()).collect();
        // A delivery starts with the genesis, which names the network: only the expected one.
        if log.is_none() {
            let network = batch.first().and_then(|genesis| membership::Entry::decode(genesis).ok()).map(|genesis| membership::NetworkId(genesis.hash().0));
            if network.map(|n| super::fingerprint(&n)).as_deref() != Some(expected) {
                tracing::warn!("refused a log from another network than the one this device expects");
                let wrong = Response::Refused { reason: "this device expects another network; check the fingerprint given to `pal request --network`".into() };
                let _ = swarm.behaviour_mut().control.send_response(channel, wrong);
                continue;
            }
            deliverer = Some(peer);
        }
        let result = super::ingest_batch(&mut log, &batch, None, "admin");
        let verdict = match (&result, more) {
            (Err(error), _) => Err(error.to_string()),
            (Ok(()), true) => Ok(false),
            (Ok(()), false) => {
                let current = log.as_ref().context("no log")?;
                match current.state().devices.get(&me.device_id()) {
                    Some(d) if d.status == DeviceStatus::Active && d.record.static_key == code.static_key => Ok(true),
                    _ => Err("the delivered log does not list this device; add it with `pal device add`".to_owned()),
                }
            }
        };
        let response = match &verdict {
            Ok(_) => Response::Accepted,
            Err(reason) => Response::Refused { reason: reason.clone() },
        };
        let _ = swarm.behaviour_mut().control.send_response(channel, response);
        match verdict {
            Ok(true) => {
                let log = log.take().context("no log")?;
                super::persist(state, &log)?;
                let role = log.state().devices.get(&me.device_id()).map(|d| d.record.role).context("no role")?;
                // Let the answer reach the admin before the swarm goes.
                let _ = tokio::time::timeout(Duration::from_millis(300), async {
                    loop {
                        swarm.select_next_some().await;
                    }
                })
                .await;
                return Ok(role);
            }
            Ok(false) => {}
            Err(_) => {
                // Start over with the next delivery, from whichever admin.
                log = None;
                deliverer = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> RequestCode {
        RequestCode {
            name: "cloudpal".into(),
            signing_key: DevicePublicKey::from_bytes([1; 32]),
            static_key: StaticPublic::from_bytes([2; 32]),
            peer: libp2p::identity::Keypair::ed25519_from_bytes([3; 32]).expect("key").public().to_peer_id(),
            addresses: vec!["/ip4/203.0.113.10/tcp/41641".parse().expect("addr"), "/ip4/203.0.113.10/udp/41642/quic-v1".parse().expect("addr")],
        }
    }

    #[test]
    fn request_codes_round_trip_in_either_case() {
        let encoded = code().encode();
        assert!(encoded.starts_with("palr1") && encoded.len() < 260, "{encoded}");
        assert_eq!(RequestCode::decode(&encoded).expect("decodes"), code());
        assert_eq!(RequestCode::decode(&encoded.to_ascii_uppercase()).expect("decodes"), code());
    }

    #[test]
    fn garbled_request_codes_fail_with_one_clear_line() {
        let good = code().encode();
        for bad in [String::new(), "palr1".into(), good[..good.len() - 4].to_string(), format!("{good}aa"), good.replace("palr1", "pal1")] {
            let Err(error) = RequestCode::decode(&bad) else { panic!("{bad:?} accepted") };
            let error = error.to_string();
            assert!(!error.contains('\n') && error.contains("request code"), "{error}");
        }
    }
}
