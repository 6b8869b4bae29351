//! The CloudPal node (DESIGN.md "Inside `node`"): sans-IO cores with thin shells.
//!
//! - [`control`]: the control core — members, sync, admission, discovery, signalling, admin —
//!   driven by `handle_*` calls and read through `poll_action` / `poll_timeout`;
//! - [`p2p`]: the swarm builder, behaviour, codec, and the driver between swarm and core;
//! - [`dataplane`]: the packet thread (epoll, UDP batches, connected sockets, TUN);
//! - [`relaylink`]: the TCP/TLS-443 fallback to CloudPal (a libp2p transport, the data link);
//! - [`control_api`]: typed local requests and replies, and the Unix socket;
//! - [`enrol`]: `init`, `join`, `request` and the code formats;
//! - [`app`]: `pal up` — builds the cores, runs the loop, shuts down; [`clock`] and
//!   [`statedir`] are its clock and disk.

pub mod app;
pub mod clock;
pub mod control;
pub mod control_api;
pub mod dataplane;
pub mod dns;
pub mod enrol;
pub mod exit;
pub mod p2p;
pub mod metrics;
pub mod relaylink;
pub mod statedir;
pub mod userspace;

/// The version every `pal` binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
