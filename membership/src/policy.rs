//! The network policy record that `SetPolicy` replicates: exit, firewall and DNS settings.
//! Firewall rules are typed ([`Rule`]): parsed and checked when an admin sets them, carried in
//! their canonical text form, and parsed again (strictly) when an entry is decoded, so a node
//! never enforces a rule it could not read.

use crate::cbor::{CborError, Reader, Writer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Items in any one policy list (allow/deny rules, exit devices, block lists, upstreams).
pub const MAX_POLICY_ITEMS: usize = 64;
/// Bytes in one policy item: a DNS name is at most 253 characters.
pub const MAX_POLICY_ITEM_LEN: usize = 253;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub exit: ExitPolicy,
    pub firewall: FirewallPolicy,
    pub dns: DnsPolicy,
    pub relay: RelayPolicy,
}

/// CloudPal's relay for members with no direct path to each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayPolicy {
    /// The relay's whole rate, shared fairly among the members using it.
    pub rate: RelayRate,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RelayRate {
    /// The node's built-in default.
    #[default]
    Default,
    /// At most this many Mbit/s in all (never 0).
    Mbit(u32),
    /// No cap: CloudPal's link and CPU are the limit.
    Unlimited,
}

/// Personal VPN exit through CloudPal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitPolicy {
    /// Off by default: CloudPal logs nothing about destinations unless the owner says so.
    pub logging: bool,
    /// Each exit session leaves from a random address of CloudPal's egress pool.
    pub rotate_egress: bool,
    /// Which devices may send internet traffic through CloudPal.
    pub devices: ExitDevices,
}

/// Who may use the exit: every member (the default: that is the personal VPN), or the
/// devices named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ExitDevices {
    #[default]
    All,
    Only(Vec<String>),
}

impl ExitDevices {
    pub fn allows(&self, name: &str) -> bool {
        match self {
            ExitDevices::All => true,
            ExitDevices::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallPolicy {
    /// No internet through CloudPal; the mesh only.
    pub mesh_only: bool,
    /// When not empty, internet traffic through CloudPal may go only to these.
    pub allow: Vec<Rule>,
    /// Never through CloudPal (checked before the allow list).
    pub deny: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsPolicy {
    pub blocklists: Vec<String>,
    pub upstreams: Vec<String>,
}

/// A firewall rule: a network (an address is a /32 or /128) or a domain, which covers its
/// subdomains.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    Net(IpNet),
    Domain(String),
}

/// An IP network with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    pub address: IpAddr,
    pub len: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(u32::from(ip), self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(u128::from(ip), self.len) == u128::from(net),
            _ => false,
        }
    }
}

fn mask_v4(bits: u32, len: u8) -> u32 {
    if len == 0 { 0 } else { bits & (u32::MAX << (32 - u32::from(len))) }
}

fn mask_v6(bits: u128, len: u8) -> u128 {
    if len == 0 { 0 } else { bits & (u128::MAX << (128 - u32::from(len))) }
}

/// Why a rule was refused: the whole message is the one line the user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuleParseError(String);

impl FromStr for Rule {
    type Err = RuleParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let refuse = |why: &str| Err(RuleParseError(format!("bad rule {text:?}: {why}")));
        if text.is_empty() {
            return refuse("empty; give a CIDR (192.0.2.0/24), an address or a domain (example.com)");
        }
        if let Some((address, len)) = text.split_once('/') {
            let Ok(address) = address.parse::<IpAddr>() else {
                return refuse("not a CIDR; write it as 192.0.2.0/24 or 2001:db8::/32");
            };
            let max = if address.is_ipv4() { 32 } else { 128 };
            let Some(len) = len.parse::<u8>().ok().filter(|l| *l <= max) else {
                return refuse(&format!("the prefix length must be 0 to {max}"));
            };
            let masked = match address {
                IpAddr::V4(a) => IpAddr::from(mask_v4(u32::from(a), len).to_be_bytes()),
                IpAddr::V6(a) => IpAddr::from(mask_v6(u128::from(a), len).to_be_bytes()),
            };
            if masked != address {
                return refuse(&format!("host bits are set; did you mean {masked}/{len}?"));
            }
            return Ok(Rule::Net(IpNet { address, len }));
        }
        if let Ok(address) = text.parse::<IpAddr>() {
            return Ok(Rule::Net(IpNet { address, len: if address.is_ipv4() { 32 } else { 128 } }));
        }
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        if name.len() > MAX_POLICY_ITEM_LEN {
            return refuse("a domain is at most 253 characters");
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 {
            return refuse("a domain needs a dot (example.com); for one address give the address");
        }
        let label_ok = |l: &&str| {
            !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !labels.iter().all(label_ok) {
            return refuse("not a CIDR, an address or a domain name");
        }
        if labels.last().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
            return refuse("not an address (a domain's last label is not a number)");
        }
        Ok(Rule::Domain(name))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Net(net) => write!(f, "{}/{}", net.address, net.len),
            Rule::Domain(name) => f.write_str(name),
        }
    }
}

