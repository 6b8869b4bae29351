//! Issue #14: DNS through CloudPal, end to end — a laptop on the exit resolves internet names
//! and device names through its system resolver (its namespace's own resolv.conf), blocked
//! names (listed, a parent listed, a CNAME to a listed name) get 0.0.0.0 and the listed ones
//! never reach the upstream (dnsmasq in the test internet, with its query log), no packet for
//! port 53 leaves the laptop's interface, a firewall domain rule holds at the exit through the
//! addresses the resolver hands out, CloudPal writes no names down, and the resolver settings
//! come back after `exit off`, a stop and a crash.

use std::time::Duration;
use tests::exit::ExitNetwork;
use tests::{Netns, unique, wait_until};

const QUICK: Duration = Duration::from_secs(2);

use tests::exit::Dnsmasq as Upstream;

/// The addresses `getent ahosts` (the system resolver, as every program uses it) finds for
/// `name` inside `netns`.
fn lookup(netns: &Netns, name: &str) -> Vec<String> {
    let output = netns.exec("getent", &["ahosts", name]);
    let mut found: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().filter_map(|l| l.split_whitespace().next().map(str::to_owned)).collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn dns_names_device_names_and_blocking_through_cloudpal_with_nothing_on_port_53_outside() {
    let mut net = ExitNetwork::form();
    let upstream = Upstream::start(&net.web, &net.web_v4, &net.web_v6);
    let block_list = std::env::temp_dir().join(unique("blocklist-"));
    std::fs::write(&block_list, "# test list\n0.0.0.0 ads.example.com\ntracker.example.net\n").expect("block list");
    let original = net.laptop.netns.resolv_conf();
    assert!(original.contains(&net.home.gateway));

    net.laptop.pal_ok(&["policy", "set", "--dns-upstream", &format!("udp://{}", net.web_v4), "--block-list", block_list.to_str().expect("path")]);
    let shown = net.laptop.pal_ok(&["policy", "show"]);
    assert!(shown.contains("(plain UDP, unencrypted)"), "{shown}");
    net.laptop.pal_ok(&["exit", "use"]);
    let (cloudpal_v4, _) = net.cloudpal.overlay();
    let (phone_v4, phone_v6) = net.phone.overlay();
    assert!(net.laptop.netns.resolv_conf().contains(&format!("nameserver {cloudpal_v4}")), "resolv.conf not pointed at CloudPal: {}", net.laptop.netns.resolv_conf());
    let status: serde_json::Value = serde_json::from_str(&net.laptop.pal_ok(&["exit", "status", "--json"])).expect("json");
    assert!(status["resolver"].as_str().is_some_and(|r| r.contains(&cloudpal_v4) && r.contains(&net.web_v4)), "{status}");

    let frames = {
        let capture = net.laptop.netns.capture_on(Some("eth0"));
        let resolved = wait_until(Duration::from_secs(10), || lookup(&net.laptop.netns, "www.example.com").contains(&net.web_v4));
        assert!(resolved, "www.example.com did not resolve through CloudPal: {:?}\n{}", lookup(&net.laptop.netns, "www.example.com"), net.cloudpal.log());
        assert!(lookup(&net.laptop.netns, "www.example.com").contains(&net.web_v6), "no AAAA through CloudPal");
        assert_eq!(lookup(&net.laptop.netns, "phone.pal.internal"), sorted(&[&phone_v4, &phone_v6]), "a device name");
        assert_eq!(lookup(&net.laptop.netns, "phone"), sorted(&[&phone_v4, &phone_v6]), "the search domain");
        for blocked in ["ads.example.com", "x.ads.example.com", "ADS.Example.com.", "pixel.tracker.example.net", "innocent.example.com"] {
            assert_eq!(lookup(&net.laptop.netns, blocked), vec!["0.0.0.0".to_owned(), "::".to_owned()], "{blocked} was not blocked");
        }
        std::thread::sleep(Duration::from_millis(200));
        capture.stop()
    };
    let port_53: Vec<_> = frames.iter().filter(|f| carries_port_53(f)).collect();
    assert!(port_53.is_empty(), "{} DNS packets left outside the tunnel", port_53.len());
    let asked = upstream.queries();
    assert!(asked.contains("www.example.com"), "the upstream was never asked: {asked}");
    // (dnsmasq logs each query as `query[TYPE] NAME from ADDR`; the CNAME's target shows up
    // in its answer lines, never as a query.)
    let queried: Vec<String> = asked.lines().filter_map(|l| l.split("query[").nth(1)).filter_map(|q| q.split_whitespace().nth(1)).map(str::to_ascii_lowercase).collect();
    assert!(queried.iter().any(|q| q == "innocent.example.com"));
    for never in ["ads.example.com", "tracker.example.net", "pal.internal"] {
        assert!(!queried.iter().any(|q| q.ends_with(never)), "{never} reached the upstream: {queried:?}");
    }

    // A firewall domain rule: the exit drops what the resolver handed out for the name, v4
    // and v6, and lets it through again when the rule goes.
    net.laptop.pal_ok(&["policy", "set", "--deny", "example.com"]);
    let denied = wait_until(Duration::from_secs(5), || {
        lookup(&net.laptop.netns, "www.example.com");
        net.laptop_seen(Duration::from_millis(700)) == (None, None)
    });
    assert!(denied, "the domain rule did not hold at the exit: {:?}", net.laptop_seen(QUICK));
    net.laptop.pal_ok(&["policy", "set", "--clear-deny"]);
    let back = wait_until(Duration::from_secs(5), || net.laptop_seen(Duration::from_millis(700)).0.is_some());
    assert!(back, "clearing the domain rule did not open the name again");

    // PRIV-01 for DNS: CloudPal writes no name anyone asked for.
    let written = net.cloudpal.everything_written();
    for name in ["www.example.com", "innocent.example.com", "ads.example.com", "phone.pal.internal"] {
        assert!(!written.contains(name), "CloudPal wrote {name} down");
    }

    // With logging on, the owner's CloudPal keeps the last queries in memory for `pal dns log`
    // (there only), and still writes none of them down.
    assert!(net.cloudpal.pal_ok(&["dns", "log", "--json"]).trim() == "[]", "a query log without logging on");
    net.laptop.pal_ok(&["policy", "set", "--logging", "on"]);
    let logged = wait_until(Duration::from_secs(5), || {
        lookup(&net.laptop.netns, "www.example.com");
        net.cloudpal.pal_ok(&["dns", "log", "--json"]).contains("www.example.com")
    });
    assert!(logged, "logging on kept no query log");
    assert!(!net.laptop.pal(&["dns", "log"]).status.success(), "the query log is CloudPal's alone");
    assert!(!net.cloudpal.log().contains("www.example.com"), "the query log went to disk");
    net.laptop.pal_ok(&["policy", "set", "--logging", "off"]);

    // Restored after exit off, a stop and a crash.
    net.laptop.pal_ok(&["exit", "off"]);
    assert_eq!(net.laptop.netns.resolv_conf(), original, "exit off left resolv.conf changed");
    net.laptop.pal_ok(&["exit", "use"]);
    net.laptop.down();
    assert_eq!(net.laptop.netns.resolv_conf(), original, "a stop left resolv.conf changed");
    net.laptop.up();
    assert!(net.laptop.netns.resolv_conf().contains(&cloudpal_v4), "the restart did not point DNS at CloudPal again");
    net.laptop.crash();
    assert!(net.laptop.netns.resolv_conf().contains(&cloudpal_v4));
    net.laptop.up();
    net.laptop.pal_ok(&["exit", "off"]);
    assert_eq!(net.laptop.netns.resolv_conf(), original, "the restart after a crash lost the original resolv.conf");
    let _ = std::fs::remove_file(&block_list);
}

fn sorted(items: &[&str]) -> Vec<String> {
    let mut list: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
    list.sort();
    list
}

/// Whether an Ethernet frame is UDP or TCP to or from port 53.
fn carries_port_53(frame: &[u8]) -> bool {
    let (protocol, transport) = match frame.get(12..14) {
        Some([0x08, 0x00]) if frame.len() >= 34 => (frame[23], frame.get(14 + usize::from(frame[14] & 0x0f) * 4..)),
        Some([0x86, 0xdd]) if frame.len() >= 54 => (frame[20], frame.get(54..)),
        _ => return false,
    };
    (protocol == 6 || protocol == 17) && transport.is_some_and(|t| t.len() >= 4 && (t[0..2] == [0, 53] || t[2..4] == [0, 53]))
}

#[test]
fn dns_on_without_the_exit_resolves_through_cloudpal_and_falls_back_when_it_is_gone() {
    let mut net = ExitNetwork::form();
    let _upstream = Upstream::start(&net.web, &net.web_v4, &net.web_v6);
    // The home's own resolver (the ISP's, say) answers too, differently: which one answered
    // shows in the address.
    let home_dns = Upstream::start_with(&net.home.router, &net.home.gateway, &["--host-record=www.example.com,198.51.100.99".to_owned()]);
    let block_list = std::env::temp_dir().join(unique("blocklist-"));
    std::fs::write(&block_list, "ads.example.com\n").expect("block list");
    net.laptop.pal_ok(&["policy", "set", "--dns-upstream", &format!("udp://{}", net.web_v4), "--block-list", block_list.to_str().expect("path")]);
    net.phone.netns.own_resolv_conf(&format!("nameserver {}\n", net.home.gateway));
    // (The phone's pal must start after its resolv.conf exists: restart it.)
    net.phone.down();
    net.phone.up();
    let original = net.phone.netns.resolv_conf();
    net.phone.pal_ok(&["dns", "on"]);
    let (cloudpal_v4, _) = net.cloudpal.overlay();
    let text = net.phone.netns.resolv_conf();
    let servers: Vec<&str> = text.lines().filter(|l| l.starts_with("nameserver")).collect();
    assert_eq!(servers, vec![format!("nameserver {cloudpal_v4}").as_str(), format!("nameserver {}", net.home.gateway).as_str()], "{text}");
    let (laptop_v4, _) = net.laptop.overlay();
    let through_cloudpal = wait_until(Duration::from_secs(10), || lookup(&net.phone.netns, "www.example.com").contains(&net.web_v4));
    assert!(through_cloudpal, "dns on did not resolve through CloudPal: {:?}", lookup(&net.phone.netns, "www.example.com"));
    assert!(lookup(&net.phone.netns, "laptop").contains(&laptop_v4));
    assert_eq!(lookup(&net.phone.netns, "ads.example.com"), vec!["0.0.0.0".to_owned(), "::".to_owned()]);
    assert!(!home_dns.queries().contains("query["), "the home resolver was asked while CloudPal answered");
    // CloudPal gone: the phone still has DNS (the home's resolver, a second later).
    net.cloudpal.crash();
    let fell_back = wait_until(Duration::from_secs(10), || lookup(&net.phone.netns, "www.example.com").contains(&"198.51.100.99".to_owned()));
    assert!(fell_back, "with CloudPal unreachable the phone had no DNS");
    net.phone.pal_ok(&["dns", "off"]);
    assert_eq!(net.phone.netns.resolv_conf(), original, "dns off did not restore resolv.conf");
    let _ = std::fs::remove_file(&block_list);
}

#[test]
fn dns_04_dns_over_tls_upstreams_with_a_private_ca_and_every_bad_certificate_refused() {
    let mut net = ExitNetwork::form();
    let web_ip: std::net::IpAddr = net.web_v4.parse().expect("ip");
    let records: Vec<String> = ["good", "untrusted", "expired", "misnamed"].iter().map(|n| format!("--host-record={n}.example.com,{}", net.web_v4)).collect();
    let upstream = Upstream::start_with(&net.web, &net.web_v4, &records);
    let backend = std::net::SocketAddr::new(web_ip, 53);
    let ca = tests::tls::TestCa::new("CloudPal test CA");
    let stranger = tests::tls::TestCa::new("someone else's CA");
    tests::tls::dot_front(&net.web, std::net::SocketAddr::new(web_ip, 853), backend, &ca.server(web_ip, &["dns.example.test"], false));
    tests::tls::dot_front(&net.web, std::net::SocketAddr::new(web_ip, 8853), backend, &stranger.server(web_ip, &["dns.example.test"], false));
    tests::tls::dot_front(&net.web, std::net::SocketAddr::new(web_ip, 8854), backend, &ca.server(web_ip, &["dns.example.test"], true));
    let ca_file = std::env::temp_dir().join(unique("dns-ca-"));
    std::fs::write(&ca_file, &ca.pem).expect("CA file");
    net.cloudpal.down();
    net.cloudpal.up_with(&["--cloudpal", "--dns-ca", ca_file.to_str().expect("path")]);
    net.laptop.pal_ok(&["exit", "use"]);

    let through = |upstream_url: &str, name: &str, patience: u64| {
        net.laptop.pal_ok(&["policy", "set", "--dns-upstream", upstream_url]);
        std::thread::sleep(Duration::from_millis(500));
        wait_until(Duration::from_secs(patience), || lookup(&net.laptop.netns, name).contains(&net.web_v4))
    };
    assert!(through(&format!("tls://{}#dns.example.test", net.web_v4), "good.example.com", 8), "DNS over TLS with the private CA did not resolve: {}", net.cloudpal.log());
    let asked = upstream.queries();
    assert!(
        asked.lines().any(|l| l.contains("good.example.com") && l.contains(&format!("from {}", net.web_v4))),
        "the query did not arrive through the TLS front: {asked}"
    );
    for (url, name) in [
        (format!("tls://{}:8853#dns.example.test", net.web_v4), "untrusted.example.com"),
        (format!("tls://{}:8854#dns.example.test", net.web_v4), "expired.example.com"),
        (format!("tls://{}#wrong.example.test", net.web_v4), "misnamed.example.com"),
    ] {
        assert!(!through(&url, name, 3), "{url}: a bad certificate was accepted");
        assert!(!upstream.queries().contains(name), "{url}: {name} reached the upstream anyway (a plaintext fallback?)");
    }
    assert!(net.cloudpal.log().contains("DNS-over-TLS upstream failed"), "the refusal is not visible: {}", net.cloudpal.log());
    let _ = std::fs::remove_file(&ca_file);
}

#[test]
fn dns_04_dns_over_https_upstreams_and_block_lists_from_https_urls_refreshed_and_kept() {
    let mut net = ExitNetwork::form();
    let web_ip: std::net::IpAddr = net.web_v4.parse().expect("ip");
    // The test internet's resolver knows the DoH and list servers' names (CloudPal looks them
    // up with its own system resolver, as a DoH client's bootstrap) and the names asked.
    let records: Vec<String> =
        ["dns.example.test", "lists.example.test", "good.example.com", "later.example.com", "untrusted.example.com"].iter().map(|n| format!("--host-record={n},{}", net.web_v4)).collect();
    let upstream = Upstream::start_with(&net.web, &net.web_v4, &records);
    let backend = std::net::SocketAddr::new(web_ip, 53);
    let ca = tests::tls::TestCa::new("CloudPal test CA");
    let stranger = tests::tls::TestCa::new("someone else's CA");
    let documents = tests::tls::Documents::default();
    documents.lock().expect("documents").insert("/ads.txt".into(), "# a hosts-format list\n0.0.0.0 ads.example.com\n".into());
    let names = ["dns.example.test", "lists.example.test"];
    tests::tls::https_server(&net.web, std::net::SocketAddr::new(web_ip, 443), backend, &ca.server(web_ip, &names, false), documents.clone());
    tests::tls::https_server(&net.web, std::net::SocketAddr::new(web_ip, 8443), backend, &stranger.server(web_ip, &names, false), documents.clone());
    let ca_file = std::env::temp_dir().join(unique("dns-ca-"));
    std::fs::write(&ca_file, &ca.pem).expect("CA file");
    net.cloudpal.netns.own_resolv_conf(&format!("nameserver {}\n", net.web_v4));
    net.cloudpal.down();
    let cloudpal_flags = ["--cloudpal", "--dns-ca", ca_file.to_str().expect("path"), "--block-list-refresh", "2s"];
    net.cloudpal.up_with(&cloudpal_flags);
    net.laptop.pal_ok(&["exit", "use"]);

    let refused = net.laptop.pal(&["policy", "set", "--block-list", "http://lists.example.test/ads.txt"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("https:// only"), "a block list in the clear was taken");
    net.laptop.pal_ok(&["policy", "set", "--dns-upstream", "https://dns.example.test/dns-query", "--block-list", "https://lists.example.test/ads.txt"]);
    let shown = net.laptop.pal_ok(&["policy", "show"]);
    assert!(shown.contains("https://dns.example.test/dns-query") && shown.contains("https://lists.example.test/ads.txt"), "{shown}");

    // The first fetch of a list takes a moment; until it is in, nothing is blocked.
    assert!(wait_until(Duration::from_secs(8), || net.cloudpal.log().contains("block lists loaded names=1")), "the URL's list was not loaded: {}", net.cloudpal.log());
    assert!(wait_until(Duration::from_secs(8), || lookup(&net.laptop.netns, "good.example.com").contains(&net.web_v4)), "DNS over HTTPS did not resolve: {}", net.cloudpal.log());
    let asked = upstream.queries();
    assert!(
        asked.lines().any(|l| l.contains("good.example.com") && l.contains(&format!("from {}", net.web_v4))),
        "the query did not come through the DoH server: {asked}"
    );
    assert!(wait_until(QUICK, || lookup(&net.laptop.netns, "ads.example.com") == ["0.0.0.0", "::"]), "the URL's list does not block");
    assert_eq!(lookup(&net.laptop.netns, "later.example.com"), [net.web_v4.clone()], "not listed yet");

    // The list changes at its server: the next refresh blocks the new name.
    documents.lock().expect("documents").insert("/ads.txt".into(), "ads.example.com\nlater.example.com\n".into());
    assert!(wait_until(Duration::from_secs(8), || lookup(&net.laptop.netns, "later.example.com") == ["0.0.0.0", "::"]), "the refreshed list does not block the new name");
    let asked_later = || upstream.queries().matches("later.example.com from").count();
    let later_before = asked_later();

    // The list's server fails: the copy kept from the last fetch blocks from the start, across
    // a restart, and still after the failed fetch.
    documents.lock().expect("documents").clear();
    net.cloudpal.down();
    net.cloudpal.up_with(&cloudpal_flags);
    assert!(wait_until(Duration::from_secs(8), || net.cloudpal.log().contains("using the copy kept from the last fetch")), "{}", net.cloudpal.log());
    assert!(wait_until(Duration::from_secs(10), || lookup(&net.laptop.netns, "good.example.com").contains(&net.web_v4)), "no DoH after the restart: LAPTOP {} CLOUDPAL {}", net.laptop.log(), net.cloudpal.log());
    assert_eq!(lookup(&net.laptop.netns, "later.example.com"), ["0.0.0.0", "::"], "an outage of the list's server unblocked names");
    assert!(net.cloudpal.log().contains("using the copy kept from the last fetch"), "{}", net.cloudpal.log());
    assert!(!upstream.queries().contains("ads.example.com"), "a listed name reached the upstream: {}", upstream.queries());
    assert_eq!(asked_later(), later_before, "a name reached the upstream after its list blocked it");

    // A DoH server whose certificate the CA did not sign: refused, nothing in the clear.
    net.laptop.pal_ok(&["policy", "set", "--dns-upstream", "https://dns.example.test:8443/dns-query"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!wait_until(Duration::from_secs(3), || lookup(&net.laptop.netns, "untrusted.example.com").contains(&net.web_v4)), "an untrusted DoH certificate was accepted");
    assert!(!upstream.queries().contains("untrusted.example.com"), "the name reached the upstream anyway (a plaintext fallback?)");
    assert!(net.cloudpal.log().contains("DNS-over-HTTPS upstream failed"), "the refusal is not visible: {}", net.cloudpal.log());
    let _ = std::fs::remove_file(&ca_file);
}

/// `resolvectl status pal0` inside the laptop's world.
fn link_dns(netns: &Netns) -> String {
    String::from_utf8_lossy(&netns.exec("resolvectl", &["status", "pal0"]).stdout).into_owned()
}

#[test]
fn with_systemd_resolved_the_overlay_link_gets_cloudpal_and_loses_it_on_off_stop_and_when_cloudpal_is_gone() {
    let mut net = ExitNetwork::form();
    let _upstream = Upstream::start(&net.web, &net.web_v4, &net.web_v6);
    // The home router's resolver (the ISP's, say) answers differently: which one answered
    // shows in the address.
    let home_dns = Upstream::start_with(&net.home.router, &net.home.gateway, &["--host-record=www.example.com,198.51.100.99".to_owned()]);
    let isp = "198.51.100.99".to_owned();
    net.laptop.pal_ok(&["policy", "set", "--dns-upstream", &format!("udp://{}", net.web_v4)]);
    net.laptop.down();
    let resolved = tests::resolved::SystemdResolved::start(&net.laptop.netns, &net.home.gateway);
    net.laptop.netns.run_in_mounts_of(resolved.pid());
    let stub = net.laptop.netns.exec_ok("cat", &["/etc/resolv.conf"]);
    assert!(String::from_utf8_lossy(&stub.stdout).contains("nameserver 127.0.0.53"), "resolv.conf is not resolved's stub");
    assert!(wait_until(Duration::from_secs(5), || lookup(&net.laptop.netns, "www.example.com") == [isp.clone()]), "resolved does not answer: {}", resolved.log());
    net.laptop.up();
    let (cloudpal_v4, _) = net.cloudpal.overlay();
    let (phone_v4, _) = net.phone.overlay();

    // On the exit: pal0 gets CloudPal and `~.` (every name), the home resolver gets nothing.
    net.laptop.pal_ok(&["exit", "use"]);
    assert!(wait_until(Duration::from_secs(10), || lookup(&net.laptop.netns, "www.example.com").contains(&net.web_v4)), "not through CloudPal: {}", link_dns(&net.laptop.netns));
    let link = link_dns(&net.laptop.netns);
    assert!(link.contains(&cloudpal_v4) && link.contains("~."), "{link}");
    assert!(lookup(&net.laptop.netns, "phone").contains(&phone_v4), "device names: {link}");
    let asked_home = home_dns.queries().matches("query[").count();
    for _ in 0..3 {
        lookup(&net.laptop.netns, "www.example.com");
    }
    assert_eq!(home_dns.queries().matches("query[").count(), asked_home, "the home resolver was asked while on the exit");
    assert!(net.laptop.state.join("host-changes.json").exists());

    // Off: the link's settings go (resolvectl revert), the home resolver answers again.
    net.laptop.pal_ok(&["exit", "off"]);
    assert!(!link_dns(&net.laptop.netns).contains(&cloudpal_v4), "exit off left pal0 pointed at CloudPal");
    assert!(wait_until(Duration::from_secs(5), || lookup(&net.laptop.netns, "www.example.com") == [isp.clone()]));

    // dns on: through CloudPal while it is reachable, the home resolver while it is not.
    net.laptop.pal_ok(&["dns", "on"]);
    assert!(wait_until(Duration::from_secs(10), || lookup(&net.laptop.netns, "www.example.com").contains(&net.web_v4)), "dns on: {}", link_dns(&net.laptop.netns));
    net.cloudpal.crash();
    assert!(wait_until(Duration::from_secs(15), || lookup(&net.laptop.netns, "www.example.com") == [isp.clone()]), "no DNS with CloudPal gone: {}", link_dns(&net.laptop.netns));
    assert!(net.laptop.pal_ok(&["dns", "status"]).contains("unreachable"));
    net.cloudpal.up_with(&["--cloudpal"]);
    assert!(wait_until(Duration::from_secs(20), || lookup(&net.laptop.netns, "www.example.com").contains(&net.web_v4)), "not back to CloudPal: {}", link_dns(&net.laptop.netns));

    // A crash, the next start, a clean stop: nothing of pal's stays in resolved.
    net.laptop.crash();
    net.laptop.up();
    assert!(wait_until(Duration::from_secs(10), || link_dns(&net.laptop.netns).contains(&cloudpal_v4)), "dns on did not persist");
    net.laptop.down();
    let global = String::from_utf8_lossy(&net.laptop.netns.exec("resolvectl", &["status"]).stdout).into_owned();
    assert!(!global.contains(&cloudpal_v4), "a stop left CloudPal in resolved: {global}");
    assert!(wait_until(Duration::from_secs(5), || lookup(&net.laptop.netns, "www.example.com") == [isp.clone()]));
    drop(resolved);
}
