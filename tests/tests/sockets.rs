//! The data plane's connected UDP sockets (`node::dataplane::connected`) against a real routing table:
//! a socket whose fixed source address the kernel would no longer pick is closed by the
//! sweep, and one whose source address is gone fails its sends (the data plane then closes
//! it and sends on the shared socket). Both are what keeps a WiFi→cell handoff from sending
//! into a black hole.

use node::dataplane::connected::{self, Connections};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use tests::{Lan, enter_namespace};

fn receive_from(socket: &UdpSocket) -> Option<SocketAddr> {
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut buffer = [0u8; 64];
    socket.recv_from(&mut buffer).ok().map(|(_, from)| from)
}

#[test]
fn connected_sockets_follow_source_address_and_route_changes() {
    let mut lan = Lan::new("203.0.113");
    let (a, a_address) = lan.host("sa");
    let (b, b_address) = lan.host("sb");
    a.ip(&["addr", "add", "203.0.113.77/24", "dev", "eth0"]);
    let remote = b.udp_socket(&format!("{b_address}:0"));
    let remote_address = remote.local_addr().expect("address");

    let namespace = a.name.clone();
    let a_ip = a_address.clone();
    let (to_test, from_test) = std::sync::mpsc::channel::<&'static str>();
    let (to_main, from_main) = std::sync::mpsc::channel::<()>();
    // Sockets are made by the thread inside the namespace; the main thread changes routes.
    let worker = std::thread::spawn(move || {
        enter_namespace(&namespace);
        let shared = connected::bind_shared("0.0.0.0:0".parse().expect("address")).expect("bind");
        let port = shared.local_addr().expect("address").port();
        let mut connections = Connections::new(&shared);
        let start = Instant::now();
        let (slot, _) = connections.open(remote_address, start).expect("open");
        connections.send(slot, b"one", None, start).expect("send");
        assert_eq!(receive_from(&remote), Some(format!("{a_ip}:{port}").parse().expect("address")), "sent from the data port");

        // Nothing changed: the sweep keeps it.
        connections.sweep(start + Duration::from_secs(1));
        assert_eq!(connections.lookup(remote_address), Some(slot), "kept while its source is right");

        // The route to the remote now prefers another source address (the old one stays).
        to_main.send(()).expect("main");
        assert_eq!(from_test.recv().expect("main"), "route changed");
        connections.send(slot, b"two", None, start + Duration::from_secs(1)).expect("send");
        assert_eq!(receive_from(&remote), Some(format!("{a_ip}:{port}").parse().expect("address")), "still the old source");
        connections.sweep(start + Duration::from_secs(2));
        assert_eq!(connections.lookup(remote_address), None, "closed: the route picks another source");
        let (slot, _) = connections.open(remote_address, start + Duration::from_secs(2)).expect("reopen");
        connections.send(slot, b"three", None, start + Duration::from_secs(2)).expect("send");
        assert_eq!(receive_from(&remote), Some(format!("203.0.113.77:{port}").parse().expect("address")), "the new socket uses the new source");

        // Its source address disappears: sends fail, which is the data plane's cue to close it.
        to_main.send(()).expect("main");
        assert_eq!(from_test.recv().expect("main"), "address gone");
        assert!(connections.send(slot, b"four", None, start + Duration::from_secs(3)).is_err(), "a send from a vanished address must fail");
        // The shared socket still sends, from whatever source is left.
        shared.send_to(b"five", remote_address).expect("shared send");
        assert_eq!(receive_from(&remote), Some(format!("{a_ip}:{port}").parse().expect("address")));
    });
    from_main.recv().expect("worker");
    a.ip(&["route", "replace", &format!("{b_address}/32"), "dev", "eth0", "src", "203.0.113.77"]);
    to_test.send("route changed").expect("worker");
    from_main.recv().expect("worker");
    a.ip(&["route", "del", &format!("{b_address}/32")]);
    a.ip(&["addr", "del", "203.0.113.77/24", "dev", "eth0"]);
    to_test.send("address gone").expect("worker");
    worker.join().expect("the worker's assertions");
}
