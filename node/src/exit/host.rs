//! The exit's changes to the host, applied and undone: nftables tables (one transaction each,
//! through `nft`'s JSON interface), policy rules and routes (rtnetlink), and the forwarding
//! sysctls on CloudPal. Every change is written to a journal in the state directory *before*
//! it is made, so a node killed at any point leaves a record of what to undo; the next start
//! (or `pal exit off`) reads it and restores the host. Undoing is idempotent: what is already
//! gone is fine.

use super::{CLIENT_TABLE, ClientTunnel, EXIT_TABLE, ExitHost, ExitRules, PRIORITY_PORTS, PRIORITY_SUPPRESS, PRIORITY_TUNNEL, ROUTE_TABLE, ruleset};
use anyhow::{Context, Result, anyhow};
use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage, RulePortRange};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Sysctls the exit needs on CloudPal; their old values are journalled and put back.
const EXIT_SYSCTLS: &[&str] = &["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"];
/// The metric of the unreachable defaults in pal's table: below them, nothing; so a missing
/// overlay interface (deleted by hand) means "unreachable", never the LAN's default route.
const UNREACHABLE_METRIC: u32 = 4_000_000_000;

/// What pal has changed on this host, as written down before each change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The client's rules, routes and kill switch may be in place.
    pub client: bool,
    /// The exit's table may be in place.
    pub exit: bool,
    /// Sysctls pal set, with the values they had before.
    pub sysctls: Vec<(String, String)>,
    /// The system resolver points at CloudPal: resolv.conf's text before (or, with
    /// systemd-resolved, the interface whose DNS settings pal set).
    #[serde(default)]
    pub resolv_conf: Option<String>,
    #[serde(default)]
    pub resolved_link: Option<String>,
}

/// The host side of the exit: a netlink handle and the journal's path.
#[derive(Debug)]
pub struct Host {
    netlink: Handle,
    journal_path: PathBuf,
    journal: Journal,
}

