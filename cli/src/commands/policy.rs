//! `pal policy show|set`: the network's exit and firewall policy (admins set it; it travels in
//! the log and CloudPal enforces it).

use super::{ask, print_json};
use node::control_api::{ControlRequest, PolicyChange, PolicyReply};
use node::statedir::StateDir;

pub fn show(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let policy: PolicyReply = ask(state, ControlRequest::PolicyShow)?;
    if json {
        return print_json(&policy);
    }
    print_policy(&policy);
    Ok(())
}

pub fn set(state: &StateDir, change: PolicyChange) -> anyhow::Result<()> {
    // Checked here too, so a typo is refused before anything is sent.
    for rule in change.allow.iter().chain(&change.deny) {
        rule.parse::<membership::Rule>()?;
    }
    let policy: PolicyReply = ask(state, ControlRequest::PolicySet(change))?;
    print_policy(&policy);
    Ok(())
}

fn print_policy(policy: &PolicyReply) {
    let on = |b: bool| if b { "on" } else { "off" };
    let list = |items: &[String]| if items.is_empty() { "-".to_owned() } else { items.join(", ") };
    println!("mesh-only: {}", on(policy.mesh_only));
    println!("allow: {}", list(&policy.allow));
    println!("deny: {}", list(&policy.deny));
    println!("exit devices: {}", policy.exit_devices.as_deref().map_or("every member".to_owned(), list));
    println!("rotate egress: {}", on(policy.rotate_egress));
    println!("logging: {}", on(policy.logging));
    println!("block lists: {}", list(&policy.block_lists));
    // Plain UDP is named as such: it is not encrypted between CloudPal and the upstream.
    let upstreams: Vec<String> = policy.dns_upstreams.iter().map(|u| if u.starts_with("udp://") { format!("{u} (plain UDP, unencrypted)") } else { u.clone() }).collect();
    let relay = match policy.relay_mbit {
        Some(mbit) if policy.relay_default => format!("{mbit} Mbit/s in all (the default), shared fairly"),
        Some(mbit) => format!("{mbit} Mbit/s in all, shared fairly"),
        None => "unlimited".to_owned(),
    };
    println!("relay rate: {relay}");
    println!("DNS upstreams: {}", if upstreams.is_empty() { "CloudPal's own system resolvers".to_owned() } else { upstreams.join(", ") });
}
