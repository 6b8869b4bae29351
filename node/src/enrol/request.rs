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

    let mut requester = Requester::new(expected, me, code.static_key);
    loop {
        let SwarmEvent::Behaviour(EnrolEvent::Control(request_response::Event::Message {
            peer,
            message: request_response::Message::Request { request: Request::Deliver { batch, more }, channel, .. },
            ..
        })) = swarm.select_next_some().await
        else {
            continue;
        };
        let batch: Vec<Vec<u8>> = batch.into_iter().map(|b| b.to_vec()).collect();
        let verdict = requester.on_deliver(peer, &batch, more);
        let response = match &verdict {
            Verdict::More | Verdict::Done(_) => Response::Accepted,
            Verdict::Refused(reason) => Response::Refused { reason: reason.clone() },
        };
        let _ = swarm.behaviour_mut().control.send_response(channel, response);
        if let Verdict::Done(log) = verdict {
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
    }
}

/// What `pal request` makes of each delivery, apart from the sockets: only a log of the
/// expected network, from one admin at a time, that lists this device with its keys.
#[derive(Debug)]
pub(crate) struct Requester {
    expected: String,
    me: DevicePublicKey,
    static_key: StaticPublic,
    log: Option<Log>,
    /// The admin whose delivery is under way: nobody else may reset or interleave it.
    deliverer: Option<PeerId>,
}

/// The answer to one delivered batch.
#[derive(Debug)]
pub(crate) enum Verdict {
    More,
    Done(Box<Log>),
    Refused(String),
}

impl Requester {
    pub(crate) fn new(expected: &str, me: DevicePublicKey, static_key: StaticPublic) -> Self {
        Requester { expected: expected.to_owned(), me, static_key, log: None, deliverer: None }
    }

    pub(crate) fn on_deliver(&mut self, peer: PeerId, batch: &[Vec<u8>], more: bool) -> Verdict {
        if self.deliverer.is_some_and(|d| d != peer) {
            return Verdict::Refused("another admin is delivering this device's log".into());
        }
        // A delivery starts with the genesis, which names the network: only the expected one.
        if self.log.is_none() {
            let network = batch.first().and_then(|genesis| membership::Entry::decode(genesis).ok()).map(|genesis| membership::NetworkId(genesis.hash().0));
            if network.map(|n| super::fingerprint(&n)).as_deref() != Some(self.expected.as_str()) {
                tracing::warn!("refused a log from another network than the one this device expects");
                return Verdict::Refused("this device expects another network; check the fingerprint given to `pal request --network`".into());
            }
            self.deliverer = Some(peer);
        }
        let verdict = match super::ingest_batch(&mut self.log, batch, None, "admin") {
            Err(error) => Verdict::Refused(error.to_string()),
            Ok(()) if more => return Verdict::More,
            Ok(()) => {
                let listed = self.log.as_ref().and_then(|log| log.state().devices.get(&self.me.device_id()));
                match listed {
                    Some(d) if d.status == DeviceStatus::Active && d.record.static_key == self.static_key => match self.log.take() {
                        Some(log) => return Verdict::Done(Box::new(log)),
                        None => Verdict::Refused("no log".into()),
                    },
                    _ => Verdict::Refused("the delivered log does not list this device; add it with `pal device add`".into()),
                }
            }
        };
        // The deliverer's own bad delivery: start over, from whichever admin comes next.
        self.log = None;
        self.deliverer = None;
        verdict
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

    fn delivery(network: &membership::testkit::Network) -> Vec<Vec<u8>> {
        network.log.entries().map(|e| e.encoded().to_vec()).collect()
    }

    /// Issue #12: a stranger's network is refused, and a delivery in progress cannot be reset
    /// or interleaved by anyone else; the owner's goes through.
    #[test]
    fn a_requester_takes_only_its_network_from_one_admin() {
        use membership::Role;
        use membership::testkit::Network;
        let mut owner = Network::new(31);
        let member = owner.add("cloudpal", Role::CloudPal);
        let stranger = Network::new(32);
        let expected = crate::control::admission::fingerprint(&owner.log.network());
        let (admin, thief) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        let mut requester = Requester::new(&expected, member.key.public_key(), member.static_secret.public_key());
        assert!(matches!(requester.on_deliver(thief, &delivery(&stranger), false), Verdict::Refused(r) if r.contains("expects another network")));
        let batch = delivery(&owner);
        assert!(matches!(requester.on_deliver(admin, &batch[..1], true), Verdict::More));
        assert!(matches!(requester.on_deliver(thief, &[vec![0xff; 10]], false), Verdict::Refused(r) if r.contains("another admin")));
        assert!(matches!(requester.on_deliver(thief, &delivery(&owner), false), Verdict::Refused(_)), "not even the right log from another peer");
        match requester.on_deliver(admin, &batch[1..], false) {
            Verdict::Done(log) => assert!(log.state().devices.contains_key(&member.key.public_key().device_id())),
            other => panic!("the owner's delivery failed: {other:?}"),
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
