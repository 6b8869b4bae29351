//! Devices anywhere (#5): CloudPal on a public address, two devices behind one home router
//! (endpoint-independent NAT), one behind an office router (endpoint-independent) and one
//! behind a carrier's symmetric NAT (with `--no-port-spray`, so that it stays relayed). Real
//! `pal` binaries in namespaces.
//!
//! Times to the first reply and to the first direct reply are printed for each pair type
//! (the numbers in the README come from here); they are not asserted tighter than "it
//! happens", as timing belongs in benchmarks.

use std::time::{Duration, Instant};
use tests::{NatNetwork, wait_until};

/// Pings `from` → `to` until a reply comes back on `path`; the time it took.
fn time_to(net: &NatNetwork, from: &str, to: &str, path: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    wait_until(limit, || net.ping_path(from, to).as_deref() == Some(path)).then(|| start.elapsed())
}

#[test]
fn devices_behind_nats_go_direct_where_the_nats_allow_and_through_cloudpal_where_not() {
    let start = Instant::now();
    let mut net = NatNetwork::form(|_| {});
    eprintln!("network formed in {:?}", start.elapsed());

    // Two devices behind different endpoint-independent NATs: direct, by simultaneous probing.
    let first_reply = time_to(&net, "laptop", "desktop", "relay", Duration::from_secs(20))
        .or_else(|| time_to(&net, "laptop", "desktop", "direct", Duration::from_secs(1)));
    let direct = time_to(&net, "laptop", "desktop", "direct", Duration::from_secs(30));
    eprintln!("EIM <-> EIM: first reply {first_reply:?}, direct {direct:?}");
    assert!(direct.is_some(), "laptop never reached desktop directly: {}", net.node("laptop").log());

    // Two devices behind the same NAT: their LAN path.
    let lan = time_to(&net, "laptop", "phone", "direct", Duration::from_secs(30));
    eprintln!("same NAT: direct {lan:?}");
    assert!(lan.is_some(), "laptop never reached phone directly");
    let status = net.node("laptop").status();
    let phone = status["peers"].as_array().expect("peers").iter().find(|p| p["name"] == "phone").expect("phone").clone();
    let phone_lan = net.node("phone").address.clone();
    assert!(phone["endpoint"].as_str().is_some_and(|e| e.starts_with(&format!("{phone_lan}:"))), "not the LAN path: {phone}");

    // Behind the symmetric NAT, with birthday punching off (`--no-port-spray`): through
    // CloudPal, and never direct. (`birthday.rs` punches through the same NAT.)
    let relayed = time_to(&net, "car", "laptop", "relay", Duration::from_secs(30));
    eprintln!("symmetric <-> EIM: relayed {relayed:?}");
    assert!(relayed.is_some(), "car never reached laptop through the relay: {}", net.node("car").log());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(net.ping_path("car", "laptop").as_deref(), Some("relay"), "a symmetric NAT was punched");
    let (laptop_v4, _) = net.node("laptop").overlay();
    let kernel_ping = net.node("car").netns.exec("ping", &["-c", "3", "-W", "2", &laptop_v4]);
    assert!(kernel_ping.status.success(), "kernel traffic through the relay failed");

    // Time from `pal up` to the first reply and to the expected path, per pair type: the
    // pinged device restarts, and the clock starts when `pal up` is started.
    for (from, restarted, path, kind) in [("laptop", "desktop", "direct", "EIM <-> EIM"), ("laptop", "phone", "direct", "same NAT"), ("laptop", "car", "relay", "EIM <-> symmetric")] {
        net.node_mut(restarted).down();
        let up = Instant::now();
        net.node_mut(restarted).up();
        let replied = wait_until(Duration::from_secs(20), || net.ping_path(from, restarted).is_some()).then(|| up.elapsed());
        let settled = time_to(&net, from, restarted, path, Duration::from_secs(20)).map(|_| up.elapsed());
        eprintln!("{kind}: from pal up, first reply {replied:?}, {path} {settled:?}");
        assert!(settled.is_some(), "{from} -> {restarted} never {path} after a restart");
    }

    // With CloudPal stopped, the direct path keeps carrying traffic.
    net.node_mut("cloudpal").down();
    let (desktop_v4, _) = net.node("desktop").overlay();
    let still = net.node("laptop").netns.exec("ping", &["-c", "5", "-i", "0.5", "-W", "2", &desktop_v4]);
    assert!(still.status.success(), "direct path died with CloudPal: {}", String::from_utf8_lossy(&still.stdout));
    assert_eq!(net.ping_path("laptop", "desktop").as_deref(), Some("direct"));

    // With CloudPal still down, a restarted device finds the devices it can reach (the phone
    // on its LAN) from the peers it cached and the DHT the remaining devices keep.
    net.node_mut("laptop").down();
    let up = Instant::now();
    net.node_mut("laptop").up();
    let found = wait_until(Duration::from_secs(20), || net.ping_path("laptop", "phone").as_deref() == Some("direct"));
    eprintln!("restart with CloudPal down: laptop -> phone direct after {:?}", up.elapsed());
    assert!(found, "a restarted laptop did not find the phone without CloudPal: {}", net.node("laptop").log());
}