impl Host {
    /// Opens netlink and restores whatever an earlier run left behind (a crash).
    pub async fn open(state_root: &Path) -> Result<Self> {
        let (connection, netlink, _) = rtnetlink::new_connection().context("cannot open netlink")?;
        tokio::spawn(connection);
        let journal_path = state_root.join("host-changes.json");
        let journal = match std::fs::read(&journal_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Journal { client: true, exit: true, ..Journal::default() }),
            Err(_) => Journal::default(),
        };
        let mut host = Self { netlink, journal_path, journal };
        if host.journal != Journal::default() {
            tracing::info!("restoring the host after an unclean stop");
            host.restore().await?;
        }
        Ok(host)
    }

    /// Whether the client's tunnel is in place.
    pub fn client_active(&self) -> bool {
        self.journal.client
    }

    fn save(&self) -> Result<()> {
        if self.journal == Journal::default() {
            return crate::statedir::remove_if_present(&self.journal_path);
        }
        let temporary = self.journal_path.with_extension("tmp");
        std::fs::write(&temporary, serde_json::to_vec(&self.journal)?)?;
        std::fs::rename(&temporary, &self.journal_path)?;
        Ok(())
    }

    /// Undoes everything the journal names.
    pub async fn restore(&mut self) -> Result<()> {
        let mut result = Ok(());
        if self.journal.client {
            result = result.and(self.remove_client().await);
        }
        if self.journal.exit {
            result = result.and(self.remove_exit());
        }
        result.and(self.restore_dns())
    }

    /// Points the system resolver at `server` (CloudPal's resolver over the overlay) on the
    /// overlay interface `tun`; the old settings go to the journal first.
    pub fn point_dns(&mut self, tun: &str, server: std::net::Ipv4Addr, fallback: bool) -> Result<()> {
        use crate::dns::system;
        if system::uses_resolved() {
            self.journal.resolved_link = Some(tun.to_owned());
            self.save()?;
            system::resolvectl(&["dns", tun, &server.to_string()])?;
            // `~.`: every query goes to CloudPal (resolved keeps the other links' servers for
            // when it is unreachable, which is what `fallback` asks for).
            let _ = fallback;
            return system::resolvectl(&["domain", tun, "~.", crate::dns::resolver::ZONE]);
        }
        let path = Path::new(system::RESOLV_CONF);
        let current = std::fs::read_to_string(path).context("cannot read /etc/resolv.conf")?;
        if self.journal.resolv_conf.is_none() && !current.starts_with(system::MARKER) {
            self.journal.resolv_conf = Some(current.clone());
            self.save()?;
        }
        let original = self.journal.resolv_conf.clone().unwrap_or_default();
        system::write_in_place(path, &system::pointed(&original, server, fallback)).context("cannot point /etc/resolv.conf at CloudPal")
    }

    /// Puts the system resolver back as it was.
    pub fn restore_dns(&mut self) -> Result<()> {
        use crate::dns::system;
        if let Some(link) = self.journal.resolved_link.take()
            && let Err(error) = system::resolvectl(&["revert", &link])
        {
            tracing::warn!("{error:#}");
        }
        if let Some(original) = self.journal.resolv_conf.take() {
            system::write_in_place(Path::new(system::RESOLV_CONF), &original).context("cannot restore /etc/resolv.conf")?;
        }
        self.save()
    }

    /// Adds addresses the resolver found for a firewall domain rule to the exit's sets, for
    /// as long as their TTL.
    pub fn add_rule_addresses(&self, list: &str, addresses: &[std::net::IpAddr], ttl: std::time::Duration) -> Result<()> {
        if !self.journal.exit {
            return Ok(());
        }
        apply_nft(&ruleset::rule_addresses(list, addresses, ttl)).context("cannot add resolved addresses to the exit's sets")
    }

    /// The full tunnel: kill switch first (so there is no moment without it), then the
    /// routes into the overlay, then the rules that send traffic to them.
    pub async fn apply_client(&mut self, tunnel: &ClientTunnel) -> Result<()> {
        self.journal.client = true;
        self.save()?;
        apply_nft(&ruleset::client(tunnel)).context("cannot install the exit's kill switch (nftables)")?;
        self.remove_routing().await?;
        let index = self.link_index(&tunnel.tun).await?;
        let routes = [
            RouteMessageBuilder::<Ipv4Addr>::new().table_id(ROUTE_TABLE).output_interface(index).build(),
            RouteMessageBuilder::<Ipv6Addr>::new().table_id(ROUTE_TABLE).output_interface(index).build(),
            RouteMessageBuilder::<Ipv4Addr>::new().table_id(ROUTE_TABLE).kind(RouteType::Unreachable).priority(UNREACHABLE_METRIC).build(),
            RouteMessageBuilder::<Ipv6Addr>::new().table_id(ROUTE_TABLE).kind(RouteType::Unreachable).priority(UNREACHABLE_METRIC).build(),
        ];
        for route in routes {
            self.netlink.route().add(route).execute().await.context("cannot add the exit's routes")?;
        }
        let ports = RulePortRange { start: tunnel.data_port, end: tunnel.data_port };
        let from_ours = |m: &mut RuleMessage| m.attributes.push(RuleAttribute::SourcePortRange(ports));
        // Control connections to members' listeners (at the same port by default), whatever
        // port they left from.
        let to_members = |m: &mut RuleMessage| {
            m.attributes.push(RuleAttribute::IpProtocol(netlink_packet_route::IpProtocol::Tcp));
            m.attributes.push(RuleAttribute::DestinationPortRange(RulePortRange { start: tunnel.data_port, end: tunnel.data_port }));
        };
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let rules = [
                rule(family, PRIORITY_PORTS, MAIN_TABLE, from_ours),
                rule(family, PRIORITY_PORTS, MAIN_TABLE, to_members),
                // pal's own traffic that the main table has no route for (an IPv6 member
                // address on a v4-only network) fails at once: it must not fall through into
                // the tunnel it carries, where a dial would hang until its timeout.
                unreachable(family, PRIORITY_PORTS, from_ours),
                unreachable(family, PRIORITY_PORTS, to_members),
                rule(family, PRIORITY_SUPPRESS, MAIN_TABLE, |m| m.attributes.push(RuleAttribute::SuppressPrefixLen(0))),
                rule(family, PRIORITY_TUNNEL, ROUTE_TABLE, |m| {
                    m.attributes.push(RuleAttribute::FwMark(super::FWMARK));
                    m.header.flags |= RuleFlags::Invert;
                }),
            ];
            for message in rules {
                let mut request = self.netlink.rule().add();
                *request.message_mut() = message;
                request.execute().await.context("cannot add the exit's policy rules")?;
            }
        }
        Ok(())
    }

    /// Takes the client's tunnel out: rules, routes, kill switch, in that order (the resolver
    /// follows the core's own word, `ClientDns`).
    pub async fn remove_client(&mut self) -> Result<()> {
        self.remove_routing().await?;
        apply_nft(&ruleset::remove(CLIENT_TABLE)).context("cannot remove the exit's kill switch")?;
        self.journal.client = false;
        self.save()
    }

    /// CloudPal's exit table, replaced as one transaction; forwarding switched on first time.
    pub fn apply_exit(&mut self, host: &ExitHost, rules: &ExitRules) -> Result<()> {
        if !self.journal.exit {
            self.journal.exit = true;
            for key in EXIT_SYSCTLS {
                if let Ok(old) = read_sysctl(key) {
                    self.journal.sysctls.push(((*key).to_owned(), old));
                }
            }
            self.save()?;
            for key in EXIT_SYSCTLS {
                write_sysctl(key, "1").with_context(|| format!("cannot switch on forwarding ({key})"))?;
            }
        }
        // What the host forwarded before pal: its own routing is left alone, nothing else.
        let was_on = |key: &str| self.journal.sysctls.iter().any(|(k, old)| k == key && old.trim() != "0");
        let forwarding = ruleset::HostForwarding { ipv4: was_on(EXIT_SYSCTLS[0]), ipv6: was_on(EXIT_SYSCTLS[1]) };
        apply_nft(&ruleset::exit(host, rules, forwarding)).context("cannot install the exit's table (nftables)")
    }

    /// Takes the exit table out and puts the sysctls back.
    pub fn remove_exit(&mut self) -> Result<()> {
        apply_nft(&ruleset::remove(EXIT_TABLE)).context("cannot remove the exit's table")?;
        for (key, old) in std::mem::take(&mut self.journal.sysctls) {
            if let Err(error) = write_sysctl(&key, &old) {
                tracing::warn!(%error, "cannot restore a sysctl");
            }
        }
        self.journal.exit = false;
        self.save()
    }

    async fn link_index(&self, name: &str) -> Result<u32> {
        let mut links = self.netlink.link().get().match_name(name.to_owned()).execute();
        let link = links.try_next().await.ok().flatten().ok_or_else(|| anyhow!("the overlay interface {name} is missing"))?;
        Ok(link.header.index)
    }

    /// Deletes pal's policy rules (by priority) and every route in pal's table.
    async fn remove_routing(&self) -> Result<()> {
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = self.netlink.rule().get(version.clone()).execute().try_collect().await.context("cannot list policy rules")?;
            for message in rules {
                let ours = message.attributes.iter().any(|a| matches!(a, RuleAttribute::Priority(p) if [PRIORITY_PORTS, PRIORITY_SUPPRESS, PRIORITY_TUNNEL].contains(p)));
                if ours {
                    ignore_missing(self.netlink.rule().del(message).execute().await).context("cannot delete a policy rule")?;
                }
            }
        }
        for dump in [RouteMessageBuilder::<Ipv4Addr>::new().table_id(ROUTE_TABLE).build(), RouteMessageBuilder::<Ipv6Addr>::new().table_id(ROUTE_TABLE).build()] {
            let routes: Vec<RouteMessage> = self.netlink.route().get(dump).execute().try_collect().await.context("cannot list routes")?;
            for route in routes.into_iter().filter(|r| route_table(r) == ROUTE_TABLE) {
                ignore_missing(self.netlink.route().del(route).execute().await).context("cannot delete a route")?;
            }
        }
        Ok(())
    }
}

