//! `pal status [--json] [--graph FILE]`.

use super::{ask, print_json};
use node::control::REVOKED;
use node::control_api::{ControlRequest, DeviceStatusName, StatusReply};
use node::statedir::StateDir;

pub fn run(state: &StateDir, json: bool, graph: Option<&std::path::Path>) -> anyhow::Result<()> {
    let status: StatusReply = ask(state, ControlRequest::Status)?;
    if let Some(path) = graph {
        std::fs::write(path, super::graph::svg(&status)).map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
        if !json {
            println!("wrote {}", path.display());
        }
    }
    if json {
        return print_json(&status);
    }
    let device = &status.device;
    if device.status == DeviceStatusName::Revoked {
        anyhow::bail!("{REVOKED}");
    }
    println!(
        "{} {} {}  network {}",
        device.name.as_deref().unwrap_or("?"),
        device.overlay_ipv4.as_deref().unwrap_or(""),
        device.overlay_ipv6.as_deref().unwrap_or(""),
        device.network
    );
    if let Some(nat) = &status.nat {
        let punches = status.punches;
        println!("  NAT {nat}; birthday punches: {} opened, {} sprays ({} probes)", punches.opened, punches.sprays, punches.probes);
    }
    for peer in &status.peers {
        let rtt = peer.rtt_ms.map(|r| format!("{r:.1} ms")).unwrap_or_else(|| "-".into());
        println!("  {:<16} {:<16} {:<7} rtt {:<9} rx {} tx {}", peer.name, peer.overlay_ipv4, peer.path.to_string(), rtt, peer.rx_bytes, peer.tx_bytes);
    }
    Ok(())
}
