//! nftables rulesets, rendered with the `nftables` crate's typed JSON schema: the client's kill
//! switch and CloudPal's exit. Each is one pal-owned `inet` table replaced as one transaction
//! (add, delete, add again: the kernel swaps it atomically), so the host's own tables are never
//! touched and no moment exists with half a ruleset. Rendering is pure; golden tests pin it.

use super::{CLIENT_TABLE, ClientTunnel, EXIT_TABLE, ExitHost, ExitRules, FWMARK};
use membership::IpNet;
use nftables::batch::Batch;
use nftables::expr::{CT, Expression, Map, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, RT, RTKey, SetItem, TcpOption};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Set, SetType, SetTypeValue, Table};
use nftables::stmt::{Log, Mangle, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::net::IpAddr;

/// Destinations a client may reach outside the tunnel with `--allow-lan` (RFC 1918, link
/// local, multicast and broadcast; IPv6 link-local, ULA and multicast).
const LAN_V4: &[(&str, u32)] = &[("10.0.0.0", 8), ("172.16.0.0", 12), ("192.168.0.0", 16), ("169.254.0.0", 16), ("224.0.0.0", 4), ("255.255.255.255", 32)];
const LAN_V6: &[(&str, u32)] = &[("fe80::", 10), ("fc00::", 7), ("ff00::", 8)];

/// The kill switch of a client on the exit: nothing leaves except through the tunnel, pal's
/// own underlay traffic, DHCP and neighbour discovery (and the LAN with `--allow-lan`); DNS
/// never leaves outside the tunnel, LAN or not. Packets for the overlay addresses that arrive
/// on another interface are dropped (CVE-2019-14899, TunnelVision).
pub fn client(tunnel: &ClientTunnel) -> Nftables<'static> {
    let t = TableRef { name: CLIENT_TABLE };
    let mut batch = t.replace();
    batch.add(t.base_chain("output", NfChainType::Filter, NfHook::Output, 0));
    let tun = || s(tunnel.tun.clone());
    let data = u32::from(tunnel.data_port);
    let mut output = vec![
        vec![is(meta(MetaKey::Oifname), s("lo")), accept()],
        vec![is(meta(MetaKey::Oifname), tun()), accept()],
        vec![is(meta(MetaKey::Mark), Expression::Number(FWMARK)), accept()],
        vec![is(field("udp", "sport"), Expression::Number(data)), accept()],
        vec![is(field("tcp", "sport"), Expression::Number(data)), accept()],
        // pal's control connections to members' listeners (the same port by default) from
        // whatever port libp2p dialled from.
        vec![is(field("tcp", "dport"), Expression::Number(data)), accept()],
        vec![is(field("udp", "dport"), Expression::Number(53)), drop()],
        vec![is(field("tcp", "dport"), Expression::Number(53)), drop()],
        vec![is(field("tcp", "dport"), Expression::Number(853)), drop()],
    ];
    if tunnel.allow_lan {
        output.push(vec![is(field("ip", "daddr"), prefixes(LAN_V4)), accept()]);
        output.push(vec![is(field("ip6", "daddr"), prefixes(LAN_V6)), accept()]);
    }
    output.extend([
        vec![is(field("udp", "sport"), Expression::Number(68)), is(field("udp", "dport"), Expression::Number(67)), accept()],
        vec![is(field("udp", "sport"), Expression::Number(546)), is(field("udp", "dport"), Expression::Number(547)), accept()],
        vec![is(field("icmpv6", "type"), set(["nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert"].map(s))), accept()],
        vec![counter(), drop()],
    ]);
    for rule in output {
        batch.add(t.rule("output", rule));
    }
    batch.add(t.base_chain("input", NfChainType::Filter, NfHook::Input, 0));
    for (family, address) in [("ip", IpAddr::V4(tunnel.overlay_ipv4)), ("ip6", IpAddr::V6(tunnel.overlay_ipv6))] {
        let rule = vec![not(meta(MetaKey::Iifname), s("lo")), not(meta(MetaKey::Iifname), tun()), is(field(family, "daddr"), s(address.to_string())), drop()];
        batch.add(t.rule("input", rule));
    }
    batch.to_nftables()
}

/// Which families this host forwarded before pal switched forwarding on for the exit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostForwarding {
    pub ipv4: bool,
    pub ipv6: bool,
}

