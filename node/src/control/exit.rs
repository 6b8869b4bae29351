//! The personal VPN exit in the core: a device's choice of exit (persisted by the shell,
//! re-checked against the log on every change), and on CloudPal the rules its exit enforces,
//! recomputed whenever the log changes (a policy entry, a revocation) — the shell applies
//! them at once, which is how a policy reaches the exit within a second of its entry.

use super::{Action, Core};
use crate::control_api::{ExitState, ExitStatusReply};
use crate::exit::{ExitRules, service};
use membership::DeviceStatus;
use protocol::DeviceId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// `pal dns on|off|status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsReply {
    pub on: bool,
    /// The resolver the system uses now (`None`: the system's own).
    pub resolver: Option<String>,
}

/// A device's exit: which CloudPal, and whether the LAN stays reachable beside the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitChoice {
    #[serde(with = "device_hex")]
    pub device: DeviceId,
    pub allow_lan: bool,
}

/// What the core keeps of the exit, both sides.
#[derive(Debug, Default)]
pub(super) struct ExitSide {
    /// This device's exit (client side).
    pub choice: Option<ExitChoice>,
    /// The choice the shell was last told to apply.
    pub applied: Option<Option<ExitChoice>>,
    /// CloudPal: the rules the shell last applied, and each device's egress addresses.
    pub served: Option<ExitRules>,
    pub egress: BTreeMap<DeviceId, Vec<IpAddr>>,
    /// CloudPal: the egress pool.
    pub pool: Vec<membership::IpNet>,
    /// Client: a session to ask the exit for when connected to it (`true`: a new one).
    pub session_wanted: Option<bool>,
    /// Client: the egress addresses the exit gave this session.
    pub egress_seen: Vec<String>,
    /// CloudPal: the resolver's settings the shell last got.
    pub dns_served: Option<crate::dns::server::DnsConfig>,
    /// Client: `pal dns on` (DNS through CloudPal without the exit).
    pub dns_on: bool,
    /// Client: the resolver the shell last pointed the system at.
    pub dns_applied: Option<Option<(Ipv4Addr, bool)>>,
}

impl Core {
    /// `pal exit use [NAME] [--allow-lan]`.
    pub fn exit_use(&mut self, name: Option<&str>, allow_lan: bool) -> Result<ExitStatusReply, String> {
        if self.revoked() {
            return Err(super::REVOKED.into());
        }
        if self.cloudpal {
            return Err("this device is a CloudPal: it is the exit, it does not use one".into());
        }
        let device = service::choose_exit(self.book.state(), &self.me, name)?;
        let fresh = self.exit.choice.map(|c| c.device) != Some(device);
        self.exit.choice = Some(ExitChoice { device, allow_lan });
        self.apply_membership();
        if fresh {
            self.ask_exit_session(true);
        }
        Ok(self.exit_status(true))
    }

    /// `pal exit off`.
    pub fn exit_off(&mut self) {
        self.exit.choice = None;
        self.exit.session_wanted = None;
        self.exit.egress_seen.clear();
        self.apply_membership();
    }

    /// `pal exit renew`: a new session, so (with rotation on) a new egress address.
    pub fn exit_renew(&mut self) -> Result<(), String> {
        if self.exit.choice.is_none() {
            return Err("no exit in use; start with `pal exit use`".into());
        }
        self.ask_exit_session(true);
        Ok(())
    }

    /// Asks the exit for a session now if connected to it, else as soon as it is.
    fn ask_exit_session(&mut self, renew: bool) {
        self.exit.session_wanted = Some(renew || self.exit.session_wanted.unwrap_or(false));
        if let Some(device) = self.exit_device() {
            self.exit_peer_connected(device);
        }
    }

    /// A member's control connection is proven: if it is our exit, ask for the session.
    pub(super) fn exit_peer_connected(&mut self, device: DeviceId) {
        if self.exit.dns_on {
            // `dns on` may point at this CloudPal now.
            self.apply_exit();
        }
        if self.exit_device() != Some(device) {
            return;
        }
        let Some(peer) = self.reach.get(&device).filter(|r| r.connected).and_then(|r| r.peer_id) else { return };
        let renew = self.exit.session_wanted.take().unwrap_or(false);
        self.push(Action::Send { peer, request: super::messages::Request::ExitSession { renew } });
    }

