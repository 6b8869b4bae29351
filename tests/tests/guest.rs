//! Sharing with a friend (#16 item 1), end to end: the owner's laptop and nas at home behind a
//! NAT, CloudPal and a desk server on the internet, and a friend's device behind the friend's
//! own NAT, invited as a guest with one port of the nas shared. The guest reaches that port and
//! nothing else, nobody else reaches the guest, the devices refuse its handshakes where nothing
//! is shared (GUEST-01), it cannot see the rest of the network (GUEST-02), and `pal device
//! share`, `unshare` and `revoke` change that within seconds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tests::adversary::{initiation, network_psk, send_and_listen, static_secret};
use tests::exit::{WhoAmI, whoami};
use tests::{Lan, Mapping, NatRouter, PalNode, cloudpal_added_by, founding_laptop, poll_until, wait_until};

const SERVICE: u16 = 8080;
const OTHER_PORT: u16 = 8081;

/// A device invited by `laptop` and joined (not up yet).
fn invited(laptop: &PalNode, cloudpal: &PalNode, node: PalNode, extra: &[&str]) -> PalNode {
    let code = tests::invite_via(laptop, cloudpal, &node.name, extra);
    node.pal_ok(&["join", &code, "--name", &node.name]);
    node
}

fn reaches(from: &PalNode, to: &str, port: u16, within: Duration) -> bool {
    let target: SocketAddr = format!("{to}:{port}").parse().expect("address");
    poll_until(within, Duration::from_millis(200), || whoami(&from.netns, target, Duration::from_secs(1)).is_some())
}

fn never_reaches(from: &PalNode, to: &str, port: u16) -> bool {
    let target: SocketAddr = format!("{to}:{port}").parse().expect("address");
    whoami(&from.netns, target, Duration::from_secs(3)).is_none()
}

fn names(node: &PalNode) -> Vec<String> {
    node.device_list().as_array().into_iter().flatten().filter_map(|d| d["name"].as_str().map(str::to_owned)).collect()
}

/// Whether `node` answers a handshake initiation made with `from`'s static key, sent from
/// `from`'s namespace to `node`'s data port.
fn answers_handshake(node: &PalNode, from: &PalNode, psk: protocol::PresharedKey) -> bool {
    let target: SocketAddr = format!("{}:41641", node.address).parse().expect("address");
    let message = initiation(&static_secret(from), static_secret(node).public_key(), psk);
    !send_and_listen(&from.netns, &format!("{}:0", from.address), &message, target, Duration::from_millis(700)).is_empty()
}

