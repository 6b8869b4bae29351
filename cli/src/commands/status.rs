//! `pal status [--json]`.

use super::ask;
use node::control::ControlRequest;
use node::statedir::StateDir;

pub fn run(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let status = ask(state, ControlRequest::Status)?;
    if json {
        println!("{status}");
        return Ok(());
    }
    let device = &status["device"];
    if device["status"] == "revoked" {
        anyhow::bail!("this device has been revoked from the network; its tunnel is stopped");
    }
    println!("{} {} {}", device["name"].as_str().unwrap_or("?"), device["overlay_ipv4"].as_str().unwrap_or(""), device["overlay_ipv6"].as_str().unwrap_or(""));
    for peer in status["peers"].as_array().into_iter().flatten() {
        let rtt = peer["rtt_ms"].as_f64().map(|r| format!("{r:.1} ms")).unwrap_or_else(|| "-".into());
        println!(
            "  {:<16} {:<16} {:<7} rtt {:<9} rx {} tx {}",
            peer["name"].as_str().unwrap_or(""),
            peer["overlay_ipv4"].as_str().unwrap_or(""),
            peer["path"].as_str().unwrap_or(""),
            rtt,
            peer["rx_bytes"],
            peer["tx_bytes"]
        );
    }
    Ok(())
}
