//! The shells of the fallback's connections: dialling CloudPal (TCP, TLS, the upgrade), and
//! the data channel's pump between a TLS stream and a loopback UDP socket that stands in for
//! the far end — on the device, toward its data plane's stream address; on CloudPal, toward
//! its data port.

use super::Target;
use super::frame::{self, Channel, Decoder, DropOldest, Head};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc};

pub type Stream = tokio_rustls::TlsStream<TcpStream>;

/// How long a dial (TCP, TLS and the upgrade) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Data unacknowledged this long breaks the connection (`TCP_USER_TIMEOUT`): a NAT that
/// forgot an idle connection is found out by the first datagram, not after TCP's 15 minutes.
const USER_TIMEOUT: Duration = Duration::from_secs(15);
/// Datagrams waiting for the TCP connection, at most (then the oldest go): about 30 ms of a
/// 100 Mbit/s link — enough to ride out a burst, too little to build a standing queue.
pub const QUEUE_BYTES: usize = 384 << 10;
/// Bytes handed to TLS per write.
const WRITE_CHUNK: usize = 64 << 10;

/// A TCP socket for the fallback: no delay, a user timeout, and pal's mark (so that with the
/// exit in use it goes out beside the tunnel, not into it).
fn tcp_socket(remote: SocketAddr) -> io::Result<tokio::net::TcpSocket> {
    let domain = if remote.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    let _ = socket.set_mark(crate::exit::FWMARK);
    Ok(tokio::net::TcpSocket::from_std_stream(socket.into()))
}

/// Dials CloudPal's fallback at `target` (TCP, TLS with the pinned certificate), sends the
/// request head `request` and reads the response head, all within [`CONNECT_TIMEOUT`].
async fn exchange(target: Target, request: &[u8]) -> io::Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>)> {
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = tcp_socket(target.address)?.connect(target.address).await?;
        let config = super::tls::client_config(target.certhash).map_err(io::Error::other)?;
        // By address: no server name goes out in the clear.
        let name = rustls::pki_types::ServerName::IpAddress(target.address.ip().into());
        let mut stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
        stream.write_all(request).await?;
        stream.flush().await?;
        let head = read_head(&mut stream).await?;
        Ok((stream, head))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the fallback did not answer"))?
}

/// Dials CloudPal's fallback at `target`, checks its certificate and opens `channel`.
pub async fn connect(target: Target, channel: Channel) -> io::Result<Stream> {
    let (stream, head) = exchange(target, &frame::upgrade_request(channel)).await?;
    match frame::parse_response(&head) {
        Head::Done(()) => Ok(Stream::from(stream)),
        _ => Err(io::Error::new(io::ErrorKind::ConnectionRefused, "not a CloudPal at this address")),
    }
}

/// `pal netcheck`: whether CloudPal's fallback at `target` answers — TCP, TLS with the pinned
/// certificate, and a plain request that a web server with nothing to show answers with 404;
/// how long that took.
pub async fn probe(target: Target) -> io::Result<Duration> {
    let started = tokio::time::Instant::now();
    let (_, head) = exchange(target, b"GET / HTTP/1.1\r\nHost: cloudpal\r\n\r\n").await?;
    if !head.starts_with(b"HTTP/1.1 ") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a CloudPal at this address"));
    }
    Ok(started.elapsed())
}

/// Reads an HTTP head a byte at a time up to its blank line, so that nothing after it is read
/// (the channel's own bytes may follow at once).
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    while !frame::head_complete(&head) {
        if head.len() > frame::MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        head.push(stream.read_u8().await?);
    }
    Ok(head)
}

