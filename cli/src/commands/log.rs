//! `pal log [--json]`: the membership log, verified.

use super::{ask, print_json};
use node::control_api::{ControlRequest, LogEntry};
use node::statedir::StateDir;

pub fn run(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let log: Vec<LogEntry> = ask(state, ControlRequest::Log)?;
    if json {
        return print_json(&log);
    }
    for entry in &log {
        println!("{} {:<16} {}", &entry.hash[..entry.hash.len().min(12)], entry.author, entry.operation);
    }
    Ok(())
}
