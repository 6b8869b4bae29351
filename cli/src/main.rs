//! `pal`: the one CloudPal binary. The command surface is DESIGN.md's CLI contract; each
//! subcommand lives in its own file under `commands/`. Errors are one line on stderr and a
//! non-zero exit.

use clap::{Parser, Subcommand};
use node::statedir::{DEFAULT_STATE_DIR, StateDir};
use std::path::PathBuf;
use std::process::ExitCode;

mod commands;

/// `pal --version`: the release and the git commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("PAL_GIT_COMMIT"), ")");

#[derive(Debug, Parser)]
#[command(name = "pal", version = VERSION, about = "CloudPal: your devices, one private network")]
struct Cli {
    /// State directory (keys, membership log, control socket).
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new network; this device becomes its first admin.
    Init {
        #[arg(long)]
        name: String,
    },
    /// Run the node.
    ///
    /// Every option can also come from the environment (PAL_LISTEN, PAL_CLOUDPAL, …; lists
    /// comma-separated) or from a TOML file (`--config`, else pal.toml in the state directory,
    /// keys as the flags without dashes: `listen = "[::]:41641"`, `bootstrap = [...]`,
    /// `offload = false`); a flag beats the environment, which beats the file.
    Up {
        /// A TOML file of `pal up` options.
        #[arg(long, env = "PAL_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Switch on CloudPal duties: relay, DHT anchor, VPN exit, DNS.
        #[arg(long, env = "PAL_CLOUDPAL")]
        cloudpal: bool,
        /// Data-plane UDP address (default [::]:41641: IPv6 and IPv4 on one socket); the control
        /// plane uses TCP on the same port, and a CloudPal answers NAT checks on the next UDP
        /// port.
        #[arg(long, env = "PAL_LISTEN", value_name = "ADDR:PORT")]
        listen: Option<String>,
        #[arg(long, env = "PAL_BOOTSTRAP", value_delimiter = ',', value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
        /// CloudPal: addresses routed to it (IPv4 CIDRs and/or an IPv6 prefix) that egress
        /// rotation draws from.
        #[arg(long, env = "PAL_EGRESS_POOL", value_delimiter = ',', value_name = "CIDR")]
        egress_pool: Vec<String>,
        /// CloudPal: a private CA (PEM) to trust for DNS-over-TLS and DNS-over-HTTPS upstreams
        /// and block-list URLs.
        #[arg(long, env = "PAL_DNS_CA", value_name = "PEM")]
        dns_ca: Option<PathBuf>,
        /// CloudPal: how often block lists are read and fetched again (default 1d).
        #[arg(long, env = "PAL_BLOCK_LIST_REFRESH", value_name = "DURATION")]
        block_list_refresh: Option<String>,
        /// Do not ask the kernel for segmentation offloads on the overlay interface.
        #[arg(long, env = "PAL_NO_OFFLOAD")]
        no_offload: bool,
        /// Take no part in birthday punching (up to 256 sockets or 1,024 probes to random ports
        /// a minute per peer behind a symmetric NAT): for networks whose intrusion detection
        /// would take it for a port scan. Such peers then stay relayed.
        #[arg(long, env = "PAL_NO_PORT_SPRAY")]
        no_port_spray: bool,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464): counts only, never an
        /// address or a name. Off by default.
        #[arg(long, env = "PAL_METRICS", value_name = "ADDR:PORT")]
        metrics: Option<String>,
        /// CloudPal: where to serve the TCP/TLS fallback for networks that block UDP (default
        /// [::]:443), or `off`.
        #[arg(long, env = "PAL_TCP_LISTEN", value_name = "ADDR:PORT|off")]
        tcp_listen: Option<String>,
        /// Run without root and without a TUN device: a userspace TCP/IP stack, reached
        /// through the proxies below; other members reach this device as usual. No exit and
        /// no system DNS in this mode (nothing on the host changes).
        #[arg(long, env = "PAL_USERSPACE")]
        userspace: bool,
        /// With --userspace: a SOCKS5 proxy into the network here (e.g. 127.0.0.1:1080).
        #[arg(long, env = "PAL_SOCKS5", value_name = "ADDR:PORT")]
        socks5: Option<String>,
        /// With --userspace: an HTTP proxy (CONNECT and http:// URLs) into the network here.
        #[arg(long, env = "PAL_HTTP_PROXY", value_name = "ADDR:PORT")]
        http_proxy: Option<String>,
        /// With --userspace: let members reach this TCP port here (forwarded to 127.0.0.1).
        #[arg(long, env = "PAL_EXPOSE", value_delimiter = ',', value_name = "PORT")]
        expose: Vec<u16>,
    },
    /// Manage the network's devices.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Join the network of an invite code.
    Join {
        code: String,
        #[arg(long)]
        name: String,
    },
    /// Print a request code for a device members can reach but that cannot reach them.
    Request {
        #[arg(long)]
        name: String,
        /// The fingerprint of the network to accept (from `pal status` on an admin): the device
        /// refuses a log of any other network.
        #[arg(long, value_name = "FINGERPRINT")]
        network: String,
        /// Where to wait for the admin: TCP on this port (by default the node's, 41641).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
    },
    /// Peers, overlay addresses, paths and round-trip times.
    Status {
        #[arg(long)]
        json: bool,
        /// Also draw the network as this device sees it into FILE (SVG): devices, direct,
        /// relayed and TCP-relayed paths, round trips.
        #[arg(long, value_name = "FILE")]
        graph: Option<PathBuf>,
    },
    /// What the node found out about this network: UDP to CloudPal, NAT mapping behaviour,
    /// public and reflexive addresses, IPv6, round trip to CloudPal.
    Netcheck {
        #[arg(long)]
        json: bool,
    },
    /// Ping a device over the overlay and report the path used.
    Ping {
        name: String,
        #[arg(short = 'c', long, default_value_t = 3)]
        count: u32,
    },
    /// Show the verified membership log.
    Log {
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `pal completions bash > /etc/bash_completion.d/pal`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `pal manpage > /usr/share/man/man1/pal.1`.
    Manpage,
    /// The personal VPN: all internet traffic through your CloudPal.
    Exit {
        #[command(subcommand)]
        command: ExitCommand,
    },
    /// DNS through your CloudPal (names, ad blocking) without the exit.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// The network's exit and firewall policy (set by admins, enforced by CloudPal).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ExitCommand {
    /// Send all internet traffic through NAME (by default the network's CloudPal).
    Use {
        name: Option<String>,
        /// Keep the local network (printers, NAS) reachable beside the tunnel.
        #[arg(long)]
        allow_lan: bool,
    },
    /// Back to the direct internet; removes every route, rule and table pal added.
    Off,
    /// A new exit session: with egress rotation on, a new egress address (old flows end).
    Renew,
    /// The exit, its state, egress addresses and resolver.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DnsCommand {
    /// Send this device's DNS to CloudPal's resolver (its own resolvers stay as a fallback).
    On,
    /// Put the system resolver back.
    Off,
    /// On CloudPal: the last queries (kept in memory only while the policy's logging is on).
    Log {
        #[arg(long)]
        json: bool,
    },
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Change the policy (admins only); what is not given stays as it is.
    Set {
        /// No internet through CloudPal for anyone; the mesh keeps working.
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        mesh_only: Option<bool>,
        /// Internet through CloudPal only to these (CIDR, address or domain).
        #[arg(long, value_name = "RULE")]
        allow: Vec<String>,
        /// Never through CloudPal (CIDR, address or domain).
        #[arg(long, value_name = "RULE")]
        deny: Vec<String>,
        #[arg(long)]
        clear_allow: bool,
        #[arg(long)]
        clear_deny: bool,
        /// Let CloudPal log new exit flows (off by default: nothing is logged).
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        logging: Option<bool>,
        /// A random egress address from CloudPal's pool for each exit session.
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        rotate_egress: Option<bool>,
        /// Which devices may use the exit: `all`, or names separated by commas.
        #[arg(long, value_name = "all|NAME,...", value_delimiter = ',')]
        exit_devices: Option<Vec<String>>,
        /// A block list for CloudPal's resolver: a hosts file or domain list (its path on CloudPal).
        #[arg(long, value_name = "SOURCE")]
        block_list: Vec<String>,
        #[arg(long)]
        clear_block_lists: bool,
        /// Where CloudPal's resolver forwards (replaces the current list):
        /// tls://ADDR[:PORT][#NAME] (DNS over TLS) or udp://ADDR[:PORT].
        #[arg(long, value_name = "URL")]
        dns_upstream: Vec<String>,
        /// CloudPal's relay rate in all, shared fairly among the members using it: Mbit/s,
        /// `unlimited`, or `default` (1000).
        #[arg(long, value_name = "MBIT|unlimited|default")]
        relay_rate: Option<String>,
    },
}

