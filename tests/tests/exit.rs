//! Issue #13: the personal VPN, end to end in namespaces — a v4-only laptop's internet (v4
//! and v6) through its CloudPal, the kill switch, no leaks outside the tunnel (EXIT-01,
//! EXIT-02), no open router, no exit without rights or after revocation and no spoofed source
//! (EXIT-03, EXIT-04), the firewall policy at the exit (EXIT-06), LAN access, strict
//! `rp_filter`, and a host left exactly as it was after `exit off`, a stop and a crash (ROB-03).

use std::time::Duration;
use tests::exit::ExitNetwork;
use tests::{Netns, PalNode, wait_until};

const QUICK: Duration = Duration::from_secs(2);

/// Everything of pal's on a host: policy rules, routes of its table, its nftables tables.
fn host_changes(netns: &Netns) -> String {
    let mut found = String::new();
    for family in ["-4", "-6"] {
        let rules = String::from_utf8_lossy(&netns.exec("ip", &[family, "rule", "show"]).stdout).into_owned();
        found.extend(rules.lines().filter(|l| l.starts_with("518") || l.contains("41641")).map(|l| format!("{l}\n")));
        let routes = String::from_utf8_lossy(&netns.exec("ip", &[family, "route", "show", "table", "41641"]).stdout).into_owned();
        found.push_str(&routes);
    }
    let tables = String::from_utf8_lossy(&netns.exec("nft", &["list", "tables"]).stdout).into_owned();
    found.extend(tables.lines().filter(|l| l.contains("pal_")).map(|l| format!("{l}\n")));
    found
}

fn exit_state(node: &PalNode) -> serde_json::Value {
    serde_json::from_str(&node.pal_ok(&["exit", "status", "--json"])).expect("exit status is JSON")
}

/// The addresses every frame on `interface` of `netns` went to or came from while `during` ran.
fn frames_during(netns: &Netns, interface: &str, during: impl FnOnce()) -> Vec<Vec<u8>> {
    let capture = netns.capture_on(Some(interface));
    during();
    std::thread::sleep(Duration::from_millis(200));
    capture.stop()
}

/// Whether an Ethernet frame carries an IP packet to or from `address` (v4 or v6 text), or
/// anything for port 53.
fn mentions(frame: &[u8], address: &str) -> bool {
    let Some(ethertype) = frame.get(12..14) else { return false };
    let packet = &frame[14..];
    let (source, destination, transport) = match ethertype {
        [0x08, 0x00] if packet.len() >= 20 => {
            let header = usize::from(packet[0] & 0x0f) * 4;
            (std::net::IpAddr::from(<[u8; 4]>::try_from(&packet[12..16]).expect("4")), std::net::IpAddr::from(<[u8; 4]>::try_from(&packet[16..20]).expect("4")), packet.get(header..))
        }
        [0x86, 0xdd] if packet.len() >= 40 => {
            (std::net::IpAddr::from(<[u8; 16]>::try_from(&packet[8..24]).expect("16")), std::net::IpAddr::from(<[u8; 16]>::try_from(&packet[24..40]).expect("16")), packet.get(40..))
        }
        _ => return false,
    };
    let port_53 = transport.is_some_and(|t| t.len() >= 4 && (t[0..2] == [0, 53] || t[2..4] == [0, 53]));
    source.to_string() == address || destination.to_string() == address || port_53
}

