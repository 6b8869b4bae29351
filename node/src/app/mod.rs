//! `pal up`: the thin runtime shell. It builds the control core ([`crate::control`]), the
//! swarm with its driver ([`crate::p2p`]) and the packet thread ([`crate::dataplane`]), serves
//! the local control socket ([`crate::control_api`]), and runs one tokio loop that feeds the
//! core the swarm's events, local requests, the data plane's answers and its timeouts, and
//! carries out what the core asks. It reads the clocks ([`crate::clock`]) and OS randomness;
//! nothing in it decides anything.

use crate::clock;
use crate::control::{Action, Config, Core, NewDevice, Time};
use crate::control_api::socket::{self, Incoming};
use crate::control_api::{ControlRequest, ControlResponse, InviteReply};
use crate::dataplane::{self, DataCommand, DataEvent, DataSender, Token};
use crate::enrol::invite::InviteCode;
use crate::enrol::request::RequestCode;
use crate::exit::{self, ClientTunnel, ExitHost, host::Host};
use crate::p2p::{self, Behaviour, Gate, driver::Driver};
use crate::statedir::{StateDir, os_rng};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use libp2p::{Multiaddr, Swarm};
use membership::DeviceStatus;
use protocol::{Device, DeviceConfig, WallClock};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The default data-plane port (UDP); libp2p listens on TCP of the same number and QUIC on
/// the next one.
pub const DEFAULT_PORT: u16 = 41641;

/// Where `pal up` listens unless told: both families (`[::]`, dual-stack) where the host has
/// IPv6, else IPv4 alone.
pub fn default_listen() -> SocketAddr {
    let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, DEFAULT_PORT));
    let has_ipv6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).is_ok();
    if has_ipv6 { v6 } else { SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)) }
}
/// Control requests waiting for the event loop; the CLI sends one at a time.
const CONTROL_QUEUE: usize = 16;
/// The token of the views the packet thread pushes when they change; local queries count up
/// from 1.
const REFRESH: Token = dataplane::commands::PUSHED_VIEW;
/// How long a stopping node waits for its connections to close.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The data-plane UDP address; libp2p uses TCP on the same port.
    pub listen: SocketAddr,
    pub bootstrap: Vec<Multiaddr>,
    pub cloudpal: bool,
    pub tun_name: String,
    /// Segmentation offloads on the TUN interface, where the kernel has them.
    pub offload: bool,
    /// Birthday punching toward peers behind symmetric NATs (`--no-port-spray` turns it off).
    pub port_spray: bool,
    /// Where to serve Prometheus metrics (off when `None`).
    pub metrics: Option<SocketAddr>,
    /// CloudPal: the addresses egress rotation draws from.
    pub egress_pool: Vec<membership::IpNet>,
    /// CloudPal: a private CA (PEM) trusted for DNS-over-TLS upstreams beside the webpki roots.
    pub dns_ca: Option<std::path::PathBuf>,
    /// CloudPal: how often block lists are read and fetched again.
    pub block_list_refresh: Duration,
    /// CloudPal: where the TCP/TLS fallback listens (`None`: off).
    pub tcp_listen: Option<SocketAddr>,
    /// `--userspace`: no TUN, no root; a userspace stack and its proxies instead.
    pub userspace: Option<crate::userspace::UserspaceOptions>,
}

/// A local request waiting for the data plane or the network.
#[derive(Debug)]
enum Pending {
    Status(oneshot::Sender<ControlResponse>),
    Netcheck(oneshot::Sender<ControlResponse>),
    Metrics(oneshot::Sender<ControlResponse>),
    Ping(oneshot::Sender<ControlResponse>),
    Add(oneshot::Sender<ControlResponse>),
    ExitStatus(oneshot::Sender<ControlResponse>),
}

/// What the core asked of the host (routes, rules, nftables), carried out between events.
#[derive(Debug)]
enum HostWork {
    Client(Option<crate::control::ExitChoice>),
    Serve(exit::ExitRules),
    Resolved(crate::dns::resolver::Resolved),
    Dns(Option<(std::net::Ipv4Addr, bool)>),
}

