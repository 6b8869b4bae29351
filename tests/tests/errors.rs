//! Errors a user meets with a real network: one clear line on stderr and a non-zero exit.

use std::time::Duration;
use tests::LanNetwork;

fn one_line_error(output: &std::process::Output, expected: &str) {
    assert!(!output.status.success(), "succeeded: {}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
}

#[test]
fn second_up_expired_and_reused_invites_and_member_rights_fail_clearly() {
    let mut net = LanNetwork::form(&["laptop", "phone"]);
    // A second node on the same state directory.
    one_line_error(&net.node("laptop").pal(&["up"]), "already running");

    // An invite that expires before it is used (INV-02 end to end).
    let invite = net.node("laptop").pal_ok(&["device", "invite", "--name", "late", "--ttl", "1s"]);
    let expired = invite.lines().last().expect("code").trim().to_owned();
    // A one-time invite used twice (INV-01 end to end).
    let invite = net.node("laptop").pal_ok(&["device", "invite", "--name", "once"]);
    let once = invite.lines().last().expect("code").trim().to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let (netns, address) = net.lan.host("late");
    let mut late = tests::PalNode::new("late", netns, address);
    one_line_error(&late.pal(&["join", &expired, "--name", "late"]), "expired");
    late.pal_ok(&["join", &once, "--name", "once"]);
    let (netns, address) = net.lan.host("twice");
    let twice = tests::PalNode::new("twice", netns, address);
    one_line_error(&twice.pal(&["join", &once, "--name", "twice"]), "already been used");

    // A member cannot invite or revoke.
    one_line_error(&net.node("phone").pal(&["device", "invite", "--name", "x"]), "only an admin");
    one_line_error(&net.node("phone").pal(&["device", "revoke", "laptop"]), "only an admin");
    // Unknown names are refused.
    one_line_error(&net.node("laptop").pal(&["device", "revoke", "nosuch"]), "no active device");
    one_line_error(&net.node("laptop").pal(&["ping", "nosuch"]), "no other active device");
    late.up();
    net.node_mut("phone").down();
}

/// Without CAP_NET_ADMIN (root's bounding set stripped of it, as for an unprivileged user)
/// `pal up` cannot create its TUN device: one line that says what to do, a non-zero exit,
/// and no control socket left behind to confuse the next command.
#[test]
fn up_without_net_admin_says_to_run_as_root() {
    let mut lan = tests::Lan::new("203.0.113");
    let (netns, address) = lan.host("noroot");
    let node = tests::PalNode::new("noroot", netns, address);
    node.pal_ok(&["init", "--name", "noroot"]);
    let pal = tests::pal_binary();
    let state = node.state.to_str().expect("utf-8 path");
    let output = node.netns.exec(
        "setpriv",
        &["--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--", pal.to_str().expect("utf-8 path"), "--state", state, "up"],
    );
    one_line_error(&output, "as root");
    assert!(String::from_utf8_lossy(&output.stderr).contains("CAP_NET_ADMIN"));
    assert!(!node.state.join("pal.sock").exists(), "a failed start left its control socket");
    one_line_error(&node.pal(&["status"]), "not running");
}
