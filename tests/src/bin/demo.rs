//! The README's demo: a whole CloudPal network on this machine, in network namespaces.
//! CloudPal on a public address; a laptop and a phone behind one home router, a desktop
//! behind an office router (both endpoint-independent NATs), a car behind a carrier's
//! symmetric NAT (relayed, then direct by a birthday punch). It walks through init on the laptop behind its NAT, adding the fresh
//! CloudPal by request code, invite → join (through CloudPal) → up, shows which paths are
//! direct and which go through CloudPal, the personal VPN (a web server on the internet sees
//! the laptop's router, then CloudPal; DNS through CloudPal with a blocked ad server and the
//! device names; the policy's firewall at CloudPal), a tablet in a hotel that lets only TCP 443
//! out (joined and relayed over CloudPal's TLS fallback), a friend's device as a guest that
//! reaches one shared port and nothing else, a revocation, and cleans everything up.
//! Run it with `bash tests/demo.sh` (as root).

use std::time::Duration;
use tests::{NatNetwork, wait_until};

fn main() {
    println!("CloudPal demo: one person's devices, anywhere (network namespaces on this machine)");
    println!("  internet 203.0.113.0/24 | home 10.1.0.0/24 (NAT) | office 10.2.0.0/24 (NAT) | cell 10.3.0.0/24 (symmetric NAT)\n");
    let mut net = NatNetwork::form(|step| println!("  {step}"));
    let (web, web_address) = net.internet.host("web");
    let _server = tests::exit::WhoAmI::start(&web, 80);
    // The test internet's resolver (dnsmasq), which CloudPal's resolver forwards to.
    let _resolver = tests::exit::Dnsmasq::start_with(&web, &web_address, &[format!("--host-record=www.example.com,{web_address}"), format!("--host-record=ads.example.com,{web_address}")]);
    let block_list = std::env::temp_dir().join(tests::unique("demo-blocklist-"));
    std::fs::write(&block_list, "# a block list on CloudPal\n0.0.0.0 ads.example.com\n").expect("block list");
    let web_at: std::net::SocketAddr = format!("{web_address}:80").parse().expect("address");

    println!("\nlaptop$ pal device list");
    print!("{}", indent(&net.node("laptop").pal_ok(&["device", "list"])));

    // Give each pair the moment it needs: relay at once, direct after probing.
    let pairs = [("laptop", "desktop", "direct"), ("laptop", "phone", "direct"), ("car", "laptop", "relay")];
    for (from, to, expected) in pairs {
        wait_until(Duration::from_secs(15), || net.ping_path(from, to).as_deref() == Some(expected));
        println!("\n{from}$ pal ping {to}");
        print!("{}", indent(&net.node(from).pal(&["ping", to, "-c", "3"]).stdout.iter().map(|b| *b as char).collect::<String>()));
    }
    let (laptop_v4, _) = net.node("laptop").overlay();
    println!("\ncar$ ping -c 3 {laptop_v4}    (the kernel's own ping, relayed by CloudPal, end-to-end encrypted)");
    let ping = net.node("car").netns.exec("ping", &["-c", "3", "-W", "2", &laptop_v4]);
    print!("{}", indent(&String::from_utf8_lossy(&ping.stdout)));
    println!("\nlaptop$ pal status");
    print!("{}", indent(&net.node("laptop").pal_ok(&["status"])));
    // The personal VPN: the web server on the internet sees the laptop, then CloudPal.
    let laptop = &net.node("laptop").netns;
    let seen = |label: &str| {
        let who = tests::exit::whoami(laptop, web_at, Duration::from_secs(2)).unwrap_or_else(|| "nothing (blocked)".into());
        println!("laptop$ curl http://{web_address}/    -> the web sees {who}    {label}");
    };
    println!();
    seen("(the home router's address)");
    println!("\nlaptop$ pal exit use    (all internet traffic through CloudPal, with a kill switch)");
    print!("{}", indent(&net.node("laptop").pal_ok(&["exit", "use"])));
    wait_until(Duration::from_secs(10), || tests::exit::whoami(laptop, web_at, Duration::from_secs(1)).is_some());
    seen("(CloudPal's address)");
    println!("\nlaptop$ pal policy set --dns-upstream udp://{web_address} --block-list {}    (DNS through CloudPal, with ad blocking)", block_list.display());
    net.node("laptop").pal_ok(&["policy", "set", "--dns-upstream", &format!("udp://{web_address}"), "--block-list", block_list.to_str().expect("path")]);
    let resolve = |name: &str| {
        let found = first_address(laptop, name);
        println!("laptop$ getent ahostsv4 {name}    -> {}", if found.is_empty() { "nothing" } else { &found });
    };
    wait_until(Duration::from_secs(5), || first_address(laptop, "www.example.com") == web_address);
    resolve("www.example.com");
    resolve("ads.example.com");
    resolve("phone.pal.internal");
    println!("\nlaptop$ pal policy set --deny {web_address}    (the network's firewall, enforced at CloudPal)");
    net.node("laptop").pal_ok(&["policy", "set", "--deny", &web_address]);
    wait_until(Duration::from_secs(3), || tests::exit::whoami(laptop, web_at, Duration::from_millis(500)).is_none());
    seen("");
    net.node("laptop").pal_ok(&["policy", "set", "--clear-deny"]);
    println!("laptop$ pal policy set --clear-deny; pal exit off");
    print!("{}", indent(&net.node("laptop").pal_ok(&["exit", "off"])));
    seen("(direct again; every route, rule and table pal added is gone)");

    // Birthday punching: the car (started with --no-port-spray so far) takes part again.
    println!("\ncar$ pal up    (restarted without --no-port-spray: birthday punching through its symmetric NAT)");
    net.node_mut("car").down();
    net.node_mut("car").up_args.clear();
    net.node_mut("car").up();
    let punched = wait_until(Duration::from_secs(30), || net.ping_path("car", "laptop").as_deref() == Some("direct"));
    if !punched && std::env::var_os("DEMO_DEBUG").is_some() {
        for name in ["car", "laptop"] {
            for line in net.node(name).log().lines().filter(|l| l.contains("birthday") || l.contains("NAT") || l.contains("news")) {
                eprintln!("{name}: {line}");
            }
            eprintln!("{name}: {}", net.node(name).pal_ok(&["status"]));
        }
    }
    println!("car$ pal ping laptop    ({})", if punched { "256 mappings on the car's side, 1,024 probes at most from the laptop's" } else { "still relayed: the punch missed; it is tried again after a minute" });
    print!("{}", indent(&net.node("car").pal(&["ping", "laptop", "-c", "3"]).stdout.iter().map(|b| *b as char).collect::<String>()));
    println!("car$ pal status | head -2");
    print!("{}", indent(&net.node("car").pal_ok(&["status"]).lines().take(2).map(|l| format!("{l}\n")).collect::<String>()));

    // A hotel that lets nothing out but TCP to port 443: the tablet joins and works over
    // CloudPal's TCP/TLS fallback.
    let hotel = tests::NatRouter::new(&mut net.internet, "10.4.0", tests::Mapping::EndpointIndependent);
    hotel.only_https_out();
    net.routers.push(hotel);
    let (netns, address) = net.routers.last_mut().expect("the hotel").host("tabl");
    let mut tablet = tests::PalNode::new("tablet", netns, address);
    println!("\ntablet: in a hotel whose router lets only TCP 443 out (no UDP), at {}", tablet.address);
    let code = tests::invite_via(net.node("laptop"), net.node("cloudpal"), "tablet", &[]);
    println!("laptop$ pal device invite --name tablet; tablet$ pal join {}… --name tablet && pal up    (over TCP 443 to CloudPal)", &code[..12]);
    tablet.pal_ok(&["join", &code, "--name", "tablet"]);
    tablet.up();
    net.nodes.push(tablet);
    wait_until(Duration::from_secs(10), || net.ping_path("tablet", "laptop").as_deref() == Some("relay-tcp"));
    println!("tablet$ pal ping laptop");
    print!("{}", indent(&net.node("tablet").pal(&["ping", "laptop", "-c", "3"]).stdout.iter().map(|b| *b as char).collect::<String>()));
    println!("tablet$ pal netcheck | grep -E 'UDP|TCP 443'");
    print!("{}", indent(&net.node("tablet").pal_ok(&["netcheck"]).lines().filter(|l| l.starts_with("UDP") || l.starts_with("TCP 443")).map(|l| format!("{l}\n")).collect::<String>()));

    // A friend's device as a guest: it reaches the one port shared with it, nothing else.
    let friends = tests::NatRouter::new(&mut net.internet, "10.6.0", tests::Mapping::EndpointIndependent);
    net.routers.push(friends);
    let (netns, address) = net.routers.last_mut().expect("the friend's router").host("frnd");
    let mut friend = tests::PalNode::new("friend", netns, address);
    println!("\nfriend: a friend's laptop behind the friend's own router, at {}", friend.address);
    let _photos = tests::exit::WhoAmI::start(&net.node("desktop").netns, 8080);
    let _private = tests::exit::WhoAmI::start(&net.node("laptop").netns, 8080);
    let code = tests::invite_via(net.node("laptop"), net.node("cloudpal"), "friend", &["--role", "guest", "--share", "desktop:8080"]);
    println!("laptop$ pal device invite --name friend --role guest --share desktop:8080; friend$ pal join {}… --name friend && pal up", &code[..12]);
    friend.pal_ok(&["join", &code, "--name", "friend"]);
    friend.up();
    let ((desktop_v4, _), (laptop_v4, _)) = (net.node("desktop").overlay(), net.node("laptop").overlay());
    let photos: std::net::SocketAddr = format!("{desktop_v4}:8080").parse().expect("address");
    let private: std::net::SocketAddr = format!("{laptop_v4}:8080").parse().expect("address");
    wait_until(Duration::from_secs(20), || tests::exit::whoami(&friend.netns, photos, Duration::from_secs(1)).is_some());
    for (what, target) in [("desktop:8080, shared", photos), ("laptop:8080, not shared", private)] {
        let answer = tests::exit::whoami(&friend.netns, target, Duration::from_secs(2)).map_or("nothing (dropped by the laptop's data plane)".to_owned(), |who| format!("an answer (the server saw {who})"));
        println!("friend$ curl http://{target}/    ({what}) -> {answer}");
    }
    println!("friend$ pal device list    (what the guest sees of the network)");
    print!("{}", indent(&friend.pal_ok(&["device", "list"])));
    net.nodes.push(friend);

    // A picture of the network as the laptop and the tablet see it.
    let pictures = std::env::current_dir().unwrap_or_default().join("target");
    let _ = std::fs::create_dir_all(&pictures);
    for name in ["laptop", "tablet"] {
        let file = pictures.join(format!("demo-network-{name}.svg"));
        println!("\n{name}$ pal status --graph {}", file.display());
        print!("{}", indent(&net.node(name).pal_ok(&["status", "--graph", file.to_str().expect("utf-8 path")])));
    }

    println!("\nlaptop$ pal device revoke car    (the car was stolen)");
    let started = std::time::Instant::now();
    print!("{}", indent(&net.node("laptop").pal_ok(&["device", "revoke", "car"])));
    let everywhere = wait_until(Duration::from_secs(5), || {
        ["cloudpal", "phone", "desktop", "tablet"].iter().all(|n| net.node(n).pal_ok(&["device", "list"]).lines().any(|l| l.starts_with("car") && l.contains("revoked")))
    });
    if everywhere {
        println!("    (every online device lists the car as revoked after {} ms)", started.elapsed().as_millis());
    }
    wait_until(Duration::from_secs(5), || String::from_utf8_lossy(&net.node("car").pal(&["status"]).stderr).contains("revoked"));
    println!("car$ pal status");
    print!("{}", indent(&String::from_utf8_lossy(&net.node("car").pal(&["status"]).stderr)));
    println!("\nlaptop and desktop punched through their routers: direct. laptop and phone share a LAN: direct.");
    println!("The car's carrier NAT gives every destination a new port: with --no-port-spray its traffic");
    println!("went through CloudPal, which forwards sealed envelopes it cannot read; without, a birthday");
    println!("punch (CloudPal's NAT check told the car's NAT from the laptop's) made it direct. The hotel");
    println!("let only TCP 443 out: the tablet joined, synced and sent its traffic over CloudPal's TLS fallback.");
    println!("The friend's guest device reached the one shared port and nothing else, and saw only what it reaches.");
    let _ = std::fs::remove_file(&block_list);
    println!("Cleaning up namespaces and state.");
}

/// The first address the system resolver of `netns` finds for `name` ("" for none).
fn first_address(netns: &tests::Netns, name: &str) -> String {
    String::from_utf8_lossy(&netns.exec("getent", &["ahostsv4", name]).stdout).lines().next().and_then(|l| l.split_whitespace().next()).unwrap_or("").to_owned()
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}\n")).collect()
}