const MAIN_TABLE: u32 = netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN as u32;

fn rule(family: AddressFamily, priority: u32, table: u32, extra: impl FnOnce(&mut RuleMessage)) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = family;
    message.header.action = RuleAction::ToTable;
    if table > 255 {
        message.header.table = 0;
        message.attributes.push(RuleAttribute::Table(table));
    } else {
        message.header.table = table as u8;
    }
    message.attributes.push(RuleAttribute::Priority(priority));
    extra(&mut message);
    message
}

/// A rule that answers "network unreachable" (rules of one priority apply in the order added).
fn unreachable(family: AddressFamily, priority: u32, extra: impl FnOnce(&mut RuleMessage)) -> RuleMessage {
    let mut message = rule(family, priority, 0, extra);
    message.header.action = RuleAction::Unreachable;
    message
}

fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// "No such rule/route" (ENOENT, ESRCH) while undoing is what undoing wants.
fn ignore_missing(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code().abs() == libc::ENOENT || message.raw_code().abs() == libc::ESRCH => Ok(()),
        other => other,
    }
}

fn apply_nft(ruleset: &nftables::schema::Nftables<'_>) -> Result<()> {
    nftables::helper::apply_ruleset(ruleset).map_err(|error| match error {
        nftables::helper::NftablesError::NftExecution { .. } => anyhow!("cannot run nft: install nftables (apt install nftables)"),
        nftables::helper::NftablesError::NftFailed { stderr, .. } => anyhow!("nft refused the ruleset: {}", stderr.trim()),
        other => anyhow!("{other}"),
    })
}

fn read_sysctl(key: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(Path::new("/proc/sys").join(key))?.trim().to_owned())
}

fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}