/// The shell's state besides the swarm: the core, the driver, the data plane's queue, the
/// host's exit setup, and the local requests under way.
struct App {
    /// The data plane's socket address (where the TCP fallback's loopback end sends).
    data_local: SocketAddr,
    /// The TCP fallback's data link to CloudPal, while the data plane wants it.
    link: Option<DataLink>,
    /// The userspace mode: device names for its proxies, and whether membership changed
    /// since they were written.
    names: Option<crate::userspace::proxy::Names>,
    names_stale: bool,
    /// CloudPal: the metrics carry the exit's counters.
    exit_counters: bool,
    core: Core,
    driver: Driver,
    data: DataSender,
    state: StateDir,
    pending: HashMap<u64, Pending>,
    next_token: u64,
    host: Host,
    host_work: Vec<HostWork>,
    /// The overlay interface and this device's addresses on it.
    overlay: ExitHost,
    data_port: u16,
    /// `pal exit use` and `off` waiting for the host changes.
    exit_replies: Vec<oneshot::Sender<ControlResponse>>,
    /// CloudPal: the resolver's settings channel, and where to ask for its query log.
    dns: Option<mpsc::Sender<crate::dns::server::DnsConfig>>,
    dns_log: Option<mpsc::Sender<oneshot::Sender<Vec<crate::dns::resolver::LoggedQuery>>>>,
}

