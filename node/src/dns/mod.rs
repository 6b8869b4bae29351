//! CloudPal's resolver for the network (Tailscale's MagicDNS, Blocky and Pi-hole in one):
//! device names under `pal.internal`, block lists, a cache, upstreams from the policy (or the
//! CloudPal's own system resolvers), and no query log.
//!
//! [`resolver`] is the sans-IO core, [`blocklist`] the block-list matcher, [`server`] the
//! socket shell on CloudPal's overlay addresses, [`https`] its HTTPS client (DoH upstreams,
//! block lists from URLs), [`system`] the client side (pointing the
//! system resolver at CloudPal and putting it back).

pub mod blocklist;
pub mod https;
pub mod resolver;
pub mod server;
pub mod system;
pub mod fuzzing;
