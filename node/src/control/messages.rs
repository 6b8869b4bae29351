//! Control-plane messages between nodes (`/cloudpal/control/1` over libp2p request-response,
//! framed by [`crate::p2p::codec`]): CBOR (minicbor), capped in size before anything is
//! allocated (ROB-01). Data never rides these streams.

use membership::SyncMessage;
use minicbor::bytes::{ByteArray, ByteVec};
use minicbor::{Decode, Encode};
use std::io;

/// The largest message: one sync batch (1 MiB of entries) plus framing.
pub const MAX_MESSAGE_LEN: usize = (1 << 20) + (64 << 10);
/// Domain separator of the libp2p-identity binding signature.
pub const BINDING_DOMAIN: &[u8] = b"cloudpal/libp2p-binding/v1\0";
/// Domain separator of the invite-possession proof a joiner shows before it is a member.
pub const INVITE_PROOF_DOMAIN: &[u8] = b"cloudpal/invite-proof/v1\0";

/// Proof that the libp2p peer speaking is this device: the device key signs the network id
/// and the peer id of the connection.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Binding {
    #[n(0)]
    pub device_key: ByteArray<32>,
    #[n(1)]
    pub signature: ByteArray<64>,
}

/// Proof that a not-yet-member holds an invite's secret (signs network id and peer id).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct InviteProof {
    #[n(0)]
    pub invite: ByteArray<32>,
    #[n(1)]
    pub signature: ByteArray<64>,
}

/// A member's reachable addresses, as another member saw them.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PeerAddresses {
    #[n(0)]
    pub peer_id: ByteVec,
    #[n(1)]
    pub multiaddrs: Vec<String>,
    // Index 2 held a data endpoint nobody read; it stays unused so old nodes decode us.
    /// The member's device id, so that members we have no connection to (behind NATs) can be
    /// told apart.
    #[n(3)]
    pub device: Option<ByteArray<16>>,
    /// Data-plane addresses worth probing: what it announced (LAN, IPv6) and where the
    /// sender last heard its datagrams from (its reflexive address).
    #[n(4)]
    pub candidates: Vec<String>,
}