/// Runs the node until SIGINT or SIGTERM.
pub async fn run(state: StateDir, options: UpOptions) -> Result<()> {
    if !state.root().exists() {
        bail!("no device in {}: run `pal init` or `pal join` first", state.root().display());
    }
    let _lock = state.lock()?;
    let identity = state.load_identity()?;
    let me = identity.device.public_key().device_id();
    let book = state.open_book(&me)?;
    let my_record = match book.state().devices.get(&me) {
        Some(device) if device.status == DeviceStatus::Revoked => bail!("this device has been revoked from its network; to come back, join with a new invite in a fresh --state directory"),
        Some(device) => device.record.clone(),
        None => bail!("this device is not a member of the network in {}", state.root().display()),
    };
    let network = book.network();
    // Before anything else touches the host: undo what a crashed run left behind.
    let host = Host::open(state.root()).await?;

    let udp = dataplane::connected::bind_shared(options.listen)
        .with_context(|| format!("cannot listen on {}: is another node using it?", options.listen))?;
    let data_port = udp.local_addr()?.port();

    let mut rng = os_rng()?;
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let start = clock::now();
    let mut device = Device::new(
        DeviceConfig {
            static_secret: identity.static_secret.clone(),
            psk: network.data_plane_psk(),
            under_load_threshold: protocol::device::DEFAULT_UNDER_LOAD_THRESHOLD,
            mtu: protocol::wire::DEFAULT_MTU,
            clock: WallClock { anchor: start.now, unix_time_at_anchor: start.unix },
        },
        seed,
    );
    device.set_relay_server(options.cloudpal);
    device.set_birthday_punch(options.port_spray);
    // CloudPal answers the NAT check on the next port; without it, members cannot tell a
    // symmetric NAT and only punch the simple way.
    let reflector = if options.cloudpal {
        dataplane::connected::bind_reflector(&udp)
            .inspect_err(|error| tracing::warn!("no NAT check for members (UDP port {} is taken: {error}); symmetric NATs stay relayed", data_port.wrapping_add(1)))
            .ok()
    } else {
        None
    };
    let data_local = udp.local_addr()?;
    // CloudPal: the TCP/TLS fallback, its socket bound once for every swarm to come (a new
    // identity epoch builds a new swarm).
    let fallback = match options.tcp_listen {
        Some(listen) if options.cloudpal => serve_fallback(&state, listen, data_local)
            .inspect_err(|error| tracing::warn!("no TCP fallback on {listen} ({error:#}): devices on networks that block UDP cannot reach this CloudPal"))
            .ok(),
        _ => None,
    };
    let gate = Gate::default();
    let mut epoch = p2p::identity_epoch(clock::unix_secs());
    let mut swarm = node_swarm(&identity.libp2p, epoch, &options, &gate, &network, fallback.as_ref())?;

    let tun_config = dataplane::TunConfig { name: options.tun_name.clone(), ipv4: my_record.overlay_ipv4, ipv6: my_record.overlay_ipv6, offload: options.offload };
    let (events_tx, mut events) = mpsc::channel(dataplane::EVENT_QUEUE);
    // The userspace mode: a packet pair instead of a TUN, its far end the userspace stack.
    let (overlay, stack_end) = match &options.userspace {
        Some(_) => {
            let (plane, stack) = dataplane::tun::packet_pair().context("cannot make the userspace stack's packet pair")?;
            (dataplane::OverlayConfig::Pipe(plane), Some(stack))
        }
        None => (dataplane::OverlayConfig::Tun(tun_config), None),
    };
    let data = dataplane::spawn(device, udp, reflector, overlay, events_tx).await?;
    let names = crate::userspace::proxy::Names::default();
    if let (Some(userspace), Some(fd)) = (&options.userspace, stack_end) {
        crate::userspace::start(fd, my_record.overlay_ipv4, my_record.overlay_ipv6, userspace, names.clone()).await?;
    }
    let userspace = options.userspace.is_some();

    let mut bootstrap = options.bootstrap.clone();
    bootstrap.extend(state.cached_peers().iter().filter_map(|a| a.parse().ok()));
    let announced = fallback.as_ref().map(|f| (f.listen, f.certhash));
    let config = Config { signing_key: identity.device.clone(), peer_id: *swarm.local_peer_id(), data_port, cloudpal: options.cloudpal, bootstrap, exit: state.exit_choice().filter(|_| !userspace), egress_pool: options.egress_pool.clone(), dns_on: state.dns_on() && !userspace, fallback: announced };
    let core = Core::new(config, book, ChaCha20Rng::from_rng(&mut rng), clock::now()).map_err(anyhow::Error::msg)?;

    // The control socket comes last: a node that failed to start leaves none behind.
    let listener = socket::bind(&state.socket_path())?;
    let (control_tx, mut control_rx) = mpsc::channel::<Incoming>(CONTROL_QUEUE);
    if let Some(address) = options.metrics {
        tokio::spawn(crate::metrics::serve(crate::metrics::bind(address).await?, control_tx.clone()));
    }
    tokio::spawn(socket::serve(listener, control_tx));

    let overlay = ExitHost { tun: options.tun_name.clone(), overlay_ipv4: my_record.overlay_ipv4, overlay_ipv6: my_record.overlay_ipv6 };
    let mut app = App { core, driver: Driver::new(gate.clone()), data, state, pending: HashMap::new(), next_token: REFRESH + 1, host, host_work: Vec::new(), overlay, data_port, exit_replies: Vec::new(), dns: None, dns_log: None, data_local, link: None, names: userspace.then_some(names), names_stale: true, exit_counters: options.cloudpal };
    // CloudPal: the network's resolver on the overlay addresses.
    let (resolved_tx, mut resolved) = mpsc::channel(256);
    if options.cloudpal {
        let (config_tx, config_rx) = mpsc::channel(16);
        let (log_tx, log_rx) = mpsc::channel(4);
        let resolver = crate::dns::server::ResolverOptions {
            addresses: vec![std::net::IpAddr::V4(my_record.overlay_ipv4), std::net::IpAddr::V6(my_record.overlay_ipv6)],
            tls: crate::dns::server::tls_config(options.dns_ca.as_deref())?,
            block_list_dir: app.state.block_list_dir(),
            block_list_refresh: options.block_list_refresh,
        };
        let dns_rng = ChaCha20Rng::from_rng(&mut rng);
        tokio::spawn(async move {
            if let Err(error) = crate::dns::server::serve(resolver, config_rx, resolved_tx, log_rx, dns_rng).await {
                tracing::error!("the resolver stopped: {error:#}");
            }
        });
        app.dns = Some(config_tx);
        app.dns_log = Some(log_tx);
    }
    app.drain(&mut swarm, clock::now());
    app.apply_host().await;
    tracing::info!(cloudpal = options.cloudpal, "node up");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let rotate_in = Duration::from_secs(p2p::identity_epoch_end(epoch).saturating_sub(clock::unix_secs()));
        let rotation = tokio::time::sleep(rotate_in);
        let deadline = app.core.poll_timeout().map(tokio::time::Instant::from_std);
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            event = swarm.select_next_some() => app.driver.handle_event(&mut app.core, &mut swarm, event, clock::now()),
            Some((request, reply)) = control_rx.recv() => app.on_control(request, reply, clock::now()),
            Some(event) = events.recv() => app.on_data_event(&mut swarm, event),
            event = next_link_event(&mut app.link) => app.on_link_event(event),
            Some(found) = resolved.recv() => app.host_work.push(HostWork::Resolved(found)),
            _ = timer => app.core.handle_timeout(clock::now()),
            _ = rotation => {
                // A new identity epoch: a new libp2p identity, so a new swarm.
                epoch = p2p::identity_epoch(clock::unix_secs()).max(epoch + 1);
                say_goodbye(&mut swarm).await;
                drop(swarm);
                swarm = rebuild_swarm(&identity.libp2p, epoch, &options, &gate, &network, fallback.as_ref()).await?;
                app.driver = Driver::new(gate.clone());
                app.core.handle_identity_changed(*swarm.local_peer_id(), clock::now());
                tracing::info!("control-plane identity rotated");
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        app.drain(&mut swarm, clock::now());
        app.apply_host().await;
    }
    let _ = std::fs::remove_file(app.state.socket_path());
    // A clean stop leaves the host as it found it (the exit choice itself is kept).
    if let Err(error) = app.host.restore().await {
        tracing::error!("cannot restore the host's routes and firewall: {error:#}");
    }
    say_goodbye(&mut swarm).await;
    tracing::info!("node down");
    Ok(())
}

