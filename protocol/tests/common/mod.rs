//! What the multi-device harnesses of these tests share: a datagram in flight, and the
//! virtual-time loop ([`protocol::testing::VirtualNet`]) for a harness that keeps `now`,
//! `in_flight: VecDeque<Datagram>` and `devices: Vec<Device>`, and has `flush` and `deliver`
//! methods of its own.

#![allow(dead_code)] // each test file uses its part

use protocol::testing::ipv4_udp_packet;
use protocol::{Device, DeviceConfig, IpPrefix, PeerConfig, PresharedKey, StaticPublic, StaticSecret, WallClock};
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

pub struct Datagram {
    pub at: Instant,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

#[macro_export]
macro_rules! virtual_net {
    ($net:ty) => {
        impl protocol::testing::VirtualNet for $net {
            fn now(&self) -> std::time::Instant {
                self.now
            }
            fn set_now(&mut self, now: std::time::Instant) {
                self.now = now;
            }
            fn flush(&mut self) {
                <$net>::flush(self);
            }
            fn next_delivery(&self) -> Option<std::time::Instant> {
                self.in_flight.iter().map(|d| d.at).min()
            }
            fn deliver_due(&mut self) {
                while let Some(index) = self.in_flight.iter().position(|d| d.at <= self.now) {
                    let datagram = self.in_flight.remove(index).expect("present");
                    self.deliver(datagram);
                }
            }
            fn devices(&mut self) -> &mut [protocol::Device] {
                &mut self.devices
            }
        }
    };
}

/// Two members (indices 0 and 1) and the owner's CloudPal (2) doing relay duty for them, on
/// documentation addresses: members know CloudPal's address and use it as their relay;
/// CloudPal learns theirs when they speak. `key_base` varies the keys between test files.
pub struct Trio {
    pub devices: Vec<Device>,
    pub keys: Vec<StaticPublic>,
    pub addresses: Vec<SocketAddr>,
    pub overlays: Vec<IpAddr>,
}

pub const RELAY: usize = 2;

pub fn members_and_relay(now: Instant, key_base: u8) -> Trio {
    let secrets: Vec<StaticSecret> = (1..=3u8).map(|i| StaticSecret::from_bytes([i + key_base; 32])).collect();
    let keys: Vec<StaticPublic> = secrets.iter().map(StaticSecret::public_key).collect();
    let addresses: Vec<SocketAddr> = ["192.0.2.10:41641", "198.51.100.20:41641", "203.0.113.1:41641"].iter().map(|a| a.parse().expect("address")).collect();
    let overlays: Vec<IpAddr> = ["100.64.0.1", "100.64.0.2", "100.64.0.3"].iter().map(|a| a.parse().expect("overlay")).collect();
    let clock = WallClock { anchor: now, unix_time_at_anchor: SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default() };
    let mut devices: Vec<Device> = secrets
        .iter()
        .enumerate()
        .map(|(i, secret)| {
            let config = DeviceConfig { static_secret: secret.clone(), psk: PresharedKey::from_bytes([9; 32]), under_load_threshold: 64, mtu: 1420, clock };
            Device::new(config, [i as u8 + 40 + key_base; 32])
        })
        .collect();
    for (i, device) in devices.iter_mut().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            let endpoint = (j == RELAY).then_some(addresses[RELAY]);
            device.upsert_peer(PeerConfig { static_public: keys[j], allowed_ips: vec![IpPrefix::host(overlays[j])], endpoint, persistent_keepalive: None, guest: None });
        }
    }
    devices[RELAY].set_relay_server(true);
    for member in [0, 1] {
        devices[member].set_relay(Some((addresses[RELAY], keys[RELAY])), now);
    }
    Trio { devices, keys, addresses, overlays }
}

/// Every datagram the devices have to send now: (sender, destination, bytes).
pub fn poll_all(devices: &mut [Device], now: Instant) -> Vec<(usize, SocketAddr, Vec<u8>)> {
    let mut out = vec![0u8; 65_536];
    let mut sent = Vec::new();
    for (i, device) in devices.iter_mut().enumerate() {
        while let Some(transmit) = device.poll_transmit(&mut out, now) {
            sent.push((i, transmit.destination, out[..transmit.len].to_vec()));
        }
    }
    sent
}

/// A UDP packet from overlay `from` to overlay `to` through `device`'s tunnel: the datagram
/// to send, unless it waits behind a handshake.
pub fn encapsulate_ip(device: &mut Device, from: IpAddr, to: IpAddr, payload: &[u8], now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
    let packet = ipv4_udp_packet(from, to, payload);
    let mut out = vec![0u8; 65_536];
    match device.encapsulate(&packet, &mut out, now) {
        Ok(Some(transmit)) => Some((transmit.destination, out[..transmit.len].to_vec())),
        _ => None,
    }
}
