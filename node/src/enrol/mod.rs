//! Enrolment: how a device comes to be a member, before it runs a node. `pal init` founds a
//! network; `pal join` redeems an invite code ([`join`]); `pal request` waits for an admin to
//! add it from its request code ([`request`]). The code formats are in [`invite`] and
//! [`request`], over the framing of [`codes`].

pub(crate) mod codes;
pub mod invite;
pub mod join;
pub mod request;

use crate::statedir::StateDir;
use anyhow::{Context, Result, bail};
use membership::{DeviceRecord, Entry, EntryContents, Log, Operation, Role, overlay};
use serde::{Deserialize, Serialize};

pub use crate::control::admission::{fingerprint, parse_fingerprint};

/// What `pal init` made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Founded {
    pub name: String,
    pub id: String,
    /// The network's fingerprint, for `pal request --network` on a device to be added.
    pub network: String,
    pub overlay_ipv4: String,
    pub overlay_ipv6: String,
}

/// `pal init`: a new network whose first admin is this device.
pub fn init(state: &StateDir, name: &str, unix: u64) -> Result<Founded> {
    check_new_device(state, name)?;
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
            time: unix,
            operation: Operation::Genesis { network_name: "cloudpal".into(), founder },
        },
        &identity.device,
        None,
    )?;
    let genesis_hash = genesis.hash().0;
    state.create_store(genesis)?;
    let network = membership::NetworkId(genesis_hash);
    Ok(Founded { name: name.to_owned(), id: me.to_hex(), network: fingerprint(&network), overlay_ipv4: overlay_ipv4.to_string(), overlay_ipv6: overlay_ipv6.to_string() })
}

/// The one check before a device is made: a valid name, and a state directory that holds no
/// device yet.
pub fn check_new_device(state: &StateDir, name: &str) -> Result<()> {
    membership::entry::check_name(name)?;
    if state.is_initialised() {
        bail!("{} already holds a device; use another --state directory", state.root().display());
    }
    Ok(())
}

/// Removes what a device that did not make it in left behind, so that the next try starts
/// clean.
pub(crate) fn discard(state: &StateDir) {
    for file in ["device.key", "static.key", "libp2p.key", "membership.redb", "guest-view.cbor"] {
        let _ = std::fs::remove_file(state.root().join(file));
    }
}

/// Writes a verified log to a new store in `state`.
pub(crate) fn persist(state: &StateDir, log: &Log) -> Result<()> {
    let mut entries = log.entries().cloned();
    let genesis = entries.next().context("empty log")?;
    let mut store = state.create_store(genesis)?;
    let rest: Vec<Entry> = entries.collect();
    for chunk in rest.chunks(membership::log::MAX_BATCH_ENTRIES) {
        store.ingest(chunk.to_vec()).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// Starts a log from a peer's first batch (its genesis, checked to be of `network` if given)
/// and ingests the rest; later batches go on the same log.
pub(crate) fn ingest_batch(log: &mut Option<Log>, batch: &[Vec<u8>], network: Option<membership::NetworkId>, who: &str) -> Result<()> {
    let mut rest = batch;
    if log.is_none() {
        let (first, tail) = rest.split_first().with_context(|| format!("the {who} sent an empty log"))?;
        let genesis = Entry::decode(first).with_context(|| format!("the {who} sent an invalid genesis"))?;
        let fresh = Log::from_genesis(genesis).with_context(|| format!("the {who} sent an invalid genesis"))?;
        if network.is_some_and(|network| fresh.network() != network) {
            bail!("the {who} belongs to another network than this invite");
        }
        *log = Some(fresh);
        rest = tail;
    }
    log.as_mut().context("no log")?.ingest_encoded(rest).with_context(|| format!("the {who} sent an invalid log"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The log holds the network id: owner-only whatever the umask (issue #12).
    #[test]
    fn the_membership_log_is_created_owner_only() {
        let root = std::env::temp_dir().join(format!("pal-enrol-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // SAFETY: umask only changes this process's file-creation mask; restored below.
        let old = unsafe { libc::umask(0o022) };
        let founded = init(&StateDir::new(&root), "laptop", 1_800_000_000);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        founded.expect("init");
        let mode = std::fs::metadata(root.join("membership.redb")).expect("log").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let founded = init(&StateDir::new(root.join("second")), "desktop", 1_800_000_000).expect("another network");
        assert_eq!(parse_fingerprint(&founded.network.to_ascii_uppercase().replace('-', "")).expect("parses"), founded.network);
        assert!(parse_fingerprint("not-a-fingerprint").is_err());
        let again = init(&StateDir::new(&root), "laptop", 1_800_000_000).expect_err("a second init");
        assert!(again.to_string().contains("already holds a device"), "{again}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
