//! Control-plane messages between nodes over libp2p request-response
//! (`/cloudpal/control/1`): length-prefixed CBOR (minicbor), capped in size before anything is
//! allocated (ROB-01). Data never rides these streams.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use minicbor::bytes::{ByteArray, ByteVec};
use minicbor::{Decode, Encode};
use std::io;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/cloudpal/control/1");
/// The largest message: one sync batch (1 MiB of entries) plus framing.
pub const MAX_MESSAGE_LEN: usize = (1 << 20) + (64 << 10);
/// Domain separator of the libp2p-identity binding signature.
pub const BINDING_DOMAIN: &[u8] = b"cloudpal/libp2p-binding/v1\0";
/// Domain separator of the invite-possession proof a joiner shows before it is a member.
pub const INVITE_PROOF_DOMAIN: &[u8] = b"cloudpal/invite-proof/v1\0";

/// Proof that the libp2p peer speaking is this device: the device key signs the network id
/// and the peer id of the connection.
#[derive(Debug, Clone, Encode, Decode)]
pub struct Binding {
    #[n(0)]
    pub device_key: ByteArray<32>,
    #[n(1)]
    pub signature: ByteArray<64>,
}

/// Proof that a not-yet-member holds an invite's secret (signs network id and peer id).
#[derive(Debug, Clone, Encode, Decode)]
pub struct InviteProof {
    #[n(0)]
    pub invite: ByteArray<32>,
    #[n(1)]
    pub signature: ByteArray<64>,
}

/// A member's reachable addresses, as another member saw them.
#[derive(Debug, Clone, Encode, Decode)]
pub struct PeerAddresses {
    #[n(0)]
    pub peer_id: ByteVec,
    #[n(1)]
    pub multiaddrs: Vec<String>,
    #[n(2)]
    pub data_endpoint: Option<String>,
    /// The member's device id, so that members we have no connection to (behind NATs) can be
    /// told apart.
    #[n(3)]
    pub device: Option<ByteArray<16>>,
    /// Data-plane addresses worth probing: what it announced (LAN, IPv6) and where the
    /// sender last heard its datagrams from (its reflexive address).
    #[n(4)]
    pub candidates: Vec<String>,
}

#[derive(Debug, Clone, Encode, Decode)]
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
}

#[derive(Debug, Clone, Encode, Decode)]
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
    },
    /// The requester's device is revoked: it may sync its log up to the revocation (and
    /// nothing newer) to see that for itself. Unauthenticated, so only a hint to sync.
    #[n(5)]
    Revoked,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Codec;

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io).await?)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, request: Request) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&request)?).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, response: Response) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&response)?).await
    }
}

pub fn encode<T: Encode<()>>(message: &T) -> io::Result<Vec<u8>> {
    minicbor::to_vec(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

pub fn decode<T: for<'b> Decode<'b, ()>>(bytes: &[u8]) -> io::Result<T> {
    minicbor::decode(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    io.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_MESSAGE_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "control message over the size cap"));
    }
    let mut buffer = vec![0u8; length];
    io.read_exact(&mut buffer).await?;
    Ok(buffer)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "control message over the size cap"));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use libp2p::request_response::Codec as _;

    #[test]
    fn messages_round_trip_through_the_codec() {
        let request = Request::Announce { summary: vec![1, 2, 3].into() };
        let mut wire = Vec::new();
        block_on(Codec.write_request(&PROTOCOL, &mut futures::io::Cursor::new(&mut wire), request)).expect("write");
        let read = block_on(Codec.read_request(&PROTOCOL, &mut futures::io::Cursor::new(&wire))).expect("read");
        assert!(matches!(read, Request::Announce { summary } if summary.as_slice() == [1, 2, 3]));
    }

    #[test]
    fn rob01_oversized_length_prefix_is_refused_before_allocating() {
        let mut wire = (u32::MAX).to_be_bytes().to_vec();
        wire.extend_from_slice(&[0; 16]);
        let result = block_on(Codec.read_request(&PROTOCOL, &mut futures::io::Cursor::new(&wire)));
        assert_eq!(result.err().map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
    }

    #[test]
    fn rob01_truncated_cbor_is_a_typed_error() {
        let mut wire = 3u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&[0x82, 0x00]);
        assert!(block_on(Codec.read_request(&PROTOCOL, &mut futures::io::Cursor::new(&wire))).is_err());
    }
}
