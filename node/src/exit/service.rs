//! The exit's decisions, sans-IO: from the membership state (devices, roles, policy) to what
//! CloudPal forwards, and whether a device may choose an exit at all.

use super::ExitRules;
use membership::{Role, Rule, State};
use protocol::DeviceId;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What CloudPal's exit forwards now. `egress` holds each device's session address when
/// egress rotation is on (the caller keeps the sessions).
pub fn exit_rules(state: &State, egress: &BTreeMap<DeviceId, Vec<IpAddr>>) -> ExitRules {
    let policy = &state.policy;
    let mut sources = Vec::new();
    let mut mapped = Vec::new();
    for (id, device) in state.active_devices() {
        if !state.may_use_exit(id) {
            continue;
        }
        let own = [IpAddr::V4(device.record.overlay_ipv4), IpAddr::V6(device.record.overlay_ipv6)];
        sources.extend(own);
        if policy.exit.rotate_egress {
            for address in egress.get(id).into_iter().flatten() {
                if let Some(source) = own.iter().find(|s| s.is_ipv4() == address.is_ipv4()) {
                    mapped.push((*source, *address));
                }
            }
        }
    }
    let nets = |rules: &[Rule]| rules.iter().filter_map(Rule::net).collect();
    ExitRules {
        sources,
        mesh_only: policy.firewall.mesh_only,
        allow: nets(&policy.firewall.allow),
        deny: nets(&policy.firewall.deny),
        egress: mapped,
        logging: policy.exit.logging,
        allow_domains: policy.firewall.allow.iter().any(|r| r.domain().is_some()),
        deny_domains: policy.firewall.deny.iter().any(|r| r.domain().is_some()),
    }
}

/// The resolver's part of the policy on CloudPal: device names, who may ask, upstreams,
/// block lists and the firewall's domains.
pub fn dns_config(state: &State) -> crate::dns::server::DnsConfig {
    let mut config = crate::dns::server::DnsConfig::default();
    // Guests neither ask CloudPal's resolver nor learn the devices' names from it.
    for (_, device) in state.active_devices().filter(|(_, d)| d.record.role != Role::Guest) {
        config.devices.insert(device.record.name.to_ascii_lowercase(), (device.record.overlay_ipv4, device.record.overlay_ipv6));
        config.clients.extend([IpAddr::V4(device.record.overlay_ipv4), IpAddr::V6(device.record.overlay_ipv6)]);
    }
    config.upstreams = state.policy.dns.upstreams.clone();
    config.block_lists = state.policy.dns.blocklists.clone();
    let firewall = &state.policy.firewall;
    config.rule_domains = firewall.allow.iter().chain(&firewall.deny).filter_map(Rule::domain).map(str::to_owned).collect();
    config.logging = state.policy.exit.logging;
    config
}

/// Whether an address the resolver found for `domain` belongs in the allow or the deny sets
/// (deny wins when both lists name it).
pub fn domain_list(state: &State, domain: &str) -> Option<&'static str> {
    let names = |rules: &[Rule]| rules.iter().any(|r| r.domain() == Some(domain));
    if names(&state.policy.firewall.deny) {
        Some("deny")
    } else if names(&state.policy.firewall.allow) {
        Some("allow")
    } else {
        None
    }
}

/// The exit a device asked for, if the log lets it: `name` (or, without a name, the network's
/// CloudPal) must be an active CloudPal, and the policy must let `me` use it.
pub fn choose_exit(state: &State, me: &DeviceId, name: Option<&str>) -> Result<DeviceId, String> {
    let cloudpals: Vec<(&DeviceId, &membership::DeviceState)> =
        state.active_devices().filter(|(id, d)| d.record.role == Role::CloudPal && *id != me).collect();
    let chosen = match name {
        Some(name) => state
            .active_devices()
            .find(|(_, d)| d.record.name == name)
            .ok_or_else(|| format!("no active device named {name:?}; see `pal device list`"))
            .and_then(|(id, d)| if d.record.role == Role::CloudPal && id != me { Ok(id) } else { Err(format!("{name} is not a CloudPal; only a CloudPal is an exit")) })?,
        None => match cloudpals.as_slice() {
            [(id, _)] => *id,
            [] => return Err("this network has no CloudPal to use as its exit; add one with `pal device add --role cloudpal`".into()),
            _ => return Err("this network has several CloudPals; name one: `pal exit use NAME`".into()),
        },
    };
    let policy = &state.policy;
    // A guest is not shown the policy: CloudPal, which holds it, answers its exit session.
    if state.devices.get(me).is_some_and(|d| d.record.role == Role::Guest) {
        return Ok(*chosen);
    }
    if policy.firewall.mesh_only {
        return Err("the network's policy is mesh-only: no internet through CloudPal (an admin can `pal policy set --mesh-only off`)".into());
    }
    if !state.may_use_exit(me) {
        return Err("the network's policy does not let this device use the exit".into());
    }
    Ok(*chosen)
}

