//! Bodies of the fuzz targets in `protocol/fuzz`, kept here so that `cargo test` replays every
//! committed corpus file through exactly the code the fuzzer runs.

use crate::device::{destination_of, source_of};
use crate::handshake::ReceivedInitiation;
use crate::keys::{PresharedKey, StaticSecret};
use crate::testing::{Pair, Side};
use crate::wire::{self, Message};
use crate::IpPrefix;
use std::net::SocketAddr;

/// Every parser of untrusted bytes in the crate.
pub fn parse(data: &[u8]) {
    // A parsed data message re-serialises to the same bytes.
    if let Ok(Message::Data(parsed)) = Message::parse(data) {
        let mut out = vec![0u8; data.len()];
        if let Ok(body) = wire::emit_data_header(&mut out, parsed.receiver, parsed.counter) {
            body.copy_from_slice(parsed.ciphertext);
            assert_eq!(out, data);
        }
    }
    if let Some(len) = wire::inner_packet_len(data) {
        assert!(len <= data.len());
    }
    let _ = destination_of(data);
    let _ = source_of(data);
    if let Ok(text) = core::str::from_utf8(data) {
        let _ = text.parse::<IpPrefix>();
    }
}

/// Arbitrary bytes as the Noise part of an initiation that passed its MACs.
pub fn handshake(data: &[u8]) {
    let mut datagram = [0u8; wire::INITIATION_LEN];
    datagram[0] = wire::KIND_INITIATION;
    let body = &mut datagram[4..wire::INITIATION_MAC1_OFFSET];
    let n = body.len().min(data.len());
    body[..n].copy_from_slice(&data[..n]);
    if let Ok(Message::Initiation(initiation)) = Message::parse(&datagram) {
        let local = StaticSecret::from_bytes([7; 32]);
        assert!(ReceivedInitiation::read(&local, &PresharedKey::none(), &initiation, [0; 32]).is_err()
            || data.len() >= wire::NOISE_INITIATION_LEN);
    }
}

/// A connected pair; the input's first byte picks a template that the rest overwrites, so the
/// fuzzer reaches the decrypt path, the handshake path and the raw parser alike. Whatever the
/// input, the device must not panic, deliver nothing, and answer nothing but a handshake.
pub fn decapsulate(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut pair = Pair::new(u64::from(mode >> 3));
    let hello = pair.packet(Side::A, b"hello");
    let _ = pair.send_ip(Side::A, &hello);
    let initiation = pair.in_flight.first().map(|f| f.bytes.clone()).unwrap_or_default();
    pair.run_for(std::time::Duration::from_millis(50));
    let packet = pair.packet(Side::A, b"template");
    let _ = pair.send_ip(Side::A, &packet);
    let template = pair.intercept(Side::B).pop().map(|f| f.bytes).unwrap_or_default();
    let mut datagram = match mode & 3 {
        0 => rest.to_vec(),
        1 => template.clone(),
        2 => initiation,
        _ => template[..wire::DATA_HEADER_LEN.min(template.len())].to_vec(),
    };
    if mode & 3 != 0 {
        // Overwrite from an offset the next byte picks, keeping some structure intact.
        let offset = usize::from(rest.first().copied().unwrap_or(0)) % datagram.len().max(1);
        for (i, byte) in rest.iter().skip(1).enumerate() {
            match datagram.get_mut(offset + i) {
                Some(slot) => *slot ^= byte,
                None => datagram.push(*byte),
            }
        }
    }
    let from: SocketAddr = if mode & 4 == 0 { pair.a.address } else { "203.0.113.1:9".parse().expect("addr") };
    let delivered = pair.b.delivered.len();
    let sent = pair.b.sent.len();
    let result = pair.inject(Side::B, from, &datagram);
    if datagram != template {
        assert_eq!(pair.b.delivered.len(), delivered, "altered datagram delivered");
    }
    if result.is_err() {
        assert_eq!(pair.b.sent.len(), sent, "error answered");
    }
}

#[cfg(test)]
mod tests {
    /// Replays each target's committed corpus, so a target cannot rot unnoticed.
    fn replay(target: &str, body: fn(&[u8])) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        crate::testing::replay_corpus(&dir, body);
    }

    #[test]
    fn dp06_fuzz_corpus_parse_replays() {
        replay("parse", super::parse);
    }

    #[test]
    fn dp06_fuzz_corpus_handshake_replays() {
        replay("handshake", super::handshake);
    }

    #[test]
    fn dp06_fuzz_corpus_decapsulate_replays() {
        replay("decapsulate", super::decapsulate);
    }
}
