//! The local control API: typed requests and replies between `pal` subcommands and the running
//! node, shared with `cli` through serde. On the wire (the Unix socket of [`socket`]) each is
//! one JSON line; `--json` output of the CLI is the reply as it arrives.

pub mod socket;

use membership::Role;
use serde::{Deserialize, Serialize};

pub use socket::{MAX_REQUEST_LEN, call, serve};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    /// `pal netcheck`: what this node found out about its network.
    Netcheck,
    /// The Prometheus exposition (the metrics listener asks; the reply is a string).
    Metrics,
    DeviceList,
    Log,
    Invite {
        name: String,
        #[serde(with = "role")]
        role: Role,
        ttl_seconds: u64,
        /// A guest's: `DEVICE[:PORTS]` each.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        shares: Vec<String>,
    },
    /// `pal device share` (`unshare: false`) and `pal device unshare`.
    Share {
        guest: String,
        devices: Vec<String>,
        unshare: bool,
    },
    Revoke {
        name: String,
    },
    /// Add the device of a request code with `role` and deliver the log to it.
    Add {
        code: String,
        #[serde(with = "role")]
        role: Role,
    },
    Ping {
        name: String,
        count: u32,
    },
    /// Internet through `name` (by default the network's CloudPal).
    ExitUse {
        name: Option<String>,
        allow_lan: bool,
    },
    ExitOff,
    ExitRenew,
    ExitStatus,
    /// `pal dns on|off`.
    Dns {
        on: bool,
    },
    DnsStatus,
    /// CloudPal: the in-memory query log (empty unless the policy's logging is on).
    DnsLog,
    PolicyShow,
    PolicySet(PolicyChange),
}

/// `pal netcheck`: the node's own findings about the network it is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetcheckReply {
    /// The CloudPal the checks ran against (none yet: nothing below is known).
    pub cloudpal: Option<String>,
    /// CloudPal answered over UDP (its data plane heard us and we heard it directly).
    pub udp: bool,
    /// Something between us and the internet translates our address.
    pub behind_nat: bool,
    /// How our NAT maps one socket toward two destinations: "endpoint-independent" or
    /// "endpoint-dependent" (symmetric), once CloudPal answered the check on both its ports.
    pub nat_mapping: Option<String>,
    /// Our data-plane address as CloudPal sees it.
    pub public_address: Option<String>,
    /// Every address peers saw our datagrams come from.
    pub reflexive: Vec<String>,
    /// The node has a global IPv6 address to listen on.
    pub ipv6: bool,
    /// Round trip to CloudPal's control plane.
    pub cloudpal_rtt_ms: Option<f64>,
    /// CloudPal's TCP/TLS-443 fallback answered (its pinned certificate, a web server's 404)
    /// just now; `None` where CloudPal announced none.
    #[serde(default)]
    pub tcp_443: Option<bool>,
    /// How long that took (TCP, TLS and one request).
    #[serde(default)]
    pub tcp_443_ms: Option<f64>,
}

/// `pal policy set`: each field left out (or false) leaves that part of the policy as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    pub mesh_only: Option<bool>,
    /// Rules as typed; the node parses them (one bad rule refuses the whole change).
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub clear_allow: bool,
    pub clear_deny: bool,
    pub logging: Option<bool>,
    pub rotate_egress: Option<bool>,
    /// `all`, or the names of the devices that may use the exit.
    pub exit_devices: Option<Vec<String>>,
    /// Block lists to add (files on CloudPal), and whether to drop the current ones first.
    #[serde(default)]
    pub block_lists: Vec<String>,
    #[serde(default)]
    pub clear_block_lists: bool,
    /// Upstreams replacing the current ones (`udp://ADDR[:PORT]`).
    #[serde(default)]
    pub dns_upstreams: Vec<String>,
    /// CloudPal's relay rate as typed: Mbit/s, `unlimited` or `default`.
    #[serde(default)]
    pub relay_rate: Option<String>,
}

/// `pal policy show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReply {
    pub mesh_only: bool,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub logging: bool,
    pub rotate_egress: bool,
    /// `None`: every member.
    pub exit_devices: Option<Vec<String>>,
    pub block_lists: Vec<String>,
    pub dns_upstreams: Vec<String>,
    /// Mbit/s in all, shared fairly; `None`: no cap.
    #[serde(default)]
    pub relay_mbit: Option<u64>,
    /// Whether that is the built-in default.
    #[serde(default)]
    pub relay_default: bool,
}

