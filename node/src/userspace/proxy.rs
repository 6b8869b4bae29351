//! The local proxies of the userspace mode: SOCKS5 (RFC 1928, CONNECT, no authentication: it
//! listens on loopback) and HTTP (`CONNECT host:port`, and plain `GET http://…` requests
//! forwarded), both into the overlay through the stack. Destinations are overlay addresses
//! or device names (`laptop`, `laptop.pal.internal`); the internet is not this mode's to
//! reach (no exit without a TUN).

use super::stack::{Link, StackHandle};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Device names and their overlay addresses, kept current by the node.
pub type Names = Arc<RwLock<BTreeMap<String, (Ipv4Addr, Ipv6Addr)>>>;

/// A request's destination as the client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(SocketAddr),
    Name(String, u16),
}

/// Why a destination is refused, as the proxy's client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A name that is no device of the network.
    UnknownName,
    /// An address outside the overlay.
    NotOverlay,
}

/// Where a target is on the overlay.
pub fn resolve(target: &Target, names: &Names) -> Result<SocketAddr, Refusal> {
    let address = match target {
        Target::Ip(address) => *address,
        Target::Name(name, port) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let device = name.strip_suffix(".pal.internal").unwrap_or(&name);
            let names = names.read().map_err(|_| Refusal::UnknownName)?;
            let (v4, _) = names.get(device).ok_or(Refusal::UnknownName)?;
            SocketAddr::new(IpAddr::V4(*v4), *port)
        }
    };
    let overlay = match address.ip() {
        IpAddr::V4(v4) => membership::overlay::is_overlay_ipv4(v4),
        IpAddr::V6(v6) => v6.octets()[0] == 0xfd,
    };
    if overlay { Ok(address) } else { Err(Refusal::NotOverlay) }
}

/// Copies both ways between a local stream and a link until both sides are done.
pub async fn bridge(stream: TcpStream, link: Link) {
    let Link { mut rx, tx, wake } = link;
    let (mut read, mut write) = stream.into_split();
    let wake_up = wake.clone();
    let upstream = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buffer[..n].to_vec()).await.is_err() {
                        break;
                    }
                    wake_up.notify_one();
                }
            }
        }
        // Our side is done: the stack closes it once what was sent is out.
        drop(tx);
        wake_up.notify_one();
    };
    let downstream = async move {
        while let Some(data) = rx.recv().await {
            wake.notify_one();
            if write.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

// ---- SOCKS5 ------------------------------------------------------------------------------

const SOCKS_VERSION: u8 = 5;
const REPLY_OK: u8 = 0;
const REPLY_NOT_ALLOWED: u8 = 2;
const REPLY_HOST_UNREACHABLE: u8 = 4;
const REPLY_REFUSED: u8 = 5;
const REPLY_COMMAND_NOT_SUPPORTED: u8 = 7;
const REPLY_ADDRESS_NOT_SUPPORTED: u8 = 8;

/// Reads a SOCKS5 greeting and CONNECT request; the target, or the reply code to refuse with
/// (`None`: not SOCKS5 at all, close).
pub async fn socks_handshake<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S) -> std::io::Result<Result<Target, Option<u8>>> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != SOCKS_VERSION {
        return Ok(Err(None));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        stream.write_all(&[SOCKS_VERSION, 0xff]).await?;
        return Ok(Err(None));
    }
    stream.write_all(&[SOCKS_VERSION, 0]).await?;
    let mut request = [0u8; 4];
    stream.read_exact(&mut request).await?;
    if request[0] != SOCKS_VERSION {
        return Ok(Err(None));
    }
    let target = match request[3] {
        1 => {
            let mut address = [0u8; 6];
            stream.read_exact(&mut address).await?;
            let ip = Ipv4Addr::new(address[0], address[1], address[2], address[3]);
            Target::Ip(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([address[4], address[5]])))
        }
        4 => {
            let mut address = [0u8; 18];
            stream.read_exact(&mut address).await?;
            let ip: [u8; 16] = address[..16].try_into().unwrap_or_default();
            Target::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), u16::from_be_bytes([address[16], address[17]])))
        }
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0]) + 2];
            stream.read_exact(&mut name).await?;
            let port = u16::from_be_bytes([name[name.len() - 2], name[name.len() - 1]]);
            name.truncate(name.len() - 2);
            match String::from_utf8(name) {
                Ok(name) => Target::Name(name, port),
                Err(_) => return Ok(Err(Some(REPLY_HOST_UNREACHABLE))),
            }
        }
        _ => return Ok(Err(Some(REPLY_ADDRESS_NOT_SUPPORTED))),
    };
    if request[1] != 1 {
        return Ok(Err(Some(REPLY_COMMAND_NOT_SUPPORTED)));
    }
    Ok(Ok(target))
}

