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

/// Asks for a new session and waits (up to 5 s) until the exit's answer shows.
pub fn renew(state: &StateDir) -> anyhow::Result<()> {
    let before: ExitStatusReply = ask(state, ControlRequest::ExitStatus)?;
    let _: ExitStatusReply = ask(state, ControlRequest::ExitRenew)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now: ExitStatusReply = ask(state, ControlRequest::ExitStatus)?;
        if now.egress != before.egress || std::time::Instant::now() > deadline {
            if now.egress.is_empty() {
                println!("a new exit session; egress rotation is off, so the web still sees the exit's own address");
            } else if now.egress == before.egress {
                anyhow::bail!("the exit did not answer with a new egress address; see `pal exit status`");
            } else {
                print_status(&now);
            }
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
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
