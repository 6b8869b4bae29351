//! The control protocol's framing on libp2p request-response: a 4-byte length, then the CBOR
//! message of [`crate::control::messages`]; a length over the cap is refused before anything
//! is allocated (ROB-01).

use crate::control::messages::{MAX_MESSAGE_LEN, Request, Response, decode, encode};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use std::io;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/cloudpal/control/1");

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

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    io.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_MESSAGE_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "control message over the size cap"));
    }
    // Memory grows with what actually arrives, not with what the prefix claims: a peer that
    // announces a megabyte and sends nothing holds a few bytes of ours, not a megabyte.
    let mut buffer = Vec::with_capacity(length.min(INITIAL_READ));
    io.take(length as u64).read_to_end(&mut buffer).await?;
    if buffer.len() != length {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "control message cut short"));
    }
    Ok(buffer)
}

/// What a frame's buffer starts at before its bytes arrive.
const INITIAL_READ: usize = 4096;

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
    use crate::control::messages::Request;
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
    fn rob01_a_large_prefix_with_a_short_body_allocates_only_what_arrived() {
        let mut wire = ((MAX_MESSAGE_LEN - 1) as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&[0xa0; 10]);
        let mut cursor = futures::io::Cursor::new(&wire);
        let result = block_on(read_frame(&mut cursor));
        assert_eq!(result.err().map(|e| e.kind()), Some(io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn rob01_truncated_cbor_is_a_typed_error() {
        let mut wire = 3u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&[0x82, 0x00]);
        assert!(block_on(Codec.read_request(&PROTOCOL, &mut futures::io::Cursor::new(&wire))).is_err());
    }
}
