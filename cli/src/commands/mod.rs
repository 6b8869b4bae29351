//! One file per subcommand.

pub mod device;
pub mod init;
pub mod join;
pub mod log;
pub mod ping;
pub mod request;
pub mod status;
pub mod up;

use node::control::{ControlRequest, call};
use node::statedir::StateDir;

/// Sends one request to the running node of `state`.
pub fn ask(state: &StateDir, request: ControlRequest) -> anyhow::Result<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(call(&state.socket_path(), &request))
}
