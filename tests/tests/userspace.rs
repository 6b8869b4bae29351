//! `pal up --userspace` (#16 item 2), end to end and without root: a device joins and comes up
//! as the unprivileged user `nobody` with no capabilities, no TUN and no change to its host.
//! Programs there reach the laptop through its SOCKS5 and HTTP proxies (by name and by
//! address, CONNECT and plain requests); the internet is refused; the laptop pings it and
//! reaches the port it exposes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tests::exit::{WhoAmI, whoami};
use tests::{LanNetwork, PalNode, pings, poll_until};

const NOBODY: u32 = 65534;
const SERVICE: u16 = 8080;
const BULK: u16 = 8090;
const BULK_BYTES: usize = 8 << 20;

/// An HTTP server on the laptop for bulk transfers: `GET` answers 8 MiB; `POST` reads the
/// whole body and answers how many bytes it got.
fn bulk_server(netns: &tests::Netns) -> std::thread::JoinHandle<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    let name = netns.name.clone();
    let (ready, wait) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        tests::enter_namespace(&name);
        let listener = std::net::TcpListener::bind(("0.0.0.0", BULK)).expect("bind the bulk server");
        let _ = ready.send(());
        for stream in listener.incoming().take(2) {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let (mut first, mut length) = (String::new(), 0usize);
            let _ = reader.read_line(&mut first);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let mut stream = reader.into_inner();
            if first.starts_with("POST") {
                let text = body.len().to_string();
                let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len());
            } else {
                let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {BULK_BYTES}\r\n\r\n");
                let _ = stream.write_all(&vec![0xa5; BULK_BYTES]);
            }
        }
    });
    let _ = wait.recv();
    thread
}

fn curl(node: &PalNode, args: &[&str]) -> Option<String> {
    let mut full = vec!["--silent", "--show-error", "--max-time", "10"];
    full.extend_from_slice(args);
    let output = node.netns.exec("curl", &full);
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node's status");
    status.lines().find(|l| l.starts_with(field)).unwrap_or_default().split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
}

