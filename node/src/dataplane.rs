//! The data plane: its own task owning the UDP socket, the TUN device and the sans-IO
//! [`Device`], so that packets never wait behind the libp2p swarm. The control loop drives it
//! with [`DataCommand`]s over a bounded channel (peers from the membership state, endpoints
//! learned on the control plane, status queries, pings).

use crate::batch::{self, SendBatch};
use crate::icmp;
use protocol::{Device, PeerConfig, Received, StaticPublic, TunnelStats};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tun_rs::VIRTIO_NET_HDR_LEN;
use tokio::sync::{mpsc, oneshot};

/// Commands queued for the data plane: a full membership refresh (one command per device, at
/// most 512) always fits.
pub const COMMAND_QUEUE: usize = 2 * membership::state::MAX_DEVICES + 64;
/// One datagram or packet, or one GRO/GSO aggregate of them.
const BUFFER_LEN: usize = 65_536;
/// Packets one TUN read can split into (64 KiB / MSS, with room), and so the send batch.
const TUN_BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;
/// Buffers per `recvmmsg`; each takes up to 64 datagrams when the kernel does GRO.
const UDP_BATCH: usize = 8;
/// Reads per wakeup before the loop looks at its other sources again: amortises the cost of
/// a wakeup under load without starving commands or timers.
const ROUNDS: usize = 8;
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
    udp_state: quinn_udp::UdpSocketState,
    tun: Arc<tun_rs::AsyncDevice>,
    io: Buffers,
    ping: Option<PingJob>,
    sequence: u16,
}

/// Every buffer the packet path uses, allocated once.
struct Buffers {
    /// One read from TUN: the virtio-net header and a packet of up to 64 KiB (a TCP segment
    /// the kernel left for us to split when offloads are on).
    tun_read: Vec<u8>,
    /// The packets split out of one TUN read, each at most the MTU.
    tun_packets: Vec<Vec<u8>>,
    tun_sizes: Vec<usize>,
    /// Encrypted datagrams on their way out, grouped for GSO.
    send: SendBatch,
    /// Datagrams read by one `recvmmsg`: each buffer holds one datagram, or with GRO up to 64
    /// datagrams from one sender of `stride` bytes each.
    udp_read: Vec<Vec<u8>>,
    udp_meta: Vec<quinn_udp::RecvMeta>,
    /// Decrypted packets on their way into TUN, each after room for the virtio-net header;
    /// `tun_gro` coalesces TCP segments among them when offloads are on.
    tun_write: Vec<Vec<u8>>,
    tun_pending: usize,
    tun_gro: tun_rs::GROTable,
    /// Handshake messages, cookie replies and `pal ping`'s echo requests.
    scratch: Vec<u8>,
}

impl Buffers {
    fn new(max_segments: usize) -> Self {
        Buffers {
            tun_read: vec![0; VIRTIO_NET_HDR_LEN + BUFFER_LEN],
            tun_packets: vec![vec![0; batch::SLOT]; TUN_BATCH],
            tun_sizes: vec![0; TUN_BATCH],
            send: SendBatch::new(TUN_BATCH, max_segments),
            udp_read: vec![vec![0; BUFFER_LEN]; UDP_BATCH],
            udp_meta: vec![quinn_udp::RecvMeta::default(); UDP_BATCH],
            tun_write: (0..TUN_BATCH).map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + BUFFER_LEN)).collect(),
            tun_pending: 0,
            tun_gro: tun_rs::GROTable::default(),
            scratch: vec![0; BUFFER_LEN],
        }
    }
}

/// Starts the data plane on its own OS thread with a single-threaded runtime, so packet
/// wakeups never hop between worker threads or wait behind the control plane. The TUN device
/// is created there (tun-rs registers it with the current runtime); start-up errors come back
/// here. The thread ends when the command channel closes.
pub async fn spawn(
    device: Device,
    udp: std::net::UdpSocket,
    tun: TunConfig,
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
            let opened = open_tun(&tun).and_then(|device| Ok((device, open_udp(udp)?)));
            match opened {
                Ok((tun, (udp, udp_state))) => {
                    let _ = started.send(Ok(()));
                    run(device, udp, udp_state, tun, commands).await;
                }
                Err(error) => {
                    let _ = started.send(Err(error));
                }
            }
        });
    })?;
    start_result.await.map_err(|_| anyhow::anyhow!("the data plane failed to start"))?
}

/// The overlay interface to create.
#[derive(Debug, Clone)]
pub struct TunConfig {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Ask the kernel for TCP/UDP segmentation offload on the interface (virtio-net header).
    pub offload: bool,
}

