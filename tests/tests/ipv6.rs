//! Issue #15, the IPv6 underlay (and #13's v6-only device on the exit): nodes listen on both
//! families; a device with only IPv6 (a cell network) joins through a dual-stack CloudPal,
//! talks to an IPv4-only laptop through it, goes direct with another IPv6 device, and on the
//! exit reaches the IPv4 internet.

use std::time::Duration;
use tests::exit::WhoAmI;
use tests::{Lan, Netns, PalNode, wait_until};

const V6_PREFIX: &str = "2001:db8:15::";

fn v6_only(lan: &mut Lan, tag: &str, host: u16) -> (Netns, String) {
    let (netns, _) = lan.host(tag);
    netns.ip(&["-4", "addr", "flush", "dev", "eth0"]);
    let address = format!("{V6_PREFIX}{host:x}");
    netns.ip(&["-6", "addr", "add", &format!("{address}/64"), "dev", "eth0", "nodad"]);
    (netns, address)
}

fn invite(inviter: &PalNode, name: &str, role: &str) -> String {
    let output = inviter.pal_ok(&["device", "invite", "--name", name, "--role", role]);
    output.lines().last().expect("code on the last line").trim().to_owned()
}

fn path_to(node: &PalNode, peer: &str) -> Option<String> {
    let status = node.status();
    status["peers"].as_array()?.iter().find(|p| p["name"] == peer)?["path"].as_str().map(str::to_owned)
}

fn pings(from: &PalNode, to: &str) -> bool {
    wait_until(Duration::from_secs(15), || from.pal(&["ping", to, "-c", "1"]).status.success())
}

#[test]
fn a_v6_only_phone_joins_through_a_dual_stack_cloudpal_reaches_a_v4_only_laptop_goes_direct_with_a_v6_peer_and_exits_to_the_v4_internet() {
    let mut lan = Lan::new("203.0.113");
    // The laptop has IPv4 only.
    let (laptop_ns, laptop_address) = lan.host("lapt");
    laptop_ns.exec_ok("sysctl", &["-qw", "net.ipv6.conf.eth0.disable_ipv6=1"]);
    let mut laptop = PalNode::new("laptop", laptop_ns, laptop_address);
    laptop.pal_ok(&["init", "--name", "laptop"]);
    laptop.up();
    // CloudPal has both; so does a web server of the (v4) internet.
    let (cloudpal_ns, cloudpal_address) = lan.host("cpal");
    cloudpal_ns.ip(&["-6", "addr", "add", &format!("{V6_PREFIX}1/64"), "dev", "eth0", "nodad"]);
    let mut cloudpal = PalNode::new("cloudpal", cloudpal_ns, cloudpal_address);
    cloudpal.pal_ok(&["join", &invite(&laptop, "cloudpal", "cloudpal"), "--name", "cloudpal"]);
    cloudpal.up_with(&["--cloudpal"]);
    let (web, web_v4) = lan.host("web");
    let _web_server = WhoAmI::start(&web, 80);
    assert!(pings(&laptop, "cloudpal"), "laptop ↔ CloudPal: {}", laptop.log());

    // The phone has IPv6 only: the code's addresses include CloudPal's IPv6 one.
    let (phone_ns, phone_v6) = v6_only(&mut lan, "phon", 0x50);
    let mut phone = PalNode::new("phone", phone_ns, phone_v6.clone());
    let code = invite(&laptop, "phone", "member");
    let joined = phone.pal(&["join", &code, "--name", "phone"]);
    assert!(joined.status.success(), "a v6-only device cannot join: {}", String::from_utf8_lossy(&joined.stderr));
    phone.up();
    assert!(pings(&phone, "cloudpal"), "phone ↔ CloudPal over IPv6: {}", phone.log());
    assert_eq!(path_to(&phone, "cloudpal").as_deref(), Some("direct"));
    // v6-only ↔ v4-only: through CloudPal, both ways.
    assert!(pings(&phone, "laptop"), "phone → laptop: {}", phone.log());
    assert!(pings(&laptop, "phone"), "laptop → phone: {}", laptop.log());
    assert_eq!(path_to(&phone, "laptop").as_deref(), Some("relay"), "the families differ: only the relay joins them");

    // A second v6-only device: the two go direct over IPv6 (no NAT between them).
    let (tablet_ns, tablet_v6) = v6_only(&mut lan, "tabl", 0x51);
    let mut tablet = PalNode::new("tablet", tablet_ns, tablet_v6);
    tablet.pal_ok(&["join", &invite(&laptop, "tablet", "member"), "--name", "tablet"]);
    tablet.up();
    assert!(pings(&tablet, "phone"), "tablet → phone: {}", tablet.log());
    let direct = wait_until(Duration::from_secs(15), || {
        let _ = tablet.pal(&["ping", "phone", "-c", "1"]);
        path_to(&tablet, "phone").as_deref() == Some("direct")
    });
    assert!(direct, "two v6 devices did not go direct: {:?}", path_to(&tablet, "phone"));

    // #13: the v6-only phone on the exit reaches the IPv4 internet through CloudPal.
    phone.pal_ok(&["exit", "use"]);
    let web_at: std::net::SocketAddr = format!("{web_v4}:80").parse().expect("address");
    let ask = || tests::exit::whoami(&phone.netns, web_at, Duration::from_secs(2));
    let fetched = wait_until(Duration::from_secs(10), || ask().is_some());
    assert!(fetched, "a v6-only device on the exit did not reach the v4 internet: {}", phone.log());
    let seen = ask().expect("an answer");
    assert_eq!(seen, cloudpal.address, "the web did not see CloudPal's address");
    phone.pal_ok(&["exit", "off"]);
    for node in [&mut tablet, &mut phone, &mut cloudpal, &mut laptop] {
        node.down();
    }
}