impl From<&membership::Policy> for PolicyReply {
    fn from(policy: &membership::Policy) -> Self {
        let strings = |rules: &[membership::Rule]| rules.iter().map(ToString::to_string).collect();
        PolicyReply {
            mesh_only: policy.firewall.mesh_only,
            allow: strings(&policy.firewall.allow),
            deny: strings(&policy.firewall.deny),
            logging: policy.exit.logging,
            rotate_egress: policy.exit.rotate_egress,
            exit_devices: match &policy.exit.devices {
                membership::ExitDevices::All => None,
                membership::ExitDevices::Only(names) => Some(names.clone()),
            },
            block_lists: policy.dns.blocklists.clone(),
            dns_upstreams: policy.dns.upstreams.clone(),
            relay_mbit: crate::control::members::relay_rate_bytes(policy.relay.rate).map(|bytes| bytes / 125_000),
            relay_default: policy.relay.rate == membership::RelayRate::Default,
        }
    }
}

/// `pal exit status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatusReply {
    /// The exit device's name (`None`: off, or the chosen exit is gone from the network).
    pub exit: Option<String>,
    pub state: ExitState,
    pub allow_lan: bool,
    /// The addresses the internet sees (empty: the exit's own address).
    pub egress: Vec<String>,
    /// The resolver the device's DNS goes to while on the exit.
    pub resolver: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitState {
    Off,
    /// Internet through the exit.
    Connected,
    /// The exit is chosen but unreachable: the kill switch drops internet traffic.
    Blocking,
}

impl std::fmt::Display for ExitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExitState::Off => "off",
            ExitState::Connected => "connected",
            ExitState::Blocking => "blocking (the exit is unreachable; internet traffic is dropped)",
        })
    }
}

/// The node's answer: a reply of the request's type, or one line saying what went wrong.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlResponse {
    Ok(serde_json::Value),
    Error(String),
}

impl ControlResponse {
    /// A typed reply, or the error as it is.
    pub fn from_result<T: Serialize>(result: Result<T, String>) -> Self {
        match result.and_then(|reply| serde_json::to_value(reply).map_err(|e| e.to_string())) {
            Ok(value) => ControlResponse::Ok(value),
            Err(error) => ControlResponse::Error(error),
        }
    }
}

/// `pal status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub device: DeviceSummary,
    pub peers: Vec<PeerStatus>,
    /// Entries in this node's Kademlia routing table.
    pub dht_peers: usize,
    /// What our NAT does ("endpoint-independent" or "endpoint-dependent"), once CloudPal
    /// answered the NAT check.
    #[serde(default)]
    pub nat: Option<String>,
    /// Birthday punches: attempts behind our symmetric NAT, sprays toward peers behind one,
    /// and the probes those sent.
    #[serde(default)]
    pub punches: PunchCounts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PunchCounts {
    pub opened: u64,
    pub sprays: u64,
    pub probes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSummary {
    pub name: Option<String>,
    pub id: String,
    /// The network's fingerprint (`pal request --network` takes it).
    pub network: String,
    pub overlay_ipv4: Option<String>,
    pub overlay_ipv6: Option<String>,
    pub status: DeviceStatusName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatusName {
    Active,
    Revoked,
}

impl From<membership::DeviceStatus> for DeviceStatusName {
    fn from(status: membership::DeviceStatus) -> Self {
        match status {
            membership::DeviceStatus::Active => DeviceStatusName::Active,
            membership::DeviceStatus::Revoked => DeviceStatusName::Revoked,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub id: String,
    pub overlay_ipv4: String,
    pub overlay_ipv6: String,
    pub path: PathName,
    pub endpoint: Option<String>,
    pub rtt_ms: Option<f64>,
    pub control: ControlLink,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// `admin`, `member` or `cloudpal`.
    #[serde(default)]
    pub role: String,
    /// Birthday punch attempts with this peer, in either role (at most one a minute).
    #[serde(default)]
    pub punches: u64,
}

/// The data path a peer's traffic takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathName {
    Direct,
    Relay,
    /// Through CloudPal over the TCP/443 fallback.
    #[serde(rename = "relay-tcp")]
    RelayTcp,
    None,
}

impl From<protocol::paths::PathKind> for PathName {
    fn from(path: protocol::paths::PathKind) -> Self {
        match path {
            protocol::paths::PathKind::Direct => PathName::Direct,
            protocol::paths::PathKind::Relay => PathName::Relay,
            protocol::paths::PathKind::RelayTcp => PathName::RelayTcp,
            protocol::paths::PathKind::None => PathName::None,
        }
    }
}

impl std::fmt::Display for PathName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathName::Direct => "direct",
            PathName::Relay => "relay",
            PathName::RelayTcp => "relay-tcp",
            PathName::None => "none",
        })
    }
}

