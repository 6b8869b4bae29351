//! A real systemd-resolved for one test namespace, without systemd and without touching the
//! host: the Debian package unpacked by `tests/run.sh` (never installed — its postinst would
//! relink the host's `/etc/resolv.conf`), run in a private mount namespace with its own `/run`
//! and system D-Bus, its user and the `/etc/resolv.conf` link to its stub in an overlay of
//! `/etc`. Programs of the network namespace run in it after
//! [`crate::Netns::run_in_mounts_of`].

use crate::{Netns, unique, wait_until};
use std::path::PathBuf;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where `tests/run.sh` unpacks the package (`PAL_RESOLVED_ROOT` overrides it).
pub fn package_root() -> PathBuf {
    let root = std::env::var_os("PAL_RESOLVED_ROOT").map_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-packages/systemd-resolved")), PathBuf::from);
    assert!(
        root.join("lib/systemd/systemd-resolved").exists(),
        "systemd-resolved is not unpacked at {}: run tests/run.sh (it unpacks the Debian package there) or set PAL_RESOLVED_ROOT",
        root.display()
    );
    root
}

/// The mount namespace's set-up, then dbus-daemon and systemd-resolved in the foreground.
const SCRIPT: &str = r#"set -eu
R=$1; D=$2; UPLINK=$3
# /etc as an overlay (the host's below, a tmpfs above): resolved's user, and resolv.conf as
# the link to resolved's stub that a systemd-resolved system has.
mkdir -p "$D/ov"; mount -t tmpfs tmpfs "$D/ov"; mkdir "$D/ov/up" "$D/ov/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$D/ov/up,workdir=$D/ov/work" /etc
echo 'systemd-resolve:x:64990:64990::/:/usr/sbin/nologin' >> /etc/passwd
echo 'systemd-resolve:x:64990:' >> /etc/group
rm -f /etc/resolv.conf; ln -s ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
mount -t tmpfs tmpfs /run
mkdir -p /run/dbus /run/systemd/resolve /run/systemd/resolved.conf.d "$D/dbus.d"
cp /usr/share/dbus-1/system.d/* "$R"/usr/share/dbus-1/system.d/* "$D/dbus.d/"
mount --bind "$D/dbus.d" /usr/share/dbus-1/system.d
chown 64990:64990 /run/systemd/resolve
printf '[Resolve]\nDNS=%s\nLLMNR=no\nMulticastDNS=no\n' "$UPLINK" > /run/systemd/resolved.conf.d/test.conf
mkdir -p "$D/bin"; cp "$R/usr/bin/resolvectl" "$D/bin/"; mount --bind "$D/bin" /usr/local/bin
dbus-daemon --system --nofork --nopidfile &
while [ ! -S /run/dbus/system_bus_socket ]; do sleep 0.05; done
"$R/lib/systemd/systemd-resolved" &
while [ ! -f /run/systemd/resolve/stub-resolv.conf ]; do sleep 0.05; done
touch "$D/ready"
wait
"#;

/// systemd-resolved (and its D-Bus) in a private mount namespace of `netns`; killed on drop.
#[derive(Debug)]
pub struct SystemdResolved {
    holder: Child,
    dir: PathBuf,
}

impl SystemdResolved {
    /// Starts it with `uplink` as the network's DNS server (the home router's, say).
    pub fn start(netns: &Netns, uplink: &str) -> Self {
        let root = package_root();
        let dir = std::env::temp_dir().join(unique("resolved-"));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = std::fs::File::create(dir.join("log")).expect("log");
        let holder = Command::new("ip")
            .args(["netns", "exec", &netns.name, "unshare", "--mount", "--propagation", "private", "sh", "-c", SCRIPT, "sh"])
            .arg(&root)
            .arg(&dir)
            .arg(uplink)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start systemd-resolved");
        let resolved = Self { holder, dir };
        assert!(wait_until(Duration::from_secs(10), || resolved.dir.join("ready").exists()), "systemd-resolved did not start: {}", resolved.log());
        resolved
    }

    /// The process whose mount namespace the resolver's world is.
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for SystemdResolved {
    fn drop(&mut self) {
        // The whole group: the shell, dbus-daemon and systemd-resolved.
        if let Ok(group) = i32::try_from(self.holder.id()) {
            // SAFETY: a signal to a process group this fixture started.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.holder.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
