//! The network policy record that `SetPolicy` replicates: exit, firewall and DNS settings.
//! Later issues add fields; the format version in every entry covers that change.

use crate::cbor::{CborError, Reader, Writer};

/// Items in any one policy list (allow/deny rules, block lists, upstreams).
pub const MAX_POLICY_ITEMS: usize = 64;
/// Bytes in one policy item: a DNS name is at most 253 characters.
pub const MAX_POLICY_ITEM_LEN: usize = 253;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub exit: ExitPolicy,
    pub firewall: FirewallPolicy,
    pub dns: DnsPolicy,
}

/// Personal VPN exit through CloudPal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitPolicy {
    pub enabled: bool,
    /// Off by default: CloudPal logs nothing about destinations unless the owner says so.
    pub logging: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallPolicy {
    /// No internet through CloudPal; the mesh only.
    pub mesh_only: bool,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsPolicy {
    pub blocklists: Vec<String>,
    pub upstreams: Vec<String>,
}

impl Policy {
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.array(3);
        w.array(2);
        w.bool(self.exit.enabled);
        w.bool(self.exit.logging);
        w.array(3);
        w.bool(self.firewall.mesh_only);
        encode_list(w, &self.firewall.allow);
        encode_list(w, &self.firewall.deny);
        w.array(2);
        encode_list(w, &self.dns.blocklists);
        encode_list(w, &self.dns.upstreams);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, CborError> {
        r.array(3)?;
        r.array(2)?;
        let exit = ExitPolicy { enabled: r.bool()?, logging: r.bool()? };
        r.array(3)?;
        let firewall = FirewallPolicy { mesh_only: r.bool()?, allow: decode_list(r)?, deny: decode_list(r)? };
        r.array(2)?;
        let dns = DnsPolicy { blocklists: decode_list(r)?, upstreams: decode_list(r)? };
        Ok(Self { exit, firewall, dns })
    }

    /// Whether every list fits its bounds (checked when an admin sets it).
    pub fn is_within_limits(&self) -> bool {
        [&self.firewall.allow, &self.firewall.deny, &self.dns.blocklists, &self.dns.upstreams]
            .iter()
            .all(|list| list.len() <= MAX_POLICY_ITEMS && list.iter().all(|i| i.len() <= MAX_POLICY_ITEM_LEN))
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
