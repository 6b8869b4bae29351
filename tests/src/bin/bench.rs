//! The namespace benchmark: the same two-host LAN for every contestant — the raw link, `pal`,
//! boringtun (`boringtun-cli`), wireguard-go, Nebula and tinc — measured in one run: iperf3 TCP with 1 and 4
//! streams, ping RTT, daemon CPU seconds per GiB moved, and peak RSS. Prints a table with
//! ratios to boringtun. `BENCH_EXIT=1`: the exit benchmark instead (issue #13); `BENCH_RELAY=1`:
//! relayed against direct through CloudPal (issue #15). Not part of the test suite; run
//! `bash tests/bench.sh` as root.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;
use tests::{Lan, LanNetwork, Netns, run, unique, wait_until};

/// Seconds each iperf3 run lasts.
const SECONDS: &str = "10";

#[derive(Debug, Default, Clone)]
struct Row {
    name: &'static str,
    gbps_1: f64,
    gbps_4: f64,
    rtt_ms: f64,
    cpu_s_per_gib: f64,
    peak_rss_mib: f64,
}

/// `BENCH_ONLY=pal,boringtun` runs a subset (names as in the table: raw, pal, boringtun,
/// wireguard-go, nebula, tinc).
fn selected(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|n| name.starts_with(n.trim())))
}

/// One implementation's topology, kept up until the end so that RTT can be measured for all
/// of them in interleaved rounds.
struct Contestant {
    name: &'static str,
    topology: Topology,
    server: String,
    pids: Vec<u32>,
}

/// What must live as long as the measurement. Field order is drop order: daemons and nodes
/// stop before their namespaces and the switch go.
enum Topology {
    Raw { from: Netns, to: Netns, _switch: Lan },
    Pal(LanNetwork),
    WireGuard { _daemons: Daemons, from: Netns, to: Netns, _switch: Lan },
    /// nodes[0] is the client, nodes[1] the exit; `to` is the internet host (none: measured
    /// to the exit itself).
    PalExit { nodes: Vec<tests::PalNode>, to: Option<Netns>, _switches: (Lan, Lan) },
    WireGuardExit { _daemons: Daemons, from: Netns, to: Netns, _exit: Netns, _switches: (Lan, Lan) },
}

impl Contestant {
    /// The client and server namespaces.
    fn ends(&self) -> (&Netns, &Netns) {
        match &self.topology {
            Topology::Raw { from, to, .. } | Topology::WireGuard { from, to, .. } | Topology::WireGuardExit { from, to, .. } => (from, to),
            Topology::Pal(net) => (&net.nodes[0].netns, &net.nodes[1].netns),
            Topology::PalExit { nodes, to, .. } => (&nodes[0].netns, to.as_ref().unwrap_or(&nodes[1].netns)),
        }
    }
}

/// Daemons killed when the contestant is dropped.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for daemon in &mut self.0 {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

fn main() {
    if std::env::var_os("BENCH_EXIT").is_some() {
        return exit_benchmark();
    }
    if std::env::var_os("BENCH_RELAY").is_some() {
        return relay_benchmark();
    }
    let mut contestants = Vec::new();
    if selected("raw") {
        contestants.push(raw_link());
    }
    if selected("pal") {
        contestants.push(pal("pal"));
    }
    // PAL_BIN_B=path adds a second `pal` build as "pal-b": an A/B comparison in one run.
    if let Some(other) = std::env::var_os("PAL_BIN_B") {
        let own = std::env::var_os("PAL_BIN");
        // SAFETY: the benchmark is single-threaded here; the nodes it spawns read the
        // variable through `pal_binary()` while the network forms.
        unsafe { std::env::set_var("PAL_BIN", &other) };
        contestants.push(pal("pal-b"));
        match own {
            // SAFETY: as above.
            Some(own) => unsafe { std::env::set_var("PAL_BIN", own) },
            // SAFETY: as above.
            None => unsafe { std::env::remove_var("PAL_BIN") },
        }
    }
    for (name, program) in [("boringtun", "boringtun-cli"), ("wireguard-go", "wireguard-go")] {
        if !selected(name) {
            continue;
        }
        match which(program) {
            Some(path) => contestants.push(wireguard(name, &path)),
            None => eprintln!("{program} not installed: skipped (tests/bench.sh installs it)"),
        }
    }
    for (name, program, start) in [("nebula", "nebula", nebula as fn(&'static str, &str) -> Contestant), ("tinc", "tincd", tinc)] {
        if !selected(name) {
            continue;
        }
        match which(program) {
            Some(path) => contestants.push(start(name, &path)),
            None => eprintln!("{program} not installed: skipped (tests/bench.sh installs it)"),
        }
    }
    print_table(&contestants, "raw link", "boringtun");
}

/// A directory for one contestant's keys and configuration, gone with the contestant's run.
fn config_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&dir).expect("config dir");
    dir
}

