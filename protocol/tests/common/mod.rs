//! What the multi-device harnesses of these tests share: a datagram in flight, and the
//! virtual-time loop ([`protocol::testing::VirtualNet`]) for a harness that keeps `now`,
//! `in_flight: VecDeque<Datagram>` and `devices: Vec<Device>`, and has `flush` and `deliver`
//! methods of its own.

use std::net::SocketAddr;
use std::time::Instant;

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
