//! The personal VPN exit, both sides (wg-quick's and Mullvad talpid's shape on Linux).
//!
//! - **Client** (a device using CloudPal as its exit): the exit peer takes `0.0.0.0/0` and
//!   `::/0` in the data plane (cryptokey routing, so a packet from the exit may carry any
//!   internet source); policy rules send everything not marked as pal's own underlay traffic
//!   into a routing table of pal's whose defaults (v4 and v6) point into the overlay; a
//!   kill-switch nftables table drops whatever would still leave outside the tunnel.
//! - **Exit** (CloudPal): one `inet` nftables table, applied as one transaction, forwards
//!   members' overlay sources to the internet under the network policy (mesh-only, allow and
//!   deny rules, which devices may use it), masquerades (or, with egress rotation, SNATs each
//!   device to its own pool address), clamps the MSS, and logs nothing unless the policy says.
//!
//! [`service`] decides (sans-IO: membership state and policy in, the exit's rules out),
//! [`ruleset`] renders nftables rulesets (golden tests), [`host`] applies them with routes,
//! rules and sysctls, journals each change in the state directory and undoes them on stop,
//! on `pal exit off`, and at the next start after a crash.

pub mod host;
pub mod ruleset;
pub mod service;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The mark on pal's own underlay sockets (data plane), and the routing table of the client's
/// full tunnel. Both spell "pal" on the default port.
pub const FWMARK: u32 = 0x0070_a1a9;
pub const ROUTE_TABLE: u32 = 41641;
/// Policy-rule priorities: pal's control-plane ports to the main table, then the main table
/// without its default routes (LAN and overlay routes still win), then everything unmarked to
/// pal's table. Below Tailscale's 5210–5270 so the two do not interleave.
pub const PRIORITY_PORTS: u32 = 5180;
pub const PRIORITY_SUPPRESS: u32 = 5181;
pub const PRIORITY_TUNNEL: u32 = 5182;
/// The nftables tables pal owns (nothing else of the host's ruleset is touched).
pub const CLIENT_TABLE: &str = "pal_killswitch";
pub const EXIT_TABLE: &str = "pal_exit";

/// The client's full tunnel, as the control core asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTunnel {
    /// The overlay interface.
    pub tun: String,
    pub overlay_ipv4: Ipv4Addr,
    pub overlay_ipv6: Ipv6Addr,
    /// pal's underlay port: the data plane's (UDP, shared with TCP for the control plane).
    pub data_port: u16,
    pub allow_lan: bool,
}

/// What CloudPal's exit forwards, as the control core decides it from the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitRules {
    /// Overlay sources that may reach the internet (members allowed by the policy).
    pub sources: Vec<IpAddr>,
    /// No internet for anyone (the policy's mesh-only switch).
    pub mesh_only: bool,
    pub allow: Vec<membership::IpNet>,
    pub deny: Vec<membership::IpNet>,
    /// Per-device egress addresses (rotation): overlay source → pool address.
    pub egress: Vec<(IpAddr, IpAddr)>,
    /// The owner switched logging on: new flows are logged by the kernel.
    pub logging: bool,
    /// Domain rules exist: the resolver fills the `allow_names*` / `deny_names*` sets with
    /// the addresses it hands out for them (with their TTLs).
    pub allow_domains: bool,
    pub deny_domains: bool,
}

/// How CloudPal's exit is set up on the host: the overlay interface and its own overlay
/// addresses (never masqueraded: the mesh stays the mesh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitHost {
    pub tun: String,
    pub overlay_ipv4: Ipv4Addr,
    pub overlay_ipv6: Ipv6Addr,
}
