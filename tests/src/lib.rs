//! End-to-end tests of the real `pal` binary.
//!
//! [`pal_binary`] finds the binary the workspace built. The network-namespace fixtures (hosts,
//! links, NAT routers) arrive with the runtime, issue #4.

use std::path::PathBuf;

/// The `pal` binary of this build: `$PAL_BIN` if set, else next to the test executable
/// (`target/<profile>/pal`).
pub fn pal_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PAL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/pal
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    profile_dir.join("pal")
}
