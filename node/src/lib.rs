//! The CloudPal node runtime (DESIGN.md "Workspace"): one tokio event loop owning the libp2p
//! swarm, the UDP data-plane socket and the TUN device, driving `protocol` and `membership`.
//!
//! Built under issue #4. What exists today is the one piece the CLI needs to be honest about
//! it: the version string.

/// The version every `pal` binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