/// Creates the TUN device, with offloads when asked and the kernel has them, else without.
fn open_tun(config: &TunConfig) -> anyhow::Result<tun_rs::AsyncDevice> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(&config.name)
            .ipv4(config.ipv4, 10, None)
            .ipv6(config.ipv6, 48)
            .mtu(protocol::wire::DEFAULT_MTU as u16)
            .offload(offload)
            .build_async()
    };
    let device = match build(config.offload) {
        Ok(device) => Ok(device),
        Err(_) if config.offload => build(false),
        Err(error) => Err(error),
    };
    let device = device.map_err(|error| match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => anyhow::anyhow!("cannot create the TUN device: run pal up as root (it needs CAP_NET_ADMIN)"),
        _ => anyhow::anyhow!("cannot create the TUN device {}: {error}", config.name),
    })?;
    tracing::info!(tcp_offload = device.tcp_gso(), udp_offload = device.udp_gso(), "overlay interface up");
    Ok(device)
}

/// Registers the UDP socket with this runtime and switches on what the kernel offers for
/// batches: `recvmmsg`, GRO and GSO (quinn-udp probes each).
fn open_udp(udp: std::net::UdpSocket) -> anyhow::Result<(Arc<UdpSocket>, quinn_udp::UdpSocketState)> {
    let state = quinn_udp::UdpSocketState::new((&udp).into())?;
    allow_fragmentation(&udp);
    let udp = UdpSocket::from_std(udp)?;
    tracing::debug!(gso_segments = state.max_gso_segments(), gro_segments = state.gro_segments(), "data socket ready");
    Ok((Arc::new(udp), state))
}

/// quinn-udp sets the don't-fragment bit for QUIC's path-MTU probing. A VPN with a fixed
/// inner MTU must rather let an underlay with a smaller MTU fragment (as WireGuard does), or
/// full-size packets would vanish on such paths.
fn allow_fragmentation(udp: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: a valid socket descriptor and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    let ipv6 = udp.local_addr().is_ok_and(|address| address.is_ipv6());
    if ipv6 {
        set(libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DONT);
    }
    set(libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DONT);
}

