//! `pal device invite|add|list|revoke`.

use super::ask;
use anyhow::Context;
use node::control::ControlRequest;
use node::invite::InviteCode;
use node::statedir::StateDir;
use std::io::IsTerminal;

pub fn invite(state: &StateDir, name: String, role: String, ttl: &str, qr: bool) -> anyhow::Result<()> {
    let ttl_seconds = parse_duration(ttl)?;
    let answer = ask(state, ControlRequest::Invite { name: name.clone(), role, ttl_seconds })?;
    let code = answer["code"].as_str().context("the node returned no code")?;
    println!("invite for {name} ({}), valid for {ttl}; on the new device run: pal join CODE --name {name}", answer["role"].as_str().unwrap_or("member"));
    if qr || std::io::stdout().is_terminal() {
        // Scanning yields the code in upper case; `pal join` takes either case.
        println!("{}", InviteCode::decode(code)?.qr()?);
    }
    println!("{code}");
    Ok(())
}

/// Adds the device of a request code and waits until it has the log.
pub fn add(state: &StateDir, code: &str, role: String) -> anyhow::Result<()> {
    let answer = ask(state, ControlRequest::Add { code: code.trim().to_owned(), role })?;
    println!(
        "{} was added as {} and has the log",
        answer["added"].as_str().unwrap_or("the device"),
        answer["role"].as_str().unwrap_or("member")
    );
    Ok(())
}

pub fn list(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let devices = ask(state, ControlRequest::DeviceList)?;
    if json {
        println!("{devices}");
        return Ok(());
    }
    for device in devices.as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<9} {:<8} {:<16} {}",
            device["name"].as_str().unwrap_or(""),
            device["role"].as_str().unwrap_or(""),
            device["status"].as_str().unwrap_or(""),
            device["overlay_ipv4"].as_str().unwrap_or(""),
            device["overlay_ipv6"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub fn revoke(state: &StateDir, name: String) -> anyhow::Result<()> {
    ask(state, ControlRequest::Revoke { name: name.clone() })?;
    println!("{name} is revoked");
    Ok(())
}

/// `90s`, `15m`, `1h`, `7d`.
fn parse_duration(text: &str) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("--ttl {text:?} is not a duration like 30m, 1h or 7d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number.checked_mul(scale).filter(|s| *s > 0).ok_or_else(bad)
}
