//! `pal dns on|off|status`: DNS through the network's CloudPal without the exit.

use super::{ask, print_json};
use node::control::DnsReply;
use node::control_api::ControlRequest;
use node::statedir::StateDir;

pub fn set(state: &StateDir, on: bool) -> anyhow::Result<()> {
    let reply: DnsReply = ask(state, ControlRequest::Dns { on })?;
    print_reply(&reply);
    Ok(())
}

pub fn status(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let reply: DnsReply = ask(state, ControlRequest::DnsStatus)?;
    if json {
        return print_json(&reply);
    }
    print_reply(&reply);
    Ok(())
}

fn print_reply(reply: &DnsReply) {
    match &reply.resolver {
        Some(resolver) => println!("DNS: through CloudPal at {resolver}"),
        None => println!("DNS: the system's own resolvers"),
    }
}
