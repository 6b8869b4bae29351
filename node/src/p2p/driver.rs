//! The driver: maps the swarm's events to the control core's inputs and the core's actions to
//! the swarm. It holds no policy; what is not the swarm's (data-plane commands, the peer
//! cache, answers to local requests) it hands back to the app.

use super::{Behaviour, BehaviourEvent, Gate};
use crate::control::{Action, Connection, Core, Dial, DialWhen, Time};
use libp2p::core::transport::ListenerId;
use libp2p::kad::store::RecordStore as _;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use crate::control::messages::Request;
use libp2p::request_response::OutboundRequestId;
use libp2p::{PeerId, Swarm, dcutr, kad, ping, request_response};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Driver {
    /// The circuit listener at CloudPal's relay, once asked for.
    relay_listener: Option<ListenerId>,
    gate: Gate,
    /// Requests that may be sent again, until answered: whether they were already.
    resendable: HashMap<OutboundRequestId, (PeerId, Request, bool)>,
}

impl Driver {
    pub fn new(gate: Gate) -> Self {
        Driver { relay_listener: None, gate, resendable: HashMap::new() }
    }

    fn send(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, request: Request, resent: bool) {
        let resendable = matches!(request, Request::Hello { .. } | Request::Sync { .. } | Request::Announce { .. } | Request::Paths { .. }).then(|| request.clone());
        let id = swarm.behaviour_mut().control.send_request(&peer, request);
        if let Some(request) = resendable {
            self.resendable.insert(id, (peer, request, resent));
        }
    }

    /// Feeds one swarm event to the core.
    pub fn handle_event(&mut self, core: &mut Core, swarm: &mut Swarm<Behaviour>, event: SwarmEvent<BehaviourEvent>, time: Time) {
        core.note_time(time.now);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => core.handle_new_listen_addr(address),
            SwarmEvent::ExpiredListenAddr { address, .. } => core.handle_expired_listen_addr(address),
            SwarmEvent::ListenerClosed { listener_id, .. } if self.relay_listener == Some(listener_id) => {
                self.relay_listener = None;
                core.handle_relay_listener_closed();
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                core.handle_connection_established(Connection {
                    peer: peer_id,
                    id: connection_id,
                    remote: endpoint.get_remote_address().clone(),
                    dialer: endpoint.is_dialer(),
                    relayed: endpoint.is_relayed(),
                    local: match &endpoint {
                        libp2p::core::ConnectedPoint::Listener { local_addr, .. } => Some(local_addr.clone()),
                        libp2p::core::ConnectedPoint::Dialer { .. } => None,
                    },
                }, time);
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, .. } => core.handle_connection_closed(peer_id, connection_id),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { record: Some(mut record), .. },
            })) => {
                let store = swarm.behaviour_mut().kad.store_mut();
                let held = store.get(&record.key).and_then(|r| core.record_seq(r.key.as_ref(), &r.value));
                if let Some(ttl) = core.handle_put_record(record.key.as_ref(), &record.value, held, time) {
                    record.expires = Some(time.now + ttl);
                    let _ = store.put(record);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))),
                ..
            })) => core.handle_found_record(found.record.key.as_ref(), &found.record.value, time),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event { result, .. })) => {
                tracing::debug!(direct = result.is_ok(), "hole punch for a relayed control connection");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => core.handle_ping(peer, rtt),
            SwarmEvent::Behaviour(BehaviourEvent::Control(request_response::Event::Message { peer, message, .. })) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let response = core.handle_request(peer, request, time);
                    let _ = swarm.behaviour_mut().control.send_response(channel, response);
                }
                request_response::Message::Response { request_id, response } => {
                    self.resendable.remove(&request_id);
                    core.handle_response(peer, response, time)
                }
            },
            // Unanswered for the request timeout: the connection is taken for dead (a NAT that
            // forgot it, a peer that roamed away) rather than left to TCP's quarter of an hour;
            // its close makes the core redial.
            SwarmEvent::Behaviour(BehaviourEvent::Control(request_response::Event::OutboundFailure {
                connection_id,
                request_id,
                error: request_response::OutboundFailure::Timeout,
                ..
            })) => {
                self.resendable.remove(&request_id);
                swarm.close_connection(connection_id);
            }
            // The connection it went out on closed first (one of two to a peer, closed as the
            // duplicate; libp2p spreads requests over a peer's connections): a request that is
            // safe to repeat (a hello, a sync, an announcement, paths) goes again, once, on the
            // connection that stays — a pushed revocation must not wait for anti-entropy.
            SwarmEvent::Behaviour(BehaviourEvent::Control(request_response::Event::OutboundFailure { request_id, error, .. })) => {
                if let Some((peer, request, resent)) = self.resendable.remove(&request_id)
                    && !resent
                    && matches!(error, request_response::OutboundFailure::ConnectionClosed)
                    && swarm.is_connected(&peer)
                {
                    self.send(swarm, peer, request, true);
                }
            }
            _ => {}
        }
    }

    /// Carries out an action that is the swarm's; any other comes back for the app.
    pub fn execute(&mut self, core: &mut Core, swarm: &mut Swarm<Behaviour>, action: Action, time: Time) -> Option<Action> {
        match action {
            Action::Send { peer, request } => self.send(swarm, peer, request, false),
            Action::Dial(dial) => dial_now(swarm, dial),
            Action::KadAddAddress { peer, address } => {
                swarm.behaviour_mut().kad.add_address(&peer, address);
            }
            Action::KadPut { key, value, ttl } => {
                let record = kad::Record { key: kad::RecordKey::new(&key), value, publisher: None, expires: Some(time.now + ttl) };
                let _ = swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One);
            }
            Action::KadGet { key } => {
                swarm.behaviour_mut().kad.get_record(kad::RecordKey::new(&key));
            }
            Action::ListenOnCircuit(address) => match swarm.listen_on(address) {
                Ok(listener) => self.relay_listener = Some(listener),
                Err(_) => core.handle_relay_listener_closed(),
            },
            Action::AddExternalAddress(address) => swarm.add_external_address(address),
            Action::MemberPeers(members) => self.gate.set(members),
            Action::CloseConnection(id) => {
                swarm.close_connection(id);
            }
            Action::Disconnect(peer) => {
                let _ = swarm.disconnect_peer_id(peer);
                swarm.behaviour_mut().kad.remove_peer(&peer);
            }
            other => return Some(other),
        }
        None
    }
}

fn dial_now(swarm: &mut Swarm<Behaviour>, dial: Dial) {
    let options = match dial.peer {
        // A bare address: whoever answers there proves itself in its Hello. A `/p2p/…` suffix
        // (a cached or an invite's address) may name last epoch's identity, so it goes.
        None => match dial.addresses.into_iter().next() {
            Some(address) => DialOpts::unknown_peer_id().address(crate::control::addr::without_peer_id(address)).build(),
            None => return,
        },
        Some(peer) => {
            let condition = match dial.when {
                DialWhen::Idle => PeerCondition::DisconnectedAndNotDialing,
                DialWhen::Disconnected => PeerCondition::Disconnected,
                DialWhen::Always => PeerCondition::Always,
            };
            DialOpts::peer_id(peer).condition(condition).addresses(dial.addresses).build()
        }
    };
    let _ = swarm.dial(options);
}
