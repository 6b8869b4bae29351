//! Test certificates (rcgen), a DNS-over-TLS front for a plain resolver in a namespace (a
//! rustls server that hands each connection to the resolver's TCP port) and an HTTPS server
//! (hyper, HTTP/2 and HTTP/1.1) that answers DNS over HTTPS through the same resolver and
//! serves block lists — how the encrypted-upstream tests get real TLS servers with a CA only
//! they trust.

use crate::{Netns, enter_namespace};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A CA, in PEM, and what it can sign.
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// A server certificate chain and key, in PEM.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub chain_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let certificate = params.self_signed(&key).expect("self-signed CA");
        Self { pem: certificate.pem(), issuer: Issuer::new(params, key) }
    }

    /// A certificate for `ip` and `names`; `expired` makes it one that ran out yesterday.
    pub fn server(&self, ip: IpAddr, names: &[&str], expired: bool) -> ServerCert {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
        params.subject_alt_names.push(SanType::IpAddress(ip));
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let certificate = params.signed_by(&key, &self.issuer).expect("signed");
        ServerCert { chain_pem: certificate.pem(), key_pem: key.serialize_pem() }
    }
}

fn server_config(cert: &ServerCert, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes()).collect::<Result<_, _>>().expect("chain");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions().expect("versions").with_no_client_auth().with_single_cert(chain, key).expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Documents an [`https_server`] serves by path; the test may change them while it runs.
pub type Documents = Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>;

/// Serves TLS on `listen` in `netns` with `config`, handing each accepted stream to `handle`
/// on its own task (the handshake too). Returns once listening; runs until the namespace goes.
fn serve_tls<F, Fut>(netns: &Netns, listen: SocketAddr, config: Arc<rustls::ServerConfig>, handle: F)
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handle = Arc::new(handle);
    let name = netns.name.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter_namespace(&name);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen).await.unwrap_or_else(|e| panic!("bind a TLS server on {listen}: {e}"));
            let _ = ready_tx.send(());
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, handle) = (acceptor.clone(), handle.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        handle(tls).await;
                    }
                });
            }
        });
    });
    let _ = ready_rx.recv();
}

/// An HTTPS server on `listen` in `netns`: `POST` with `application/dns-message` is a DNS
/// query passed over UDP to `dns_backend` (RFC 8484), `GET` serves `documents` (404 for
/// others). Runs until the namespace goes.
pub fn https_server(netns: &Netns, listen: SocketAddr, dns_backend: SocketAddr, cert: &ServerCert, documents: Documents) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    serve_tls(netns, listen, server_config(cert, &[b"h2", b"http/1.1"]), move |tls| {
        let documents = documents.clone();
        async move {
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let documents = documents.clone();
                async move {
                    let reply = |status: u16, kind: &str, body: Vec<u8>| {
                        http::Response::builder().status(status).header(http::header::CONTENT_TYPE, kind).body(Full::new(Bytes::from(body))).expect("response")
                    };
                    if request.method() == http::Method::POST {
                        let query = request.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                        let socket = tokio::net::UdpSocket::bind((listen.ip(), 0)).await.expect("udp");
                        let _ = socket.send_to(&query, dns_backend).await;
                        let mut answer = vec![0u8; 4096];
                        return Ok::<_, std::convert::Infallible>(match tokio::time::timeout(std::time::Duration::from_secs(3), socket.recv(&mut answer)).await {
                            Ok(Ok(len)) => reply(200, "application/dns-message", answer[..len].to_vec()),
                            _ => reply(502, "text/plain", Vec::new()),
                        });
                    }
                    let document = documents.lock().expect("documents").get(request.uri().path()).cloned();
                    Ok(match document {
                        Some(text) => reply(200, "text/plain", text.into_bytes()),
                        None => reply(404, "text/plain", Vec::new()),
                    })
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
        }
    });
}

/// A DNS-over-TLS front on `listen` in `netns`, passing each connection to `backend` (a
/// resolver's TCP port). Runs until the namespace goes.
pub fn dot_front(netns: &Netns, listen: SocketAddr, backend: SocketAddr, cert: &ServerCert) {
    serve_tls(netns, listen, server_config(cert, &[]), move |mut tls| async move {
        let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else { return };
        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
    });
}