async fn socks_reply<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, code: u8) -> std::io::Result<()> {
    stream.write_all(&[SOCKS_VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

async fn serve_socks(mut stream: TcpStream, stack: StackHandle, names: Names) {
    let Ok(request) = socks_handshake(&mut stream).await else { return };
    let target = match request {
        Ok(target) => target,
        Err(Some(code)) => return drop(socks_reply(&mut stream, code).await),
        Err(None) => return,
    };
    let to = match resolve(&target, &names) {
        Ok(to) => to,
        Err(Refusal::UnknownName) => return drop(socks_reply(&mut stream, REPLY_HOST_UNREACHABLE).await),
        Err(Refusal::NotOverlay) => return drop(socks_reply(&mut stream, REPLY_NOT_ALLOWED).await),
    };
    match stack.connect(to).await {
        Ok(link) => {
            if socks_reply(&mut stream, REPLY_OK).await.is_ok() {
                bridge(stream, link).await;
            }
        }
        Err(_) => drop(socks_reply(&mut stream, REPLY_REFUSED).await),
    }
}

// ---- HTTP ----------------------------------------------------------------------------------

/// The largest request head the HTTP proxy reads.
const MAX_HEAD: usize = 16 * 1024;

/// What an HTTP proxy request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub target: Target,
    /// `CONNECT`: a tunnel; else the request to send on (origin form, hop-by-hop proxy
    /// headers dropped), then whatever followed the head.
    pub forward: Option<Vec<u8>>,
}

/// Parses a complete request head (`Ok(None)`: incomplete); the error is the status line to
/// answer with.
pub fn parse_http(buffer: &[u8]) -> Result<Option<(HttpRequest, usize)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(buffer) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("400 Bad Request"),
    };
    let (Some(method), Some(path)) = (request.method, request.path) else { return Err("400 Bad Request") };
    if method.eq_ignore_ascii_case("CONNECT") {
        let target = authority(path, 443).ok_or("400 Bad Request")?;
        return Ok(Some((HttpRequest { target, forward: None }, consumed)));
    }
    let rest = path.strip_prefix("http://").ok_or("400 Bad Request")?;
    let (host, origin) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let target = authority(host, 80).ok_or("400 Bad Request")?;
    let mut head = format!("{method} {origin} HTTP/1.{}\r\n", request.version.unwrap_or(1)).into_bytes();
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("proxy-connection") || header.name.eq_ignore_ascii_case("proxy-authorization") {
            continue;
        }
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(header.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(Some((HttpRequest { target, forward: Some(head) }, consumed)))
}

/// `host[:port]`, `[v6]:port` or `a.b.c.d:port`.
fn authority(text: &str, default_port: u16) -> Option<Target> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Some(Target::Ip(address));
    }
    if let Some(v6) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().ok().map(|ip| Target::Ip(SocketAddr::new(IpAddr::V6(ip), default_port)));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (text, default_port),
    };
    if host.is_empty() {
        return None;
    }
    Some(match host.parse::<IpAddr>() {
        Ok(ip) => Target::Ip(SocketAddr::new(ip, port)),
        Err(_) => Target::Name(host.to_owned(), port),
    })
}

async fn http_error(stream: &mut TcpStream, status: &str, why: &str) {
    let _ = stream.write_all(format!("HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{why}\n").as_bytes()).await;
}

async fn serve_http(mut stream: TcpStream, stack: StackHandle, names: Names) {
    let mut buffer = Vec::with_capacity(4096);
    let (request, consumed) = loop {
        let mut chunk = [0u8; 4096];
        let read = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        buffer.extend_from_slice(&chunk[..read]);
        match parse_http(&buffer) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) if buffer.len() < MAX_HEAD => {}
            Ok(None) => return http_error(&mut stream, "431 Request Header Fields Too Large", "the request head is too large").await,
            Err(status) => return http_error(&mut stream, status, "this is CloudPal's HTTP proxy: ask for CONNECT host:port or http:// URLs").await,
        }
    };
    let to = match resolve(&request.target, &names) {
        Ok(to) => to,
        Err(Refusal::UnknownName) => return http_error(&mut stream, "502 Bad Gateway", "no device of this network has that name").await,
        Err(Refusal::NotOverlay) => return http_error(&mut stream, "403 Forbidden", "pal up --userspace reaches the devices of the network only, not the internet").await,
    };
    let link = match stack.connect(to).await {
        Ok(link) => link,
        Err(why) => return http_error(&mut stream, "502 Bad Gateway", &why).await,
    };
    let rest = buffer[consumed..].to_vec();
    match request.forward {
        None => {
            if stream.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                return;
            }
            if !rest.is_empty() && !link.send(rest).await {
                return;
            }
        }
        Some(mut head) => {
            head.extend_from_slice(&rest);
            if !link.send(head).await {
                return;
            }
        }
    }
    bridge(stream, link).await;
}

