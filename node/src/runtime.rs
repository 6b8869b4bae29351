//! `pal up`: one tokio event loop that owns the libp2p swarm and the membership [`Store`],
//! and drives the data plane ([`crate::dataplane`]: its own thread owning the UDP socket, the
//! TUN device and the sans-IO [`protocol::Device`]) with commands.
//!
//! Control plane (libp2p, TCP + QUIC, Noise, Yamux; identify, ping, Kademlia on the network's
//! own DHT, where each member publishes a signed presence record under a daily-rotated key,
//! [`crate::presence`]): members greet each other with a `Hello`
//! that binds their libp2p identity to their device key and tells their data-plane port; they
//! exchange log summaries, pull what they lack and push on every append. Data plane: UDP with
//! the Noise tunnels of `protocol`; peers, keys and allowed addresses come from the membership
//! state, and a revoked device is removed from the data plane the moment the revocation is
//! applied.

use crate::control::{ControlRequest, ControlResponse, MAX_REQUEST_LEN};
use crate::dataplane::{self, DataCommand};
use crate::invite::InviteCode;
use crate::messages::{self, Binding, InviteProof, PeerAddresses, Request, Response};
use crate::presence;
use crate::request::RequestCode;
use crate::statedir::{StateDir, os_rng};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::kad::store::RecordStore as _;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, PeerId, Swarm, dcutr, identify, identity, kad, noise, ping, relay, tcp, yamux};
use membership::sync::missing_for;
use membership::{DeviceStatus, Entry, NetworkId, Operation, Role, Store, SyncMessage};
use protocol::paths::PathKind;
use protocol::{Device, DeviceConfig, DeviceId, DevicePublicKey, IpPrefix, PeerConfig, PresharedKey, StaticPublic, WallClock};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// The default data-plane port (UDP); libp2p listens on TCP of the same number and QUIC on
/// the next one.
pub const DEFAULT_PORT: u16 = 41641;
/// Control requests waiting for the event loop; the CLI sends one at a time.
const CONTROL_QUEUE: usize = 16;
/// How often the loop runs maintenance: dialling members we are not connected to, ping jobs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(250);
/// How often the control plane refreshes its copy of the data plane's view (paths,
/// reflexive addresses).
const VIEW_INTERVAL: Duration = Duration::from_secs(1);
/// How often members exchange path candidates.
const PATHS_INTERVAL: Duration = Duration::from_secs(2);
/// Keepalive towards the relay: holds the NAT mapping it forwards to open.
const RELAY_KEEPALIVE: Duration = Duration::from_secs(25);
/// Redial a member at most this often.
/// What a revoked device answers to anything that needs the network.
const REVOKED: &str = "this device has been revoked from the network; its tunnel is stopped";
const REDIAL_INTERVAL: Duration = Duration::from_secs(3);
/// Redial interval for members never met yet.
const FIRST_DIAL_INTERVAL: Duration = Duration::from_secs(1);
/// Addresses remembered per candidate peer: bounds what a member can make us dial.
const MAX_CANDIDATE_ADDRESSES: usize = 16;

#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The data-plane UDP address; libp2p uses TCP on the same port and QUIC on port + 1.
    pub listen: SocketAddr,
    pub bootstrap: Vec<Multiaddr>,
    pub cloudpal: bool,
    pub tun_name: String,
    /// Segmentation offloads on the TUN interface, where the kernel has them.
    pub offload: bool,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    control: request_response::Behaviour<messages::Codec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    /// CloudPal relays control connections between members that cannot reach each other
    /// (members only; IP packets never ride it), and DCUtR upgrades them to direct ones.
    relay: Toggle<relay::Behaviour>,
    relay_client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
}

/// The relay's gate: reservations and circuits only for peers that proved membership (their
/// Hello binding verified). Plugged in where libp2p puts its rate limiters.
struct MembersOnly(Arc<RwLock<HashSet<PeerId>>>);

impl relay::RateLimiter for MembersOnly {
    fn try_next(&mut self, peer: PeerId, _: &Multiaddr, _: std::time::Instant) -> bool {
        self.0.read().is_ok_and(|members| members.contains(&peer))
    }
}

/// The log going to a device added from a request code (`pal device add`).
struct Delivery {
    name: String,
    role: Role,
    batches: std::collections::VecDeque<Vec<Vec<u8>>>,
    started: Instant,
    /// The waiting `pal device add`.
    reply: Option<oneshot::Sender<ControlResponse>>,
}

/// What the node knows of one member's reachability.
#[derive(Debug, Default, Clone)]
struct Reach {
    peer_id: Option<PeerId>,
    multiaddrs: BTreeSet<Multiaddr>,
    data_endpoint: Option<SocketAddr>,
    connected: bool,
    /// Whether a connection to it ever verified: a member never met yet (one just added, as
    /// a CloudPal that is about to come up) is redialled sooner.
    met: bool,
    rtt: Option<Duration>,
    last_dial: Option<Instant>,
}


struct Node {
    state: StateDir,
    identity: crate::statedir::Identity,
    me: DeviceId,
    peer_id: PeerId,
    binding: Binding,
    network: NetworkId,
    store: Store,
    data: dataplane::DataSender,
    data_port: u16,
    active_keys: Arc<RwLock<BTreeSet<StaticPublic>>>,
    reach: BTreeMap<DeviceId, Reach>,
    by_peer: HashMap<PeerId, DeviceId>,
    connection_ips: HashMap<PeerId, IpAddr>,
    /// Identify's listen addresses of connected peers whose Hello binding has not verified
    /// yet: identify often answers first, and its addresses must reach Kademlia once the peer
    /// proves it is a member (identify sends them only once per connection).
    identified: HashMap<PeerId, Vec<Multiaddr>>,
    /// The peers proven to be members, shared with the relay's gate.
    member_peers: Arc<RwLock<HashSet<PeerId>>>,
    /// The circuit listener at CloudPal's relay, once asked for; cleared if the relay refuses
    /// or drops it (say, it had not verified our Hello yet), so that it is asked again.
    relay_listen: Option<libp2p::core::transport::ListenerId>,
    /// Every control connection and whether it is relayed.
    control_links: HashMap<libp2p::swarm::ConnectionId, (PeerId, bool)>,
    /// Members that told us we are revoked and were asked for the log (once each).
    revocation_checks: HashSet<PeerId>,
    /// Invite proofs checked per source address (INV-03).
    invite_attempts: protocol::ratelimit::RateLimiter,
    /// Logs on their way to devices added from request codes, by their peer id.
    deliveries: HashMap<PeerId, Delivery>,
    said_revoked: bool,
    listen_addrs: BTreeSet<Multiaddr>,
    bootstrap: Vec<Multiaddr>,
    /// Peers other members told us about, not yet proven or connected: redialled.
    candidates: BTreeMap<PeerId, BTreeSet<Multiaddr>>,
    last_candidate_dial: Option<Instant>,
    last_presence: Option<Instant>,
    last_announce: Option<Instant>,
    last_lookup: Option<Instant>,
    /// The newest presence record accepted per member (its sequence number).
    presence_seq: HashMap<DeviceId, u64>,
    /// Relay duty (`pal up --cloudpal`).
    cloudpal: bool,
    /// The member doing relay duty for us, and its data address.
    relay: Option<(DeviceId, SocketAddr)>,
    /// Data-plane candidates each member announced for itself, and those others reported.
    announced: BTreeMap<DeviceId, Vec<SocketAddr>>,
    reported: BTreeMap<DeviceId, BTreeSet<SocketAddr>>,
    /// The data plane's view, refreshed every second.
    view: dataplane::DataView,
    last_paths: Option<Instant>,
    /// What peers.txt holds, to write it only on change.
    cached_peers: Vec<String>,
    rng: ChaCha20Rng,
}

