//! The resolver's socket shell on CloudPal: UDP and TCP on port 53 of its overlay addresses
//! (members reach it through the tunnel; nothing listens on the underlay), one fresh UDP
//! socket per upstream query (a random source port from the kernel, DNS-02), block lists read
//! from files, and the core ([`super::resolver`]) deciding everything. It writes nothing about
//! queries anywhere.

use super::blocklist::BlockList;
use super::https::{HttpsClient, HttpsUrl};
use super::resolver::{Client, Resolved, Resolver, Settings, Transmit};
use rand_chacha::ChaCha20Rng;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

/// How long an upstream socket waits for its answer (the core retries elsewhere earlier).
const UPSTREAM_WAIT: Duration = Duration::from_secs(5);
/// TCP clients at once, and how long one may stay idle.
const MAX_TCP_CLIENTS: usize = 64;
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the core needs from the log, as the control core computes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub devices: std::collections::BTreeMap<String, (std::net::Ipv4Addr, std::net::Ipv6Addr)>,
    pub clients: Vec<IpAddr>,
    /// The policy's upstreams as given (`udp://ADDR[:PORT]`); empty: the system's resolvers.
    pub upstreams: Vec<String>,
    /// Block-list sources (files on CloudPal, `https://` URLs).
    pub block_lists: Vec<String>,
    pub rule_domains: Vec<String>,
    /// The policy's logging switch: an in-memory query log for `pal dns log`.
    pub logging: bool,
}

/// An upstream resolver: plain UDP, DNS over TLS (RFC 7858) with the name its certificate
/// must show, or DNS over HTTPS (RFC 8484) at a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Udp(SocketAddr),
    Tls { address: SocketAddr, name: String },
    Https(HttpsUrl),
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Udp(address) => write!(f, "udp://{address}"),
            Upstream::Tls { address, name } => write!(f, "tls://{address}#{name}"),
            Upstream::Https(url) => write!(f, "{url}"),
        }
    }
}

/// Where the resolver forwards: the policy's upstreams, or this host's own resolvers.
pub fn upstreams(config: &DnsConfig) -> Vec<Upstream> {
    if config.upstreams.is_empty() {
        return system_resolvers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()).into_iter().map(Upstream::Udp).collect();
    }
    config.upstreams.iter().filter_map(|u| parse_upstream(u).ok()).collect()
}

/// `udp://ADDR[:PORT]` (port 53 by default), `tls://ADDR[:PORT][#NAME]` (port 853; the
/// certificate must name NAME, or the address itself when no name is given) or
/// `https://HOST[:PORT]/PATH` (a HOST that is a name is looked up with CloudPal's own system
/// resolvers, as a DoH client's bootstrap; the certificate must name HOST).
pub fn parse_upstream(text: &str) -> Result<Upstream, String> {
    let (tls, rest, port) = if let Some(rest) = text.strip_prefix("udp://") {
        (false, rest, 53)
    } else if let Some(rest) = text.strip_prefix("tls://") {
        (true, rest, 853)
    } else if text.starts_with("https://") {
        return HttpsUrl::parse(text).map(Upstream::Https);
    } else {
        return Err(format!("{text:?}: give udp://ADDR[:PORT], tls://ADDR[:PORT][#NAME] or https://HOST[:PORT]/PATH"));
    };
    let (rest, name) = match rest.split_once('#') {
        Some((rest, name)) if tls && !name.is_empty() => (rest, Some(name.to_owned())),
        Some(_) => return Err(format!("{text:?}: #NAME belongs to a tls:// upstream")),
        None => (rest, None),
    };
    let rest = rest.trim_end_matches('/');
    let address = rest.parse::<SocketAddr>().ok().or_else(|| rest.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port)));
    let Some(address) = address else {
        return Err(format!("{text:?}: the upstream must be an address, not a name (the resolver cannot ask itself); name the certificate with #NAME"));
    };
    if tls {
        let name = name.unwrap_or_else(|| address.ip().to_string());
        rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| format!("{text:?}: {name:?} is not a server name"))?;
        Ok(Upstream::Tls { address, name })
    } else {
        Ok(Upstream::Udp(address))
    }
}

