//! Sans-IO parts of the fallback: the HTTP/1.1 upgrade that opens a connection (what a reverse
//! proxy or a curious scanner sees, inside TLS: an ordinary web server, like Tailscale's DERP),
//! the length-prefixed framing of datagrams on the data channel, and the bounded queue that
//! drops the oldest datagram rather than let a slow TCP connection delay the fresh ones.

use std::collections::VecDeque;

/// What a connection carries after the upgrade: the libp2p control connection (bytes), or
/// datagrams for CloudPal's data port (frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Control,
    Data,
}

impl Channel {
    fn path(self) -> &'static str {
        match self {
            Channel::Control => "/cloudpal/v1/control",
            Channel::Data => "/cloudpal/v1/data",
        }
    }
}

/// The longest request or response head read before giving up on it.
pub const MAX_HEAD: usize = 2048;
const UPGRADE: &str = "cloudpal";

pub fn upgrade_request(channel: Channel) -> Vec<u8> {
    format!("GET {} HTTP/1.1\r\nHost: cloudpal\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE}\r\n\r\n", channel.path()).into_bytes()
}

pub const UPGRADED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: cloudpal\r\n\r\n";
/// What anything else gets (a browser, a scanner): a web server with nothing to show.
pub const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A head read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head<T> {
    /// Not whole yet: read more.
    Partial,
    Done(T),
    /// Whole, or too long, and not ours.
    Refused,
}

/// The request head in `bytes` (exactly the head: callers read up to its blank line).
pub fn parse_request(bytes: &[u8]) -> Head<Channel> {
    if bytes.len() > MAX_HEAD {
        return Head::Refused;
    }
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Refused,
        Ok(httparse::Status::Complete(_)) => {
            let upgrade = request.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case(UPGRADE.as_bytes()));
            let channel = [Channel::Control, Channel::Data].into_iter().find(|c| request.path == Some(c.path()));
            match (request.method, channel) {
                (Some("GET"), Some(channel)) if upgrade => Head::Done(channel),
                _ => Head::Refused,
            }
        }
    }
}

/// The response head in `bytes`: `Done` for our upgrade.
pub fn parse_response(bytes: &[u8]) -> Head<()> {
    if bytes.len() > MAX_HEAD {
        return Head::Refused;
    }
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(bytes) {
        Ok(httparse::Status::Partial) => Head::Partial,
        Ok(httparse::Status::Complete(_)) if response.code == Some(101) => Head::Done(()),
        _ => Head::Refused,
    }
}

/// Whether `bytes` (read one at a time) now end a head.
pub fn head_complete(bytes: &[u8]) -> bool {
    bytes.ends_with(b"\r\n\r\n")
}

/// A frame's length prefix.
pub const PREFIX: usize = 2;
/// The largest datagram a frame carries (a UDP datagram's own limit).
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Appends `datagram` as one frame to `out`; datagrams too long for a frame are not sent
/// (nothing the data plane sends is).
pub fn encode(datagram: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(len) = u16::try_from(datagram.len()) else { return false };
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    true
}

/// Splits a byte stream into frames, whatever pieces it arrives in.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    /// Where the next frame starts, and where the bytes read so far end.
    start: usize,
    end: usize,
}

impl Decoder {
    /// Room for `want` more bytes after those read so far: read into it, then say how many
    /// with [`Decoder::filled`]. Asking again without filling offers the same room (a read
    /// that was cancelled leaves nothing behind).
    pub fn space(&mut self, want: usize) -> &mut [u8] {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > MAX_DATAGRAM {
            self.buffer.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.buffer.len() < self.end + want {
            self.buffer.resize(self.end + want, 0);
        }
        &mut self.buffer[self.end..self.end + want]
    }

    /// `read` bytes of the room [`Decoder::space`] offered were filled.
    pub fn filled(&mut self, read: usize) {
        self.end = (self.end + read).min(self.buffer.len());
    }

    /// The next whole frame's datagram, if one has arrived.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        let rest = &self.buffer[self.start..self.end];
        let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        if rest.len() < PREFIX + len {
            return None;
        }
        let at = self.start + PREFIX;
        self.start = at + len;
        Some(&self.buffer[at..at + len])
    }
}

/// Datagrams waiting for a TCP connection, at most `max_bytes` of them: when a new one does not
/// fit, the oldest go (a late datagram is worth less than a fresh one, and TCP below the
/// tunnel's own TCP would otherwise stack up delay without bound).
#[derive(Debug)]
pub struct DropOldest {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    max_bytes: usize,
    dropped: u64,
    /// Buffers of frames already written, reused.
    spare: Vec<Vec<u8>>,
}