/// RL-01: what CloudPal sees of relayed traffic — every frame on its interfaces while a device
/// behind the symmetric NAT sends canary-filled pings through it — holds neither the canary nor
/// the inner IP header (the two overlay addresses side by side).
#[test]
fn rl01_cloudpal_sees_no_plaintext_and_no_inner_header_of_what_it_relays() {
    let net = NatNetwork::form(|_| {});
    assert!(time_to(&net, "car", "laptop", "relay", Duration::from_secs(30)).is_some(), "no relayed path");
    let (car_v4, _) = net.node("car").overlay();
    let (laptop_v4, _) = net.node("laptop").overlay();
    let capture = net.node("cloudpal").netns.capture();
    // "CANARY!!" as the ICMP payload pattern, repeated over 200 bytes.
    let ping = net.node("car").netns.exec("ping", &["-c", "5", "-i", "0.2", "-s", "200", "-p", "43414e4152592121", &laptop_v4]);
    let frames = capture.stop();
    assert!(ping.status.success(), "relayed pings failed");
    let relayed: Vec<&Vec<u8>> = frames.iter().filter(|f| f.len() > 200).collect();
    assert!(relayed.len() >= 10, "captured {} large frames: the capture saw no relayed traffic", relayed.len());
    let inner_header: Vec<u8> = [car_v4.parse::<std::net::Ipv4Addr>().expect("v4").octets(), laptop_v4.parse::<std::net::Ipv4Addr>().expect("v4").octets()].concat();
    let reply_header: Vec<u8> = [&inner_header[4..], &inner_header[..4]].concat();
    for frame in &frames {
        assert!(!frame.windows(8).any(|w| w == b"CANARY!!"), "plaintext canary on CloudPal");
        assert!(!frame.windows(8).any(|w| w == inner_header || w == reply_header), "inner IP header on CloudPal");
    }

    // Full-size packets (the overlay MTU, with don't-fragment) cross the relay whole: no
    // underlay UDP datagram over 1500 bytes of IP, no fragment (many NATs drop fragments).
    let mtu: usize = net.node("car").netns.exec_ok("cat", &["/sys/class/net/pal0/mtu"]).stdout.iter().map(|b| *b as char).collect::<String>().trim().parse().expect("mtu");
    let capture = net.node("cloudpal").netns.capture();
    let size = (mtu - 28).to_string();
    let full = net.node("car").netns.exec("ping", &["-c", "3", "-i", "0.2", "-M", "do", "-s", &size, &laptop_v4]);
    let frames = capture.stop();
    assert!(full.status.success(), "full-size relayed pings failed: {}", String::from_utf8_lossy(&full.stdout));
    // The data plane's datagrams only (UDP port 41641): the capture sees libp2p's TCP
    // before segmentation offloads split them.
    let data_port = |ip: &[u8], at: usize| ip.get(at..at + 2) == Some(41641u16.to_be_bytes().as_slice());
    let ipv4: Vec<&[u8]> = frames
        .iter()
        .filter(|f| f.len() > 34 && f[12..14] == [0x08, 0x00] && f[14 + 9] == 17)
        .map(|f| &f[14..])
        .filter(|ip| data_port(ip, 20) || data_port(ip, 22))
        .collect();
    assert!(ipv4.iter().any(|ip| ip.len() > mtu), "the capture saw no full-size relayed datagram");
    for ip in ipv4 {
        let flags_offset = u16::from_be_bytes([ip[6], ip[7]]);
        assert!(ip.len() <= 1500, "a {}-byte IP packet on CloudPal's link", ip.len());
        assert_eq!(flags_offset & 0x3fff, 0, "an IP fragment on CloudPal's link");
    }

    // The relay's rate is the policy's: an admin's cap reaches CloudPal's data plane at once.
    let relayed_mbit = |net: &NatNetwork| {
        let log = std::env::temp_dir().join(tests::unique("iperf-"));
        let mut server = net.node("laptop").netns.spawn("iperf3", &["-s", "-1", "-B", &laptop_v4], &log);
        std::thread::sleep(Duration::from_millis(300));
        let out = net.node("car").netns.exec("iperf3", &["-c", &laptop_v4, "-t", "4", "-J"]);
        let _ = server.wait();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
        report["end"]["sum_received"]["bits_per_second"].as_f64().expect("a rate") / 1e6
    };
    let uncapped = relayed_mbit(&net);
    let shown = net.node("laptop").pal_ok(&["policy", "set", "--relay-rate", "8"]);
    assert!(shown.contains("relay rate: 8 Mbit/s"), "{shown}");
    std::thread::sleep(Duration::from_millis(500));
    let capped = relayed_mbit(&net);
    // 8 Mbit/s for 4 s, plus the bucket's 4 MiB of burst spread over them: at most 16.4.
    assert!(capped < 16.5 && uncapped > 3.0 * capped, "relayed at {uncapped:.1} Mbit/s, then {capped:.1} under an 8 Mbit/s cap");
}

