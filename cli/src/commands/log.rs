//! `pal log [--json]`: the membership log, verified.

use super::ask;
use node::control::ControlRequest;
use node::statedir::StateDir;

pub fn run(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let log = ask(state, ControlRequest::Log)?;
    if json {
        println!("{log}");
        return Ok(());
    }
    for entry in log.as_array().into_iter().flatten() {
        let hash = entry["hash"].as_str().unwrap_or("");
        println!("{} {:<16} {}", &hash[..hash.len().min(12)], entry["author"].as_str().unwrap_or(""), entry["operation"]);
    }
    Ok(())
}
