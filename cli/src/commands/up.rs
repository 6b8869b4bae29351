//! `pal up`: run the node in the foreground until SIGINT or SIGTERM.

use anyhow::Context;
use node::app::{DEFAULT_PORT, UpOptions, run as run_node};
use node::statedir::StateDir;
use std::net::SocketAddr;

pub fn run(state: StateDir, cloudpal: bool, listen: Option<String>, bootstrap: Vec<String>, offload: bool) -> anyhow::Result<()> {
    // Lifecycle lines only by default; never peers, endpoints or destinations (PRIV-01).
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAL_LOG").unwrap_or_else(|_| "info,libp2p=warn,quinn=warn,quinn_udp=off".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).init();
    let listen: SocketAddr = match listen {
        Some(text) => text.parse().with_context(|| format!("--listen {text:?} is not ADDR:PORT"))?,
        None => SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
    };
    let bootstrap = bootstrap
        .iter()
        .map(|address| address.parse().with_context(|| format!("--bootstrap {address:?} is not a multiaddr")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = UpOptions { listen, bootstrap, cloudpal, tun_name: "pal0".into(), offload };
    // The control plane is light: one thread. The data plane starts its own (node::dataplane).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_node(state, options))
}
