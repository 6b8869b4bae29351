//! Admin operations and the local views: invite, add a device from its request code (and
//! deliver the log to it), revoke; status, device list and log as the control API shows them.

use super::messages::{Request, Response};
use super::{Action, Core, Dial, DialWhen, REVOKED, Time};
use crate::control_api::{AddReply, DeviceInfo, DeviceSummary, LogEntry, LogOperation, PathName, PeerStatus, PolicyChange, PolicyReply, PunchCounts, RevokeReply, ShareReply, StatusReply};
use crate::dataplane::commands::DataView;
use libp2p::{Multiaddr, PeerId};
use membership::{DeviceStatus, EntryHash, ExitDevices, Operation, Role, Rule};
use protocol::{DeviceId, DevicePublicKey, DeviceSigningKey, StaticPublic};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The longest an invite may stay valid (an invite code is a secret; Tailscale's auth keys
/// stop at 90 days, ours sooner).
pub const MAX_INVITE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long `pal device add` tries to hand the log to the new device.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Names a local request that is answered later, through [`Action::Finished`].
pub type ReplyId = u64;

/// The device of a request code, as an admin adds it.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub name: String,
    pub signing_key: DevicePublicKey,
    pub static_key: StaticPublic,
    pub peer: PeerId,
    pub addresses: Vec<Multiaddr>,
}

/// A new invite: what its code must carry.
#[derive(Debug)]
pub struct InviteMade {
    pub invite: EntryHash,
    pub secret: DeviceSigningKey,
    /// Where the new device can reach a member: this device first, then CloudPal (always on,
    /// so the invite works while this device is off), then other members.
    pub bootstrap: Vec<Multiaddr>,
    pub expires: u64,
    pub role: Role,
}

/// The log going to a device added from a request code.
#[derive(Debug)]
pub(super) struct Delivery {
    name: String,
    role: Role,
    batches: VecDeque<Vec<Vec<u8>>>,
    started: Instant,
    reply: ReplyId,
}

impl Core {
    fn require_admin(&self) -> Result<(), String> {
        match self.book.state().devices.get(&self.me) {
            Some(device) if device.record.role == Role::Admin && device.status == DeviceStatus::Active => Ok(()),
            _ => Err("only an admin device can do this".into()),
        }
    }

    /// `pal device invite`: appends an `Invite` entry with a fresh one-time key (a guest's
    /// carries what it will reach: `DEVICE[:PORTS]` each).
    pub fn invite(&mut self, name: &str, role: Role, shares: &[String], ttl: Duration, time: Time) -> Result<InviteMade, String> {
        self.require_admin()?;
        membership::entry::check_name(name).map_err(|e| e.to_string())?;
        if role != Role::Guest && !shares.is_empty() {
            return Err("--share is for guests: add --role guest".into());
        }
        let shares = self.resolve_shares(shares)?;
        if ttl > MAX_INVITE_TTL || ttl.is_zero() {
            return Err("an invite is valid for 30 days at most; pass a --ttl such as 1h or 7d".into());
        }
        let secret = DeviceSigningKey::generate(&mut self.rng);
        let unix = time.unix_secs();
        let expires = unix + ttl.as_secs();
        let entry = self
            .book
            .store_mut()?
            .append(Operation::Invite { invite_key: secret.public_key(), role, expires, name_hint: name.to_owned(), shares }, &self.signing_key, None, unix)
            .map_err(|e| format!("cannot invite: {e}"))?;
        self.membership_changed();
        let own = self.listen_addrs.iter().filter(|a| self.dialable(a)).filter_map(|a| a.clone().with_p2p(self.peer_id).ok());
        let relay = self.relay.map(|(device, _)| device);
        let mut others: Vec<(&DeviceId, PeerId, &super::Reach)> =
            self.reach.iter().filter(|(id, _)| **id != self.me).filter_map(|(id, r)| Some((id, r.peer_id?, r))).collect();
        others.sort_by_key(|(id, _, reach)| (Some(**id) != relay, !reach.connected));
        let members = others
            .into_iter()
            .flat_map(|(_, peer, reach)| reach.multiaddrs.iter().filter_map(move |a| a.clone().with_p2p(peer).ok()));
        let bootstrap = own.chain(members).collect();
        Ok(InviteMade { invite: entry.hash(), secret, bootstrap, expires, role })
    }

