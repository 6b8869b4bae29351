//! Whole networks for the end-to-end tests and the demo: devices on one LAN, and the
//! "anywhere" topology behind NAT routers.

use crate::{Lan, Mapping, NatRouter, PalNode, wait_until};
use std::time::Duration;

/// A network of devices on one LAN: the first is the founder, the others joined by invite.
#[derive(Debug)]
pub struct LanNetwork {
    // Field order is drop order: nodes stop before their namespaces and the switch go.
    pub nodes: Vec<PalNode>,
    pub lan: Lan,
}

impl LanNetwork {
    /// `names[0]` runs `pal init` and `pal up`; each other name is invited, joins and comes up.
    pub fn form(names: &[&str]) -> Self {
        Self::form_narrated(names, |_| {})
    }

    /// As [`Self::form`], telling `narrate` each step as it happens (the demo prints them).
    pub fn form_narrated(names: &[&str], narrate: impl Fn(&str)) -> Self {
        let mut lan = Lan::new("198.51.100");
        let mut nodes: Vec<PalNode> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (netns, address) = lan.host(&name[..name.len().min(4)]);
            let mut node = PalNode::new(name, netns, address);
            narrate(&format!("{name}: a host on the LAN at {}", node.address));
            if i == 0 {
                narrate(&format!("{name}$ pal init --name {name}"));
                node.pal_ok(&["init", "--name", name]);
            } else {
                narrate(&format!("{}$ pal device invite --name {name}", names[0]));
                let invite = nodes[0].pal_ok(&["device", "invite", "--name", name]);
                let code = invite.lines().last().expect("code on the last line").trim().to_owned();
                narrate(&format!("{name}$ pal join pal1…{} --name {name}", &code[code.len().saturating_sub(6)..]));
                node.pal_ok(&["join", &code, "--name", name]);
            }
            narrate(&format!("{name}$ pal up"));
            node.up();
            nodes.push(node);
        }
        Self { nodes, lan }
    }

    pub fn node(&self, name: &str) -> &PalNode {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut PalNode {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// A new host on the LAN whose device joins with `code` (not yet up); added to `nodes`.
    pub fn join_with(&mut self, name: &str, code: &str) -> &mut PalNode {
        let (netns, address) = self.lan.host(&name[..name.len().min(4)]);
        let node = PalNode::new(name, netns, address);
        node.pal_ok(&["join", code, "--name", name]);
        self.nodes.push(node);
        self.nodes.last_mut().expect("just pushed")
    }

    /// `inviter` invites `name` with `role`; the invite code.
    pub fn invite(&self, inviter: &str, name: &str, role: &str) -> String {
        let output = self.node(inviter).pal_ok(&["device", "invite", "--name", name, "--role", role]);
        output.lines().last().expect("code on the last line").trim().to_owned()
    }

    /// Waits until every node knows every other as an active member.
    pub fn wait_for_membership(&self, timeout: Duration) -> bool {
        let count = self.nodes.len();
        wait_until(timeout, || {
            self.nodes.iter().all(|n| {
                n.device_list().as_array().is_some_and(|d| d.iter().filter(|x| x["status"] == "active").count() == count)
            })
        })
    }
}

/// The "anywhere" topology of DESIGN.md: an internet switch (203.0.113.0/24) with CloudPal on
/// a public address, a home router (endpoint-independent NAT) with two devices behind it, an
/// office router (endpoint-independent) with one, and a cellular carrier (symmetric NAT) with
/// one. The laptop founds the network behind its NAT; CloudPal, fresh, asks to be added (`pal
/// request`) and the laptop adds it (`pal device add`); the others join with the laptop's
/// invites, through CloudPal where the laptop is out of their reach.
///
/// The car runs with `--no-port-spray`, so that it stays relayed: the tests of the relay need
/// a relayed pair. `tests/birthday.rs` punches through the same symmetric NAT.
#[derive(Debug)]
pub struct NatNetwork {
    // Field order is drop order: nodes first, then routers, then the internet switch.
    pub nodes: Vec<PalNode>,
    pub routers: Vec<NatRouter>,
    pub internet: Lan,
}

impl NatNetwork {
    /// Devices by name and where they sit: "home" (laptop, phone), "office" (desktop),
    /// "cell" (car); CloudPal on the internet.
    pub fn form(narrate: impl Fn(&str)) -> Self {
        let mut internet = Lan::new("203.0.113");
        let mut routers = vec![
            NatRouter::new(&mut internet, "10.1.0", Mapping::EndpointIndependent),
            NatRouter::new(&mut internet, "10.2.0", Mapping::EndpointIndependent),
            NatRouter::new(&mut internet, "10.3.0", Mapping::Symmetric),
        ];
        let (netns, address) = routers[0].host("lapt");
        let mut laptop = PalNode::new("laptop", netns, address);
        narrate(&format!("laptop: behind the home router (endpoint-independent NAT) at {}", laptop.address));
        narrate("laptop$ pal init --name laptop && pal up");
        laptop.pal_ok(&["init", "--name", "laptop"]);
        laptop.up();

        let (netns, address) = internet.host("cpal");
        let mut cloudpal = PalNode::new("cloudpal", netns, address);
        narrate(&format!("cloudpal: a fresh server on the internet at {}", cloudpal.address));
        let network = laptop.network_fingerprint();
        narrate(&format!("laptop$ pal status    -> network {network}"));
        let code = cloudpal.request(&network);
        narrate(&format!("cloudpal$ pal request --name cloudpal --network {network}    -> {}…", &code[..code.len().min(16)]));
        narrate("laptop$ pal device add palr1… --role cloudpal    (the laptop dials CloudPal and hands it the log)");
        laptop.pal_ok(&["device", "add", &code, "--role", "cloudpal"]);
        cloudpal.finish_request();
        narrate("cloudpal$ pal up --cloudpal");
        cloudpal.up_with(&["--cloudpal"]);
        // Invites are admitted by CloudPal for those who cannot reach the laptop: wait until
        // the laptop has found it.
        let linked = wait_until(Duration::from_secs(20), || laptop.pal(&["ping", "cloudpal", "-c", "1"]).status.success());
        assert!(linked, "the laptop never reached CloudPal: {}", laptop.log());

        let placement = [("phone", 0, "home"), ("desktop", 1, "office"), ("car", 2, "cell")];
        let mut nodes = vec![cloudpal, laptop];
        for (name, router, place) in placement {
            let (netns, address) = routers[router].host(&name[..name.len().min(4)]);
            let mut node = PalNode::new(name, netns, address);
            if router == 2 {
                node.up_args.push("--no-port-spray".into());
            }
            let kind = if router == 2 { "symmetric" } else { "endpoint-independent" };
            narrate(&format!("{name}: behind the {place} router ({kind} NAT) at {}", node.address));
            let invite = nodes[1].pal_ok(&["device", "invite", "--name", name]);
            let code = invite.lines().last().expect("code on the last line").trim().to_owned();
            let up = std::iter::once("pal up").chain(node.up_args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
            narrate(&format!("laptop$ pal device invite --name {name}; {name}$ pal join {}… --name {name} && {up}", &code[..code.len().min(12)]));
            // The invite entry must have reached CloudPal before a device out of the
            // laptop's reach asks it.
            let entries = nodes[1].pal_ok(&["log", "--json"]);
            let spread = wait_until(Duration::from_secs(10), || nodes[0].pal_ok(&["log", "--json"]) == entries);
            assert!(spread, "the invite did not reach CloudPal");
            node.pal_ok(&["join", &code, "--name", name]);
            node.up();
            nodes.push(node);
        }
        Self { nodes, routers, internet }
    }

    pub fn node(&self, name: &str) -> &PalNode {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut PalNode {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The path `pal ping` reports from `from` to `to` (one echo), if it got a reply.
    pub fn ping_path(&self, from: &str, to: &str) -> Option<String> {
        let output = self.node(from).pal(&["ping", to, "-c", "1"]);
        let text = String::from_utf8_lossy(&output.stdout);
        output.status.success().then(|| text.split("path=").nth(1)?.split_whitespace().next().map(str::to_owned)).flatten()
    }
}