/// The proxies' kinds.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Socks5,
    Http,
}

/// Serves one proxy on `listener` until the node stops.
pub async fn serve(listener: TcpListener, kind: Kind, stack: StackHandle, names: Names) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (stack, names) = (stack.clone(), names.clone());
        tokio::spawn(async move {
            match kind {
                Kind::Socks5 => serve_socks(stream, stack, names).await,
                Kind::Http => serve_http(stream, stack, names).await,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        let mut map = BTreeMap::new();
        map.insert("laptop".to_owned(), (Ipv4Addr::new(100, 64, 1, 2), "fd00::2".parse().unwrap()));
        Arc::new(RwLock::new(map))
    }

    #[test]
    fn names_and_overlay_addresses_resolve_and_the_internet_does_not() {
        let names = names();
        let laptop = SocketAddr::from(([100, 64, 1, 2], 22));
        assert_eq!(resolve(&Target::Name("laptop".into(), 22), &names), Ok(laptop));
        assert_eq!(resolve(&Target::Name("Laptop.pal.internal.".into(), 22), &names), Ok(laptop));
        assert_eq!(resolve(&Target::Name("printer".into(), 22), &names), Err(Refusal::UnknownName));
        assert_eq!(resolve(&Target::Ip(SocketAddr::from(([203, 0, 113, 7], 80))), &names), Err(Refusal::NotOverlay));
        assert_eq!(resolve(&Target::Ip(laptop), &names), Ok(laptop));
    }

    #[test]
    fn http_requests_become_tunnels_or_origin_form_requests() {
        let (connect, used) = parse_http(b"CONNECT laptop:22 HTTP/1.1\r\nHost: laptop:22\r\n\r\nSSH-2.0").unwrap().unwrap();
        assert_eq!(connect, HttpRequest { target: Target::Name("laptop".into(), 22), forward: None });
        assert_eq!(used, 47);
        let (get, _) = parse_http(b"GET http://100.64.1.2:8080/x?y HTTP/1.1\r\nHost: 100.64.1.2:8080\r\nProxy-Connection: keep-alive\r\n\r\n").unwrap().unwrap();
        assert_eq!(get.target, Target::Ip(SocketAddr::from(([100, 64, 1, 2], 8080))));
        assert_eq!(get.forward.as_deref(), Some(&b"GET /x?y HTTP/1.1\r\nHost: 100.64.1.2:8080\r\n\r\n"[..]));
        assert_eq!(parse_http(b"GET http://laptop HTTP/1.1\r\n"), Ok(None));
        assert_eq!(parse_http(b"GET /relative HTTP/1.1\r\n\r\n"), Err("400 Bad Request"));
        assert!(parse_http(b"\x16\x03\x01garbage\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn socks5_takes_connect_to_a_name_and_refuses_other_commands() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let ask = tokio::spawn(async move {
            client.write_all(&[5, 1, 0]).await.unwrap();
            let mut choice = [0u8; 2];
            client.read_exact(&mut choice).await.unwrap();
            assert_eq!(choice, [5, 0]);
            client.write_all(&[5, 1, 0, 3, 6]).await.unwrap();
            client.write_all(b"laptop").await.unwrap();
            client.write_all(&22u16.to_be_bytes()).await.unwrap();
        });
        assert_eq!(socks_handshake(&mut server).await.unwrap(), Ok(Target::Name("laptop".into(), 22)));
        ask.await.unwrap();
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            client.write_all(&[5, 1, 0]).await.unwrap();
            let mut choice = [0u8; 2];
            client.read_exact(&mut choice).await.unwrap();
            // BIND to 100.64.1.2:22
            client.write_all(&[5, 2, 0, 1, 100, 64, 1, 2, 0, 22]).await.unwrap();
            client
        });
        assert_eq!(socks_handshake(&mut server).await.unwrap(), Err(Some(REPLY_COMMAND_NOT_SUPPORTED)));
        let (mut client, mut server) = tokio::io::duplex(1024);
        let ask = tokio::spawn(async move {
            // Username/password only: refused, as we offer no authentication on loopback.
            client.write_all(&[5, 1, 2]).await.unwrap();
            let mut choice = [0u8; 2];
            client.read_exact(&mut choice).await.unwrap();
            choice
        });
        assert_eq!(socks_handshake(&mut server).await.unwrap(), Err(None));
        assert_eq!(ask.await.unwrap(), [5, 0xff], "no acceptable method");
    }
}
