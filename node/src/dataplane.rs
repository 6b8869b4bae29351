//! The data plane: its own OS thread owning the UDP socket, the TUN device and the sans-IO
//! [`Device`], so that packets never wait behind the libp2p swarm. The control loop drives it
//! with [`DataCommand`]s through a [`DataSender`] (peers from the membership state, endpoints
//! learned on the control plane, status queries, pings).
//!
//! The thread is a plain level-triggered `epoll` loop over three descriptors (UDP, TUN, an
//! eventfd for commands), like boringtun's and wireguard-go's: an async runtime here cost
//! ~20 µs of CPU per wakeup, which is most of the latency the tunnel adds to an idle link.
//! Reads and writes go in batches — `recvmmsg` with UDP GRO, `sendmsg` with UDP GSO
//! (quinn-udp), TUN reads split and writes coalesced over the virtio-net header (tun-rs) —
//! wherever the kernel has them. Traffic with a remote that authenticated itself moves to a
//! UDP socket connected to it ([`crate::connected`]), which spares the kernel a route lookup
//! per datagram each way.

use crate::batch::{self, SendBatch};
use crate::connected::Connections;
use crate::icmp;
use protocol::paths::PathKind;
use protocol::{Device, PeerConfig, Received, StaticPublic, TunnelStats};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tun_rs::VIRTIO_NET_HDR_LEN;

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
/// a wakeup under load without starving commands or timers (epoll is level-triggered, so
/// what is left is seen at once).
const ROUNDS: usize = 8;
/// Interval between the echo requests of one `pal ping`, and how long to wait for the last.
const PING_INTERVAL: Duration = Duration::from_millis(500);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a send may wait for room in a full socket buffer before the datagrams are
/// dropped (as a congested link would).
const SEND_WAIT_MS: libc::c_int = 100;

/// epoll tokens.
const UDP: u64 = 1;
const TUN: u64 = 2;
const WAKE: u64 = 3;
/// Connected socket `slot` has token `CONNECTED + slot`.
const CONNECTED: u64 = 16;

#[derive(Debug)]
pub enum DataCommand {
    UpsertPeer(PeerConfig),
    RemovePeer(StaticPublic),
    /// Every peer at once: the device has left the network.
    RemoveAll,
    SetEndpoint(StaticPublic, SocketAddr),
    SetCandidates(StaticPublic, Vec<SocketAddr>),
    /// Send through this relay (CloudPal's data address and key) when no direct path works.
    SetRelay(Option<(SocketAddr, StaticPublic)>),
    /// Start a handshake with this peer now (the relay: it must know where we are).
    Connect(StaticPublic),
    Peers(oneshot::Sender<DataView>),
    Ping(Ping),
}

/// What `status` shows of one peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerView {
    pub stats: TunnelStats,
    pub has_session: bool,
    pub endpoint: Option<SocketAddr>,
    pub path: PathKind,
}

/// The data plane's view for the control plane: peers, and how peers see us.
#[derive(Debug, Clone, Default)]
pub struct DataView {
    pub peers: BTreeMap<StaticPublic, PeerView>,
    /// Our source address as each peer saw it (reflexive candidates).
    pub observed: Vec<SocketAddr>,
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
    udp: std::net::UdpSocket,
    udp_state: quinn_udp::UdpSocketState,
    connections: Connections,
    poller: Poller,
    tun: tun_rs::SyncDevice,
    io: Buffers,
    ping: Option<PingJob>,
    sequence: u16,
}

/// The control plane's end of the command queue: every command also pokes the data-plane
/// thread's eventfd, and dropping it stops the thread.
#[derive(Debug)]
pub struct DataSender {
    queue: mpsc::Sender<DataCommand>,
    wake: Arc<OwnedFd>,
}

/// The queue is full (or the data plane is gone).
#[derive(Debug)]
pub struct Busy;

impl DataSender {
    pub fn try_send(&self, command: DataCommand) -> Result<(), Busy> {
        self.queue.try_send(command).map_err(|_| Busy)?;
        poke(&self.wake);
        Ok(())
    }

    pub async fn send(&self, command: DataCommand) -> Result<(), Busy> {
        self.queue.send(command).await.map_err(|_| Busy)?;
        poke(&self.wake);
        Ok(())
    }
}

impl Drop for DataSender {
    fn drop(&mut self) {
        // The receiver sees the closed queue on its next look, which this wakes it for.
        let (queue, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.queue, queue));
        poke(&self.wake);
    }
}