    /// `pal device add CODE --role ROLE`: appends the requesting device and starts delivering
    /// the log to it; answered through [`Action::Finished`] with `reply`.
    pub fn add_device(&mut self, device: NewDevice, role: Role, reply: ReplyId, time: Time) -> Result<(), String> {
        self.require_admin()?;
        if role == Role::Guest {
            return Err("a guest joins with an invite that says what it reaches: `pal device invite --name NAME --role guest --share DEVICE[:PORTS]`".into());
        }
        membership::entry::check_name(&device.name).map_err(|e| e.to_string())?;
        let state = self.book.state();
        let device_id = device.signing_key.device_id();
        if state.devices.contains_key(&device_id) {
            return Err(format!("{} is already in this network's log; see `pal device list`", device.name));
        }
        let founder = self.book.founder().ok_or("empty log")?;
        let (overlay_ipv4, overlay_ipv6) = state.allocate_overlay(&founder, &device_id).ok_or("no free overlay address")?;
        let record = membership::DeviceRecord {
            name: device.name.clone(),
            signing_key: device.signing_key,
            static_key: device.static_key,
            role,
            overlay_ipv4,
            overlay_ipv6,
        };
        self.book
            .store_mut()?
            .append(Operation::AddDevice { device: record }, &self.signing_key, None, time.unix_secs())
            .map_err(|e| format!("cannot add {}: {e}", device.name))?;
        self.membership_changed();
        // Members reach it where its code says; it is dialled by who it is.
        let reach = self.reach_entry(device_id);
        reach.peer_id = Some(device.peer);
        reach.multiaddrs.extend(device.addresses.iter().cloned());
        self.peer_cache_stale = true;
        let empty = membership::sync::Summary { network: self.network, heads: Vec::new(), sample: Vec::new() };
        let batches = membership::missing_for(self.book.log().ok_or(super::book::GUEST_CANNOT)?, &empty).into();
        self.deliveries.insert(device.peer, Delivery { name: device.name, role, batches, started: time.now, reply });
        if self.is_connected(&device.peer) {
            self.deliver_next(device.peer);
        } else {
            self.push(Action::Dial(Dial { peer: Some(device.peer), addresses: device.addresses, when: DialWhen::Always }));
        }
        Ok(())
    }

    pub(super) fn deliver_next(&mut self, peer: PeerId) {
        let Some(delivery) = self.deliveries.get_mut(&peer) else { return };
        if let Some(batch) = delivery.batches.pop_front() {
            let more = !delivery.batches.is_empty();
            let request = Request::Deliver { batch: batch.into_iter().map(Into::into).collect(), more };
            self.push(Action::Send { peer, request });
        }
    }

    pub(super) fn delivery_answered(&mut self, peer: PeerId, response: Response) {
        let result = match response {
            Response::Accepted if self.deliveries.get(&peer).is_some_and(|d| !d.batches.is_empty()) => {
                self.deliver_next(peer);
                return;
            }
            Response::Accepted => None,
            Response::Refused { reason } => Some(format!("the new device refused the log: {}", super::messages::printable(&reason))),
            _ => return,
        };
        if let Some(delivery) = self.deliveries.remove(&peer) {
            let result = match result {
                None => Ok(AddReply { added: delivery.name, role: delivery.role }),
                Some(error) => Err(error),
            };
            self.push(Action::Finished { reply: delivery.reply, result });
        }
    }

    pub(super) fn next_delivery_expiry(&self) -> Option<Instant> {
        self.deliveries.values().map(|d| d.started + DELIVERY_TIMEOUT).min()
    }

    /// Gives up on deliveries that got nowhere.
    pub(super) fn expire_deliveries(&mut self, now: Instant) {
        let mut stale: Vec<PeerId> = self.deliveries.iter().filter(|(_, d)| now >= d.started + DELIVERY_TIMEOUT).map(|(p, _)| *p).collect();
        stale.sort();
        for peer in stale {
            if let Some(delivery) = self.deliveries.remove(&peer) {
                let error = format!(
                    "{} is in the log, but its log could not be delivered: is `pal request` still running there, and reachable at the addresses in its code?",
                    delivery.name
                );
                self.push(Action::Finished { reply: delivery.reply, result: Err(error) });
            }
        }
    }

