//! End-to-end fixtures: Linux network namespaces, veth links, a bridge "switch", NAT routers
//! (nftables; endpoint-independent or symmetric mapping), and `pal` nodes running the real
//! binary. Every fixture is RAII — dropping it (also while a test
//! panics) kills its processes and deletes what it created — and every command's exit status
//! is checked. Names are unique per process and fixture, so tests run in parallel.
//!
//! Addresses: LAN hosts get 198.51.100.0/24 and "internet" hosts 203.0.113.0/24 or
//! 192.0.2.0/24 (documentation ranges); home LANs behind NAT routers private /24s. Nothing
//! leaves the namespaces a test creates.

pub mod adversary;
pub mod exit;
mod networks;
pub mod resolved;
pub mod tls;

pub use networks::{LanNetwork, NatNetwork};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: interface names have 15 bytes at most.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command, panicking with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (the tests need root and iproute2)"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    output
}

/// The `pal` binary of this build: `$PAL_BIN` if set, else next to the test executable.
pub fn pal_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PAL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let pal = profile_dir.join("pal");
    assert!(pal.exists(), "{} not built: run cargo build -p cli first, or set PAL_BIN", pal.display());
    pal
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, condition: impl FnMut() -> bool) -> bool {
    poll_until(timeout, Duration::from_millis(100), condition)
}

/// As [`wait_until`], polling every `interval` (measurements want a finer grain).
pub fn poll_until(timeout: Duration, interval: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// A mount namespace programs run in too (a private `/run` with its own systemd-resolved,
    /// [`resolved::SystemdResolved`]); none: `ip netns exec`'s own.
    mounts: Option<PathBuf>,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        let netns = Self { name, mounts: None };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// `ip -n NAME ARGS…`, checked.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a program inside the namespace, returning its output unchecked.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// `program` inside the namespace: `ip netns exec`, or `nsenter` into the namespace and
    /// the mount namespace given with [`Self::run_in_mounts_of`] (both exec the program, so
    /// the child *is* the program).
    fn command(&self, program: &str) -> Command {
        match &self.mounts {
            None => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &self.name, program]);
                command
            }
            Some(mounts) => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--net=/run/netns/{}", self.name)).arg(format!("--mount={}", mounts.display())).arg("--").arg(program);
                command
            }
        }
    }

    /// From now on, programs started here also run in the mount namespace of process `pid`.
    pub fn run_in_mounts_of(&mut self, pid: u32) {
        self.mounts = Some(PathBuf::from(format!("/proc/{pid}/ns/mnt")));
    }

    /// As [`Self::exec`], panicking with stderr if the program fails.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> Output {
        let output = self.exec(program, args);
        assert!(
            output.status.success(),
            "{program} {} in {} failed: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        output
    }

    /// A UDP socket bound to `address` inside this namespace (a socket stays in the namespace
    /// it was created in, whichever thread uses it later).
    pub fn udp_socket(&self, address: &str) -> std::net::UdpSocket {
        let name = self.name.clone();
        let address = address.to_owned();
        std::thread::spawn(move || {
            enter_namespace(&name);
            std::net::UdpSocket::bind(&address).unwrap_or_else(|e| panic!("bind {address} in {name}: {e}"))
        })
        .join()
        .expect("socket thread")
    }

    /// Captures every frame on all interfaces of this namespace (AF_PACKET, like tcpdump -i
    /// any) until the returned capture is stopped.
    pub fn capture(&self) -> Capture {
        self.capture_on(None)
    }

    /// As [`Self::capture`], on one interface only (its frames, both directions).
    pub fn capture_on(&self, interface: Option<&str>) -> Capture {
        let name = self.name.clone();
        let interface = interface.map(|i| std::ffi::CString::new(i).expect("an interface name"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter_namespace(&name);
            let protocol = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
            // SAFETY: plain socket creation, checked below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol) };
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            if let Some(interface) = &interface {
                // SAFETY: a NUL-terminated name; a zeroed sockaddr_ll filled in below.
                let index = unsafe { libc::if_nametoindex(interface.as_ptr()) };
                assert!(index > 0, "no interface {interface:?}");
                let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                address.sll_family = libc::AF_PACKET as u16;
                address.sll_protocol = protocol as u16;
                address.sll_ifindex = index as i32;
                // SAFETY: binding the socket to a sockaddr_ll of the right size.
                let bound = unsafe { libc::bind(fd, (&raw const address).cast(), std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t) };
                assert_eq!(bound, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            }
            let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
            // SAFETY: a valid socket and a timeval of the right size.
            unsafe {
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const timeout).cast(), std::mem::size_of::<libc::timeval>() as libc::socklen_t);
            }
            let _ = ready_tx.send(());
            let mut frames = Vec::new();
            let mut buffer = vec![0u8; 65_536];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: reading into a buffer of the given length.
                let len = unsafe { libc::recv(fd, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
                if let Ok(len) = usize::try_from(len) {
                    frames.push(buffer[..len].to_vec());
                }
            }
            // SAFETY: closing the socket this thread opened.
            unsafe { libc::close(fd) };
            frames
        });
        let _ = ready_rx.recv();
        Capture { stop, thread: Some(thread) }
    }

    /// Gives the namespace its own `/etc/resolv.conf` (`ip netns exec` bind-mounts
    /// `/etc/netns/NAME/resolv.conf` over the host's for every program started in it later);
    /// the host's own file is never touched. Removed with the namespace.
    pub fn own_resolv_conf(&self, text: &str) {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).expect("/etc/netns dir");
        std::fs::write(format!("{dir}/resolv.conf"), text).expect("resolv.conf");
    }

    /// This namespace's resolv.conf as programs in it see it.
    pub fn resolv_conf(&self) -> String {
        std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", self.name)).unwrap_or_default()
    }

    /// Starts a program inside the namespace.
    pub fn spawn(&self, program: &str, args: &[&str], log: &Path) -> Child {
        let file = std::fs::File::create(log).expect("log file");
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} in {}: {e}", self.name))
    }
}

