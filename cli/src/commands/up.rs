//! `pal up`: run the node in the foreground until SIGINT or SIGTERM.

use anyhow::Context;
use node::app::{UpOptions, default_listen, run as run_node};
use node::statedir::StateDir;
use std::net::SocketAddr;

/// `pal up`'s options as given on the command line or in the environment (clap reads both).
#[derive(Debug, Default)]
pub struct Flags {
    pub cloudpal: bool,
    pub listen: Option<String>,
    pub bootstrap: Vec<String>,
    pub egress_pool: Vec<String>,
    pub dns_ca: Option<std::path::PathBuf>,
    pub block_list_refresh: Option<String>,
    pub no_offload: bool,
    pub no_port_spray: bool,
    pub metrics: Option<String>,
    pub tcp_listen: Option<String>,
    pub userspace: bool,
    pub socks5: Option<String>,
    pub http_proxy: Option<String>,
    pub expose: Vec<u16>,
}

/// The same options in a TOML file: the keys are the flags' names without the dashes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct File {
    cloudpal: Option<bool>,
    listen: Option<String>,
    bootstrap: Option<Vec<String>>,
    egress_pool: Option<Vec<String>>,
    dns_ca: Option<std::path::PathBuf>,
    block_list_refresh: Option<String>,
    offload: Option<bool>,
    port_spray: Option<bool>,
    metrics: Option<String>,
    tcp_listen: Option<String>,
    userspace: Option<bool>,
    socks5: Option<String>,
    http_proxy: Option<String>,
    expose: Option<Vec<u16>>,
}

