//! Wire formats of every data-plane datagram.
//!
//! The layouts follow WireGuard's (paper §5.4) so that sizes, and so traffic analysis, match a
//! well-studied protocol. Every datagram starts with a 4-byte header: the message kind, then
//! three zero bytes. Integers are little-endian.
//!
//! ```text
//! initiation  (148) kind | sender u32 | noise msg 1 (108: e, s+tag, timestamp+tag) | mac1 16 | mac2 16
//! response     (92) kind | sender u32 | receiver u32 | noise msg 2 (48: e, empty+tag) | mac1 | mac2
//! cookie reply (64) kind | receiver u32 | nonce 24 | cookie+tag 32
//! data       (32..) kind | receiver u32 | counter u64 | ciphertext (padded plaintext + tag 16)
//! ```
//!
//! [`Message::parse`] is the zero-copy view: it borrows fixed-size arrays from the input after
//! one length check per kind, so no input of any length or content can panic. The `emit_*`
//! functions are the inverse and write into caller buffers.

use crate::ReceiverIndex;

/// Handshake initiation (Noise IK message 1).
pub const KIND_INITIATION: u8 = 1;
/// Handshake response (Noise IK message 2).
pub const KIND_RESPONSE: u8 = 2;
/// Cookie reply, sent instead of a response when under load.
pub const KIND_COOKIE_REPLY: u8 = 3;
/// Transport data.
pub const KIND_DATA: u8 = 4;
/// Reserved (path probes travel inside the session instead: see [`PATH_PROBE_LEN`]).
pub const KIND_PATH_PROBE: u8 = 5;
/// A relay envelope: a WireGuard message wrapped for the CloudPal relay ([`crate::relay`]).
pub const KIND_RELAY_ENVELOPE: u8 = 6;

/// Path control messages ride inside the session like IP packets, told apart by the version
/// nibble 1 (IP has 4 and 6): authenticated and replay-protected for free.
pub const PATH_CONTROL_VERSION: u8 = 1;
/// `0x10 ‖ id (8)`: "answer me on the path this came by".
pub const PATH_PROBE: u8 = 0x10;
pub const PATH_PROBE_LEN: usize = 9;
/// `0x11 ‖ id (8) ‖ observed source: family (1: 4 or 6) ‖ address (16, IPv4 in the first 4) ‖
/// port (2, big-endian)`: the answer, telling the prober how its datagram's source looked
/// (its reflexive address, as STUN would).
pub const PATH_PONG: u8 = 0x11;
pub const PATH_PONG_LEN: usize = 28;
/// `0x12 ‖ id (8)`: "my NAT maps per destination and I have just opened many mappings toward
/// your reflexive address: spray my public address" (the birthday punch, [`crate::birthday`]).
pub const PATH_PUNCH: u8 = 0x12;
pub const PATH_PUNCH_LEN: usize = 9;

pub const HEADER_LEN: usize = 4;
pub const MAC_LEN: usize = 16;
pub const TAG_LEN: usize = 16;
pub const KEY_LEN: usize = 32;
/// TAI64N timestamp carried (encrypted) in the initiation.
pub const TIMESTAMP_LEN: usize = 12;

/// Noise IK message 1: ephemeral, encrypted static, encrypted timestamp.
pub const NOISE_INITIATION_LEN: usize = KEY_LEN + (KEY_LEN + TAG_LEN) + (TIMESTAMP_LEN + TAG_LEN);
/// Noise IK message 2: ephemeral, encrypted empty payload.
pub const NOISE_RESPONSE_LEN: usize = KEY_LEN + TAG_LEN;

pub const INITIATION_LEN: usize = HEADER_LEN + 4 + NOISE_INITIATION_LEN + 2 * MAC_LEN;
pub const RESPONSE_LEN: usize = HEADER_LEN + 4 + 4 + NOISE_RESPONSE_LEN + 2 * MAC_LEN;
pub const COOKIE_NONCE_LEN: usize = 24;
pub const COOKIE_LEN: usize = 16;
pub const COOKIE_REPLY_LEN: usize = HEADER_LEN + 4 + COOKIE_NONCE_LEN + COOKIE_LEN + TAG_LEN;
pub const DATA_HEADER_LEN: usize = HEADER_LEN + 4 + 8;
/// The smallest data message: a keepalive (empty plaintext, tag only).
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + TAG_LEN;
/// Bytes a data message adds to the IP packet it carries, before padding.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;
/// Plaintext is padded to a multiple of this, hiding exact packet sizes.
pub const PADDING_MULTIPLE: usize = 16;
/// The largest datagram we accept or produce: an IPv6 UDP payload can't be larger, and
/// bounding it lets every buffer be sized once.
pub const MAX_DATAGRAM_LEN: usize = 65_535 - 40 - 8;
/// The largest IP packet a data message can carry.
pub const MAX_PACKET_LEN: usize = MAX_DATAGRAM_LEN - DATA_OVERHEAD - PADDING_MULTIPLE;

