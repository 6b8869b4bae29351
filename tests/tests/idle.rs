//! Issue #15 item 4: an idle network stays quiet. Three members and CloudPal, formed and then
//! left alone; every frame a device sends is counted for a minute.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;
use tests::{Lan, Mapping, NatRouter, PalNode, pings, wait_until};

/// What one device sent in a capture, by protocol and destination port.
#[derive(Debug, Default)]
struct Sent {
    packets: usize,
    bytes: usize,
    by_kind: BTreeMap<String, (usize, usize)>,
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} packets, {} bytes:", self.packets, self.bytes)?;
        for (kind, (packets, bytes)) in &self.by_kind {
            write!(f, " [{kind}: {packets} pkts {bytes} B]")?;
        }
        Ok(())
    }
}

/// The frames (Ethernet, as an AF_PACKET capture on one interface sees them) whose IP source
/// is `source`.
fn sent_by(frames: &[Vec<u8>], source: IpAddr) -> Sent {
    let mut sent = Sent::default();
    for frame in frames {
        let Some(packet) = frame.get(14..) else { continue };
        let (from, to, protocol, payload) = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => {
                let header = usize::from(packet[0] & 0x0f) * 4;
                let from = IpAddr::from([packet[12], packet[13], packet[14], packet[15]]);
                let to = IpAddr::from([packet[16], packet[17], packet[18], packet[19]]);
                (from, to, packet[9], packet.get(header..).unwrap_or_default())
            }
            Some(6) if packet.len() >= 40 => {
                let from = IpAddr::from(<[u8; 16]>::try_from(&packet[8..24]).expect("16 bytes"));
                let to = IpAddr::from(<[u8; 16]>::try_from(&packet[24..40]).expect("16 bytes"));
                (from, to, packet[6], &packet[40..])
            }
            _ => continue,
        };
        if from != source {
            continue;
        }
        let port = |offset: usize| payload.get(offset..offset + 2).map(|p| u16::from_be_bytes([p[0], p[1]]));
        let kind = match protocol {
            6 => format!("tcp {}→{to}:{}", port(0).unwrap_or(0), port(2).unwrap_or(0)),
            17 => format!("udp {}→{to}:{}", port(0).unwrap_or(0), port(2).unwrap_or(0)),
            other => format!("ip proto {other} → {to}"),
        };
        sent.packets += 1;
        sent.bytes += packet.len();
        let entry = sent.by_kind.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += packet.len();
    }
    sent
}

fn invite(inviter: &PalNode, name: &str) -> String {
    let output = inviter.pal_ok(&["device", "invite", "--name", name]);
    output.lines().last().expect("code on the last line").trim().to_owned()
}

/// How long the network is left alone before counting starts: joins, first syncs and path
/// setup settle, and the control core's busy spell after the last of them ends.
const SETTLE: Duration = Duration::from_secs(45);
/// The window for the per-minute goals.
const MINUTE: Duration = Duration::from_secs(60);

