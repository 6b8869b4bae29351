//! The local control socket: a Unix socket in the state directory, owner-only (0600). One JSON
//! request line in, one JSON response line out. The CLI is the only client.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Largest request line accepted on the socket.
pub const MAX_REQUEST_LEN: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    DeviceList,
    Log,
    Invite { name: String, role: String, ttl_seconds: u64 },
    Revoke { name: String },
    /// Add the device of a request code with `role` and deliver the log to it.
    Add { code: String, role: String },
    Ping { name: String, count: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlResponse {
    Ok(serde_json::Value),
    Error(String),
}

/// Sends one request to the node running on `socket` and waits for its answer.
pub async fn call(socket: &Path, request: &ControlRequest) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| "the node is not running; start it with `pal up`".to_string())?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut reader = BufReader::new(read);
    let mut answer = String::new();
    reader.read_line(&mut answer).await.context("the node closed the control socket")?;
    match serde_json::from_str::<ControlResponse>(&answer).context("the node sent an unreadable answer")? {
        ControlResponse::Ok(value) => Ok(value),
        ControlResponse::Error(message) => Err(anyhow::anyhow!(message)),
    }
}