/// Nebula (Debian's `nebula`): a CA and a certificate per host from `nebula-cert`, each host
/// told where the other is (no lighthouse), a firewall that lets everything through; its
/// default cipher (AES-256-GCM).
fn nebula(name: &'static str, program: &str) -> Contestant {
    let mut lan = Lan::new("192.0.2");
    let (a, a_address) = lan.host("na");
    let (b, b_address) = lan.host("nb");
    let dir = config_dir("nebula-");
    let path = |file: &str| dir.join(file).to_str().expect("utf-8 path").to_owned();
    let cert = which("nebula-cert").expect("nebula-cert beside nebula");
    run(&cert, &["ca", "-name", "bench", "-out-crt", &path("ca.crt"), "-out-key", &path("ca.key")]);
    let mut daemons = Vec::new();
    for (i, (netns, peer_address)) in [(&a, &b_address), (&b, &a_address)].into_iter().enumerate() {
        let host = format!("h{i}");
        let overlay = format!("198.19.0.{}/24", i + 1);
        run(&cert, &["sign", "-ca-crt", &path("ca.crt"), "-ca-key", &path("ca.key"), "-name", &host, "-ip", &overlay, "-out-crt", &path(&format!("{host}.crt")), "-out-key", &path(&format!("{host}.key"))]);
        let peer_overlay = format!("198.19.0.{}", 2 - i);
        let config = format!(
            "pki:\n  ca: {}\n  cert: {}\n  key: {}\nstatic_host_map:\n  \"{peer_overlay}\": [\"{peer_address}:4242\"]\nlighthouse:\n  am_lighthouse: false\n  hosts: []\nlisten:\n  host: 0.0.0.0\n  port: 4242\npunchy:\n  punch: false\ntun:\n  dev: neb0\n  mtu: 1300\nlogging:\n  level: warning\nfirewall:\n  outbound:\n    - port: any\n      proto: any\n      host: any\n  inbound:\n    - port: any\n      proto: any\n      host: any\n",
            path("ca.crt"),
            path(&format!("{host}.crt")),
            path(&format!("{host}.key"))
        );
        let file = path(&format!("{host}.yml"));
        std::fs::write(&file, config).expect("nebula config");
        let log = std::env::temp_dir().join(unique("nebula-log-"));
        daemons.push(netns.spawn(program, &["-config", &file], &log));
        assert!(wait_until(Duration::from_secs(10), || netns.exec("ip", &["link", "show", "neb0"]).status.success()), "nebula did not create its interface: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    assert!(wait_until(Duration::from_secs(10), || a.exec("ping", &["-c", "1", "-W", "1", "198.19.0.2"]).status.success()), "nebula: no ping through the tunnel");
    let pids: Vec<u32> = daemons.iter().map(Child::id).collect();
    Contestant { name, topology: Topology::WireGuard { _daemons: Daemons(daemons), from: a, to: b, _switch: lan }, server: "198.19.0.2".into(), pids }
}

/// tinc 1.0 (Debian's `tinc`) in router mode: RSA keys from `tincd -K`, each host's file (its
/// address, subnet and public key) in both configurations, the first connecting to the second;
/// its default cipher.
fn tinc(name: &'static str, program: &str) -> Contestant {
    let mut lan = Lan::new("192.0.2");
    let (a, a_address) = lan.host("ta");
    let (b, b_address) = lan.host("tb");
    let dirs: Vec<PathBuf> = (0..2).map(|_| config_dir("tinc-")).collect();
    for (i, address) in [&a_address, &b_address].into_iter().enumerate() {
        let dir = &dirs[i];
        std::fs::create_dir_all(dir.join("hosts")).expect("hosts dir");
        let connect = if i == 0 { "ConnectTo = h1\n" } else { "" };
        std::fs::write(dir.join("tinc.conf"), format!("Name = h{i}\nInterface = tinc0\nMode = router\nAddressFamily = ipv4\n{connect}")).expect("tinc.conf");
        std::fs::write(dir.join("hosts").join(format!("h{i}")), format!("Address = {address}\nSubnet = 198.20.0.{}/32\n", i + 1)).expect("host file");
        let up = dir.join("tinc-up");
        std::fs::write(&up, format!("#!/bin/sh\nip addr add 198.20.0.{}/24 dev $INTERFACE\nip link set $INTERFACE mtu 1400 up\n", i + 1)).expect("tinc-up");
        run("chmod", &["755", up.to_str().expect("utf-8 path")]);
        run(program, &["-c", dir.to_str().expect("utf-8 path"), "-K", "2048"]);
    }
    for i in 0..2 {
        let host = format!("h{i}");
        std::fs::copy(dirs[i].join("hosts").join(&host), dirs[1 - i].join("hosts").join(&host)).expect("host file across");
    }
    let mut daemons = Vec::new();
    for (i, netns) in [&a, &b].into_iter().enumerate() {
        let log = std::env::temp_dir().join(unique("tinc-log-"));
        let dir = dirs[i].to_str().expect("utf-8 path").to_owned();
        let pidfile = dirs[i].join("pid");
        daemons.push(netns.spawn(program, &["-c", &dir, "-D", "--pidfile", pidfile.to_str().expect("utf-8 path")], &log));
    }
    assert!(wait_until(Duration::from_secs(15), || a.exec("ping", &["-c", "1", "-W", "1", "198.20.0.2"]).status.success()), "tinc: no ping through the tunnel");
    let pids: Vec<u32> = daemons.iter().map(Child::id).collect();
    Contestant { name, topology: Topology::WireGuard { _daemons: Daemons(daemons), from: a, to: b, _switch: lan }, server: "198.20.0.2".into(), pids }
}

/// Issue #13's benchmark (`BENCH_EXIT=1`): laptop → CloudPal → internet host, pal against the
/// direct tunnel to CloudPal and against boringtun and wireguard-go used as the same kind of
/// exit, in one run.
fn exit_benchmark() {
    let mut contestants = vec![pal_exit("pal direct tunnel", true), pal_exit("pal exit", false)];
    for (name, program) in [("boringtun exit", "boringtun-cli"), ("wireguard-go exit", "wireguard-go")] {
        match which(program) {
            Some(path) => contestants.push(wireguard_exit(name, &path)),
            None => eprintln!("{program} not installed: skipped (tests/bench.sh installs it)"),
        }
    }
    print_table(&contestants, "pal direct tunnel", "boringtun exit");
}

/// Issue #15's relay benchmark (`BENCH_RELAY=1`): two members and CloudPal on one LAN, the
/// members' direct path open (direct) or their UDP to each other dropped (relayed through
/// CloudPal), in one run; relayed once at the policy's default rate and once with no cap.
fn relay_benchmark() {
    let contestants = vec![pal_relay("pal direct", None), pal_relay("pal relayed, no cap", Some("unlimited")), pal_relay("pal relayed, default cap", Some("default"))];
    print_table(&contestants, "pal direct", "pal direct");
}

/// Two members (benchA, benchB) and a CloudPal on one LAN; with `relay_rate`, the members'
/// UDP to each other is dropped so their traffic goes through CloudPal at that policy rate.
fn pal_relay(name: &'static str, relay_rate: Option<&str>) -> Contestant {
    let mut net = LanNetwork::form(&["benchA", "benchB"]);
    let (netns, address) = net.lan.host("bcp");
    let mut cloudpal = tests::PalNode::new("cloudpal", netns, address);
    let code = cloudpal.request(&net.nodes[0].network_fingerprint());
    net.nodes[0].pal_ok(&["device", "add", &code, "--role", "cloudpal"]);
    cloudpal.finish_request();
    cloudpal.up_with(&["--cloudpal"]);
    net.nodes.push(cloudpal);
    assert!(net.wait_for_membership(Duration::from_secs(20)), "the relay network did not form");
    if let Some(rate) = relay_rate {
        net.nodes[0].pal_ok(&["policy", "set", "--relay-rate", rate]);
        for (from, to) in [(0, 1), (1, 0)] {
            let peer = net.nodes[to].address.clone();
            net.nodes[from].netns.exec_ok("nft", &["add table ip benchrelay; add chain ip benchrelay out { type filter hook output priority 0; }"]);
            net.nodes[from].netns.exec_ok("nft", &["add", "rule", "ip", "benchrelay", "out", "ip", "daddr", &peer, "udp", "dport", "41641", "drop"]);
        }
    }
    let wanted = if relay_rate.is_some() { "relay" } else { "direct" };
    let on_path = wait_until(Duration::from_secs(20), || {
        let output = net.nodes[0].pal(&["ping", "benchB", "-c", "1"]);
        String::from_utf8_lossy(&output.stdout).contains(&format!("path={wanted}"))
    });
    assert!(on_path, "{name}: benchA never reached benchB on the {wanted} path");
    let (server, _) = net.node("benchB").overlay();
    let pids: Vec<u32> = net.nodes.iter().filter_map(|n| n.pid()).collect();
    Contestant { name, topology: Topology::Pal(net), server: server.to_string(), pids }
}

/// Measures every contestant, then prints the table with RTTs added over `base` and ratios
/// to `reference`.
fn print_table(contestants: &[Contestant], base: &str, reference: &str) {
    let mut rows: Vec<Row> = contestants.iter().map(measure).collect();
    for (row, rtt) in rows.iter_mut().zip(interleaved_rtts(contestants)) {
        row.rtt_ms = rtt;
    }
    let raw_rtt = rows.iter().find(|r| r.name == base).map(|r| r.rtt_ms);
    let boringtun = rows.iter().find(|r| r.name == reference).cloned();
    let base_row = rows.iter().find(|r| r.name == base).cloned();
    println!("\n| implementation | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | ping RTT ms (added) | daemon CPU s/GiB | peak RSS MiB | 1 / 4 streams vs {reference} | 1 / 4 streams vs {base} |");
    println!("|---|---|---|---|---|---|---|---|");
    let ratio = |row: &Row, to: Option<&Row>| {
        to.filter(|b| b.gbps_1 > 0.0 && b.gbps_4 > 0.0).map(|b| format!("{:.2}x / {:.2}x", row.gbps_1 / b.gbps_1, row.gbps_4 / b.gbps_4)).unwrap_or("-".into())
    };
    for row in &rows {
        let added = raw_rtt.filter(|_| row.name != base).map(|raw| format!(" (+{:.3})", row.rtt_ms - raw)).unwrap_or_default();
        println!(
            "| {} | {:.2} | {:.2} | {:.3}{} | {:.2} | {:.1} | {} | {} |",
            row.name, row.gbps_1, row.gbps_4, row.rtt_ms, added, row.cpu_s_per_gib, row.peak_rss_mib, ratio(row, boringtun.as_ref()), ratio(row, base_row.as_ref())
        );
    }
}

/// Rounds of RTT sampling; each round pings every contestant in turn, so that drift in the
/// machine's state (frequency, other load) hits all of them alike. A multiple of 4 and of 5
/// (up to five contestants), so that each takes every place in the order equally often.
const RTT_ROUNDS: usize = 20;
const RTT_PINGS_PER_ROUND: &str = "20";

/// The median echo round trip of each contestant over [`RTT_ROUNDS`] interleaved rounds of
/// pings 10 ms apart (an idle-ish link: every packet wakes the daemons). The order rotates
/// each round: whoever pings first after another contestant measured ~5–10 µs slower than
/// the same binary pinging later (an A/A run), enough to decide a comparison.
fn interleaved_rtts(contestants: &[Contestant]) -> Vec<f64> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); contestants.len()];
    for round in 0..RTT_ROUNDS {
        for offset in 0..contestants.len() {
            let index = (round + offset) % contestants.len();
            let contestant = &contestants[index];
            let ping = contestant.ends().0.exec("ping", &["-c", RTT_PINGS_PER_ROUND, "-i", "0.01", &contestant.server]);
            let text = String::from_utf8_lossy(&ping.stdout);
            samples[index].extend(
                text.lines()
                    .filter_map(|line| line.split("time=").nth(1))
                    .filter_map(|rest| rest.split_whitespace().next())
                    .filter_map(|value| value.parse::<f64>().ok()),
            );
        }
    }
    samples
        .into_iter()
        .map(|mut rtts| {
            rtts.sort_by(f64::total_cmp);
            rtts.get(rtts.len() / 2).copied().unwrap_or(0.0)
        })
        .collect()
}