fn poke(eventfd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: an eventfd and an 8-byte buffer; a full counter (EAGAIN) still wakes the reader.
    let _ = unsafe { libc::write(eventfd.as_raw_fd(), (&raw const one).cast(), 8) };
}

/// Starts the data plane on its own OS thread. The TUN device is created there; start-up
/// errors come back here. The thread ends when the [`DataSender`] is dropped.
pub async fn spawn(device: Device, udp: std::net::UdpSocket, tun: TunConfig) -> anyhow::Result<DataSender> {
    let (queue, commands) = mpsc::channel(COMMAND_QUEUE);
    // SAFETY: plain eventfd creation; the result is checked before being owned.
    let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if wake < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
    let thread_wake = wake.clone();
    let (started, start_result) = oneshot::channel::<anyhow::Result<()>>();
    std::thread::Builder::new().name("pal-dataplane".into()).spawn(move || {

        let opened = open_tun(&tun).and_then(|tun| Ok((tun, open_udp(&udp)?))).and_then(|(tun, udp_state)| {
            tracing::debug!(gso_segments = udp_state.max_gso_segments(), gro_segments = udp_state.gro_segments(), "data socket ready");
            let poller = Poller::new(&[(udp.as_raw_fd(), UDP), (tun.as_raw_fd(), TUN), (thread_wake.as_raw_fd(), WAKE)])?;
            Ok((tun, udp_state, poller))
        });
        match opened {
            Ok((tun, udp_state, poller)) => {
                let _ = started.send(Ok(()));
                let io = Buffers::new(udp_state.max_gso_segments());
                let connections = Connections::new(&udp);
                let plane = DataPlane { device, udp, udp_state, connections, poller, tun, io, ping: None, sequence: 0 };
                run(plane, &thread_wake, commands);
            }
            Err(error) => {
                let _ = started.send(Err(error));
            }
        }
    })?;
    start_result.await.map_err(|_| anyhow::anyhow!("the data plane failed to start"))??;
    Ok(DataSender { queue, wake })
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
fn open_tun(config: &TunConfig) -> anyhow::Result<tun_rs::SyncDevice> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(&config.name)
            .ipv4(config.ipv4, 10, None)
            .ipv6(config.ipv6, 48)
            .mtu(protocol::wire::DEFAULT_MTU as u16)
            .offload(offload)
            .build_sync()
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
    device.set_nonblocking(true)?;
    tracing::info!(tcp_offload = device.tcp_gso(), udp_offload = device.udp_gso(), "overlay interface up");
    Ok(device)
}

/// Switches on what the kernel offers a data socket (the shared one and each connected one)
/// for batches: `recvmmsg`, GRO and GSO (quinn-udp probes each; it also makes the socket
/// non-blocking), and lets the underlay fragment.
pub(crate) fn open_udp(udp: &std::net::UdpSocket) -> std::io::Result<quinn_udp::UdpSocketState> {
    let state = quinn_udp::UdpSocketState::new(udp.into())?;
    allow_fragmentation(udp);
    Ok(state)
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

/// A level-triggered epoll instance over the loop's descriptors.
struct Poller {
    epoll: OwnedFd,
    events: [libc::epoll_event; 16],
}

impl Poller {
    fn new(descriptors: &[(RawFd, u64)]) -> std::io::Result<Self> {
        // SAFETY: plain epoll creation; checked before being owned.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let poller = Poller { epoll, events: [libc::epoll_event { events: 0, u64: 0 }; 16] };
        for &(fd, token) in descriptors {
            poller.add(fd, token)?;
        }
        Ok(poller)
    }

    /// Watches `fd` for input. Closing `fd` takes it out again.
    fn add(&self, fd: RawFd, token: u64) -> std::io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: a valid descriptor and a valid event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for readiness or `timeout`; the tokens that are ready.
    fn wait(&mut self, timeout: Option<Duration>) -> impl Iterator<Item = u64> + '_ {
        // Round up: waking a millisecond late is harmless, waking early spins.
        let timeout_ms = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(60_000) as libc::c_int);
        // SAFETY: the buffer holds `events.len()` entries.
        let ready = unsafe {
            libc::epoll_wait(self.epoll.as_raw_fd(), self.events.as_mut_ptr(), self.events.len() as libc::c_int, timeout_ms)
        };
        let ready = usize::try_from(ready).unwrap_or(0);
        self.events[..ready].iter().map(|event| event.u64)
    }
}

