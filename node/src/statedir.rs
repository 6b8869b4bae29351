//! The state directory: keys (0600), the membership store, the control socket, the lock that
//! keeps a second `pal up` away, and the cache of peer addresses.

use anyhow::{Context, Result, bail};
use membership::Store;
use protocol::{DeviceSigningKey, StaticSecret};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where state lives when `--state` is not given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cloudpal";

/// A device's three independent keys (DESIGN.md "Keys and identity").
pub struct Identity {
    pub device: DeviceSigningKey,
    pub static_secret: StaticSecret,
    /// The libp2p identity's ed25519 seed.
    pub libp2p: [u8; 32],
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Identity(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// Holds the lock on a state directory while a node runs.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn store_path(&self) -> PathBuf {
        self.root.join("membership.redb")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.root.join("pal.sock")
    }

    /// CloudPal: the copies of block lists fetched from URLs.
    pub fn block_list_dir(&self) -> PathBuf {
        self.root.join("block-lists")
    }

    pub fn peers_path(&self) -> PathBuf {
        self.root.join("peers.txt")
    }

    /// A guest's view of its network (a guest holds no log).
    pub fn guest_view_path(&self) -> PathBuf {
        self.root.join("guest-view.cbor")
    }

    pub fn is_initialised(&self) -> bool {
        self.store_path().exists() || self.guest_view_path().exists()
    }

    /// The membership this device runs on: its log, or (a guest) its view.
    pub fn open_book(&self, me: &protocol::DeviceId) -> Result<crate::control::book::Book> {
        let path = self.guest_view_path();
        if !path.exists() {
            return Ok(self.open_store()?.into());
        }
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let (network, view) = crate::control::book::decode_view(&bytes).map_err(anyhow::Error::msg)?;
        let book = crate::control::book::GuestBook::new(network, *me, view).map_err(|e| anyhow::anyhow!("the guest view in {} does not check: {e}", self.root.display()))?;
        Ok(book.into())
    }

    /// Keeps a guest's view: written beside and renamed over, so a crash leaves the old one or
    /// the new one, never half of either.
    pub fn save_guest_view(&self, network: &membership::NetworkId, view: &[Vec<u8>]) -> Result<()> {
        let path = self.guest_view_path();
        let fresh = self.root.join("guest-view.cbor.new");
        write_private(&fresh, &crate::control::book::encode_view(network, view))?;
        std::fs::rename(&fresh, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Creates the directory (0700) and fresh keys; refuses to overwrite existing ones.
    pub fn create_identity(&self) -> Result<Identity> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("cannot create state directory {}", self.root.display()))?;
        if self.root.join("device.key").exists() {
            bail!("{} already holds a device; use another --state directory", self.root.display());
        }
        let mut rng = os_rng()?;
        let identity = Identity {
            device: DeviceSigningKey::generate(&mut rng),
            static_secret: StaticSecret::generate(&mut rng),
            libp2p: {
                let mut seed = [0u8; 32];
                rng.fill_bytes(&mut seed);
                seed
            },
        };
        write_secret(&self.root.join("device.key"), identity.device.expose_secret())?;
        write_secret(&self.root.join("static.key"), identity.static_secret.expose_secret())?;
        write_secret(&self.root.join("libp2p.key"), &identity.libp2p)?;
        Ok(identity)
    }

    pub fn load_identity(&self) -> Result<Identity> {
        if !self.root.join("device.key").exists() {
            bail!("no device in {}; run `pal init` or `pal join` first", self.root.display());
        }
        Ok(Identity {
            device: DeviceSigningKey::from_bytes(&read_secret(&self.root.join("device.key"))?),
            static_secret: StaticSecret::from_bytes(read_secret(&self.root.join("static.key"))?),
            libp2p: read_secret(&self.root.join("libp2p.key"))?,
        })
    }

    pub fn open_store(&self) -> Result<Store> {
        // The log holds the network id: owner-only, also in a directory made before this rule.
        let _ = std::fs::set_permissions(self.store_path(), std::fs::Permissions::from_mode(0o600));
        Store::open(&self.store_path())
            .map_err(|e| anyhow::anyhow!("cannot open the membership log in {}: {e}", self.root.display()))
    }

    /// A new store holding `genesis`, created owner-only (0600) whatever the umask: the file
    /// exists with its mode before redb writes anything into it.
    pub fn create_store(&self, genesis: membership::Entry) -> Result<Store> {
        let path = self.store_path();
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create the membership log in {}", self.root.display()))?;
        Store::create(&path, genesis).map_err(|e| anyhow::anyhow!("cannot create the membership log: {e}"))
    }

