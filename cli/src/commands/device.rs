//! `pal device invite|add|list|revoke|share|unshare`.

use super::{ask, print_json};
use node::control_api::{AddReply, ControlRequest, DeviceInfo, DeviceStatusName, InviteReply, RevokeReply, ShareReply};
use node::enrol::invite::InviteCode;
use node::statedir::StateDir;
use std::io::IsTerminal;

pub fn invite(state: &StateDir, name: String, role: &str, ttl: &str, shares: Vec<String>, qr: bool) -> anyhow::Result<()> {
    let ttl_seconds = super::parse_duration("--ttl", ttl)?;
    let role = role.parse().map_err(anyhow::Error::msg)?;
    let answer: InviteReply = ask(state, ControlRequest::Invite { name: name.clone(), role, ttl_seconds, shares })?;
    println!("invite for {name} ({}), valid for {ttl}; on the new device run: pal join CODE --name {name}", answer.role.as_str());
    if qr || std::io::stdout().is_terminal() {
        // Scanning yields the code in upper case; `pal join` takes either case.
        println!("{}", InviteCode::decode(&answer.code)?.qr()?);
    }
    println!("{}", answer.code);
    Ok(())
}

/// Adds the device of a request code and waits until it has the log.
pub fn add(state: &StateDir, code: &str, role: &str) -> anyhow::Result<()> {
    let role = role.parse().map_err(anyhow::Error::msg)?;
    let answer: AddReply = ask(state, ControlRequest::Add { code: code.trim().to_owned(), role })?;
    println!("{} was added as {} and has the log", answer.added, answer.role.as_str());
    Ok(())
}

pub fn list(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let devices: Vec<DeviceInfo> = ask(state, ControlRequest::DeviceList)?;
    if json {
        return print_json(&devices);
    }
    for device in &devices {
        let status = match device.status {
            DeviceStatusName::Active => "active",
            DeviceStatusName::Revoked => "revoked",
        };
        let shares = if device.shares.is_empty() { String::new() } else { format!("  reaches {}", device.shares.join(" ")) };
        println!("{:<16} {:<9} {:<8} {:<16} {}{shares}", device.name, device.role.as_str(), status, device.overlay_ipv4, device.overlay_ipv6);
    }
    Ok(())
}

pub fn revoke(state: &StateDir, name: String) -> anyhow::Result<()> {
    let answer: RevokeReply = ask(state, ControlRequest::Revoke { name })?;
    println!("{} is revoked", answer.revoked);
    Ok(())
}


/// `pal device share GUEST DEVICE[:PORTS]...` and `pal device unshare GUEST DEVICE...`.
pub fn share(state: &StateDir, guest: String, devices: Vec<String>, unshare: bool) -> anyhow::Result<()> {
    let answer: ShareReply = ask(state, ControlRequest::Share { guest, devices, unshare })?;
    if answer.shares.is_empty() {
        println!("{} reaches nothing now", answer.guest);
    } else {
        println!("{} reaches {}", answer.guest, answer.shares.join(" "));
    }
    Ok(())
}