/// Paths change under a live TCP connection: the direct path between two EIM NATs breaks
/// (the office router starts dropping the home router's traffic) and traffic falls back to
/// the relay; then the desktop's underlay address changes. One iperf3 TCP stream runs through
/// all of it, in one Noise session.
#[test]
fn tcp_survives_the_direct_path_breaking_and_an_underlay_address_change() {
    let net = NatNetwork::form(|_| {});
    assert!(time_to(&net, "laptop", "desktop", "direct", Duration::from_secs(30)).is_some(), "no direct path");
    let (desktop_v4, _) = net.node("desktop").overlay();
    let server_log = std::env::temp_dir().join(tests::unique("iperf-"));
    let mut server = net.node("desktop").netns.spawn("iperf3", &["-s", "-1", "-B", &desktop_v4], &server_log);
    std::thread::sleep(Duration::from_millis(500));
    let client_log = std::env::temp_dir().join(tests::unique("iperf-"));
    let client = net.node("laptop").netns.spawn("iperf3", &["-c", &desktop_v4, "-t", "12", "-b", "20M", "-J"], &client_log);
    std::thread::sleep(Duration::from_secs(3));

    // A continuous ping, 50 ms apart, measures the outage the switch causes.
    let ping_log = std::env::temp_dir().join(tests::unique("ping-"));
    let pinger = net.node("laptop").netns.spawn("ping", &["-i", "0.05", "-W", "1", &desktop_v4], &ping_log);
    std::thread::sleep(Duration::from_millis(500));

    // Break the direct path: the office router drops everything from the home router.
    let office = &net.routers[1].router;
    let home_public = net.routers[0].public_address.clone();
    // Inserted first: they must beat the rule that lets established flows through.
    for (chain, field) in [("forward", "saddr"), ("forward", "daddr"), ("input", "saddr")] {
        office.exec_ok("nft", &["insert", "rule", "ip", "filter", chain, "ip", field, &home_public, "drop"]);
    }
    let broke = Instant::now();
    let fell_back = wait_until(Duration::from_secs(10), || net.ping_path("laptop", "desktop").as_deref() == Some("relay"));
    eprintln!("fallback to relay after {:?} (polling pal ping)", broke.elapsed());
    assert!(fell_back, "never fell back to the relay: {}", net.node("laptop").log());
    std::thread::sleep(Duration::from_secs(1));
    let replies: Vec<u32> = tests::stop_ping(pinger, &ping_log)
        .iter()
        .filter_map(|line| line.split("icmp_seq=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    let longest_gap = replies.windows(2).map(|pair| pair[1].saturating_sub(pair[0]).saturating_sub(1)).max().unwrap_or(0);
    eprintln!("outage while falling back: {longest_gap} echoes lost in a row = {:?}", Duration::from_millis(50) * longest_gap);
    assert!(replies.len() > 20, "the continuous ping got {} replies", replies.len());

    // The desktop moves to a new address on its LAN (as after a DHCP renewal).
    let desktop = &net.node("desktop").netns;
    let gateway = net.routers[1].gateway.clone();
    // (The old address goes first: deleting a primary address takes its secondaries along.)
    desktop.ip(&["addr", "del", &format!("{}/24", net.node("desktop").address), "dev", "eth0"]);
    desktop.ip(&["addr", "add", "10.2.0.200/24", "dev", "eth0"]);
    desktop.ip(&["route", "replace", "default", "via", &gateway]);
    std::thread::sleep(Duration::from_secs(1));

    let mut client = client;
    let finished = wait_until(Duration::from_secs(20), || matches!(client.try_wait(), Ok(Some(_))));
    if !finished {
        let _ = client.kill();
    }
    let output = client.wait_with_output().expect("iperf3 client");
    eprintln!("after the move: laptop -> desktop {:?}, desktop -> laptop {:?}", net.ping_path("laptop", "desktop"), net.ping_path("desktop", "laptop"));
    assert!(finished, "iperf3 hung: {}", std::fs::read_to_string(&client_log).unwrap_or_default());
    let _ = server.kill();
    let _ = server.wait();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&client_log).unwrap_or_default()).unwrap_or_default();
    let _ = std::fs::remove_file(&server_log);
    let _ = std::fs::remove_file(&client_log);
    assert!(output.status.success() && report["error"].is_null(), "the TCP stream broke: {}", report["error"]);
    let received = report["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(received > 5e6, "only {received} bytes arrived");
    let sessions = net.node("laptop").status()["peers"].as_array().expect("peers").iter().find(|p| p["name"] == "desktop").cloned();
    assert!(sessions.is_some_and(|p| p["path"] != "none"), "desktop unreachable at the end");
}

/// libp2p relay for control traffic (#5): devices behind different NATs get a control
/// connection of their own — direct where the NATs let a connection through (TCP simultaneous
/// open or DCUtR), otherwise through CloudPal's relay (members only) — so log sync and
/// signalling between them no longer depend on CloudPal forwarding for them.
#[test]
fn control_connections_between_nated_devices_go_direct_or_through_cloudpals_relay() {
    let net = NatNetwork::form(|_| {});
    let control = |from: &str, to: &str| -> String {
        let status = net.node(from).status();
        status["peers"].as_array().and_then(|peers| peers.iter().find(|p| p["name"] == to)).and_then(|p| p["control"].as_str()).unwrap_or("none").to_owned()
    };
    let started = Instant::now();
    let linked = wait_until(Duration::from_secs(30), || control("laptop", "desktop") != "none");
    eprintln!("laptop -> desktop control: {} after {:?}", control("laptop", "desktop"), started.elapsed());
    assert!(linked, "no control connection between the laptop and the desktop: {}", net.node("laptop").log());
    // The car's carrier NAT defeats hole punching: its control connection to the laptop runs
    // through CloudPal's relay.
    let relayed = wait_until(Duration::from_secs(30), || control("car", "laptop") == "relayed");
    eprintln!("car -> laptop control: {} after {:?}", control("car", "laptop"), started.elapsed());
    assert!(relayed, "no relayed control connection between the car and the laptop: {}", net.node("car").log());
    // Over it, the two exchange requests of their own: a new entry on the laptop reaches the car.
    net.node("laptop").pal_ok(&["device", "invite", "--name", "spare"]);
    let log_len = |name: &str| serde_json::from_str::<serde_json::Value>(&net.node(name).pal_ok(&["log", "--json"])).map_or(0, |l| l.as_array().map_or(0, Vec::len));
    let entries = log_len("laptop");
    assert!(wait_until(Duration::from_secs(10), || log_len("car") == entries), "the car never got the laptop's new entry");
}