/// The TLS client of DNS-over-TLS upstreams: the webpki roots plus any private CA given with
/// `pal up --dns-ca PEM`; certificates are checked in full (name, chain, validity), and a
/// failure never falls back to plain DNS.
pub fn tls_config(extra_ca: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certificates: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("cannot read --dns-ca {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--dns-ca {}: {e}", path.display()))?;
        if certificates.is_empty() {
            anyhow::bail!("--dns-ca {}: no certificate in it", path.display());
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|e| anyhow::anyhow!("--dns-ca {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?.with_root_certificates(roots).with_no_client_auth();
    Ok(Arc::new(config))
}

/// The `nameserver` lines of a resolv.conf, loopback stubs included (they are this host's).
pub fn system_resolvers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The largest block list taken from a URL (a million names is about 20 MB).
const MAX_BLOCK_LIST: usize = 64 << 20;

/// Where the resolver runs and what it trusts.
#[derive(Debug, Clone)]
pub struct ResolverOptions {
    /// CloudPal's overlay addresses (port 53 on each).
    pub addresses: Vec<IpAddr>,
    /// The TLS client of DoT and DoH upstreams and of block-list URLs.
    pub tls: Arc<rustls::ClientConfig>,
    /// Where block lists fetched from URLs are kept between refreshes and restarts.
    pub block_list_dir: PathBuf,
    /// How often block lists from URLs are fetched again (files are read again too).
    pub block_list_refresh: Duration,
}

/// A block-list source: a file on CloudPal or an `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockListSource {
    File(PathBuf),
    Url(HttpsUrl),
}

impl BlockListSource {
    /// An absolute path, or an `https://` URL (plain `http://` is refused: a list fetched in
    /// the clear could be swapped on the way to block or unblock anything).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("http://") {
            return Err(format!("{text:?}: block lists are fetched over https:// only"));
        }
        if text.starts_with("https://") {
            return HttpsUrl::parse(text).map(Self::Url);
        }
        if !text.starts_with('/') {
            return Err(format!("{text:?}: give the block list's absolute path on CloudPal or an https:// URL"));
        }
        Ok(Self::File(PathBuf::from(text)))
    }
}

/// Reads every block list: files as they are now, URLs fetched afresh (the copy kept in `dir`
/// when a fetch fails, so an outage of the list's server does not unblock anything) — or, with
/// `kept_first`, a URL's kept copy without fetching when there is one (a restart blocks at
/// once, before the network answers). A source that cannot be had is reported and skipped.
/// Also says whether a kept copy stood in for a fetch.
pub async fn load_block_lists(sources: &[String], https: &HttpsClient, dir: &Path, kept_first: bool) -> (BlockList, bool) {
    let mut texts = Vec::new();
    let mut used_kept = false;
    for source in sources {
        match BlockListSource::parse(source) {
            Ok(BlockListSource::File(path)) => match tokio::fs::read_to_string(&path).await {
                Ok(text) => texts.push(text),
                Err(error) => tracing::warn!(%error, "cannot read the block list {}", path.display()),
            },
            Ok(BlockListSource::Url(url)) => {
                let kept = dir.join(kept_name(&url));
                if kept_first && let Ok(text) = std::fs::read_to_string(&kept) {
                    texts.push(text);
                    used_kept = true;
                    continue;
                }
                match https.get(&url, MAX_BLOCK_LIST).await {
                    Ok(body) => {
                        let text = String::from_utf8_lossy(&body).into_owned();
                        if let Err(error) = keep(&kept, &text) {
                            tracing::warn!(%error, "cannot keep a copy of the block list {url}");
                        }
                        texts.push(text);
                    }
                    Err(error) => match std::fs::read_to_string(&kept) {
                        Ok(text) => {
                            tracing::warn!("cannot fetch the block list {url} ({error}); using the copy kept from the last fetch");
                            texts.push(text);
                        }
                        Err(_) => tracing::warn!("cannot fetch the block list {url}: {error}"),
                    },
                }
            }
            Err(error) => tracing::warn!("{error}"),
        }
    }
    // A million names take about a second to index: off the async threads.
    let list = tokio::task::spawn_blocking(move || {
        let mut list = BlockList::default();
        for text in &texts {
            list.add_text(text);
        }
        list
    })
    .await
    .unwrap_or_default();
    (list, used_kept)
}

