//! Deterministic many-node simulations over the sans-IO cores (DESIGN.md "Workspace").
//!
//! Every node is a real [`protocol::Device`]; the network is a priority queue of datagrams on a
//! virtual clock with per-datagram loss. Same seed, same run, bit for bit. Later issues add
//! NATs, the relay, discovery and the membership log.

pub mod mesh;
