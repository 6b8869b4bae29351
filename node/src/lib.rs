//! The CloudPal node runtime (DESIGN.md "Workspace"): one tokio event loop owning the libp2p
//! swarm, the UDP data-plane socket and the TUN device, driving `protocol` and `membership`;
//! plus the local pieces the CLI needs (state directory, invite codes, control socket).

pub mod batch;
pub mod connected;
mod codes;
pub mod control;
pub mod dataplane;
pub mod icmp;
pub mod invite;
pub mod join;
pub mod messages;
pub mod presence;
pub mod request;
pub mod runtime;
pub mod statedir;

/// The version every `pal` binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

use anyhow::{Result, bail};
use membership::{DeviceRecord, Entry, EntryContents, Operation, Role, Store, overlay};
use statedir::StateDir;

/// `pal init`: a new network whose first admin is this device.
pub fn init(state: &StateDir, name: &str) -> Result<serde_json::Value> {
    if !membership::entry::validate_name(name) {
        bail!("{name:?} is not a valid device name: use letters, digits, '-', '_' or '.'");
    }
    if state.is_initialised() {
        bail!("{} already holds a network; use another --state directory", state.root().display());
    }
    let identity = state.create_identity()?;
    let me = identity.device.public_key().device_id();
    let (overlay_ipv4, overlay_ipv6) = overlay::derive(&me, &me, 0);
    let founder = DeviceRecord {
        name: name.to_owned(),
        signing_key: identity.device.public_key(),
        static_key: identity.static_secret.public_key(),
        role: Role::Admin,
        overlay_ipv4,
        overlay_ipv6,
    };
    let genesis = Entry::sign(
        EntryContents {
            network: None,
            parents: Vec::new(),
            author: identity.device.public_key(),
            time: runtime::unix_now(),
            operation: Operation::Genesis { network_name: "cloudpal".into(), founder },
        },
        &identity.device,
        None,
    )?;
    Store::create(&state.store_path(), genesis).map_err(|e| anyhow::anyhow!("cannot create the log: {e}"))?;
    Ok(serde_json::json!({
        "name": name,
        "id": me.to_hex(),
        "overlay_ipv4": overlay_ipv4.to_string(),
        "overlay_ipv6": overlay_ipv6.to_string(),
    }))
}
