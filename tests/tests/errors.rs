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

/// INV-03 end to end: someone guessing invite secrets (a well-formed code for the network
/// with the wrong secret) is refused each time, and after a handful of tries is told to wait
/// instead of getting another check.
#[test]
fn inv03_guessing_invite_secrets_is_refused_and_rate_limited() {
    let mut net = LanNetwork::form(&["laptop"]);
    let invite = net.node("laptop").pal_ok(&["device", "invite", "--name", "guess"]);
    let code = node::enrol::invite::InviteCode::decode(invite.lines().last().expect("code")).expect("decodes");
    let guess = node::enrol::invite::InviteCode { secret: protocol::DeviceSigningKey::from_bytes(&[0x5e; 32]), ..code };
    let (netns, address) = net.lan.host("guess");
    let guesser = tests::PalNode::new("guesser", netns, address);
    let mut outcomes = Vec::new();
    for _ in 0..12 {
        let output = guesser.pal(&["join", &guess.encode(), "--name", "guesser"]);
        assert!(!output.status.success(), "a wrong secret joined");
        outcomes.push(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    assert!(outcomes[0].contains("not valid for this network"), "{outcomes:?}");
    assert!(outcomes.last().is_some_and(|o| o.contains("too many invite attempts")), "{outcomes:?}");
    net.node_mut("laptop").down();
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
