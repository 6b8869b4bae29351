//! The userspace TCP/IP stack: smoltcp over one end of the data plane's packet socket pair.
//!
//! One task owns the interface and every socket. Connections are handed to whoever asked
//! ([`StackHandle::connect`], or an exposed port's listener) as a [`Link`]: bounded channels
//! both ways, so a slow local reader holds data in smoltcp's window (TCP flow control does the
//! rest) instead of in memory here.

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, mpsc, oneshot};

/// What one connection buffers in smoltcp: its receive window, and what it may have in
/// flight. The second is kept small on purpose: smoltcp sends all it may at once, and a
/// burst larger than a peer's UDP receive buffer is lost whole (then waits out a 1 s
/// retransmission timeout); 64 KiB in flight still fills the path at LAN round trips.
const RECEIVE_BUFFER: usize = 256 * 1024;
const SEND_BUFFER: usize = 64 * 1024;
/// Chunks queued between a connection's task and the stack, each way.
const LINK_QUEUE: usize = 16;
const CHUNK: usize = 16 * 1024;
/// A connection that is not established by then fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Polls per turn of the loop while smoltcp has more to send (one poll sends at most one
/// segment per socket).
const POLL_ROUNDS: usize = 64;
/// Packets waiting for room in the pair before smoltcp is told to hold on.
const MAX_TX_BACKLOG: usize = 256;
/// Listening sockets kept per exposed port (connections arriving at once).
const BACKLOG: usize = 4;

/// One TCP connection through the stack, as its user sees it.
#[derive(Debug)]
pub struct Link {
    /// What the far end sent; closed when it finished sending.
    pub rx: mpsc::Receiver<Vec<u8>>,
    /// What to send; dropping it closes our side.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// Tell the stack there is something to do (after a send or a receive).
    pub wake: Arc<Notify>,
}

impl Link {
    pub async fn send(&self, data: Vec<u8>) -> bool {
        let sent = self.tx.send(data).await.is_ok();
        self.wake.notify_one();
        sent
    }

    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let data = self.rx.recv().await;
        self.wake.notify_one();
        data
    }
}

enum Command {
    Connect { to: SocketAddr, reply: oneshot::Sender<Result<Link, String>> },
}

/// Asks the stack for connections.
#[derive(Debug, Clone)]
pub struct StackHandle {
    commands: mpsc::Sender<Command>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command::Connect")
    }
}

impl StackHandle {
    /// A TCP connection to `to` over the overlay; the error is one line for the proxy's user.
    pub async fn connect(&self, to: SocketAddr) -> Result<Link, String> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Connect { to, reply }).await.map_err(|_| "the node is stopping".to_owned())?;
        self.wake.notify_one();
        answer.await.map_err(|_| "the node is stopping".to_owned())?
    }
}

/// A connection that arrived at an exposed port.
#[derive(Debug)]
pub struct Accepted {
    pub port: u16,
    pub link: Link,
}

/// Packets between smoltcp and the pair: what came in, what goes out.
struct Queue {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let result = f(&mut packet);
        self.0.push_back(packet);
        result
    }
}

impl phy::Device for Queue {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        // While the pair is full, smoltcp keeps what it would send in its sockets.
        (self.tx.len() < MAX_TX_BACKLOG).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ip;
        capabilities.max_transmission_unit = self.mtu;
        capabilities
    }
}

/// A connection the stack holds.
struct Conn {
    /// Towards the user; `None` once the far end finished and that was passed on.
    to_user: Option<mpsc::Sender<Vec<u8>>>,
    from_user: mpsc::Receiver<Vec<u8>>,
    /// Part of a chunk smoltcp had no room for yet.
    unsent: Option<(Vec<u8>, usize)>,
    /// Our user closed its side (its sender dropped).
    user_done: bool,
    /// A connect under way: whom to answer, and when to give up.
    connecting: Option<(oneshot::Sender<Result<Link, String>>, Link, Instant)>,
}

struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    device: Queue,
    conns: HashMap<SocketHandle, Conn>,
    /// Exposed ports and their listening sockets.
    listeners: HashMap<u16, Vec<SocketHandle>>,
    accepted: mpsc::Sender<Accepted>,
    wake: Arc<Notify>,
    next_port: u16,
    start: Instant,
}

fn socket() -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; RECEIVE_BUFFER]), tcp::SocketBuffer::new(vec![0; SEND_BUFFER]));
    socket.set_nagle_enabled(false);
    socket.set_timeout(Some(smoltcp::time::Duration::from_secs(60)));
    socket.set_keep_alive(Some(smoltcp::time::Duration::from_secs(25)));
    socket
}