/// Runs the node until SIGINT or SIGTERM.
pub async fn run(state: StateDir, options: UpOptions) -> Result<()> {
    let _lock = state.lock()?;
    let identity = state.load_identity()?;
    let store = state.open_store()?;
    let me = identity.device.public_key().device_id();
    let my_record = match store.log().state().devices.get(&me) {
        Some(device) if device.status == DeviceStatus::Revoked => bail!("this device has been revoked from its network; to come back, join with a new invite in a fresh --state directory"),
        Some(device) => device.record.clone(),
        None => bail!("this device is not a member of the network in {}", state.root().display()),
    };
    let network = store.log().network();

    let udp = crate::connected::bind_shared(options.listen)
        .with_context(|| format!("cannot listen on {}: is another node using it?", options.listen))?;
    let data_port = udp.local_addr()?.port();

    let mut rng = os_rng()?;
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut device = Device::new(
        DeviceConfig {
            static_secret: identity.static_secret.clone(),
            psk: network_psk(&network),
            under_load_threshold: protocol::device::DEFAULT_UNDER_LOAD_THRESHOLD,
            mtu: protocol::wire::DEFAULT_MTU,
            clock: WallClock { anchor: Instant::now(), unix_time_at_anchor: unix_now },
        },
        seed,
    );
    let member_peers = Arc::new(RwLock::new(HashSet::new()));
    let mut swarm = build_swarm(&identity.libp2p, options.cloudpal, member_peers.clone())?;
    let tcp_address = socket_multiaddr(options.listen, false);
    let quic_address = socket_multiaddr(SocketAddr::new(options.listen.ip(), options.listen.port().wrapping_add(1)), true);
    swarm.listen_on(tcp_address).context("cannot listen for the control plane (TCP)")?;
    swarm.listen_on(quic_address).context("cannot listen for the control plane (QUIC)")?;

    let active_keys = Arc::new(RwLock::new(BTreeSet::new()));
    let keys = active_keys.clone();
    device.set_authorizer(Box::new(move |key| keys.read().is_ok_and(|k| k.contains(key))));
    device.set_relay_server(options.cloudpal);
    let tun_config = dataplane::TunConfig {
        name: options.tun_name.clone(),
        ipv4: my_record.overlay_ipv4,
        ipv6: my_record.overlay_ipv6,
        offload: options.offload,
    };
    let data = dataplane::spawn(device, udp, tun_config).await?;
    // The control socket comes last: a node that failed to start leaves none behind.
    let socket_path = state.socket_path();
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path).context("cannot open the control socket")?;
    std::fs::set_permissions(&socket_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let (control_tx, mut control_rx) = mpsc::channel(CONTROL_QUEUE);
    tokio::spawn(serve_control(listener, control_tx));

    let mut bootstrap = options.bootstrap.clone();
    bootstrap.extend(state.cached_peers().iter().filter_map(|a| a.parse().ok()));
    let mut node = Node {
        state,
        peer_id: *swarm.local_peer_id(),
        binding: {
            let message = binding_message(&network, swarm.local_peer_id());
            Binding {
                device_key: (*identity.device.public_key().as_bytes()).into(),
                signature: (*identity.device.sign(&message).as_bytes()).into(),
            }
        },
        identity,
        me,
        network,
        store,
        data,
        data_port,
        active_keys,
        reach: BTreeMap::new(),
        by_peer: HashMap::new(),
        connection_ips: HashMap::new(),
        identified: HashMap::new(),
        member_peers,
        relay_listen: None,
        control_links: HashMap::new(),
        revocation_checks: HashSet::new(),
        invite_attempts: protocol::ratelimit::RateLimiter::new(INVITE_ATTEMPT_INTERVAL, INVITE_ATTEMPT_BURST),
        deliveries: HashMap::new(),
        said_revoked: false,
        listen_addrs: BTreeSet::new(),
        bootstrap,
        candidates: BTreeMap::new(),
        last_candidate_dial: None,
        last_presence: None,
        last_announce: None,
        last_lookup: None,
        presence_seq: HashMap::new(),
        cloudpal: options.cloudpal,
        relay: None,
        announced: BTreeMap::new(),
        reported: BTreeMap::new(),
        view: dataplane::DataView::default(),
        last_paths: None,
        cached_peers: Vec::new(),
        rng,
    };
    node.apply_membership();
    for address in node.bootstrap.clone() {
        let _ = swarm.dial(address);
    }
    tracing::info!(cloudpal = options.cloudpal, "node up");

    let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
    let mut refresh = tokio::time::interval(VIEW_INTERVAL);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            event = swarm.select_next_some() => node.on_swarm_event(&mut swarm, event),
            Some((request, reply)) = control_rx.recv() => node.on_control(&mut swarm, request, reply).await,
            _ = maintenance.tick() => node.maintain(&mut swarm),
            _ = refresh.tick() => node.refresh_view().await,
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    let _ = std::fs::remove_file(node.state.socket_path());
    // Say goodbye: closing the connections lets peers see us gone at once (a QUIC connection
    // left to its idle timeout looks alive for seconds more, delaying their DHT lookups).
    for peer in swarm.connected_peers().copied().collect::<Vec<_>>() {
        let _ = swarm.disconnect_peer_id(peer);
    }
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        while swarm.network_info().num_peers() > 0 {
            swarm.select_next_some().await;
        }
    })
    .await;
    tracing::info!("node down");
    Ok(())
}

impl Node {
    // ---- data plane ----------------------------------------------------------------------

    /// Queues a command for the data plane. The queue holds more than a whole network's worth
    /// of peers (512 devices), so a full membership refresh always fits; if it ever does not,
    /// the next refresh repairs what was dropped.
    fn command(&self, command: DataCommand) {
        if self.data.try_send(command).is_err() {
            tracing::warn!("data-plane command queue full; a peer update waits for the next refresh");
        }
    }

    /// Makes the data plane match the membership state: every active member a peer (with its
    /// overlay addresses as allowed IPs), every revoked one gone at once.
    fn apply_membership(&mut self) {
        let state = self.store.log().state().clone();
        let mut active = BTreeSet::new();
        for (id, device) in &state.devices {
            let key = device.record.static_key;
            if device.status == DeviceStatus::Revoked {
                self.command(DataCommand::RemovePeer(key));
                self.reach.remove(id);
                continue;
            }
            active.insert(key);
            if *id == self.me {
                continue;
            }
            self.command(DataCommand::UpsertPeer(PeerConfig {
                static_public: key,
                allowed_ips: vec![
                    IpPrefix::host(IpAddr::V4(device.record.overlay_ipv4)),
                    IpPrefix::host(IpAddr::V6(device.record.overlay_ipv6)),
                ],
                endpoint: self.reach.get(id).and_then(|r| r.data_endpoint),
                persistent_keepalive: self.relay.filter(|(relay, _)| relay == id).map(|_| RELAY_KEEPALIVE),
            }));
            self.reach.entry(*id).or_default();
        }
        if let Ok(mut keys) = self.active_keys.write() {
            *keys = active;
        }
    }

    // ---- control plane -------------------------------------------------------------------