/// CloudPal's TCP/TLS fallback: its certificate (made once, kept in the state directory), and
/// its socket.
#[derive(Debug)]
struct Fallback {
    serving: crate::relaylink::transport::Serving,
    listen: SocketAddr,
    certhash: [u8; 32],
}

fn serve_fallback(state: &StateDir, listen: SocketAddr, data: SocketAddr) -> Result<Fallback> {
    let identity = crate::relaylink::tls::load_or_create(state.root())?;
    let config = crate::relaylink::tls::server_config(&identity)?;
    let listener = crate::relaylink::transport::bind(listen).context("cannot listen (is the port taken, or is this not root?)")?;
    let listen = listener.local_addr()?;
    let serving = crate::relaylink::transport::Serving { config, data, listener: std::sync::Arc::new(listener) };
    tracing::info!(port = listen.port(), "TCP fallback up");
    Ok(Fallback { serving, listen, certhash: identity.certhash })
}

/// The node's swarm for identity epoch `epoch`, listening on TCP at the data port (and, on
/// CloudPal, serving the fallback).
fn node_swarm(seed: &[u8; 32], epoch: u64, options: &UpOptions, gate: &Gate, network: &membership::NetworkId, fallback: Option<&Fallback>) -> Result<Swarm<Behaviour>> {
    let serving = fallback.map(|f| f.serving.clone());
    let mut swarm = p2p::build_for_epoch(seed, epoch, serving, |key, relay_client| p2p::node_behaviour(key, relay_client, options.cloudpal, gate, network))?;
    if let Some(fallback) = fallback {
        let address = crate::control::addr::socket_multiaddr(fallback.listen, false).with(libp2p::multiaddr::Protocol::Tls);
        swarm.listen_on(address).context("cannot serve the TCP fallback")?;
    }
    // libp2p's IPv6 sockets are IPv6-only: `[::]` (the default) takes an IPv4 listener beside
    // them (the data socket is dual-stack).
    let mut ips = vec![options.listen.ip()];
    if options.listen.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        ips.push(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    }
    for ip in ips {
        let tcp_address = crate::control::addr::socket_multiaddr(SocketAddr::new(ip, options.listen.port()), false);
        swarm.listen_on(tcp_address).context("cannot listen for the control plane (TCP)")?;
    }
    Ok(swarm)
}