/// Traffic straight over the LAN, no tunnel: the ceiling.
fn raw_link() -> Contestant {
    let mut lan = Lan::new("192.0.2");
    let (from, _) = lan.host("ra");
    let (to, server) = lan.host("rb");
    Contestant { name: "raw link", topology: Topology::Raw { from, to, _switch: lan }, server, pids: Vec::new() }
}

fn pal(name: &'static str) -> Contestant {
    let net = LanNetwork::form(&["benchA", "benchB"]);
    assert!(net.wait_for_membership(Duration::from_secs(20)), "pal network did not form");
    let (server, _) = net.node("benchB").overlay();
    wait_until(Duration::from_secs(15), || net.node("benchA").pal(&["ping", "benchB", "-c", "1"]).status.success());
    let pids: Vec<u32> = net.nodes.iter().filter_map(|n| n.pid()).collect();
    Contestant { name, topology: Topology::Pal(net), server: server.to_string(), pids }
}

/// A WireGuard implementation (boringtun-cli or wireguard-go) configured with `wg`.
fn wireguard(name: &'static str, program: &str) -> Contestant {
    let mut lan = Lan::new("192.0.2");
    let (a, a_address) = lan.host("wa");
    let (b, b_address) = lan.host("wb");
    let daemons = start_wireguard(name, program, [(&a, &b_address, "198.18.0.2/32"), (&b, &a_address, "198.18.0.1/32")]);
    let pids: Vec<u32> = daemons.iter().map(Child::id).collect();
    Contestant { name, topology: Topology::WireGuard { _daemons: Daemons(daemons), from: a, to: b, _switch: lan }, server: "198.18.0.2".into(), pids }
}

