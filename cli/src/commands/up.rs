//! `pal up`: run the node in the foreground until SIGINT or SIGTERM.

use anyhow::Context;
use node::app::{UpOptions, default_listen, run as run_node};
use node::statedir::StateDir;
use std::net::SocketAddr;

/// `pal up`'s flags as given.
#[derive(Debug)]
pub struct Flags {
    pub cloudpal: bool,
    pub listen: Option<String>,
    pub bootstrap: Vec<String>,
    pub egress_pool: Vec<String>,
    pub dns_ca: Option<std::path::PathBuf>,
    pub block_list_refresh: String,
    pub offload: bool,
    pub port_spray: bool,
    pub metrics: Option<std::net::SocketAddr>,
    pub tcp_listen: Option<String>,
}

pub fn run(state: StateDir, flags: Flags) -> anyhow::Result<()> {
    let Flags { cloudpal, listen, bootstrap, egress_pool, dns_ca, block_list_refresh, offload, port_spray, metrics, tcp_listen } = flags;
    let filter = tracing_subscriber::EnvFilter::new(log_filter(std::env::var("PAL_LOG").ok().as_deref()));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).init();
    let listen: SocketAddr = match listen {
        Some(text) => text.parse().with_context(|| format!("--listen {text:?} is not ADDR:PORT"))?,
        None => default_listen(),
    };
    let bootstrap = bootstrap
        .iter()
        .map(|address| address.parse().with_context(|| format!("--bootstrap {address:?} is not a multiaddr")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let egress_pool = egress_pool
        .iter()
        .map(|text| match text.parse::<membership::Rule>() {
            Ok(membership::Rule::Net(net)) => Ok(net),
            Ok(membership::Rule::Domain(_)) => anyhow::bail!("--egress-pool {text:?} is not a CIDR (like 198.51.100.0/28 or 2001:db8:2::/64)"),
            Err(error) => anyhow::bail!("--egress-pool: {error}"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !egress_pool.is_empty() && !cloudpal {
        anyhow::bail!("--egress-pool is for a CloudPal: add --cloudpal");
    }
    if dns_ca.is_some() && !cloudpal {
        anyhow::bail!("--dns-ca is for a CloudPal's resolver: add --cloudpal");
    }
    let tcp_listen = match tcp_listen.as_deref() {
        Some(_) if !cloudpal => anyhow::bail!("--tcp-listen is for a CloudPal: add --cloudpal"),
        Some("off") => None,
        Some(text) => Some(text.parse::<SocketAddr>().with_context(|| format!("--tcp-listen {text:?} is not ADDR:PORT or off"))?),
        None if cloudpal => Some(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, node::relaylink::DEFAULT_PORT))),
        None => None,
    };
    let block_list_refresh = std::time::Duration::from_secs(super::parse_duration("--block-list-refresh", &block_list_refresh)?);
    let options = UpOptions { listen, bootstrap, cloudpal, tun_name: "pal0".into(), offload, port_spray, metrics, egress_pool, dns_ca, block_list_refresh, tcp_listen };
    // The control plane is light: one thread. The data plane starts its own (node::dataplane).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_node(state, options))
}

/// The log filter for `PAL_LOG`. Lifecycle lines only by default, never peers, endpoints or
/// destinations (PRIV-01): quinn-udp names the destination of every failed send in its
/// warnings, so it is silent. A bare level (`PAL_LOG=debug`) applies to pal's own code only —
/// which logs no addresses, names or keys at any level (PRIV-02) — while the libraries stay at
/// warnings (libp2p's own debug lines name peers and addresses); full directives
/// (`PAL_LOG=libp2p_swarm=debug,…`) are taken as they are, for whoever needs them.
fn log_filter(setting: Option<&str>) -> String {
    const OURS: [&str; 4] = ["pal", "node", "protocol", "membership"];
    match setting.map(str::trim).filter(|s| !s.is_empty()) {
        None => "warn,quinn_udp=off,pal=info,node=info,protocol=info,membership=info".into(),
        Some(level) if ["error", "warn", "info", "debug", "trace"].contains(&level) => {
            let ours: Vec<String> = OURS.iter().map(|target| format!("{target}={level}")).collect();
            format!("warn,quinn_udp=off,{}", ours.join(","))
        }
        Some(directives) => directives.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn a_bare_level_raises_only_pals_own_code() {
        assert_eq!(log_filter(Some("debug")), "warn,quinn_udp=off,pal=debug,node=debug,protocol=debug,membership=debug");
        assert_eq!(log_filter(None), "warn,quinn_udp=off,pal=info,node=info,protocol=info,membership=info");
        assert_eq!(log_filter(Some("libp2p_swarm=debug")), "libp2p_swarm=debug");
    }
}
