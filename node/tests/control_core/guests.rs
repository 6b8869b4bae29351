//! Guests on the control plane (issue #16 item 1; SECURITY-TESTS GUEST-01, GUEST-02): a
//! friend's device that reaches the shared devices, is dealt with by nobody else, never gets
//! the log, and follows share, unshare and revocation through its view.

use super::sim::{self, Sim};
use membership::testkit::{Member, Network};
use membership::{PortRange, Role, Share};
use node::control::messages::{Request, Response};
use node::dataplane::DataCommand;
use protocol::{GuestRules, StaticPublic};
use std::time::Duration;

const LAPTOP: usize = 0;
const NAS: usize = 1;
const DESK: usize = 2;
const CLOUDPAL: usize = 3;
const FRIEND: usize = 4;

struct Guests {
    sim: Sim,
    net: Network,
    members: Vec<Member>,
    friend: Member,
}

/// The owner's laptop (admin), nas, desk and CloudPal; a friend's guest device that was
/// invited with the nas's port 22 shared, started with CloudPal as its bootstrap (as the
/// invite code gives it), everyone else around CloudPal.
fn guests() -> Guests {
    let (mut net, members) = sim::network(21, &[("laptop", Role::Admin), ("nas", Role::Member), ("desk", Role::Member), ("cloudpal", Role::CloudPal)]);
    let nas = members[NAS].record.signing_key.device_id();
    let friend = net.join_guest("friend", vec![Share { device: nas, ports: vec![PortRange { first: 22, last: 22 }] }]);
    let mut sim = Sim::new();
    for member in &members {
        sim.add(member, &net.log, member.record.role == Role::CloudPal);
    }
    for index in [LAPTOP, NAS, DESK] {
        sim.connect(index, CLOUDPAL);
    }
    let bootstrap = vec![sim.nodes[CLOUDPAL].address()];
    sim.add_guest(&friend, &net.log, bootstrap);
    sim.run_for(Duration::from_secs(12));
    Guests { sim, net, members, friend }
}

fn key(member: &Member) -> StaticPublic {
    member.record.static_key
}

fn rules_for(node: &sim::Node, peer: StaticPublic) -> Option<Option<GuestRules>> {
    node.data.iter().rev().find_map(|c| match c {
        DataCommand::UpsertPeer(p) if p.static_public == peer => Some(p.guest.clone()),
        _ => None,
    })
}

fn upserted(node: &sim::Node, peer: StaticPublic) -> bool {
    rules_for(node, peer).is_some()
}

#[test]
fn guest01_a_guest_peers_with_the_shared_device_and_cloudpal_only_and_each_filters_it() {
    let g = guests();
    let sim = &g.sim;
    let friend = &sim.nodes[FRIEND];
    let peers: Vec<usize> = friend.core.member_peers().keys().filter_map(|p| sim.index_of(p)).collect();
    assert!(peers.contains(&NAS) && peers.contains(&CLOUDPAL), "the guest reached {peers:?}");
    assert!(!peers.contains(&DESK) && !peers.contains(&LAPTOP), "the guest reached {peers:?}");
    assert!(upserted(friend, key(&g.members[NAS])) && upserted(friend, key(&g.members[CLOUDPAL])));
    assert!(!upserted(friend, key(&g.members[DESK])) && !upserted(friend, key(&g.members[LAPTOP])));
    // The nas lets the guest reach port 22 of its own addresses; CloudPal nothing of its own,
    // but relays for it to the nas; the desk and the laptop have no peer for it at all.
    let at_nas = rules_for(&sim.nodes[NAS], key(&g.friend)).flatten().expect("the nas filters the guest");
    assert_eq!(at_nas.shared, Some(vec![(22, 22)]));
    assert!(!at_nas.internet && at_nas.relay_to.is_empty());
    let at_cloudpal = rules_for(&sim.nodes[CLOUDPAL], key(&g.friend)).flatten().expect("CloudPal filters the guest");
    assert_eq!(at_cloudpal.shared, None);
    assert!(!at_cloudpal.internet, "no exit unless the policy names the guest");
    assert_eq!(at_cloudpal.relay_to, [key(&g.members[NAS])].into());
    for member in [DESK, LAPTOP] {
        let node = &sim.nodes[member];
        assert!(!upserted(node, key(&g.friend)), "{} made a peer of the guest", node.name);
        let members = node.data.iter().rev().find_map(|c| match c {
            DataCommand::SetMembers(keys) => Some(keys.clone()),
            _ => None,
        });
        assert!(members.is_some_and(|keys| !keys.contains(&key(&g.friend))), "{} answers the guest's handshakes", node.name);
    }
    // Members still treat each other as before.
    assert!(rules_for(&sim.nodes[NAS], key(&g.members[DESK])).is_some_and(|rules| rules.is_none()));
}

