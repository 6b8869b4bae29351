//! `pal up --userspace`: the node without a TUN device and without root. The data plane's
//! inner packets go to a userspace TCP/IP stack (smoltcp, [`stack`]) instead of the kernel;
//! local programs reach the network's devices through a SOCKS5 and an HTTP proxy on loopback
//! ([`proxy`]); other members reach this device as usual (it answers pings, and the ports it
//! exposes are forwarded to the same ports on 127.0.0.1). Nothing on the host changes: no
//! interface, route, rule, firewall or resolver — and so no exit and no DNS here.

pub mod proxy;
pub mod stack;

use anyhow::{Context, Result};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;

/// The userspace mode's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserspaceOptions {
    /// Where the SOCKS5 proxy listens (`--socks5`).
    pub socks5: Option<SocketAddr>,
    /// Where the HTTP proxy listens (`--http-proxy`).
    pub http: Option<SocketAddr>,
    /// Ports members may reach here, forwarded to the same port on 127.0.0.1 (`--expose`).
    pub expose: Vec<u16>,
}

/// What `pal up --userspace` answers where the host would have to change.
pub const NO_HOST_CHANGES: &str = "this node runs with --userspace: it changes nothing on the host, so it has no exit and no system DNS; run pal up as root without --userspace for those";

/// Starts the stack on `fd` and the proxies; device names for the proxies come from `names`.
pub async fn start(fd: OwnedFd, ipv4: Ipv4Addr, ipv6: Ipv6Addr, options: &UserspaceOptions, names: proxy::Names) -> Result<()> {
    let (stack, mut accepted) = stack::spawn(fd, ipv4, ipv6, protocol::wire::DEFAULT_MTU, &options.expose).context("cannot start the userspace network stack")?;
    for (address, kind, flag) in [(options.socks5, proxy::Kind::Socks5, "--socks5"), (options.http, proxy::Kind::Http, "--http-proxy")] {
        let Some(address) = address else { continue };
        let listener = tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} ({flag}): is another program using it?"))?;
        tracing::info!(%address, ?kind, "proxy listening");
        tokio::spawn(proxy::serve(listener, kind, stack.clone(), names.clone()));
    }
    tokio::spawn(async move {
        while let Some(stack::Accepted { port, link }) = accepted.recv().await {
            tokio::spawn(async move {
                match tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
                    Ok(stream) => proxy::bridge(stream, link).await,
                    Err(error) => tracing::debug!(port, %error, "nothing to forward an exposed port to"),
                }
            });
        }
    });
    Ok(())
}