/// Runs until the command channel closes.
async fn run(
    device: Device,
    udp: Arc<UdpSocket>,
    udp_state: quinn_udp::UdpSocketState,
    tun: tun_rs::AsyncDevice,
    mut commands: mpsc::Receiver<DataCommand>,
) {
    let tun = Arc::new(tun);
    let io = Buffers::new(udp_state.max_gso_segments());
    let mut plane = DataPlane { device, udp: udp.clone(), udp_state, tun: tun.clone(), io, ping: None, sequence: 0 };
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
                    plane.read_udp().await;
                }
            }
            ready = tun.readable() => {
                if ready.is_ok() {
                    plane.read_tun().await;
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
    /// Up to [`ROUNDS`] `recvmmsg` calls, each decrypting its datagrams into one batch of
    /// TUN writes.
    async fn read_udp(&mut self) {
        for _ in 0..ROUNDS {
            let received = {
                let io = &mut self.io;
                let state = &self.udp_state;
                let mut slices: [IoSliceMut<'_>; UDP_BATCH] = {
                    let mut buffers = io.udp_read.iter_mut();
                    std::array::from_fn(|_| IoSliceMut::new(buffers.next().map(Vec::as_mut_slice).unwrap_or_default()))
                };
                let meta = &mut io.udp_meta;
                self.udp.try_io(Interest::READABLE, || state.recv((&*self.udp).into(), &mut slices, meta))
            };
            let Ok(count) = received else { break };
            let now = Instant::now();
            for index in 0..count {
                let meta = self.io.udp_meta[index];
                let stride = meta.stride.max(1);
                let mut offset = 0;
                while offset < meta.len {
                    let end = (offset + stride).min(meta.len);
                    self.on_datagram(meta.addr, index, offset..end, now).await;
                    offset = end;
                }
            }
            self.write_tun().await;
        }
    }

    /// Decrypts one datagram of `udp_read[buffer]` into the next TUN write slot; writes the
    /// batch to TUN when the slots run out.
    async fn on_datagram(&mut self, source: SocketAddr, buffer: usize, range: std::ops::Range<usize>, now: Instant) {
        let io = &mut self.io;
        let datagram = &io.udp_read[buffer][range];
        let out = &mut io.tun_write[io.tun_pending];
        out.clear();
        out.resize(VIRTIO_NET_HDR_LEN + datagram.len(), 0);
        match self.device.decapsulate(source, datagram, &mut out[VIRTIO_NET_HDR_LEN..], now) {
            Ok(Received::Packet { len, .. }) => {
                out.truncate(VIRTIO_NET_HDR_LEN + len);
                if let Some(sequence) = icmp::echo_reply_sequence(&out[VIRTIO_NET_HDR_LEN..])
                    && let Some(job) = self.ping.as_mut()
                    && job.reply(sequence)
                {
                    return;
                }
                io.tun_pending += 1;
                if io.tun_pending == io.tun_write.len() {
                    self.write_tun().await;
                }
            }
            Ok(Received::Nothing) => {}
            Err(error) => tracing::trace!(%error, "datagram dropped"),
        }
    }

    /// Writes the pending decrypted packets to TUN, coalescing TCP segments of one flow into
    /// one write when offloads are on.
    async fn write_tun(&mut self) {
        let io = &mut self.io;
        if io.tun_pending == 0 {
            return;
        }
        let _ = self.tun.send_multiple(&mut io.tun_gro, &mut io.tun_write[..io.tun_pending], VIRTIO_NET_HDR_LEN).await;
        io.tun_pending = 0;
    }

    /// Up to [`ROUNDS`] TUN reads; with offloads one read may carry a whole TCP segment, split
    /// here into MTU-sized packets, encrypted into one batch and sent with GSO.
    async fn read_tun(&mut self) {
        for _ in 0..ROUNDS {
            let io = &mut self.io;
            let Ok(count) = self.tun.try_recv_multiple(&mut io.tun_read, &mut io.tun_packets, &mut io.tun_sizes, 0) else {
                break;
            };
            let now = Instant::now();
            for index in 0..count {
                self.encapsulate_batched(Source::Tun(index), now).await;
            }
            self.send_batch().await;
        }
    }

    /// Encrypts one packet into the send batch, sending the batch first if it is full.
    async fn encapsulate_batched(&mut self, source: Source, now: Instant) {
        if self.io.send.slot().is_none() {
            self.send_batch().await;
        }
        let io = &mut self.io;
        let packet = match source {
            Source::Tun(index) => &io.tun_packets[index][..io.tun_sizes[index]],
            Source::Scratch(len) => &io.scratch[..len],
        };
        let Some(slot) = io.send.slot() else { return };
        match self.device.encapsulate(packet, slot, now) {
            Ok(Some(transmit)) => io.send.commit(transmit.len, transmit.destination),
            Ok(None) => {}
            Err(error) => tracing::trace!(%error, "packet dropped"),
        }
    }

    /// Sends every run of the batch, one `sendmsg` each, and clears it.
    async fn send_batch(&mut self) {
        let io = &mut self.io;
        io.send.close();
        for run in io.send.runs() {
            let transmit = quinn_udp::Transmit {
                destination: run.destination,
                ecn: None,
                contents: &io.send.bytes()[run.range.clone()],
                segment_size: run.segment_size,
                src_ip: None,
            };
            send(&self.udp, &self.udp_state, &transmit).await;
        }
        io.send.clear();
        io.send.set_max_segments(self.udp_state.max_gso_segments());
    }

    /// Sends what the device queued: handshake messages, cookie replies, keepalives and the
    /// packets that waited for a session.
    async fn flush(&mut self) {
        let now = Instant::now();
        while let Some(transmit) = self.device.poll_transmit(&mut self.io.scratch, now) {
            let datagram = quinn_udp::Transmit {
                destination: transmit.destination,
                ecn: None,
                contents: &self.io.scratch[..transmit.len],
                segment_size: None,
                src_ip: None,
            };
            send(&self.udp, &self.udp_state, &datagram).await;
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
            self.io.scratch[..packet.len()].copy_from_slice(&packet);
            self.encapsulate_batched(Source::Scratch(packet.len()), now).await;
            self.send_batch().await;
        }
    }
}

impl PingJob {
    /// Records a reply to this ping; false if it is not ours.
    fn reply(&mut self, sequence: u16) -> bool {
        let Some(sent) = self.sent.get(&sequence) else { return false };
        let rtt = sent.elapsed();
        self.replies.push(json!({ "seq": sequence, "rtt_ms": rtt.as_secs_f64() * 1000.0, "path": "direct" }));
        true
    }
}

/// Where the packet to encrypt is.
#[derive(Debug, Clone, Copy)]
enum Source {
    Tun(usize),
    Scratch(usize),
}

/// Sends one transmit, waiting while the socket buffer is full. Other errors lose the
/// datagrams, as any network may: the tunnel's timers and TCP recover. Logged without the
/// destination (PRIV-01).
async fn send(udp: &UdpSocket, state: &quinn_udp::UdpSocketState, transmit: &quinn_udp::Transmit<'_>) {
    if let Err(error) = udp.async_io(Interest::WRITABLE, || state.try_send(udp.into(), transmit)).await {
        tracing::trace!(%error, "send failed");
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
