//! Connected UDP sockets: one per remote address that authenticated traffic comes from (a
//! peer's endpoint, or CloudPal's when relayed), bound to the data port beside the shared
//! socket with `SO_REUSEPORT` and `connect`ed to the remote — as boringtun does.
//!
//! Why: an unconnected socket costs the kernel a route lookup for every datagram sent and a
//! full input route lookup for every datagram received; a connected socket keeps its route
//! and lets the receive path's early demux find it (and its cached input route) directly.
//! Measured on the namespace benchmark's veth link, a UDP ping-pong takes ~45 µs less per
//! round trip over connected sockets (4 datagrams), which is most of what the tunnel adds
//! to an idle link's RTT.
//!
//! The kernel delivers a remote's datagrams to the socket connected to it and everything else
//! to the shared socket, so opening and closing these never loses a datagram. A connected
//! socket fixes its source address at `connect`; if the host's addresses or routes change
//! under it (a WiFi→cell handoff), a send fails (the address is gone) or the sweep sees that
//! the route now picks another source, and the socket is closed: traffic goes back to the
//! shared socket at once and a fresh connected socket follows the next authenticated datagram.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// At most this many connected sockets (descriptors) at once; beyond it, the shared socket.
pub const MAX_CONNECTED: usize = 64;
/// A socket nothing was sent or received on for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// While sockets are sending, how often their sources are checked against the routing table.
const RECHECK: Duration = Duration::from_secs(1);

/// One connected socket.
#[derive(Debug)]
pub struct Connected {
    pub socket: UdpSocket,
    /// Receive state (GRO and batch reads), as for the shared socket.
    pub state: quinn_udp::UdpSocketState,
    remote: SocketAddr,
    /// The source address the kernel fixed at `connect`.
    source: SocketAddr,
    last_used: Instant,
    sent: bool,
}

/// The table of connected sockets, indexed by slot (the poller's token is derived from it).
#[derive(Debug)]
pub struct Connections {
    /// The shared socket's local address and IPv6-only flag, which every connected socket copies.
    local: SocketAddr,
    only_v6: bool,
    slots: Vec<Option<Connected>>,
    by_remote: HashMap<SocketAddr, usize>,
    /// Opening failed in a way that will not change (no `SO_REUSEPORT` on the shared socket).
    disabled: bool,
    next_sweep: Option<Instant>,
}

impl Connections {
    pub fn new(shared: &UdpSocket) -> Self {
        let only_v6 = socket2::SockRef::from(shared).only_v6().unwrap_or(false);
        let local = shared.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Connections { local, only_v6, slots: Vec::new(), by_remote: HashMap::new(), disabled: false, next_sweep: None }
    }

    /// The slot of the socket connected to `remote`, if any.
    #[inline]
    pub fn lookup(&self, remote: SocketAddr) -> Option<usize> {
        if self.by_remote.is_empty() {
            return None;
        }
        self.by_remote.get(&canonical(remote)).copied()
    }