    /// The exit's answer to our session request.
    pub(super) fn egress_answered(&mut self, peer: libp2p::PeerId, addresses: Vec<String>) {
        if self.by_peer.get(&peer).copied().is_some_and(|d| Some(d) == self.exit_device()) {
            self.exit.egress_seen = addresses.into_iter().take(2).filter(|a| a.parse::<IpAddr>().is_ok()).collect();
        }
    }

    /// CloudPal: a member asks for an exit session. With rotation on, a new session (or one
    /// we have no address for) draws a random pool address per family, held by no other
    /// device; the exit's rules change at once.
    pub(super) fn serve_exit_session(&mut self, peer: libp2p::PeerId, renew: bool) -> super::messages::Response {
        let Some(device) = self.by_peer.get(&peer).copied() else {
            return super::messages::refused(super::admission::NOT_A_MEMBER);
        };
        if !self.cloudpal {
            return super::messages::refused("this device is not an exit");
        }
        let state = self.book.state();
        let policy = &state.policy;
        if policy.firewall.mesh_only || !state.may_use_exit(&device) {
            return super::messages::refused("the network's policy does not let this device use the exit");
        }
        if !policy.exit.rotate_egress || self.exit.pool.is_empty() {
            return super::messages::Response::Egress { addresses: Vec::new() };
        }
        if renew || !self.exit.egress.contains_key(&device) {
            let old = self.exit.egress.remove(&device).unwrap_or_default();
            let taken: Vec<IpAddr> = self.exit.egress.values().flatten().copied().chain(old).collect();
            let mut fresh = Vec::new();
            for v4 in [true, false] {
                let nets: Vec<membership::IpNet> = self.exit.pool.iter().copied().filter(|n| n.address.is_ipv4() == v4).collect();
                if let Some(address) = service::draw_address(&nets, &taken, &mut self.rng) {
                    fresh.push(address);
                }
            }
            self.exit.egress.insert(device, fresh);
            self.apply_exit();
        }
        let addresses = self.exit.egress.get(&device).into_iter().flatten().map(ToString::to_string).collect();
        super::messages::Response::Egress { addresses }
    }

    /// The exit this device uses, if any (for the data plane's routes).
    pub(super) fn exit_device(&self) -> Option<DeviceId> {
        self.exit.choice.map(|c| c.device)
    }

    /// Overlay addresses (ours, the exit's) for the echo that tells whether the exit answers.
    pub fn exit_probe(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let state = self.book.state();
        let exit = state.devices.get(&self.exit.choice?.device).filter(|d| d.status == DeviceStatus::Active)?;
        Some((state.devices.get(&self.me)?.record.overlay_ipv4, exit.record.overlay_ipv4))
    }

    /// `pal exit status`; `answered`: whether the exit answered an echo over the overlay just
    /// now (the shell asks the data plane).
    pub fn exit_status(&self, answered: bool) -> ExitStatusReply {
        let state = self.book.state();
        let Some(choice) = self.exit.choice else {
            return ExitStatusReply { exit: None, state: ExitState::Off, allow_lan: false, egress: Vec::new(), resolver: None };
        };
        let device = state.devices.get(&choice.device).filter(|d| d.status == DeviceStatus::Active);
        ExitStatusReply {
            exit: device.map(|d| d.record.name.clone()),
            state: if answered && device.is_some() { ExitState::Connected } else { ExitState::Blocking },
            allow_lan: choice.allow_lan,
            // Empty without rotation: the web sees the exit's own address.
            egress: self.exit.egress_seen.clone(),
            // Every query goes to CloudPal's resolver over the overlay.
            resolver: device.map(|d| format!("{} ({}), {}", d.record.name, d.record.overlay_ipv4, upstream_summary(&state.policy.dns.upstreams))),
        }
    }