/// What a member's NAT does, for birthday punching ([`protocol::birthday`]).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct NatInfo {
    /// A fresh outside port per destination (symmetric); else endpoint-independent.
    #[n(0)]
    pub symmetric: bool,
    /// Its public data-plane address, as CloudPal sees it.
    #[n(1)]
    pub reflexive: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Request {
    /// First message on a connection between members: who I am, my data-plane port, my log.
    #[n(0)]
    Hello {
        #[n(0)]
        binding: Binding,
        #[n(1)]
        data_port: u16,
        #[n(2)]
        summary: ByteVec,
        /// The sender's own data-plane candidates.
        #[n(3)]
        candidates: Vec<String>,
        /// The sender does relay duty (CloudPal).
        #[n(4)]
        relay: bool,
        /// Where the sender's control plane listens (multiaddrs): members learn it here, and
        /// only members (there is no identify protocol for outsiders to ask).
        #[cbor(n(5), default)]
        listen: Vec<String>,
        /// The sender's NAT, once it checked (older nodes say nothing).
        #[cbor(n(6), default)]
        nat: Option<NatInfo>,
    },
    /// Send me what my summary lacks (one batch per request). Members show a binding; a
    /// joining device shows an invite proof instead.
    #[n(1)]
    Sync {
        #[n(0)]
        binding: Option<Binding>,
        #[n(1)]
        invite: Option<InviteProof>,
        #[n(2)]
        summary: ByteVec,
    },
    /// A new device's `Join` entry.
    #[n(2)]
    Join {
        #[n(0)]
        entry: ByteVec,
    },
    /// My log changed: here is my summary (push on append).
    #[n(3)]
    Announce {
        #[n(0)]
        summary: ByteVec,
    },
    /// Path signalling: the sender's candidates now; the answer is what the receiver knows
    /// of every member's.
    #[n(4)]
    Paths {
        #[n(0)]
        candidates: Vec<String>,
        /// The sender's control-plane addresses now (a circuit at the relay appears after the
        /// Hello): what identify's pushes were, members only.
        #[cbor(n(1), default)]
        listen: Vec<String>,
        #[cbor(n(2), default)]
        nat: Option<NatInfo>,
        /// The idle round's anti-entropy rides here (an `Announce` of its own would be a
        /// second exchange): the sender's log summary, answered with the receiver's.
        #[cbor(n(3), default)]
        summary: Option<ByteVec>,
        /// The digest ([`paths_digest`]) of the last answer the receiver gave the sender on
        /// this connection: when its answer would be the same, it lists no peers (most idle
        /// rounds; the list was most of an idle round's bytes).
        #[cbor(n(4), default)]
        known: Option<ByteArray<16>>,
    },
    /// An admin delivers the log to a device it just added from a request code (`pal device
    /// add`): one batch per request, in fold order, the first starting at genesis.
    #[n(5)]
    Deliver {
        #[n(0)]
        batch: Vec<ByteVec>,
        #[n(1)]
        more: bool,
    },
    /// A joiner that proves it holds an invite asks what its `Join` must say — and learns
    /// nothing more of the log until it has joined (issue #12).
    #[n(6)]
    Enrol {
        #[n(0)]
        proof: InviteProof,
        #[n(1)]
        name: String,
        #[n(2)]
        signing_key: ByteArray<32>,
        #[n(3)]
        static_key: ByteArray<32>,
    },
    /// A member starts (or with `renew`, restarts) its exit session at CloudPal; the answer
    /// is the egress addresses the internet will see (none: CloudPal's own).
    #[n(7)]
    ExitSession {
        #[n(0)]
        renew: bool,
    },
    /// A guest asks for its view: the few entries that prove what it may reach.
    #[n(8)]
    View {
        #[n(0)]
        binding: Binding,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Response {
    #[n(0)]
    Hello {
        #[n(0)]
        binding: Binding,
        #[n(1)]
        data_port: u16,
        #[n(2)]
        summary: ByteVec,
        #[n(3)]
        peers: Vec<PeerAddresses>,
        #[n(4)]
        candidates: Vec<String>,
        #[n(5)]
        relay: bool,
        #[cbor(n(6), default)]
        listen: Vec<String>,
        #[cbor(n(7), default)]
        nat: Option<NatInfo>,
    },
    /// A batch of entries, and whether more follow for the same summary.
    #[n(1)]
    Entries {
        #[n(0)]
        batch: Vec<ByteVec>,
        #[n(1)]
        more: bool,
    },
    #[n(2)]
    Accepted,
    /// Refused, with a reason the CLI can show as one line.
    #[n(3)]
    Refused {
        #[n(0)]
        reason: String,
    },
    #[n(4)]
    Paths {
        #[n(0)]
        peers: Vec<PeerAddresses>,
        /// The receiver's log summary, when the request carried the sender's.
        #[cbor(n(1), default)]
        summary: Option<ByteVec>,
    },
    /// The requester's device is revoked: it may sync its log up to the revocation (and
    /// nothing newer) to see that for itself. Unauthenticated, so only a hint to sync.
    #[n(5)]
    Revoked,
    /// What a joiner's `Join` says: its parents (the member's heads), the role of the invite
    /// and the overlay addresses the member found free.
    #[n(6)]
    Template {
        #[n(0)]
        parents: Vec<ByteArray<32>>,
        #[n(1)]
        role: String,
        #[n(2)]
        overlay_ipv4: ByteArray<4>,
        #[n(3)]
        overlay_ipv6: ByteArray<16>,
    },
    #[n(7)]
    Egress {
        #[n(0)]
        addresses: Vec<String>,
    },
    /// A guest's view ([`membership::guest`]).
    #[n(8)]
    View {
        #[n(0)]
        entries: Vec<ByteVec>,
    },
}

/// What a path exchange's answer said, in 16 bytes (BLAKE2s of its CBOR).
pub fn paths_digest(peers: &[PeerAddresses]) -> ByteArray<16> {
    use blake2::{Blake2s256, Digest};
    let mut hasher = Blake2s256::new();
    hasher.update(b"cloudpal/paths-digest/v1");
    hasher.update(minicbor::to_vec(peers).unwrap_or_default());
    let digest: [u8; 32] = hasher.finalize().into();
    let mut short = [0u8; 16];
    short.copy_from_slice(&digest[..16]);
    short.into()
}

pub fn encode<T: Encode<()>>(message: &T) -> io::Result<Vec<u8>> {
    minicbor::to_vec(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

pub fn decode<T: for<'b> Decode<'b, ()>>(bytes: &[u8]) -> io::Result<T> {
    minicbor::decode(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// A refusal with a reason the CLI can show as one line.
pub fn refused(reason: &str) -> Response {
    Response::Refused { reason: reason.to_owned() }
}

/// A log summary in a message, if it is one.
pub fn decode_summary(bytes: &[u8]) -> Option<membership::Summary> {
    match SyncMessage::decode(bytes) {
        Ok(SyncMessage::Summary(summary)) => Some(summary),
        _ => None,
    }
}

/// A peer's text made safe to print or log: control characters (terminal escapes among them)
/// become `?`, and it is cut at 200 characters.
pub fn printable(text: &str) -> String {
    text.chars().take(200).map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_loses_terminal_escapes() {
        assert_eq!(printable("ok\x1b[2Jgone\n"), "ok?[2Jgone?");
        assert_eq!(printable(&"a".repeat(500)).len(), 200);
    }
}