/// Runs until the command queue closes.
fn run(mut plane: DataPlane, wake: &OwnedFd, mut commands: mpsc::Receiver<DataCommand>) {
    let mut deadline = plane.device.poll_timeout();
    let mut now = Instant::now();
    // Connected sockets with input, at most as many as one wait reports.
    let mut ready: Vec<usize> = Vec::with_capacity(16);
    // The last turn read TUN and did not run dry.
    let mut tun_busy = false;
    loop {
        // `now` is from after the last batch: reading the clock once per wakeup is enough
        // for timers kept in milliseconds.
        let ping_due = plane.ping.as_ref().map(|_| now + Duration::from_millis(100));
        let wake_at = [deadline, ping_due, plane.connections.deadline()].into_iter().flatten().min();
        let (mut udp, mut tun, mut poked) = (false, false, false);
        ready.clear();
        for token in plane.poller.wait(wake_at.map(|at| at.saturating_duration_since(now))) {
            match token {
                UDP => udp = true,
                TUN => tun = true,
                WAKE => poked = true,
                token => ready.push((token - CONNECTED) as usize),
            }
        }
        now = Instant::now();
        for &slot in &ready {
            plane.read_udp(Some(slot), now);
        }
        if udp {
            plane.read_udp(None, now);
        }
        if tun {
            tun_busy = plane.read_tun(now, tun_busy);
        } else {
            tun_busy = false;
        }
        if poked {
            let mut counter = 0u64;
            // SAFETY: reading an eventfd's 8-byte counter resets it.
            let _ = unsafe { libc::read(wake.as_raw_fd(), (&raw mut counter).cast(), 8) };
            loop {
                match commands.try_recv() {
                    Ok(command) => plane.on_command(command),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
        }
        if deadline.is_some_and(|at| at <= now) {
            plane.device.handle_timeout(now);
        }
        if plane.ping.is_some() {
            plane.advance_ping();
        }
        plane.flush(now);
        plane.connections.sweep(now);
        deadline = plane.device.poll_timeout();
    }
}

impl DataPlane {
    /// Up to [`ROUNDS`] `recvmmsg` calls on the shared socket (`None`) or a connected one,
    /// each decrypting its datagrams into one batch of TUN writes.
    fn read_udp(&mut self, connected: Option<usize>, now: Instant) {
        if let Some(slot) = connected {
            self.connections.heard(slot, now);
        }
        for _ in 0..ROUNDS {
            let received = {
                let io = &mut self.io;
                let mut slices: [IoSliceMut<'_>; UDP_BATCH] = {
                    let mut buffers = io.udp_read.iter_mut();
                    std::array::from_fn(|_| IoSliceMut::new(buffers.next().map(Vec::as_mut_slice).unwrap_or_default()))
                };
                match connected {
                    None => self.udp_state.recv((&self.udp).into(), &mut slices, &mut io.udp_meta),
                    Some(slot) => match self.connections.get(slot) {
                        Some(socket) => socket.state.recv((&socket.socket).into(), &mut slices, &mut io.udp_meta),
                        None => return,
                    },
                }
            };
            let count = match received {
                Ok(count) => count,
                // A connected socket reports an ICMP error (port unreachable) once; what
                // follows it is still to be read.
                Err(error) if connected.is_some() && error.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(_) => break,
            };
            let drained = count < UDP_BATCH;
            for index in 0..count {
                let meta = self.io.udp_meta[index];
                let stride = meta.stride.max(1);
                let mut offset = 0;
                while offset < meta.len {
                    let end = (offset + stride).min(meta.len);
                    let authenticated = self.on_datagram(meta.addr, index, offset..end, now);
                    if authenticated && connected.is_none() && self.connections.wants(meta.addr) {
                        self.connect(meta.addr, now);
                    }
                    offset = end;
                }
            }
            self.write_tun();
            if drained {
                // A short batch emptied the queue: another call would only say EAGAIN, and
                // the level-triggered epoll reports anything that arrived since.
                break;
            }
        }
    }

    /// Opens a socket connected to `remote` and watches it.
    fn connect(&mut self, remote: SocketAddr, now: Instant) {
        let Some((slot, fd)) = self.connections.open(remote, now) else { return };
        if let Err(error) = self.poller.add(fd, CONNECTED + slot as u64) {
            tracing::debug!(%error, "cannot watch a connected data socket");
            self.connections.close(slot);
        }
    }

    /// Decrypts one datagram of `udp_read[buffer]` into the next TUN write slot; writes the
    /// batch to TUN when the slots run out. True when the datagram authenticated its sender
    /// (a data packet, or an envelope to relay).
    fn on_datagram(&mut self, source: SocketAddr, buffer: usize, range: std::ops::Range<usize>, now: Instant) -> bool {
        let io = &mut self.io;
        let datagram = &io.udp_read[buffer][range];
        let out = &mut io.tun_write[io.tun_pending];
        out.clear();
        out.resize(VIRTIO_NET_HDR_LEN + datagram.len(), 0);
        match self.device.decapsulate(source, datagram, &mut out[VIRTIO_NET_HDR_LEN..], now) {
            Ok(Received::Packet { len, peer }) => {
                out.truncate(VIRTIO_NET_HDR_LEN + len);
                if let Some(sequence) = icmp::echo_reply_sequence(&out[VIRTIO_NET_HDR_LEN..])
                    && let Some(job) = self.ping.as_mut()
                    && job.reply(sequence, self.device.peer_path(&peer, now))
                {
                    return true;
                }
                io.tun_pending += 1;
                if io.tun_pending == io.tun_write.len() {
                    self.write_tun();
                }
                true
            }
            Ok(Received::Forward(transmit)) => {
                // Relay duty: the re-tagged envelope goes straight on.
                let datagram = quinn_udp::Transmit {
                    destination: transmit.destination,
                    ecn: None,
                    contents: &out[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + transmit.len],
                    segment_size: None,
                    src_ip: None,
                };
                send(&self.udp, &self.udp_state, &mut self.connections, &datagram, now);
                true
            }
            Ok(Received::Nothing) => false,
            Err(error) => {
                tracing::trace!(%error, "datagram dropped");
                false
            }
        }
    }

    /// Writes the pending decrypted packets to TUN, coalescing TCP segments of one flow into
    /// one write when offloads are on. A full TUN queue drops them, as a full link would.
    fn write_tun(&mut self) {
        let io = &mut self.io;
        if io.tun_pending == 0 {
            return;
        }
        let written = if io.tun_pending == 1 && self.tun.tcp_gso() {
            // Nothing to coalesce: skip the GRO tables (the zeroed header says "no offload").
            self.tun.send(&io.tun_write[0])
        } else if io.tun_pending == 1 {
            self.tun.send(&io.tun_write[0][VIRTIO_NET_HDR_LEN..])
        } else {
            self.tun.send_multiple(&mut io.tun_gro, &mut io.tun_write[..io.tun_pending], VIRTIO_NET_HDR_LEN)
        };
        if let Err(error) = written {
            tracing::trace!(%error, "TUN write failed");
        }
        io.tun_pending = 0;
    }

    /// Up to [`ROUNDS`] TUN reads; with offloads one read may carry a whole TCP segment, split
    /// here into MTU-sized packets, encrypted into one batch and sent with GSO.
    ///
    ///
    /// A TUN read cannot say whether more is queued, so reading until EAGAIN costs an extra
    /// system call per wakeup — on an idle link, one on the path of every packet. So a wakeup
    /// reads once, unless the wakeup before it also read TUN and did not run dry (packets
    /// are arriving faster than the loop turns): then up to [`ROUNDS`] times. The
    /// level-triggered epoll reports whatever is left. True if no read ran dry.
    fn read_tun(&mut self, now: Instant, burst: bool) -> bool {
        let rounds = if burst { ROUNDS } else { 1 };
        for _ in 0..rounds {
            let io = &mut self.io;
            let Ok(count) = self.tun.recv_multiple(&mut io.tun_read, &mut io.tun_packets, &mut io.tun_sizes, 0) else {
                return false;
            };
            for index in 0..count {
                self.encapsulate_batched(Source::Tun(index), now);
            }
            self.send_batch(now);
        }
        true
    }

    /// Encrypts one packet into the send batch, sending the batch first if it is full.
    fn encapsulate_batched(&mut self, source: Source, now: Instant) {
        if self.io.send.slot().is_none() {
            self.send_batch(now);
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
    fn send_batch(&mut self, now: Instant) {
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
            send(&self.udp, &self.udp_state, &mut self.connections, &transmit, now);
        }
        io.send.clear();
        io.send.set_max_segments(self.udp_state.max_gso_segments());
    }

    /// Sends what the device queued: handshake messages, cookie replies, keepalives and the
    /// packets that waited for a session.
    fn flush(&mut self, now: Instant) {
        while let Some(transmit) = self.device.poll_transmit(&mut self.io.scratch, now) {
            let datagram = quinn_udp::Transmit {
                destination: transmit.destination,
                ecn: None,
                contents: &self.io.scratch[..transmit.len],
                segment_size: None,
                src_ip: None,
            };
            send(&self.udp, &self.udp_state, &mut self.connections, &datagram, now);
        }
    }

    fn on_command(&mut self, command: DataCommand) {
        match command {
            DataCommand::UpsertPeer(config) => self.device.upsert_peer(config),
            DataCommand::RemovePeer(key) => {
                self.device.remove_peer(&key);
                // Its remote may be shared (CloudPal's) or not: reconnecting is cheap.
                self.connections.close_all();
            }
            DataCommand::RemoveAll => {
                for key in self.device.peers().copied().collect::<Vec<_>>() {
                    self.device.remove_peer(&key);
                }
                self.connections.close_all();
            }
            DataCommand::SetEndpoint(key, endpoint) => self.device.set_peer_endpoint(&key, endpoint, Instant::now()),
            DataCommand::SetCandidates(key, candidates) => self.device.set_peer_candidates(&key, &candidates, Instant::now()),
            DataCommand::SetRelay(relay) => self.device.set_relay(relay, Instant::now()),
            DataCommand::Connect(key) => self.device.connect(&key, Instant::now()),
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
                            path: self.device.peer_path(key, now),
                        };
                        (*key, view)
                    })
                    .collect();
                let mut observed: Vec<SocketAddr> = self.device.observed_addresses().map(|(_, address)| *address).collect();
                observed.sort();
                observed.dedup();
                let _ = reply.send(DataView { peers, observed });
            }
            DataCommand::Ping(ping) => {
                if let Some(job) = self.ping.take() {
                    let _ = job.ping.reply.send(json!({ "error": "superseded" }));
                }
                self.ping = Some(PingJob { ping, sent: BTreeMap::new(), replies: Vec::new(), last_sent: None });
                self.advance_ping();
            }
        }
    }

    /// Sends the next echo request if due; answers when all replies are in or late.
    fn advance_ping(&mut self) {
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
            self.encapsulate_batched(Source::Scratch(packet.len()), now);
            self.send_batch(now);
        }
    }
}