    pub fn get(&self, slot: usize) -> Option<&Connected> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// Notes that `slot` received datagrams.
    pub fn heard(&mut self, slot: usize, now: Instant) {
        if let Some(connected) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            connected.last_used = now;
        }
    }

    /// Whether a socket for `remote` could be opened now.
    pub fn wants(&self, remote: SocketAddr) -> bool {
        !self.disabled && self.by_remote.len() < MAX_CONNECTED && self.lookup(remote).is_none()
    }

    /// Opens a socket connected to `remote`; its slot and descriptor, for the poller.
    pub fn open(&mut self, remote: SocketAddr, now: Instant) -> Option<(usize, RawFd)> {
        let remote = canonical(remote);
        let connected = match open(self.local, self.only_v6, remote) {
            Ok((socket, state, source)) => Connected { socket, state, remote, source, last_used: now, sent: false },
            Err(error) => {
                // EADDRINUSE: the shared socket has no SO_REUSEPORT; nothing will change that.
                if error.raw_os_error() == Some(libc::EADDRINUSE) {
                    self.disabled = true;
                }
                tracing::debug!(%error, "no connected data socket; the shared one carries the traffic");
                return None;
            }
        };
        Some(self.insert(connected, now))
    }

    /// Takes in a socket bound to a port of its own (a birthday punch's winner, whose NAT
    /// mapping is the path to `remote`), `connect`ing it to `remote`; it replaces any socket
    /// for `remote`. Swept like the others: idle for a minute, the mapping is gone anyway.
    pub fn adopt(&mut self, socket: UdpSocket, remote: SocketAddr, now: Instant) -> Option<(usize, RawFd)> {
        let remote = canonical(remote);
        let local = socket.local_addr().ok()?;
        socket.connect(reachable_from(local, remote)).ok()?;
        let state = super::udp::open_udp(&socket).ok()?;
        let source = socket.local_addr().ok()?;
        if let Some(slot) = self.lookup(remote) {
            self.close(slot);
        }
        Some(self.insert(Connected { socket, state, remote, source, last_used: now, sent: false }, now))
    }

    fn insert(&mut self, connected: Connected, now: Instant) -> (usize, RawFd) {
        let remote = connected.remote;
        let fd = connected.socket.as_raw_fd();
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[slot] = Some(connected);
        self.by_remote.insert(remote, slot);
        self.next_sweep = Some(self.next_sweep.map_or(now + RECHECK, |at| at.min(now + RECHECK)));
        (slot, fd)
    }

    /// Closes one socket (closing the descriptor also takes it out of the poller).
    pub fn close(&mut self, slot: usize) {
        if let Some(connected) = self.slots.get_mut(slot).and_then(Option::take) {
            self.by_remote.remove(&connected.remote);
        }
    }

    /// Closes every socket (peers were removed: their remotes may now belong to nobody).
    pub fn close_all(&mut self) {
        self.slots.clear();
        self.by_remote.clear();
        self.next_sweep = None;
    }

    /// Sends `contents` on the socket in `slot` (one datagram, or `segment_size`-byte
    /// segments with GSO). `WouldBlock` means the socket buffer is full: the caller queues
    /// them until the socket is writable again; any other error means the socket is no good
    /// and the caller should close it and use the shared one.
    pub fn send(&mut self, slot: usize, contents: &[u8], segment_size: Option<usize>, now: Instant) -> io::Result<()> {
        let Some(connected) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        connected.last_used = now;
        connected.sent = true;
        let fd = connected.socket.as_raw_fd();
        let segment_size = segment_size.filter(|&size| size < contents.len());
        send_connected_retrying(fd, contents, segment_size)
    }

    /// When [`Connections::sweep`] wants to run next.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Closes sockets idle for [`IDLE`] and, among those that sent since the last sweep, any
    /// whose source address is no longer the one the kernel would pick for their remote.
    pub fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|at| at > now) {
            return;
        }
        let mut stale = Vec::new();
        let mut any_sent = false;
        // An unbound socket `connect`ed to each remote asks the kernel which source it would
        // pick now; made at most once per sweep, and dropped with it.
        let mut probe = None;
        let mut idle_at: Option<Instant> = None;
        for (slot, connected) in self.slots.iter_mut().enumerate() {
            let Some(connected) = connected.as_mut() else { continue };
            if now.saturating_duration_since(connected.last_used) >= IDLE {
                stale.push(slot);
                continue;
            }
            if std::mem::take(&mut connected.sent) {
                any_sent = true;
                let current = route_source(&mut probe, self.local, self.only_v6, connected.remote);
                // Canonical: a punch's socket is IPv4, the probe dual-stack (IPv4-mapped).
                if current.is_some_and(|source| source.ip().to_canonical() != connected.source.ip().to_canonical()) {
                    stale.push(slot);
                    continue;
                }
            }
            let expires = connected.last_used + IDLE;
            idle_at = Some(idle_at.map_or(expires, |at| at.min(expires)));
        }
        for slot in stale {
            self.close(slot);
        }
        self.next_sweep = if self.by_remote.is_empty() {
            None
        } else if any_sent {
            Some(now + RECHECK)
        } else {
            idle_at.map(|at| at.max(now + RECHECK))
        };
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so that both spellings find the same socket.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// `address` as a socket bound like `local` reaches it (IPv4 through a dual-stack socket is
/// IPv4-mapped).
pub(super) fn reachable_from(local: SocketAddr, address: SocketAddr) -> SocketAddr {
    match (local, address) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        _ => address,
    }
}