fn new_link(wake: &Arc<Notify>) -> (Link, mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
    let (to_user, rx) = mpsc::channel(LINK_QUEUE);
    let (tx, from_user) = mpsc::channel(LINK_QUEUE);
    (Link { rx, tx, wake: wake.clone() }, to_user, from_user)
}

/// Runs the stack on `fd` (the userspace end of the packet pair) until the node stops.
/// Connections to exposed ports come out of `accepted`.
pub fn spawn(fd: OwnedFd, ipv4: Ipv4Addr, ipv6: Ipv6Addr, mtu: usize, expose: &[u16]) -> std::io::Result<(StackHandle, mpsc::Receiver<Accepted>)> {
    // SAFETY: the pair's end is owned here and lives as long as the registration.
    let fd = unsafe { AsyncFd::register(fd)? };
    let mut device = Queue { rx: VecDeque::new(), tx: VecDeque::new(), mtu };
    let start = Instant::now();
    let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut device, smoltcp::time::Instant::from_micros(0));
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ipv4), membership::overlay::OVERLAY_IPV4_PREFIX.1));
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(ipv6), membership::overlay::OVERLAY_IPV6_PREFIX_LEN));
    });
    let wake = Arc::new(Notify::new());
    let (accepted, accepted_rx) = mpsc::channel(16);
    let mut stack = Stack { iface, sockets: SocketSet::new(Vec::new()), device, conns: HashMap::new(), listeners: HashMap::new(), accepted, wake: wake.clone(), next_port: 49152, start };
    for port in expose {
        for _ in 0..BACKLOG {
            stack.listen(*port);
        }
    }
    let (commands, commands_rx) = mpsc::channel(64);
    tokio::spawn(stack.run(fd, commands_rx));
    Ok((StackHandle { commands, wake }, accepted_rx))
}