/// Offsets of the MACs within the two handshake messages.
pub const INITIATION_MAC1_OFFSET: usize = INITIATION_LEN - 2 * MAC_LEN;
pub const RESPONSE_MAC1_OFFSET: usize = RESPONSE_LEN - 2 * MAC_LEN;

/// A datagram that is not a well-formed data-plane message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty datagram")]
    Empty,
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("message kind {0} is reserved and not yet spoken")]
    ReservedKind(u8),
    #[error("reserved header bytes are not zero")]
    NonZeroReserved,
    #[error("message kind {kind} has wrong length {len}")]
    WrongLength { kind: u8, len: usize },
    #[error("output buffer too small: need {needed} bytes")]
    BufferTooSmall { needed: usize },
}

/// A parsed, borrowed view of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Initiation(Initiation<'a>),
    Response(Response<'a>),
    CookieReply(CookieReply<'a>),
    Data(Data<'a>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initiation<'a> {
    pub sender: ReceiverIndex,
    pub noise: &'a [u8; NOISE_INITIATION_LEN],
    pub mac1: &'a [u8; MAC_LEN],
    pub mac2: &'a [u8; MAC_LEN],
    /// The whole datagram, which the MACs cover.
    pub bytes: &'a [u8; INITIATION_LEN],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    pub sender: ReceiverIndex,
    pub receiver: ReceiverIndex,
    pub noise: &'a [u8; NOISE_RESPONSE_LEN],
    pub mac1: &'a [u8; MAC_LEN],
    pub mac2: &'a [u8; MAC_LEN],
    pub bytes: &'a [u8; RESPONSE_LEN],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieReply<'a> {
    pub receiver: ReceiverIndex,
    pub nonce: &'a [u8; COOKIE_NONCE_LEN],
    pub encrypted_cookie: &'a [u8; COOKIE_LEN + TAG_LEN],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data<'a> {
    pub receiver: ReceiverIndex,
    pub counter: u64,
    pub ciphertext: &'a [u8],
}

impl<'a> Message<'a> {
    /// Parses one datagram. Never panics; every accepted message has exactly its kind's length
    /// (data: at least [`DATA_MIN_LEN`], at most [`MAX_DATAGRAM_LEN`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let kind = *bytes.first().ok_or(WireError::Empty)?;
        let expect = |len_ok: bool| {
            if len_ok { Ok(()) } else { Err(WireError::WrongLength { kind, len: bytes.len() }) }
        };
        match kind {
            KIND_INITIATION => expect(bytes.len() == INITIATION_LEN)?,
            KIND_RESPONSE => expect(bytes.len() == RESPONSE_LEN)?,
            KIND_COOKIE_REPLY => expect(bytes.len() == COOKIE_REPLY_LEN)?,
            KIND_DATA => expect((DATA_MIN_LEN..=MAX_DATAGRAM_LEN).contains(&bytes.len()))?,
            // Envelopes are opened before parsing (crate::relay); probes are never sent bare.
            KIND_PATH_PROBE | KIND_RELAY_ENVELOPE => return Err(WireError::ReservedKind(kind)),
            _ => return Err(WireError::UnknownKind(kind)),
        }
        if bytes[1..HEADER_LEN] != [0, 0, 0] {
            return Err(WireError::NonZeroReserved);
        }
        // Lengths are checked above, so no `array` below fails; `?` keeps that panic-free anyway.
        Ok(match kind {
            KIND_INITIATION => Message::Initiation(Initiation {
                sender: index_at(bytes, 4)?,
                noise: array(bytes, 8)?,
                mac1: array(bytes, INITIATION_MAC1_OFFSET)?,
                mac2: array(bytes, INITIATION_MAC1_OFFSET + MAC_LEN)?,
                bytes: array(bytes, 0)?,
            }),
            KIND_RESPONSE => Message::Response(Response {
                sender: index_at(bytes, 4)?,
                receiver: index_at(bytes, 8)?,
                noise: array(bytes, 12)?,
                mac1: array(bytes, RESPONSE_MAC1_OFFSET)?,
                mac2: array(bytes, RESPONSE_MAC1_OFFSET + MAC_LEN)?,
                bytes: array(bytes, 0)?,
            }),
            KIND_COOKIE_REPLY => Message::CookieReply(CookieReply {
                receiver: index_at(bytes, 4)?,
                nonce: array(bytes, 8)?,
                encrypted_cookie: array(bytes, 8 + COOKIE_NONCE_LEN)?,
            }),
            _ => Message::Data(Data {
                receiver: index_at(bytes, 4)?,
                counter: u64::from_le_bytes(*array(bytes, 8)?),
                ciphertext: &bytes[DATA_HEADER_LEN..],
            }),
        })
    }
}

/// Writes the header and sender index of an initiation; the caller fills noise and MACs.
pub fn emit_initiation_header(out: &mut [u8; INITIATION_LEN], sender: ReceiverIndex) {
    out[..HEADER_LEN].copy_from_slice(&[KIND_INITIATION, 0, 0, 0]);
    out[4..8].copy_from_slice(&sender.0.to_le_bytes());
}

/// Writes the header and indices of a response; the caller fills noise and MACs.
pub fn emit_response_header(
    out: &mut [u8; RESPONSE_LEN],
    sender: ReceiverIndex,
    receiver: ReceiverIndex,
) {
    out[..HEADER_LEN].copy_from_slice(&[KIND_RESPONSE, 0, 0, 0]);
    out[4..8].copy_from_slice(&sender.0.to_le_bytes());
    out[8..12].copy_from_slice(&receiver.0.to_le_bytes());
}

pub fn emit_cookie_reply(
    out: &mut [u8; COOKIE_REPLY_LEN],
    receiver: ReceiverIndex,
    nonce: &[u8; COOKIE_NONCE_LEN],
    encrypted_cookie: &[u8; COOKIE_LEN + TAG_LEN],
) {
    out[..HEADER_LEN].copy_from_slice(&[KIND_COOKIE_REPLY, 0, 0, 0]);
    out[4..8].copy_from_slice(&receiver.0.to_le_bytes());
    out[8..8 + COOKIE_NONCE_LEN].copy_from_slice(nonce);
    out[8 + COOKIE_NONCE_LEN..].copy_from_slice(encrypted_cookie);
}

/// Writes a data header; returns the ciphertext area that follows it.
pub fn emit_data_header(
    out: &mut [u8],
    receiver: ReceiverIndex,
    counter: u64,
) -> Result<&mut [u8], WireError> {
    if out.len() < DATA_MIN_LEN {
        return Err(WireError::BufferTooSmall { needed: DATA_MIN_LEN });
    }
    out[..HEADER_LEN].copy_from_slice(&[KIND_DATA, 0, 0, 0]);
    out[4..8].copy_from_slice(&receiver.0.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
    Ok(&mut out[DATA_HEADER_LEN..])
}

/// Plaintext length after padding `len` to [`PADDING_MULTIPLE`], never beyond `mtu` (as
/// WireGuard's `calculatePaddingSize`): a packet of the MTU is as large as any, so padding it
/// would hide nothing.
pub const fn padded_len(len: usize, mtu: usize) -> usize {
    let padded = len.div_ceil(PADDING_MULTIPLE) * PADDING_MULTIPLE;
    if len >= mtu {
        len
    } else if padded > mtu {
        mtu
    } else {
        padded
    }
}

/// The overlay MTU: a full packet fits a 1500-byte underlay link even in the worst case, relayed
/// over IPv6 — 40 (IPv6) + 8 (UDP) + 44 (relay envelope) + 32 (data overhead) + 1376 = 1500 —
/// so nothing is ever fragmented on the way (many NATs and firewalls drop fragments).
/// WireGuard's 1420 leaves no room for the relay envelope.
pub const DEFAULT_MTU: usize = 1500 - 40 - 8 - RELAY_HEADER_LEN - DATA_OVERHEAD;
/// A relay envelope's header: kind, sender id, masked destination, counter, tag (see `relay`).
pub const RELAY_HEADER_LEN: usize = 44;

/// The length of the IP packet at the start of a decrypted, padded plaintext, read from its
/// header; `None` if the plaintext does not start with a complete IPv4 or IPv6 packet.
/// A decoded path control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathControl {
    Probe(u64),
    /// The probe's id and the probe's source address as the answering peer saw it (none when
    /// the probe came through the relay).
    Pong(u64, Option<std::net::SocketAddr>),
    /// The birthday punch's go signal, from the side behind the symmetric NAT.
    Punch(u64),
}

/// Reads a path control message (as [`inner_packet_len`] delimited it).
pub fn parse_path_control(message: &[u8]) -> Option<PathControl> {
    let id = u64::from_be_bytes(*message.get(1..9)?.first_chunk::<8>()?);
    match *message.first()? {
        PATH_PROBE => Some(PathControl::Probe(id)),
        PATH_PUNCH => Some(PathControl::Punch(id)),
        PATH_PONG => {
            let body = message.get(9..PATH_PONG_LEN)?;
            let port = u16::from_be_bytes([body[17], body[18]]);
            let observed = match body[0] {
                4 => Some(std::net::SocketAddr::from(([body[1], body[2], body[3], body[4]], port))),
                6 => {
                    let octets: [u8; 16] = body[1..17].try_into().ok()?;
                    Some(std::net::SocketAddr::from((std::net::Ipv6Addr::from(octets), port)))
                }
                _ => None,
            };
            Some(PathControl::Pong(id, observed))
        }
        _ => None,
    }
}

/// Writes a path control message into `out` (at least [`PATH_PONG_LEN`] bytes); its length.
pub fn emit_path_control(out: &mut [u8; PATH_PONG_LEN], message: PathControl) -> usize {
    match message {
        PathControl::Probe(id) => {
            out[0] = PATH_PROBE;
            out[1..9].copy_from_slice(&id.to_be_bytes());
            PATH_PROBE_LEN
        }
        PathControl::Punch(id) => {
            out[0] = PATH_PUNCH;
            out[1..9].copy_from_slice(&id.to_be_bytes());
            PATH_PUNCH_LEN
        }
        PathControl::Pong(id, observed) => {
            out[0] = PATH_PONG;
            out[1..9].copy_from_slice(&id.to_be_bytes());
            out[9..].fill(0);
            match observed {
                Some(std::net::SocketAddr::V4(address)) => {
                    out[9] = 4;
                    out[10..14].copy_from_slice(&address.ip().octets());
                    out[26..28].copy_from_slice(&address.port().to_be_bytes());
                }
                Some(std::net::SocketAddr::V6(address)) => {
                    out[9] = 6;
                    out[10..26].copy_from_slice(&address.ip().octets());
                    out[26..28].copy_from_slice(&address.port().to_be_bytes());
                }
                None => {}
            }
            PATH_PONG_LEN
        }
    }
}

pub fn inner_packet_len(plaintext: &[u8]) -> Option<usize> {
    let version = plaintext.first()? >> 4;
    if version == PATH_CONTROL_VERSION {
        let len = match plaintext[0] {
            PATH_PROBE => PATH_PROBE_LEN,
            PATH_PONG => PATH_PONG_LEN,
            PATH_PUNCH => PATH_PUNCH_LEN,
            _ => return None,
        };
        return (len <= plaintext.len()).then_some(len);
    }
    let len = match version {
        4 if plaintext.len() >= 20 => usize::from(u16::from_be_bytes([plaintext[2], plaintext[3]])),
        6 if plaintext.len() >= 40 => {
            40 + usize::from(u16::from_be_bytes([plaintext[4], plaintext[5]]))
        }
        _ => return None,
    };
    let minimum = if version == 4 { 20 } else { 40 };
    (minimum..=plaintext.len()).contains(&len).then_some(len)
}

fn index_at(bytes: &[u8], at: usize) -> Result<ReceiverIndex, WireError> {
    Ok(ReceiverIndex(u32::from_le_bytes(*array(bytes, at)?)))
}

/// A fixed-size view at `at`, or a length error: the one place bytes are sliced.
fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<&[u8; N], WireError> {
    bytes
        .get(at..)
        .and_then(<[u8]>::first_chunk::<N>)
        .ok_or(WireError::WrongLength { kind: bytes.first().copied().unwrap_or(0), len: bytes.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_wireguard() {
        assert_eq!(INITIATION_LEN, 148);
        assert_eq!(RESPONSE_LEN, 92);
        assert_eq!(COOKIE_REPLY_LEN, 64);
        assert_eq!(DATA_MIN_LEN, 32);
    }

    #[test]
    fn dp06_wrong_lengths_and_kinds_are_rejected_before_crypto() {
        assert_eq!(Message::parse(&[]), Err(WireError::Empty));
        assert_eq!(Message::parse(&[9, 0, 0, 0]), Err(WireError::UnknownKind(9)));
        assert_eq!(Message::parse(&[5; 40]), Err(WireError::ReservedKind(5)));
        for (kind, len) in [(1u8, INITIATION_LEN), (2, RESPONSE_LEN), (3, COOKIE_REPLY_LEN)] {
            for bad in [1, len - 1, len + 1, 2000] {
                let mut bytes = vec![0u8; bad];
                bytes[0] = kind;
                assert_eq!(Message::parse(&bytes), Err(WireError::WrongLength { kind, len: bad }));
            }
        }
        let mut short_data = vec![0u8; DATA_MIN_LEN - 1];
        short_data[0] = KIND_DATA;
        assert!(matches!(Message::parse(&short_data), Err(WireError::WrongLength { .. })));
        let mut nonzero = [0u8; INITIATION_LEN];
        nonzero[0] = KIND_INITIATION;
        nonzero[2] = 1;
        assert_eq!(Message::parse(&nonzero), Err(WireError::NonZeroReserved));
    }

    #[test]
    fn data_header_round_trips() {
        let mut buf = [0u8; 64];
        emit_data_header(&mut buf, ReceiverIndex(0xdead_beef), 42).expect("fits");
        match Message::parse(&buf) {
            Ok(Message::Data(data)) => {
                assert_eq!(data.receiver, ReceiverIndex(0xdead_beef));
                assert_eq!(data.counter, 42);
                assert_eq!(data.ciphertext.len(), 64 - DATA_HEADER_LEN);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn response_header_round_trips() {
        let mut buf = [0u8; RESPONSE_LEN];
        emit_response_header(&mut buf, ReceiverIndex(1), ReceiverIndex(2));
        match Message::parse(&buf) {
            Ok(Message::Response(r)) => assert_eq!((r.sender, r.receiver), (ReceiverIndex(1), ReceiverIndex(2))),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn inner_packet_len_reads_ip_headers() {
        let mut v4 = [0u8; 48];
        v4[0] = 0x45;
        v4[3] = 28;
        assert_eq!(inner_packet_len(&v4), Some(28));
        v4[3] = 49;
        assert_eq!(inner_packet_len(&v4), None, "claims more than we have");
        let mut v6 = [0u8; 64];
        v6[0] = 0x60;
        v6[5] = 8;
        assert_eq!(inner_packet_len(&v6), Some(48));
        assert_eq!(inner_packet_len(&[0x70; 64]), None);
        assert_eq!(inner_packet_len(&[PATH_PROBE; 16]), Some(PATH_PROBE_LEN));
        assert_eq!(inner_packet_len(&[PATH_PONG; 32]), Some(PATH_PONG_LEN));
        assert_eq!(inner_packet_len(&[PATH_PONG; 20]), None, "truncated pong");
        assert_eq!(inner_packet_len(&[PATH_PUNCH; 16]), Some(PATH_PUNCH_LEN));
        assert_eq!(inner_packet_len(&[0x13; 32]), None, "unknown control type");
        assert_eq!(inner_packet_len(&[]), None);
    }

    #[test]
    fn path_control_messages_round_trip() {
        let messages = [
            PathControl::Probe(7),
            PathControl::Punch(11),
            PathControl::Pong(8, None),
            PathControl::Pong(9, Some("203.0.113.7:41641".parse().expect("v4"))),
            PathControl::Pong(10, Some("[2001:db8::1]:5".parse().expect("v6"))),
        ];
        for message in messages {
            let mut out = [0u8; PATH_PONG_LEN];
            let len = emit_path_control(&mut out, message);
            assert_eq!(inner_packet_len(&out), Some(len));
            assert_eq!(parse_path_control(&out[..len]), Some(message));
        }
        assert_eq!(parse_path_control(&[PATH_PONG; 20]), None);
        assert_eq!(parse_path_control(&[]), None);
    }

    #[test]
    fn padding_rounds_up_to_sixteen_but_not_past_the_mtu() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(1400, 1420), 1408);
        assert_eq!(padded_len(1410, 1420), 1420);
        assert_eq!(padded_len(1420, 1420), 1420);
        assert_eq!(padded_len(9000, 1420), 9000);
    }
}
