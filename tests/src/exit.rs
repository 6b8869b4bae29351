//! The personal-VPN topology: a v4-only home behind a NAT router (the laptop, the phone and a
//! printer that runs no pal), CloudPal on a dual-stack "internet" (203.0.113.0/24 and
//! 2001:db8:1::/64), and a whoami web server there that answers every request with the
//! address it saw. Everything lives in namespaces this fixture owns.

use crate::{Lan, Mapping, NatRouter, Netns, PalNode, enter_namespace, wait_until};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The v6 prefix of the test internet.
pub const INTERNET_V6: &str = "2001:db8:1::";

/// A tiny HTTP server in a namespace: `GET /` answers with the peer's address.
#[derive(Debug)]
pub struct WhoAmI {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WhoAmI {
    pub fn start(netns: &Netns, port: u16) -> Self {
        let name = netns.name.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter_namespace(&name);
            let listener = TcpListener::bind(("::", port)).expect("bind the whoami server");
            listener.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut request = [0u8; 1024];
                        let _ = stream.read(&mut request);
                        let ip = match peer.ip() {
                            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6.to_string(), |v4| v4.to_string()),
                            v4 => v4.to_string(),
                        };
                        let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{ip}\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let _ = ready_rx.recv();
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for WhoAmI {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the whoami server at `server` says of a request from `netns` (within `timeout`).
pub fn whoami(netns: &Netns, server: SocketAddr, timeout: Duration) -> Option<String> {
    let name = netns.name.clone();
    std::thread::spawn(move || {
        enter_namespace(&name);
        let mut stream = TcpStream::connect_timeout(&server, timeout).ok()?;
        stream.set_read_timeout(Some(timeout)).ok()?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        reply.split("\r\n\r\n").nth(1).map(|body| body.trim().to_owned())
    })
    .join()
    .ok()
    .flatten()
}

/// The topology; field order is drop order.
#[derive(Debug)]
pub struct ExitNetwork {
    pub laptop: PalNode,
    pub phone: PalNode,
    pub cloudpal: PalNode,
    pub web_server: WhoAmI,
    pub printer_server: WhoAmI,
    pub web: Netns,
    pub printer: Netns,
    /// The web server's addresses (v4, v6) and CloudPal's.
    pub web_v4: String,
    pub web_v6: String,
    pub cloudpal_v6: String,
    pub printer_address: String,
    pub home: NatRouter,
    pub internet: Lan,
}

impl ExitNetwork {
    pub fn form() -> Self {
        let mut internet = Lan::new("203.0.113");
        let mut home = NatRouter::new(&mut internet, "10.1.0", Mapping::EndpointIndependent);
        let (laptop_ns, laptop_address) = home.host("lapt");
        let (phone_ns, phone_address) = home.host("phon");
        let (printer, printer_address) = home.host("prnt");
        let (web, web_v4) = internet.host("web");
        let (cloudpal_ns, cloudpal_address) = internet.host("cpal");
        let web_v6 = add_v6(&web, 100);
        let cloudpal_v6 = add_v6(&cloudpal_ns, 1);
        let web_server = WhoAmI::start(&web, 80);
        let printer_server = WhoAmI::start(&printer, 80);

        // The home's resolver is its router (which runs none): DNS on the exit must come from
        // CloudPal, never from here.
        laptop_ns.own_resolv_conf(&format!("nameserver {}\nsearch home.example\n", home.gateway));
        let mut laptop = PalNode::new("laptop", laptop_ns, laptop_address);
        laptop.pal_ok(&["init", "--name", "laptop"]);
        laptop.up();
        let mut cloudpal = PalNode::new("cloudpal", cloudpal_ns, cloudpal_address);
        let code = cloudpal.request(&laptop.network_fingerprint());
        laptop.pal_ok(&["device", "add", &code, "--role", "cloudpal"]);
        cloudpal.finish_request();
        // Metrics on CloudPal's loopback: the exit's counters are read from them.
        cloudpal.up_with(&["--cloudpal", "--metrics", "127.0.0.1:9464"]);
        let linked = wait_until(Duration::from_secs(20), || laptop.pal(&["ping", "cloudpal", "-c", "1"]).status.success());
        assert!(linked, "the laptop never reached CloudPal: {}", laptop.log());

        let mut phone = PalNode::new("phone", phone_ns, phone_address);
        let invite = laptop.pal_ok(&["device", "invite", "--name", "phone"]);
        let code = invite.lines().last().expect("code on the last line").trim().to_owned();
        phone.pal_ok(&["join", &code, "--name", "phone"]);
        phone.up();
        let linked = wait_until(Duration::from_secs(20), || laptop.pal(&["ping", "phone", "-c", "1"]).status.success());
        assert!(linked, "the laptop never reached the phone: {}", phone.log());
        Self { laptop, phone, cloudpal, web_server, printer_server, web, printer, web_v4, web_v6, cloudpal_v6, printer_address, home, internet }
    }

    pub fn web_v4(&self) -> SocketAddr {
        SocketAddr::new(self.web_v4.parse().expect("v4"), 80)
    }

    pub fn web_v6(&self) -> SocketAddr {
        SocketAddr::new(self.web_v6.parse().expect("v6"), 80)
    }

    pub fn printer(&self) -> SocketAddr {
        SocketAddr::new(self.printer_address.parse().expect("v4"), 80)
    }

    /// What the web server sees of the laptop over v4 and v6 (`None`: unreachable).
    pub fn laptop_seen(&self, timeout: Duration) -> (Option<String>, Option<String>) {
        (whoami(&self.laptop.netns, self.web_v4(), timeout), whoami(&self.laptop.netns, self.web_v6(), timeout))
    }
}

/// Gives an internet host the v6 address `INTERNET_V6` + `host` on its eth0.
fn add_v6(netns: &Netns, host: u16) -> String {
    let address = format!("{INTERNET_V6}{host:x}");
    netns.ip(&["-6", "addr", "add", &format!("{address}/64"), "dev", "eth0", "nodad"]);
    address
}

/// dnsmasq in a namespace of the test internet (or a home router): a few names of its own,
/// every query it gets in its log.
#[derive(Debug)]
pub struct Dnsmasq {
    process: std::process::Child,
    log: std::path::PathBuf,
}

impl Dnsmasq {
    pub fn start(web: &Netns, address: &str, web_v6: &str) -> Self {
        Self::start_with(web, address, &[format!("--host-record=www.example.com,{address},{web_v6}")])
    }

    pub fn start_with(web: &Netns, address: &str, records: &[String]) -> Self {
        let log = std::env::temp_dir().join(crate::unique("dnsmasq-"));
        let output = std::env::temp_dir().join(crate::unique("dnsmasq-out-"));
        let args = [
            "--no-daemon".to_owned(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={address}"),
            "--port=53".into(),
            format!("--host-record=ads.example.com,{address}"),
            "--host-record=cdn.tracker.example.net,203.0.113.77".into(),
            "--cname=innocent.example.com,cdn.tracker.example.net".into(),
            "--log-queries".into(),
            format!("--log-facility={}", log.display()),
        ];
        let args: Vec<&str> = args.iter().chain(records).map(String::as_str).collect();
        let process = web.spawn("dnsmasq", &args, &output);
        assert!(wait_until(Duration::from_secs(5), || log.exists()), "dnsmasq did not start");
        Self { process, log }
    }

    pub fn queries(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

