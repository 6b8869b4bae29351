//! `pal exit use|off|status`: the personal VPN (all internet traffic through CloudPal).

use super::{ask, print_json};
use node::control_api::{ControlRequest, ExitStatusReply};
use node::statedir::StateDir;

pub fn use_exit(state: &StateDir, name: Option<String>, allow_lan: bool) -> anyhow::Result<()> {
    let status: ExitStatusReply = ask(state, ControlRequest::ExitUse { name, allow_lan })?;
    print_status(&status);
    Ok(())
}

pub fn off(state: &StateDir) -> anyhow::Result<()> {
    let status: ExitStatusReply = ask(state, ControlRequest::ExitOff)?;
    print_status(&status);
    Ok(())
}

pub fn status(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let status: ExitStatusReply = ask(state, ControlRequest::ExitStatus)?;
    if json {
        return print_json(&status);
    }
    print_status(&status);
    Ok(())
}

fn print_status(status: &ExitStatusReply) {
    let Some(exit) = &status.exit else {
        println!("exit: {}", status.state);
        return;
    };
    println!("exit: {exit}, {}", status.state);
    println!("  LAN: {}", if status.allow_lan { "reachable" } else { "blocked" });
    if status.egress.is_empty() {
        println!("  egress: the exit's own address");
    } else {
        println!("  egress: {}", status.egress.join(", "));
    }
    println!("  DNS: {}", status.resolver.as_deref().unwrap_or("through the tunnel only (port 53 outside it is dropped)"));
}