/// Reads the options file: `config` if given (it must exist), else `pal.toml` in the state
/// directory if there is one.
pub fn read_file(state: &StateDir, config: Option<&std::path::Path>) -> anyhow::Result<File> {
    let default = state.root().join("pal.toml");
    let path = match config {
        Some(path) => path.to_owned(),
        None if default.exists() => default,
        None => return Ok(File::default()),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read the config file {}", path.display()))?;
    parse_file(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
}

/// The file's options, or one line saying what is wrong and where.
pub fn parse_file(text: &str) -> Result<File, String> {
    toml::from_str(text).map_err(|error| {
        let line = error.span().map(|span| text.as_bytes()[..span.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1);
        let message = error.message().replace('\n', " ");
        match line {
            Some(line) => format!("line {line}: {message}"),
            None => message,
        }
    })
}

/// A flag (or the environment) beats the file; the file beats the default.
pub fn merge(flags: Flags, file: File) -> Flags {
    Flags {
        cloudpal: flags.cloudpal || file.cloudpal == Some(true),
        listen: flags.listen.or(file.listen),
        bootstrap: if flags.bootstrap.is_empty() { file.bootstrap.unwrap_or_default() } else { flags.bootstrap },
        egress_pool: if flags.egress_pool.is_empty() { file.egress_pool.unwrap_or_default() } else { flags.egress_pool },
        dns_ca: flags.dns_ca.or(file.dns_ca),
        block_list_refresh: flags.block_list_refresh.or(file.block_list_refresh),
        no_offload: flags.no_offload || file.offload == Some(false),
        no_port_spray: flags.no_port_spray || file.port_spray == Some(false),
        metrics: flags.metrics.or(file.metrics),
        tcp_listen: flags.tcp_listen.or(file.tcp_listen),
        userspace: flags.userspace || file.userspace == Some(true),
        socks5: flags.socks5.or(file.socks5),
        http_proxy: flags.http_proxy.or(file.http_proxy),
        expose: if flags.expose.is_empty() { file.expose.unwrap_or_default() } else { flags.expose },
    }
}

pub fn run(state: StateDir, config: Option<std::path::PathBuf>, flags: Flags) -> anyhow::Result<()> {
    let file = read_file(&state, config.as_deref())?;
    let Flags { cloudpal, listen, bootstrap, egress_pool, dns_ca, block_list_refresh, no_offload, no_port_spray, metrics, tcp_listen, userspace, socks5, http_proxy, expose } = merge(flags, file);
    let userspace = userspace_options(userspace, cloudpal, socks5, http_proxy, expose)?;
    let (offload, port_spray) = (!no_offload, !no_port_spray);
    let metrics = match metrics {
        Some(text) => Some(text.parse::<SocketAddr>().with_context(|| format!("--metrics {text:?} is not ADDR:PORT"))?),
        None => None,
    };
    let block_list_refresh = block_list_refresh.unwrap_or_else(|| "1d".to_owned());
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
    let options = UpOptions { listen, bootstrap, cloudpal, tun_name: "pal0".into(), offload, port_spray, metrics, egress_pool, dns_ca, block_list_refresh, tcp_listen, userspace };
    // The control plane is light: one thread. The data plane starts its own (node::dataplane).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_node(state, options))
}

/// `--userspace` and its proxies, checked: the proxies and exposed ports only with it, and
/// never on a CloudPal (its relay, exit and resolver need the kernel).
fn userspace_options(on: bool, cloudpal: bool, socks5: Option<String>, http: Option<String>, expose: Vec<u16>) -> anyhow::Result<Option<node::userspace::UserspaceOptions>> {
    if !on {
        for (given, flag) in [(socks5.is_some(), "--socks5"), (http.is_some(), "--http-proxy"), (!expose.is_empty(), "--expose")] {
            if given {
                anyhow::bail!("{flag} is for the userspace mode: add --userspace");
            }
        }
        return Ok(None);
    }
    if cloudpal {
        anyhow::bail!("a CloudPal needs the kernel for its relay, exit and resolver: run it as root without --userspace");
    }
    let address = |text: Option<String>, flag: &str| -> anyhow::Result<Option<SocketAddr>> {
        text.map(|t| t.parse::<SocketAddr>().with_context(|| format!("{flag} {t:?} is not ADDR:PORT (like 127.0.0.1:1080)"))).transpose()
    };
    if expose.contains(&0) {
        anyhow::bail!("--expose 0 is not a port: give 1 to 65535");
    }
    Ok(Some(node::userspace::UserspaceOptions { socks5: address(socks5, "--socks5")?, http: address(http, "--http-proxy")?, expose }))
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
    use super::{Flags, log_filter, merge, parse_file};

    #[test]
    fn a_flag_beats_the_file_and_the_file_beats_the_default() {
        let file = parse_file("cloudpal = true\nlisten = \"[::]:5000\"\nbootstrap = [\"/ip4/192.0.2.1/tcp/41641\"]\noffload = false\ntcp-listen = \"off\"\n").expect("a valid file");
        let merged = merge(Flags { listen: Some("0.0.0.0:6000".into()), ..Flags::default() }, file);
        assert!(merged.cloudpal && merged.no_offload && !merged.no_port_spray);
        assert_eq!(merged.listen.as_deref(), Some("0.0.0.0:6000"), "the flag wins");
        assert_eq!(merged.bootstrap, vec!["/ip4/192.0.2.1/tcp/41641".to_owned()], "the file fills what no flag gave");
        assert_eq!(merged.tcp_listen.as_deref(), Some("off"));
        let plain = merge(Flags::default(), parse_file("").expect("an empty file"));
        assert!(!plain.cloudpal && !plain.no_offload && plain.listen.is_none() && plain.block_list_refresh.is_none());
    }

    #[test]
    fn a_bad_file_is_one_line_naming_the_line() {
        for (text, expected) in [("listen = 5\n", "line 1"), ("\n\nlisen = \"x\"\n", "line 3"), ("cloudpal = \n", "line 1")] {
            let error = parse_file(text).expect_err(text);
            assert!(error.starts_with(expected) && !error.contains('\n'), "{text:?}: {error}");
        }
        assert!(parse_file("lisen = \"x\"").expect_err("unknown key").contains("lisen"));
    }

    #[test]
    fn a_bare_level_raises_only_pals_own_code() {
        assert_eq!(log_filter(Some("debug")), "warn,quinn_udp=off,pal=debug,node=debug,protocol=debug,membership=debug");
        assert_eq!(log_filter(None), "warn,quinn_udp=off,pal=info,node=info,protocol=info,membership=info");
        assert_eq!(log_filter(Some("libp2p_swarm=debug")), "libp2p_swarm=debug");
    }
}