/// Two WireGuard daemons, host `i` at overlay 198.18.0.(i+1) with its peer at the given
/// underlay address and allowed IPs; returns the daemons (the interfaces are up).
fn start_wireguard(name: &str, program: &str, ends: [(&Netns, &str, &str); 2]) -> Vec<Child> {
    let keys: Vec<(String, String)> = (0..2).map(|_| keypair()).collect();
    let mut daemons = Vec::new();
    for (i, (netns, peer_address, peer_allowed)) in ends.into_iter().enumerate() {
        let log = std::env::temp_dir().join(unique("wg-"));
        // The UAPI socket lives in /var/run/wireguard, which namespaces share: names must differ.
        let interface = unique("wgb");
        let args: Vec<&str> = if program.ends_with("boringtun-cli") {
            vec!["--foreground", "--disable-drop-privileges", &interface]
        } else {
            vec!["-f", &interface]
        };
        let mut env_program = vec![program];
        env_program.extend_from_slice(&args);
        daemons.push(netns.spawn("env", &[&["WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1"][..], &env_program[..]].concat(), &log));
        assert!(wait_until(Duration::from_secs(10), || netns.exec("ip", &["link", "show", &interface]).status.success()), "{name} did not create {interface}");
        let key_file = std::env::temp_dir().join(unique("wgkey-"));
        std::fs::write(&key_file, &keys[i].0).expect("key file");
        let (_, peer_public) = &keys[1 - i];
        let overlay = format!("198.18.0.{}/24", i + 1);
        let endpoint = format!("{peer_address}:51820");
        netns.exec("wg", &["set", &interface, "private-key", key_file.to_str().expect("path"), "listen-port", "51820", "peer", peer_public, "endpoint", &endpoint, "allowed-ips", peer_allowed]);
        let _ = std::fs::remove_file(&key_file);
        netns.ip(&["addr", "add", &overlay, "dev", &interface]);
        netns.ip(&["link", "set", &interface, "mtu", "1420", "up"]);
        if i == 0 && peer_allowed.contains("/0") {
            // The client of an exit: the internet LAN through the tunnel.
            netns.ip(&["route", "add", &format!("{INTERNET}.0/24"), "dev", &interface]);
        }
    }
    daemons
}