/// Moves the calling thread (only it) into network namespace `name`: sockets it creates
/// stay there whichever thread uses them later.
pub fn enter_namespace(name: &str) {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{name}");
    let namespace = std::fs::File::open(&path).unwrap_or_else(|e| panic!("namespace handle {path}: {e}"));
    // SAFETY: setns affects this thread only; the descriptor is valid for the call.
    let entered = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(entered, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Frames captured in a namespace ([`Netns::capture`]).
#[derive(Debug)]
pub struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    /// Stops capturing; every frame seen.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A LAN: a switch namespace holding a bridge, and hosts attached to it by veth pairs.
#[derive(Debug)]
pub struct Lan {
    switch: Netns,
    prefix: &'static str,
    hosts: u8,
}

impl Lan {
    /// A bridge for the /24 `prefix` (like "198.51.100").
    pub fn new(prefix: &'static str) -> Self {
        let switch = Netns::new("sw");
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        Self { switch, prefix, hosts: 0 }
    }

    /// A new host namespace on this LAN with the next address; returns it and the address.
    pub fn host(&mut self, tag: &str) -> (Netns, String) {
        let host = Netns::new(tag);
        let address = self.attach(&host, "eth0");
        (host, address)
    }

    /// Plugs an existing namespace into this LAN as interface `interface` with the next
    /// address, which it returns.
    pub fn attach(&mut self, host: &Netns, interface: &str) -> String {
        self.hosts += 1;
        let (outside, inside) = (unique("vs"), unique("vh"));
        run("ip", &["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
        run("ip", &["link", "set", &outside, "netns", &self.switch.name]);
        run("ip", &["link", "set", &inside, "netns", &host.name]);
        self.switch.ip(&["link", "set", &outside, "master", "br0"]);
        self.switch.ip(&["link", "set", &outside, "up"]);
        host.ip(&["link", "set", &inside, "name", interface]);
        let address = format!("{}.{}", self.prefix, self.hosts);
        host.ip(&["addr", "add", &format!("{address}/24"), "dev", interface]);
        host.ip(&["link", "set", interface, "up"]);
        address
    }
}

/// How a NAT router maps an inside socket to an outside port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// One outside port per inside socket whatever the destination (Linux's port-preserving
    /// masquerade, a typical home router): simultaneous probing punches through it.
    EndpointIndependent,
    /// A fresh random outside port per destination (`masquerade fully-random`), as carrier-
    /// grade and some corporate NATs do: the port seen by one peer says nothing of the next.
    Symmetric,
}

/// A NAT router: a namespace with a WAN leg on an upstream LAN (the "internet") and a home
/// LAN of its own behind it; nftables masquerades the home LAN, conntrack admits only replies
/// (address- and port-dependent filtering). Hosts behind it route through it by default.
/// Everything lives in namespaces the router owns and goes when it is dropped.
#[derive(Debug)]
pub struct NatRouter {
    // Field order is drop order.
    pub home: Lan,
    pub router: Netns,
    /// The router's address on the upstream LAN: what the internet sees of hosts behind it.
    pub public_address: String,
    /// The router's address on the home LAN (the hosts' gateway).
    pub gateway: String,
}

impl NatRouter {
    /// `home_prefix` is the home LAN's /24 (e.g. "10.1.0").
    pub fn new(upstream: &mut Lan, home_prefix: &'static str, mapping: Mapping) -> Self {
        let router = Netns::new("nat");
        let public_address = upstream.attach(&router, "wan0");
        let mut home = Lan::new(home_prefix);
        let gateway = home.attach(&router, "lan0");
        router.exec_ok("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
        let masquerade = match mapping {
            Mapping::EndpointIndependent => "masquerade",
            Mapping::Symmetric => "masquerade fully-random",
        };
        let rules = format!(
            "table ip nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"wan0\" {masquerade}
    }}
}}
table ip filter {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname \"lan0\" oifname \"wan0\" accept
    }}
    # Unsolicited packets to the router die before conntrack confirms them: a confirmed
    # entry would take the mapping that a later outbound packet needs.
    chain input {{
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname {{ \"lo\", \"lan0\" }} accept
    }}
}}
"
        );
        let file = std::env::temp_dir().join(unique("nft-"));
        std::fs::write(&file, rules).expect("nft rules file");
        router.exec_ok("nft", &["-f", file.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&file);
        Self { home, router, public_address, gateway }
    }

    /// Makes this a hotel's router: out of its LAN, TCP to port 443 only (replies come back as
    /// usual) — no UDP, no other port.
    pub fn only_https_out(&self) {
        for rule in ["meta l4proto != tcp drop", "tcp dport != 443 drop"] {
            let mut words = vec!["insert", "rule", "ip", "filter", "forward", "iifname", "lan0", "oifname", "wan0"];
            words.extend(rule.split(' '));
            self.router.exec_ok("nft", &words);
        }
    }

    /// Undoes [`Self::only_https_out`]: the forward chain of an ordinary NAT router.
    pub fn open_up(&self) {
        self.router.exec_ok("nft", &["flush", "chain", "ip", "filter", "forward"]);
        self.router.exec_ok("nft", &["add", "rule", "ip", "filter", "forward", "ct", "state", "established,related", "accept"]);
        self.router.exec_ok("nft", &["add", "rule", "ip", "filter", "forward", "iifname", "lan0", "oifname", "wan0", "accept"]);
    }

    /// A new host on the home LAN, routing everything through the router.
    pub fn host(&mut self, tag: &str) -> (Netns, String) {
        let (host, address) = self.home.host(tag);
        host.ip(&["route", "add", "default", "via", &self.gateway]);
        (host, address)
    }
}

