//! Invite codes: everything a new device needs to join, in one copyable string.
//!
//! `pal1` + base32 (lower case, no padding) of: version, network id, invite entry hash, the
//! invite's one-time secret (an ed25519 seed: 256 bits of entropy), and the inviter's
//! reachable addresses. The code is a secret: `Debug` redacts it and it is printed only where
//! asked (INV-06).

use anyhow::{Result, bail};
use membership::{EntryHash, NetworkId};
use protocol::DeviceSigningKey;

const PREFIX: &str = "pal1";
const VERSION: u8 = 1;
/// Addresses carried; more would only make the code unwieldy.
const MAX_ADDRESSES: usize = 8;
const MAX_ADDRESS_LEN: usize = 200;

pub struct InviteCode {
    pub network: NetworkId,
    pub invite: EntryHash,
    pub secret: DeviceSigningKey,
    pub bootstrap: Vec<String>,
}

impl InviteCode {
    pub fn encode(&self) -> String {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&self.network.0);
        bytes.extend_from_slice(&self.invite.0);
        bytes.extend_from_slice(self.secret.expose_secret());
        let addresses: Vec<&String> =
            self.bootstrap.iter().filter(|a| a.len() <= MAX_ADDRESS_LEN).take(MAX_ADDRESSES).collect();
        bytes.push(addresses.len() as u8);
        for address in addresses {
            bytes.push(address.len() as u8);
            bytes.extend_from_slice(address.as_bytes());
        }
        format!("{PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    }

    pub fn decode(code: &str) -> Result<Self> {
        let garbled = || anyhow::anyhow!("this invite code is garbled; copy it again from `pal device invite`");
        let body = code.trim().strip_prefix(PREFIX).ok_or_else(garbled)?;
        let bytes = data_encoding::BASE32_NOPAD.decode(body.to_ascii_uppercase().as_bytes()).map_err(|_| garbled())?;
        let mut reader = bytes.as_slice();
        let mut take = |n: usize| -> Result<&[u8]> {
            if reader.len() < n {
                return Err(garbled());
            }
            let (head, rest) = reader.split_at(n);
            reader = rest;
            Ok(head)
        };
        if take(1)? != [VERSION] {
            bail!("this invite code is from a newer CloudPal; update pal");
        }
        let network = NetworkId(take(32)?.try_into().map_err(|_| garbled())?);
        let invite = EntryHash(take(32)?.try_into().map_err(|_| garbled())?);
        let secret: [u8; 32] = take(32)?.try_into().map_err(|_| garbled())?;
        let count = usize::from(take(1)?[0]);
        if count > MAX_ADDRESSES {
            return Err(garbled());
        }
        let mut bootstrap = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(take(1)?[0]);
            let address = std::str::from_utf8(take(len)?).map_err(|_| garbled())?;
            bootstrap.push(address.to_owned());
        }
        if !reader.is_empty() {
            return Err(garbled()); // trailing bytes
        }
        Ok(Self { network, invite, secret: DeviceSigningKey::from_bytes(&secret), bootstrap })
    }
}

impl core::fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("InviteCode(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> InviteCode {
        InviteCode {
            network: NetworkId([1; 32]),
            invite: EntryHash([2; 32]),
            secret: DeviceSigningKey::from_bytes(&[3; 32]),
            bootstrap: vec!["/ip4/192.0.2.1/tcp/41641/p2p/12D3KooWExample".into()],
        }
    }

    #[test]
    fn round_trips() {
        let decoded = InviteCode::decode(&code().encode()).expect("decodes");
        assert_eq!(decoded.network, NetworkId([1; 32]));
        assert_eq!(decoded.invite, EntryHash([2; 32]));
        assert_eq!(decoded.secret.expose_secret(), &[3; 32]);
        assert_eq!(decoded.bootstrap, code().bootstrap);
    }

    #[test]
    fn inv03_garbled_codes_fail_with_one_clear_line() {
        let good = code().encode();
        for bad in [String::new(), "pal1".into(), good[..good.len() - 3].to_string(), format!("{good}aa"), good.replace("pal1", "xyz1")] {
            let Err(error) = InviteCode::decode(&bad) else { panic!("{bad:?} accepted") };
            let error = error.to_string();
            assert!(!error.contains('\n') && error.contains("invite code"), "{error}");
        }
    }

    #[test]
    fn inv06_debug_is_redacted() {
        let printed = format!("{:?}", code());
        assert_eq!(printed, "InviteCode(<redacted>)");
    }
}
