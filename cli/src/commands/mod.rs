//! One file per subcommand.

pub mod device;
pub mod dns;
pub mod exit;
pub mod graph;
pub mod init;
pub mod join;
pub mod log;
pub mod netcheck;
pub mod ping;
pub mod policy;
pub mod request;
pub mod status;
pub mod up;

use node::control_api::{ControlRequest, call};
use node::statedir::StateDir;
use serde::de::DeserializeOwned;

/// Sends one request to the running node of `state` and reads its typed reply.
pub fn ask<T: DeserializeOwned>(state: &StateDir, request: ControlRequest) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(call(&state.socket_path(), &request))
}

/// `--json` output: the reply as the node sent it.
pub fn print_json<T: serde::Serialize>(reply: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(reply)?);
    Ok(())
}

/// A flag's duration: `90s`, `15m`, `1h`, `7d`, in seconds.
pub fn parse_duration(flag: &str, text: &str) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("{flag} {text:?} is not a duration like 30m, 1h or 7d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number.checked_mul(scale).filter(|s| *s > 0).ok_or_else(bad)
}