/// Whether `name` is `domain` or one of its subdomains (any case; `name` may end in a dot).
pub fn name_within(name: &str, domain: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() >= domain.len() && {
        let (head, tail) = name.split_at(name.len() - domain.len());
        tail.eq_ignore_ascii_case(domain) && (head.is_empty() || head.ends_with('.'))
    }
}

impl Rule {
    /// Whether the rule covers `name` (a domain rule covers its subdomains; `name` may end in
    /// a dot and be in any case).
    pub fn covers_name(&self, name: &str) -> bool {
        self.domain().is_some_and(|domain| name_within(name, domain))
    }

    pub fn net(&self) -> Option<IpNet> {
        if let Rule::Net(net) = self { Some(*net) } else { None }
    }

    pub fn domain(&self) -> Option<&str> {
        if let Rule::Domain(domain) = self { Some(domain) } else { None }
    }

    pub fn covers_address(&self, ip: IpAddr) -> bool {
        matches!(self, Rule::Net(net) if net.contains(ip))
    }
}

impl Policy {
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.array(if self.relay.rate == RelayRate::Default { 3 } else { 4 });
        w.array(3);
        w.bool(self.exit.logging);
        w.bool(self.exit.rotate_egress);
        match &self.exit.devices {
            ExitDevices::All => w.null(),
            ExitDevices::Only(names) => encode_list(w, names),
        }
        w.array(3);
        w.bool(self.firewall.mesh_only);
        encode_rules(w, &self.firewall.allow);
        encode_rules(w, &self.firewall.deny);
        w.array(2);
        encode_list(w, &self.dns.blocklists);
        encode_list(w, &self.dns.upstreams);
        // Added later: present only when set, so every policy written before it keeps its one
        // encoding (and its signature).
        match self.relay.rate {
            RelayRate::Default => {}
            RelayRate::Mbit(mbit) => w.u64(u64::from(mbit.max(1))),
            RelayRate::Unlimited => w.u64(0),
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, CborError> {
        let fields = r.array_up_to(4)?;
        if fields < 3 {
            return Err(CborError::UnexpectedLength);
        }
        r.array(3)?;
        let logging = r.bool()?;
        let rotate_egress = r.bool()?;
        let devices = if r.is_null()? { ExitDevices::All } else { ExitDevices::Only(decode_list(r)?) };
        let exit = ExitPolicy { logging, rotate_egress, devices };
        r.array(3)?;
        let firewall = FirewallPolicy { mesh_only: r.bool()?, allow: decode_rules(r)?, deny: decode_rules(r)? };
        r.array(2)?;
        let dns = DnsPolicy { blocklists: decode_list(r)?, upstreams: decode_list(r)? };
        let rate = if fields == 4 {
            match r.u64()? {
                0 => RelayRate::Unlimited,
                mbit => RelayRate::Mbit(u32::try_from(mbit).map_err(|_| CborError::Malformed("relay rate out of range".into()))?),
            }
        } else {
            RelayRate::Default
        };
        Ok(Self { exit, firewall, dns, relay: RelayPolicy { rate } })
    }

    /// Whether every list fits its bounds (checked when an admin sets it).
    pub fn is_within_limits(&self) -> bool {
        let names = match &self.exit.devices {
            ExitDevices::All => &[][..],
            ExitDevices::Only(names) => names,
        };
        let strings = [names, &self.dns.blocklists, &self.dns.upstreams];
        strings.iter().all(|list| list.len() <= MAX_POLICY_ITEMS && list.iter().all(|i| i.len() <= MAX_POLICY_ITEM_LEN))
            && self.firewall.allow.len() <= MAX_POLICY_ITEMS
            && self.firewall.deny.len() <= MAX_POLICY_ITEMS
    }
}

fn encode_list(w: &mut Writer, items: &[String]) {
    w.array(items.len());
    for item in items {
        w.str(item);
    }
}

fn decode_list(r: &mut Reader<'_>) -> Result<Vec<String>, CborError> {
    let len = r.array_up_to(MAX_POLICY_ITEMS)?;
    (0..len).map(|_| r.str(MAX_POLICY_ITEM_LEN).map(str::to_owned)).collect()
}

fn encode_rules(w: &mut Writer, rules: &[Rule]) {
    w.array(rules.len());
    for rule in rules {
        w.str(&rule.to_string());
    }
}

/// Rules in canonical form only: a rule that does not read back as itself is refused, so two
/// encodings of one policy cannot exist.
fn decode_rules(r: &mut Reader<'_>) -> Result<Vec<Rule>, CborError> {
    decode_list(r)?
        .into_iter()
        .map(|text| text.parse::<Rule>().ok().filter(|rule| rule.to_string() == text).ok_or_else(|| CborError::Malformed("a firewall rule not in canonical form".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Rule {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn rules_parse_to_their_kind_and_print_canonically() {
        assert_eq!(rule("192.0.2.0/24").to_string(), "192.0.2.0/24");
        assert_eq!(rule("198.51.100.7").to_string(), "198.51.100.7/32");
        assert_eq!(rule("2001:DB8::/32").to_string(), "2001:db8::/32");
        assert_eq!(rule("2001:db8::1").to_string(), "2001:db8::1/128");
        assert_eq!(rule("Ads.Example.COM.").to_string(), "ads.example.com");
        assert_eq!(rule("0.0.0.0/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn bad_rules_are_refused_with_what_to_write() {
        for (text, hint) in [
            ("192.0.2.1/24", "did you mean 192.0.2.0/24"),
            ("192.0.2.0/33", "0 to 32"),
            ("300.1.2.3/8", "not a CIDR"),
            ("localhost", "needs a dot"),
            ("exa mple.com", "not a CIDR, an address or a domain"),
            ("1.2.3", "not an address"),
            ("", "empty"),
            ("-bad.example.com", "not a CIDR, an address or a domain"),
        ] {
            let error = text.parse::<Rule>().expect_err(text).to_string();
            assert!(error.contains(hint), "{text}: {error}");
            assert!(!error.contains('\n'));
        }
    }

    #[test]
    fn a_domain_covers_itself_and_its_subdomains_only() {
        let ads = rule("ads.example.com");
        assert!(ads.covers_name("ads.example.com"));
        assert!(ads.covers_name("X.ADS.example.com."));
        assert!(!ads.covers_name("badads.example.com"));
        assert!(!ads.covers_name("example.com"));
        assert!(!ads.covers_address("192.0.2.1".parse().expect("an address")));
    }

    #[test]
    fn networks_contain_their_addresses() {
        let net = rule("198.51.100.0/24");
        assert!(net.covers_address("198.51.100.200".parse().expect("an address")));
        assert!(!net.covers_address("198.51.101.1".parse().expect("an address")));
        assert!(!net.covers_address("2001:db8::1".parse().expect("an address")));
        assert!(rule("::/0").covers_address("2001:db8::1".parse().expect("an address")));
        assert!(rule("2001:db8::/32").covers_address("2001:db8:ffff::1".parse().expect("an address")));
    }

    #[test]
    fn the_relay_rate_is_encoded_only_when_set_and_round_trips() {
        let encode = |policy: &Policy| {
            let mut w = Writer::new();
            policy.encode(&mut w);
            w.finish()
        };
        let plain = Policy::default();
        // A policy that never set the rate keeps the three-field encoding it always had.
        assert_eq!(encode(&plain)[0], 0x83);
        for rate in [RelayRate::Mbit(2_500), RelayRate::Unlimited] {
            let policy = Policy { relay: RelayPolicy { rate }, ..Policy::default() };
            let bytes = encode(&policy);
            assert_eq!(bytes[0], 0x84);
            assert_eq!(Policy::decode(&mut Reader::new(&bytes)).expect("decodes"), policy);
        }
        assert_eq!(Policy::decode(&mut Reader::new(&encode(&plain))).expect("decodes"), plain);
    }

    #[test]
    fn a_policy_round_trips_and_a_non_canonical_rule_does_not_decode() {
        let policy = Policy {
            exit: ExitPolicy { logging: true, rotate_egress: true, devices: ExitDevices::Only(vec!["laptop".into()]) },
            firewall: FirewallPolicy { mesh_only: false, allow: vec![rule("192.0.2.0/24"), rule("example.com")], deny: vec![rule("2001:db8::1")] },
            dns: DnsPolicy::default(),
            relay: RelayPolicy::default(),
        };
        let mut w = Writer::new();
        policy.encode(&mut w);
        let bytes = w.finish();
        assert_eq!(Policy::decode(&mut Reader::new(&bytes)).expect("decodes"), policy);

        let mut w = Writer::new();
        w.array(3);
        w.array(3);
        w.bool(false);
        w.bool(false);
        w.null();
        w.array(3);
        w.bool(false);
        w.array(1);
        w.str("192.0.2.1/24");
        w.array(0);
        w.array(2);
        w.array(0);
        w.array(0);
        let bytes = w.finish();
        assert!(Policy::decode(&mut Reader::new(&bytes)).is_err(), "a rule with host bits set is not a rule");
    }
}