/// The kept copy's file name: a hash of the URL (no URL characters in file names).
fn kept_name(url: &HttpsUrl) -> String {
    use blake2::{Blake2s256, Digest};
    let digest = Blake2s256::digest(url.to_string().as_bytes());
    format!("{}.txt", data_encoding::HEXLOWER.encode(&digest[..16]))
}

/// Writes the copy whole or not at all (a temporary file renamed over the old one).
fn keep(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("part");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

/// Keeps the resolver's block list current: loads it when the sources change and again every
/// `refresh`, handing each new list to the resolver.
async fn keep_block_lists(mut sources: tokio::sync::watch::Receiver<Vec<String>>, lists: mpsc::Sender<BlockList>, https: HttpsClient, dir: PathBuf, refresh: Duration) {
    let mut kept_first = true;
    loop {
        let current = sources.borrow_and_update().clone();
        let (list, used_kept) = load_block_lists(&current, &https, &dir, kept_first).await;
        if !current.is_empty() {
            tracing::info!(names = list.len(), "block lists loaded");
        }
        if lists.send(list).await.is_err() {
            return;
        }
        // After the kept copies, fetch at once; after a fetch, wait for the next refresh.
        let fetch_now = used_kept;
        kept_first = false;
        tokio::select! {
            changed = sources.changed() => {
                if changed.is_err() { return }
                kept_first = true;
            }
            _ = tokio::time::sleep(if fetch_now { Duration::ZERO } else { refresh }), if !current.is_empty() => {}
        }
    }
}

enum Event {
    Query(Client, IpAddr, Vec<u8>),
    Upstream(usize, Vec<u8>),
    TcpOpened(u64, mpsc::Sender<Vec<u8>>),
    TcpClosed(u64),
}

/// Runs the resolver on `addresses` (port 53) until `config` closes; `resolved` gets the
/// addresses of names the firewall's domain rules cover.
pub async fn serve(
    options: ResolverOptions,
    mut config: mpsc::Receiver<DnsConfig>,
    resolved: mpsc::Sender<Resolved>,
    mut log_requests: mpsc::Receiver<tokio::sync::oneshot::Sender<Vec<super::resolver::LoggedQuery>>>,
    rng: ChaCha20Rng,
) -> anyhow::Result<()> {
    let (events_tx, mut events) = mpsc::channel::<Event>(1024);
    let https = HttpsClient::new(&options.tls);
    let (sources_tx, sources_rx) = tokio::sync::watch::channel(Vec::new());
    let (lists_tx, mut lists) = mpsc::channel(1);
    tokio::spawn(keep_block_lists(sources_rx, lists_tx, https.clone(), options.block_list_dir.clone(), options.block_list_refresh));
    let mut udp = Vec::new();
    for address in &options.addresses {
        let socket = Arc::new(bind_udp(SocketAddr::new(*address, 53))?);
        udp.push(socket.clone());
        let events = events_tx.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
                if events.send(Event::Query(Client::Udp(from), from.ip(), buffer[..len].to_vec())).await.is_err() {
                    break;
                }
            }
        });
        let listener = bind_tcp(SocketAddr::new(*address, 53))?;
        tokio::spawn(accept_tcp(listener, events_tx.clone()));
    }
    let mut resolver = Resolver::new(Settings::default(), BlockList::default(), rng);
    let mut upstream_list: Vec<Upstream> = Vec::new();
    let mut current = DnsConfig::default();
    let mut tcp: HashMap<u64, mpsc::Sender<Vec<u8>>> = HashMap::new();
    loop {
        let deadline = resolver.poll_timeout();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            update = config.recv() => {
                let Some(update) = update else { return Ok(()) };
                if update.block_lists != current.block_lists {
                    let _ = sources_tx.send(update.block_lists.clone());
                }
                upstream_list = upstreams(&update);
                resolver.set_settings(Settings {
                    devices: update.devices.clone(),
                    clients: update.clients.iter().copied().collect(),
                    upstreams: upstream_list.iter().map(ToString::to_string).collect(),
                    rule_domains: update.rule_domains.clone(),
                    log_queries: update.logging,
                });
                current = update;
            }
            Some(event) = events.recv() => match event {
                Event::Query(client, source, bytes) => resolver.handle_query(client, source, &bytes, std::time::Instant::now()),
                Event::Upstream(index, bytes) => resolver.handle_upstream(index, &bytes, std::time::Instant::now()),
                Event::TcpOpened(id, sender) => { tcp.insert(id, sender); }
                Event::TcpClosed(id) => { tcp.remove(&id); }
            },
            Some(list) = lists.recv() => resolver.set_block_list(list),
            _ = timer => resolver.handle_timeout(std::time::Instant::now()),
            Some(reply) = log_requests.recv() => { let _ = reply.send(resolver.query_log(std::time::Instant::now())); }
        }
        while let Some(transmit) = resolver.poll_transmit() {
            match transmit {
                Transmit::Answer { client: Client::Udp(to), bytes } => {
                    if let Some(socket) = udp.iter().find(|s| s.local_addr().is_ok_and(|l| l.is_ipv4() == to.is_ipv4())) {
                        let _ = socket.try_send_to(&bytes, to);
                    }
                }
                Transmit::Answer { client: Client::Tcp(id), bytes } => {
                    if let Some(sender) = tcp.get(&id) {
                        let _ = sender.try_send(bytes);
                    }
                }
                Transmit::Upstream { upstream, bytes } => {
                    if let Some(target) = upstream_list.get(upstream).cloned() {
                        tokio::spawn(ask_upstream(upstream, target, bytes, options.tls.clone(), https.clone(), events_tx.clone()));
                    }
                }
            }
        }
        while let Some(found) = resolver.poll_resolved() {
            let _ = resolved.try_send(found);
        }
    }
}