#[test]
fn guest02_a_guest_gets_no_log_no_other_devices_and_no_hello_from_the_rest() {
    let mut g = guests();
    let guest_peer = g.sim.nodes[FRIEND].peer;
    let ip = std::net::Ipv4Addr::new(192, 0, 2, FRIEND as u8 + 1);
    let network = g.net.log.network();
    let binding = node::control::admission::sign_binding(&g.friend.key, &network, &guest_peer);
    // The log: refused, whether asked as a sync or pushed at.
    let summary = membership::SyncMessage::Summary(membership::Summary { network, heads: Vec::new(), sample: Vec::new() }).encode();
    let sync = Request::Sync { binding: Some(binding.clone()), invite: None, summary: summary.into() };
    let refused = super::refusal(&g.sim.ask_as(guest_peer, ip, CLOUDPAL, sync));
    assert_eq!(refused, node::control::guests::NOT_FOR_GUESTS);
    // Where the others are: only what is shared (the nas), never the desk or the laptop.
    let paths = g.sim.ask_as(guest_peer, ip, CLOUDPAL, Request::Paths { candidates: Vec::new(), listen: Vec::new(), nat: None, summary: None, known: None });
    let Response::Paths { peers, .. } = paths else { panic!("{paths:?}") };
    let told: Vec<protocol::DeviceId> = peers.iter().filter_map(|p| p.device.map(|d| protocol::DeviceId::from_bytes(*d))).collect();
    assert_eq!(told, vec![g.members[NAS].record.signing_key.device_id()]);
    // The desk shares nothing with it: its Hello is an outsider's.
    let hello = Request::Hello { binding: binding.clone(), data_port: sim::DATA_PORT, summary: Vec::new().into(), candidates: Vec::new(), relay: false, listen: Vec::new(), nat: None };
    assert_eq!(super::refusal(&g.sim.ask_as(guest_peer, ip, DESK, hello)), node::control::admission::NOT_A_MEMBER);
    // The device list on the guest: itself, the nas and CloudPal (with the admin that added
    // them), never the desk; its view holds none of the desk's bytes.
    let names: Vec<String> = g.sim.nodes[FRIEND].core.device_list().into_iter().map(|d| d.name).collect();
    assert!(names.contains(&"nas".to_owned()) && names.contains(&"cloudpal".to_owned()));
    assert!(!names.contains(&"desk".to_owned()), "{names:?}");
    let view = g.sim.nodes[FRIEND].core.guest_view().expect("a guest").concat();
    assert!(!view.windows(4).any(|w| w == b"desk"));
    // Changing the network is not a guest's to do.
    let time = g.sim.time;
    let error = g.sim.nodes[FRIEND].core.revoke("nas", time).unwrap_err();
    assert!(error.contains("admin"), "{error}");
}

#[test]
fn share_unshare_and_revocation_reach_the_guest_through_its_view() {
    let mut g = guests();
    let (desk, nas) = (key(&g.members[DESK]), key(&g.members[NAS]));
    // Share the desk's port 80: the guest's view grows, and the two become peers.
    let time = g.sim.time;
    let reply = g.sim.nodes[LAPTOP].core.share("friend", &["desk:80".into()], false, time).expect("an admin shares");
    assert_eq!(reply.shares, vec!["desk:80".to_owned(), "nas:22".to_owned()]);
    g.sim.run_for(Duration::from_secs(15));
    let friend = &g.sim.nodes[FRIEND];
    assert!(upserted(friend, desk), "the guest never learnt of the desk");
    assert!(!friend.saved_views.is_empty(), "the new view was not kept on disk");
    assert_eq!(rules_for(&g.sim.nodes[DESK], key(&g.friend)).flatten().and_then(|r| r.shared), Some(vec![(80, 80)]));
    assert!(g.sim.nodes[FRIEND].core.member_peers().keys().any(|p| g.sim.index_of(p) == Some(DESK)), "the guest never reached the desk");
    // Unshare the nas: gone from the guest's data plane, and the nas drops the guest.
    let time = g.sim.time;
    g.sim.nodes[LAPTOP].core.share("friend", &["nas".into()], true, time).expect("an admin unshares");
    g.sim.run_for(Duration::from_secs(15));
    assert!(g.sim.nodes[FRIEND].data.contains(&DataCommand::RemovePeer(nas)), "the guest kept the nas");
    assert!(g.sim.nodes[NAS].data.contains(&DataCommand::RemovePeer(key(&g.friend))), "the nas kept the guest");
    assert!(!g.sim.nodes[FRIEND].core.device_list().iter().any(|d| d.name == "nas"));
    // Revoke the guest: it sees that in its view and stops.
    let time = g.sim.time;
    g.sim.nodes[LAPTOP].core.revoke("friend", time).expect("an admin revokes the guest");
    g.sim.run_for(Duration::from_secs(15));
    assert!(g.sim.nodes[FRIEND].core.revoked(), "the guest never learnt it was revoked");
    assert!(g.sim.nodes[FRIEND].data.contains(&DataCommand::RemoveAll));
    assert!(g.sim.nodes[DESK].data.contains(&DataCommand::RemovePeer(key(&g.friend))));
}

#[test]
fn a_guest_uses_the_exit_only_where_the_policy_names_it() {
    let mut g = guests();
    let friend_v4 = std::net::IpAddr::V4(g.friend.record.overlay_ipv4);
    let exit_for_guest = |g: &Guests| rules_for(&g.sim.nodes[CLOUDPAL], key(&g.friend)).flatten().is_some_and(|r| r.internet);
    let sources = |g: &Guests| g.sim.nodes[CLOUDPAL].exit_served.last().is_some_and(|rules| rules.sources.contains(&friend_v4));
    // "all" means the owner's devices: no exit for the guest, not among the exit's sources.
    assert!(!exit_for_guest(&g) && !sources(&g));
    let change = |names: &[&str]| node::control_api::PolicyChange { exit_devices: Some(names.iter().map(|n| (*n).to_owned()).collect()), ..Default::default() };
    let time = g.sim.time;
    g.sim.nodes[LAPTOP].core.set_policy(&change(&["laptop", "friend"]), time).expect("an admin sets the policy");
    g.sim.run_for(Duration::from_secs(5));
    assert!(exit_for_guest(&g), "CloudPal's data plane still keeps the named guest off the internet");
    assert!(sources(&g), "the exit's rules do not forward the named guest");
    let time = g.sim.time;
    g.sim.nodes[LAPTOP].core.set_policy(&change(&["all"]), time).expect("an admin sets the policy");
    g.sim.run_for(Duration::from_secs(5));
    assert!(!exit_for_guest(&g) && !sources(&g), "\"all\" let the guest use the exit");
}