/// A device: a state directory and, while up, a running `pal up` inside its namespace.
#[derive(Debug)]
pub struct PalNode {
    pub name: String,
    pub netns: Netns,
    pub address: String,
    pub state: PathBuf,
    /// Arguments every `pal up` of this node gets, restarts included.
    pub up_args: Vec<String>,
    /// Runs every `pal` of this node as this user and group id, with no capabilities
    /// (`setpriv`), instead of root.
    pub run_as: Option<u32>,
    process: Option<Child>,
}

impl PalNode {
    pub fn new(name: &str, netns: Netns, address: String) -> Self {
        // Every device's namespace has its own resolv.conf (unless the test gave it one), so a
        // node pointing DNS at CloudPal edits that file and never the host's.
        if netns.resolv_conf().is_empty() {
            netns.own_resolv_conf("# a test namespace: no resolver of its own\nnameserver 127.0.0.1\n");
        }
        let state = std::env::temp_dir().join(unique(&format!("pal-{name}-")));
        Self { name: name.into(), netns, address, state, up_args: Vec::new(), run_as: None, process: None }
    }

    /// The program and leading arguments that run `pal` for this node (as its user).
    fn pal_command(&self) -> (String, Vec<String>) {
        let pal = pal_binary().to_str().expect("utf-8 path").to_owned();
        match self.run_as {
            None => (pal, Vec::new()),
            Some(id) => {
                let id = id.to_string();
                let args = ["--reuid", &id, "--regid", &id, "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--", &pal];
                ("setpriv".to_owned(), args.iter().map(|a| (*a).to_owned()).collect())
            }
        }
    }

