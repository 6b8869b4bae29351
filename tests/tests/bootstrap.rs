//! Bootstrapping when the owner's first device is behind a NAT and CloudPal is fresh (issue
//! #5): `pal request` on CloudPal prints a request code, `pal device add CODE --role cloudpal`
//! on the admin behind the NAT adds it and delivers the log; CloudPal comes up, cannot add
//! devices itself, and a device behind another NAT joins through it — the inviter being
//! unreachable from there — and reaches the admin.

use std::time::{Duration, Instant};
use tests::{Lan, Mapping, NatRouter, PalNode, poll_until, wait_until};

#[test]
fn a_fresh_cloudpal_is_added_by_an_admin_behind_a_nat_and_admits_others() {
    let mut internet = Lan::new("203.0.113");
    let mut home = NatRouter::new(&mut internet, "10.1.0", Mapping::EndpointIndependent);
    let mut office = NatRouter::new(&mut internet, "10.2.0", Mapping::EndpointIndependent);
    let laptop = tests::founding_laptop(&mut home);

    // CloudPal: a fresh machine on a public address asks to be added.
    let (netns, address) = internet.host("cpal");
    let mut cloudpal = PalNode::new("cloudpal", netns, address);
    let code = cloudpal.request(&laptop.network_fingerprint());

    // Issue #12 (request-code hijack): a stranger who saw the code — an admin of another
    // network — tries to capture the fresh CloudPal first. It refuses that log, says why at the
    // stranger's end, and keeps waiting for its owner.
    let (netns, address) = internet.host("strg");
    let mut stranger = PalNode::new("stranger", netns, address);
    stranger.pal_ok(&["init", "--name", "stranger"]);
    stranger.up();
    let captured = stranger.pal(&["device", "add", &code, "--role", "cloudpal"]);
    let said = String::from_utf8_lossy(&captured.stderr).into_owned();
    assert!(!captured.status.success(), "a stranger's network captured the fresh CloudPal");
    assert!(said.contains("expects another network") && said.trim().lines().count() == 1, "{said}");
    stranger.down();

    // The admin behind the NAT adds it; the log reaches it and `pal request` ends.
    let added = laptop.pal_ok(&["device", "add", &code, "--role", "cloudpal"]);
    assert!(added.contains("cloudpal was added as cloudpal"), "{added}");
    cloudpal.finish_request();
    assert!(cloudpal.log().contains("added to the network as cloudpal"), "{}", cloudpal.log());
    // A second add of the same code is refused clearly.
    let again = laptop.pal(&["device", "add", &code, "--role", "cloudpal"]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already in this network"));

    // CloudPal comes up; the admin finds it by the code's addresses.
    let started = Instant::now();
    cloudpal.up_with(&["--cloudpal"]);
    let path_to = |node: &PalNode, peer: &str| -> Option<String> {
        let status = node.status();
        status["peers"].as_array()?.iter().find(|p| p["name"] == peer)?["path"].as_str().map(str::to_owned)
    };
    let session = poll_until(Duration::from_secs(15), Duration::from_millis(20), || path_to(&laptop, "cloudpal").is_some_and(|p| p != "none"));
    assert!(session, "the admin never found CloudPal: {}", laptop.log());
    println!("cold start: CloudPal up to a session with the admin behind its NAT: {:?}", started.elapsed());
    let reached = wait_until(Duration::from_secs(10), || laptop.pal(&["ping", "cloudpal", "-c", "1"]).status.success());
    assert!(reached, "the admin cannot reach CloudPal: {}", laptop.log());
    let list = laptop.device_list();
    let entry = list.as_array().expect("list").iter().find(|d| d["name"] == "cloudpal").cloned().expect("listed");
    assert_eq!((entry["role"].as_str(), entry["status"].as_str()), (Some("cloudpal"), Some("active")));
    let refused = cloudpal.pal(&["device", "invite", "--name", "x"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only an admin"), "CloudPal could invite");

    // A device behind another NAT joins with the admin's invite — the admin's own address is
    // private, so CloudPal (named in the code) admits it — and reaches the admin.
    let invite = laptop.pal_ok(&["device", "invite", "--name", "phone"]);
    let invite = invite.lines().last().expect("code").trim().to_owned();
    let entries = laptop.pal_ok(&["log", "--json"]);
    let spread = wait_until(Duration::from_secs(10), || cloudpal.pal_ok(&["log", "--json"]) == entries);
    assert!(spread, "the invite did not reach CloudPal");
    let (netns, address) = office.host("phon");
    let mut phone = PalNode::new("phone", netns, address);
    let started = Instant::now();
    phone.pal_ok(&["join", &invite, "--name", "phone"]);
    phone.up();
    let reached = wait_until(Duration::from_secs(20), || phone.pal(&["ping", "laptop", "-c", "1"]).status.success());
    assert!(reached, "the phone cannot reach the laptop: {}", phone.log());
    println!("phone: pal join to first reply from the admin behind another NAT: {:?}", started.elapsed());
    drop((phone, cloudpal, laptop));
    drop((home, office, internet));
}
