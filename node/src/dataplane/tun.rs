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