/// CloudPal's exit: members' overlay sources (those the policy lets use it) to the internet,
/// under the firewall policy; nothing unsolicited from the internet into the overlay;
/// masquerade (or each device's egress address); MSS clamped to the route's MTU. Forwarding
/// that is not the exit's is dropped in each family the host did not forward before (pal
/// switching forwarding on must not make CloudPal a router for its neighbours: EXIT-03).
pub fn exit(host: &ExitHost, rules: &ExitRules, forwarding: HostForwarding) -> Nftables<'static> {
    let t = TableRef { name: EXIT_TABLE };
    let mut batch = t.replace();
    for name in EXIT_COUNTERS {
        batch.add(t.counter(name));
    }
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = rules.sources.iter().partition(|a| a.is_ipv4());
    batch.add(t.address_set("sources4", SetType::Ipv4Addr, &v4));
    batch.add(t.address_set("sources6", SetType::Ipv6Addr, &v6));
    for (wanted, v4, v6) in [(rules.deny_domains, "deny_names4", "deny_names6"), (rules.allow_domains, "allow_names4", "allow_names6")] {
        if wanted {
            batch.add(t.timeout_set(v4, SetType::Ipv4Addr));
            batch.add(t.timeout_set(v6, SetType::Ipv6Addr));
        }
    }
    batch.add(t.base_chain("forward", NfChainType::Filter, NfHook::Forward, 0));
    let from_tun = || is(meta(MetaKey::Iifname), s(host.tun.clone()));
    let to_tun = || is(meta(MetaKey::Oifname), s(host.tun.clone()));
    let mss = || Statement::Mangle(Mangle { key: named(NamedExpression::TcpOption(TcpOption { name: "maxseg".into(), field: Some("size".into()) })), value: named(NamedExpression::RT(RT { key: RTKey::MTU, family: None })) });
    let syn = || Statement::Match(Match { left: field("tcp", "flags"), right: s("syn"), op: Operator::IN });
    let mut forward = vec![
        vec![from_tun(), syn(), mss()],
        vec![to_tun(), syn(), mss()],
        vec![from_tun(), to_tun(), accept()],
        vec![to_tun(), is(ct("state"), set(["established", "related"].map(s))), named_counter(IN), accept()],
        vec![to_tun(), named_counter(UNSOLICITED), drop()],
    ];
    if rules.mesh_only {
        forward.push(vec![from_tun(), named_counter(MESH_ONLY), drop()]);
    }
    forward.push(vec![from_tun(), is(meta(MetaKey::Nfproto), s("ipv4")), not(field("ip", "saddr"), s("@sources4")), named_counter(NOT_ALLOWED_DEVICE), drop()]);
    forward.push(vec![from_tun(), is(meta(MetaKey::Nfproto), s("ipv6")), not(field("ip6", "saddr"), s("@sources6")), named_counter(NOT_ALLOWED_DEVICE), drop()]);
    // With egress rotation, a flow that left from another address than its device's current
    // one belongs to an old session: cut it (a renew must not leave old flows alive; the
    // conntrack entry then times out unused, and no entry is listed or logged anywhere).
    for (source, egress) in &rules.egress {
        let family = if source.is_ipv4() { "ip" } else { "ip6" };
        let reply = named(NamedExpression::CT(CT { key: "daddr".into(), family: Some(ct_family(source)), dir: Some(nftables::expr::CTDir::Reply) }));
        // (`ct status snat`: translated already, so not a flow's first packet, whose reply
        // tuple still names the device itself.)
        forward.push(vec![
            from_tun(),
            is(field(family, "saddr"), s(source.to_string())),
            Statement::Match(Match { left: ct("status"), right: s("snat"), op: Operator::IN }),
            not(reply, s(egress.to_string())),
            drop(),
        ]);
    }
    for (family, nets) in split(&rules.deny) {
        forward.push(vec![from_tun(), is(field(family, "daddr"), nets), named_counter(DENIED), drop()]);
    }
    if rules.deny_domains {
        forward.push(vec![from_tun(), is(field("ip", "daddr"), s("@deny_names4")), named_counter(DENIED), drop()]);
        forward.push(vec![from_tun(), is(field("ip6", "daddr"), s("@deny_names6")), named_counter(DENIED), drop()]);
    }
    if rules.logging {
        forward.push(vec![from_tun(), is(ct("state"), s("new")), Statement::Log(Some(Log { prefix: Some("pal-exit: ".into()), ..Log::new(None) }))]);
    }
    if !rules.allow.is_empty() || rules.allow_domains {
        for (family, nets) in split(&rules.allow) {
            forward.push(vec![from_tun(), is(field(family, "daddr"), nets), named_counter(OUT), accept()]);
        }
        if rules.allow_domains {
            forward.push(vec![from_tun(), is(field("ip", "daddr"), s("@allow_names4")), named_counter(OUT), accept()]);
            forward.push(vec![from_tun(), is(field("ip6", "daddr"), s("@allow_names6")), named_counter(OUT), accept()]);
        }
        forward.push(vec![from_tun(), named_counter(NOT_ALLOWED_DESTINATION), drop()]);
    }
    forward.push(vec![from_tun(), named_counter(OUT), accept()]);
    for (forwarded, family) in [(forwarding.ipv4, "ipv4"), (forwarding.ipv6, "ipv6")] {
        if !forwarded {
            forward.push(vec![is(meta(MetaKey::Nfproto), s(family)), counter(), drop()]);
        }
    }
    for rule in forward {
        batch.add(t.rule("forward", rule));
    }

    batch.add(t.base_chain("postrouting", NfChainType::NAT, NfHook::Postrouting, 100));
    let leaving = || not(meta(MetaKey::Oifname), s(host.tun.clone()));
    let (egress4, egress6): (Vec<_>, Vec<_>) = rules.egress.iter().partition(|(source, _)| source.is_ipv4());
    for (family, nat_family, egress) in [("ip", NATFamily::IP, egress4), ("ip6", NATFamily::IP6, egress6)] {
        if egress.is_empty() {
            continue;
        }
        let map = NamedExpression::Map(Box::new(Map {
            key: field(family, "saddr"),
            data: named(NamedExpression::Set(egress.iter().map(|(source, to)| SetItem::Mapping(s(source.to_string()), s(to.to_string()))).collect())),
        }));
        let snat = Statement::SNAT(Some(NAT { addr: Some(named(map)), family: Some(nat_family), port: None, flags: None }));
        batch.add(t.rule("postrouting", vec![leaving(), snat]));
    }
    batch.add(t.rule("postrouting", vec![leaving(), is(field("ip", "saddr"), s("@sources4")), Statement::Masquerade(None)]));
    batch.add(t.rule("postrouting", vec![leaving(), is(field("ip6", "saddr"), s("@sources6")), Statement::Masquerade(None)]));
    batch.to_nftables()
}