/// A random address of `pools` (one family) that is not in `taken`: a host address of a
/// network (not its first or last for IPv4 networks of four or more), `None` when the pools
/// are empty or every draw collided.
pub fn draw_address(pools: &[membership::IpNet], taken: &[IpAddr], rng: &mut impl rand_core::Rng) -> Option<IpAddr> {
    if pools.is_empty() {
        return None;
    }
    for _ in 0..32 {
        let net = pools[(rng.next_u32() as usize) % pools.len()];
        let address = match net.address {
            IpAddr::V4(base) => {
                let host_bits = 32 - u32::from(net.len);
                let span = 1u64 << host_bits;
                let offset = match span {
                    1 | 2 => rng.next_u64() % span,
                    _ => 1 + rng.next_u64() % (span - 2),
                };
                IpAddr::from(((u64::from(u32::from(base)) + offset) as u32).to_be_bytes())
            }
            IpAddr::V6(base) => {
                let host_bits = 128 - u32::from(net.len);
                let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
                let offset = if host_bits == 0 { 0 } else { (random & (u128::MAX >> (128 - host_bits))).max(1) };
                IpAddr::from((u128::from(base) | offset).to_be_bytes())
            }
        };
        if !taken.contains(&address) {
            return Some(address);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use membership::testkit::Network;
    use membership::{ExitDevices, Operation, Policy};

    fn network() -> (Network, DeviceId, DeviceId, DeviceId) {
        let mut net = Network::new(13);
        let founder = net.founder.key.clone();
        let cloudpal = net.add("cloudpal", Role::CloudPal);
        let phone = net.add("phone", Role::Member);
        let me = founder.public_key().device_id();
        (net, me, cloudpal.key.public_key().device_id(), phone.key.public_key().device_id())
    }

    fn set(net: &mut Network, policy: Policy) {
        let founder = net.founder.key.clone();
        net.append(&founder, Operation::SetPolicy { policy });
    }

    #[test]
    fn every_member_may_use_the_exit_by_default_and_the_cloudpal_is_the_default_exit() {
        let (net, me, cloudpal, _) = network();
        let state = net.log.state();
        assert_eq!(choose_exit(state, &me, None), Ok(cloudpal));
        assert_eq!(choose_exit(state, &me, Some("cloudpal")), Ok(cloudpal));
        assert!(choose_exit(state, &me, Some("phone")).expect_err("a phone").contains("not a CloudPal"));
        assert!(choose_exit(state, &me, Some("nobody")).expect_err("nobody").contains("no active device"));
        let rules = exit_rules(state, &BTreeMap::new());
        assert_eq!(rules.sources.len(), 6, "three devices, v4 and v6 each");
        assert!(!rules.mesh_only && !rules.logging && rules.egress.is_empty());
    }

    #[test]
    fn mesh_only_and_the_device_list_refuse_the_exit() {
        let (mut net, me, _, phone) = network();
        let mut policy = Policy::default();
        policy.firewall.mesh_only = true;
        set(&mut net, policy.clone());
        assert!(choose_exit(net.log.state(), &me, None).expect_err("mesh-only").contains("mesh-only"));
        assert!(exit_rules(net.log.state(), &BTreeMap::new()).mesh_only);

        policy.firewall.mesh_only = false;
        policy.exit.devices = ExitDevices::Only(vec!["phone".into()]);
        set(&mut net, policy);
        let state = net.log.state();
        assert!(choose_exit(state, &me, None).is_err(), "the founder is not on the list");
        assert_eq!(choose_exit(state, &phone, None).map(|_| ()), Ok(()));
        let phone_v4 = IpAddr::V4(state.devices[&phone].record.overlay_ipv4);
        assert_eq!(exit_rules(state, &BTreeMap::new()).sources.iter().filter(|s| s.is_ipv4()).collect::<Vec<_>>(), vec![&phone_v4]);
    }

    #[test]
    fn pool_draws_stay_inside_the_pool_avoid_taken_addresses_and_skip_network_and_broadcast() {
        use rand_core::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let net = |t: &str| match t.parse::<Rule>().expect("rule") {
            Rule::Net(n) => n,
            Rule::Domain(_) => panic!("a network"),
        };
        let v4 = [net("198.51.100.0/29")];
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let address = draw_address(&v4, &[], &mut rng).expect("an address");
            assert!(v4[0].contains(address));
            assert_ne!(address, "198.51.100.0".parse::<IpAddr>().expect("v4"));
            assert_ne!(address, "198.51.100.7".parse::<IpAddr>().expect("v4"));
            seen.insert(address);
        }
        assert_eq!(seen.len(), 6, "every host address gets drawn");
        let taken: Vec<IpAddr> = seen.iter().copied().filter(|a| *a != "198.51.100.3".parse::<IpAddr>().expect("v4")).collect();
        assert_eq!(draw_address(&v4, &taken, &mut rng), Some("198.51.100.3".parse().expect("v4")));
        let v6 = [net("2001:db8:2::/64")];
        let a = draw_address(&v6, &[], &mut rng).expect("v6");
        let b = draw_address(&v6, &[a], &mut rng).expect("v6");
        assert!(v6[0].contains(a) && v6[0].contains(b) && a != b);
        assert_eq!(draw_address(&[net("192.0.2.9/32")], &[], &mut rng), Some("192.0.2.9".parse().expect("v4")));
        assert_eq!(draw_address(&[], &[], &mut rng), None);
    }

    #[test]
    fn a_revoked_device_is_no_source_and_egress_maps_only_with_rotation_on() {
        let (mut net, _, _, phone) = network();
        let founder = net.founder.key.clone();
        let egress = BTreeMap::from([(phone, vec!["203.0.113.77".parse().expect("v4"), "2001:db8:77::9".parse().expect("v6")])]);
        assert!(exit_rules(net.log.state(), &egress).egress.is_empty(), "rotation is off by default");
        let mut policy = Policy::default();
        policy.exit.rotate_egress = true;
        set(&mut net, policy);
        let rules = exit_rules(net.log.state(), &egress);
        assert_eq!(rules.egress.len(), 2);
        let phone_v4 = IpAddr::V4(net.log.state().devices[&phone].record.overlay_ipv4);
        assert!(rules.egress.contains(&(phone_v4, "203.0.113.77".parse().expect("v4"))));
        net.append(&founder, Operation::RevokeDevice { device: phone });
        let rules = exit_rules(net.log.state(), &egress);
        assert!(!rules.sources.contains(&phone_v4) && rules.egress.is_empty());
    }
}
