//! The data plane: its own task owning the UDP socket, the TUN device and the sans-IO
//! [`Device`], so that packets never wait behind the libp2p swarm. The control loop drives it
//! with [`DataCommand`]s over a bounded channel (peers from the membership state, endpoints
//! learned on the control plane, status queries, pings).

use crate::icmp;
use protocol::{Device, PeerConfig, Received, StaticPublic, TunnelStats};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Commands queued for the data plane: a full membership refresh (one command per device, at
/// most 512) always fits.
pub const COMMAND_QUEUE: usize = 2 * membership::state::MAX_DEVICES + 64;
/// One datagram or packet.
const BUFFER_LEN: usize = 65_536;
/// Packets handled per wakeup before the loop looks at its other sources again: amortises
/// the cost of a wakeup under load without starving commands or timers.
const BATCH: usize = 64;
/// Interval between the echo requests of one `pal ping`, and how long to wait for the last.
const PING_INTERVAL: Duration = Duration::from_millis(500);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub enum DataCommand {
    UpsertPeer(PeerConfig),
    RemovePeer(StaticPublic),
    /// Every peer at once: the device has left the network.
    RemoveAll,
    SetEndpoint(StaticPublic, SocketAddr),
    Peers(oneshot::Sender<BTreeMap<StaticPublic, PeerView>>),
    Ping(Ping),
}

/// What `status` shows of one peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerView {
    pub stats: TunnelStats,
    pub has_session: bool,
    pub endpoint: Option<SocketAddr>,
}

#[derive(Debug)]
pub struct Ping {
    pub source: Ipv4Addr,
    pub target: Ipv4Addr,
    pub count: u16,
    pub reply: oneshot::Sender<serde_json::Value>,
}

struct PingJob {
    ping: Ping,
    sent: BTreeMap<u16, Instant>,
    replies: Vec<serde_json::Value>,
    last_sent: Option<Instant>,
}

struct DataPlane {
    device: Device,
    udp: Arc<UdpSocket>,
    tun: Arc<tun_rs::AsyncDevice>,
    out: Vec<u8>,
    ping: Option<PingJob>,
    sequence: u16,
}

/// Starts the data plane on its own OS thread with a single-threaded runtime, so packet
/// wakeups never hop between worker threads or wait behind the control plane. The TUN device
/// is created there (tun-rs registers it with the current runtime); start-up errors come back
/// here. The thread ends when the command channel closes.
pub async fn spawn(
    device: Device,
    udp: std::net::UdpSocket,
    (name, ipv4, ipv6): (String, Ipv4Addr, std::net::Ipv6Addr),
    commands: mpsc::Receiver<DataCommand>,
) -> anyhow::Result<()> {
    let (started, start_result) = oneshot::channel::<anyhow::Result<()>>();
    std::thread::Builder::new().name("pal-dataplane".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = started.send(Err(error.into()));
                return;
            }
        };
        runtime.block_on(async move {
            let tun = tun_rs::DeviceBuilder::new()
                .name(&name)
                .ipv4(ipv4, 10, None)
                .ipv6(ipv6, 48)
                .mtu(protocol::wire::DEFAULT_MTU as u16)
                .build_async();
            let tun = match tun {
                Ok(tun) => tun,
                Err(_) => {
                    let _ = started.send(Err(anyhow::anyhow!("cannot create the TUN device: run pal up as root (CAP_NET_ADMIN)")));
                    return;
                }
            };
            let udp = match UdpSocket::from_std(udp) {
                Ok(udp) => udp,
                Err(error) => {
                    let _ = started.send(Err(error.into()));
                    return;
                }
            };
            let _ = started.send(Ok(()));
            run(device, Arc::new(udp), Arc::new(tun), commands).await;
        });
    })?;
    start_result.await.map_err(|_| anyhow::anyhow!("the data plane failed to start"))?
}

/// Runs until the command channel closes.
pub async fn run(device: Device, udp: Arc<UdpSocket>, tun: Arc<tun_rs::AsyncDevice>, mut commands: mpsc::Receiver<DataCommand>) {
    let mut plane = DataPlane { device, udp: udp.clone(), tun: tun.clone(), out: vec![0; BUFFER_LEN], ping: None, sequence: 0 };
    let (mut udp_buffer, mut tun_buffer) = (vec![0u8; BUFFER_LEN], vec![0u8; BUFFER_LEN]);
    // One timer for the tunnels' deadlines, re-armed only when the deadline moves: creating a
    // fresh timer per packet was a measurable share of the per-packet cost.
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    let timer = tokio::time::sleep_until(far());
    tokio::pin!(timer);
    let mut armed: Option<tokio::time::Instant> = None;
    loop {
        let deadline = plane.device.poll_timeout().map(tokio::time::Instant::from_std);
        if deadline != armed {
            timer.as_mut().reset(deadline.unwrap_or_else(far));
            armed = deadline;
        }
        let ping_due = plane.ping.as_ref().map(|_| tokio::time::Instant::now() + Duration::from_millis(100));
        tokio::select! {
            ready = udp.readable() => {
                if ready.is_ok() {
                    for _ in 0..BATCH {
                        let Ok((len, source)) = udp.try_recv_from(&mut udp_buffer) else { break };
                        plane.on_datagram(source, &udp_buffer[..len]).await;
                    }
                }
            }
            ready = tun.readable() => {
                if ready.is_ok() {
                    for _ in 0..BATCH {
                        let Ok(len) = tun.try_recv(&mut tun_buffer) else { break };
                        plane.on_packet(&tun_buffer[..len]).await;
                    }
                }
            }
            command = commands.recv() => match command {
                Some(command) => plane.on_command(command).await,
                None => break,
            },
            _ = &mut timer => {
                plane.device.handle_timeout(Instant::now());
                armed = None;
            }
            _ = sleep_until(ping_due) => plane.advance_ping().await,
        }
        plane.flush().await;
    }
}