/// Adds the addresses the resolver handed out for a domain rule of `list` ("allow" or
/// "deny") to the exit's sets of that list, by family, each element living `ttl`.
pub fn rule_addresses(list: &str, addresses: &[IpAddr], ttl: std::time::Duration) -> Nftables<'static> {
    let mut batch = Batch::new();
    let seconds = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX).max(1);
    for v4 in [true, false] {
        let elements: Vec<Expression<'static>> = addresses
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(|a| named(NamedExpression::Elem(nftables::expr::Elem { val: Box::new(s(a.to_string())), timeout: Some(seconds), expires: None, comment: None, counter: None })))
            .collect();
        if elements.is_empty() {
            continue;
        }
        let name = match (list, v4) {
            ("deny", true) => "deny_names4",
            ("deny", false) => "deny_names6",
            (_, true) => "allow_names4",
            (_, false) => "allow_names6",
        };
        batch.add(NfListObject::Element(nftables::schema::Element { family: NfFamily::INet, table: EXIT_TABLE.into(), name: name.into(), elem: Cow::Owned(elements) }));
    }
    batch.to_nftables()
}

/// Deletes a pal table (and nothing else): `add` first makes the delete succeed whether or
/// not the table is there.
pub fn remove(table: &'static str) -> Nftables<'static> {
    let t = TableRef { name: table };
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(t.table()));
    batch.delete(NfListObject::Table(t.table()));
    batch.to_nftables()
}

struct TableRef {
    name: &'static str,
}