/// The shared data socket, bound to `listen` with `SO_REUSEPORT` so that connected sockets
/// can share its port. A port another socket holds is refused, even one bound with
/// `SO_REUSEPORT` by the same user (another node), which would otherwise share it silently.
///
/// `[::]` is dual-stack whatever the system's default (IPv4 arrives IPv4-mapped), so one
/// socket serves both families, as WireGuard's does.
pub fn bind_shared(listen: SocketAddr) -> io::Result<UdpSocket> {
    let only_v6 = (listen.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)).then_some(false);
    let exclusive = new_socket(listen, only_v6, false)?;
    exclusive.bind(&SockAddr::from(listen))?;
    let bound = exclusive.local_addr()?.as_socket().unwrap_or(listen);
    drop(exclusive);
    let socket = new_socket(bound, only_v6, true)?;
    socket.bind(&SockAddr::from(bound))?;
    Ok(socket.into())
}

/// Relay duty's reflector socket: the shared socket's address at the next port, dual-stack
/// like it ([`protocol::birthday`]).
pub fn bind_reflector(shared: &UdpSocket) -> io::Result<UdpSocket> {
    let local = shared.local_addr()?;
    let port = local.port().checked_add(1).ok_or(io::ErrorKind::AddrNotAvailable)?;
    let local = SocketAddr::new(local.ip(), port);
    let only_v6 = socket2::SockRef::from(shared).only_v6().unwrap_or(false);
    let socket = new_socket(local, Some(only_v6), false)?;
    socket.bind(&SockAddr::from(local))?;
    Ok(socket.into())
}