/// The "internet" LAN of the exit benchmark; the client's LAN is 192.0.2.0/24.
const INTERNET: &str = "203.0.113";

/// The exit benchmark's hosts: a client on one LAN, the exit on it and on the internet LAN,
/// and an internet host there (the iperf3 server). The exit forwards and masquerades.
struct ExitHosts {
    client: Netns,
    client_address: String,
    exit: Netns,
    exit_address: String,
    server: Netns,
    server_address: String,
    switches: (Lan, Lan),
}

fn exit_hosts() -> ExitHosts {
    let mut home = Lan::new("192.0.2");
    let mut internet = Lan::new(INTERNET);
    let (client, client_address) = home.host("xc");
    let (exit, exit_address) = home.host("xe");
    internet.attach(&exit, "eth1");
    let (server, server_address) = internet.host("xs");
    ExitHosts { client, client_address, exit, exit_address, server, server_address, switches: (home, internet) }
}

/// pal as an exit: the client runs `pal exit use`, traffic goes to the internet host through
/// CloudPal. With `direct`, the same network measured to CloudPal's own overlay address
/// instead (the direct tunnel the exit is compared with).
fn pal_exit(name: &'static str, direct: bool) -> Contestant {
    let hosts = exit_hosts();
    let mut client = tests::PalNode::new("benchC", hosts.client, hosts.client_address);
    client.pal_ok(&["init", "--name", "benchC"]);
    client.up();
    let mut exit = tests::PalNode::new("cloudpal", hosts.exit, hosts.exit_address);
    let code = exit.request(&client.network_fingerprint());
    client.pal_ok(&["device", "add", &code, "--role", "cloudpal"]);
    exit.finish_request();
    exit.up_with(&["--cloudpal"]);
    assert!(wait_until(Duration::from_secs(20), || client.pal(&["ping", "cloudpal", "-c", "1"]).status.success()), "the exit network did not form");
    let server = if direct {
        exit.overlay().0
    } else {
        client.pal_ok(&["exit", "use"]);
        hosts.server_address
    };
    let pids: Vec<u32> = [client.pid(), exit.pid()].into_iter().flatten().collect();
    let to = if direct { None } else { Some(hosts.server) };
    Contestant { name, topology: Topology::PalExit { nodes: vec![client, exit], to, _switches: hosts.switches }, server, pids }
}

