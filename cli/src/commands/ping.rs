//! `pal ping NAME`: echo requests over the overlay, each reply with its path.

use super::ask;
use anyhow::bail;
use node::control::ControlRequest;
use node::statedir::StateDir;

pub fn run(state: &StateDir, name: String, count: u32) -> anyhow::Result<()> {
    let result = ask(state, ControlRequest::Ping { name: name.clone(), count })?;
    for reply in result["replies"].as_array().into_iter().flatten() {
        println!(
            "reply from {name}: seq={} time={:.2} ms path={}",
            reply["seq"],
            reply["rtt_ms"].as_f64().unwrap_or(0.0),
            reply["path"].as_str().unwrap_or("?")
        );
    }
    let (sent, received) = (result["sent"].as_u64().unwrap_or(0), result["received"].as_u64().unwrap_or(0));
    println!("{sent} sent, {received} received");
    if received == 0 {
        bail!("no reply from {name}");
    }
    Ok(())
}