    fn on_swarm_event(&mut self, swarm: &mut Swarm<Behaviour>, event: SwarmEvent<BehaviourEvent>) {
        match &event {
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                self.control_links.insert(*connection_id, (*peer_id, endpoint.is_relayed()));
            }
            SwarmEvent::ConnectionClosed { connection_id, .. } => {
                self.control_links.remove(connection_id);
            }
            SwarmEvent::ListenerClosed { listener_id, .. } if self.relay_listen == Some(*listener_id) => {
                self.relay_listen = None;
            }
            _ => {}
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                // CloudPal's public addresses are its external ones: the relay hands them to
                // the members that reserve a circuit through it.
                if self.cloudpal && is_dialable(&address) {
                    swarm.add_external_address(address.clone());
                }
                self.listen_addrs.insert(address);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } if self.deliveries.contains_key(&peer_id) => {
                self.deliver_next(swarm, peer_id);
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                if let Some(ip) = multiaddr_ip(endpoint.get_remote_address()) {
                    self.connection_ips.insert(peer_id, ip);
                }
                if endpoint.is_dialer() {
                    let request = Request::Hello {
                        binding: self.binding(),
                        data_port: self.data_port,
                        summary: self.summary().into(),
                        candidates: self.own_candidates(),
                        relay: self.cloudpal,
                    };
                    swarm.behaviour_mut().control.send_request(&peer_id, request);
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.identified.remove(&peer_id);
                if let Some(reach) = self.by_peer.get(&peer_id).and_then(|id| self.reach.get_mut(id)) {
                    reach.connected = false;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                let addresses: Vec<Multiaddr> =
                    info.listen_addrs.into_iter().filter(is_dialable).take(MAX_CANDIDATE_ADDRESSES).collect();
                self.identified.insert(peer_id, addresses);
                if self.by_peer.contains_key(&peer_id) {
                    self.admit_to_dht(swarm, peer_id);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { record: Some(record), .. },
            })) => self.store_record(swarm, record),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))),
                ..
            })) => self.act_on_record(swarm, &found.record),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event { result, .. })) => {
                tracing::debug!(direct = result.is_ok(), "hole punch for a relayed control connection");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => {
                if let Some(reach) = self.by_peer.get(&peer).and_then(|id| self.reach.get_mut(id)) {
                    reach.rtt = Some(rtt);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Control(request_response::Event::Message { peer, message, .. })) => {
                match message {
                    request_response::Message::Request { request, channel, .. } => {
                        let response = self.on_request(swarm, peer, request);
                        let _ = swarm.behaviour_mut().control.send_response(channel, response);
                    }
                    request_response::Message::Response { response, .. } => self.on_response(swarm, peer, response),
                }
            }
            _ => {}
        }
    }

    fn on_request(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, request: Request) -> Response {
        match request {
            Request::Hello { binding, data_port, summary, candidates, relay } => {
                let device = match self.verify_signed_binding(&peer, &binding) {
                    Some((device, DeviceStatus::Active)) => device,
                    Some((_, DeviceStatus::Revoked)) => return Response::Revoked,
                    None => return refused("not a member of this network"),
                };
                self.learn_peer(swarm, peer, device, data_port);
                self.learn_candidates(device, &candidates, relay);
                if relay {
                    self.listen_via_relay(swarm, peer, data_port);
                }
                self.pull_if_behind(swarm, peer, &summary);
                Response::Hello {
                    binding: self.binding(),
                    data_port: self.data_port,
                    summary: self.summary().into(),
                    peers: self.known_peers(),
                    candidates: self.own_candidates(),
                    relay: self.cloudpal,
                }
            }
            Request::Deliver { .. } => refused("this device already belongs to a network"),
            Request::Paths { candidates } => {
                let Some(device) = self.by_peer.get(&peer).copied() else {
                    return refused("not a member of this network");
                };
                self.learn_candidates(device, &candidates, false);
                Response::Paths { peers: self.known_peers() }
            }
            Request::Sync { binding, invite, summary } => {
                // Members get everything; a revoked device gets the log up to its revocation
                // (so it learns it was cut off) and nothing newer; a joiner proves its invite.
                let mut horizon = None;
                match binding.and_then(|b| self.verify_signed_binding(&peer, &b)) {
                    Some((_, DeviceStatus::Active)) => {}
                    Some((device, DeviceStatus::Revoked)) => {
                        horizon = self.store.log().revocation_of(&device);
                        if horizon.is_none() {
                            return refused("not a member of this network");
                        }
                    }
                    None => {
                        let Some(proof) = invite else { return refused("not a member of this network") };
                        // INV-03: guessing is hopeless (256-bit secrets) and also slow: a few
                        // attempts per source, then one every few seconds.
                        let source = self.connection_ips.get(&peer).copied().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                        if !self.invite_attempts.allow(source, Instant::now()) {
                            return refused("too many invite attempts from this address; wait a minute and try again");
                        }
                        if let Err(reason) = self.verify_invite_proof(&peer, &proof) {
                            return refused(reason);
                        }
                    }
                }
                match decode_summary(&summary) {
                    Some(summary) => {
                        let batches = match horizon {
                            Some(horizon) => membership::sync::missing_up_to(self.store.log(), &summary, horizon),
                            None => missing_for(self.store.log(), &summary),
                        };
                        let mut batches = batches.into_iter();
                        let batch = batches.next().unwrap_or_default();
                        Response::Entries { batch: batch.into_iter().map(Into::into).collect(), more: batches.next().is_some() }
                    }
                    None => refused("malformed summary"),
                }
            }
            Request::Join { entry } => {
                let now = unix_now();
                let result = Entry::decode(&entry)
                    .map_err(|e| e.to_string())
                    .and_then(|entry| self.store.admit_join(entry, now).map_err(|e| e.to_string()));
                match result {
                    Ok(()) => {
                        self.membership_changed(swarm);
                        Response::Accepted
                    }
                    Err(reason) => refused(&format!("join refused: {reason}")),
                }
            }
            Request::Announce { summary } => {
                if self.by_peer.contains_key(&peer) {
                    self.pull_if_behind(swarm, peer, &summary);
                }
                Response::Accepted
            }
        }
    }

    fn on_response(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, response: Response) {
        match response {
            Response::Hello { binding, data_port, summary, peers, candidates, relay } => {
                let Some(device) = self.verify_binding(&peer, &binding) else { return };
                self.learn_peer(swarm, peer, device, data_port);
                self.learn_candidates(device, &candidates, relay);
                if relay {
                    self.listen_via_relay(swarm, peer, data_port);
                }
                for entry in peers {
                    self.learn_addresses(swarm, entry);
                }
                self.pull_if_behind(swarm, peer, &summary);
            }
            Response::Paths { peers } => {
                if self.by_peer.contains_key(&peer) {
                    for entry in peers {
                        self.learn_addresses(swarm, entry);
                    }
                }
            }
            Response::Entries { batch, more } => {
                let batch: Vec<Vec<u8>> = batch.into_iter().map(|b| b.to_vec()).collect();
                match self.store.ingest_encoded(&batch) {
                    Ok(0) => {}
                    Ok(_) => {
                        self.membership_changed(swarm);
                        if more {
                            self.request_sync(swarm, peer);
                        }
                    }
                    Err(error) => tracing::debug!(%error, "sync batch refused"),
                }
            }
            Response::Accepted | Response::Refused { .. } if self.deliveries.contains_key(&peer) => {
                self.delivery_answered(swarm, peer, response);
            }
            Response::Revoked => {
                // A member says we are revoked: see for ourselves in the signed log, once.
                if !self.revoked() && self.revocation_checks.insert(peer) {
                    self.request_sync(swarm, peer);
                }
            }
            Response::Refused { reason } => tracing::debug!(%reason, "a peer refused a request"),
            Response::Accepted => {}
        }
    }

    /// After the log changed: refresh the data plane and tell every connected member.
    fn membership_changed(&mut self, swarm: &mut Swarm<Behaviour>) {
        self.apply_membership();
        if self.revoked() {
            if !self.said_revoked {
                self.said_revoked = true;
                tracing::warn!("{REVOKED}");
            }
            self.command(DataCommand::RemoveAll);
            return;
        }
        // Push on append, to every connected device we knew as a member — including one just
        // revoked, which then pulls the log up to its revocation and stops by itself.
        self.announce(swarm);
        let state = self.store.log().state();
        self.by_peer.retain(|_, device| state.devices.get(device).is_some_and(|d| d.status == DeviceStatus::Active));
        self.share_members();
    }

    /// Shows this log's summary to every connected member; whoever lacks something pulls it.
    fn announce(&mut self, swarm: &mut Swarm<Behaviour>) {
        let summary = self.summary();
        for peer in self.by_peer.keys().copied().collect::<Vec<_>>() {
            swarm.behaviour_mut().control.send_request(&peer, Request::Announce { summary: summary.clone().into() });
        }
    }

    fn pull_if_behind(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, summary: &[u8]) {
        if let Some(summary) = decode_summary(summary)
            && !membership::sync::has_everything_of(self.store.log(), &summary)
        {
            self.request_sync(swarm, peer);
        }
    }

    fn request_sync(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        let request = Request::Sync { binding: Some(self.binding()), invite: None, summary: self.summary().into() };
        swarm.behaviour_mut().control.send_request(&peer, request);
    }

    /// Publishes this device's signed presence record: its peer id and listen addresses.
    fn publish_presence(&mut self, swarm: &mut Swarm<Behaviour>) {
        let addresses: Vec<Multiaddr> = self.listen_addrs.iter().filter(|a| is_dialable(a)).cloned().collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let seq = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let (key, value) = presence::publish(&self.network, &self.identity.device, &self.peer_id, &addresses, seq, now.as_secs());
        let record = kad::Record { key, value, publisher: None, expires: Some(Instant::now() + presence::RECORD_TTL) };
        let _ = swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One);
    }

    /// A record someone put to us: stored only if a current member signed it for its own key
    /// and it is newer than the one held (DHT-01); dropped unseen otherwise.
    fn store_record(&mut self, swarm: &mut Swarm<Behaviour>, mut record: kad::Record) {
        let kad = &mut swarm.behaviour_mut().kad;
        let held = kad.store_mut().get(&record.key).and_then(|r| presence::seq_of(&r.value));
        let verdict = presence::verify(&self.network, self.store.log().state(), record.key.as_ref(), &record.value, unix_now(), held);
        match verdict {
            Ok(presence) => {
                let left = presence.expires.saturating_sub(unix_now());
                record.expires = Some(Instant::now() + Duration::from_secs(left));
                let _ = kad.store_mut().put(record);
            }
            Err(reason) => tracing::debug!(%reason, "dropped a DHT record"),
        }
    }

    /// A record a lookup found: dialled only if it verifies and is newer than the last one.
    fn act_on_record(&mut self, swarm: &mut Swarm<Behaviour>, record: &kad::Record) {
        let state = self.store.log().state();
        let Ok(presence) = presence::verify(&self.network, state, record.key.as_ref(), &record.value, unix_now(), None) else { return };
        if self.presence_seq.get(&presence.device).is_some_and(|held| presence.seq <= *held) {
            return;
        }
        if presence.device == self.me || presence.peer == self.peer_id || swarm.is_connected(&presence.peer) {
            self.presence_seq.insert(presence.device, presence.seq);
            return;
        }
        let addresses: Vec<Multiaddr> = presence.addresses.into_iter().filter(is_dialable).collect();
        self.remember_addresses(presence.peer, &addresses);
        // Dialled even while another dial to the peer is under way (a redial to an old
        // address must not swallow the news); remembered only once dialled.
        let options = libp2p::swarm::dial_opts::DialOpts::peer_id(presence.peer)
            .condition(libp2p::swarm::dial_opts::PeerCondition::Disconnected)
            .addresses(addresses)
            .build();
        if swarm.dial(options).is_ok() {
            self.presence_seq.insert(presence.device, presence.seq);
        }
    }

    /// Publishes who the proven members are to the relay's gate.
    fn share_members(&self) {
        if let Ok(mut members) = self.member_peers.write() {
            *members = self.by_peer.keys().copied().collect();
        }
    }

    /// Reserves a circuit at CloudPal (`relay`, listening for control traffic at `port`), so
    /// that members which cannot reach us directly reach us through it, and DCUtR can then try
    /// a direct connection. Once; CloudPal itself does not.
    fn listen_via_relay(&mut self, swarm: &mut Swarm<Behaviour>, relay: PeerId, port: u16) {
        if self.cloudpal || self.relay_listen.is_some() {
            return;
        }
        let Some(ip) = self.connection_ips.get(&relay).copied() else { return };
        if let Ok(listener) = swarm.listen_on(circuit_address(SocketAddr::new(ip, port), relay)) {
            self.relay_listen = Some(listener);
        }
    }

    /// CloudPal's peer id and `/…/p2p/CLOUDPAL/p2p-circuit`, through which members that hold a
    /// reservation there can be dialled; none without a relay or when we are it.
    fn relay_circuit_base(&self) -> Option<(PeerId, Multiaddr)> {
        if self.cloudpal {
            return None;
        }
        let (device, endpoint) = self.relay?;
        let peer = self.reach.get(&device)?.peer_id?;
        Some((peer, circuit_address(endpoint, peer)))
    }

    /// How the control plane reaches `peer`: "direct", "relayed" (through CloudPal) or "none".
    fn control_link(&self, peer: Option<PeerId>) -> &'static str {
        let links: Vec<bool> = self.control_links.values().filter(|(p, _)| Some(*p) == peer).map(|(_, relayed)| *relayed).collect();
        match (links.iter().any(|r| !r), links.is_empty()) {
            (true, _) => "direct",
            (false, false) => "relayed",
            (false, true) => "none",
        }
    }

    /// Feed a verified member's identify addresses to Kademlia (members only: the routing
    /// table is how others find us, so outsiders stay out of it).
    fn admit_to_dht(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        let Some(addresses) = self.identified.remove(&peer) else { return };
        for address in &addresses {
            swarm.behaviour_mut().kad.add_address(&peer, address.clone());
        }
        if let Some(reach) = self.by_peer.get(&peer).and_then(|id| self.reach.get_mut(id)) {
            reach.multiaddrs.extend(addresses);
        }
    }

    /// A peer proved to be member `device`: where its data plane listens, and (now that it is
    /// known to be a member) its addresses go to Kademlia.
    fn learn_peer(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, device: DeviceId, data_port: u16) {
        self.by_peer.insert(peer, device);
        self.share_members();
        self.admit_to_dht(swarm, peer);
        let endpoint = self.connection_ips.get(&peer).map(|ip| SocketAddr::new(*ip, data_port));
        let reach = self.reach.entry(device).or_default();
        reach.peer_id = Some(peer);
        reach.connected = true;
        reach.met = true;
        if let Some(endpoint) = endpoint {
            reach.data_endpoint = Some(endpoint);
            if let Some(record) = self.store.log().state().devices.get(&device) {
                self.command(DataCommand::SetEndpoint(record.record.static_key, endpoint));
            }
        }
    }

    /// Addresses of a member another member told us about: dial it now if we are not
    /// connected, and keep them as candidates for the maintenance redials. Who it is gets
    /// proven by its own Hello binding, never by what we were told.
    fn learn_addresses(&mut self, swarm: &mut Swarm<Behaviour>, entry: PeerAddresses) {
        let Ok(peer_id) = PeerId::from_bytes(&entry.peer_id) else { return };
        if peer_id == *self.local_peer_id() {
            return;
        }
        if let Some(device) = entry.device.map(|id| DeviceId::from_bytes(*id))
            && device != self.me
            && self.store.log().state().devices.get(&device).is_some_and(|d| d.status == DeviceStatus::Active)
        {
            let reported = self.reported.entry(device).or_default();
            for candidate in entry.candidates.iter().filter_map(|c| c.parse::<SocketAddr>().ok()) {
                if reported.len() < protocol::paths::MAX_CANDIDATES {
                    reported.insert(candidate);
                }
            }
            self.apply_candidates(device);
        }
        let addresses: Vec<Multiaddr> = entry.multiaddrs.iter().filter_map(|a| a.parse().ok()).filter(is_dialable).collect();
        if let Some(device) = self.by_peer.get(&peer_id).copied() {
            self.reach.entry(device).or_default().multiaddrs.extend(addresses.iter().cloned());
        }
        self.remember_addresses(peer_id, &addresses);
        if !swarm.is_connected(&peer_id) {
            let options = libp2p::swarm::dial_opts::DialOpts::peer_id(peer_id).addresses(addresses).build();
            let _ = swarm.dial(options);
        }
    }

    /// Keeps `addresses` for the maintenance redials of `peer`, within the per-peer bound.
    fn remember_addresses(&mut self, peer: PeerId, addresses: &[Multiaddr]) {
        let candidates = self.candidates.entry(peer).or_default();
        for address in addresses {
            if candidates.len() < MAX_CANDIDATE_ADDRESSES {
                candidates.insert(address.clone());
            }
        }
    }

    fn known_peers(&self) -> Vec<PeerAddresses> {
        let state = self.store.log().state();
        self.reach
            .iter()
            .filter_map(|(device, reach)| {
                let key = state.devices.get(device)?.record.static_key;
                // What it announced, and where our data plane last heard it from: behind a
                // NAT, that is its reflexive address.
                let heard = self.view.peers.get(&key).filter(|v| v.path == PathKind::Direct).and_then(|v| v.endpoint);
                let mut candidates: Vec<String> = heard.iter().map(ToString::to_string).collect();
                candidates.extend(self.announced.get(device).into_iter().flatten().map(ToString::to_string));
                Some(PeerAddresses {
                    peer_id: reach.peer_id?.to_bytes().into(),
                    multiaddrs: reach.multiaddrs.iter().map(ToString::to_string).collect(),
                    data_endpoint: reach.data_endpoint.map(|e| e.to_string()),
                    device: Some((*device.as_bytes()).into()),
                    candidates,
                })
            })
            .collect()
    }

    /// Our data-plane candidates: the addresses of our interfaces (from libp2p's listen
    /// addresses) at the data port, and how peers saw us (reflexive).
    fn own_candidates(&self) -> Vec<String> {
        let mut candidates: Vec<SocketAddr> = self
            .listen_addrs
            .iter()
            .filter_map(multiaddr_ip)
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !self.is_overlay(*ip))
            .map(|ip| SocketAddr::new(ip, self.data_port))
            .chain(self.view.observed.iter().copied())
            .collect();
        candidates.sort();
        candidates.dedup();
        candidates.truncate(protocol::paths::MAX_CANDIDATES);
        candidates.iter().map(ToString::to_string).collect()
    }

    /// Whether `ip` is a member's overlay address (libp2p lists the TUN interface among its
    /// listen addresses; as a data-plane candidate it would route the tunnel through itself).
    fn is_overlay(&self, ip: IpAddr) -> bool {
        self.store.log().state().devices.values().any(|d| ip == IpAddr::V4(d.record.overlay_ipv4) || ip == IpAddr::V6(d.record.overlay_ipv6))
    }

    /// What a member said of itself in a Hello or a path exchange.
    fn learn_candidates(&mut self, device: DeviceId, candidates: &[String], relay: bool) {
        let parsed: Vec<SocketAddr> =
            candidates.iter().filter_map(|c| c.parse().ok()).take(protocol::paths::MAX_CANDIDATES).collect();
        self.announced.insert(device, parsed);
        self.apply_candidates(device);
        if relay && self.relay.is_none_or(|(current, _)| current == device) {
            self.use_relay(device);
        }
    }

    /// Tells the data plane every candidate we know for `device`.
    fn apply_candidates(&mut self, device: DeviceId) {
        let Some(record) = self.store.log().state().devices.get(&device) else { return };
        let mut all: Vec<SocketAddr> = self.reported.get(&device).into_iter().flatten().copied().collect();
        all.extend(self.announced.get(&device).into_iter().flatten().copied());
        all.sort();
        all.dedup();
        let key = record.record.static_key;
        self.command(DataCommand::SetCandidates(key, all));
        // The member is online: have a session ready. After this node restarts, the peer's
        // old session is dead on our side, and it would otherwise take WireGuard's 15 s
        // no-reply rule on its side to notice. A no-op while a session or handshake exists.
        self.command(DataCommand::Connect(key));
    }

    /// Sends through `device` (a member doing relay duty) whenever no direct path works, and
    /// keeps a session with it so that it always knows where we are.
    fn use_relay(&mut self, device: DeviceId) {
        let Some(endpoint) = self.reach.get(&device).and_then(|r| r.data_endpoint) else { return };
        let Some(record) = self.store.log().state().devices.get(&device).map(|d| d.record.clone()) else { return };
        if self.relay == Some((device, endpoint)) {
            return;
        }
        self.relay = Some((device, endpoint));
        self.command(DataCommand::SetRelay(Some((endpoint, record.static_key))));
        self.apply_membership();
        self.command(DataCommand::Connect(record.static_key));
        tracing::info!("relay available");
    }

    /// Refreshes the cached data-plane view.
    async fn refresh_view(&mut self) {
        let (reply, answer) = oneshot::channel();
        if self.data.send(DataCommand::Peers(reply)).await.is_ok()
            && let Ok(view) = answer.await
        {
            self.view = view;
        }
    }

    /// Our binding: signed once at start-up (it covers only the network id and our own peer id).
    fn binding(&self) -> Binding {
        self.binding.clone()
    }

    /// The current member `peer` proves to be, if it does.
    fn verify_binding(&self, peer: &PeerId, binding: &Binding) -> Option<DeviceId> {
        self.verify_signed_binding(peer, binding).and_then(|(id, status)| (status == DeviceStatus::Active).then_some(id))
    }

    /// The device of the log, active or revoked, whose key signed `peer`'s binding.
    fn verify_signed_binding(&self, peer: &PeerId, binding: &Binding) -> Option<(DeviceId, DeviceStatus)> {
        let key = DevicePublicKey::from_bytes(*binding.device_key);
        let signature = protocol::Signature::from_bytes(*binding.signature);
        key.verify(&binding_message(&self.network, peer), &signature).ok()?;
        let id = key.device_id();
        let device = self.store.log().state().devices.get(&id)?;
        (device.record.signing_key == key).then_some((id, device.status))
    }

    /// Whether the log says this device has been revoked.
    fn revoked(&self) -> bool {
        self.store.log().state().devices.get(&self.me).is_some_and(|d| d.status == DeviceStatus::Revoked)
    }

    /// Whether `peer` holds the secret of a usable invite; the reason if not.
    fn verify_invite_proof(&self, peer: &PeerId, proof: &InviteProof) -> Result<(), &'static str> {
        const UNKNOWN: &str = "this invite code is not valid for this network";
        let invite = self.store.log().state().invites.get(&membership::EntryHash(*proof.invite)).ok_or(UNKNOWN)?;
        let mut message = messages::INVITE_PROOF_DOMAIN.to_vec();
        message.extend_from_slice(&self.network.0);
        message.extend_from_slice(&peer.to_bytes());
        invite.key.verify(&message, &protocol::Signature::from_bytes(*proof.signature)).map_err(|_| UNKNOWN)?;
        if invite.consumed_by.is_some() {
            return Err("this invite code has already been used");
        }
        if invite.expires < unix_now() {
            return Err("this invite code has expired; ask for a new one");
        }
        if self.store.log().state().devices.get(&invite.created_by).is_some_and(|d| d.status == DeviceStatus::Revoked) {
            return Err("this invite code was made by a device that has since been revoked; ask for a new one");
        }
        Ok(())
    }

    fn local_peer_id(&self) -> &PeerId {
        &self.peer_id
    }

    fn summary(&self) -> Vec<u8> {
        SyncMessage::Summary(self.store.log().summary()).encode()
    }

    // ---- maintenance and local commands ---------------------------------------------------

    fn maintain(&mut self, swarm: &mut Swarm<Behaviour>) {
        if self.revoked() {
            return; // cut off: nothing to find, nobody to greet
        }
        self.expire_deliveries();
        let now = Instant::now();
        if self.last_paths.is_none_or(|at| now - at >= PATHS_INTERVAL) {
            self.last_paths = Some(now);
            let candidates = self.own_candidates();
            for peer in self.by_peer.keys().copied().collect::<Vec<_>>() {
                if swarm.is_connected(&peer) {
                    swarm.behaviour_mut().control.send_request(&peer, Request::Paths { candidates: candidates.clone() });
                }
            }
        }
        // Anti-entropy: a push or pull lost with a closing connection must not leave a member
        // behind until the next change; every so often each member shows its summary again.
        if self.last_announce.is_none_or(|at| now - at >= ANNOUNCE_INTERVAL) {
            self.last_announce = Some(now);
            self.announce(swarm);
            // A circuit reservation refused or lost is asked for again.
            if let Some((device, endpoint)) = self.relay
                && let Some(peer) = self.reach.get(&device).and_then(|r| r.peer_id)
                && swarm.is_connected(&peer)
            {
                self.listen_via_relay(swarm, peer, endpoint.port());
            }
        }
        if self.last_presence.is_none_or(|at| now - at >= PRESENCE_INTERVAL) {
            self.last_presence = Some(now);
            self.publish_presence(swarm);
        }
        if self.last_lookup.is_none_or(|at| now - at >= PRESENCE_LOOKUP_INTERVAL) {
            self.last_lookup = Some(now);
            let unix = unix_now();
            let state = self.store.log().state();
            for (id, _) in state.active_devices().filter(|(id, _)| **id != self.me) {
                if !self.reach.get(id).is_some_and(|r| r.connected) {
                    swarm.behaviour_mut().kad.get_record(presence::key(&self.network, unix, id));
                }
            }
        }
        // A member behind a NAT is reachable through CloudPal's relay (where it holds a
        // reservation): its circuit address is derived, not learnt, so it is always tried.
        let circuit_base = self.relay_circuit_base();
        for (id, reach) in self.reach.iter_mut() {
            let interval = if reach.met { REDIAL_INTERVAL } else { FIRST_DIAL_INTERVAL };
            if *id == self.me || reach.connected || reach.last_dial.is_some_and(|at| now - at < interval) {
                continue;
            }
            reach.last_dial = Some(now);
            if let Some(peer) = reach.peer_id {
                let mut addresses: Vec<Multiaddr> = reach.multiaddrs.iter().cloned().collect();
                if let Some(base) = circuit_base.as_ref().filter(|(relay, _)| *relay != peer) {
                    addresses.push(base.1.clone().with(libp2p::multiaddr::Protocol::P2p(peer)));
                }
                let _ = swarm.dial(libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(addresses).build());
            }
        }
        if self.last_candidate_dial.is_none_or(|at| now - at >= REDIAL_INTERVAL) {
            self.last_candidate_dial = Some(now);
            for (peer, addresses) in &self.candidates {
                if !swarm.is_connected(peer) {
                    let addresses: Vec<Multiaddr> = addresses.iter().cloned().collect();
                    let _ = swarm.dial(libp2p::swarm::dial_opts::DialOpts::peer_id(*peer).addresses(addresses).build());
                }
            }
            if self.by_peer.is_empty() {
                for address in self.bootstrap.clone() {
                    let _ = swarm.dial(address);
                }
            }
        }
        let addresses: Vec<String> = self
            .reach
            .values()
            .filter_map(|r| Some((r.peer_id?, r.multiaddrs.iter().next()?.clone())))
            .filter_map(|(peer, address)| address.with_p2p(peer).ok())
            .map(|a| a.to_string())
            .collect();
        // Written only when it changes: this runs four times a second, and an fsync per tick
        // woke the disk and the CPU for nothing.
        if !addresses.is_empty() && addresses != self.cached_peers {
            let _ = self.state.cache_peers(&addresses);
            self.cached_peers = addresses;
        }
    }

    async fn on_control(&mut self, swarm: &mut Swarm<Behaviour>, request: ControlRequest, reply: oneshot::Sender<ControlResponse>) {
        let response = match request {
            ControlRequest::Status => self.status(swarm).await,
            ControlRequest::DeviceList => Ok(device_list_json(self.store.log().state())),
            ControlRequest::Log => Ok(log_json(self.store.log())),
            ControlRequest::Invite { name, role, ttl_seconds } => self.invite(swarm, &name, &role, ttl_seconds),
            ControlRequest::Revoke { name } => self.revoke(swarm, &name),
            ControlRequest::Add { code, role } => {
                // Answered once the new device has the log (or cannot get it).
                match self.add_device(swarm, &code, &role) {
                    Ok(peer) => {
                        if let Some(delivery) = self.deliveries.get_mut(&peer) {
                            delivery.reply = Some(reply);
                        }
                    }
                    Err(error) => {
                        let _ = reply.send(ControlResponse::Error(error));
                    }
                }
                return;
            }
            ControlRequest::Ping { name, count } => {
                // The data plane answers when the pings are done; the control loop goes on.
                match self.start_ping(&name, count) {
                    Ok(answer) => {
                        tokio::spawn(async move {
                            let result = answer.await.map_err(|_| "the data plane stopped".to_owned());
                            let _ = reply.send(match result {
                                Ok(value) => ControlResponse::Ok(value),
                                Err(error) => ControlResponse::Error(error),
                            });
                        });
                    }
                    Err(error) => {
                        let _ = reply.send(ControlResponse::Error(error));
                    }
                }
                return;
            }
        };
        let _ = reply.send(match response {
            Ok(value) => ControlResponse::Ok(value),
            Err(error) => ControlResponse::Error(error),
        });
    }

    fn require_admin(&self) -> Result<(), String> {
        match self.store.log().state().devices.get(&self.me) {
            Some(device) if device.record.role == Role::Admin && device.status == DeviceStatus::Active => Ok(()),
            _ => Err("only an admin device can do this".into()),
        }
    }

    fn invite(&mut self, swarm: &mut Swarm<Behaviour>, name: &str, role: &str, ttl: u64) -> Result<serde_json::Value, String> {
        self.require_admin()?;
        let role: Role = role.parse()?;
        if !membership::entry::validate_name(name) {
            return Err(format!("{name:?} is not a valid device name: use letters, digits, '-', '_' or '.'"));
        }
        let secret = protocol::DeviceSigningKey::generate(&mut self.rng);
        let now = unix_now();
        let entry = self
            .store
            .append(
                Operation::Invite { invite_key: secret.public_key(), role, expires: now + ttl, name_hint: name.to_owned() },
                &self.identity.device,
                None,
                now,
            )
            .map_err(|e| format!("cannot invite: {e}"))?;
        self.membership_changed(swarm);
        // Where the new device can reach a member: this device first, then CloudPal (always
        // on, so the invite works while this device is off), then other members.
        let own = self.listen_addrs.iter().filter(|a| is_dialable(a)).filter_map(|a| a.clone().with_p2p(self.peer_id).ok());
        let relay = self.relay.map(|(device, _)| device);
        let mut others: Vec<(&DeviceId, PeerId, &Reach)> =
            self.reach.iter().filter(|(id, _)| **id != self.me).filter_map(|(id, r)| Some((id, r.peer_id?, r))).collect();
        others.sort_by_key(|(id, _, reach)| (Some(**id) != relay, !reach.connected));
        let members = others
            .into_iter()
            .flat_map(|(_, peer, reach)| reach.multiaddrs.iter().filter_map(move |a| a.clone().with_p2p(peer).ok()));
        let bootstrap: Vec<Multiaddr> = own.chain(members).collect();
        let code = InviteCode { network: self.network, invite: entry.hash(), secret, bootstrap };
        Ok(json!({ "code": code.encode(), "expires": now + ttl, "role": role.as_str() }))
    }

    /// `pal device add CODE --role ROLE`: appends the requesting device and starts delivering
    /// the log to it; the peer to which it goes.
    fn add_device(&mut self, swarm: &mut Swarm<Behaviour>, code: &str, role: &str) -> Result<PeerId, String> {
        self.require_admin()?;
        let code = RequestCode::decode(code).map_err(|e| e.to_string())?;
        let role: Role = role.parse()?;
        let state = self.store.log().state();
        if !membership::entry::validate_name(&code.name) {
            return Err(format!("{:?} is not a valid device name", code.name));
        }
        let device_id = code.signing_key.device_id();
        if state.devices.contains_key(&device_id) {
            return Err(format!("{} is already in this network's log; see `pal device list`", code.name));
        }
        let founder = self.store.log().entries().next().map(|g| g.author()).ok_or("empty log")?;
        let (overlay_ipv4, overlay_ipv6) = (0..64)
            .map(|attempt| membership::overlay::derive(&founder, &device_id, attempt))
            .find(|(v4, v6)| !state.active_devices().any(|(_, d)| d.record.overlay_ipv4 == *v4 || d.record.overlay_ipv6 == *v6))
            .ok_or("no free overlay address")?;
        let record = membership::DeviceRecord {
            name: code.name.clone(),
            signing_key: code.signing_key,
            static_key: code.static_key,
            role,
            overlay_ipv4,
            overlay_ipv6,
        };
        self.store
            .append(Operation::AddDevice { device: record }, &self.identity.device, None, unix_now())
            .map_err(|e| format!("cannot add {}: {e}", code.name))?;
        self.membership_changed(swarm);
        // Members reach it where its code says; it is dialled by who it is.
        let reach = self.reach.entry(device_id).or_default();
        reach.peer_id = Some(code.peer);
        reach.multiaddrs.extend(code.addresses.iter().cloned());
        let empty = membership::sync::Summary { network: self.network, heads: Vec::new(), sample: Vec::new() };
        let batches = missing_for(self.store.log(), &empty).into();
        self.deliveries.insert(code.peer, Delivery { name: code.name, role, batches, started: Instant::now(), reply: None });
        if swarm.is_connected(&code.peer) {
            self.deliver_next(swarm, code.peer);
        } else {
            let options = libp2p::swarm::dial_opts::DialOpts::peer_id(code.peer)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .addresses(code.addresses)
                .build();
            let _ = swarm.dial(options);
        }
        Ok(code.peer)
    }

    fn deliver_next(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        let Some(delivery) = self.deliveries.get_mut(&peer) else { return };
        if let Some(batch) = delivery.batches.pop_front() {
            let more = !delivery.batches.is_empty();
            let request = Request::Deliver { batch: batch.into_iter().map(Into::into).collect(), more };
            swarm.behaviour_mut().control.send_request(&peer, request);
        }
    }

    fn delivery_answered(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, response: Response) {
        let done = match response {
            Response::Accepted if self.deliveries.get(&peer).is_some_and(|d| !d.batches.is_empty()) => {
                self.deliver_next(swarm, peer);
                return;
            }
            Response::Accepted => self.deliveries.get(&peer).map(|d| Ok(json!({ "added": d.name, "role": d.role.as_str() }))),
            Response::Refused { reason } => Some(Err(format!("the new device refused the log: {reason}"))),
            _ => None,
        };
        if let (Some(result), Some(delivery)) = (done, self.deliveries.remove(&peer)) {
            finish_delivery(delivery, result);
        }
    }

    /// Gives up on deliveries that got nowhere.
    fn expire_deliveries(&mut self) {
        let stale: Vec<PeerId> = self.deliveries.iter().filter(|(_, d)| d.started.elapsed() > DELIVERY_TIMEOUT).map(|(p, _)| *p).collect();
        for peer in stale {
            if let Some(delivery) = self.deliveries.remove(&peer) {
                let error = format!(
                    "{} is in the log, but its log could not be delivered: is `pal request` still running there, and reachable at the addresses in its code?",
                    delivery.name
                );
                finish_delivery(delivery, Err(error));
            }
        }
    }

    fn revoke(&mut self, swarm: &mut Swarm<Behaviour>, name: &str) -> Result<serde_json::Value, String> {
        self.require_admin()?;
        let state = self.store.log().state();
        let Some((id, _)) = state.active_devices().find(|(_, d)| d.record.name == name) else {
            return Err(format!("no active device named {name:?}; see `pal device list`"));
        };
        let id = *id;
        self.store
            .append(Operation::RevokeDevice { device: id }, &self.identity.device, None, unix_now())
            .map_err(|e| format!("cannot revoke {name}: {e}"))?;
        self.membership_changed(swarm);
        Ok(json!({ "revoked": name }))
    }

    fn start_ping(&mut self, name: &str, count: u32) -> Result<oneshot::Receiver<serde_json::Value>, String> {
        if self.revoked() {
            return Err(REVOKED.into());
        }
        let state = self.store.log().state();
        let Some((_, target)) = state.active_devices().find(|(id, d)| d.record.name == name && **id != self.me) else {
            return Err(format!("no other active device named {name:?}; see `pal device list`"));
        };
        let source = state.devices.get(&self.me).map(|d| d.record.overlay_ipv4).unwrap_or(Ipv4Addr::UNSPECIFIED);
        let (reply, answer) = oneshot::channel();
        let ping = dataplane::Ping { source, target: target.record.overlay_ipv4, count: count.clamp(1, 100) as u16, reply };
        self.data.try_send(DataCommand::Ping(ping)).map_err(|_| "the data plane is busy; try again".to_owned())?;
        Ok(answer)
    }

    async fn status(&self, swarm: &mut Swarm<Behaviour>) -> Result<serde_json::Value, String> {
        let (reply, answer) = oneshot::channel();
        self.data.send(DataCommand::Peers(reply)).await.map_err(|_| "the data plane stopped".to_owned())?;
        let views = answer.await.map_err(|_| "the data plane stopped".to_owned())?.peers;
        let state = self.store.log().state();
        let mine = state.devices.get(&self.me);
        let peers: Vec<serde_json::Value> = state
            .active_devices()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, device)| {
                let view = views.get(&device.record.static_key);
                let stats = view.map(|v| v.stats).unwrap_or_default();
                let reach = self.reach.get(id);
                let path = view.map_or("none", |v| dataplane::path_name(v.path));
                json!({
                    "name": device.record.name,
                    "id": id.to_hex(),
                    "overlay_ipv4": device.record.overlay_ipv4.to_string(),
                    "overlay_ipv6": device.record.overlay_ipv6.to_string(),
                    "path": path,
                    "endpoint": view.and_then(|v| v.endpoint).map(|e| e.to_string()),
                    "rtt_ms": reach.and_then(|r| r.rtt).map(|r| r.as_secs_f64() * 1000.0),
                    "control": self.control_link(reach.and_then(|r| r.peer_id)),
                    "rx_bytes": stats.rx_bytes,
                    "tx_bytes": stats.tx_bytes,
                })
            })
            .collect();
        Ok(json!({
            "device": {
                "name": mine.map(|d| d.record.name.clone()),
                "id": self.me.to_hex(),
                "overlay_ipv4": mine.map(|d| d.record.overlay_ipv4.to_string()),
                "overlay_ipv6": mine.map(|d| d.record.overlay_ipv6.to_string()),
                "status": if self.revoked() { "revoked" } else { "active" },
            },
            "peers": peers,
            "dht_peers": swarm.behaviour_mut().kad.kbuckets().map(|bucket| bucket.num_entries()).sum::<usize>(),
        }))
    }
}

