//! `pal ping NAME`: echo requests over the overlay, each reply with its path.

use super::ask;
use anyhow::bail;
use node::control_api::{ControlRequest, PingReport};
use node::statedir::StateDir;

pub fn run(state: &StateDir, name: String, count: u32) -> anyhow::Result<()> {
    let report: PingReport = ask(state, ControlRequest::Ping { name: name.clone(), count })?;
    for reply in &report.replies {
        println!("reply from {name}: seq={} time={:.2} ms path={}", reply.seq, reply.rtt_ms, reply.path);
    }
    println!("{} sent, {} received", report.sent, report.received);
    if report.received == 0 {
        bail!("no reply from {name}");
    }
    Ok(())
}