    /// `pal device revoke NAME`.
    pub fn revoke(&mut self, name: &str, time: Time) -> Result<RevokeReply, String> {
        self.require_admin()?;
        self.last_now = self.last_now.max(time.now);
        let state = self.book.state();
        let Some((id, _)) = state.active_devices().find(|(_, d)| d.record.name == name) else {
            return Err(format!("no active device named {name:?}; see `pal device list`"));
        };
        let id = *id;
        self.book
            .store_mut()?
            .append(Operation::RevokeDevice { device: id }, &self.signing_key, None, time.unix_secs())
            .map_err(|e| format!("cannot revoke {name}: {e}"))?;
        // The revoked device is served the log up to its revocation and never this child of
        // it: the network secret (presence keys) moves on without it.
        let mut secret = [0u8; 32];
        rand_core::Rng::fill_bytes(&mut self.rng, &mut secret);
        let rotation = Operation::RotateSecret { secret: membership::entry::RotationSecret(secret) };
        if let Err(error) = self.book.store_mut()?.append(rotation, &self.signing_key, None, time.unix_secs()) {
            tracing::warn!(%error, "the network secret was not rotated after a revocation");
        }
        self.membership_changed();
        Ok(RevokeReply { revoked: name.to_owned() })
    }

    /// `DEVICE[:PORTS]` as typed, resolved to the active members they name.
    fn resolve_shares(&self, specs: &[String]) -> Result<Vec<membership::Share>, String> {
        let state = self.book.state();
        let mut shares = Vec::new();
        for spec in specs {
            let (name, ports) = membership::share::parse_spec(spec)?;
            let Some((id, device)) = state.active_devices().find(|(_, d)| d.record.name == name) else {
                return Err(format!("no active device named {name:?} to share; see `pal device list`"));
            };
            if device.record.role == Role::Guest {
                return Err(format!("{name} is a guest: only the network's own devices can be shared"));
            }
            shares.push(membership::Share { device: *id, ports });
        }
        let shares = membership::share::canonical(shares);
        if shares.len() > membership::share::MAX_SHARES {
            return Err(format!("a guest can be given at most {} devices", membership::share::MAX_SHARES));
        }
        Ok(shares)
    }

    /// `pal device share GUEST DEVICE[:PORTS]...` (added to what it has) and `pal device
    /// unshare GUEST DEVICE...` (those devices taken away): one `Share` entry.
    pub fn share(&mut self, guest: &str, specs: &[String], unshare: bool, time: Time) -> Result<ShareReply, String> {
        self.require_admin()?;
        self.last_now = self.last_now.max(time.now);
        let state = self.book.state();
        let Some((id, device)) = state.active_devices().find(|(_, d)| d.record.name == guest) else {
            return Err(format!("no active device named {guest:?}; see `pal device list`"));
        };
        if device.record.role != Role::Guest {
            return Err(format!("{guest} is not a guest: it reaches the whole network (invite guests with `pal device invite NAME --role guest`)"));
        }
        let id = *id;
        let mut shares = state.shares.get(&id).map(|s| s.shares.clone()).unwrap_or_default();
        let named = self.resolve_shares(specs)?;
        if unshare {
            shares.retain(|s| !named.iter().any(|n| n.device == s.device));
        } else {
            // Named again: its ports are the ones given now.
            shares.retain(|s| !named.iter().any(|n| n.device == s.device));
            shares.extend(named);
        }
        let shares = membership::share::canonical(shares);
        if state.shares.get(&id).is_none_or(|s| s.shares != shares) {
            self.book
                .store_mut()?
                .append(Operation::Share { guest: id, shares }, &self.signing_key, None, time.unix_secs())
                .map_err(|e| format!("cannot change what {guest} reaches: {e}"))?;
            self.membership_changed();
        }
        let state = self.book.state();
        Ok(ShareReply { guest: guest.to_owned(), shares: state.shares.get(&id).map(|s| share_texts(state, &s.shares)).unwrap_or_default() })
    }