fn finish_delivery(delivery: Delivery, result: Result<serde_json::Value, String>) {
    if let Some(reply) = delivery.reply {
        let _ = reply.send(match result {
            Ok(value) => ControlResponse::Ok(value),
            Err(error) => ControlResponse::Error(error),
        });
    }
}

/// `pal device list --json`.
pub fn device_list_json(state: &membership::State) -> serde_json::Value {
    serde_json::Value::Array(
        state
            .devices
            .iter()
            .map(|(id, device)| {
                json!({
                    "name": device.record.name,
                    "id": id.to_hex(),
                    "role": device.record.role.as_str(),
                    "status": match device.status { DeviceStatus::Active => "active", DeviceStatus::Revoked => "revoked" },
                    "overlay_ipv4": device.record.overlay_ipv4.to_string(),
                    "overlay_ipv6": device.record.overlay_ipv6.to_string(),
                })
            })
            .collect(),
    )
}

/// `pal log --json`: the verified entries in fold order.
pub fn log_json(log: &membership::Log) -> serde_json::Value {
    let state = log.state();
    let name_of = |id: &DeviceId| state.devices.get(id).map(|d| d.record.name.clone()).unwrap_or_else(|| id.to_hex());
    serde_json::Value::Array(
        log.entries()
            .map(|entry| {
                let operation = match entry.operation() {
                    Operation::Genesis { network_name, founder } => json!({"genesis": {"network": network_name, "founder": founder.name}}),
                    Operation::AddDevice { device } => json!({"add_device": {"name": device.name, "role": device.role.as_str()}}),
                    Operation::Invite { role, expires, name_hint, .. } => json!({"invite": {"role": role.as_str(), "expires": expires, "name_hint": name_hint}}),
                    Operation::Join { device, .. } => json!({"join": {"name": device.name, "role": device.role.as_str()}}),
                    Operation::RevokeDevice { device } => json!({"revoke_device": {"name": name_of(device)}}),
                    Operation::SetPolicy { .. } => json!({"set_policy": {}}),
                };
                json!({ "hash": entry.hash().to_hex(), "author": name_of(&entry.author()), "time": entry.contents().time, "operation": operation })
            })
            .collect(),
    )
}

