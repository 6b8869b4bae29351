//! The signed, hash-linked device-membership log (DESIGN.md "Membership log").
//!
//! Contract: sans-IO — no tokio, no libp2p, no clock reads (time arrives as `now: u64` unix
//! seconds). Who belongs to the network is whatever [`Log::state`] says, and every node
//! computes it the same way from the same entries.
//!
//! - [`entry`]: the signed, canonical-CBOR entry and its operations;
//! - [`state`]: the membership state and the rules of each operation;
//! - [`log`]: the DAG, atomic batch ingestion, the deterministic fold;
//! - [`sync`]: the sans-IO sync exchange;
//! - [`store`]: crash-safe persistence on redb.

mod cbor;
pub mod entry;
pub mod guest;
#[cfg(any(test, feature = "testing"))]
pub mod fuzzing;
pub mod log;
pub mod overlay;
pub mod policy;
pub mod share;
pub mod state;
pub mod store;
pub mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testkit;

#[cfg(test)]
mod rows;

pub use cbor::CborError;
pub use entry::{DeviceRecord, Entry, EntryContents, EntryError, EntryHash, NetworkId, Operation, Role};
pub use log::{Log, LogError};
pub use policy::{ExitDevices, IpNet, Policy, RelayPolicy, RelayRate, Rule, RuleParseError};
pub use share::{PortRange, Share};
pub use state::{DeviceState, DeviceStatus, GuestShares, InviteState, InviteUnusable, RuleError, State};
pub use store::{Store, StoreError};
pub use sync::{Summary, SyncMessage, missing_for};
