//! The fallback as a libp2p transport: it dials `/ip…/tcp/PORT/tls/certhash/HASH` addresses
//! (TCP, TLS pinned to HASH, the control upgrade) and, on CloudPal, listens on
//! `/ip…/tcp/PORT/tls`, handing control connections to the swarm with the member's real
//! address and data connections to [`super::link::serve_data`]. Above it, the swarm's own
//! Noise and Yamux upgrades run as on plain TCP: the TLS is only the outer layer.

use super::frame::{self, Channel, Head};
use super::link::{self, Stream};
use futures::future::{BoxFuture, Ready};
use libp2p::core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// Connections in their TLS handshake and upgrade at once, and in all: a personal network
/// has at most 512 devices, each with a control and a data connection.
const MAX_HANDSHAKING: usize = 64;
const MAX_CONNECTIONS: usize = 1280;
/// How long a connection may take to finish TLS and the upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub type Output = Compat<Stream>;

/// CloudPal's side: the certificate it serves, where its data plane listens, and the
/// listening socket (bound once; each swarm's transport accepts on a clone of it).
#[derive(Debug, Clone)]
pub struct Serving {
    pub config: Arc<rustls::ServerConfig>,
    pub data: SocketAddr,
    pub listener: Arc<std::net::TcpListener>,
}

#[derive(Debug)]
pub struct FallbackTransport {
    serving: Option<Serving>,
    listeners: Vec<Listener>,
    incoming: (mpsc::Sender<TransportEvent<Ready<Result<Output, io::Error>>, io::Error>>, mpsc::Receiver<TransportEvent<Ready<Result<Output, io::Error>>, io::Error>>),
}

#[derive(Debug)]
struct Listener {
    id: ListenerId,
    task: tokio::task::JoinHandle<()>,
}

impl FallbackTransport {
    /// Dials only (`serving` `None`), or also listens (CloudPal).
    pub fn new(serving: Option<Serving>) -> Self {
        FallbackTransport { serving, listeners: Vec::new(), incoming: mpsc::channel(64) }
    }
}

impl Drop for FallbackTransport {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.task.abort();
        }
    }
}

/// `/ip…/tcp/PORT/tls`: an address to listen on.
fn listen_address(address: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = address.iter();
    let socket = super::tls_socket(&mut parts)?;
    parts.next().is_none().then_some(socket)
}

fn fallback_multiaddr(address: SocketAddr) -> Multiaddr {
    crate::control::addr::socket_multiaddr(SocketAddr::new(address.ip().to_canonical(), address.port()), false).with(Protocol::Tls)
}

/// The fallback's listening socket (`[::]` takes IPv4 too).
pub fn bind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if address.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if address.is_ipv6() && address.ip().is_unspecified() {
        // `[::]` takes IPv4 too.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

impl Transport for FallbackTransport {
    type Output = Output;
    type Error = io::Error;
    type ListenerUpgrade = Ready<Result<Output, io::Error>>;
    type Dial = BoxFuture<'static, Result<Output, io::Error>>;

    fn listen_on(&mut self, id: ListenerId, address: Multiaddr) -> Result<(), TransportError<Self::Error>> {
        let (Some(serving), Some(_)) = (self.serving.clone(), listen_address(&address)) else {
            return Err(TransportError::MultiaddrNotSupported(address));
        };
        let listener = serving.listener.try_clone().and_then(tokio::net::TcpListener::from_std).map_err(TransportError::Other)?;
        let local = listener.local_addr().map_err(TransportError::Other)?;
        let events = self.incoming.0.clone();
        let task = tokio::spawn(accept(id, listener, local, serving, events));
        self.listeners.push(Listener { id, task });
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(at) = self.listeners.iter().position(|l| l.id == id) else { return false };
        let listener = self.listeners.remove(at);
        listener.task.abort();
        true
    }

    fn dial(&mut self, address: Multiaddr, _: DialOpts) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(target) = super::target(&address) else { return Err(TransportError::MultiaddrNotSupported(address)) };
        Ok(Box::pin(async move { link::connect(target, Channel::Control).await.map(TokioAsyncReadCompatExt::compat) }))
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        match self.get_mut().incoming.1.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(event),
            _ => Poll::Pending,
        }
    }
}

/// CloudPal's accept loop: each connection does its TLS handshake and upgrade in a task of its
/// own (bounded), then goes to the swarm (control) or to the data plane (data).
async fn accept(id: ListenerId, listener: tokio::net::TcpListener, local: SocketAddr, serving: Serving, events: mpsc::Sender<TransportEvent<Ready<Result<Output, io::Error>>, io::Error>>) {
    let handshaking = Arc::new(Semaphore::new(MAX_HANDSHAKING));
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let acceptor = tokio_rustls::TlsAcceptor::from(serving.config.clone());
    let local_addr = fallback_multiaddr(local);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "fallback accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (Ok(slot), Ok(handshake)) = (open.clone().try_acquire_owned(), handshaking.clone().try_acquire_owned()) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, events, local_addr, data) = (acceptor.clone(), events.clone(), local_addr.clone(), serving.data);
        tokio::spawn(async move {
            let _slot = slot;
            let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let mut stream = acceptor.accept(tcp).await?;
                let head = link::read_head(&mut stream).await?;
                Ok::<_, io::Error>((frame::parse_request(&head), stream))
            })
            .await;
            drop(handshake);
            let Ok(Ok((head, mut stream))) = opened else { return };
            let channel = match head {
                Head::Done(channel) => channel,
                _ => {
                    let _ = stream.write_all(frame::NOT_FOUND).await;
                    let _ = stream.shutdown().await;
                    return;
                }
            };
            if stream.write_all(frame::UPGRADED).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            let stream = Stream::from(stream);
            match channel {
                Channel::Control => {
                    let event = TransportEvent::Incoming { listener_id: id, upgrade: futures::future::ready(Ok(stream.compat())), local_addr, send_back_addr: fallback_multiaddr(remote) };
                    let _ = events.send(event).await;
                }
                Channel::Data => link::serve_data(stream, data).await,
            }
        });
    }
}