    /// `pal dns on|off`: all DNS through the network's CloudPal, without the exit.
    pub fn set_dns(&mut self, on: bool) -> Result<DnsReply, String> {
        if self.revoked() {
            return Err(super::REVOKED.into());
        }
        if on && self.is_guest() {
            return Err("CloudPal's resolver answers the owner's devices only, not guests".into());
        }
        if on && self.cloudpal {
            return Err("this device is a CloudPal: its resolver serves the network".into());
        }
        if on && self.dns_cloudpals().next().is_none() {
            return Err("this network has no CloudPal to resolve names; add one with `pal device add --role cloudpal`".into());
        }
        self.exit.dns_on = on;
        self.apply_membership();
        Ok(self.dns_status())
    }

    pub fn dns_status(&self) -> DnsReply {
        let resolver = match self.dns_target() {
            Some((server, false)) => Some(format!("{server} (only, through the exit)")),
            Some((server, true)) => Some(format!("{server} (the system's own resolvers after it)")),
            None if self.exit.dns_on => self.dns_cloudpals().next().map(|(_, server)| format!("the system's own resolvers while CloudPal ({server}) is unreachable")),
            None => None,
        };
        DnsReply { on: self.exit.dns_on, resolver }
    }

    /// The network's CloudPals other than us, and their resolvers' addresses.
    fn dns_cloudpals(&self) -> impl Iterator<Item = (DeviceId, Ipv4Addr)> + '_ {
        let state = self.book.state();
        state.active_devices().filter(|(id, d)| d.record.role == membership::Role::CloudPal && **id != self.me).map(|(id, d)| (*id, d.record.overlay_ipv4))
    }

    /// Where the system resolver points: the exit (and nowhere else) while on it, reachable or
    /// not (the kill switch holds DNS too); with `dns on`, a CloudPal we are connected to, its
    /// resolver first and the old resolvers after it — and while none is reachable, the
    /// system's own resolvers alone (systemd-resolved cannot fall back from a link that has
    /// `~.`, and a resolv.conf's fallback costs a timeout per query).
    fn dns_target(&self) -> Option<(Ipv4Addr, bool)> {
        // CloudPal's resolver answers members only: a guest on the exit keeps its own
        // resolvers, reached through the tunnel.
        if self.is_guest() {
            return None;
        }
        if self.exit.choice.is_some() {
            return self.exit_probe().map(|(_, exit)| (exit, false));
        }
        if !self.exit.dns_on {
            return None;
        }
        self.dns_cloudpals().find(|(id, _)| self.reach.get(id).is_some_and(|r| r.connected)).map(|(_, server)| (server, true))
    }

    /// After any change of the log or of the choice: what the shell must apply, if it differs
    /// from what it has.
    pub(super) fn apply_exit(&mut self) {
        if self.exit.applied != Some(self.exit.choice) {
            self.exit.applied = Some(self.exit.choice);
            self.push(Action::ExitClient(self.exit.choice));
        }
        let dns = self.dns_target();
        if self.exit.dns_applied != Some(dns) {
            self.exit.dns_applied = Some(dns);
            self.push(Action::ClientDns(dns));
        }
        if self.cloudpal {
            let rules = service::exit_rules(self.book.state(), &self.exit.egress);
            if self.exit.served.as_ref() != Some(&rules) {
                self.exit.served = Some(rules.clone());
                self.push(Action::ExitServe(rules));
            }
            let dns = service::dns_config(self.book.state());
            if self.exit.dns_served.as_ref() != Some(&dns) {
                self.exit.dns_served = Some(dns.clone());
                self.push(Action::DnsServe(dns));
            }
        }
    }

    /// CloudPal: which of the exit's name sets the addresses of `domain` go to.
    pub fn domain_list(&self, domain: &str) -> Option<&'static str> {
        service::domain_list(self.book.state(), domain)
    }
}

/// What CloudPal's resolver forwards to, as `pal exit status` names it.
fn upstream_summary(upstreams: &[String]) -> String {
    if upstreams.is_empty() {
        "forwarding to CloudPal's own system resolvers (no upstream in the policy)".into()
    } else {
        format!("forwarding to {}", upstreams.join(", "))
    }
}

mod device_hex {
    use protocol::DeviceId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &DeviceId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DeviceId, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = data_encoding::HEXLOWER.decode(text.as_bytes()).map_err(serde::de::Error::custom)?;
        let bytes = bytes.try_into().map_err(|_| serde::de::Error::custom("a device id is 16 bytes"))?;
        Ok(DeviceId::from_bytes(bytes))
    }
}