/// A UDP socket on loopback connected to `target` (a data socket on this host).
pub async fn loopback_socket(target: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if target.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { (std::net::Ipv6Addr::LOCALHOST, 0).into() };
    let local = if target.ip().is_loopback() { local } else { SocketAddr::new(target.ip(), 0) };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// Moves datagrams between `stream` (frames) and `udp` until either ends. What the stream
/// cannot take fast enough waits in a [`DropOldest`] queue; the stream's reader never waits
/// for its writer. Returns the datagrams dropped.
pub async fn pump<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S, udp: UdpSocket) -> io::Result<u64> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let udp = Arc::new(udp);
    let queue = Arc::new(Mutex::new(DropOldest::new(QUEUE_BYTES)));
    let ready = Arc::new(Notify::new());
    let (writer_queue, writer_ready) = (queue.clone(), ready.clone());
    let mut write = tokio::spawn(async move {
        let mut out = Vec::with_capacity(WRITE_CHUNK + frame::MAX_DATAGRAM);
        loop {
            writer_ready.notified().await;
            loop {
                out.clear();
                if let Ok(mut queue) = writer_queue.lock() {
                    queue.drain_into(&mut out, WRITE_CHUNK);
                }
                if out.is_empty() {
                    break;
                }
                writer.write_all(&out).await?;
            }
            writer.flush().await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), io::Error>(())
    });
    let mut decoder = Decoder::default();
    let mut datagram = vec![0u8; frame::MAX_DATAGRAM];
    const READ: usize = 64 << 10;
    let result = loop {
        tokio::select! {
            received = udp.recv(&mut datagram) => match received {
                Ok(len) => {
                    if let Ok(mut queue) = queue.lock() {
                        queue.push(&datagram[..len]);
                    }
                    ready.notify_one();
                }
                // The far socket is not there (yet): ICMP port unreachable, not the end.
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(error) => break Err(error),
            },
            read = reader.read(decoder.space(READ)) => match read {
                Ok(0) => break Ok(()),
                Ok(read) => {
                    decoder.filled(read);
                    let mut failed = None;
                    while let Some(frame) = decoder.next_frame() {
                        match udp.send(frame).await {
                            Ok(_) => {}
                            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {}
                            Err(error) => {
                                failed = Some(error);
                                break;
                            }
                        }
                    }
                    if let Some(error) = failed {
                        break Err(error);
                    }
                }
                Err(error) => break Err(error),
            },
            written = &mut write => break match written {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error),
                Err(_) => Ok(()),
            },
        }
    };
    write.abort();
    let dropped = queue.lock().map(|q| q.dropped()).unwrap_or(0);
    result.map(|()| dropped)
}

/// What a member's data link tells the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// Up: the data plane's stream address (where its datagrams for CloudPal go now).
    Up(SocketAddr),
    Down,
}

/// A member's data link to CloudPal's fallback at `target`, for the data plane bound at
/// `data_plane`: dials, reports the stream address, pumps, and dials again (1 s, 2 s, … up to
/// 5 min apart: a CloudPal that is down is not called every few seconds by an idle device)
/// until the task is dropped.
pub async fn run_client(target: Target, data_plane: SocketAddr, events: mpsc::Sender<LinkEvent>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match connect(target, Channel::Data).await {
            Ok(stream) => match loopback_socket(super::local_target(data_plane)).await {
                Ok(udp) => {
                    backoff = Duration::from_secs(1);
                    let local = udp.local_addr().ok();
                    if let Some(local) = local {
                        let _ = events.send(LinkEvent::Up(local)).await;
                    }
                    tracing::info!("data over TCP to CloudPal (UDP does not get through)");
                    let outcome = pump(stream, udp).await;
                    let _ = events.send(LinkEvent::Down).await;
                    match outcome {
                        Ok(dropped) => tracing::info!(dropped, "TCP data link to CloudPal closed"),
                        Err(error) => tracing::info!(%error, "TCP data link to CloudPal broke"),
                    }
                }
                Err(error) => tracing::warn!(%error, "no loopback socket for the TCP data link"),
            },
            Err(error) => tracing::debug!(%error, "cannot reach CloudPal over TCP"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(300));
    }
}

/// CloudPal's end of a member's data channel: the member's datagrams reach the data port
/// at `data` from a loopback socket of its own, which is where the data plane answers it.
pub async fn serve_data<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S, data: SocketAddr) {
    match loopback_socket(super::local_target(data)).await {
        Ok(udp) => {
            let outcome = pump(stream, udp).await;
            tracing::debug!(ok = outcome.is_ok(), "a member's TCP data link closed");
        }
        Err(error) => tracing::warn!(%error, "no loopback socket for a member's TCP data link"),
    }
}