    /// Runs `pal --state DIR ARGS…` inside the namespace; returns the output unchecked.
    pub fn pal(&self, args: &[&str]) -> Output {
        let (program, lead) = self.pal_command();
        let mut full: Vec<&str> = lead.iter().map(String::as_str).collect();
        full.extend(["--state", self.state.to_str().expect("utf-8 path")]);
        full.extend_from_slice(args);
        self.netns.exec(&program, &full)
    }

    /// As [`Self::pal`], panicking with stderr on failure; returns stdout.
    pub fn pal_ok(&self, args: &[&str]) -> String {
        let output = self.pal(args);
        assert!(
            output.status.success(),
            "{}: pal {} failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn log_path(&self) -> PathBuf {
        self.state.with_extension("log")
    }

    /// Starts `pal up` and waits until its control socket answers.
    pub fn up(&mut self) {
        self.up_with(&[]);
    }

    /// As [`Self::up`], with extra arguments (`--cloudpal`).
    pub fn up_with(&mut self, extra: &[&str]) {
        assert!(self.process.is_none(), "{} is already up", self.name);
        let (program, lead) = self.pal_command();
        let state = self.state.to_str().expect("utf-8 path").to_owned();
        let mut args: Vec<&str> = lead.iter().map(String::as_str).collect();
        args.extend(["--state", state.as_str(), "up"]);
        args.extend_from_slice(extra);
        args.extend(self.up_args.iter().map(String::as_str));
        let child = self.netns.spawn(&program, &args, &self.log_path());
        self.process = Some(child);
        let ready = poll_until(Duration::from_secs(15), Duration::from_millis(10), || self.pal(&["status", "--json"]).status.success());
        assert!(ready, "{} did not come up: {}", self.name, self.log());
    }

    /// Starts `pal request --name NAME --network FINGERPRINT` (a fresh device asking to be
    /// added to the network of that fingerprint); its request code.
    pub fn request(&mut self, network: &str) -> String {
        assert!(self.process.is_none(), "{} is already running", self.name);
        let pal = pal_binary();
        let state = self.state.to_str().expect("utf-8 path").to_owned();
        let args = ["--state", state.as_str(), "request", "--name", self.name.as_str(), "--network", network];
        self.process = Some(self.netns.spawn(pal.to_str().expect("utf-8 path"), &args, &self.log_path()));
        let mut code = String::new();
        let printed = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
            code = self.log().lines().find(|l| l.starts_with("palr1")).unwrap_or("").to_owned();
            !code.is_empty()
        });
        assert!(printed, "{}: no request code: {}", self.name, self.log());
        code
    }

    /// The network's fingerprint, as `pal status` shows it.
    pub fn network_fingerprint(&self) -> String {
        self.status()["device"]["network"].as_str().expect("a network fingerprint").to_owned()
    }

    /// Waits for `pal request` to end after an admin added the device; panics if it failed.
    pub fn finish_request(&mut self) {
        let mut child = self.process.take().expect("pal request running");
        let ended = wait_until(Duration::from_secs(10), || matches!(child.try_wait(), Ok(Some(_))));
        if !ended {
            let _ = child.kill();
        }
        let status = child.wait().expect("wait");
        assert!(ended && status.success(), "{}: pal request failed: {}", self.name, self.log());
    }

    /// Stops the node (SIGTERM, then SIGKILL after 5 s).
    pub fn down(&mut self) {
        if let Some(mut child) = self.process.take() {
            // ip netns exec execs pal, so the child *is* the node.
            terminate(child.id());
            let exited = wait_until(Duration::from_secs(5), || matches!(child.try_wait(), Ok(Some(_))));
            if !exited {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Kills the node with SIGKILL: no cleanup of any kind (a crash).
    pub fn crash(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running node's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Everything the node wrote: its output and every file of its state directory, as text
    /// (what the privacy checks grep).
    pub fn everything_written(&self) -> String {
        fn files(root: &Path, into: &mut String) {
            for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    files(&path, into);
                } else {
                    into.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()));
                }
            }
        }
        let mut written = self.log();
        files(&self.state, &mut written);
        written
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.pal_ok(&["status", "--json"])).expect("status is JSON")
    }

    pub fn device_list(&self) -> serde_json::Value {
        serde_json::from_str(&self.pal_ok(&["device", "list", "--json"])).expect("device list is JSON")
    }

    /// This device's overlay addresses, from its own status.
    pub fn overlay(&self) -> (String, String) {
        let status = self.status();
        let device = &status["device"];
        (device["overlay_ipv4"].as_str().expect("v4").into(), device["overlay_ipv6"].as_str().expect("v6").into())
    }
}