    /// Takes the run lock; fails if another `pal up` holds it.
    pub fn lock(&self) -> Result<RunLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.root.join("pal.lock"))
            .with_context(|| format!("cannot open the lock in {}", self.root.display()))?;
        if file.try_lock().is_err() {
            bail!("a node is already running on {}", self.root.display());
        }
        Ok(RunLock { _file: file })
    }

    /// Peer addresses remembered from earlier runs (one multiaddr a line). They expire: a
    /// cache not refreshed for [`PEER_CACHE_TTL`] is deleted rather than used (PRIV-05 —
    /// where a device once found its peers is not kept forever).
    pub fn cached_peers(&self) -> Vec<String> {
        let path = self.peers_path();
        let age = std::fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if age.is_some_and(|age| age > PEER_CACHE_TTL) {
            let _ = std::fs::remove_file(&path);
            return Vec::new();
        }
        std::fs::read_to_string(path)
            .map(|text| text.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default()
    }

    pub fn cache_peers(&self, addresses: &[String]) -> Result<()> {
        let mut text = addresses.join("\n");
        text.push('\n');
        write_private(&self.peers_path(), text.as_bytes())
    }

    fn dns_path(&self) -> PathBuf {
        self.root.join("dns-on")
    }

    /// Whether `pal dns on` was given (and not undone by `pal dns off`).
    pub fn dns_on(&self) -> bool {
        self.dns_path().exists()
    }

    pub fn save_dns_on(&self, on: bool) -> Result<()> {
        if on {
            write_private(&self.dns_path(), b"on\n")
        } else {
            remove_if_present(&self.dns_path())
        }
    }

    fn exit_path(&self) -> PathBuf {
        self.root.join("exit.json")
    }

    /// The exit this device chose (`pal exit use`), kept across restarts.
    pub fn exit_choice(&self) -> Option<crate::control::ExitChoice> {
        std::fs::read(self.exit_path()).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }

    pub fn save_exit_choice(&self, choice: Option<crate::control::ExitChoice>) -> Result<()> {
        match choice {
            Some(choice) => write_private(&self.exit_path(), &serde_json::to_vec(&choice)?),
            None => remove_if_present(&self.exit_path()),
        }
    }
}

/// Removes a file; one that is not there is fine.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}

/// How long cached peer addresses stay usable without a refresh.
pub const PEER_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// A ChaCha20 RNG seeded once from the operating system.
pub fn os_rng() -> Result<ChaCha20Rng> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(ChaCha20Rng::from_seed(seed))
}

fn write_secret(path: &Path, bytes: &[u8; 32]) -> Result<()> {
    write_private(path, bytes)
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn read_secret(path: &Path) -> Result<[u8; 32]> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priv05_cached_peers_expire() {
        let root = std::env::temp_dir().join(format!("pal-statedir-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("dir");
        let state = StateDir::new(&root);
        state.cache_peers(&["/ip4/192.0.2.1/tcp/41641".to_owned()]).expect("cache");
        assert_eq!(state.cached_peers(), ["/ip4/192.0.2.1/tcp/41641"]);
        let old = std::time::SystemTime::now() - PEER_CACHE_TTL - std::time::Duration::from_secs(60);
        std::fs::File::options().write(true).open(state.peers_path()).expect("open").set_modified(old).expect("mtime");
        assert!(state.cached_peers().is_empty(), "a stale cache was used");
        assert!(!state.peers_path().exists(), "a stale cache was kept");
        let _ = std::fs::remove_dir_all(&root);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// PRIV-03: every type holding a key, an invite or a config prints no secret with `{:?}`
    /// (none implements `Display`), and neither does a panic that formats them.
    #[test]
    fn priv03_secrets_stay_out_of_debug_output_and_panics() {
        let root = std::env::temp_dir().join(format!("pal-priv03-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("dir");
        let identity = StateDir::new(&root).create_identity().expect("identity");
        let network = membership::NetworkId([0x5a; 32]);
        let psk = network.data_plane_psk();
        let now = std::time::Instant::now();
        let clock = protocol::WallClock { anchor: now, unix_time_at_anchor: std::time::Duration::ZERO };
        let tunnel = protocol::TunnelConfig {
            local_static: identity.static_secret.clone(),
            peer_static: identity.static_secret.public_key(),
            psk: psk.clone(),
            persistent_keepalive: None,
            mtu: 1420,
            clock,
        };
        let device = protocol::DeviceConfig {
            static_secret: identity.static_secret.clone(),
            psk: psk.clone(),
            under_load_threshold: 1,
            mtu: 1420,
            clock,
        };
        let invite = crate::enrol::invite::InviteCode {
            network,
            invite: membership::EntryHash([1; 32]),
            secret: identity.device.clone(),
            bootstrap: Vec::new(),
        };
        let secrets = [
            hex(identity.device.expose_secret()),
            hex(identity.static_secret.expose_secret()),
            hex(&identity.libp2p),
            hex(psk.expose_secret()),
            hex(&network.0),
            invite.encode()[4..].to_owned(),
        ];
        let printed = format!("{identity:?} {tunnel:?} {device:?} {invite:?} {network:?} {psk:?}");
        let panicked = std::panic::catch_unwind(|| panic!("{identity:?} {tunnel:?} {device:?} {invite:?}")).expect_err("panics");
        let panicked = panicked.downcast_ref::<String>().cloned().expect("a formatted panic message");
        for output in [&printed, &panicked] {
            assert!(output.contains("<redacted>"), "{output}");
            for secret in &secrets {
                // Eight hex digits of a secret would already be too many.
                assert!(!output.contains(&secret[..8]), "a secret in {output}");
            }
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