/// Creates a non-blocking UDP socket for `local`'s family, with the IPv6-only setting given
/// (else the system's) and, when asked, `SO_REUSEPORT` (which every socket on the port needs).
pub(super) fn new_socket(local: SocketAddr, only_v6: Option<bool>, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    if let (true, Some(only_v6)) = (local.is_ipv6(), only_v6) {
        socket.set_only_v6(only_v6)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // pal's own underlay traffic: the exit's policy rules keep it out of the tunnel (and the
    // route lookups of `route_source` see the underlay). Needs CAP_NET_ADMIN; without it
    // there is no full tunnel either, so nothing is lost.
    let _ = socket.set_mark(crate::exit::FWMARK);
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn open(local: SocketAddr, only_v6: bool, remote: SocketAddr) -> io::Result<(UdpSocket, quinn_udp::UdpSocketState, SocketAddr)> {
    let socket = new_socket(local, Some(only_v6), true)?;
    socket.bind(&SockAddr::from(local))?;
    socket.connect(&SockAddr::from(reachable_from(local, remote)))?;
    let socket: UdpSocket = socket.into();
    let state = super::udp::open_udp(&socket)?;
    let source = socket.local_addr()?;
    Ok((socket, state, source))
}

/// The source address the kernel picks now for datagrams to `remote`.
fn route_source(probe: &mut Option<UdpSocket>, local: SocketAddr, only_v6: bool, remote: SocketAddr) -> Option<SocketAddr> {
    if probe.is_none() {
        *probe = new_socket(local, Some(only_v6), false).ok().map(UdpSocket::from);
    }
    let probe = probe.as_ref()?;
    // `connect` on UDP sends nothing: it only looks the route up.
    probe.connect(reachable_from(local, remote)).ok()?;
    probe.local_addr().ok()
}

/// A `send` on a connected socket: no destination, so the kernel uses the socket's cached
/// route. With `segment_size`, one `sendmsg` carries the segments as a GSO super-datagram.
fn send_connected(fd: RawFd, contents: &[u8], segment_size: Option<usize>) -> io::Result<()> {
    let sent = match segment_size {
        // SAFETY: a valid descriptor and a buffer of `contents.len()` bytes.
        None => unsafe { libc::send(fd, contents.as_ptr().cast(), contents.len(), 0) },
        Some(size) => {
            #[repr(C, align(8))]
            struct Control([u8; 32]);
            let mut control = Control([0; 32]);
            let mut iov = libc::iovec { iov_base: contents.as_ptr().cast_mut().cast(), iov_len: contents.len() };
            // SAFETY: an all-zero msghdr is a valid empty one.
            let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
            message.msg_iov = &raw mut iov;
            message.msg_iovlen = 1;
            message.msg_control = control.0.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure size computation.
            message.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
            debug_assert!(message.msg_controllen <= control.0.len());
            // SAFETY: the control buffer is aligned and large enough for one u16 control
            // message, so CMSG_FIRSTHDR is non-null and its data has room for the u16.
            unsafe {
                let header = libc::CMSG_FIRSTHDR(&raw const message);
                (*header).cmsg_level = libc::SOL_UDP;
                (*header).cmsg_type = libc::UDP_SEGMENT;
                (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<u16>(), size as u16);
            }
            // SAFETY: the message points at live buffers for the duration of the call.
            unsafe { libc::sendmsg(fd, &raw const message, 0) }
        }
    };
    if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// [`send_connected`], again if a signal interrupted it.
fn send_connected_retrying(fd: RawFd, contents: &[u8], segment_size: Option<usize>) -> io::Result<()> {
    loop {
        match send_connected(fd, contents, segment_size) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    fn receive(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
        socket.set_nonblocking(false).ok()?;
        socket.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        let mut buffer = [0u8; 2048];
        let (len, from) = socket.recv_from(&mut buffer).ok()?;
        Some((buffer[..len].to_vec(), from))
    }

    #[test]
    fn a_second_node_cannot_share_the_data_port() {
        let shared = bind_shared(loopback()).expect("bind");
        let port = shared.local_addr().expect("address");
        let error = bind_shared(port).expect_err("a second node on the same port");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn the_connected_socket_takes_its_remotes_traffic_both_ways_and_gives_it_back_when_closed() {
        let shared = bind_shared(loopback()).expect("bind");
        let local = shared.local_addr().expect("address");
        let remote = UdpSocket::bind(loopback()).expect("remote");
        let stranger = UdpSocket::bind(loopback()).expect("stranger");
        let mut connections = Connections::new(&shared);
        let now = Instant::now();
        assert!(connections.wants(remote.local_addr().expect("address")));
        let (slot, _) = connections.open(remote.local_addr().expect("address"), now).expect("open");
        assert_eq!(connections.lookup(remote.local_addr().expect("address")), Some(slot));
        assert!(!connections.wants(remote.local_addr().expect("address")));
        let connected = connections.get(slot).expect("slot").socket.try_clone().expect("clone");

        // Sent through it: from the data port.
        connections.send(slot, b"hello", None, now).expect("send");
        assert_eq!(receive(&remote), Some((b"hello".to_vec(), local)));

        // The remote's datagrams arrive on it, a stranger's on the shared socket.
        remote.send_to(b"from remote", local).expect("send");
        stranger.send_to(b"from stranger", local).expect("send");
        assert_eq!(receive(&connected).map(|(data, _)| data), Some(b"from remote".to_vec()));
        assert_eq!(receive(&shared).map(|(data, _)| data), Some(b"from stranger".to_vec()));

        // Closed: the remote is the shared socket's again.
        connections.close(slot);
        drop(connected);
        assert_eq!(connections.lookup(remote.local_addr().expect("address")), None);
        remote.send_to(b"again", local).expect("send");
        assert_eq!(receive(&shared).map(|(data, _)| data), Some(b"again".to_vec()));
    }

    #[test]
    fn a_gso_send_arrives_as_separate_datagrams() {
        let shared = bind_shared(loopback()).expect("bind");
        let remote = UdpSocket::bind(loopback()).expect("remote");
        let mut connections = Connections::new(&shared);
        let now = Instant::now();
        let (slot, _) = connections.open(remote.local_addr().expect("address"), now).expect("open");
        let mut contents = vec![1u8; 100];
        contents.extend([2u8; 100]);
        contents.extend([3u8; 40]);
        connections.send(slot, &contents, Some(100), now).expect("send");
        let sizes: Vec<(usize, u8)> = (0..3).filter_map(|_| receive(&remote)).map(|(data, _)| (data.len(), data[0])).collect();
        assert_eq!(sizes, [(100, 1), (100, 2), (40, 3)]);
    }

    #[test]
    fn idle_sockets_are_closed_by_the_sweep_and_busy_ones_kept() {
        let shared = bind_shared(loopback()).expect("bind");
        let idle = UdpSocket::bind(loopback()).expect("remote");
        let busy = UdpSocket::bind(loopback()).expect("remote");
        let mut connections = Connections::new(&shared);
        let start = Instant::now();
        let (_, _) = connections.open(idle.local_addr().expect("address"), start).expect("open");
        let (busy_slot, _) = connections.open(busy.local_addr().expect("address"), start).expect("open");
        assert!(connections.deadline().is_some_and(|at| at <= start + RECHECK));
        let later = start + IDLE - Duration::from_secs(1);
        connections.send(busy_slot, b"keep", None, later).expect("send");
        connections.sweep(start + IDLE);
        assert_eq!(connections.lookup(idle.local_addr().expect("address")), None, "the idle one is closed");
        assert_eq!(connections.lookup(busy.local_addr().expect("address")), Some(busy_slot), "the busy one stays");
        assert!(connections.deadline().is_some());
        connections.sweep(later + IDLE);
        assert_eq!(connections.lookup(busy.local_addr().expect("address")), None);
        assert_eq!(connections.deadline(), None, "nothing left to sweep: no timer");
    }

    #[test]
    fn the_table_stops_at_its_limit_and_empties_on_close_all() {
        let shared = bind_shared(loopback()).expect("bind");
        let mut connections = Connections::new(&shared);
        let now = Instant::now();
        let remotes: Vec<UdpSocket> = (0..MAX_CONNECTED + 1).map(|_| UdpSocket::bind(loopback()).expect("remote")).collect();
        for remote in &remotes[..MAX_CONNECTED] {
            connections.open(remote.local_addr().expect("address"), now).expect("open");
        }
        assert!(!connections.wants(remotes[MAX_CONNECTED].local_addr().expect("address")));
        connections.close_all();
        assert!(connections.wants(remotes[MAX_CONNECTED].local_addr().expect("address")));
        assert_eq!(connections.deadline(), None);
    }

    #[test]
    fn ipv4_mapped_and_plain_ipv4_name_the_same_remote() {
        let shared = bind_shared(loopback()).expect("bind");
        let remote = UdpSocket::bind(loopback()).expect("remote");
        let address = remote.local_addr().expect("address");
        let mut connections = Connections::new(&shared);
        let (slot, _) = connections.open(address, Instant::now()).expect("open");
        let mapped = SocketAddr::new(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), address.port());
        assert_eq!(connections.lookup(mapped), Some(slot));
    }
}