/// Accepts control connections and forwards each request to the event loop.
async fn serve_control(listener: UnixListener, requests: mpsc::Sender<(ControlRequest, oneshot::Sender<ControlResponse>)>) {
    while let Ok((stream, _)) = listener.accept().await {
        let requests = requests.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read).take(MAX_REQUEST_LEN as u64);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<ControlRequest>(&line) {
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    if requests.send((request, reply)).await.is_err() {
                        return;
                    }
                    answer.await.unwrap_or_else(|_| ControlResponse::Error("the node is shutting down".into()))
                }
                Err(_) => ControlResponse::Error("unreadable control request".into()),
            };
            if let Ok(mut text) = serde_json::to_string(&response) {
                text.push('\n');
                let _ = write.write_all(text.as_bytes()).await;
            }
        });
    }
}

fn build_swarm(seed: &[u8; 32], cloudpal: bool, members: Arc<RwLock<HashSet<PeerId>>>) -> Result<Swarm<Behaviour>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(libp2p_keypair(seed))
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| {
            let peer = key.public().to_peer_id();
            let mut config = kad::Config::new(KAD_PROTOCOL);
            // Tail latency under churn is set by the per-query timeout, not hop count.
            config.set_query_timeout(KAD_QUERY_TIMEOUT);
            // Nothing is stored unseen: a record put to us is checked first (DHT-01), and
            // provider records, which nobody signs, are never stored at all.
            config.set_record_filtering(kad::StoreInserts::FilterBoth);
            let store_config = kad::store::MemoryStoreConfig {
                max_value_bytes: presence::MAX_RECORD_LEN,
                max_records: 4096,
                max_providers_per_key: 0,
                ..Default::default()
            };
            let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::with_config(peer, store_config), config);
            // Every node serves the network's own DHT: it is small, and a restarted device must
            // find the others through any of them.
            kad.set_mode(Some(kad::Mode::Server));
            let relay = cloudpal.then(|| {
                // Control traffic only: limits well above libp2p's defaults (2 min, 128 KiB per
                // circuit), which suit strangers, not one owner's devices syncing their log.
                let config = relay::Config {
                    max_circuit_duration: Duration::from_secs(3600),
                    max_circuit_bytes: 64 << 20,
                    reservation_rate_limiters: vec![Box::new(MembersOnly(members.clone()))],
                    circuit_src_rate_limiters: vec![Box::new(MembersOnly(members.clone()))],
                    ..Default::default()
                };
                relay::Behaviour::new(peer, config)
            });
            Behaviour {
                control: control_behaviour(),
                identify: identify::Behaviour::new(
                    identify::Config::new("/cloudpal/1".into(), key.public()).with_push_listen_addr_updates(true),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
                kad,
                relay: relay.into(),
                relay_client,
                dcutr: dcutr::Behaviour::new(peer),
            }
        })?
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(300)))
        .build())
}

