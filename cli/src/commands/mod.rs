//! One file per subcommand.

pub mod device;
pub mod dns;
pub mod exit;
pub mod init;
pub mod join;
pub mod log;
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