fn on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{text:?}: say on or off")),
    }
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Invite a device; prints the invite code alone on the last line.
    Invite {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "member")]
        role: String,
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// A guest (`--role guest`) reaches this device, on these ports only if given
        /// (`nas:22,8000-8100`); repeat for each device. It reaches nothing else.
        #[arg(long, value_name = "DEVICE[:PORTS]")]
        share: Vec<String>,
        /// Draw the code as a QR code too (the default when the output is a terminal).
        #[arg(long)]
        qr: bool,
    },
    /// Let a guest reach more: these devices (and only these ports, if given).
    Share {
        guest: String,
        #[arg(required = true, value_name = "DEVICE[:PORTS]")]
        devices: Vec<String>,
    },
    /// Take devices away from what a guest reaches.
    Unshare {
        guest: String,
        #[arg(required = true, value_name = "DEVICE")]
        devices: Vec<String>,
    },
    /// Add a device from its request code and deliver the log to it.
    Add {
        code: String,
        #[arg(long, default_value = "member")]
        role: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Cut a device off everywhere.
    Revoke { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let state = StateDir::new(&cli.state);
    let result = match cli.command {
        Command::Init { name } => commands::init::run(&state, &name),
        Command::Up { config, cloudpal, listen, bootstrap, egress_pool, dns_ca, block_list_refresh, no_offload, no_port_spray, metrics, tcp_listen, userspace, socks5, http_proxy, expose } => {
            let flags = commands::up::Flags { cloudpal, listen, bootstrap, egress_pool, dns_ca, block_list_refresh, no_offload, no_port_spray, metrics, tcp_listen, userspace, socks5, http_proxy, expose };
            commands::up::run(state, config, flags)
        }
        Command::Device { command } => match command {
            DeviceCommand::Invite { name, role, ttl, share, qr } => commands::device::invite(&state, name, &role, &ttl, share, qr),
            DeviceCommand::Share { guest, devices } => commands::device::share(&state, guest, devices, false),
            DeviceCommand::Unshare { guest, devices } => commands::device::share(&state, guest, devices, true),
            DeviceCommand::Add { code, role } => commands::device::add(&state, &code, &role),
            DeviceCommand::List { json } => commands::device::list(&state, json),
            DeviceCommand::Revoke { name } => commands::device::revoke(&state, name),
        },
        Command::Join { code, name } => commands::join::run(&state, &code, &name),
        Command::Request { name, network, listen } => commands::request::run(&state, &name, &network, listen),
        Command::Status { json, graph } => commands::status::run(&state, json, graph.as_deref()),
        Command::Netcheck { json } => commands::netcheck::run(&state, json),
        Command::Ping { name, count } => commands::ping::run(&state, name, count),
        Command::Log { json } => commands::log::run(&state, json),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "pal", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout()).map_err(anyhow::Error::from),
        Command::Exit { command } => match command {
            ExitCommand::Use { name, allow_lan } => commands::exit::use_exit(&state, name, allow_lan),
            ExitCommand::Off => commands::exit::off(&state),
            ExitCommand::Renew => commands::exit::renew(&state),
            ExitCommand::Status { json } => commands::exit::status(&state, json),
        },
        Command::Dns { command } => match command {
            DnsCommand::On => commands::dns::set(&state, true),
            DnsCommand::Off => commands::dns::set(&state, false),
            DnsCommand::Status { json } => commands::dns::status(&state, json),
            DnsCommand::Log { json } => commands::dns::log(&state, json),
        },
        Command::Policy { command } => match command {
            PolicyCommand::Show { json } => commands::policy::show(&state, json),
            PolicyCommand::Set { mesh_only, allow, deny, clear_allow, clear_deny, logging, rotate_egress, exit_devices, block_list, clear_block_lists, dns_upstream, relay_rate } => {
                let change = node::control_api::PolicyChange {
                    mesh_only,
                    allow,
                    deny,
                    clear_allow,
                    clear_deny,
                    logging,
                    rotate_egress,
                    exit_devices,
                    block_lists: block_list,
                    clear_block_lists,
                    dns_upstreams: dns_upstream,
                    relay_rate,
                };
                commands::policy::set(&state, change)
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pal: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, Command, DEFAULT_STATE_DIR};
    use clap::Parser;

    const UNIT: &str = include_str!("../debian/cloudpal.service");

    fn directive<'a>(name: &str) -> Vec<&'a str> {
        UNIT.lines().filter_map(|line| line.strip_prefix(name)?.strip_prefix('=')).collect()
    }

    /// The packaged unit runs `pal up` as this binary parses it, in the default state
    /// directory, with the sandbox #16 asks for.
    #[test]
    fn the_systemd_unit_starts_pal_up_in_its_state_directory_and_sandboxes_it() {
        let exec = directive("ExecStart");
        assert_eq!(exec.len(), 1, "one ExecStart");
        let args: Vec<&str> = exec[0].split_whitespace().collect();
        assert_eq!(args[0], "/usr/bin/pal");
        let cli = Cli::try_parse_from(args.iter().map(|a| a.trim_start_matches("/usr/bin/"))).expect("the unit's command line parses");
        assert!(matches!(cli.command, Command::Up { .. }));
        assert_eq!(cli.state.to_str(), Some(DEFAULT_STATE_DIR));
        assert_eq!(directive("StateDirectory"), vec!["cloudpal"], "systemd makes {DEFAULT_STATE_DIR}");
        assert_eq!(directive("StateDirectoryMode"), vec!["0700"]);
        assert_eq!(directive("CapabilityBoundingSet"), vec!["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"]);
        for (name, value) in [("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"), ("DevicePolicy", "closed")] {
            assert_eq!(directive(name), vec![value], "{name}");
        }
        assert_eq!(directive("DeviceAllow"), vec!["/dev/net/tun rw"]);
        assert!(directive("KillSignal") == vec!["SIGTERM"], "a clean stop puts the host back");
    }
}