/// A new swarm on the same ports, once the old one has let go of them.
async fn rebuild_swarm(seed: &[u8; 32], epoch: u64, options: &UpOptions, gate: &Gate, network: &membership::NetworkId, fallback: Option<&Fallback>) -> Result<Swarm<Behaviour>> {
    let mut last = None;
    for _ in 0..50 {
        match node_swarm(seed, epoch, options, gate, network, fallback) {
            Ok(swarm) => return Ok(swarm),
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("cannot listen for the control plane")))
}

/// Closing the connections lets peers see us gone at once (rather than when a request to us
/// times out, delaying their DHT lookups).
async fn say_goodbye(swarm: &mut Swarm<Behaviour>) {
    for peer in swarm.connected_peers().copied().collect::<Vec<_>>() {
        let _ = swarm.disconnect_peer_id(peer);
    }
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        while swarm.network_info().num_peers() > 0 {
            swarm.select_next_some().await;
        }
    })
    .await;
}

#[derive(Debug)]
struct DataLink {
    task: tokio::task::JoinHandle<()>,
    events: mpsc::Receiver<crate::relaylink::link::LinkEvent>,
}

impl Drop for DataLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The data link's next event; never, while there is none.
async fn next_link_event(link: &mut Option<DataLink>) -> crate::relaylink::link::LinkEvent {
    match link {
        Some(link) => match link.events.recv().await {
            Some(event) => event,
            None => futures::future::pending().await,
        },
        None => futures::future::pending().await,
    }
}

impl App {
    /// The data plane wants the TCP fallback's stream to CloudPal (UDP to it goes unanswered),
    /// or no longer does (UDP works again).
    fn want_link(&mut self, wanted: bool) {
        if !wanted {
            if self.link.take().is_some() {
                self.command(DataCommand::SetRelayStream(None));
                tracing::info!("data back on UDP");
            }
            return;
        }
        if self.link.is_some() {
            return;
        }
        let Some(target) = self.core.relay_fallback() else {
            tracing::debug!("UDP to CloudPal fails, and it announced no TCP fallback");
            return;
        };
        let (events_tx, events) = mpsc::channel(4);
        let task = tokio::spawn(crate::relaylink::link::run_client(target, self.data_local, events_tx));
        self.link = Some(DataLink { task, events });
    }

    fn on_link_event(&mut self, event: crate::relaylink::link::LinkEvent) {
        use crate::relaylink::link::LinkEvent;
        match event {
            LinkEvent::Up(stream) => self.command(DataCommand::SetRelayStream(Some(stream))),
            LinkEvent::Down => self.command(DataCommand::SetRelayStream(None)),
        }
    }

    /// The userspace proxies' device names, after the membership changed.
    fn refresh_names(&mut self) {
        let Some(names) = self.names.as_ref().filter(|_| self.names_stale) else { return };
        self.names_stale = false;
        let state = self.core.state();
        let current = self
            .core
            .device_list()
            .into_iter()
            .filter(|d| d.status == crate::control_api::DeviceStatusName::Active)
            .filter_map(|d| state.device_by_name(&d.name).map(|(_, s)| (d.name.to_ascii_lowercase(), (s.record.overlay_ipv4, s.record.overlay_ipv6))))
            .collect();
        if let Ok(mut names) = names.write() {
            *names = current;
        }
    }

