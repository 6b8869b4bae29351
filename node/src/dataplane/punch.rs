//! The hard side's sockets of a birthday punch ([`protocol::birthday`]): up to 256 UDP
//! sockets, each on a port of its own, so that a symmetric NAT opens a mapping for each toward
//! the easy side's address. Each sends the device's one sealed probe once; the first that
//! hears an authenticated answer is kept as the peer's connected socket (its mapping is now
//! the path) and the rest close. Unanswered, they all close after
//! [`protocol::birthday::HOLD_SOCKETS`].

use super::connected::{self, new_socket};
use super::poller::Interest;
use super::{CONNECTED, DataPlane, PUNCH, UDP_BATCH};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

/// One attempt's sockets, by index (the poller's token is derived from it).
#[derive(Debug, Default)]
pub struct PunchSockets {
    sockets: Vec<Option<UdpSocket>>,
    until: Option<Instant>,
}

impl PunchSockets {
    /// Opens up to `count` sockets, sends `datagram` from each to `destination`, and returns
    /// the descriptors to watch with their indices. Any sockets of an earlier attempt close.
    /// Fewer open when descriptors run short; the attempt's odds shrink, nothing else.
    pub fn open(&mut self, destination: SocketAddr, datagram: &[u8], count: usize, until: Instant) -> Vec<(usize, RawFd)> {
        self.close();
        let local: SocketAddr = if destination.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let mut watch = Vec::with_capacity(count);
        for index in 0..count {
            let Ok(socket) = new_socket(local, Some(true), false) else { break };
            if socket.bind(&local.into()).is_err() {
                break;
            }
            let socket: UdpSocket = socket.into();
            // A full buffer or an unreachable network loses this probe only.
            let _ = socket.send_to(datagram, destination);
            watch.push((index, socket.as_raw_fd()));
            self.sockets.push(Some(socket));
        }
        self.until = (!self.sockets.is_empty()).then_some(until);
        watch
    }

    pub fn get(&self, index: usize) -> Option<&UdpSocket> {
        self.sockets.get(index).and_then(Option::as_ref)
    }

    /// The winner: socket `index` leaves the set, and the others close.
    pub fn take(&mut self, index: usize) -> Option<UdpSocket> {
        let socket = self.sockets.get_mut(index).and_then(Option::take);
        self.close();
        socket
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.until
    }

    /// Closes the set once its time is up (closing a descriptor takes it out of the poller).
    pub fn expire(&mut self, now: Instant) {
        if self.until.is_some_and(|until| until <= now) {
            self.close();
        }
    }

    pub fn close(&mut self) {
        self.sockets.clear();
        self.until = None;
    }

    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        self.sockets.iter().flatten().count()
    }
}

/// The packet thread's side: opening a set when the device asks, its answers, and relay
/// duty's reflector (the NAT check the punch rests on).
impl DataPlane {
    /// Opens the hard side's sockets when the device starts an attempt.
    pub(super) fn open_punch(&mut self, now: Instant) {
        let Some(open) = self.device.poll_punch(&mut self.io.scratch, now) else { return };
        let until = now + protocol::birthday::HOLD_SOCKETS;
        let watch = self.punch.open(open.destination, &self.io.scratch[..open.len], open.sockets, until);
        tracing::debug!(sockets = watch.len(), "birthday punch: mappings opened");
        for (index, fd) in watch {
            let _ = self.poller.add(fd, PUNCH + index as u64);
        }
    }

    /// A datagram on a birthday punch's socket: the easy side's probe, through the one NAT
    /// mapping it found. Once it authenticates, that socket is the peer's path (a connected
    /// socket from now on) and the set's others close.
    pub(super) fn read_punch(&mut self, index: usize, now: Instant) {
        let Some(socket) = self.punch.get(index) else { return };
        let Ok((len, source)) = socket.recv_from(&mut self.io.udp_read[0]) else { return };
        let source = SocketAddr::new(source.ip().to_canonical(), source.port());
        self.on_datagram(source, 0, 0..len, now);
        self.write_tun();
        if !self.device.is_direct_endpoint(source, now) {
            return;
        }
        let adopted = self.punch.take(index).and_then(|socket| self.out.connections.adopt(socket, source, now));
        tracing::debug!(index, adopted = adopted.is_some(), "birthday punch: a socket heard the peer");
        if let Some((slot, fd)) = adopted {
            self.out.queue(slot).clear();
            // Watched already, under its punch token.
            if self.poller.modify(fd, CONNECTED + slot as u64, Interest::Read).is_err() {
                self.out.connections.close(slot);
            }
        }
    }

    /// Relay duty's reflector: answers the NAT check's probes, a few per wakeup.
    pub(super) fn reflect(&mut self, now: Instant) {
        let Some(socket) = self.reflector.as_ref() else { return };
        for _ in 0..UDP_BATCH {
            let Ok((len, source)) = socket.recv_from(&mut self.io.udp_read[0]) else { return };
            let source = SocketAddr::new(source.ip().to_canonical(), source.port());
            if let Some(answer) = self.device.reflect(source, &self.io.udp_read[0][..len], &mut self.io.scratch, now) {
                let _ = socket.send_to(&self.io.scratch[..answer], connected::reachable_from(socket.local_addr().unwrap_or(source), source));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_socket_sends_the_probe_from_a_port_of_its_own_and_the_winner_is_kept() {
        let target = UdpSocket::bind("127.0.0.1:0").expect("bind");
        target.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let destination = target.local_addr().expect("address");
        let mut set = PunchSockets::default();
        let now = Instant::now();
        let watch = set.open(destination, b"probe", 16, now + Duration::from_secs(5));
        assert_eq!(watch.len(), 16);
        let mut sources = std::collections::BTreeSet::new();
        let mut buffer = [0u8; 16];
        for _ in 0..16 {
            let (len, source) = target.recv_from(&mut buffer).expect("a probe");
            assert_eq!(&buffer[..len], b"probe");
            sources.insert(source.port());
        }
        assert_eq!(sources.len(), 16, "two probes from one port");
        // An answer to one of them reaches that socket alone.
        let winner = set.get(5).expect("socket").local_addr().expect("address");
        target.send_to(b"pong", winner).expect("answer");
        let kept = set.take(5).expect("the winner");
        kept.set_nonblocking(false).expect("blocking");
        kept.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let (len, _) = kept.recv_from(&mut buffer).expect("the answer");
        assert_eq!(&buffer[..len], b"pong");
        assert_eq!(set.open_count(), 0, "the others closed");
        assert_eq!(set.deadline(), None);
    }

    #[test]
    fn an_unanswered_set_closes_when_its_time_is_up() {
        let target = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut set = PunchSockets::default();
        let now = Instant::now();
        set.open(target.local_addr().expect("address"), b"probe", 4, now + Duration::from_secs(5));
        set.expire(now + Duration::from_secs(4));
        assert_eq!(set.open_count(), 4);
        set.expire(now + Duration::from_secs(5));
        assert_eq!(set.open_count(), 0);
    }
}
