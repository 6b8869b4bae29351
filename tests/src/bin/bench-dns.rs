//! The resolver benchmark (issue #14): queries per second and p50/p99 latency, cached and
//! uncached, of CloudPal's resolver against dnsmasq on the same machine in the same run. Both
//! listen on CloudPal's overlay address (dnsmasq on port 5353), so every query takes the same
//! path through the tunnel from the same member; both forward to the same upstream (a dnsmasq
//! in the test internet answering every name under bench.example). Queries go one at a time
//! from one socket (latency), `QUERIES` of each kind. Run `BENCH_DNS=1 bash tests/bench.sh`.

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use tests::exit::{Dnsmasq, ExitNetwork};
use tests::{enter_namespace, unique};

const QUERIES: usize = 5000;

fn main() {
    let net = ExitNetwork::form();
    let _upstream = Dnsmasq::start_with(&net.web, &net.web_v4, &["--address=/bench.example/192.0.2.1".to_owned(), "--cache-size=0".to_owned()]);
    net.laptop.pal_ok(&["policy", "set", "--dns-upstream", &format!("udp://{}", net.web_v4)]);
    let (cloudpal_v4, _) = net.cloudpal.overlay();
    let log = std::env::temp_dir().join(unique("dnsmasq-bench-"));
    let args = [
        "--no-daemon".to_owned(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--bind-interfaces".into(),
        format!("--listen-address={cloudpal_v4}"),
        "--port=5353".into(),
        format!("--server={}", net.web_v4),
        "--cache-size=10000".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut dnsmasq = net.cloudpal.netns.spawn("dnsmasq", &args, &log);
    std::thread::sleep(Duration::from_secs(1));
    let pal: SocketAddr = format!("{cloudpal_v4}:53").parse().expect("address");
    let other: SocketAddr = format!("{cloudpal_v4}:5353").parse().expect("address");
    // Warm up the tunnel and both resolvers.
    let laptop = net.laptop.netns.name.clone();
    for server in [pal, other] {
        run(&laptop, server, "warm", 50);
    }
    // From the laptop through the tunnel: what a member sees.
    println!("\n| resolver | from | kind | queries/s | p50 µs | p99 µs | failed |");
    println!("|---|---|---|---|---|---|---|");
    for (from, netns) in [("laptop, through the tunnel", &laptop)] {
        for (label, server) in [("CloudPal (pal)", pal), ("dnsmasq", other)] {
            for kind in ["cached", "uncached"] {
                let (qps, p50, p99, failed) = run(netns, server, kind, QUERIES);
                println!("| {label} | {from} | {kind} | {qps:.0} | {p50:.0} | {p99:.0} | {failed} |");
            }
        }
    }
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    let _ = std::fs::remove_file(log);
}

/// `count` queries one after another from namespace `namespace`; (queries/s, p50 µs, p99 µs, failures).
fn run(namespace: &str, server: SocketAddr, kind: &'static str, count: usize) -> (f64, f64, f64, usize) {
    let name = namespace.to_owned();
    let salt = unique("q");
    std::thread::spawn(move || {
        enter_namespace(&name);
        let socket = UdpSocket::bind("0.0.0.0:0").expect("socket");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        socket.connect(server).expect("connect");
        let mut latencies = Vec::with_capacity(count);
        let mut failed = 0;
        let mut buffer = [0u8; 1500];
        let started = Instant::now();
        for i in 0..count {
            let qname = match kind {
                "uncached" => format!("u{i}-{salt}.bench.example."),
                _ => "cached.bench.example.".to_owned(),
            };
            let mut query = Message::query();
            query.metadata.id = i as u16;
            query.metadata.recursion_desired = true;
            query.add_query(Query::query(Name::from_ascii(&qname).expect("name"), RecordType::A));
            let bytes = query.to_vec().expect("encode");
            let sent = Instant::now();
            socket.send(&bytes).expect("send");
            loop {
                match socket.recv(&mut buffer) {
                    Ok(len) => match Message::from_vec(&buffer[..len]) {
                        Ok(answer) if answer.metadata.id == i as u16 => {
                            if answer.answers.is_empty() {
                                failed += 1;
                            }
                            latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                            break;
                        }
                        _ => continue,
                    },
                    Err(_) => {
                        failed += 1;
                        break;
                    }
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or(0.0);
        (count as f64 / elapsed, at(0.5), at(0.99), failed)
    })
    .join()
    .expect("the query thread")
}
