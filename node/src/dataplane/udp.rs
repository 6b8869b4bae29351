//! Data sockets: what every UDP socket of the data plane (the shared one and each connected
//! one) is switched to.

/// Switches on what the kernel offers a data socket for batches: `recvmmsg`, GRO and GSO
/// (quinn-udp probes each; it also makes the socket non-blocking), and lets the underlay
/// fragment.
pub fn open_udp(udp: &std::net::UdpSocket) -> std::io::Result<quinn_udp::UdpSocketState> {
    let state = quinn_udp::UdpSocketState::new(udp.into())?;
    allow_fragmentation(udp);
    Ok(state)
}

/// quinn-udp sets the don't-fragment bit for QUIC's path-MTU probing. A VPN with a fixed
/// inner MTU must rather let an underlay with a smaller MTU fragment (as WireGuard does), or
/// full-size packets would vanish on such paths.
fn allow_fragmentation(udp: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: a valid socket descriptor and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    let ipv6 = udp.local_addr().is_ok_and(|address| address.is_ipv6());
    if ipv6 {
        set(libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DONT);
        // quinn-udp also sets IPV6_DONTFRAG, which on a dual-stack socket holds for IPv4
        // (mapped) too: without clearing it a datagram over the path MTU is refused (EMSGSIZE).
        set(libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 0);
    }
    set(libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DONT);
}
