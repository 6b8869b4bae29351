//! The TCP/TLS fallback's connections on loopback, without root: the pinned certificate, the
//! two channels, and the data channel's datagrams reaching a data socket and coming back.

use libp2p::core::transport::{ListenerId, Transport, TransportEvent};
use node::relaylink::frame::{self, Channel};
use node::relaylink::transport::{FallbackTransport, Serving};
use node::relaylink::{Target, link, tls};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Server {
    address: SocketAddr,
    certhash: [u8; 32],
    /// The "data plane": where data channels deliver.
    data: tokio::net::UdpSocket,
    /// Control connections handed to the swarm: their remote addresses.
    control: tokio::sync::mpsc::Receiver<libp2p::Multiaddr>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn server() -> Server {
    let dir = std::env::temp_dir().join(format!("pal-relaylink-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let identity = tls::load_or_create(&dir).expect("identity");
    assert_eq!(tls::load_or_create(&dir).expect("again").certhash, identity.certhash, "the certificate is kept");
    let data = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("data socket");
    let listener = node::relaylink::transport::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let address = listener.local_addr().expect("address");
    let serving = Serving { config: tls::server_config(&identity).expect("config"), data: data.local_addr().expect("address"), listener: Arc::new(listener) };
    let mut transport = FallbackTransport::new(Some(serving));
    transport.listen_on(ListenerId::next(), "/ip4/127.0.0.1/tcp/0/tls".parse().expect("multiaddr")).expect("listen");
    let (control_tx, control) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let mut transport = Box::pin(transport);
        loop {
            let event = futures::future::poll_fn(|cx| transport.as_mut().poll(cx)).await;
            if let TransportEvent::Incoming { send_back_addr, .. } = event {
                let _ = control_tx.send(send_back_addr).await;
            }
        }
    });
    Server { address, certhash: identity.certhash, data, control, _dir: TempDir(dir) }
}

#[tokio::test]
async fn only_the_pinned_certificate_is_accepted_and_control_connections_reach_the_swarm_with_the_members_address() {
    let mut server = server().await;
    let good = Target { address: server.address, certhash: server.certhash };
    let stream = link::connect(good, Channel::Control).await.expect("the pinned certificate");
    let remote = tokio::time::timeout(Duration::from_secs(5), server.control.recv()).await.expect("handed over").expect("an address");
    // The swarm sees the member's own address (as a fallback one), not the listener's.
    let port = remote.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
        _ => None,
    });
    assert!(node::relaylink::is_fallback(&remote) && port.is_some_and(|p| p != server.address.port()), "{remote}");
    drop(stream);
    let mut wrong = server.certhash;
    wrong[0] ^= 1;
    let error = link::connect(Target { certhash: wrong, ..good }, Channel::Control).await.err().expect("another certificate is refused");
    assert!(error.to_string().contains("certificate") || error.kind() == std::io::ErrorKind::InvalidData, "{error}");
}

#[tokio::test]
async fn datagrams_cross_the_data_channel_both_ways_and_frames_are_not_mixed_up() {
    let server = server().await;
    let target = Target { address: server.address, certhash: server.certhash };
    let stream = link::connect(target, Channel::Data).await.expect("data channel");
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut out = Vec::new();
    for i in 0..20u8 {
        frame::encode(&vec![i; 100 + usize::from(i) * 50], &mut out);
    }
    writer.write_all(&out).await.expect("write");
    let mut buffer = vec![0u8; 65_536];
    let mut member = None;
    for i in 0..20u8 {
        let (len, from) = tokio::time::timeout(Duration::from_secs(5), server.data.recv_from(&mut buffer)).await.expect("arrives").expect("recv");
        assert_eq!(&buffer[..len], &vec![i; 100 + usize::from(i) * 50][..], "datagram {i}");
        assert!(member.is_none_or(|m| m == from), "one loopback socket per member");
        member = Some(from);
    }
    // The data plane answers where the member's datagrams came from: back over TCP.
    let member = member.expect("a source");
    server.data.send_to(b"answer", member).await.expect("send");
    let mut length = [0u8; 2];
    reader.read_exact(&mut length).await.expect("a frame");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(length))];
    reader.read_exact(&mut body).await.expect("its body");
    assert_eq!(body, b"answer");
}

#[tokio::test]
async fn anything_but_our_upgrade_gets_a_404_after_tls() {
    let server = server().await;
    let config = tls::client_config(server.certhash).expect("config");
    let tcp = tokio::net::TcpStream::connect(server.address).await.expect("tcp");
    let name = rustls::pki_types::ServerName::IpAddress(server.address.ip().into());
    let mut stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("tls");
    stream.write_all(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(answer.starts_with(b"HTTP/1.1 404"), "{:?}", String::from_utf8_lossy(&answer));
}