impl DataPlane {
    async fn on_datagram(&mut self, source: SocketAddr, datagram: &[u8]) {
        match self.device.decapsulate(source, datagram, &mut self.out, Instant::now()) {
            Ok(Received::Packet { len, .. }) => {
                if let Some(sequence) = icmp::echo_reply_sequence(&self.out[..len])
                    && self.ping_reply(sequence)
                {
                    return;
                }
                let _ = self.tun.send(&self.out[..len]).await;
            }
            Ok(Received::Nothing) => {}
            Err(error) => tracing::trace!(%error, "datagram dropped"),
        }
    }

    async fn on_packet(&mut self, packet: &[u8]) {
        match self.device.encapsulate(packet, &mut self.out, Instant::now()) {
            Ok(Some(transmit)) => {
                let _ = self.udp.send_to(&self.out[..transmit.len], transmit.destination).await;
            }
            Ok(None) => {}
            Err(error) => tracing::trace!(%error, "packet dropped"),
        }
    }

    async fn flush(&mut self) {
        while let Some(transmit) = self.device.poll_transmit(&mut self.out, Instant::now()) {
            let _ = self.udp.send_to(&self.out[..transmit.len], transmit.destination).await;
        }
    }

    async fn on_command(&mut self, command: DataCommand) {
        match command {
            DataCommand::UpsertPeer(config) => self.device.upsert_peer(config),
            DataCommand::RemovePeer(key) => {
                self.device.remove_peer(&key);
            }
            DataCommand::RemoveAll => {
                for key in self.device.peers().copied().collect::<Vec<_>>() {
                    self.device.remove_peer(&key);
                }
            }
            DataCommand::SetEndpoint(key, endpoint) => self.device.set_peer_endpoint(&key, endpoint),
            DataCommand::Peers(reply) => {
                let now = Instant::now();
                let peers = self
                    .device
                    .peers()
                    .map(|key| {
                        let view = PeerView {
                            stats: self.device.peer_stats(key).unwrap_or_default(),
                            has_session: self.device.peer_has_session(key, now),
                            endpoint: self.device.peer_endpoint(key),
                        };
                        (*key, view)
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            DataCommand::Ping(ping) => {
                if let Some(job) = self.ping.take() {
                    let _ = job.ping.reply.send(json!({ "error": "superseded" }));
                }
                self.ping = Some(PingJob { ping, sent: BTreeMap::new(), replies: Vec::new(), last_sent: None });
                self.advance_ping().await;
            }
        }
    }

    /// Sends the next echo request if due; answers when all replies are in or late.
    async fn advance_ping(&mut self) {
        let Some(job) = self.ping.as_mut() else { return };
        let now = Instant::now();
        let count = usize::from(job.ping.count);
        let late = job.last_sent.is_some_and(|at| now - at > PING_TIMEOUT);
        if job.replies.len() == count || (job.sent.len() == count && late) {
            if let Some(job) = self.ping.take() {
                let result = json!({ "sent": job.sent.len(), "received": job.replies.len(), "replies": job.replies });
                let _ = job.ping.reply.send(result);
            }
            return;
        }
        if job.sent.len() < count && job.last_sent.is_none_or(|at| now - at >= PING_INTERVAL) {
            self.sequence = self.sequence.wrapping_add(1);
            job.sent.insert(self.sequence, now);
            job.last_sent = Some(now);
            let packet = icmp::echo_request(job.ping.source, job.ping.target, self.sequence);
            self.on_packet(&packet).await;
        }
    }

    /// Records a reply to the running ping; false if it is not ours.
    fn ping_reply(&mut self, sequence: u16) -> bool {
        let Some(job) = self.ping.as_mut() else { return false };
        let Some(sent) = job.sent.get(&sequence) else { return false };
        let rtt = sent.elapsed();
        job.replies.push(json!({ "seq": sequence, "rtt_ms": rtt.as_secs_f64() * 1000.0, "path": "direct" }));
        true
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