/// boringtun or wireguard-go as the same kind of exit: the client routes the internet LAN
/// into the tunnel, the exit forwards and masquerades it (nftables).
fn wireguard_exit(name: &'static str, program: &str) -> Contestant {
    let hosts = exit_hosts();
    let daemons = start_wireguard(name, program, [(&hosts.client, &hosts.exit_address, "0.0.0.0/0"), (&hosts.exit, &hosts.client_address, "198.18.0.1/32")]);
    hosts.exit.exec_ok("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
    hosts.exit.exec_ok("nft", &["add table ip bench; add chain ip bench post { type nat hook postrouting priority srcnat; }; add rule ip bench post oifname eth1 masquerade"]);
    let pids: Vec<u32> = daemons.iter().map(Child::id).collect();
    let ExitHosts { client, exit, server, server_address, switches, .. } = hosts;
    Contestant { name, topology: Topology::WireGuardExit { _daemons: Daemons(daemons), from: client, to: server, _exit: exit, _switches: switches }, server: server_address, pids }
}

/// iperf3 from `a` to `server` (an address in `b`); CPU and RSS of `pids`.
fn measure(contestant: &Contestant) -> Row {
    let (a, b) = contestant.ends();
    let Contestant { name, server, pids, .. } = contestant;
    let (name, server) = (*name, server.as_str());
    assert!(wait_until(Duration::from_secs(10), || a.exec("ping", &["-c", "1", "-W", "1", server]).status.success()), "{name}: no path");
    // BENCH_PAUSE=SECONDS holds each topology before measuring, for profiling.
    if let Some(seconds) = std::env::var("BENCH_PAUSE").ok().and_then(|s| s.parse().ok()) {
        eprintln!("{name}: daemons {pids:?}, from namespace {} to {server}; holding {seconds} s", a.name);
        std::thread::sleep(Duration::from_secs(seconds));
    }
    let cpu_before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    // BENCH_RTT_ONLY=1 skips the throughput runs (quick latency comparisons).
    let rtt_only = std::env::var_os("BENCH_RTT_ONLY").is_some();
    let (gbps_1, bytes_1) = if rtt_only { (0.0, 0.0) } else { iperf(a, b, server, "1") };
    let (gbps_4, bytes_4) = if rtt_only { (0.0, 0.0) } else { iperf(a, b, server, "4") };
    let cpu_after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let gib = (bytes_1 + bytes_4) / (1u64 << 30) as f64;
    Row {
        name,
        gbps_1,
        gbps_4,
        rtt_ms: 0.0,
        cpu_s_per_gib: if gib > 0.0 { (cpu_after - cpu_before) / gib } else { 0.0 },
        peak_rss_mib: pids.iter().map(|p| peak_rss_kib(*p)).fold(0.0, f64::max) / 1024.0,
    }
}

/// Gbit/s and bytes received of one iperf3 run.
fn iperf(a: &Netns, b: &Netns, server: &str, streams: &str) -> (f64, f64) {
    let log = std::env::temp_dir().join(unique("iperf-"));
    let mut listener = b.spawn("iperf3", &["-s", "-1", "-B", server], &log);
    std::thread::sleep(Duration::from_millis(300));
    let client = a.exec("iperf3", &["-c", server, "-t", SECONDS, "-P", streams, "-J"]);
    let _ = listener.kill();
    let _ = listener.wait();
    let _ = std::fs::remove_file(log);
    let report: serde_json::Value = serde_json::from_slice(&client.stdout).unwrap_or_default();
    let received = &report["end"]["sum_received"];
    (received["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9, received["bytes"].as_f64().unwrap_or(0.0))
}

fn keypair() -> (String, String) {
    let private = String::from_utf8(run("wg", &["genkey"]).stdout).expect("utf-8").trim().to_owned();
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(private.as_bytes()).expect("write key");
    let public = String::from_utf8(child.wait_with_output().expect("wg pubkey").stdout).expect("utf-8").trim().to_owned();
    (private, public)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()).unwrap_or(0.0);
    ticks / 100.0
}

fn peak_rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn which(program: &str) -> Option<String> {
    let home_cargo = std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(program)).ok();
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| PathBuf::from(dir).join(program))
        .chain(home_cargo)
        .find(|path| path.exists())
        .map(|path| path.to_string_lossy().into_owned())
}