impl Stack {
    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(i64::try_from(self.start.elapsed().as_micros()).unwrap_or(i64::MAX))
    }

    fn listen(&mut self, port: u16) {
        let mut socket = socket();
        if socket.listen(port).is_ok() {
            let handle = self.sockets.add(socket);
            self.listeners.entry(port).or_default().push(handle);
        }
    }

    fn connect(&mut self, to: SocketAddr, reply: oneshot::Sender<Result<Link, String>>) {
        let mut socket = socket();
        self.next_port = if self.next_port == u16::MAX { 49152 } else { self.next_port + 1 };
        let remote = IpEndpoint::new(ip_address(to.ip()), to.port());
        if let Err(error) = socket.connect(self.iface.context(), remote, self.next_port) {
            let _ = reply.send(Err(format!("cannot connect to {to}: {error}")));
            return;
        }
        let handle = self.sockets.add(socket);
        let (link, to_user, from_user) = new_link(&self.wake);
        let conn = Conn { to_user: Some(to_user), from_user, unsent: None, user_done: false, connecting: Some((reply, link, Instant::now() + CONNECT_TIMEOUT)) };
        self.conns.insert(handle, conn);
    }

    async fn run(mut self, fd: AsyncFd<OwnedFd>, mut commands: mpsc::Receiver<Command>) {
        let wake = self.wake.clone();
        let mut buffer = vec![0u8; 65_536];
        loop {
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            self.service();
            // One poll sends at most a segment per socket: poll again while it sends more
            // (bounded, so a busy connection cannot starve the rest of the loop).
            for _ in 0..POLL_ROUNDS {
                let sent = self.device.tx.len();
                self.iface.poll(self.now(), &mut self.device, &mut self.sockets);
                self.service();
                if self.device.tx.len() == sent {
                    break;
                }
            }
            let blocked = self.flush(fd.get_ref());
            let delay = self.iface.poll_delay(self.now(), &self.sockets).map_or(Duration::from_secs(1), |d| Duration::from_micros(d.total_micros()));
            // A connect under way is looked at again soon (for its deadline).
            let delay = if self.conns.values().any(|c| c.connecting.is_some()) { delay.min(Duration::from_millis(100)) } else { delay };
            tokio::select! {
                writable = fd.writable(), if blocked => {
                    let Ok(mut guard) = writable else { return };
                    guard.clear_ready();
                }
                readable = fd.readable() => {
                    let Ok(mut guard) = readable else { return };
                    loop {
                        // SAFETY: a valid descriptor and a writable buffer of the given length.
                        let read = unsafe { libc::recv(fd.get_ref().as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT) };
                        if read <= 0 {
                            break;
                        }
                        self.device.rx.push_back(buffer[..read as usize].to_vec());
                    }
                    guard.clear_ready();
                }
                command = commands.recv() => match command {
                    Some(Command::Connect { to, reply }) => self.connect(to, reply),
                    None => return,
                },
                () = wake.notified() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Sends what smoltcp made; true if the pair is full and some had to wait.
    fn flush(&mut self, fd: &OwnedFd) -> bool {
        while let Some(packet) = self.device.tx.front() {
            // SAFETY: a valid descriptor and a readable buffer of the given length.
            let sent = unsafe { libc::send(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if sent < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::WouldBlock {
                    return true;
                }
                // Anything else (a packet too large for the pair): dropped, as a link would.
            }
            self.device.tx.pop_front();
        }
        false
    }

    /// Moves data between smoltcp's sockets and the links; answers connects; hands accepted
    /// connections on; drops what is finished.
    fn service(&mut self) {
        let mut accepted = Vec::new();
        for (port, handles) in &mut self.listeners {
            handles.retain(|handle| {
                let socket = self.sockets.get::<tcp::Socket>(*handle);
                if socket.state() == tcp::State::Listen {
                    return true;
                }
                accepted.push((*port, *handle));
                false
            });
        }
        for (port, handle) in accepted {
            let (link, to_user, from_user) = new_link(&self.wake);
            self.conns.insert(handle, Conn { to_user: Some(to_user), from_user, unsent: None, user_done: false, connecting: None });
            if self.accepted.try_send(Accepted { port, link }).is_err() {
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
            }
            self.listen(port);
        }
        let now = Instant::now();
        let mut finished = Vec::new();
        for (handle, conn) in &mut self.conns {
            let socket = self.sockets.get_mut::<tcp::Socket>(*handle);
            if let Some((_, _, deadline)) = &conn.connecting {
                match socket.state() {
                    tcp::State::Established | tcp::State::CloseWait => {
                        if let Some((reply, link, _)) = conn.connecting.take() {
                            let _ = reply.send(Ok(link));
                        }
                    }
                    tcp::State::Closed => {
                        if let Some((reply, _, _)) = conn.connecting.take() {
                            let _ = reply.send(Err("the connection was refused (or the device is unreachable)".into()));
                        }
                        finished.push(*handle);
                        continue;
                    }
                    _ if now >= *deadline => {
                        if let Some((reply, _, _)) = conn.connecting.take() {
                            let _ = reply.send(Err("the connection timed out: is the device up, and is something listening there?".into()));
                        }
                        socket.abort();
                        finished.push(*handle);
                        continue;
                    }
                    _ => continue,
                }
            }
            // From the far end to the user, while the user's queue has room.
            let mut finished_sending = false;
            while let Some(to_user) = &conn.to_user {
                if !socket.can_recv() {
                    finished_sending = !socket.may_recv();
                    break;
                }
                let Ok(permit) = to_user.try_reserve() else { break };
                let mut chunk = vec![0u8; CHUNK];
                let Ok(read) = socket.recv_slice(&mut chunk) else {
                    finished_sending = true;
                    break;
                };
                chunk.truncate(read);
                permit.send(chunk);
            }
            if finished_sending {
                conn.to_user = None; // the far end finished: EOF to the user
            }
            // From the user to the far end, while smoltcp has room.
            loop {
                if conn.unsent.is_none() && !conn.user_done {
                    match conn.from_user.try_recv() {
                        Ok(data) => conn.unsent = Some((data, 0)),
                        Err(mpsc::error::TryRecvError::Empty) => {}
                        Err(mpsc::error::TryRecvError::Disconnected) => conn.user_done = true,
                    }
                }
                let Some((data, offset)) = conn.unsent.as_mut() else { break };
                if !socket.can_send() {
                    break;
                }
                match socket.send_slice(&data[*offset..]) {
                    Ok(sent) => *offset += sent,
                    Err(_) => {
                        conn.unsent = None;
                        conn.user_done = true;
                        break;
                    }
                }
                if *offset >= data.len() {
                    conn.unsent = None;
                }
            }
            if conn.user_done && conn.unsent.is_none() && socket.may_send() {
                socket.close();
            }
            if socket.state() == tcp::State::Closed || (conn.to_user.is_none() && conn.user_done && !socket.is_active()) {
                finished.push(*handle);
            }
        }
        for handle in finished {
            self.conns.remove(&handle);
            self.sockets.remove(handle);
        }
    }
}

fn ip_address(ip: IpAddr) -> IpAddress {
    match ip {
        IpAddr::V4(v4) => IpAddress::Ipv4(v4),
        IpAddr::V6(v6) => IpAddress::Ipv6(v6),
    }
}