/// How the control plane reaches a peer: directly, through CloudPal's relay, or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlLink {
    Direct,
    Relayed,
    None,
}

/// One row of `pal device list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    pub id: String,
    #[serde(with = "role")]
    pub role: Role,
    pub status: DeviceStatusName,
    pub overlay_ipv4: String,
    pub overlay_ipv6: String,
    /// A guest: what it may reach (`DEVICE[:PORTS]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<String>,
}

/// `pal device share` / `unshare`: what the guest reaches now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareReply {
    pub guest: String,
    pub shares: Vec<String>,
}

/// One entry of `pal log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub hash: String,
    pub author: String,
    pub time: u64,
    pub operation: LogOperation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogOperation {
    Genesis {
        network: String,
        founder: String,
    },
    AddDevice {
        name: String,
        #[serde(with = "role")]
        role: Role,
    },
    Invite {
        #[serde(with = "role")]
        role: Role,
        expires: u64,
        name_hint: String,
    },
    Join {
        name: String,
        #[serde(with = "role")]
        role: Role,
    },
    RevokeDevice {
        name: String,
    },
    SetPolicy {},
    /// The network secret moved on (after a revocation); the secret itself is never shown.
    RotateSecret {},
    /// What a guest may reach from now on.
    Share {
        guest: String,
        shares: Vec<String>,
    },
}

impl std::fmt::Display for LogOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogOperation::Genesis { network, founder } => write!(f, "genesis of {network} by {founder}"),
            LogOperation::AddDevice { name, role } => write!(f, "add {name} as {}", role.as_str()),
            LogOperation::Invite { role, name_hint, .. } => write!(f, "invite {name_hint} as {}", role.as_str()),
            LogOperation::Join { name, role } => write!(f, "join of {name} as {}", role.as_str()),
            LogOperation::RevokeDevice { name } => write!(f, "revoke {name}"),
            LogOperation::SetPolicy {} => f.write_str("set policy"),
            LogOperation::RotateSecret {} => f.write_str("rotate the network secret"),
            LogOperation::Share { guest, shares } if shares.is_empty() => write!(f, "share nothing with {guest}"),
            LogOperation::Share { guest, shares } => write!(f, "share {} with {guest}", shares.join(" ")),
        }
    }
}

/// `pal device invite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteReply {
    pub code: String,
    pub expires: u64,
    #[serde(with = "role")]
    pub role: Role,
}

/// `pal device add`: the device has the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddReply {
    pub added: String,
    #[serde(with = "role")]
    pub role: Role,
}

/// `pal device revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeReply {
    pub revoked: String,
}

/// `pal ping`: what was sent, and each reply with the path it came back on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingReport {
    pub sent: usize,
    pub received: usize,
    pub replies: Vec<PingReply>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingReply {
    pub seq: u16,
    pub rtt_ms: f64,
    pub path: PathName,
}

/// Roles travel as their names (`member`, `admin`, `cloudpal`).
mod role {
    use membership::Role;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(role: &Role, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(role.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Role, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_keep_their_json_shape() {
        let request = ControlRequest::Invite { name: "phone".into(), role: Role::CloudPal, ttl_seconds: 60, shares: Vec::new() };
        let text = serde_json::to_string(&request).expect("encodes");
        assert_eq!(text, r#"{"command":"invite","name":"phone","role":"cloudpal","ttl_seconds":60}"#);
        assert!(serde_json::from_str::<ControlRequest>(r#"{"command":"invite","name":"x","role":"boss","ttl_seconds":1}"#).is_err());
        let operation = serde_json::to_value(LogOperation::SetPolicy {}).expect("encodes");
        assert_eq!(operation, serde_json::json!({ "set_policy": {} }));
        let peer = PeerStatus {
            name: "a".into(),
            id: "00".into(),
            overlay_ipv4: "100.64.0.1".into(),
            overlay_ipv6: "fd00::1".into(),
            path: PathName::Relay,
            endpoint: None,
            rtt_ms: None,
            control: ControlLink::Relayed,
            rx_bytes: 1,
            tx_bytes: 2,
            role: "member".into(),
            punches: 0,
        };
        let value = serde_json::to_value(&peer).expect("encodes");
        assert_eq!(value["path"], "relay");
        let tcp = serde_json::to_value(PathName::RelayTcp).expect("encodes");
        assert_eq!(tcp, "relay-tcp", "the contract's name (DESIGN.md)");
        assert_eq!(value["control"], "relayed");
        assert!(value["rtt_ms"].is_null());
        assert_eq!(serde_json::from_value::<PeerStatus>(value).expect("decodes"), peer);
    }
}
