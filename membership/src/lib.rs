//! The signed, hash-linked device-membership log (DESIGN.md "Membership log").
//!
//! Contract: sans-IO — no tokio, no libp2p, no clock reads. This crate is being built under
//! issue #3; until then it holds nothing but this contract.
