//! The client's system resolver, pointed at CloudPal and put back (Tailscale's Linux modes):
//! with systemd-resolved managing `/etc/resolv.conf`, the overlay interface gets CloudPal as
//! its DNS server and `~.` as its routing domain (`resolvectl`); otherwise `/etc/resolv.conf`
//! is rewritten *in place* (it may be a bind mount, as in a network namespace) and its old
//! text kept in the host journal until it is restored.

use std::net::Ipv4Addr;
use std::path::Path;

pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The first line of the resolv.conf pal writes: how to know it is ours.
pub const MARKER: &str = "# pal: DNS through CloudPal; the original comes back when pal stops";

/// The resolv.conf that sends every query to `server` (CloudPal's resolver over the overlay)
/// and searches the network's zone first, keeping the original's search domains after it.
/// With `fallback` (`pal dns on` without the exit), the original servers follow CloudPal's, a
/// second each: an unreachable CloudPal never leaves the device without DNS. On the exit there
/// is no fallback (they would be outside the tunnel).
pub fn pointed(original: &str, server: Ipv4Addr, fallback: bool) -> String {
    let searches: Vec<&str> = original
        .lines()
        .filter_map(|l| l.trim().strip_prefix("search").or_else(|| l.trim().strip_prefix("domain")))
        .flat_map(str::split_whitespace)
        .filter(|d| *d != super::resolver::ZONE)
        .collect();
    let mut text = format!("{MARKER}\nnameserver {server}\n");
    if fallback {
        for line in original.lines().filter(|l| l.trim().starts_with("nameserver")).take(2) {
            text.push_str(line.trim());
            text.push('\n');
        }
    }
    text.push_str("search ");
    text.push_str(super::resolver::ZONE);
    for search in searches {
        text.push(' ');
        text.push_str(search);
    }
    text.push_str(if fallback { "\noptions edns0 trust-ad timeout:1 attempts:2\n" } else { "\noptions edns0 trust-ad\n" });
    text
}

/// Whether systemd-resolved owns the resolver configuration: it runs, and resolv.conf is (a
/// link to, or a copy of) one of its files — Tailscale's test, by the file's own words.
pub fn uses_resolved() -> bool {
    let linked = std::fs::read_link(RESOLV_CONF).is_ok_and(|target| target.to_string_lossy().contains("systemd/resolve"));
    let written = std::fs::read_to_string(RESOLV_CONF).is_ok_and(|text| written_by_resolved(&text));
    (linked || written) && Path::new("/run/systemd/resolve/io.systemd.Resolve").exists()
}

/// resolv.conf text that systemd-resolved wrote (its stub or its uplink list).
fn written_by_resolved(text: &str) -> bool {
    text.lines().take_while(|l| l.starts_with('#')).any(|l| l.contains("managed by man:systemd-resolved"))
}

/// Rewrites `path` in place (open, truncate, write: a bind-mounted file stays the same file).
pub fn write_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// `resolvectl ARGS…`, failing with its stderr.
pub fn resolvectl(args: &[&str]) -> anyhow::Result<()> {
    let output = std::process::Command::new("resolvectl").args(args).output().map_err(|e| anyhow::anyhow!("cannot run resolvectl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        anyhow::bail!("resolvectl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pointed_resolv_conf_names_only_cloudpal_and_keeps_the_search_domains() {
        let original = "nameserver 192.168.1.1\nnameserver 198.51.100.1\nsearch home.example corp.example\noptions rotate\n";
        let text = pointed(original, Ipv4Addr::new(100, 64, 0, 1), false);
        assert!(text.starts_with(MARKER));
        assert_eq!(text.lines().filter(|l| l.starts_with("nameserver")).collect::<Vec<_>>(), vec!["nameserver 100.64.0.1"]);
        assert!(text.contains("search pal.internal home.example corp.example\n"));
        assert!(!text.contains("192.168.1.1"));
        let with_fallback = pointed(original, Ipv4Addr::new(100, 64, 0, 1), true);
        let servers: Vec<&str> = with_fallback.lines().filter(|l| l.starts_with("nameserver")).collect();
        assert_eq!(servers, vec!["nameserver 100.64.0.1", "nameserver 192.168.1.1", "nameserver 198.51.100.1"], "CloudPal first, then the old ones");
        assert!(with_fallback.contains("timeout:1"));
    }

    #[test]
    fn resolveds_own_files_are_recognised_by_their_header() {
        let stub = "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\n# Do not edit.\n\nnameserver 127.0.0.53\n";
        assert!(written_by_resolved(stub));
        assert!(!written_by_resolved("nameserver 192.0.2.1\n# managed by man:systemd-resolved\n"), "only the header counts");
        assert!(!written_by_resolved(&pointed(stub, Ipv4Addr::new(100, 64, 0, 1), false)));
    }

    #[test]
    fn a_rewrite_in_place_keeps_the_file_so_a_bind_mount_sees_it() {
        let dir = std::env::temp_dir().join(format!("pal-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "nameserver 192.0.2.1\n").expect("write");
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("meta"));
        let before = inode(&path);
        write_in_place(&path, "nameserver 100.64.0.1\n").expect("rewrite");
        assert_eq!(inode(&path), before);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "nameserver 100.64.0.1\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