/// One upstream query on its own socket or connection (so its source port is the kernel's
/// random pick), under one timeout whatever the transport.
async fn ask_upstream(index: usize, target: Upstream, query: Vec<u8>, tls: Arc<rustls::ClientConfig>, https: HttpsClient, events: mpsc::Sender<Event>) {
    let asked = async {
        match &target {
            Upstream::Udp(address) => ask_udp(*address, &query).await,
            Upstream::Tls { address, name } => ask_tls(*address, name, &query, tls).await,
            Upstream::Https(url) => https.dns_query(url, &query).await,
        }
    };
    match tokio::time::timeout(UPSTREAM_WAIT, asked).await {
        Ok(Ok(answer)) => {
            let _ = events.send(Event::Upstream(index, answer)).await;
        }
        // A refused certificate is a warning with no names in it; the query gets SERVFAIL,
        // never a plaintext retry (DNS-04).
        Ok(Err(error)) if matches!(target, Upstream::Tls { .. }) => tracing::warn!("a DNS-over-TLS upstream failed: {error}"),
        Ok(Err(error)) if matches!(target, Upstream::Https(_)) => tracing::warn!("a DNS-over-HTTPS upstream failed: {error}"),
        _ => {}
    }
}

/// One query over UDP, from a socket connected to the upstream: only datagrams from its
/// address and port arrive.
async fn ask_udp(address: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if address.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(address).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; 4096];
    let len = socket.recv(&mut buffer).await?;
    buffer.truncate(len);
    Ok(buffer)
}

/// One query over DNS over TLS: a fresh connection, the two-byte length framing of TCP.
async fn ask_tls(address: SocketAddr, name: &str, query: &[u8], tls: Arc<rustls::ClientConfig>) -> std::io::Result<Vec<u8>> {
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|_| std::io::Error::other("not a server name"))?;
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let mut stream = tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp).await?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::Error::other("query too long"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(query).await?;
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).await?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