    /// `pal policy set`: the change applied to the current policy, checked whole (one bad
    /// rule refuses it all), appended to the log as one `SetPolicy` entry.
    pub fn set_policy(&mut self, change: &PolicyChange, time: Time) -> Result<PolicyReply, String> {
        self.require_admin()?;
        self.last_now = self.last_now.max(time.now);
        let mut policy = self.book.state().policy.clone();
        let parse = |rules: &[String]| rules.iter().map(|r| r.parse::<Rule>().map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>();
        let (allow, deny) = (parse(&change.allow)?, parse(&change.deny)?);
        if change.clear_allow {
            policy.firewall.allow.clear();
        }
        if change.clear_deny {
            policy.firewall.deny.clear();
        }
        for (list, new) in [(&mut policy.firewall.allow, allow), (&mut policy.firewall.deny, deny)] {
            for rule in new {
                if !list.contains(&rule) {
                    list.push(rule);
                }
            }
        }
        if let Some(on) = change.mesh_only {
            policy.firewall.mesh_only = on;
        }
        if let Some(on) = change.logging {
            policy.exit.logging = on;
        }
        if let Some(on) = change.rotate_egress {
            policy.exit.rotate_egress = on;
        }
        if let Some(names) = &change.exit_devices {
            policy.exit.devices = if names.iter().any(|n| n == "all") { ExitDevices::All } else { ExitDevices::Only(names.clone()) };
        }
        if change.clear_block_lists {
            policy.dns.blocklists.clear();
        }
        for source in &change.block_lists {
            crate::dns::server::BlockListSource::parse(source)?;
            if !policy.dns.blocklists.contains(source) {
                policy.dns.blocklists.push(source.clone());
            }
        }
        if !change.dns_upstreams.is_empty() {
            for upstream in &change.dns_upstreams {
                crate::dns::server::parse_upstream(upstream)?;
            }
            policy.dns.upstreams = change.dns_upstreams.clone();
        }
        if let Some(rate) = &change.relay_rate {
            policy.relay.rate = parse_relay_rate(rate)?;
        }
        if !policy.is_within_limits() {
            return Err(format!("a policy holds at most {} rules per list; remove some with --clear-allow or --clear-deny", membership::policy::MAX_POLICY_ITEMS));
        }
        let reply = PolicyReply::from(&policy);
        if policy != self.book.state().policy {
            self.book.store_mut()?.append(Operation::SetPolicy { policy }, &self.signing_key, None, time.unix_secs()).map_err(|e| format!("cannot set the policy: {e}"))?;
            self.membership_changed();
        }
        Ok(reply)
    }

    /// `pal policy show`.
    pub fn policy(&self) -> PolicyReply {
        PolicyReply::from(&self.book.state().policy)
    }

    /// Overlay source and target addresses for `pal ping NAME`.
    pub fn ping_target(&self, name: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
        if self.revoked() {
            return Err(REVOKED.into());
        }
        let state = self.book.state();
        let Some((_, target)) = state.active_devices().find(|(id, d)| d.record.name == name && **id != self.me) else {
            return Err(format!("no other active device named {name:?}; see `pal device list`"));
        };
        let source = state.devices.get(&self.me).map(|d| d.record.overlay_ipv4).unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ok((source, target.record.overlay_ipv4))
    }

    /// `pal status`: the membership state with the data plane's `views` of each peer.
    pub fn status(&self, data: &DataView, dht_peers: usize) -> StatusReply {
        let views = &data.peers;
        let state = self.book.state();
        let mine = state.devices.get(&self.me);
        let peers = state
            .active_devices()
            .filter(|(id, _)| **id != self.me && self.deals_with(id))
            .map(|(id, device)| {
                let view = views.get(&device.record.static_key);
                let stats = view.map(|v| v.stats).unwrap_or_default();
                let reach = self.reach.get(id);
                PeerStatus {
                    name: device.record.name.clone(),
                    id: id.to_hex(),
                    overlay_ipv4: device.record.overlay_ipv4.to_string(),
                    overlay_ipv6: device.record.overlay_ipv6.to_string(),
                    path: view.map_or(PathName::None, |v| v.path.into()),
                    endpoint: view.and_then(|v| v.endpoint).map(|e| e.to_string()),
                    rtt_ms: reach.and_then(|r| r.rtt).map(|r| r.as_secs_f64() * 1000.0),
                    control: self.control_link(reach.and_then(|r| r.peer_id)),
                    rx_bytes: stats.rx_bytes,
                    tx_bytes: stats.tx_bytes,
                    role: device.record.role.as_str().to_owned(),
                    punches: view.map_or(0, |v| v.punches),
                }
            })
            .collect();
        StatusReply {
            device: DeviceSummary {
                name: mine.map(|d| d.record.name.clone()),
                id: self.me.to_hex(),
                network: super::admission::fingerprint(&self.network),
                overlay_ipv4: mine.map(|d| d.record.overlay_ipv4.to_string()),
                overlay_ipv6: mine.map(|d| d.record.overlay_ipv6.to_string()),
                status: if self.revoked() { DeviceStatus::Revoked.into() } else { DeviceStatus::Active.into() },
            },
            peers,
            dht_peers,
            nat: data.nat.map(|(kind, _)| kind.as_str().to_owned()),
            punches: PunchCounts { opened: data.stats.punch_opened, sprays: data.stats.punch_sprays, probes: data.stats.punch_probes },
        }
    }

    /// `pal device list`.
    pub fn device_list(&self) -> Vec<DeviceInfo> {
        let mut devices = device_list(self.book.state());
        if self.is_guest() {
            let state = self.book.state();
            devices.retain(|d| state.devices.iter().any(|(id, s)| s.record.name == d.name && (*id == self.me || self.deals_with(id))));
        }
        devices
    }

    /// `pal log`: the verified entries in fold order.
    pub fn log_entries(&self) -> Vec<LogEntry> {
        let Some(log) = self.book.log() else { return Vec::new() };
        let state = log.state();
        let name_of = |id: &DeviceId| state.devices.get(id).map(|d| d.record.name.clone()).unwrap_or_else(|| id.to_hex());
        log.entries()
            .map(|entry| {
                let operation = match entry.operation() {
                    Operation::Genesis { network_name, founder } => LogOperation::Genesis { network: network_name.clone(), founder: founder.name.clone() },
                    Operation::AddDevice { device } => LogOperation::AddDevice { name: device.name.clone(), role: device.role },
                    Operation::Invite { role, expires, name_hint, .. } => LogOperation::Invite { role: *role, expires: *expires, name_hint: name_hint.clone() },
                    Operation::Join { device, .. } => LogOperation::Join { name: device.name.clone(), role: device.role },
                    Operation::RevokeDevice { device } => LogOperation::RevokeDevice { name: name_of(device) },
                    Operation::SetPolicy { .. } => LogOperation::SetPolicy {},
                    Operation::RotateSecret { .. } => LogOperation::RotateSecret {},
                    Operation::Share { guest, shares } => LogOperation::Share { guest: name_of(guest), shares: share_texts(state, shares) },
                };
                LogEntry { hash: entry.hash().to_hex(), author: name_of(&entry.author()), time: entry.contents().time, operation }
            })
            .collect()
    }
}

/// Every device of `state`, as `pal device list` shows it (a guest with what it reaches).
pub fn device_list(state: &membership::State) -> Vec<DeviceInfo> {
    state
        .devices
        .iter()
        .map(|(id, device)| DeviceInfo {
            name: device.record.name.clone(),
            id: id.to_hex(),
            role: device.record.role,
            status: device.status.into(),
            overlay_ipv4: device.record.overlay_ipv4.to_string(),
            overlay_ipv6: device.record.overlay_ipv6.to_string(),
            shares: state.shares.get(id).map(|s| share_texts(state, &s.shares)).unwrap_or_default(),
        })
        .collect()
}

/// Shares as a user types them: `nas:22,8000-8100`, or `nas` for every port.
pub fn share_texts(state: &membership::State, shares: &[membership::Share]) -> Vec<String> {
    shares
        .iter()
        .map(|share| {
            let name = state.devices.get(&share.device).map_or_else(|| share.device.to_hex(), |d| d.record.name.clone());
            if share.ports.is_empty() {
                name
            } else {
                format!("{name}:{}", share.ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
            }
        })
        .collect()
}

/// `--relay-rate`: Mbit/s (1 to 1,000,000), `unlimited` or `default`.
fn parse_relay_rate(text: &str) -> Result<membership::RelayRate, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "default" => Ok(membership::RelayRate::Default),
        "unlimited" | "none" => Ok(membership::RelayRate::Unlimited),
        number => match number.parse::<u32>() {
            Ok(mbit @ 1..=1_000_000) => Ok(membership::RelayRate::Mbit(mbit)),
            _ => Err(format!("the relay rate {text:?} is not a number of Mbit/s (1 to 1000000), \"unlimited\" or \"default\"")),
        },
    }
}