/// How long the whole idle spell lasts: ten minutes (every session and key lapses in it, and
/// each idle-paced job of the control core runs at least once), `IDLE_MINUTES` to shorten it
/// while working on this test.
fn idle_spell() -> Duration {
    let minutes = std::env::var("IDLE_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(10u64);
    Duration::from_secs(60 * minutes.max(1))
}

/// Voluntary context switches of every thread of `pid` so far: how often the process woke.
fn wakeups(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:").map(|v| v.trim().parse::<u64>().unwrap_or(0))))
        .sum()
}

/// The first reply of `pal ping` after the idle spell and the round trip once warm, in ms.
fn first_and_warm_rtt(from: &PalNode, to: &str) -> (f64, f64, String) {
    let output = from.pal_ok(&["ping", to, "-c", "3"]);
    let replies: Vec<(f64, String)> = output
        .lines()
        .filter_map(|line| {
            let time = line.split("time=").nth(1)?.split_whitespace().next()?.parse().ok()?;
            let path = line.split("path=").nth(1)?.split_whitespace().next()?.to_owned();
            Some((time, path))
        })
        .collect();
    assert_eq!(replies.len(), 3, "{} → {to} after the idle spell: {output}", from.name);
    let warm = replies[1..].iter().map(|(t, _)| *t).fold(f64::MAX, f64::min);
    (replies[0].0, warm, replies[0].1.clone())
}

/// Three members and CloudPal, idle: a device behind a NAT (the laptop) sends only the hop
/// keepalives that hold its mapping toward CloudPal open; a device with no NAT (the server)
/// sends nothing at all; and after ten idle minutes the first packet either way is answered at
/// once — to the laptop through the mapping the keepalives held.
#[test]
fn idle_devices_behind_a_nat_and_on_an_open_lan_stay_quiet_and_wake_at_once() {
    let mut internet = Lan::new("203.0.113");
    let mut home = NatRouter::new(&mut internet, "10.1.0", Mapping::EndpointIndependent);
    let laptop = tests::founding_laptop(&mut home);
    let cloudpal = tests::cloudpal_added_by(&laptop, &mut internet);
    // Two more members on the internet itself (no NAT): a server and a desktop.
    let mut open = Vec::new();
    for name in ["server", "desktop"] {
        let (netns, address) = internet.host(&name[..4]);
        let mut node = PalNode::new(name, netns, address);
        let code = invite(&laptop, name);
        let entries = laptop.pal_ok(&["log", "--json"]);
        assert!(wait_until(Duration::from_secs(10), || cloudpal.pal_ok(&["log", "--json"]) == entries), "the invite did not reach CloudPal");
        node.pal_ok(&["join", &code, "--name", name]);
        node.up();
        open.push(node);
    }
    for node in &open {
        assert!(pings(&laptop, &node.name), "laptop ↔ {}: {}", node.name, laptop.log());
        assert!(pings(node, "laptop"), "{} ↔ laptop: {}", node.name, node.log());
    }
    std::thread::sleep(SETTLE);

    let laptop_address: IpAddr = laptop.address.parse().expect("ip");
    let server_address: IpAddr = open[0].address.parse().expect("ip");
    let (laptop_spell, server_spell) = (laptop.netns.capture_on(Some("eth0")), open[0].netns.capture_on(Some("eth0")));
    let (laptop_minute, server_minute) = (laptop.netns.capture_on(Some("eth0")), open[0].netns.capture_on(Some("eth0")));
    let pids = [laptop.pid().expect("laptop up"), open[0].pid().expect("server up")];
    let woken_before = pids.map(wakeups);
    std::thread::sleep(MINUTE);
    let woken = [wakeups(pids[0]) - woken_before[0], wakeups(pids[1]) - woken_before[1]];
    eprintln!("wake-ups in the first idle minute: laptop {:.1}/s, server {:.1}/s", woken[0] as f64 / 60.0, woken[1] as f64 / 60.0);
    let behind_nat = sent_by(&laptop_minute.stop(), laptop_address);
    let no_nat = sent_by(&server_minute.stop(), server_address);
    eprintln!("laptop (behind a NAT), first idle minute: {behind_nat}");
    eprintln!("server (no NAT), first idle minute: {no_nat}");
    assert!(behind_nat.packets <= 3, "a device behind a NAT sent more than 3 packets in a minute: {behind_nat}");
    assert!(no_nat.packets <= 1, "a device with no NAT sent more than 1 packet in a minute: {no_nat}");

    let spell = idle_spell();
    std::thread::sleep(spell.saturating_sub(MINUTE));
    let behind_nat = sent_by(&laptop_spell.stop(), laptop_address);
    let no_nat = sent_by(&server_spell.stop(), server_address);
    let per_hour = |sent: &Sent| sent.bytes as f64 * 3600.0 / spell.as_secs_f64();
    let per_minute = |sent: &Sent| sent.packets as f64 * 60.0 / spell.as_secs_f64();
    eprintln!("laptop (behind a NAT), {spell:?} idle: {behind_nat} — {:.1} packets/min, {:.0} B/h", per_minute(&behind_nat), per_hour(&behind_nat));
    eprintln!("server (no NAT), {spell:?} idle: {no_nat} — {:.1} packets/min, {:.0} B/h", per_minute(&no_nat), per_hour(&no_nat));
    assert!(per_minute(&behind_nat) <= 3.0, "a device behind a NAT averaged more than 3 packets a minute: {behind_nat}");
    assert!(per_hour(&behind_nat) <= 20_000.0, "a device behind a NAT would send more than 20 KB an hour: {behind_nat}");

    // Waking up: the server reaches the laptop behind its NAT (through CloudPal, over the
    // mapping the keepalives held), and the laptop the server; each first reply comes within
    // one warm round trip plus 50 ms, handshakes included.
    for (from, to) in [(&open[0], "laptop"), (&laptop, "server")] {
        let (first, warm, path) = first_and_warm_rtt(from, to);
        eprintln!("{} → {to} after {spell:?} idle: first reply {first:.2} ms ({path}), warm {warm:.2} ms", from.name);
        assert!(first <= warm + 50.0, "{} → {to}: the first reply after idle took {first:.2} ms (warm {warm:.2} ms)", from.name);
    }
}