#[test]
fn guest01_guest02_a_guest_reaches_only_what_is_shared_and_follows_share_unshare_and_revoke() {
    let mut internet = Lan::new("203.0.113");
    let mut home = NatRouter::new(&mut internet, "10.1.0", Mapping::EndpointIndependent);
    let mut friends_home = NatRouter::new(&mut internet, "10.6.0", Mapping::EndpointIndependent);
    let laptop = founding_laptop(&mut home);
    let cloudpal = cloudpal_added_by(&laptop, &mut internet);
    let (netns, address) = home.host("nas");
    let mut nas = invited(&laptop, &cloudpal, PalNode::new("nas", netns, address), &[]);
    nas.up();
    let (netns, address) = internet.host("desk");
    let mut desk = invited(&laptop, &cloudpal, PalNode::new("desk", netns, address), &[]);
    desk.up();

    // The friend's device: invited as a guest that reaches the nas's port 8080.
    let (netns, address) = friends_home.host("frnd");
    let share = format!("nas:{SERVICE}");
    let mut friend = invited(&laptop, &cloudpal, PalNode::new("friend", netns, address), &["--role", "guest", "--share", &share]);
    friend.up();
    let started = Instant::now();
    let _servers = [
        WhoAmI::start(&nas.netns, SERVICE),
        WhoAmI::start(&nas.netns, OTHER_PORT),
        WhoAmI::start(&desk.netns, SERVICE),
        WhoAmI::start(&laptop.netns, SERVICE),
        WhoAmI::start(&friend.netns, SERVICE),
    ];
    let ((nas_v4, _), (desk_v4, _), (laptop_v4, _), (friend_v4, _)) = (nas.overlay(), desk.overlay(), laptop.overlay(), friend.overlay());
    assert!(reaches(&friend, &nas_v4, SERVICE, Duration::from_secs(30)), "the guest never reached the shared port: {}", friend.log());
    println!("guest reached the shared port {:.2} s after pal up", started.elapsed().as_secs_f64());

    // GUEST-01: nothing else — another port of the shared device, an unshared device, the
    // laptop — and nobody calls the guest, not even the device shared with it.
    assert!(never_reaches(&friend, &nas_v4, OTHER_PORT), "the guest reached an unshared port");
    assert!(never_reaches(&friend, &desk_v4, SERVICE), "the guest reached an unshared device");
    assert!(never_reaches(&friend, &laptop_v4, SERVICE), "the guest reached the laptop");
    assert!(never_reaches(&desk, &friend_v4, SERVICE), "a member reached the guest");
    assert!(never_reaches(&nas, &friend_v4, SERVICE), "the shared device called the guest");
    // Its own key gets no handshake from a device that shares nothing with it (whatever
    // software it runs); CloudPal, which relays for it, answers (control).
    let psk = network_psk(&laptop);
    assert!(!answers_handshake(&desk, &friend, psk.clone()), "the desk answered the guest's handshake");
    assert!(answers_handshake(&cloudpal, &friend, psk), "control: CloudPal did not answer the guest");

    // A forged source: the guest claims the laptop's overlay address (a member's) towards
    // the nas, which drops it before its kernel sees it; the same ping from the guest's own
    // address arrives (control).
    friend.netns.exec_ok("ip", &["addr", "add", &format!("{laptop_v4}/32"), "dev", "pal0"]);
    let capture = nas.netns.capture_on(Some("pal0"));
    let forged = friend.netns.exec("ping", &["-c", "2", "-W", "1", "-I", &laptop_v4, &nas_v4]);
    let honest = friend.netns.exec("ping", &["-c", "2", "-W", "1", "-I", &friend_v4, &nas_v4]);
    let frames = capture.stop();
    friend.netns.exec_ok("ip", &["addr", "del", &format!("{laptop_v4}/32"), "dev", "pal0"]);
    assert!(!forged.status.success() && honest.status.success(), "forged {:?}, honest {:?}", forged.status, honest.status);
    let octets = |a: &str| a.parse::<std::net::Ipv4Addr>().expect("v4").octets();
    let seen = |from: &str| {
        let header = [octets(from), octets(&nas_v4)].concat();
        frames.iter().any(|f| f.windows(8).any(|w| w == header))
    };
    assert!(seen(&friend_v4), "control: the guest's honest ping never reached the nas's TUN");
    assert!(!seen(&laptop_v4), "a packet with a member's forged source reached the nas");

    // GUEST-02: the guest's device list is itself, what it reaches and CloudPal; the owner's
    // list shows the guest with what it reaches.
    let seen = names(&friend);
    assert!(seen.contains(&"nas".to_owned()) && seen.contains(&"cloudpal".to_owned()) && seen.contains(&"friend".to_owned()), "{seen:?}");
    assert!(!seen.contains(&"desk".to_owned()), "the guest sees the desk: {seen:?}");
    let owner = laptop.pal_ok(&["device", "list"]);
    assert!(owner.lines().any(|l| l.starts_with("friend") && l.contains("guest") && l.contains(&format!("reaches nas:{SERVICE}"))), "{owner}");
    let state: Vec<String> = std::fs::read_dir(&friend.state).expect("state dir").filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    assert!(!state.iter().any(|f| f.starts_with("membership")), "the guest holds a log: {state:?}");

    // Share the desk too: reachable within seconds, on the shared port only.
    let started = Instant::now();
    let reply = laptop.pal_ok(&["device", "share", "friend", &format!("desk:{SERVICE}")]);
    assert!(reply.contains("friend reaches"), "{reply}");
    assert!(reaches(&friend, &desk_v4, SERVICE, Duration::from_secs(30)), "the guest never reached the newly shared desk: {}", friend.log());
    println!("a new share took effect in {:.2} s", started.elapsed().as_secs_f64());
    assert!(names(&friend).contains(&"desk".to_owned()));

    // Unshare the nas: it stops answering the guest.
    let started = Instant::now();
    laptop.pal_ok(&["device", "unshare", "friend", "nas"]);
    let cut = poll_until(Duration::from_secs(30), Duration::from_millis(200), || whoami(&friend.netns, format!("{nas_v4}:{SERVICE}").parse().unwrap(), Duration::from_secs(1)).is_none());
    assert!(cut, "the nas still answers the guest after unshare");
    println!("an unshare took effect in {:.2} s", started.elapsed().as_secs_f64());
    assert!(never_reaches(&friend, &nas_v4, SERVICE));

    // The exit: not a guest's unless the policy names it (`all` is the owner's devices).
    let (web, web_address) = internet.host("web");
    let _web = WhoAmI::start(&web, 80);
    let web_at: SocketAddr = format!("{web_address}:80").parse().expect("address");
    friend.pal_ok(&["exit", "use"]);
    assert!(whoami(&friend.netns, web_at, Duration::from_secs(3)).is_none(), "a guest used the exit without the policy naming it");
    laptop.pal_ok(&["policy", "set", "--exit-devices", "laptop,friend"]);
    let via = poll_until(Duration::from_secs(20), Duration::from_millis(200), || whoami(&friend.netns, web_at, Duration::from_secs(1)).as_deref() == Some(cloudpal.address.as_str()));
    assert!(via, "the guest named in the policy did not get the internet through CloudPal: {}", friend.log());
    friend.pal_ok(&["exit", "off"]);

    // Revoke the guest: it is told, and the desk stops answering it.
    let started = Instant::now();
    laptop.pal_ok(&["device", "revoke", "friend"]);
    let told = wait_until(Duration::from_secs(30), || friend.status()["device"]["status"] == "revoked");
    assert!(told, "the guest never learnt it was revoked: {}", friend.log());
    println!("the guest saw its revocation {:.2} s after it was made", started.elapsed().as_secs_f64());
    assert!(never_reaches(&friend, &desk_v4, SERVICE), "a revoked guest still reaches the desk");
    drop(friends_home);
}
