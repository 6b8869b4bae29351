//! The data plane: its own OS thread owning the UDP sockets, the TUN device and the sans-IO
//! [`Device`], so that packets never wait behind the libp2p swarm. The control side drives it
//! with typed [`DataCommand`]s through a [`DataSender`] and hears back through [`DataEvent`]s
//! (views for `status`, ping reports) — no JSON, no reply channels.
//!
//! The thread is a plain level-triggered `epoll` loop over the shared UDP socket, TUN, an
//! eventfd for commands and the connected sockets, like boringtun's and wireguard-go's: an
//! async runtime here cost ~20 µs of CPU per wakeup, which is most of the latency the tunnel
//! adds to an idle link. Reads and writes go in batches — `recvmmsg` with UDP GRO, `sendmsg`
//! with UDP GSO (quinn-udp), TUN reads split and writes coalesced over the virtio-net header
//! (tun-rs) — wherever the kernel has them. Traffic with a remote that authenticated itself
//! moves to a UDP socket connected to it ([`connected`]), which spares the kernel a route
//! lookup per datagram each way. The thread never sleeps on a send: a full socket buffer queues
//! the datagrams ([`sendq`]) until EPOLLOUT says there is room, and while much is queued TUN
//! reads pause, which pushes back on the senders inside the tunnel without stalling any peer's
//! receive path.

pub mod batch;
pub mod commands;
pub mod connected;
pub mod icmp;
mod ping;
mod poller;
pub mod punch;
pub mod sendq;
pub mod tun;
pub mod udp;

use batch::SendBatch;
pub use commands::{DataCommand, DataEvent, DataView, PeerView, Token};
use connected::Connections;
use ping::{PingJob, Step};
use poller::{Interest, Poller};
use protocol::{Device, Received, StaticPublic};
use punch::PunchSockets;
use sendq::SendQueue;
use std::collections::BTreeSet;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
pub use tun::{OverlayConfig, TunConfig};
use tun_rs::VIRTIO_NET_HDR_LEN;

/// Commands queued for the data plane: a full membership refresh (one command per device, at
/// most 512) always fits.
pub const COMMAND_QUEUE: usize = 2 * membership::state::MAX_DEVICES + 64;
/// Events waiting for the control side (answers to its queries).
pub const EVENT_QUEUE: usize = 64;
/// One datagram or packet, or one GRO/GSO aggregate of them.
const BUFFER_LEN: usize = 65_536;
/// How often at most the packet thread tells the control plane its view (paths, endpoints,
/// how peers see us), and only when it changed.
const VIEW_EVERY: Duration = Duration::from_secs(1);
/// Packets one TUN read can split into (64 KiB / MSS, with room), and so the send batch.
const TUN_BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;
/// Buffers per `recvmmsg`; each takes up to 64 datagrams when the kernel does GRO.
const UDP_BATCH: usize = 8;
/// Reads per wakeup before the loop looks at its other sources again: amortises the cost of
/// a wakeup under load without starving commands or timers (epoll is level-triggered, so
/// what is left is seen at once).
const ROUNDS: usize = 8;
/// Queued bytes above which TUN reads pause, and below which they resume.
const PAUSE_TUN_ABOVE: usize = 512 << 10;
const RESUME_TUN_BELOW: usize = 128 << 10;

/// epoll tokens.
const UDP: u64 = 1;
const TUN: u64 = 2;
const WAKE: u64 = 3;
/// Relay duty's reflector socket (the data port + 1: [`protocol::birthday`]).
const REFLECTOR: u64 = 4;
/// Connected socket `slot` has token `CONNECTED + slot`.
const CONNECTED: u64 = 16;
/// A birthday punch's socket `index` has token `PUNCH + index` (above every connected slot).
const PUNCH: u64 = 1 << 20;

