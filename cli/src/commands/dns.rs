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

pub fn log(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let lines: Vec<node::dns::resolver::LoggedQuery> = ask(state, ControlRequest::DnsLog)?;
    if json {
        return print_json(&lines);
    }
    if lines.is_empty() {
        println!("no queries logged (logging is off unless an admin runs `pal policy set --logging on`)");
    }
    for line in lines {
        println!("{:>6}s ago  {:<40} {:<6} {:<12} from {}", line.seconds_ago, line.name, line.kind, line.outcome, line.client);
    }
    Ok(())
}

fn print_reply(reply: &DnsReply) {
    match &reply.resolver {
        Some(resolver) => println!("DNS: through CloudPal at {resolver}"),
        None => println!("DNS: the system's own resolvers"),
    }
}
