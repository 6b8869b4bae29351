//! Deterministic many-node simulations over the sans-IO cores (DESIGN.md "Workspace").
//!
//! Seeded, single-threaded, on virtual time: the same seed gives the same run, bit for bit.
//! [`mesh`] runs data-plane `Device`s; [`control`] runs real control cores over the real
//! membership log; [`scenarios`] are the runs `cargo run --release -p simulations -- all`
//! prints (issue #17).

pub mod agenda;
pub mod control;
pub mod dht;
pub mod links;
pub mod mesh;
pub mod nat;
pub mod plot;
pub mod scenarios;
pub mod swarms;
pub mod table;