#[test]
fn an_unprivileged_node_reaches_the_network_through_its_proxies_and_is_reached_as_usual() {
    let mut net = LanNetwork::form(&["laptop"]);
    let code = net.invite("laptop", "worker", "member");
    let (netns, address) = net.lan.host("work");
    let mut worker = PalNode::new("worker", netns, address);
    worker.run_as = Some(NOBODY);
    worker.pal_ok(&["join", &code, "--name", "worker"]);
    let started = Instant::now();
    worker.up_with(&["--userspace", "--socks5", "127.0.0.1:1080", "--http-proxy", "127.0.0.1:8118", "--expose", &SERVICE.to_string()]);
    println!("userspace node up in {:.2} s", started.elapsed().as_secs_f64());

    // Not root, no capabilities, no interface, nothing on the host changed.
    let pid = worker.pid().expect("running");
    assert_eq!(status_field(pid, "Uid:"), format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}"));
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd:"), "0000000000000000");
    let links = String::from_utf8_lossy(&worker.netns.exec("ip", &["-o", "link"]).stdout).into_owned();
    assert!(!links.contains("pal0"), "a TUN device appeared: {links}");
    let rules = String::from_utf8_lossy(&worker.netns.exec("nft", &["list", "ruleset"]).stdout).into_owned();
    assert!(!rules.contains("cloudpal"), "nftables changed: {rules}");

    let laptop = net.node("laptop");
    let _server = WhoAmI::start(&laptop.netns, SERVICE);
    let _bulk = bulk_server(&laptop.netns);
    let _local = WhoAmI::start(&worker.netns, SERVICE);
    let ((laptop_v4, _), (worker_v4, _)) = (laptop.overlay(), worker.overlay());

    // SOCKS5, by name (the proxy resolves device names) and by overlay address: the laptop
    // sees the worker's overlay address, so it came through the tunnel.
    let by_name = format!("http://laptop:{SERVICE}/");
    let reached = poll_until(Duration::from_secs(20), Duration::from_millis(200), || curl(&worker, &["--socks5-hostname", "127.0.0.1:1080", &by_name]).is_some());
    assert!(reached, "no answer through the SOCKS5 proxy: {}", worker.log());
    assert_eq!(curl(&worker, &["--socks5-hostname", "127.0.0.1:1080", &by_name]).as_deref(), Some(worker_v4.as_str()));
    let by_address = format!("http://{laptop_v4}:{SERVICE}/");
    assert_eq!(curl(&worker, &["--socks5", "127.0.0.1:1080", &by_address]).as_deref(), Some(worker_v4.as_str()));
    assert_eq!(curl(&worker, &["--socks5-hostname", "127.0.0.1:1080", &format!("http://laptop.pal.internal:{SERVICE}/")]).as_deref(), Some(worker_v4.as_str()));

    // HTTP: a plain request forwarded, and a CONNECT tunnel.
    assert_eq!(curl(&worker, &["--proxy", "http://127.0.0.1:8118", &by_name]).as_deref(), Some(worker_v4.as_str()));
    assert_eq!(curl(&worker, &["--proxytunnel", "--proxy", "http://127.0.0.1:8118", &by_address]).as_deref(), Some(worker_v4.as_str()));

    // Larger transfers, whole both ways: 8 MiB down through SOCKS5, 8 MiB up through the HTTP
    // proxy's tunnel.
    let bulk = format!("http://laptop:{BULK}/");
    let started = Instant::now();
    let down = curl(&worker, &["--socks5-hostname", "127.0.0.1:1080", "--output", "/dev/null", "--write-out", "%{size_download}", &bulk]);
    assert_eq!(down.as_deref(), Some(BULK_BYTES.to_string().as_str()), "the download did not come whole");
    println!("8 MiB down through the userspace stack in {:.2} s", started.elapsed().as_secs_f64());
    let upload = std::env::temp_dir().join(tests::unique("pal-userspace-upload-"));
    std::fs::write(&upload, vec![0x5a; BULK_BYTES]).expect("upload file");
    let started = Instant::now();
    let up = curl(&worker, &["--proxytunnel", "--proxy", "http://127.0.0.1:8118", "--header", "Expect:", "--data-binary", &format!("@{}", upload.display()), &format!("http://{laptop_v4}:{BULK}/")]);
    let _ = std::fs::remove_file(&upload);
    assert_eq!(up.as_deref(), Some(BULK_BYTES.to_string().as_str()), "the upload did not go whole");
    println!("8 MiB up through the userspace stack in {:.2} s", started.elapsed().as_secs_f64());

    // What is not the network's is refused: the internet, and a name no device has.
    assert_eq!(curl(&worker, &["--socks5", "127.0.0.1:1080", "http://198.51.100.77:80/"]), None);
    let refused = worker.netns.exec("curl", &["--silent", "--max-time", "5", "--proxy", "http://127.0.0.1:8118", "--write-out", "%{http_code}", "http://198.51.100.77/"]);
    assert_eq!(String::from_utf8_lossy(&refused.stdout).lines().last(), Some("403"), "{}", String::from_utf8_lossy(&refused.stdout));
    assert_eq!(curl(&worker, &["--socks5-hostname", "127.0.0.1:1080", "http://printer:80/"]), None);

    // The others reach it as usual: ping, and the exposed port (forwarded to its loopback).
    assert!(pings(laptop, "worker"), "the laptop cannot ping the userspace node: {}", worker.log());
    let exposed: SocketAddr = format!("{worker_v4}:{SERVICE}").parse().expect("address");
    let seen = poll_until(Duration::from_secs(10), Duration::from_millis(200), || whoami(&laptop.netns, exposed, Duration::from_secs(2)).is_some());
    assert!(seen, "the exposed port is not reached");
    assert_eq!(whoami(&laptop.netns, exposed, Duration::from_secs(2)).as_deref(), Some("127.0.0.1"));
    let unexposed: SocketAddr = format!("{worker_v4}:9").parse().expect("address");
    assert!(whoami(&laptop.netns, unexposed, Duration::from_secs(2)).is_none());

    // What needs the host is refused with one line.
    let exit = worker.pal(&["exit", "use"]);
    assert!(!exit.status.success() && String::from_utf8_lossy(&exit.stderr).contains("--userspace"), "{}", String::from_utf8_lossy(&exit.stderr));
    worker.down();
    drop(worker);
}