#[test]
fn exit_01_02_the_internet_through_cloudpal_with_no_leak_a_kill_switch_and_a_clean_host_after() {
    let mut net = ExitNetwork::form();
    // Strict reverse-path filtering on the client, as hardened hosts have it.
    for key in ["net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.rp_filter=1", "net.ipv4.conf.eth0.rp_filter=1"] {
        net.laptop.netns.exec_ok("sysctl", &["-q", "-w", key]);
    }
    let before = host_changes(&net.laptop.netns);
    assert_eq!(before, "", "pal changed the host before the exit was chosen");
    let (v4, v6) = net.laptop_seen(QUICK);
    assert_eq!(v4.as_deref(), Some(net.home.public_address.as_str()), "before the exit, the web sees the home router");
    assert_eq!(v6, None, "a v4-only home has no v6 internet of its own");

    let status = net.laptop.pal_ok(&["exit", "use"]);
    assert!(status.contains("exit: cloudpal"), "{status}");
    let seen = wait_until(Duration::from_secs(10), || net.laptop_seen(QUICK).0.as_deref() == Some(net.cloudpal.address.as_str()));
    assert!(seen, "the web never saw CloudPal's address: {:?}\n{}", net.laptop_seen(QUICK), net.laptop.log());
    assert_eq!(whoami_v6(&net), Some(net.cloudpal_v6.clone()), "the v4-only laptop reaches the v6 internet through CloudPal");
    let state = exit_state(&net.laptop);
    assert_eq!(state["exit"], "cloudpal");
    assert_eq!(state["state"], "connected");
    // The mesh keeps its direct paths while on the exit.
    assert!(net.laptop.pal(&["ping", "phone", "-c", "1"]).status.success(), "the mesh broke on the exit");
    // pal's own control dial to CloudPal's v6 address (this v4-only home has no route for
    // it) fails at once instead of falling into the tunnel it carries; a web connection to
    // the same address goes through the tunnel.
    let route = |dport: &str| {
        let out = net.laptop.netns.exec("ip", &["-6", "route", "get", &net.cloudpal_v6, "ipproto", "tcp", "dport", dport]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    assert!(route("41641").contains("unreachable"), "a control dial would fall into the tunnel: {}", route("41641"));
    assert!(route("80").contains("dev pal"), "the web does not go through the tunnel: {}", route("80"));

    // EXIT-01: browsing v4 and v6 and asking the LAN's resolver shows nothing for the
    // internet, and nothing for port 53, on the laptop's own interface.
    let dns_listener = net.home.router.udp_socket("0.0.0.0:53");
    dns_listener.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let frames = frames_during(&net.laptop.netns, "eth0", || {
        assert_eq!(net.laptop_seen(QUICK).0.as_deref(), Some(net.cloudpal.address.as_str()));
        assert!(whoami_v6(&net).is_some());
        let resolver = net.laptop.netns.udp_socket("0.0.0.0:0");
        let _ = resolver.send_to(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01", (net.home.gateway.as_str(), 53));
    });
    assert!(!frames.is_empty(), "the capture saw nothing at all");
    let leaks: Vec<_> = frames.iter().filter(|f| mentions(f, &net.web_v4) || mentions(f, &net.web_v6)).collect();
    assert!(leaks.is_empty(), "{} frames for the internet (or port 53) left outside the tunnel", leaks.len());
    let mut buffer = [0u8; 512];
    assert!(dns_listener.recv_from(&mut buffer).is_err(), "a DNS query left outside the tunnel to the LAN's resolver");

    // LAN access is off unless asked for.
    assert_eq!(tests::exit::whoami(&net.laptop.netns, net.printer(), QUICK), None, "the LAN was reachable without --allow-lan");
    net.laptop.pal_ok(&["exit", "use", "--allow-lan"]);
    assert_eq!(tests::exit::whoami(&net.laptop.netns, net.printer(), QUICK).as_deref(), Some(net.laptop.address.as_str()), "--allow-lan did not open the LAN");
    assert_eq!(net.laptop_seen(QUICK).0.as_deref(), Some(net.cloudpal.address.as_str()), "--allow-lan took the internet off the exit");

    // EXIT-02: CloudPal gone, then the tunnel interface deleted by hand: internet traffic is
    // dropped, never sent in the clear.
    net.cloudpal.crash();
    let frames = frames_during(&net.laptop.netns, "eth0", || {
        assert_eq!(net.laptop_seen(QUICK), (None, None), "internet traffic got out with the exit down");
    });
    assert!(frames.iter().all(|f| !mentions(f, &net.web_v4) && !mentions(f, &net.web_v6)), "the kill switch leaked");
    let blocking = wait_until(Duration::from_secs(30), || exit_state(&net.laptop)["state"] == "blocking");
    assert!(blocking, "exit status never said blocking: {}", exit_state(&net.laptop));
    // The exit comes back by itself with CloudPal.
    net.cloudpal.up_with(&["--cloudpal"]);
    let resumed = wait_until(Duration::from_secs(30), || net.laptop_seen(QUICK).0.as_deref() == Some(net.cloudpal.address.as_str()));
    assert!(resumed, "the exit did not resume when CloudPal came back: {}", net.laptop.log());

    // `exit off` restores the host exactly.
    net.laptop.pal_ok(&["exit", "off"]);
    assert_eq!(host_changes(&net.laptop.netns), before, "exit off left pal's changes behind");
    assert_eq!(net.laptop_seen(QUICK).0.as_deref(), Some(net.home.public_address.as_str()), "the direct internet is not back");
    assert_eq!(exit_state(&net.laptop)["state"], "off");
}

#[test]
fn rob_03_the_exit_persists_across_restarts_and_nothing_stays_after_a_stop_or_a_crash() {
    let mut net = ExitNetwork::form();
    let laptop_before = host_changes(&net.laptop.netns);
    // (CloudPal is up already: what it leaves after a stop must be nothing.)
    let cloudpal_before = String::new();
    assert_eq!(laptop_before, "");
    // The exit table exists while CloudPal runs; a host firewall of the owner's sits beside it.
    net.cloudpal.netns.exec_ok("nft", &["add table inet owner; add chain inet owner input { type filter hook input priority 0; policy accept; }; add rule inet owner input tcp dport 22 accept"]);
    let owner = |netns: &Netns| String::from_utf8_lossy(&netns.exec_ok("nft", &["list", "table", "inet", "owner"]).stdout).into_owned();
    let owner_before = owner(&net.cloudpal.netns);
    net.laptop.pal_ok(&["exit", "use"]);
    assert!(host_changes(&net.laptop.netns).contains("pal_killswitch"));

    // A clean stop leaves nothing; the next start puts the exit back (the choice persists).
    net.laptop.down();
    assert_eq!(host_changes(&net.laptop.netns), laptop_before, "a clean stop left pal's changes behind");
    net.laptop.up();
    let back = wait_until(Duration::from_secs(15), || net.laptop_seen(QUICK).0.as_deref() == Some(net.cloudpal.address.as_str()));
    assert!(back, "the exit did not come back after a restart: {}", net.laptop.log());

    // A crash leaves everything in place (traffic stays blocked, never in the clear) ...
    net.laptop.crash();
    assert_ne!(host_changes(&net.laptop.netns), laptop_before);
    assert_eq!(net.laptop_seen(QUICK).0, None, "with the node crashed, the internet leaked past the kill switch");
    // ... and the next start restores the host before applying the exit once more: no rule twice.
    net.laptop.up();
    let back = wait_until(Duration::from_secs(15), || net.laptop_seen(QUICK).0.as_deref() == Some(net.cloudpal.address.as_str()));
    assert!(back, "the exit did not come back after a crash: {}", net.laptop.log());
    let rules = host_changes(&net.laptop.netns);
    assert_eq!(rules.lines().filter(|l| l.starts_with("5182")).count(), 2, "one tunnel rule per family after a crash and a restart:\n{rules}");
    net.laptop.pal_ok(&["exit", "off"]);
    assert_eq!(host_changes(&net.laptop.netns), laptop_before);

    // CloudPal: its table goes with a clean stop and after a crash, forwarding is put back,
    // and the owner's own table is never touched.
    let forwarding = |netns: &Netns| String::from_utf8_lossy(&netns.exec_ok("sysctl", &["-n", "net.ipv4.ip_forward"]).stdout).trim().to_owned();
    assert_eq!(forwarding(&net.cloudpal.netns), "1");
    assert!(host_changes(&net.cloudpal.netns).contains("pal_exit"));
    net.cloudpal.down();
    assert_eq!(host_changes(&net.cloudpal.netns), cloudpal_before);
    assert_eq!(forwarding(&net.cloudpal.netns), "0", "forwarding was not put back");
    net.cloudpal.up_with(&["--cloudpal"]);
    net.cloudpal.crash();
    assert!(host_changes(&net.cloudpal.netns).contains("pal_exit"));
    net.cloudpal.up_with(&["--cloudpal"]);
    net.cloudpal.down();
    assert_eq!(host_changes(&net.cloudpal.netns), cloudpal_before, "the restart after a crash did not clean up");
    assert_eq!(forwarding(&net.cloudpal.netns), "0");
    assert_eq!(owner(&net.cloudpal.netns), owner_before, "pal touched the owner's firewall");
}

/// CloudPal's exit counter for `verdict` (packets), from its Prometheus metrics.
fn exit_counter(net: &ExitNetwork, verdict: &str) -> u64 {
    let output = net.cloudpal.netns.exec("curl", &["--silent", "--max-time", "3", "http://127.0.0.1:9464/metrics"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let prefix = format!("pal_exit_packets_total{{verdict=\"{verdict}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str()).and_then(|v| v.parse().ok())).unwrap_or(0)
}

#[test]
fn exit_06_mesh_only_allow_and_deny_reach_the_exit_within_a_second_and_the_mesh_stays() {
    let net = ExitNetwork::form();
    net.laptop.pal_ok(&["exit", "use"]);
    let via_cloudpal = Some(net.cloudpal.address.clone());
    let on_exit = wait_until(Duration::from_secs(10), || net.laptop_seen(QUICK).0 == via_cloudpal);
    assert!(on_exit, "the exit never worked");
    // The metrics count what went out and came back (#16 item 3), and nothing refused yet.
    assert!(exit_counter(&net, "out") > 0 && exit_counter(&net, "in") > 0, "no exit traffic in the metrics");
    assert_eq!(exit_counter(&net, "denied"), 0);
    // A policy change reaches CloudPal's exit within a second of the entry (plus the sync).
    let within = |expect_v4: Option<String>, expect_v6: bool| {
        wait_until(Duration::from_secs(3), || {
            let (v4, v6) = net.laptop_seen(Duration::from_millis(700));
            v4 == expect_v4 && v6.is_some() == expect_v6
        })
    };

    let bad = net.laptop.pal(&["policy", "set", "--deny", "203.0.113.9/24"]);
    assert!(!bad.status.success());
    let error = String::from_utf8_lossy(&bad.stderr);
    assert!(error.contains("did you mean 203.0.113.0/24") && error.trim().lines().count() == 1, "{error}");

    // (A network, not the server's own address: the privacy check below looks for that.)
    net.laptop.pal_ok(&["policy", "set", "--deny", "203.0.113.0/24"]);
    assert!(within(None, true), "a v4 deny rule did not cut v4 (and only v4)");
    assert!(exit_counter(&net, "denied") > 0, "the deny rule's drops are not in the metrics");
    net.laptop.pal_ok(&["policy", "set", "--clear-deny", "--allow", "198.51.100.0/24"]);
    assert!(within(None, false), "an allow list without the web server still let it through");
    net.laptop.pal_ok(&["policy", "set", "--allow", &format!("{}/64", tests::exit::INTERNET_V6)]);
    assert!(within(None, true), "the v6 allow rule did not open v6");
    net.laptop.pal_ok(&["policy", "set", "--clear-allow", "--mesh-only", "on"]);
    assert!(within(None, false), "mesh-only still forwarded internet traffic");
    assert!(exit_counter(&net, "mesh_only") > 0, "mesh-only's drops are not in the metrics");
    assert!(net.laptop.pal(&["ping", "phone", "-c", "1"]).status.success(), "mesh-only broke the mesh");
    assert!(net.laptop.pal(&["ping", "cloudpal", "-c", "1"]).status.success(), "mesh-only cut CloudPal off the mesh");
    let shown: serde_json::Value = serde_json::from_str(&net.phone.pal_ok(&["policy", "show", "--json"])).expect("json");
    assert_eq!(shown["mesh_only"], true, "the policy did not replicate to the phone");
    let refused = net.phone.pal(&["exit", "use"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("mesh-only"), "a device chose the exit under mesh-only");
    let not_admin = net.phone.pal(&["policy", "set", "--mesh-only", "off"]);
    assert!(!not_admin.status.success(), "a member set the policy");
    net.laptop.pal_ok(&["policy", "set", "--mesh-only", "off"]);
    assert!(within(via_cloudpal, true), "the exit did not come back after mesh-only off");

    // No logging by default: nothing CloudPal wrote names where the laptop went (PRIV-01).
    let written = net.cloudpal.everything_written();
    for secret in [net.web_v4.as_str(), net.web_v6.as_str(), "whoami"] {
        assert!(!written.contains(secret), "CloudPal wrote {secret:?} down");
    }
}

fn whoami_v6(net: &ExitNetwork) -> Option<String> {
    tests::exit::whoami(&net.laptop.netns, net.web_v6(), QUICK)
}

#[test]
fn exit_07_egress_rotation_gives_each_session_a_pool_address_and_a_renew_ends_the_old_flows() {
    let mut net = ExitNetwork::form();
    // The pool is routed to CloudPal (as a provider routes a subnet to a server).
    net.web.ip(&["route", "add", "198.51.100.0/28", "via", &net.cloudpal.address]);
    net.web.ip(&["-6", "route", "add", "2001:db8:2::/64", "via", &net.cloudpal_v6]);
    net.cloudpal.down();
    net.cloudpal.up_with(&["--cloudpal", "--egress-pool", "198.51.100.0/28", "--egress-pool", "2001:db8:2::/64"]);
    // Off by default: the web sees CloudPal's own address.
    net.laptop.pal_ok(&["exit", "use"]);
    let own = wait_until(Duration::from_secs(15), || net.laptop_seen(QUICK).0.as_deref() == Some(net.cloudpal.address.as_str()));
    assert!(own, "without rotation the web must see CloudPal's own address: {:?}", net.laptop_seen(QUICK));
    assert_eq!(exit_state(&net.laptop)["egress"], serde_json::json!([]));

    net.laptop.pal_ok(&["policy", "set", "--rotate-egress", "on"]);
    let pool_v4: membership::Rule = "198.51.100.0/28".parse().expect("rule");
    let pool_v6: membership::Rule = "2001:db8:2::/64".parse().expect("rule");
    let in_pool = |seen: &(Option<String>, Option<String>)| {
        seen.0.as_deref().and_then(|a| a.parse().ok()).is_some_and(|a| pool_v4.covers_address(a)) && seen.1.as_deref().and_then(|a| a.parse().ok()).is_some_and(|a| pool_v6.covers_address(a))
    };
    net.laptop.pal_ok(&["exit", "renew"]);
    let mut first = (None, None);
    let rotated = wait_until(Duration::from_secs(10), || {
        first = net.laptop_seen(QUICK);
        in_pool(&first)
    });
    assert!(rotated, "the web did not see pool addresses: {first:?}");
    let status = exit_state(&net.laptop);
    let egress: Vec<String> = status["egress"].as_array().expect("egress").iter().filter_map(|a| a.as_str().map(str::to_owned)).collect();
    assert!(egress.contains(first.0.as_ref().expect("v4")) && egress.contains(first.1.as_ref().expect("v6")), "exit status {status} does not name {first:?}");

    // A flow open before the renew does not survive it; a new one leaves from the new address.
    let server = net.web.udp_socket("0.0.0.0:7000");
    server.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
    let flow = net.laptop.netns.udp_socket("0.0.0.0:0");
    let web_udp = (net.web_v4.as_str(), 7000);
    flow.send_to(b"before", web_udp).expect("send");
    let mut buffer = [0u8; 64];
    let (_, seen) = server.recv_from(&mut buffer).expect("the old flow works before the renew");
    assert_eq!(Some(seen.ip().to_string()), first.0);
    net.laptop.pal_ok(&["exit", "renew"]);
    let second = net.laptop_seen(QUICK);
    assert!(in_pool(&second) && second.0 != first.0 && second.1 != first.1, "a renew kept the address: {first:?} then {second:?}");
    flow.send_to(b"after", web_udp).expect("send");
    let old_flow = server.recv_from(&mut buffer);
    assert!(old_flow.is_err(), "the old session's flow survived the renew (from {:?})", old_flow.map(|(_, from)| from));
    let fresh = net.laptop.netns.udp_socket("0.0.0.0:0");
    fresh.send_to(b"new", web_udp).expect("send");
    let (_, seen) = server.recv_from(&mut buffer).expect("a new flow after the renew");
    assert_eq!(Some(seen.ip().to_string()), second.0);

    // Addresses are never written down (EXIT-07).
    let written = net.cloudpal.everything_written();
    for address in [&first.0, &first.1, &second.0, &second.1].into_iter().flatten() {
        assert!(!written.contains(address.as_str()), "CloudPal wrote the egress address {address} down");
    }
}

#[test]
fn exit_05_packets_for_the_tunnel_address_from_the_lan_are_dropped_on_the_exit() {
    let net = ExitNetwork::form();
    let (overlay_v4, _) = net.laptop.overlay();
    // A LAN attacker (the printer) routes the laptop's overlay address to the laptop's LAN
    // address and sends to it (CVE-2019-14899, TunnelVision).
    net.printer.ip(&["route", "add", &format!("{overlay_v4}/32"), "via", &net.laptop.address]);
    let listener = net.laptop.netns.udp_socket(&format!("{overlay_v4}:7777"));
    listener.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let attacker = net.printer.udp_socket("0.0.0.0:0");
    let mut buffer = [0u8; 64];
    let mut arrives = || {
        attacker.send_to(b"probe", (overlay_v4.as_str(), 7777)).expect("send");
        listener.recv_from(&mut buffer).is_ok()
    };
    assert!(arrives(), "without the exit the weak host model delivers it (the test's own control)");
    net.laptop.pal_ok(&["exit", "use"]);
    assert!(!arrives(), "on the exit, a packet for the tunnel address from the LAN got in");
    net.laptop.pal_ok(&["exit", "off"]);
    assert!(arrives(), "exit off did not take the rule out");
}

/// A TCP connection from `source` (an address on the namespace's overlay interface) to
/// `server`: whether it was answered.
fn connects_from(netns: &Netns, source: &str, server: std::net::SocketAddr) -> bool {
    let name = netns.name.clone();
    let source: std::net::SocketAddr = format!("{source}:0").parse().expect("source");
    std::thread::spawn(move || {
        tests::enter_namespace(&name);
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.bind(&source.into()).is_ok() && socket.connect_timeout(&server.into(), QUICK).is_ok()
    })
    .join()
    .unwrap_or(false)
}

/// EXIT-03 (no open proxy) and EXIT-04 (no spoofed source): an outsider routing the web through
/// CloudPal, a member the policy does not let use the exit and a revoked member get nothing
/// forwarded; a member sending with another member's overlay source is dropped at CloudPal's
/// data plane (cryptokey routing), so nothing of it reaches the internet.
#[test]
fn exit_03_04_no_open_router_no_exit_without_rights_or_after_revocation_and_no_spoofed_source() {
    let mut net = ExitNetwork::form();
    // An outsider on CloudPal's LAN that routes the web server through CloudPal (which pal
    // switched forwarding on for): not forwarded. (Its redirects refused, so the outsider
    // cannot be told the direct way.)
    let (outsider, _) = net.internet.host("outs");
    assert!(tests::exit::whoami(&outsider, net.web_v4(), QUICK).is_some(), "control: the outsider reaches the web directly");
    for key in ["net.ipv4.conf.all.accept_redirects=0", "net.ipv4.conf.eth0.accept_redirects=0"] {
        outsider.exec_ok("sysctl", &["-qw", key]);
    }
    outsider.ip(&["route", "add", &format!("{}/32", net.web_v4), "via", &net.cloudpal.address]);
    let forwarding = net.cloudpal.netns.exec_ok("cat", &["/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout).trim(), "1", "CloudPal does not forward at all: the check below would prove nothing");
    assert!(tests::exit::whoami(&outsider, net.web_v4(), QUICK).is_none(), "CloudPal forwarded an outsider's traffic (an open router)");

    // A member the policy does not let use the exit: cut off within seconds, even with its
    // full tunnel still up (what a modified client would send).
    net.phone.pal_ok(&["exit", "use"]);
    let via_cloudpal = Some(net.cloudpal.address.clone());
    let phone_seen = || tests::exit::whoami(&net.phone.netns, net.web_v4(), Duration::from_millis(700));
    assert!(wait_until(Duration::from_secs(10), || phone_seen() == via_cloudpal), "the phone never used the exit");
    net.laptop.pal_ok(&["policy", "set", "--exit-devices", "laptop"]);
    assert!(wait_until(Duration::from_secs(3), || phone_seen().is_none()), "a member without exit rights was still forwarded");
    // Once the entry has reached the phone too, its own `exit use` says no as well (the
    // enforcement above is CloudPal's; this is the phone's courtesy).
    let replicated = wait_until(Duration::from_secs(5), || net.phone.pal_ok(&["policy", "show", "--json"]).contains(r#""exit_devices":["laptop"]"#));
    assert!(replicated, "the policy entry did not reach the phone");
    let refused = net.phone.pal(&["exit", "use"]);
    assert!(!refused.status.success(), "the exit accepted a device the policy leaves out");
    net.laptop.pal_ok(&["policy", "set", "--exit-devices", "all"]);
    assert!(wait_until(Duration::from_secs(5), || phone_seen() == via_cloudpal), "the phone did not get the exit back");

    // EXIT-04: the laptop, on the exit, sends with the phone's overlay source: CloudPal's data
    // plane drops it (the phone's address belongs to the phone's key), so the web server's
    // link sees no connection attempt from CloudPal for it — while the laptop's own works.
    net.laptop.pal_ok(&["exit", "use"]);
    assert!(wait_until(Duration::from_secs(10), || net.laptop_seen(QUICK).0 == via_cloudpal), "the laptop never used the exit");
    let (phone_v4, _) = net.phone.overlay();
    let (laptop_v4, _) = net.laptop.overlay();
    net.laptop.netns.ip(&["addr", "add", &format!("{phone_v4}/32"), "dev", "pal0"]);
    let web = net.web_v4();
    let mut spoofed = true;
    let frames = frames_during(&net.web, "eth0", || spoofed = connects_from(&net.laptop.netns, &phone_v4, web));
    assert!(!spoofed, "a connection with another member's overlay source was answered");
    let syns_from_cloudpal = frames.iter().filter(|f| mentions(f, &net.cloudpal.address) && f.len() > 47 && f[14 + 20 + 13] & 0x02 != 0).count();
    assert_eq!(syns_from_cloudpal, 0, "CloudPal forwarded a spoofed member source to the internet");
    assert!(connects_from(&net.laptop.netns, &laptop_v4, web), "control: the laptop's own source is forwarded");

    // A revoked member: nothing forwarded any more. The phone's control plane is cut first, as
    // a thief's modified node would ignore its revocation: it keeps its full tunnel and kill
    // switch (told of it, it would take them out itself rather than strand its host), so the
    // web sees nothing from it once CloudPal drops it.
    let phone = &net.phone.netns;
    phone.exec_ok("nft", &["add table inet deaf; add chain inet deaf out { type filter hook output priority 0; }; add chain inet deaf in { type filter hook input priority 0; }"]);
    // (Both ways to the control plane: its port, and CloudPal's TCP/TLS fallback on 443.)
    for (chain, direction) in [("out", "sport"), ("out", "dport"), ("in", "sport"), ("in", "dport")] {
        for port in ["41641", "443"] {
            phone.exec_ok("nft", &["add", "rule", "inet", "deaf", chain, "tcp", direction, port, "drop"]);
        }
    }
    net.laptop.pal_ok(&["device", "revoke", "phone"]);
    assert!(wait_until(Duration::from_secs(3), || phone_seen().is_none()), "a revoked member was still forwarded");
    // Still on the exit (connected, or blocking once it finds CloudPal gone): the kill switch,
    // not the phone's own teardown, kept it off the web.
    assert_ne!(exit_state(&net.phone)["state"], "off", "the phone heard of its revocation: the test proves nothing");
}
