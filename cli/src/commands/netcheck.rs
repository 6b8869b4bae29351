//! `pal netcheck [--json]`: what the running node found out about the network it is on —
//! UDP to CloudPal, NAT mapping behaviour (CloudPal's two-port check), public and reflexive
//! addresses, IPv6, the round trip to CloudPal, and whether its TCP 443 fallback answers.

use super::{ask, print_json};
use node::control_api::{ControlRequest, NetcheckReply};
use node::statedir::StateDir;

pub fn run(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let report: NetcheckReply = ask(state, ControlRequest::Netcheck)?;
    if json {
        return print_json(&report);
    }
    let yes_no = |value: bool| if value { "yes" } else { "no" };
    let Some(cloudpal) = &report.cloudpal else {
        println!("no CloudPal known yet: nothing to check against (is one in the network and up?)");
        return Ok(());
    };
    println!("CloudPal        {cloudpal}");
    println!("UDP             {}", if report.udp { "yes (CloudPal answers on the data port)" } else { "no answer from CloudPal over UDP" });
    println!("behind a NAT    {}", yes_no(report.behind_nat));
    let mapping = match report.nat_mapping.as_deref() {
        Some("endpoint-dependent") => "endpoint-dependent (symmetric: peers like it stay relayed; others are reached by birthday punching)",
        Some("endpoint-independent") => "endpoint-independent (direct paths punch easily)",
        Some(other) => other,
        None => "not known yet (CloudPal has not answered on both its ports)",
    };
    println!("NAT mapping     {mapping}");
    println!("public address  {}", report.public_address.as_deref().unwrap_or("-"));
    println!("reflexive       {}", if report.reflexive.is_empty() { "-".to_owned() } else { report.reflexive.join(", ") });
    println!("IPv6            {}", yes_no(report.ipv6));
    println!("CloudPal RTT    {}", report.cloudpal_rtt_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms")));
    let tcp = match (report.tcp_443, report.tcp_443_ms) {
        (Some(true), Some(ms)) => format!("yes ({ms:.1} ms; the fallback if UDP is blocked)"),
        (Some(true), None) => "yes".to_owned(),
        (Some(false), _) => "no answer from CloudPal's fallback".to_owned(),
        (None, _) => "- (CloudPal serves no fallback)".to_owned(),
    };
    println!("TCP 443         {tcp}");
    Ok(())
}
