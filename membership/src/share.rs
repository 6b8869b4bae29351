//! What a guest may reach: devices of the network, each with the ports shared on it (none
//! listed: every port). Given when the guest is invited (`Invite.shares`) and replaced later
//! by an admin's `Share` entry; every device enforces it in its data plane.

use crate::cbor::{CborError, Reader, Writer};
use protocol::DeviceId;
use std::fmt;
use std::str::FromStr;

/// Devices one guest may reach, and port ranges on one device.
pub const MAX_SHARES: usize = 64;
pub const MAX_PORT_RANGES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Share {
    pub device: DeviceId,
    /// TCP and UDP destination ports on `device`; empty: all of them.
    pub ports: Vec<PortRange>,
}

/// Ports `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last { write!(f, "{}", self.first) } else { write!(f, "{}-{}", self.first, self.last) }
    }
}

/// `22`, `8000-8100`; refused as one line that says what to write.
impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p != 0);
        let range = match text.split_once('-') {
            Some((first, last)) => port(first).zip(port(last)).map(|(first, last)| PortRange { first, last }),
            None => port(text).map(|p| PortRange { first: p, last: p }),
        };
        range
            .filter(|r| r.first <= r.last)
            .ok_or_else(|| format!("bad port {text:?}: give a port (22) or a range (8000-8100), 1 to 65535"))
    }
}

/// `DEVICE[:PORTS]` as a user types it: the device by name, ports comma-separated.
pub fn parse_spec(spec: &str) -> Result<(String, Vec<PortRange>), String> {
    let (device, ports) = match spec.split_once(':') {
        Some((device, ports)) => (device, Some(ports)),
        None => (spec, None),
    };
    crate::entry::check_name(device).map_err(|e| e.to_string())?;
    let ports = match ports {
        Some(ports) => ports.split(',').map(str::parse).collect::<Result<Vec<PortRange>, _>>()?,
        None => Vec::new(),
    };
    if ports.len() > MAX_PORT_RANGES {
        return Err(format!("at most {MAX_PORT_RANGES} port ranges per shared device"));
    }
    Ok((device.to_owned(), normalise(ports)))
}

/// Sorted, without duplicates: the one form that is encoded (so equal shares are equal bytes).
pub fn normalise(mut ports: Vec<PortRange>) -> Vec<PortRange> {
    ports.sort();
    ports.dedup();
    ports
}

pub(crate) fn encode(w: &mut Writer, shares: &[Share]) {
    w.array(shares.len());
    for share in shares {
        w.array(2);
        w.bytes(share.device.as_bytes());
        w.array(share.ports.len());
        for range in &share.ports {
            w.array(2);
            w.u64(u64::from(range.first));
            w.u64(u64::from(range.last));
        }
    }
}

pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Vec<Share>, CborError> {
    let count = r.array_up_to(MAX_SHARES)?;
    let mut shares = Vec::with_capacity(count);
    for _ in 0..count {
        r.array(2)?;
        let device = DeviceId::from_bytes(r.fixed_bytes::<16>()?);
        let ranges = r.array_up_to(MAX_PORT_RANGES)?;
        let mut ports = Vec::with_capacity(ranges);
        for _ in 0..ranges {
            r.array(2)?;
            let first = u16::try_from(r.u64()?).map_err(|_| CborError::UnexpectedLength)?;
            let last = u16::try_from(r.u64()?).map_err(|_| CborError::UnexpectedLength)?;
            if first == 0 || first > last {
                return Err(CborError::UnexpectedLength);
            }
            ports.push(PortRange { first, last });
        }
        // Only the normal form is canonical.
        if ports != normalise(ports.clone()) {
            return Err(CborError::NonCanonical);
        }
        shares.push(Share { device, ports });
    }
    if shares.windows(2).any(|pair| pair[0].device >= pair[1].device) {
        return Err(CborError::NonCanonical);
    }
    Ok(shares)
}

/// Shares in their canonical order (one per device, by device id; a device named twice keeps
/// the union of its ports, and "all ports" wins).
pub fn canonical(shares: Vec<Share>) -> Vec<Share> {
    let mut by_device: std::collections::BTreeMap<DeviceId, Option<Vec<PortRange>>> = std::collections::BTreeMap::new();
    for share in shares {
        let entry = by_device.entry(share.device).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), share.ports.is_empty()) {
            (Some(_), true) => *entry = None,
            (Some(ports), false) => ports.extend(share.ports),
            (None, _) => {}
        }
    }
    by_device.into_iter().map(|(device, ports)| Share { device, ports: normalise(ports.unwrap_or_default()) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_to_write() {
        assert_eq!(parse_spec("laptop").unwrap(), ("laptop".into(), vec![]));
        assert_eq!(
            parse_spec("nas:8080,22,8000-8100").unwrap(),
            ("nas".into(), vec![PortRange { first: 22, last: 22 }, PortRange { first: 8000, last: 8100 }, PortRange { first: 8080, last: 8080 }])
        );
        assert!(parse_spec("nas:0").unwrap_err().contains("1 to 65535"));
        assert!(parse_spec("nas:90-80").is_err());
        assert!(parse_spec("nas:http").is_err());
        assert!(parse_spec("bad name:22").is_err());
    }

    #[test]
    fn canonical_merges_one_device_named_twice() {
        let d = DeviceId::from_bytes([1; 16]);
        let e = DeviceId::from_bytes([0; 16]);
        let p = |n| PortRange { first: n, last: n };
        let merged = canonical(vec![Share { device: d, ports: vec![p(80)] }, Share { device: e, ports: vec![] }, Share { device: d, ports: vec![p(22)] }]);
        assert_eq!(merged, vec![Share { device: e, ports: vec![] }, Share { device: d, ports: vec![p(22), p(80)] }]);
        let all = canonical(vec![Share { device: d, ports: vec![p(80)] }, Share { device: d, ports: vec![] }]);
        assert_eq!(all, vec![Share { device: d, ports: vec![] }]);
    }

    #[test]
    fn encoding_round_trips_and_refuses_unsorted_ports() {
        let shares = vec![Share { device: DeviceId::from_bytes([2; 16]), ports: vec![PortRange { first: 22, last: 22 }, PortRange { first: 80, last: 90 }] }];
        let mut w = Writer::new();
        encode(&mut w, &shares);
        let bytes = w.finish();
        assert_eq!(decode(&mut Reader::new(&bytes)).unwrap(), shares);
        let mut w = Writer::new();
        encode(&mut w, &[Share { device: DeviceId::from_bytes([2; 16]), ports: vec![PortRange { first: 80, last: 90 }, PortRange { first: 22, last: 22 }] }]);
        assert!(decode(&mut Reader::new(&w.finish())).is_err());
    }
}