impl PingJob {
    /// Records a reply to this ping; false if it is not ours.
    fn reply(&mut self, sequence: u16, path: PathKind) -> bool {
        let Some(sent) = self.sent.get(&sequence) else { return false };
        let rtt = sent.elapsed();
        self.replies.push(json!({ "seq": sequence, "rtt_ms": rtt.as_secs_f64() * 1000.0, "path": path_name(path) }));
        true
    }
}

/// Where the packet to encrypt is.
#[derive(Debug, Clone, Copy)]
enum Source {
    Tun(usize),
    Scratch(usize),
}

/// Sends one transmit: on the socket connected to its destination if there is one, else on
/// the shared socket. A connected socket that fails is closed and the shared one sends.
/// Errors lose the datagrams, as any network may: the tunnel's timers and TCP recover.
/// Logged without the destination (PRIV-01).
fn send(udp: &std::net::UdpSocket, state: &quinn_udp::UdpSocketState, connections: &mut Connections, transmit: &quinn_udp::Transmit<'_>, now: Instant) {
    if let Some(slot) = connections.lookup(transmit.destination) {
        match connections.send(slot, transmit.contents, transmit.segment_size, now) {
            Ok(()) => return,
            Err(error) => {
                tracing::debug!(%error, "connected data socket failed; the shared one takes over");
                connections.close(slot);
            }
        }
    }
    // A lone datagram goes out with a plain sendto: quinn-udp's sendmsg adds control
    // messages (TOS) that cost the kernel measurably more per packet.
    let result = with_send_wait(udp.as_fd().as_raw_fd(), || match transmit.segment_size {
        None => udp.send_to(transmit.contents, transmit.destination).map(drop),
        Some(_) => state.try_send(udp.into(), transmit),
    });
    if let Err(error) = result {
        tracing::trace!(%error, "send failed");
    }
}

/// Runs `attempt`, and once more after waiting up to [`SEND_WAIT_MS`] for room if the socket
/// buffer was full.
pub(crate) fn with_send_wait(fd: RawFd, attempt: impl Fn() -> std::io::Result<()>) -> std::io::Result<()> {
    let result = attempt();
    if result.as_ref().is_err_and(|error| error.kind() == std::io::ErrorKind::WouldBlock) {
        let mut poll = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, SEND_WAIT_MS) } > 0 {
            return attempt();
        }
    }
    result
}

/// How `status` and `ping` name a path.
pub fn path_name(path: PathKind) -> &'static str {
    match path {
        PathKind::Direct => "direct",
        PathKind::Relay => "relay",
        PathKind::None => "none",
    }
}
