//! The overlay interface.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The overlay interface to create.
#[derive(Debug, Clone)]
pub struct TunConfig {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Ask the kernel for TCP/UDP segmentation offload on the interface (virtio-net header).
    pub offload: bool,
}

/// Creates the TUN device, with offloads when asked and the kernel has them, else without.
pub fn open_tun(config: &TunConfig) -> anyhow::Result<tun_rs::SyncDevice> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(&config.name)
            .ipv4(config.ipv4, membership::overlay::OVERLAY_IPV4_PREFIX.1, None)
            .ipv6(config.ipv6, membership::overlay::OVERLAY_IPV6_PREFIX_LEN)
            .mtu(protocol::wire::DEFAULT_MTU as u16)
            .offload(offload)
            .build_sync()
    };
    let device = match build(config.offload) {
        Ok(device) => Ok(device),
        Err(_) if config.offload => build(false),
        Err(error) => Err(error),
    };
    let device = device.map_err(|error| match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => anyhow::anyhow!("cannot create the TUN device: run pal up as root (it needs CAP_NET_ADMIN)"),
        _ => anyhow::anyhow!("cannot create the TUN device {}: {error}", config.name),
    })?;
    device.set_nonblocking(true)?;
    tracing::info!(tcp_offload = device.tcp_gso(), udp_offload = device.udp_gso(), "overlay interface up");
    Ok(device)
}

/// Where the data plane's inner packets go: the kernel's TUN device, or (`pal up
/// --userspace`, no root) one end of a packet socket pair whose other end is the userspace
/// TCP/IP stack ([`crate::userspace`]). One packet per read or write either way.
pub enum Overlay {
    Tun(tun_rs::SyncDevice),
    Pipe(std::os::fd::OwnedFd),
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overlay::Tun(_) => "Overlay::Tun",
            Overlay::Pipe(_) => "Overlay::Pipe",
        })
    }
}

/// What [`crate::dataplane::spawn`] opens.
#[derive(Debug)]
pub enum OverlayConfig {
    Tun(TunConfig),
    Pipe(std::os::fd::OwnedFd),
}

impl OverlayConfig {
    pub(super) fn open(self) -> anyhow::Result<Overlay> {
        match self {
            OverlayConfig::Tun(config) => open_tun(&config).map(Overlay::Tun),
            OverlayConfig::Pipe(fd) => Ok(Overlay::Pipe(fd)),
        }
    }
}

impl std::os::fd::AsRawFd for Overlay {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Overlay::Tun(tun) => tun.as_raw_fd(),
            Overlay::Pipe(fd) => fd.as_raw_fd(),
        }
    }
}

impl Overlay {
    /// Whether reads may carry whole TCP segments (and writes may be coalesced).
    pub fn tcp_gso(&self) -> bool {
        matches!(self, Overlay::Tun(tun) if tun.tcp_gso())
    }

    pub fn send(&self, packet: &[u8]) -> std::io::Result<usize> {
        match self {
            Overlay::Tun(tun) => tun.send(packet),
            Overlay::Pipe(fd) => pipe_send(fd, packet),
        }
    }

    /// Writes `packets` (each from `offset` on); coalesced into segments on a TUN with offloads.
    pub fn send_multiple(&self, gro: &mut tun_rs::GROTable, packets: &mut [Vec<u8>], offset: usize) -> std::io::Result<usize> {
        match self {
            Overlay::Tun(tun) => tun.send_multiple(gro, packets, offset),
            Overlay::Pipe(fd) => {
                for packet in packets.iter() {
                    pipe_send(fd, &packet[offset..])?;
                }
                Ok(packets.len())
            }
        }
    }

    /// One read: how many packets of `packets` it filled (from `offset`), their sizes in
    /// `sizes`; a TUN with offloads splits one segment into several.
    pub fn recv_multiple(&self, scratch: &mut [u8], packets: &mut [Vec<u8>], sizes: &mut [usize], offset: usize) -> std::io::Result<usize> {
        match self {
            Overlay::Tun(tun) => tun.recv_multiple(scratch, packets, sizes, offset),
            Overlay::Pipe(fd) => {
                let (Some(buffer), Some(size)) = (packets.first_mut(), sizes.first_mut()) else { return Ok(0) };
                let target = buffer.get_mut(offset..).ok_or_else(|| std::io::Error::other("packet buffer too small"))?;
                // SAFETY: a valid descriptor and a writable buffer of the given length.
                let read = unsafe { libc::recv(fd.as_raw_fd(), target.as_mut_ptr().cast(), target.len(), libc::MSG_DONTWAIT) };
                if read < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                *size = read as usize;
                Ok(1)
            }
        }
    }
}

use std::os::fd::AsRawFd;

fn pipe_send(fd: &std::os::fd::OwnedFd, packet: &[u8]) -> std::io::Result<usize> {
    // SAFETY: a valid descriptor and a readable buffer of the given length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if sent < 0 { Err(std::io::Error::last_os_error()) } else { Ok(sent as usize) }
}

/// A connected pair of packet sockets (one packet per message, non-blocking): the data
/// plane's end, and the userspace stack's.
pub fn packet_pair() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: a two-element array for the two descriptors; the result is checked.
    let made = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if made < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two fresh descriptors nobody else owns.
    Ok(unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) })
}
