//! Issue #15 item 5: roaming and sleep. A laptop moves from its home WiFi (an
//! endpoint-independent NAT) to a cellular carrier (a symmetric NAT) in the middle of a TCP
//! transfer to the office desktop; and a laptop whose lid was closed for 20 s, long enough for
//! its NAT to forget every mapping, is back at once when it wakes.

use std::time::{Duration, Instant};
use tests::{Lan, Mapping, NatRouter, PalNode, pings, wait_until};

/// CloudPal on the internet, the laptop at home, the desktop at the office; a cellular
/// carrier's NAT the laptop can move behind.
struct Roaming {
    // Field order is drop order.
    laptop: PalNode,
    desktop: PalNode,
    cloudpal: PalNode,
    cell: NatRouter,
    home: NatRouter,
    _office: NatRouter,
    _internet: Lan,
}

impl Roaming {
    fn form() -> Self {
        let mut internet = Lan::new("203.0.113");
        let mut home = NatRouter::new(&mut internet, "10.1.0", Mapping::EndpointIndependent);
        let mut office = NatRouter::new(&mut internet, "10.2.0", Mapping::EndpointIndependent);
        let cell = NatRouter::new(&mut internet, "10.3.0", Mapping::Symmetric);
        let laptop = tests::founding_laptop(&mut home);
        let cloudpal = tests::cloudpal_added_by(&laptop, &mut internet);
        let (netns, address) = office.host("desk");
        let mut desktop = PalNode::new("desktop", netns, address);
        let invite = laptop.pal_ok(&["device", "invite", "--name", "desktop"]);
        let code = invite.lines().last().expect("code on the last line").trim().to_owned();
        let entries = laptop.pal_ok(&["log", "--json"]);
        assert!(wait_until(Duration::from_secs(10), || cloudpal.pal_ok(&["log", "--json"]) == entries), "the invite did not reach CloudPal");
        desktop.pal_ok(&["join", &code, "--name", "desktop"]);
        desktop.up();
        assert!(pings(&laptop, "desktop"), "laptop → desktop: {}", laptop.log());
        assert!(pings(&desktop, "laptop"), "desktop → laptop: {}", desktop.log());
        Roaming { laptop, desktop, cloudpal, cell, home, _office: office, _internet: internet }
    }
}

/// The longest run of lost echoes in a `ping -i 0.05` log, as time.
fn longest_outage(replies: &[String]) -> Duration {
    let sequence: Vec<u32> = replies.iter().filter_map(|line| line.split("icmp_seq=").nth(1)?.split_whitespace().next()?.parse().ok()).collect();
    let lost = sequence.windows(2).map(|pair| pair[1].saturating_sub(pair[0]).saturating_sub(1)).max().unwrap_or(0);
    Duration::from_millis(50) * lost
}