/// The network's own Kademlia DHT (not the public IPFS one).
pub const KAD_PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/cloudpal/kad/1.0.0");
const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `pal device add` tries to hand the log to the new device.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopping node waits for its connections to close.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);
/// Invite attempts per source: a burst (a join takes one per log batch), then one per interval.
const INVITE_ATTEMPT_BURST: u32 = 10;
const INVITE_ATTEMPT_INTERVAL: Duration = Duration::from_secs(6);
/// How often a node shows its log summary to its peers unasked (anti-entropy).
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a node republishes its presence record.
const PRESENCE_INTERVAL: Duration = Duration::from_secs(30);
/// How often a node looks up the records of members it is not connected to.
const PRESENCE_LOOKUP_INTERVAL: Duration = Duration::from_secs(5);

/// The behaviour `pal join` runs while it is not yet a member: the control protocol only.
#[derive(NetworkBehaviour)]
pub(crate) struct Join {
    pub(crate) control: request_response::Behaviour<messages::Codec>,
}

pub(crate) fn build_swarm_for_join(seed: &[u8; 32]) -> Result<Swarm<Join>> {
    swarm_with(seed, |_| Join { control: control_behaviour() })
}

/// The one transport stack: TCP (Noise, Yamux) and QUIC, under the device's libp2p identity.
pub fn swarm_with<B: NetworkBehaviour>(seed: &[u8; 32], behaviour: impl FnOnce(&identity::Keypair) -> B) -> Result<Swarm<B>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(libp2p_keypair(seed))
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_quic()
        .with_behaviour(|key| behaviour(key))?
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(300)))
        .build())
}