struct DataPlane {
    device: Device,
    /// Whose handshakes the device answers (its authorizer reads this; only this thread
    /// writes it, from [`DataCommand::SetMembers`]).
    members: Arc<RwLock<BTreeSet<StaticPublic>>>,
    out: Outbound,
    poller: Poller,
    tun: tun::Overlay,
    tun_paused: bool,
    io: Buffers,
    ping: Option<PingJob>,
    sequence: u16,
    events: mpsc::Sender<DataEvent>,
    /// Relay duty: the reflector port, answering the NAT check.
    reflector: Option<std::net::UdpSocket>,
    /// The hard side's sockets of a birthday punch under way.
    punch: PunchSockets,
}

/// The control side's end of the command queue: every command also pokes the data-plane
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

/// Starts the data plane on its own OS thread; it answers queries on `events`. The TUN
/// device is created there; start-up errors come back here. The thread ends when the
/// [`DataSender`] is dropped.
pub async fn spawn(mut device: Device, udp: std::net::UdpSocket, reflector: Option<std::net::UdpSocket>, tun: OverlayConfig, events: mpsc::Sender<DataEvent>) -> anyhow::Result<DataSender> {
    let (queue, commands) = mpsc::channel(COMMAND_QUEUE);
    // SAFETY: plain eventfd creation; the result is checked before being owned.
    let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if wake < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
    let thread_wake = wake.clone();
    let members = Arc::new(RwLock::new(BTreeSet::new()));
    let authorized = members.clone();
    device.set_authorizer(Box::new(move |key| authorized.read().is_ok_and(|keys| keys.contains(key))));
    let (started, start_result) = oneshot::channel::<anyhow::Result<()>>();
    std::thread::Builder::new().name("pal-dataplane".into()).spawn(move || {
        let opened = tun.open().and_then(|tun| Ok((tun, udp::open_udp(&udp)?))).and_then(|(tun, udp_state)| {
            tracing::debug!(gso_segments = udp_state.max_gso_segments(), gro_segments = udp_state.gro_segments(), "data socket ready");
            let mut watched = vec![(udp.as_raw_fd(), UDP), (tun.as_raw_fd(), TUN), (thread_wake.as_raw_fd(), WAKE)];
            watched.extend(reflector.as_ref().map(|socket| (socket.as_raw_fd(), REFLECTOR)));
            let poller = Poller::new(&watched)?;
            Ok((tun, udp_state, poller))
        });
        match opened {
            Ok((tun, udp_state, poller)) => {
                let _ = started.send(Ok(()));
                let io = Buffers::new(udp_state.max_gso_segments());
                let connections = Connections::new(&udp);
                let local = udp.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                let out = Outbound { udp, local, udp_state, connections, shared_queue: SendQueue::default(), queues: Vec::new() };
                let plane = DataPlane { device, members, out, poller, tun, tun_paused: false, io, ping: None, sequence: 0, events, reflector, punch: PunchSockets::default() };
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

/// Runs until the command queue closes.
fn run(mut plane: DataPlane, wake: &OwnedFd, mut commands: mpsc::Receiver<DataCommand>) {
    let mut deadline = plane.device.poll_timeout();
    let mut now = Instant::now();
    // Connected sockets with input, and with room for their queued datagrams.
    let mut readable: Vec<usize> = Vec::with_capacity(16);
    let mut writable: Vec<usize> = Vec::with_capacity(16);
    let mut punched: Vec<usize> = Vec::new();
    // The last turn read TUN and did not run dry.
    let mut tun_busy = false;
    // The view the control plane last got, and when to compare again: a second after a turn
    // that did anything, and never while nothing happens (an idle node does not wake for it).
    let mut view_pushed: Option<DataView> = None;
    let mut view_due = Some(now);
    // What the control side was last told of the TCP fallback's stream.
    let mut stream_wanted = false;
    loop {
        // `now` is from after the last batch: reading the clock once per wakeup is enough
        // for timers kept in milliseconds.
        let ping_due = plane.ping.as_ref().map(|_| now + Duration::from_millis(100));
        let wake_at = [deadline, ping_due, plane.out.connections.deadline(), view_due, plane.punch.deadline()].into_iter().flatten().min();
        let (mut udp, mut udp_room, mut tun, mut poked, mut reflect) = (false, false, false, false, false);
        readable.clear();
        writable.clear();
        punched.clear();
        for ready in plane.poller.wait(wake_at.map(|at| at.saturating_duration_since(now))) {
            match ready.token {
                UDP => {
                    udp |= ready.readable;
                    udp_room |= ready.writable;
                }
                TUN => tun = true,
                WAKE => poked = true,
                REFLECTOR => reflect = true,
                token if token >= PUNCH => punched.push((token - PUNCH) as usize),
                token => {
                    let slot = (token - CONNECTED) as usize;
                    if ready.readable {
                        readable.push(slot);
                    }
                    if ready.writable {
                        writable.push(slot);
                    }
                }
            }
        }
        now = Instant::now();
        if udp_room {
            plane.out.flush_shared(&plane.poller);
        }
        for &slot in &writable {
            plane.out.flush_slot(&plane.poller, slot, now);
        }
        for &slot in &readable {
            plane.read_udp(Some(slot), now);
        }
        if udp {
            plane.read_udp(None, now);
        }
        for &index in &punched {
            plane.read_punch(index, now);
        }
        if reflect {
            plane.reflect(now);
        }
        if tun && !plane.tun_paused {
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
                    Ok(command) => plane.on_command(command, now),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
        }
        let timed_out = deadline.is_some_and(|at| at <= now);
        if timed_out {
            plane.device.handle_timeout(now);
        }
        plane.punch.expire(now);
        let wanted = plane.device.relay_stream_wanted(now);
        if wanted != stream_wanted && plane.events.try_send(DataEvent::RelayStream { wanted }).is_ok() {
            stream_wanted = wanted;
        }
        if udp || tun || poked || timed_out || !readable.is_empty() || !punched.is_empty() {
            view_due.get_or_insert(now + VIEW_EVERY);
        }
        if view_due.is_some_and(|at| at <= now) {
            view_due = None;
            let view = plane.view(now);
            if view_pushed.as_ref() != Some(&view) {
                let _ = plane.events.try_send(DataEvent::View { token: commands::PUSHED_VIEW, view: view.clone() });
                view_pushed = Some(view);
            }
        }
        if plane.ping.is_some() {
            plane.advance_ping(now);
        }
        plane.flush(now);
        plane.out.connections.sweep(now);
        plane.out.forget_closed();
        plane.pace_tun();
        deadline = plane.device.poll_timeout();
    }
}

impl DataPlane {
    /// Up to [`ROUNDS`] `recvmmsg` calls on the shared socket (`None`) or a connected one,
    /// each decrypting its datagrams into one batch of TUN writes.
    fn read_udp(&mut self, connected: Option<usize>, now: Instant) {
        if let Some(slot) = connected {
            self.out.connections.heard(slot, now);
        }
        for _ in 0..ROUNDS {
            let received = {
                let io = &mut self.io;
                let mut slices: [IoSliceMut<'_>; UDP_BATCH] = {
                    let mut buffers = io.udp_read.iter_mut();
                    std::array::from_fn(|_| IoSliceMut::new(buffers.next().map(Vec::as_mut_slice).unwrap_or_default()))
                };
                match connected {
                    None => self.out.udp_state.recv((&self.out.udp).into(), &mut slices, &mut io.udp_meta),
                    Some(slot) => match self.out.connections.get(slot) {
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
                let mut meta = self.io.udp_meta[index];
                // A dual-stack socket hears IPv4 peers IPv4-mapped: one spelling everywhere.
                meta.addr = SocketAddr::new(meta.addr.ip().to_canonical(), meta.addr.port());
                let stride = meta.stride.max(1);
                let mut offset = 0;
                while offset < meta.len {
                    let end = (offset + stride).min(meta.len);
                    let authenticated = self.on_datagram(meta.addr, index, offset..end, now);
                    if authenticated && connected.is_none() && self.out.connections.wants(meta.addr) {
                        self.connect(meta.addr, now);
                    }
                    offset = end;
                }
            }
            self.write_tun();
            self.send_batch(now);
            if drained {
                // A short batch emptied the queue: another call would only say EAGAIN, and
                // the level-triggered epoll reports anything that arrived since.
                break;
            }
        }
    }

    /// Opens a socket connected to `remote` and watches it.
    fn connect(&mut self, remote: SocketAddr, now: Instant) {
        let Some((slot, fd)) = self.out.connections.open(remote, now) else { return };
        self.out.queue(slot).clear();
        if let Err(error) = self.poller.add(fd, CONNECTED + slot as u64) {
            tracing::debug!(%error, "cannot watch a connected data socket");
            self.out.connections.close(slot);
        }
    }

    /// Decrypts one datagram of `udp_read[buffer]` into the next TUN write slot; writes the
    /// batch to TUN when the slots run out. True when the datagram authenticated its sender
    /// (a data packet, or an envelope to relay).
    fn on_datagram(&mut self, source: SocketAddr, buffer: usize, range: std::ops::Range<usize>, now: Instant) -> bool {
        if self.device.is_relay_server() && protocol::relay::is_envelope(&self.io.udp_read[buffer][range.clone()]) {
            return self.on_envelope_to_relay(source, buffer, range, now);
        }
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
                    && job.reply(sequence, self.device.peer_path(&peer, now), now)
                {
                    return true;
                }
                io.tun_pending += 1;
                if io.tun_pending == io.tun_write.len() {
                    self.write_tun();
                }
                true
            }
            // Forwards come from relay duty only (`on_envelope_to_relay`).
            Ok(Received::Nothing | Received::Forward(_)) => false,
            Err(error) => {
                tracing::trace!(%error, "datagram dropped");
                false
            }
        }
    }

    /// Relay duty: an envelope is resealed straight into the send batch (relay duty never turns
    /// one into a packet for us), where the envelopes of one flow to one member leave in one
    /// GSO `sendmsg` once this receive batch is done — the forwarding path batched like the
    /// direct one, with no copy between. True when it authenticated its sender.
    fn on_envelope_to_relay(&mut self, source: SocketAddr, buffer: usize, range: std::ops::Range<usize>, now: Instant) -> bool {
        if self.io.send.slot().is_none() {
            self.send_batch(now);
        }
        let io = &mut self.io;
        let Some(slot) = io.send.slot() else { return false };
        match self.device.decapsulate(source, &io.udp_read[buffer][range], slot, now) {
            Ok(Received::Forward(transmit)) => {
                io.send.commit(transmit.len, transmit.destination);
                true
            }
            Ok(_) => false,
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

    /// Pauses TUN reads while much waits for room in the sockets, and resumes them once the
    /// queues have drained (epoll would otherwise report the readable TUN over and over).
    fn pace_tun(&mut self) {
        let queued = self.out.queued_bytes();
        let pause = if self.tun_paused { queued >= RESUME_TUN_BELOW } else { queued > PAUSE_TUN_ABOVE };
        if pause != self.tun_paused {
            let interest = if pause { Interest::None } else { Interest::Read };
            if self.poller.modify(self.tun.as_raw_fd(), TUN, interest).is_ok() {
                self.tun_paused = pause;
            }
        }
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
            self.out.send(&self.poller, &transmit, now);
        }
        io.send.clear();
        io.send.set_max_segments(self.out.udp_state.max_gso_segments());
    }

    /// Sends what the device queued: handshake messages, cookie replies, keepalives and the
    /// packets that waited for a session.
    fn flush(&mut self, now: Instant) {
        // A birthday punch's probes leave before its go signal, which `poll_transmit` holds.
        self.open_punch(now);
        while let Some(transmit) = self.device.poll_transmit(&mut self.io.scratch, now) {
            let datagram = quinn_udp::Transmit {
                destination: transmit.destination,
                ecn: None,
                contents: &self.io.scratch[..transmit.len],
                segment_size: None,
                src_ip: None,
            };
            self.out.send(&self.poller, &datagram, now);
        }
    }

    fn on_command(&mut self, command: DataCommand, now: Instant) {
        match command {
            DataCommand::UpsertPeer(config) => self.device.upsert_peer(config),
            DataCommand::RemovePeer(key) => {
                self.device.remove_peer(&key);
                // Its remote may be shared (CloudPal's) or not: reconnecting is cheap.
                self.out.close_all();
            }
            DataCommand::RemoveAll => {
                for key in self.device.peers().copied().collect::<Vec<_>>() {
                    self.device.remove_peer(&key);
                }
                self.out.close_all();
            }
            DataCommand::SetMembers(keys) => {
                if let Ok(mut members) = self.members.write() {
                    *members = keys;
                }
            }
            DataCommand::SetEndpoint(key, endpoint) => self.device.set_peer_endpoint(&key, endpoint, now),
            DataCommand::SetCandidates(key, candidates) => self.device.set_peer_candidates(&key, &candidates, now),
            DataCommand::SetRelay(relay) => self.device.set_relay(relay, now),
            DataCommand::SetRelayStream(stream) => self.device.set_relay_stream(stream, now),
            DataCommand::SetRelayKeepalive(every) => self.device.set_relay_keepalive(every),
            DataCommand::SetRelayRate(rate) => self.device.set_relay_rate(rate),
            DataCommand::SetPeerNat(key, nat) => self.device.set_peer_nat(&key, nat, now),
            DataCommand::Connect(key) => self.device.connect(&key, now),
            DataCommand::QueryView(token) => {
                let mut view = self.view(now);
                view.stats = self.device.stats();
                let _ = self.events.try_send(DataEvent::View { token, view });
            }
            DataCommand::Ping { token, source, target, count } => {
                if let Some(job) = self.ping.take() {
                    let _ = self.events.try_send(DataEvent::PingDone { token: job.token, report: job.report() });
                }
                self.ping = Some(PingJob::new(token, source, target, count));
                self.advance_ping(now);
            }
        }
    }

    fn view(&self, now: Instant) -> DataView {
        let peers = self
            .device
            .peers()
            .map(|key| {
                let view = PeerView {
                    stats: self.device.peer_stats(key).unwrap_or_default(),
                    endpoint: self.device.peer_endpoint(key),
                    path: self.device.peer_path(key, now),
                    punches: self.device.peer_punches(key),
                };
                (*key, view)
            })
            .collect();
        let mut observed: Vec<SocketAddr> = self.device.observed_addresses().map(|(_, address)| *address).collect();
        observed.sort();
        observed.dedup();
        let nat = self.device.nat_kind().zip(self.device.reflexive_address());
        DataView { peers, observed, nat, stats: protocol::DeviceStats::default() }
    }

    /// Sends the next echo request if due; reports when all replies are in or late.
    fn advance_ping(&mut self, now: Instant) {
        let Some(job) = self.ping.as_mut() else { return };
        match job.step(self.sequence.wrapping_add(1), now) {
            Step::Send(sequence) => {
                self.sequence = sequence;
                let packet = icmp::echo_request(job.source, job.target, sequence);
                self.io.scratch[..packet.len()].copy_from_slice(&packet);
                self.encapsulate_batched(Source::Scratch(packet.len()), now);
                self.send_batch(now);
            }
            Step::Wait => {}
            Step::Done => {
                if let Some(job) = self.ping.take() {
                    let _ = self.events.try_send(DataEvent::PingDone { token: job.token, report: job.report() });
                }
            }
        }
    }
}

/// Where the packet to encrypt is.
#[derive(Debug, Clone, Copy)]
enum Source {
    Tun(usize),
    Scratch(usize),
}

/// Everything that sends: the shared socket, the connected ones, and what waits for room in
/// each.
struct Outbound {
    udp: std::net::UdpSocket,
    /// The shared socket's address (IPv6 for a dual-stack one), read once.
    local: SocketAddr,
    udp_state: quinn_udp::UdpSocketState,
    connections: Connections,
    shared_queue: SendQueue,
    /// By connected-socket slot; cleared when a slot's socket is opened.
    queues: Vec<SendQueue>,
}

impl Outbound {
    fn queue(&mut self, slot: usize) -> &mut SendQueue {
        if self.queues.len() <= slot {
            self.queues.resize_with(slot + 1, SendQueue::default);
        }
        &mut self.queues[slot]
    }

    /// Sends one transmit: on the socket connected to its destination if there is one, else
    /// on the shared socket; behind what already waits there, if anything does. A connected
    /// socket that fails is closed and the shared one sends. Errors lose the datagrams, as any
    /// network may: the tunnel's timers and TCP recover. Logged without the destination
    /// (PRIV-01).
    fn send(&mut self, poller: &Poller, transmit: &quinn_udp::Transmit<'_>, now: Instant) {
        if let Some(slot) = self.connections.lookup(transmit.destination) {
            if !self.queue(slot).is_empty() {
                self.queue(slot).push(transmit.destination, transmit.contents, transmit.segment_size);
                return;
            }
            match self.connections.send(slot, transmit.contents, transmit.segment_size, now) {
                Ok(()) => return,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    self.queue(slot).push(transmit.destination, transmit.contents, transmit.segment_size);
                    self.watch_slot(poller, slot, Interest::ReadWrite);
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "connected data socket failed; the shared one takes over");
                    self.connections.close(slot);
                    self.queue(slot).clear();
                }
            }
        }
        if !self.shared_queue.is_empty() {
            self.shared_queue.push(transmit.destination, transmit.contents, transmit.segment_size);
            return;
        }
        match send_shared(&self.udp, &self.udp_state, connected::reachable_from(self.local, transmit.destination), transmit.contents, transmit.segment_size) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                self.shared_queue.push(transmit.destination, transmit.contents, transmit.segment_size);
                let _ = poller.modify(self.udp.as_raw_fd(), UDP, Interest::ReadWrite);
            }
            Err(error) => tracing::trace!(%error, "send failed"),
        }
    }

    /// The shared socket has room: send what waits, and stop watching for room once done.
    fn flush_shared(&mut self, poller: &Poller) {
        while let Some(item) = self.shared_queue.front() {
            match send_shared(&self.udp, &self.udp_state, connected::reachable_from(self.local, item.destination), &item.contents, item.segment_size) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                _ => self.shared_queue.pop(),
            }
        }
        let _ = poller.modify(self.udp.as_raw_fd(), UDP, Interest::Read);
    }

    /// Connected socket `slot` has room: likewise.
    fn flush_slot(&mut self, poller: &Poller, slot: usize, now: Instant) {
        while let Some(item) = self.queues.get(slot).and_then(SendQueue::front) {
            match self.connections.send(slot, &item.contents, item.segment_size, now) {
                Ok(()) => self.queues[slot].pop(),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.connections.close(slot);
                    self.queues[slot].clear();
                    return;
                }
            }
        }
        self.watch_slot(poller, slot, Interest::Read);
    }

    fn watch_slot(&self, poller: &Poller, slot: usize, interest: Interest) {
        if let Some(connected) = self.connections.get(slot) {
            let _ = poller.modify(connected.socket.as_raw_fd(), CONNECTED + slot as u64, interest);
        }
    }

    fn close_all(&mut self) {
        self.connections.close_all();
        self.queues.iter_mut().for_each(SendQueue::clear);
    }

    /// Drops what waits for sockets that have been closed (by the sweep, say).
    fn forget_closed(&mut self) {
        for (slot, queue) in self.queues.iter_mut().enumerate() {
            if !queue.is_empty() && self.connections.get(slot).is_none() {
                queue.clear();
            }
        }
    }

    fn queued_bytes(&self) -> usize {
        self.shared_queue.bytes() + self.queues.iter().map(SendQueue::bytes).sum::<usize>()
    }
}

/// One send on the shared socket. A lone datagram goes out with a plain sendto: quinn-udp's
/// sendmsg adds control messages (TOS) that cost the kernel measurably more per packet.
/// `destination` is given as the socket reaches it ([`connected::reachable_from`]: IPv4-mapped
/// through a dual-stack socket, which refuses an AF_INET address).
fn send_shared(udp: &std::net::UdpSocket, state: &quinn_udp::UdpSocketState, destination: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> std::io::Result<()> {
    match segment_size {
        None => udp.send_to(contents, destination).map(drop),
        Some(_) => {
            let transmit = quinn_udp::Transmit { destination, ecn: None, contents, segment_size, src_ip: None };
            state.try_send(udp.into(), &transmit)
        }
    }
}