impl Drop for PalNode {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_file(self.log_path());
    }
}

/// Stops a background `ping` (SIGTERM) and returns its reply lines ("… bytes from …"),
/// deleting its log.
pub fn stop_ping(mut ping: Child, log: &Path) -> Vec<String> {
    terminate(ping.id());
    let _ = ping.wait();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    text.lines().filter(|line| line.contains("bytes from")).map(str::to_owned).collect()
}

/// Sends SIGTERM (a node shuts down as it would under systemd; ping prints its summary).
pub fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// `from` gets an answer from `to` within 20 s (`pal ping`).
pub fn pings(from: &PalNode, to: &str) -> bool {
    wait_until(Duration::from_secs(20), || from.pal(&["ping", to, "-c", "1"]).status.success())
}

/// A laptop behind `router` that founds a network: `pal init`, then `pal up`.
pub fn founding_laptop(router: &mut NatRouter) -> PalNode {
    let (netns, address) = router.host("lapt");
    let mut laptop = PalNode::new("laptop", netns, address);
    laptop.pal_ok(&["init", "--name", "laptop"]);
    laptop.up();
    laptop
}

/// A fresh CloudPal on `internet` that asks `admin`'s network to be added (`pal request`), is
/// added (`pal device add … --role cloudpal`) and comes up with `--cloudpal`, reachable from
/// `admin`.
pub fn cloudpal_added_by(admin: &PalNode, internet: &mut Lan) -> PalNode {
    let (netns, address) = internet.host("cpal");
    let mut cloudpal = PalNode::new("cloudpal", netns, address);
    let code = cloudpal.request(&admin.network_fingerprint());
    admin.pal_ok(&["device", "add", &code, "--role", "cloudpal"]);
    cloudpal.finish_request();
    cloudpal.up_with(&["--cloudpal"]);
    assert!(pings(admin, "cloudpal"), "{} ↔ CloudPal: {}", admin.name, admin.log());
    cloudpal
}

/// `admin` invites `name` (`pal device invite --name NAME` and `extra`); the code, once the
/// invite has reached `cloudpal` (which admits joiners the admin is out of reach of).
pub fn invite_via(admin: &PalNode, cloudpal: &PalNode, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["device", "invite", "--name", name];
    args.extend_from_slice(extra);
    let invite = admin.pal_ok(&args);
    let code = invite.lines().last().expect("code on the last line").trim().to_owned();
    let entries = admin.pal_ok(&["log", "--json"]);
    assert!(wait_until(Duration::from_secs(10), || cloudpal.pal_ok(&["log", "--json"]) == entries), "the invite did not reach CloudPal");
    code
}