/// WiFi → cell in the middle of a transfer: the laptop's home address goes away and it comes
/// up behind the carrier's symmetric NAT. The TCP stream through the tunnel survives with at
/// most 2 s without replies (the overlay addresses do not change; the desktop is reached
/// through CloudPal now), and the control plane finds its way back too.
#[test]
fn wifi_to_cell_mid_transfer_keeps_the_tcp_stream_and_the_control_plane() {
    let mut net = Roaming::form();
    let (desktop_v4, _) = net.desktop.overlay();
    let server_log = std::env::temp_dir().join(tests::unique("iperf-"));
    let mut server = net.desktop.netns.spawn("iperf3", &["-s", "-1", "-B", &desktop_v4], &server_log);
    std::thread::sleep(Duration::from_millis(500));
    let client_log = std::env::temp_dir().join(tests::unique("iperf-"));
    let mut client = net.laptop.netns.spawn("iperf3", &["-c", &desktop_v4, "-t", "10", "-b", "20M", "-J"], &client_log);
    let ping_log = std::env::temp_dir().join(tests::unique("ping-"));
    let pinger = net.laptop.netns.spawn("ping", &["-i", "0.05", "-W", "1", &desktop_v4], &ping_log);
    std::thread::sleep(Duration::from_secs(3));

    // The move: the WiFi goes, the cellular link comes up with its own address and route.
    let home_address = net.laptop.address.clone();
    let cell_address = net.cell.home.attach(&net.laptop.netns, "eth1");
    net.laptop.netns.ip(&["addr", "del", &format!("{home_address}/24"), "dev", "eth0"]);
    net.laptop.netns.ip(&["link", "set", "eth0", "down"]);
    net.laptop.netns.ip(&["route", "replace", "default", "via", &net.cell.gateway]);
    let moved = Instant::now();
    eprintln!("laptop: {home_address} at home → {cell_address} behind the carrier");

    let finished = wait_until(Duration::from_secs(20), || matches!(client.try_wait(), Ok(Some(_))));
    if !finished {
        let _ = client.kill();
    }
    let output = client.wait_with_output().expect("iperf3 client");
    let _ = server.kill();
    let _ = server.wait();
    let outage = longest_outage(&tests::stop_ping(pinger, &ping_log));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&client_log).unwrap_or_default()).unwrap_or_default();
    let _ = std::fs::remove_file(&server_log);
    let _ = std::fs::remove_file(&client_log);
    eprintln!("WiFi → cell: the longest stretch without echo replies {outage:?}");
    assert!(finished && output.status.success() && report["error"].is_null(), "the TCP stream broke: {}", report["error"]);
    let received = report["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(received > 15e6, "only {received} bytes arrived");
    assert!(outage <= Duration::from_secs(2), "{outage:?} without replies across the move");

    // The control plane follows: an entry the laptop makes after the move reaches the others
    // (its old connections died with its home address; new ones leave from the new one).
    net.laptop.pal_ok(&["device", "invite", "--name", "tablet"]);
    let theirs = net.laptop.pal_ok(&["log", "--json"]);
    let synced = wait_until(Duration::from_secs(30), || net.desktop.pal_ok(&["log", "--json"]) == theirs && net.cloudpal.pal_ok(&["log", "--json"]) == theirs);
    eprintln!("a log entry from the moved laptop reached the others {:?} after the move", moved.elapsed());
    assert!(synced, "the laptop's entry after the move did not reach the others: {}", net.laptop.log());
}

/// The lid closes for 20 s (the node is frozen) while the home router forgets every UDP
/// mapping; when it opens, the first packets get through at once.
#[test]
fn a_laptop_asleep_while_its_nat_forgets_the_mapping_is_back_at_once() {
    let net = Roaming::form();
    let (desktop_v4, _) = net.desktop.overlay();
    // The router forgets a UDP mapping 5 s after its last packet.
    for key in ["net.netfilter.nf_conntrack_udp_timeout=5", "net.netfilter.nf_conntrack_udp_timeout_stream=5"] {
        net.home.router.exec_ok("sysctl", &["-qw", key]);
    }
    let pid = net.laptop.pid().expect("the laptop's node is up");
    let pid = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: signalling a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    std::thread::sleep(Duration::from_secs(20));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let woke = Instant::now();
    let ping_log = std::env::temp_dir().join(tests::unique("ping-"));
    let pinger = net.laptop.netns.spawn("ping", &["-i", "0.05", "-W", "1", &desktop_v4], &ping_log);
    let back = wait_until(Duration::from_secs(5), || std::fs::read_to_string(&ping_log).unwrap_or_default().contains("bytes from"));
    let first = woke.elapsed();
    let replies = tests::stop_ping(pinger, &ping_log);
    eprintln!("asleep 20 s, NAT mappings gone: first reply {first:?} after waking");
    assert!(back && first <= Duration::from_secs(2), "the laptop was not back within 2 s of waking ({first:?}, {} replies)", replies.len());
    // And the desktop reaches the laptop again (through CloudPal, over the mapping the
    // laptop's first packets made anew).
    let started = Instant::now();
    assert!(pings(&net.desktop, "laptop"), "desktop → laptop after the sleep: {}", net.desktop.log());
    eprintln!("desktop → laptop after the sleep: {:?}", started.elapsed());
    assert!(started.elapsed() <= Duration::from_secs(2), "desktop → laptop took {:?}", started.elapsed());
}
