//! HTTPS for the resolver: DNS over HTTPS upstreams (RFC 8484, POST `application/dns-message`
//! over HTTP/2, one kept connection per upstream, multiplexed) and block lists fetched from
//! `https://` URLs. hyper speaks HTTP, rustls TLS with the resolver's explicit root store
//! (webpki roots plus `--dns-ca`); a certificate that does not check out is an error, never a
//! retry in the clear.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long connecting (name, TCP, TLS, HTTP/2) may take, per address tried.
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// The largest DNS message we take from a DoH server.
const MAX_DNS_ANSWER: usize = 65_535;

/// An `https://HOST[:PORT]/PATH` URL, checked and split.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpsUrl {
    /// A name (resolved with this host's own resolvers when connecting) or an address.
    pub host: String,
    pub port: u16,
    /// The path and query, starting with `/`.
    pub path: String,
}

impl HttpsUrl {
    /// Parses with the `http` crate's URI parser; only `https` with a host is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{text:?}: give an https:// URL"));
        }
        let authority = uri.authority().ok_or_else(|| format!("{text:?}: the URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{text:?}: a URL with a user name or password is not accepted"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let name_ok = host.parse::<IpAddr>().is_ok() || rustls::pki_types::ServerName::try_from(host.clone()).is_ok();
        if host.is_empty() || !name_ok {
            return Err(format!("{text:?}: {host:?} is not a host name"));
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(Self { host, port: authority.port_u16().unwrap_or(443), path })
    }

    fn uri(&self) -> String {
        format!("https://{}{}", self.authority(), self.path)
    }

    fn authority(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

impl std::fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpsClient")
    }
}

/// The resolver's HTTPS client: TLS configurations with ALPN for HTTP/2 (DoH) and for either
/// version (block lists), and the DoH connections kept open between queries.
#[derive(Clone)]
pub struct HttpsClient {
    h2_only: Arc<rustls::ClientConfig>,
    any_version: Arc<rustls::ClientConfig>,
    kept: Arc<Mutex<HashMap<HttpsUrl, H2>>>,
}

impl HttpsClient {
    /// From the resolver's TLS configuration (its root store), adding the ALPN offers.
    pub fn new(tls: &rustls::ClientConfig) -> Self {
        let with_alpn = |protocols: &[&[u8]]| {
            let mut config = tls.clone();
            config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        };
        Self { h2_only: with_alpn(&[b"h2"]), any_version: with_alpn(&[b"h2", b"http/1.1"]), kept: Arc::default() }
    }

    /// One DNS query over HTTPS: POST to the URL on the kept HTTP/2 connection (a new one if
    /// there is none or it closed).
    pub async fn dns_query(&self, url: &HttpsUrl, query: &[u8]) -> std::io::Result<Vec<u8>> {
        let kept = self.kept.lock().await.get(url).filter(|s| !s.is_closed()).cloned();
        let mut sender = match kept {
            Some(sender) => sender,
            None => {
                let sender = match self.connect(url, &self.h2_only).await? {
                    Connection::H2(sender) => sender,
                    Connection::H1(_) => return Err(std::io::Error::other("the DNS-over-HTTPS server does not speak HTTP/2")),
                };
                self.kept.lock().await.insert(url.clone(), sender.clone());
                sender
            }
        };
        sender.ready().await.map_err(std::io::Error::other)?;
        let request = http::Request::post(url.uri())
            .header(http::header::CONTENT_TYPE, "application/dns-message")
            .header(http::header::ACCEPT, "application/dns-message")
            .body(Full::new(Bytes::copy_from_slice(query)))
            .map_err(std::io::Error::other)?;
        let response = sender.send_request(request).await.map_err(std::io::Error::other)?;
        read_body(response, MAX_DNS_ANSWER, Some("application/dns-message")).await
    }

    /// GET a document of at most `limit` bytes (a block list) on a fresh connection.
    pub async fn get(&self, url: &HttpsUrl, limit: usize) -> std::io::Result<Vec<u8>> {
        match self.connect(url, &self.any_version).await? {
            Connection::H2(mut sender) => {
                let request = http::Request::get(url.uri()).body(Full::default()).map_err(std::io::Error::other)?;
                read_body(sender.send_request(request).await.map_err(std::io::Error::other)?, limit, None).await
            }
            Connection::H1(mut sender) => {
                let request = http::Request::get(url.path.as_str()).header(http::header::HOST, url.authority()).body(Full::default()).map_err(std::io::Error::other)?;
                read_body(sender.send_request(request).await.map_err(std::io::Error::other)?, limit, None).await
            }
        }
    }

    /// Name (this host's resolvers, unless the URL holds an address), TCP, TLS with the
    /// certificate checked against the host, then HTTP/2 or HTTP/1.1 as ALPN agreed.
    async fn connect(&self, url: &HttpsUrl, tls: &Arc<rustls::ClientConfig>) -> std::io::Result<Connection> {
        let server_name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|_| std::io::Error::other("not a server name"))?;
        let addresses: Vec<SocketAddr> = match url.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, url.port)],
            Err(_) => tokio::time::timeout(CONNECT_WAIT, tokio::net::lookup_host((url.host.as_str(), url.port))).await.map_err(|_| std::io::ErrorKind::TimedOut)??.collect(),
        };
        let mut last = std::io::Error::other("the host has no address");
        for address in addresses {
            let attempt = async {
                let tcp = tokio::net::TcpStream::connect(address).await?;
                tcp.set_nodelay(true)?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(server_name.clone(), tcp).await?;
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = hyper_util::rt::TokioIo::new(stream);
                if h2 {
                    let (sender, connection) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.map_err(std::io::Error::other)?;
                    tokio::spawn(connection);
                    Ok(Connection::H2(sender))
                } else {
                    let (sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(std::io::Error::other)?;
                    tokio::spawn(connection);
                    Ok(Connection::H1(sender))
                }
            };
            match tokio::time::timeout(CONNECT_WAIT, attempt).await {
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(error)) => last = error,
                Err(_) => last = std::io::ErrorKind::TimedOut.into(),
            }
        }
        Err(last)
    }
}