impl TableRef {
    fn table(&self) -> Table<'static> {
        Table { family: NfFamily::INet, name: self.name.into(), handle: None }
    }

    /// A batch that replaces the table atomically: whatever follows is the whole new table.
    fn replace(&self) -> Batch<'static> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(self.table()));
        batch.delete(NfListObject::Table(self.table()));
        batch.add(NfListObject::Table(self.table()));
        batch
    }

    fn base_chain(&self, name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> NfListObject<'static> {
        NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: self.name.into(),
            name: name.into(),
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        })
    }

    fn rule(&self, chain: &'static str, statements: Vec<Statement<'static>>) -> NfListObject<'static> {
        NfListObject::Rule(Rule { family: NfFamily::INet, table: self.name.into(), chain: chain.into(), expr: Cow::Owned(statements), ..Rule::default() })
    }

    fn timeout_set(&self, name: &'static str, kind: SetType) -> NfListObject<'static> {
        NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: self.name.into(),
            name: name.into(),
            set_type: SetTypeValue::Single(kind),
            flags: Some(std::collections::HashSet::from([nftables::schema::SetFlag::Timeout])),
            ..Set::default()
        }))
    }

    fn counter(&self, name: &'static str) -> NfListObject<'static> {
        NfListObject::Counter(nftables::schema::Counter { family: NfFamily::INet, table: self.name.into(), name: name.into(), handle: None, packets: None, bytes: None })
    }

    fn address_set(&self, name: &'static str, kind: SetType, addresses: &[IpAddr]) -> NfListObject<'static> {
        let elements: Vec<Expression<'static>> = addresses.iter().map(|a| s(a.to_string())).collect();
        NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: self.name.into(),
            name: name.into(),
            set_type: SetTypeValue::Single(kind),
            elem: (!elements.is_empty()).then_some(Cow::Owned(elements)),
            ..Set::default()
        }))
    }
}

fn s(text: impl Into<Cow<'static, str>>) -> Expression<'static> {
    Expression::String(text.into())
}

fn named(expression: NamedExpression<'static>) -> Expression<'static> {
    Expression::Named(expression)
}

fn meta(key: MetaKey) -> Expression<'static> {
    named(NamedExpression::Meta(Meta { key }))
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    named(NamedExpression::Payload(Payload::PayloadField(PayloadField { protocol: protocol.into(), field: name.into() })))
}

fn ct(key: &'static str) -> Expression<'static> {
    named(NamedExpression::CT(CT { key: key.into(), family: None, dir: None }))
}

fn ct_family(address: &IpAddr) -> nftables::expr::CTFamily {
    if address.is_ipv4() { nftables::expr::CTFamily::IP } else { nftables::expr::CTFamily::IP6 }
}

fn set<const N: usize>(items: [Expression<'static>; N]) -> Expression<'static> {
    named(NamedExpression::Set(items.into_iter().map(SetItem::Element).collect()))
}

fn prefix(address: String, len: u32) -> SetItem<'static> {
    SetItem::Element(named(NamedExpression::Prefix(Prefix { addr: Box::new(s(address)), len })))
}

fn prefixes(list: &[(&str, u32)]) -> Expression<'static> {
    named(NamedExpression::Set(list.iter().map(|(address, len)| prefix((*address).to_owned(), *len)).collect()))
}

/// Networks by family, as anonymous interval sets (`ip` and `ip6`), skipping empty ones.
fn split(nets: &[IpNet]) -> Vec<(&'static str, Expression<'static>)> {
    let mut out = Vec::new();
    for (family, v4) in [("ip", true), ("ip6", false)] {
        let items: Vec<SetItem<'static>> = nets.iter().filter(|n| n.address.is_ipv4() == v4).map(|n| prefix(n.address.to_string(), u32::from(n.len))).collect();
        if !items.is_empty() {
            out.push((family, named(NamedExpression::Set(items))));
        }
    }
    out
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::EQ })
}

fn not(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::NEQ })
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

fn counter() -> Statement<'static> {
    Statement::Counter(nftables::stmt::Counter::Anonymous(None))
}

