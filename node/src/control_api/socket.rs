//! The local control socket: a Unix socket in the state directory, owner-only (0600). One JSON
//! request line in, one JSON response line out. The CLI is the only client.

use super::{ControlRequest, ControlResponse};
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Largest request line accepted on the socket.
pub const MAX_REQUEST_LEN: usize = 4096;

/// A request from the socket and where its answer goes.
pub type Incoming = (ControlRequest, oneshot::Sender<ControlResponse>);

/// Sends one request to the node running on `socket` and waits for its typed answer.
pub async fn call<T: DeserializeOwned>(socket: &Path, request: &ControlRequest) -> Result<T> {
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
        ControlResponse::Ok(value) => serde_json::from_value(value).context("the node sent an answer of another version; restart `pal up`"),
        ControlResponse::Error(message) => Err(anyhow::anyhow!(message)),
    }
}

/// Binds the control socket at `path`, owner-only from the start (the umask is tightened
/// around the bind, so there is no moment in which others could connect).
pub fn bind(path: &Path) -> Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    // SAFETY: umask only changes this process's file-creation mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.context("cannot open the control socket")?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts control connections and forwards each request to the event loop.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Incoming>) {
    // SAFETY: geteuid has no preconditions.
    let owner = unsafe { libc::geteuid() };
    while let Ok((stream, _)) = listener.accept().await {
        // The socket is 0600 already; this also holds if its mode is ever loosened.
        if !stream.peer_cred().is_ok_and(|cred| cred.uid() == owner || cred.uid() == 0) {
            continue;
        }
        let requests = requests.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read).take(MAX_REQUEST_LEN as u64);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<ControlRequest>(&line) {
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    if requests.send((request, reply)).await.is_err() {
                        return;
                    }
                    answer.await.unwrap_or_else(|_| ControlResponse::Error("the node is shutting down".into()))
                }
                Err(_) => ControlResponse::Error("unreadable control request".into()),
            };
            if let Ok(mut text) = serde_json::to_string(&response) {
                text.push('\n');
                let _ = write.write_all(text.as_bytes()).await;
            }
        });
    }
}