enum Connection {
    H2(H2),
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

/// A 200 answer's body, at most `limit` bytes, of `content_type` when one is required.
async fn read_body(response: http::Response<hyper::body::Incoming>, limit: usize, content_type: Option<&str>) -> std::io::Result<Vec<u8>> {
    if response.status() != http::StatusCode::OK {
        return Err(std::io::Error::other(format!("the server answered HTTP {}", response.status().as_u16())));
    }
    if let Some(wanted) = content_type {
        let got = response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !got.eq_ignore_ascii_case(wanted) {
            return Err(std::io::Error::other(format!("the server answered {got:?}, not {wanted}")));
        }
    }
    let body = Limited::new(response.into_body(), limit).collect().await.map_err(|e| std::io::Error::other(format!("reading the answer: {e}")))?;
    Ok(body.to_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_only_https_with_a_host_is_taken() {
        let url = HttpsUrl::parse("https://dns.example/dns-query").expect("url");
        assert_eq!(url, HttpsUrl { host: "dns.example".into(), port: 443, path: "/dns-query".into() });
        let url = HttpsUrl::parse("https://[2001:db8::53]:8443/q?x=1").expect("v6 url");
        assert_eq!((url.host.as_str(), url.port, url.path.as_str()), ("2001:db8::53", 8443, "/q?x=1"));
        assert_eq!(url.to_string(), "https://[2001:db8::53]:8443/q?x=1");
        assert_eq!(HttpsUrl::parse("https://192.0.2.53").expect("no path").path, "/");
        assert!(HttpsUrl::parse("http://dns.example/dns-query").expect_err("http").contains("https://"));
        assert!(HttpsUrl::parse("https://user:pw@dns.example/").expect_err("credentials").contains("password"));
        assert!(HttpsUrl::parse("https:///dns-query").is_err());
        assert!(HttpsUrl::parse("not a url").is_err());
    }
}