fn named_counter(name: &'static str) -> Statement<'static> {
    Statement::Counter(nftables::stmt::Counter::Named(name.into()))
}

/// The exit's named counters (`nft list counters table inet pal_exit`), read for the metrics:
/// what members sent to the internet and what came back, and what the exit refused and why.
/// Counts only: nftables keeps no address with them.
pub const OUT: &str = "exit_out";
pub const IN: &str = "exit_in";
pub const UNSOLICITED: &str = "exit_unsolicited";
pub const MESH_ONLY: &str = "exit_mesh_only";
pub const NOT_ALLOWED_DEVICE: &str = "exit_device_not_allowed";
pub const DENIED: &str = "exit_denied";
pub const NOT_ALLOWED_DESTINATION: &str = "exit_not_allowed";
pub const EXIT_COUNTERS: [&str; 7] = [OUT, IN, UNSOLICITED, MESH_ONLY, NOT_ALLOWED_DEVICE, DENIED, NOT_ALLOWED_DESTINATION];

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn golden(name: &str, ruleset: &Nftables<'static>) {
        let rendered = serde_json::to_string_pretty(ruleset).expect("serialises");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/exit/golden").join(format!("{name}.json"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &rendered).expect("write golden");
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("no golden file {}; run with UPDATE_GOLDEN=1", path.display()));
        assert_eq!(rendered, expected, "{name} drifted from its golden file (UPDATE_GOLDEN=1 after checking the change)");
    }

    fn tunnel(allow_lan: bool) -> ClientTunnel {
        ClientTunnel { tun: "pal0".into(), overlay_ipv4: Ipv4Addr::new(100, 64, 0, 2), overlay_ipv6: "fd7a:1::2".parse().expect("v6"), data_port: 41641, allow_lan }
    }

    fn host() -> ExitHost {
        ExitHost { tun: "pal0".into(), overlay_ipv4: Ipv4Addr::new(100, 64, 0, 1), overlay_ipv6: Ipv6Addr::LOCALHOST }
    }

    fn net(text: &str) -> IpNet {
        match text.parse::<membership::Rule>().expect("rule") {
            membership::Rule::Net(net) => net,
            membership::Rule::Domain(_) => panic!("not a network"),
        }
    }

    #[test]
    fn the_kill_switch_renders_as_its_golden_file() {
        golden("client", &client(&tunnel(false)));
        golden("client-allow-lan", &client(&tunnel(true)));
    }

    #[test]
    fn lan_access_is_only_in_the_allow_lan_ruleset_and_dns_is_dropped_before_it() {
        let text = |allow| serde_json::to_string(&client(&tunnel(allow))).expect("json");
        assert!(!text(false).contains("192.168.0.0"));
        let with_lan = text(true);
        let dns = with_lan.find("\"right\":53").expect("a DNS drop");
        let lan = with_lan.find("192.168.0.0").expect("a LAN accept");
        assert!(dns < lan, "port 53 must be dropped before the LAN is allowed");
    }

    #[test]
    fn the_exit_renders_as_its_golden_file() {
        let mut rules = ExitRules { sources: vec!["100.64.0.2".parse().expect("v4"), "fd7a:1::2".parse().expect("v6")], ..ExitRules::default() };
        golden("exit-default", &exit(&host(), &rules, HostForwarding::default()));
        // A host that routed IPv4 before keeps routing it: no drop for others' IPv4.
        let router = serde_json::to_string(&exit(&host(), &rules, HostForwarding { ipv4: true, ipv6: false })).expect("json");
        let default = serde_json::to_string(&exit(&host(), &rules, HostForwarding::default())).expect("json");
        assert_eq!(default.matches("\"drop\"").count(), router.matches("\"drop\"").count() + 1);
        rules.deny = vec![net("192.0.2.0/24"), net("2001:db8::/32")];
        rules.allow = vec![net("198.51.100.0/24")];
        rules.egress = vec![("100.64.0.2".parse().expect("v4"), "203.0.113.200".parse().expect("v4"))];
        rules.logging = true;
        rules.deny_domains = true;
        rules.allow_domains = true;
        golden("exit-policy", &exit(&host(), &rules, HostForwarding::default()));
        golden("rule-addresses", &rule_addresses("deny", &["192.0.2.7".parse().expect("v4")], std::time::Duration::from_secs(120)));
        rules.mesh_only = true;
        let text = serde_json::to_string(&exit(&host(), &rules, HostForwarding::default())).expect("json");
        assert!(text.matches("\"drop\"").count() > 4);
    }

    #[test]
    fn nothing_is_logged_unless_the_policy_says() {
        let rules = ExitRules { sources: vec!["100.64.0.2".parse().expect("v4")], ..ExitRules::default() };
        assert!(!serde_json::to_string(&exit(&host(), &rules, HostForwarding::default())).expect("json").contains("\"log\""));
        let logging = ExitRules { logging: true, ..rules };
        assert!(serde_json::to_string(&exit(&host(), &logging, HostForwarding::default())).expect("json").contains("\"log\""));
    }
}