impl DropOldest {
    pub fn new(max_bytes: usize) -> Self {
        DropOldest { frames: VecDeque::new(), bytes: 0, max_bytes, dropped: 0, spare: Vec::new() }
    }

    pub fn push(&mut self, datagram: &[u8]) {
        if datagram.len() > MAX_DATAGRAM || datagram.len() > self.max_bytes {
            self.dropped += 1;
            return;
        }
        while self.bytes + datagram.len() > self.max_bytes {
            let Some(old) = self.frames.pop_front() else { break };
            self.bytes -= old.len();
            self.dropped += 1;
            self.spare.push(old);
        }
        let mut frame = self.spare.pop().unwrap_or_default();
        frame.clear();
        frame.extend_from_slice(datagram);
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Moves frames into `out` (encoded) until it holds about `limit` bytes.
    pub fn drain_into(&mut self, out: &mut Vec<u8>, limit: usize) {
        while out.len() < limit {
            let Some(frame) = self.frames.pop_front() else { break };
            self.bytes -= frame.len();
            encode(&frame, out);
            self.spare.push(frame);
        }
        self.spare.truncate(64);
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Datagrams dropped so far (for the link's log line when it ends).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(request: &[u8]) -> Head<Channel> {
        // Read one byte at a time, as the shell does, until the blank line.
        let mut read = Vec::new();
        for byte in request {
            read.push(*byte);
            if head_complete(&read) || read.len() > MAX_HEAD || parse_request(&read) != Head::Partial {
                break;
            }
        }
        parse_request(&read)
    }

    #[test]
    fn our_upgrades_are_told_apart_and_anything_else_gets_a_plain_404() {
        assert_eq!(feed(&upgrade_request(Channel::Control)), Head::Done(Channel::Control));
        assert_eq!(feed(&upgrade_request(Channel::Data)), Head::Done(Channel::Data));
        for other in [
            &b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"[..],
            b"GET /cloudpal/v1/data HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /cloudpal/v1/data HTTP/1.1\r\nUpgrade: cloudpal\r\n\r\n",
            b"\x16\x03\x01garbage\r\n\r\n",
        ] {
            assert_eq!(feed(other), Head::Refused, "{:?}", String::from_utf8_lossy(other));
        }
        let endless = vec![b'a'; MAX_HEAD + 10];
        assert_eq!(parse_request(&endless), Head::Refused);
        assert_eq!(parse_response(UPGRADED), Head::Done(()));
        assert_eq!(parse_response(NOT_FOUND), Head::Refused);
        assert_eq!(parse_response(&UPGRADED[..20]), Head::Partial);
    }

    #[test]
    fn frames_survive_any_split_of_the_stream() {
        let datagrams: Vec<Vec<u8>> = (0..50usize).map(|i| vec![i as u8; (i * 37) % 1500]).chain([vec![7; MAX_DATAGRAM]]).collect();
        let mut stream = Vec::new();
        for d in &datagrams {
            assert!(encode(d, &mut stream));
        }
        assert!(!encode(&vec![0; MAX_DATAGRAM + 1], &mut stream), "too long for a frame");
        for piece in [1usize, 3, 1000, 65_536] {
            let mut decoder = Decoder::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                // A cancelled read first: it must leave nothing behind.
                decoder.space(9)[..4].copy_from_slice(b"junk");
                let space = decoder.space(chunk.len() + 5);
                space[..chunk.len()].copy_from_slice(chunk);
                decoder.filled(chunk.len());
                while let Some(frame) = decoder.next_frame() {
                    got.push(frame.to_vec());
                }
            }
            assert_eq!(got, datagrams, "pieces of {piece}");
        }
    }

    #[test]
    fn the_queue_drops_the_oldest_and_keeps_within_its_bound() {
        let mut queue = DropOldest::new(10_000);
        for i in 0..100u8 {
            queue.push(&[i; 1000]);
        }
        assert_eq!(queue.len(), 10);
        assert_eq!(queue.dropped(), 90);
        let mut out = Vec::new();
        queue.drain_into(&mut out, usize::MAX);
        let mut decoder = Decoder::default();
        let space = decoder.space(out.len());
        space.copy_from_slice(&out);
        decoder.filled(out.len());
        let first = decoder.next_frame().expect("a frame").to_vec();
        assert_eq!(first, vec![90; 1000], "the newest ten are kept");
        assert!(queue.is_empty());
        queue.push(&[1; 20_000]);
        assert!(queue.is_empty(), "a datagram larger than the whole queue is dropped");
    }
}