async fn accept_tcp(listener: TcpListener, events: mpsc::Sender<Event>) {
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut next_id = 0u64;
    while let Ok((stream, from)) = listener.accept().await {
        if open.load(std::sync::atomic::Ordering::Relaxed) >= MAX_TCP_CLIENTS {
            continue;
        }
        next_id += 1;
        let (id, events, open) = (next_id, events.clone(), open.clone());
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = serve_tcp(id, stream, from.ip(), &events).await;
            let _ = events.send(Event::TcpClosed(id)).await;
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

/// DNS over TCP: two-byte length, message; answers come back in order of completion.
async fn serve_tcp(id: u64, stream: tokio::net::TcpStream, source: IpAddr, events: &mpsc::Sender<Event>) -> std::io::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    let (answers_tx, mut answers) = mpsc::channel::<Vec<u8>>(16);
    events.send(Event::TcpOpened(id, answers_tx)).await.map_err(|_| std::io::ErrorKind::BrokenPipe)?;
    let writing = tokio::spawn(async move {
        while let Some(answer) = answers.recv().await {
            let Ok(len) = u16::try_from(answer.len()) else { continue };
            if writer.write_all(&len.to_be_bytes()).await.is_err() || writer.write_all(&answer).await.is_err() {
                break;
            }
        }
    });
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, reader.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if tokio::time::timeout(TCP_IDLE, reader.read_exact(&mut message)).await.map_or(true, |r| r.is_err()) {
            break;
        }
        if events.send(Event::Query(Client::Tcp(id), source, message)).await.is_err() {
            break;
        }
    }
    // Give answers in flight a moment to go out.
    tokio::time::sleep(Duration::from_millis(100)).await;
    writing.abort();
    Ok(())
}

/// Binds even while the overlay address is still tentative (IPv6 DAD): `IP_FREEBIND`.
fn bind_udp(address: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    prepare(&socket, address)?;
    Ok(UdpSocket::from_std(socket.into())?)
}

fn bind_tcp(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    prepare(&socket, address)?;
    socket.listen(64)?;
    Ok(TcpListener::from_std(socket.into())?)
}

fn prepare(socket: &socket2::Socket, address: SocketAddr) -> anyhow::Result<()> {
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into()).map_err(|e| anyhow::anyhow!("cannot serve DNS on {address}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse_and_the_system_resolvers_are_read_from_resolv_conf() {
        let udp = |a: &str| Ok(Upstream::Udp(a.parse().expect("addr")));
        assert_eq!(parse_upstream("udp://192.0.2.53"), udp("192.0.2.53:53"));
        assert_eq!(parse_upstream("udp://192.0.2.53:5353"), udp("192.0.2.53:5353"));
        assert_eq!(parse_upstream("udp://[2001:db8::53]"), udp("[2001:db8::53]:53"));
        assert_eq!(parse_upstream("tls://192.0.2.53#dns.example"), Ok(Upstream::Tls { address: "192.0.2.53:853".parse().expect("addr"), name: "dns.example".into() }));
        assert_eq!(parse_upstream("tls://192.0.2.53:8853"), Ok(Upstream::Tls { address: "192.0.2.53:8853".parse().expect("addr"), name: "192.0.2.53".into() }));
        assert_eq!(parse_upstream("https://dns.example/dns-query"), Ok(Upstream::Https(HttpsUrl::parse("https://dns.example/dns-query").expect("url"))));
        assert!(parse_upstream("http://dns.example/dns-query").is_err(), "DoH in the clear");
        assert!(parse_upstream("udp://192.0.2.53#name").expect_err("a name on udp").contains("tls://"));
        assert!(parse_upstream("udp://dns.example").expect_err("a name").contains("an address"));
        assert!(parse_upstream("192.0.2.53").is_err(), "no scheme");
        let text = "# generated\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nsearch example\nnameserver 127.0.0.53\n";
        let found = system_resolvers(text);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0], "192.0.2.1:53".parse::<SocketAddr>().expect("addr"));
    }
}