    /// Carries out everything the core asked for.
    fn drain(&mut self, swarm: &mut Swarm<Behaviour>, time: Time) {
        while let Some(action) = self.core.poll_action() {
            match self.driver.execute(&mut self.core, swarm, action, time) {
                None => {}
                Some(Action::Data(command)) => {
                    self.names_stale |= matches!(command, DataCommand::SetMembers(_));
                    self.command(command);
                }
                Some(Action::SaveView(view)) => {
                    if let Err(error) = self.state.save_guest_view(&self.core.network(), &view) {
                        tracing::warn!(%error, "cannot keep the guest view");
                    }
                }
                Some(Action::CachePeers(addresses)) => {
                    if let Err(error) = self.state.cache_peers(&addresses) {
                        tracing::warn!(%error, "cannot write the peer cache");
                    }
                }
                Some(Action::ExitClient(choice)) => self.host_work.push(HostWork::Client(choice)),
                Some(Action::ExitServe(rules)) => self.host_work.push(HostWork::Serve(rules)),
                Some(Action::ClientDns(target)) => self.host_work.push(HostWork::Dns(target)),
                Some(Action::DnsServe(config)) => {
                    if let Some(dns) = &self.dns {
                        let _ = dns.try_send(config);
                    }
                }
                Some(Action::Finished { reply, result }) => {
                    if let Some(Pending::Add(answer)) = self.pending.remove(&reply) {
                        let _ = answer.send(ControlResponse::from_result(result));
                    }
                }
                // (Not printed: actions carry addresses and peer ids, PRIV-02.)
                Some(_) => tracing::debug!("an action nobody carries out"),
            }
        }
        self.refresh_names();
    }

    /// Queues a command for the data plane. The queue holds more than a whole network's worth
    /// of peers (512 devices), so a full membership refresh always fits; if it ever does not,
    /// the next refresh repairs what was dropped.
    fn command(&self, command: DataCommand) {
        if self.data.try_send(command).is_err() {
            tracing::warn!("data-plane command queue full; a peer update waits for the next refresh");
        }
    }

    /// Carries out the host changes the core asked for, in order.
    async fn apply_host(&mut self) {
        let mut client_result = Ok(());
        for work in std::mem::take(&mut self.host_work) {
            let client = matches!(work, HostWork::Client(_));
            let result = match work {
                HostWork::Client(choice) => {
                    if let Err(error) = self.state.save_exit_choice(choice) {
                        tracing::warn!("cannot save the exit choice: {error:#}");
                    }
                    match choice {
                        Some(choice) => {
                            let tunnel = ClientTunnel {
                                tun: self.overlay.tun.clone(),
                                overlay_ipv4: self.overlay.overlay_ipv4,
                                overlay_ipv6: self.overlay.overlay_ipv6,
                                data_port: self.data_port,
                                allow_lan: choice.allow_lan,
                            };
                            self.host.apply_client(&tunnel).await.map(|()| tracing::info!("internet through the exit"))
                        }
                        None if self.host.client_active() => self.host.remove_client().await.map(|()| tracing::info!("exit off")),
                        None => Ok(()),
                    }
                }
                HostWork::Serve(rules) => self.host.apply_exit(&self.overlay, &rules),
                HostWork::Dns(Some((server, fallback))) => self.host.point_dns(&self.overlay.tun, server, fallback),
                HostWork::Dns(None) => self.host.restore_dns(),
                HostWork::Resolved(found) => {
                    let Some(list) = self.core.domain_list(&found.rule) else { continue };
                    self.host.add_rule_addresses(list, &found.addresses, found.ttl)
                }
            };
            if let Err(error) = &result {
                tracing::error!("{error:#}");
            }
            if client {
                client_result = result;
            }
        }
        for reply in std::mem::take(&mut self.exit_replies) {
            match &client_result {
                Err(error) => {
                    let _ = reply.send(ControlResponse::Error(format!("{error:#}")));
                }
                Ok(()) => self.answer_exit_status(reply),
            }
        }
    }

