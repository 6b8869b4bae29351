//! Three devices on one LAN form a network through invites, reach each other over IPv4 and
//! IPv6 overlay addresses, carry an iperf3 TCP stream, agree on the device list, and keep
//! working after one of them restarts. Needs root (namespaces, TUN), iproute2, ping, iperf3.

use std::time::Duration;
use tests::{LanNetwork, wait_until};

#[test]
fn three_devices_on_a_lan_form_a_network_and_carry_traffic() {
    let mut net = LanNetwork::form(&["laptop", "phone", "desktop"]);
    assert!(net.wait_for_membership(Duration::from_secs(20)), "membership did not converge");

    // Every device lists the same devices, all active, with the right roles.
    let lists: Vec<_> = net.nodes.iter().map(|n| n.device_list()).collect();
    assert!(lists.windows(2).all(|pair| pair[0] == pair[1]), "device lists differ: {lists:#?}");
    let roles: Vec<(&str, &str)> = lists[0]
        .as_array()
        .expect("array")
        .iter()
        .map(|d| (d["name"].as_str().expect("name"), d["role"].as_str().expect("role")))
        .collect();
    assert!(roles.contains(&("laptop", "admin")) && roles.contains(&("phone", "member")), "{roles:?}");

    // Kademlia: every node's routing table holds the other two (fed from identify).
    for node in &net.nodes {
        let ok = wait_until(Duration::from_secs(10), || node.status()["dht_peers"].as_u64().unwrap_or(0) >= 2);
        assert!(ok, "{}: DHT routing table {}", node.name, node.status()["dht_peers"]);
    }

    // `pal ping` between every pair, reporting the direct path.
    for from in ["laptop", "phone", "desktop"] {
        for to in ["laptop", "phone", "desktop"].iter().filter(|to| **to != from) {
            let ok = wait_until(Duration::from_secs(15), || net.node(from).pal(&["ping", to, "-c", "1"]).status.success());
            assert!(ok, "{from} cannot pal-ping {to}: {}", net.node(from).log());
            let output = net.node(from).pal_ok(&["ping", to, "-c", "2"]);
            assert!(output.contains("path=direct"), "{output}");
        }
    }

    // Kernel traffic through the TUN, IPv4 and IPv6.
    let (phone_v4, phone_v6) = net.node("phone").overlay();
    let (desktop_v4, _) = net.node("desktop").overlay();
    let ping4 = net.node("laptop").netns.exec("ping", &["-c", "3", "-W", "2", &phone_v4]);
    assert!(ping4.status.success(), "{}", String::from_utf8_lossy(&ping4.stdout));
    let ping6 = net.node("laptop").netns.exec("ping", &["-6", "-c", "3", "-W", "2", &phone_v6]);
    assert!(ping6.status.success(), "{}", String::from_utf8_lossy(&ping6.stdout));

    // An iperf3 TCP stream phone → desktop.
    let server_log = std::env::temp_dir().join(tests::unique("iperf-"));
    let mut server = net.node("desktop").netns.spawn("iperf3", &["-s", "-1", "-B", &desktop_v4], &server_log);
    std::thread::sleep(Duration::from_millis(500));
    let client = net.node("phone").netns.exec("iperf3", &["-c", &desktop_v4, "-t", "3", "-J"]);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&server_log);
    assert!(client.status.success(), "iperf3 failed: {}", String::from_utf8_lossy(&client.stderr));
    let report: serde_json::Value = serde_json::from_slice(&client.stdout).expect("iperf3 JSON");
    let bits_per_second = report["end"]["sum_received"]["bits_per_second"].as_f64().expect("throughput");
    assert!(bits_per_second > 10e6, "only {bits_per_second} bit/s through the overlay");

    // The tunnel's datagrams went over UDP sockets connected to each peer (the data port
    // shared with SO_REUSEPORT), which spare the kernel a route lookup per datagram.
    for (node, peer) in [("phone", "desktop"), ("desktop", "phone")] {
        // (IPv4-mapped on a dual-stack socket.)
        let peer_endpoint = format!("{}]:41641", net.node(peer).address);
        let sockets = net.node(node).netns.exec("ss", &["-Hun", "state", "established", "( sport = :41641 )"]);
        let sockets = String::from_utf8_lossy(&sockets.stdout);
        assert!(sockets.contains(&format!("[::ffff:{peer_endpoint}")) || sockets.contains(&peer_endpoint.replace(']', "")), "{node} has no data socket connected to {peer}: {sockets}");
    }

    // Status reports the peers with direct paths and traffic counters.
    let status = net.node("phone").status();
    let desktop = status["peers"].as_array().expect("peers").iter().find(|p| p["name"] == "desktop").expect("desktop peer");
    assert_eq!(desktop["path"], "direct");
    assert!(desktop["tx_bytes"].as_u64().expect("tx") > 1_000_000, "{desktop}");

    // Restart one node: state survives and traffic resumes.
    net.node_mut("desktop").down();
    net.node_mut("desktop").up();
    let back = wait_until(Duration::from_secs(20), || net.node("laptop").pal(&["ping", "desktop", "-c", "1"]).status.success());
    assert!(back, "desktop unreachable after restart: {}", net.node("desktop").log());
    assert_eq!(net.node("desktop").device_list(), lists[0], "state survived the restart");
}

/// `GET /metrics` inside a node's namespace: the body, or `None` when nothing listens.
fn scrape(node: &tests::PalNode, port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let name = node.netns.name.clone();
    std::thread::spawn(move || {
        tests::enter_namespace(&name);
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.starts_with("HTTP/1.1 200").then(|| response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
    })
    .join()
    .expect("scraper")
}

/// Prometheus metrics are off by default; with `--metrics 127.0.0.1:PORT` a scrape counts
/// peers, paths, bytes and handshakes — and carries no address, key or device name.
#[test]
fn metrics_are_off_by_default_and_name_nobody_when_on() {
    const PORT: u16 = 9464;
    let mut net = LanNetwork::form(&["laptop", "phone"]);
    assert!(net.wait_for_membership(Duration::from_secs(20)), "membership did not converge");
    assert_eq!(scrape(&net.nodes[0], PORT), None, "metrics served without --metrics");
    net.nodes[0].down();
    net.nodes[0].up_with(&["--metrics", &format!("127.0.0.1:{PORT}")]);
    assert!(wait_until(Duration::from_secs(20), || net.nodes[0].pal(&["ping", "phone", "-c", "1"]).status.success()), "no ping");
    let text = scrape(&net.nodes[0], PORT).expect("a scrape");
    for line in ["pal_peers 1", "pal_peer_paths{path=\"direct\"} 1"] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    let handshakes: u64 = text.lines().find_map(|l| l.strip_prefix("pal_handshakes_total ")).and_then(|v| v.parse().ok()).expect("handshakes");
    assert!(handshakes >= 1, "{text}");
    let (v4, v6) = net.nodes[1].overlay();
    for secret in [net.nodes[1].address.as_str(), v4.as_str(), v6.as_str(), "phone", "laptop"] {
        assert!(!text.contains(secret), "the metrics name {secret:?}");
    }
    // The same from the options file in the state directory, and no flag.
    const FILE_PORT: u16 = 9465;
    net.nodes[1].down();
    std::fs::write(net.nodes[1].state.join("pal.toml"), format!("# pal up's options\nmetrics = \"127.0.0.1:{FILE_PORT}\"\n")).expect("pal.toml");
    net.nodes[1].up();
    let text = scrape(&net.nodes[1], FILE_PORT).expect("metrics from pal.toml");
    assert!(text.lines().any(|l| l == "pal_peers 1"), "{text}");
}