fn control_behaviour() -> request_response::Behaviour<messages::Codec> {
    request_response::Behaviour::new(
        [(messages::PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    )
}

pub fn libp2p_keypair(seed: &[u8; 32]) -> identity::Keypair {
    let mut bytes = *seed;
    identity::Keypair::ed25519_from_bytes(&mut bytes).unwrap_or_else(|_| identity::Keypair::generate_ed25519())
}

/// The network's handshake PSK: only members (and invitees) know the network id.
pub fn network_psk(network: &NetworkId) -> PresharedKey {
    use blake2::{Blake2s256, Digest};
    let mut hasher = Blake2s256::new();
    hasher.update(b"cloudpal/data-plane-psk/v1");
    hasher.update(network.0);
    PresharedKey::from_bytes(hasher.finalize().into())
}

pub(crate) fn binding_message(network: &NetworkId, peer: &PeerId) -> Vec<u8> {
    let mut message = messages::BINDING_DOMAIN.to_vec();
    message.extend_from_slice(&network.0);
    message.extend_from_slice(&peer.to_bytes());
    message
}

fn decode_summary(bytes: &[u8]) -> Option<membership::Summary> {
    match SyncMessage::decode(bytes) {
        Ok(SyncMessage::Summary(summary)) => Some(summary),
        _ => None,
    }
}

fn refused(reason: &str) -> Response {
    Response::Refused { reason: reason.to_owned() }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `/ip/ADDR/tcp/PORT/p2p/RELAY/p2p-circuit`: the relay's circuit, to listen on or to dial a
/// member through (with its `/p2p/PEER` appended).
fn circuit_address(relay_tcp: SocketAddr, relay: PeerId) -> Multiaddr {
    socket_multiaddr(relay_tcp, false).with(libp2p::multiaddr::Protocol::P2p(relay)).with(libp2p::multiaddr::Protocol::P2pCircuit)
}

pub(crate) fn socket_multiaddr(address: SocketAddr, quic: bool) -> Multiaddr {
    let mut multiaddr = Multiaddr::empty();
    multiaddr.push(match address.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    });
    if quic {
        multiaddr.push(Protocol::Udp(address.port()));
        multiaddr.push(Protocol::QuicV1);
    } else {
        multiaddr.push(Protocol::Tcp(address.port()));
    }
    multiaddr
}

fn multiaddr_ip(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Addresses worth giving to others: not loopback, not unspecified, not our overlay.
pub(crate) fn is_dialable(address: &Multiaddr) -> bool {
    multiaddr_ip(address).is_some_and(|ip| {
        !ip.is_loopback() && !ip.is_unspecified() && !matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
    })
}