    /// `pal exit status`: on the exit, answered once the data plane has sent one echo to it
    /// (whether it answers is the state); off it, at once.
    fn answer_exit_status(&mut self, reply: oneshot::Sender<ControlResponse>) {
        match self.core.exit_probe() {
            Some((source, target)) => self.ask_data(|token| DataCommand::Ping { token, source, target, count: 1 }, Pending::ExitStatus, reply),
            None => {
                let _ = reply.send(ControlResponse::from_result(Ok(self.core.exit_status(false))));
            }
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Asks the data plane, and parks the local request until it answers.
    fn ask_data(&mut self, command: impl FnOnce(Token) -> DataCommand, pending: impl FnOnce(oneshot::Sender<ControlResponse>) -> Pending, reply: oneshot::Sender<ControlResponse>) {
        let token = self.token();
        if self.data.try_send(command(token)).is_err() {
            let _ = reply.send(ControlResponse::Error("the data plane is busy; try again".into()));
            return;
        }
        self.pending.insert(token, pending(reply));
    }

    fn on_control(&mut self, request: ControlRequest, reply: oneshot::Sender<ControlResponse>, time: Time) {
        let core = &mut self.core;
        let response = match request {
            ControlRequest::Status => return self.ask_data(DataCommand::QueryView, Pending::Status, reply),
            ControlRequest::Netcheck => return self.ask_data(DataCommand::QueryView, Pending::Netcheck, reply),
            ControlRequest::Metrics => return self.ask_data(DataCommand::QueryView, Pending::Metrics, reply),
            ControlRequest::Ping { name, count } => match core.ping_target(&name) {
                Ok((source, target)) => {
                    let count = count.clamp(1, 100) as u16;
                    return self.ask_data(|token| DataCommand::Ping { token, source, target, count }, Pending::Ping, reply);
                }
                Err(error) => ControlResponse::Error(error),
            },
            ControlRequest::DeviceList => ControlResponse::from_result(Ok(core.device_list())),
            ControlRequest::Log => ControlResponse::from_result(Ok(core.log_entries())),
            ControlRequest::Invite { name, role, ttl_seconds, shares } => {
                let made = core.invite(&name, role, &shares, Duration::from_secs(ttl_seconds), time);
                ControlResponse::from_result(made.map(|made| {
                    let code = InviteCode { network: core.network(), invite: made.invite, secret: made.secret, bootstrap: made.bootstrap };
                    InviteReply { code: code.encode(), expires: made.expires, role: made.role }
                }))
            }
            ControlRequest::Revoke { name } => ControlResponse::from_result(core.revoke(&name, time)),
            ControlRequest::Share { guest, devices, unshare } => ControlResponse::from_result(core.share(&guest, &devices, unshare, time)),
            // Answered once the host's routes and firewall are in place (or refused).
            ControlRequest::ExitUse { .. } | ControlRequest::Dns { on: true } if self.names.is_some() => ControlResponse::Error(crate::userspace::NO_HOST_CHANGES.into()),
            ControlRequest::ExitUse { name, allow_lan } => match core.exit_use(name.as_deref(), allow_lan) {
                Ok(_) => return self.exit_replies.push(reply),
                Err(error) => ControlResponse::Error(error),
            },
            ControlRequest::ExitOff => {
                core.exit_off();
                return self.exit_replies.push(reply);
            }
            ControlRequest::ExitRenew => ControlResponse::from_result(core.exit_renew().map(|()| core.exit_status(true))),
            ControlRequest::ExitStatus => return self.answer_exit_status(reply),
            ControlRequest::Dns { on } => {
                let result = core.set_dns(on);
                if result.is_ok()
                    && let Err(error) = self.state.save_dns_on(on)
                {
                    tracing::warn!("cannot save the DNS choice: {error:#}");
                }
                ControlResponse::from_result(result)
            }
            ControlRequest::DnsStatus => ControlResponse::from_result(Ok(core.dns_status())),
            ControlRequest::DnsLog => match &self.dns_log {
                // Answered by the resolver's task, off this loop.
                Some(log) => {
                    let (tx, rx) = oneshot::channel();
                    if log.try_send(tx).is_err() {
                        ControlResponse::Error("the resolver is busy; try again".into())
                    } else {
                        tokio::spawn(async move {
                            let answer = rx.await.map_err(|_| "the resolver stopped".to_owned());
                            let _ = reply.send(ControlResponse::from_result(answer));
                        });
                        return;
                    }
                }
                None => ControlResponse::Error("the query log lives on CloudPal: run `pal dns log` there".into()),
            },
            ControlRequest::PolicyShow => ControlResponse::from_result(Ok(core.policy())),
            ControlRequest::PolicySet(change) => ControlResponse::from_result(core.set_policy(&change, time)),
            ControlRequest::Add { code, role } => {
                // Answered once the new device has the log (or cannot get it).
                let id = self.token();
                let added = RequestCode::decode(&code).map_err(|e| e.to_string()).and_then(|code| {
                    let device = NewDevice { name: code.name, signing_key: code.signing_key, static_key: code.static_key, peer: code.peer, addresses: code.addresses };
                    self.core.add_device(device, role, id, time)
                });
                match added {
                    Ok(()) => {
                        self.pending.insert(id, Pending::Add(reply));
                        return;
                    }
                    Err(error) => ControlResponse::Error(error),
                }
            }
        };
        let _ = reply.send(response);
    }

    fn on_data_event(&mut self, swarm: &mut Swarm<Behaviour>, event: DataEvent) {
        self.core.note_time(clock::now().now);
        match event {
            DataEvent::View { token: REFRESH, view } => self.core.handle_data_view(view),
            DataEvent::View { token, view } => {
                match self.pending.remove(&token) {
                    Some(Pending::Status(reply)) => {
                        let dht_peers = swarm.behaviour_mut().kad.kbuckets().map(|bucket| bucket.num_entries()).sum::<usize>();
                        let _ = reply.send(ControlResponse::from_result(Ok(self.core.status(&view, dht_peers))));
                    }
                    Some(Pending::Netcheck(reply)) => {
                        let mut report = self.core.netcheck(&view);
                        match self.core.relay_fallback() {
                            // TCP 443 to CloudPal, tried now, off this loop.
                            Some(target) => {
                                tokio::spawn(async move {
                                    let probed = crate::relaylink::link::probe(target).await;
                                    report.tcp_443 = Some(probed.is_ok());
                                    report.tcp_443_ms = probed.ok().map(|took| took.as_secs_f64() * 1000.0);
                                    let _ = reply.send(ControlResponse::from_result(Ok(report)));
                                });
                            }
                            None => {
                                let _ = reply.send(ControlResponse::from_result(Ok(report)));
                            }
                        }
                    }
                    Some(Pending::Metrics(reply)) => {
                        let text = crate::metrics::render(&view);
                        if self.exit_counters {
                            // CloudPal: the exit's counters from nftables (a short subprocess,
                            // off the event loop).
                            tokio::task::spawn_blocking(move || {
                                let exit = crate::metrics::read_exit_counters().map(|c| crate::metrics::render_exit(&c)).unwrap_or_default();
                                let _ = reply.send(ControlResponse::Ok(serde_json::Value::String(text + &exit)));
                            });
                        } else {
                            let _ = reply.send(ControlResponse::Ok(serde_json::Value::String(text)));
                        }
                    }
                    Some(other) => {
                        self.pending.insert(token, other);
                    }
                    None => {}
                }
                self.core.handle_data_view(view);
            }
            DataEvent::RelayStream { wanted } => self.want_link(wanted),
            DataEvent::PingDone { token, report } => match self.pending.remove(&token) {
                Some(Pending::Ping(reply)) => {
                    let _ = reply.send(ControlResponse::from_result(Ok(report)));
                }
                Some(Pending::ExitStatus(reply)) => {
                    let _ = reply.send(ControlResponse::from_result(Ok(self.core.exit_status(report.received > 0))));
                }
                _ => {}
            },
        }
    }
}
