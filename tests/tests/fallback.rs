//! The TCP/TLS-443 fallback (#15), end to end: a hotel router that lets nothing out but TCP to
//! port 443. A tablet behind it joins with an invite, comes up, syncs the log and reaches the
//! laptop through CloudPal over TCP (`relay-tcp`); when the hotel opens UDP, the tablet is back
//! on UDP within 30 s. And CloudPal's port 443 looks like a web server to anyone else.

use std::time::{Duration, Instant};
use tests::{Lan, Mapping, NatRouter, PalNode, cloudpal_added_by, founding_laptop, pings, poll_until, wait_until};

fn hotel(internet: &mut Lan) -> NatRouter {
    let router = NatRouter::new(internet, "10.4.0", Mapping::EndpointIndependent);
    router.only_https_out();
    router
}

/// The path `status --json` shows from `node` to `peer`.
fn path(node: &PalNode, peer: &str) -> Option<String> {
    let status = node.status();
    let peers = status["peers"].as_array()?;
    peers.iter().find(|p| p["name"] == peer).and_then(|p| p["path"].as_str().map(str::to_owned))
}

#[test]
fn a_device_that_can_only_reach_tcp_443_joins_syncs_and_relays_over_it_then_moves_back_to_udp() {
    let mut internet = Lan::new("203.0.113");
    let mut home = NatRouter::new(&mut internet, "10.1.0", Mapping::EndpointIndependent);
    let laptop = founding_laptop(&mut home);
    let cloudpal = cloudpal_added_by(&laptop, &mut internet);
    let mut hotel = hotel(&mut internet);

    // Nothing but TCP 443 leaves the hotel: UDP and CloudPal's plain control port are shut.
    let (netns, address) = hotel.host("tabl");
    let mut tablet = PalNode::new("tablet", netns, address);
    let udp = tablet.netns.exec("ping", &["-c", "1", "-W", "1", &cloudpal.address]);
    assert!(!udp.status.success(), "the hotel lets ICMP out");

    let code = tests::invite_via(&laptop, &cloudpal, "tablet", &[]);
    let started = Instant::now();
    tablet.pal_ok(&["join", &code, "--name", "tablet"]);
    println!("joined over TCP 443 in {:.2} s", started.elapsed().as_secs_f64());

    tablet.up();
    let up = Instant::now();
    let tcp = poll_until(Duration::from_secs(15), Duration::from_millis(50), || path(&tablet, "laptop").as_deref() == Some("relay-tcp"));
    let took = up.elapsed();
    assert!(tcp, "tablet → laptop never went relay-tcp: {:?}\n{}", tablet.status(), tablet.log());
    println!("relay-tcp to the laptop {:.2} s after pal up", took.as_secs_f64());
    assert!(pings(&tablet, "laptop"), "no echo over the fallback: {}", tablet.log());
    assert_eq!(path(&tablet, "cloudpal").as_deref(), Some("relay-tcp"));
    // `pal netcheck` says so: no UDP to CloudPal, its TCP 443 answers.
    let report: serde_json::Value = serde_json::from_str(&tablet.pal_ok(&["netcheck", "--json"])).expect("netcheck is JSON");
    assert_eq!((report["udp"].as_bool(), report["tcp_443"].as_bool()), (Some(false), Some(true)), "{report}");
    let text = tablet.pal_ok(&["netcheck"]);
    assert!(text.contains("TCP 443         yes"), "{text}");
    // Real traffic, both ways, through the tunnel over TCP.
    let (laptop_v4, _) = laptop.overlay();
    let ping = tablet.netns.exec("ping", &["-c", "5", "-i", "0.2", "-W", "2", &laptop_v4]);
    assert!(ping.status.success(), "ICMP through the tunnel: {}", String::from_utf8_lossy(&ping.stdout));
    // The control plane rides the fallback too, on a connection of its own: while a TCP
    // stream fills the data channel, an invite made on the laptop reaches the tablet's log.
    let server_log = std::env::temp_dir().join(tests::unique("iperf-"));
    let mut server = laptop.netns.spawn("iperf3", &["-s", "-1", "-B", &laptop_v4], &server_log);
    std::thread::sleep(Duration::from_millis(300));
    let client_log = std::env::temp_dir().join(tests::unique("iperf-"));
    let client = tablet.netns.spawn("iperf3", &["-c", &laptop_v4, "-t", "6", "-J"], &client_log);
    std::thread::sleep(Duration::from_secs(2));
    laptop.pal_ok(&["device", "invite", "--name", "later"]);
    let entries = laptop.pal_ok(&["log", "--json"]);
    let invited = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || tablet.pal_ok(&["log", "--json"]) == entries), "the log did not sync over the fallback under load");
    println!("an invite reached the tablet {:.0} ms after it was made, under a full data channel", invited.elapsed().as_secs_f64() * 1000.0);
    let output = client.wait_with_output().expect("iperf3 client");
    let _ = server.wait();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&client_log).unwrap_or_default()).unwrap_or_default();
    let mbit = report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6;
    println!("iperf3 over relay-tcp: {mbit:.0} Mbit/s");
    assert!(output.status.success() && mbit > 1.0, "TCP through the fallback: {mbit} Mbit/s {}", std::fs::read_to_string(&client_log).unwrap_or_default());
    let devices = tablet.device_list();
    assert_eq!(devices.as_array().map(Vec::len), Some(3), "{devices}");

    // The hotel opens UDP: the tablet is back on it within 30 s, and its data link goes.
    hotel.open_up();
    let opened = Instant::now();
    let back = poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let _ = tablet.pal(&["ping", "laptop", "-c", "1"]);
        path(&tablet, "laptop").is_some_and(|p| p != "relay-tcp" && p != "none")
    });
    assert!(back, "still over TCP 30 s after UDP opened: {:?}", tablet.status());
    println!("back on UDP ({}) {:.2} s after the hotel opened it", path(&tablet, "laptop").unwrap_or_default(), opened.elapsed().as_secs_f64());
    assert!(pings(&tablet, "laptop"));
    assert!(tablet.log().contains("data back on UDP"), "{}", tablet.log());
}

#[test]
fn cloudpal_port_443_answers_anyone_else_as_a_web_server_with_nothing_to_show() {
    let mut internet = Lan::new("203.0.113");
    let mut home = NatRouter::new(&mut internet, "10.1.0", Mapping::EndpointIndependent);
    let laptop = founding_laptop(&mut home);
    let cloudpal = cloudpal_added_by(&laptop, &mut internet);
    let (visitor, _) = internet.host("visi");
    let url = format!("https://{}/", cloudpal.address);
    let output = visitor.exec("curl", &["-sk", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}", &url]);
    let answer = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(answer.starts_with("404"), "curl said {answer:?}: {}", String::from_utf8_lossy(&output.stderr));
    // A certificate no public CA vouches for (curl's verify result is not 0): members pin it
    // by its hash.
    assert!(!answer.ends_with(" 0"), "{answer}");
    // What a browser would be told of it names no network and no device.
    let certificate = visitor.exec("sh", &["-c", &format!("openssl s_client -connect {}:443 </dev/null 2>/dev/null | openssl x509 -noout -subject -issuer", cloudpal.address)]);
    let text = String::from_utf8_lossy(&certificate.stdout);
    assert!(text.contains("subject") && !text.contains("rcgen") && !text.contains("laptop"), "{text}");
}
