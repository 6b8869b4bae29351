//! The control core on virtual time: several cores wired together in one process (no root,
//! no namespaces), each test a behaviour the end-to-end suite also relies on.

mod guests;
mod sim;

use membership::testkit::Network;
use membership::{DeviceStatus, Role};
use node::control::messages::{Request, Response};
use node::control::{Dial, DialWhen, NewDevice, REVOKED};
use node::control_api::ControlLink;
use node::dataplane::DataCommand;
use node::enrol::invite::InviteCode;
use node::statedir::Identity;
use protocol::{DeviceSigningKey, StaticSecret};
use sim::{Sim, network, peer_of};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);

/// A network of `names` (the first is the founder, an admin), one core each, all connected
/// to the first.
fn star(names: &[(&str, Role)]) -> (Sim, Network) {
    let (network, members) = network(7, names);
    let mut sim = Sim::new();
    for member in &members {
        sim.add(member, &network.log, member.record.role == Role::CloudPal);
    }
    for index in 1..members.len() {
        sim.connect(index, 0);
    }
    sim.settle();
    (sim, network)
}

fn key_of(sim: &Sim, index: usize) -> protocol::StaticPublic {
    let id = sim.nodes[index].key.public_key().device_id();
    sim.nodes[0].log().state().devices[&id].record.static_key
}

fn joiner_identity(seed: u8) -> Identity {
    Identity { device: DeviceSigningKey::from_bytes(&[seed; 32]), static_secret: StaticSecret::from_bytes([seed ^ 0x55; 32]), libp2p: [seed; 32] }
}

/// Invites a device on node `admin`; the code a joiner would hold.
fn invite(sim: &mut Sim, admin: usize, ttl: Duration) -> InviteCode {
    let time = sim.time;
    let made = sim.nodes[admin].core.invite("tablet", Role::Member, &[], ttl, time).expect("an admin invites");
    sim.settle();
    InviteCode { network: sim.nodes[admin].core.network(), invite: made.invite, secret: made.secret, bootstrap: made.bootstrap }
}

/// A joiner's enrolment with an invite proof for `code`, as `peer`.
fn invite_sync(sim: &Sim, code: &InviteCode, peer: &libp2p::PeerId, secret: &DeviceSigningKey) -> Request {
    let proof = node::control::admission::sign_invite_proof(secret, &code.invite, &code.network, peer);
    let _ = sim;
    let device = DeviceSigningKey::from_bytes(&[0x70; 32]);
    Request::Enrol {
        proof,
        name: "tablet".into(),
        signing_key: (*device.public_key().as_bytes()).into(),
        static_key: (*StaticSecret::from_bytes([0x71; 32]).public_key().as_bytes()).into(),
    }
}

fn refusal(response: &Response) -> String {
    match response {
        Response::Refused { reason } => reason.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Joins through node `to` as the joiner does: enrols with the invite, signs the join on the
/// template, hands it over; the answer to the join.
fn join_through(sim: &mut Sim, to: usize, code: &InviteCode, joiner: &Identity, name: &str) -> Response {
    let peer = node::p2p::peer_id(&joiner.libp2p).expect("peer");
    let proof = node::control::admission::sign_invite_proof(&code.secret, &code.invite, &code.network, &peer);
    let enrol = Request::Enrol {
        proof,
        name: name.into(),
        signing_key: (*joiner.device.public_key().as_bytes()).into(),
        static_key: (*joiner.static_secret.public_key().as_bytes()).into(),
    };
    let response = sim.ask_as(peer, Ipv4Addr::new(198, 51, 100, 9), to, enrol);
    let Response::Template { parents, role, overlay_ipv4, overlay_ipv6 } = response else { panic!("expected a template, got {response:?}") };
    let template = node::enrol::join::Template {
        parents: parents.into_iter().map(|p| membership::EntryHash(*p)).collect(),
        role: role.parse().expect("role"),
        overlay_ipv4: (*overlay_ipv4).into(),
        overlay_ipv6: (*overlay_ipv6).into(),
    };
    let entry = node::enrol::join::make_join(&template, joiner, code, name, sim.time.unix_secs()).expect("a join");
    sim.ask_as(peer, Ipv4Addr::new(198, 51, 100, 9), to, Request::Join { entry: entry.encoded().to_vec().into() })
}

#[test]
fn members_greet_each_other_and_their_data_planes_learn_where_they_are() {
    let (sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let (laptop, phone) = (&sim.nodes[0], &sim.nodes[1]);
    assert_eq!(laptop.core.member_peers().get(&phone.peer), Some(&phone.key.public_key().device_id()));
    assert_eq!(phone.core.member_peers().get(&laptop.peer), Some(&laptop.key.public_key().device_id()));
    assert!(laptop.member_peers.contains(&phone.peer), "the relay's gate learns the proven member");
    let phone_key = key_of(&sim, 1);
    let expected = std::net::SocketAddr::new(phone.ip, sim::DATA_PORT);
    assert!(laptop.data.contains(&DataCommand::SetEndpoint(phone_key, expected)), "{:?}", laptop.data);
    assert!(laptop.data.iter().any(|c| matches!(c, DataCommand::UpsertPeer(p) if p.static_public == phone_key)));
    assert!(laptop.data.iter().any(|c| matches!(c, DataCommand::SetMembers(keys) if keys.contains(&phone_key))));
}

#[test]
fn an_outsider_is_refused_and_never_reaches_the_dht() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let (other, other_members) = network(99, &[("stranger", Role::Admin)]);
    let outsider = peer_of(200);
    let binding = node::control::admission::sign_binding(&other_members[0].key, &other.log.network(), &outsider);
    let hello = Request::Hello { binding, data_port: 1, summary: vec![].into(), candidates: vec![], relay: false, listen: vec!["/ip4/203.0.113.5/tcp/41641".into()], nat: None };
    let response = sim.ask_as(outsider, Ipv4Addr::new(203, 0, 113, 5), 0, hello);
    assert_eq!(refusal(&response), "not a member of this network");
    assert!(!sim.nodes[0].core.member_peers().contains_key(&outsider));
    assert!(sim.nodes[0].kad_addresses.iter().all(|(peer, _)| *peer != outsider), "an outsider's addresses stay out of Kademlia");
    let sync = Request::Sync { binding: None, invite: None, summary: vec![].into() };
    assert_eq!(refusal(&sim.ask_as(outsider, Ipv4Addr::new(203, 0, 113, 5), 0, sync)), "not a member of this network");
}

#[test]
fn listen_addresses_travel_in_the_hello_and_only_a_members_reach_the_dht() {
    let (network, members) = network(3, &[("laptop", Role::Admin), ("phone", Role::Member)]);
    let mut sim = Sim::new();
    sim.add(&members[0], &network.log, false);
    sim.add(&members[1], &network.log, false);
    let phone = sim.nodes[1].peer;
    sim.nodes[1].core.handle_new_listen_addr("/ip4/127.0.0.1/tcp/41641".parse().expect("addr"));
    sim.connect(1, 0);
    sim.settle();
    let phone_address = sim.nodes[1].address();
    assert_eq!(sim.nodes[0].kad_addresses, vec![(phone, phone_address.clone())], "only the dialable address, only after the Hello verified");
    let laptop = sim.nodes[0].peer;
    assert_eq!(sim.nodes[1].kad_addresses, vec![(laptop, sim.nodes[0].address())], "and the answer carries the laptop's");
    let id = sim.nodes[1].key.public_key().device_id();
    assert!(sim.nodes[0].core.reach(&id).expect("reach").multiaddrs.contains(&phone_address));
}

#[test]
fn a_joiner_is_admitted_by_any_member_holding_the_invite() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("cloudpal", Role::CloudPal)]);
    let code = invite(&mut sim, 0, Duration::from_secs(3600));
    // The push carried the invite entry to CloudPal; the laptop may now be off.
    assert!(sim.nodes[1].log().contains(&code.invite));
    sim.disconnect(1, 0);
    let joiner = joiner_identity(40);
    assert_eq!(join_through(&mut sim, 1, &code, &joiner, "tablet"), Response::Accepted);
    let id = joiner.device.public_key().device_id();
    assert_eq!(sim.nodes[1].log().state().devices[&id].status, DeviceStatus::Active);
    sim.connect(1, 0);
    sim.settle();
    assert!(sim.nodes[0].log().state().devices.contains_key(&id), "the laptop learns of the join when it is back");
}

#[test]
fn a_member_that_has_not_heard_of_a_fresh_invite_pulls_the_log_and_admits_the_joiners_retry() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("cloudpal", Role::CloudPal)]);
    // The laptop's push of the invite entry is late to CloudPal (still in flight, say).
    sim.drop_requests(0, 1, |r| matches!(r, Request::Announce { .. }));
    let code = invite(&mut sim, 0, Duration::from_secs(3600));
    assert!(!sim.nodes[1].log().contains(&code.invite), "the push got through after all");
    let joiner = joiner_identity(41);
    let peer = node::p2p::peer_id(&joiner.libp2p).expect("peer");
    let first = sim.ask_as(peer, Ipv4Addr::new(198, 51, 100, 9), 1, invite_sync(&sim, &code, &peer, &code.secret));
    assert_eq!(refusal(&first), "this invite code is not valid for this network");
    // The refusal made CloudPal ask the laptop for what it lacks: the invite is there for the
    // joiner's retry (pal join asks again after 250 ms).
    assert!(sim.nodes[1].log().contains(&code.invite), "CloudPal did not pull the log on an unknown invite");
    assert_eq!(join_through(&mut sim, 1, &code, &joiner, "tablet"), Response::Accepted);
}

#[test]
fn a_wrong_invite_secret_is_refused() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let code = invite(&mut sim, 0, Duration::from_secs(3600));
    let guesser = peer_of(201);
    let wrong = DeviceSigningKey::from_bytes(&[0x5e; 32]);
    let response = sim.ask_as(guesser, Ipv4Addr::new(198, 51, 100, 20), 1, invite_sync(&sim, &code, &guesser, &wrong));
    assert_eq!(refusal(&response), "this invite code is not valid for this network");
}

#[test]
fn a_spent_invite_is_refused_even_at_another_member() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let code = invite(&mut sim, 0, Duration::from_secs(3600));
    assert_eq!(join_through(&mut sim, 0, &code, &joiner_identity(41), "tablet"), Response::Accepted);
    sim.settle();
    let second = peer_of(202);
    let response = sim.ask_as(second, Ipv4Addr::new(198, 51, 100, 21), 1, invite_sync(&sim, &code, &second, &code.secret));
    assert_eq!(refusal(&response), "this invite code has already been used");
}

#[test]
fn an_expired_invite_is_refused() {
    let (mut sim, _) = star(&[("laptop", Role::Admin)]);
    let code = invite(&mut sim, 0, Duration::from_secs(60));
    sim.run_for(Duration::from_secs(61));
    let late = peer_of(203);
    let response = sim.ask_as(late, Ipv4Addr::new(198, 51, 100, 22), 0, invite_sync(&sim, &code, &late, &code.secret));
    assert_eq!(refusal(&response), "this invite code has expired; ask for a new one");
}

#[test]
fn inv03_invite_guessing_is_slowed_per_source_not_for_others() {
    let (mut sim, _) = star(&[("laptop", Role::Admin)]);
    let code = invite(&mut sim, 0, Duration::from_secs(3600));
    let wrong = DeviceSigningKey::from_bytes(&[0x5f; 32]);
    let guesser = peer_of(204);
    let reasons: Vec<String> =
        (0..11).map(|_| refusal(&sim.ask_as(guesser, Ipv4Addr::new(198, 51, 100, 30), 0, invite_sync(&sim, &code, &guesser, &wrong)))).collect();
    assert!(reasons[..10].iter().all(|r| r == "this invite code is not valid for this network"), "{reasons:?}");
    assert!(reasons[10].starts_with("too many invite attempts"), "{reasons:?}");
    // The same address with another invite (a joiner behind the same carrier NAT) is not
    // locked out either.
    let other = invite(&mut sim, 0, Duration::from_secs(3600));
    let neighbour = peer_of(206);
    assert!(matches!(sim.ask_as(neighbour, Ipv4Addr::new(198, 51, 100, 30), 0, invite_sync(&sim, &other, &neighbour, &other.secret)), Response::Template { .. }));
    // Another address is not locked out, and the guesser gets one try per 6 s again.
    let honest = peer_of(205);
    assert!(matches!(sim.ask_as(honest, Ipv4Addr::new(198, 51, 100, 31), 0, invite_sync(&sim, &code, &honest, &code.secret)), Response::Template { .. }));
    sim.run_for(Duration::from_secs(6));
    assert_eq!(refusal(&sim.ask_as(guesser, Ipv4Addr::new(198, 51, 100, 30), 0, invite_sync(&sim, &code, &guesser, &wrong))), "this invite code is not valid for this network");
}

#[test]
fn both_sides_of_a_partition_append_and_converge_when_it_heals() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("desktop", Role::Admin), ("phone", Role::Member)]);
    sim.connect(2, 1);
    sim.settle();
    sim.partition(&[0], &[1, 2]);
    let time = sim.time;
    sim.nodes[0].core.invite("a", Role::Member, &[], Duration::from_secs(600), time).expect("invite a");
    sim.nodes[1].core.invite("b", Role::Member, &[], Duration::from_secs(600), time).expect("invite b");
    sim.run_for(10 * SECOND);
    assert_eq!(sim.distinct_heads().len(), 2, "each side holds only its own entry");
    sim.heal();
    sim.run_for(10 * SECOND);
    assert_eq!(sim.distinct_heads().len(), 1, "one log after healing");
    let states: Vec<Vec<u8>> = sim.nodes.iter().map(|n| n.log().state().encode()).collect();
    assert!(states.windows(2).all(|w| w[0] == w[1]), "byte-identical state");
    assert_eq!(sim.nodes[2].log().state().invites.len(), 2, "no entry lost");
}

#[test]
fn anti_entropy_heals_a_lost_push_within_one_interval() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    sim.drop_requests(0, 1, |request| matches!(request, Request::Announce { .. }));
    let code = invite(&mut sim, 0, Duration::from_secs(600));
    sim.stop_dropping();
    assert!(!sim.nodes[1].log().contains(&code.invite), "the push was lost");
    let before = sim.elapsed();
    sim.run_for(6 * SECOND);
    assert!(sim.nodes[1].log().contains(&code.invite), "anti-entropy delivered it");
    let announced = sim.nodes[0].sent.iter().filter(|(at, _, r)| matches!(r, Request::Announce { .. }) && *at - sim.start > before).count();
    assert!(announced >= 1);
}

#[test]
fn a_revocation_reaches_every_core_and_leaves_every_data_plane_at_once() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member), ("desktop", Role::Member), ("car", Role::Member)]);
    let car = key_of(&sim, 3);
    for index in 0..4 {
        sim.nodes[index].take_data();
    }
    let time = sim.time;
    sim.nodes[0].core.revoke("car", time).expect("revoke");
    sim.settle();
    for index in 0..3 {
        assert!(sim.nodes[index].take_data().contains(&DataCommand::RemovePeer(car)), "{} still has the car", sim.nodes[index].name);
        assert!(!sim.nodes[index].core.member_peers().values().any(|d| *d == sim.nodes[3].key.public_key().device_id()));
    }
    assert!(sim.nodes[3].core.revoked(), "the car heard of its own revocation");
    assert!(sim.nodes[3].take_data().contains(&DataCommand::RemoveAll), "the car's tunnel stops");
    assert_eq!(sim.nodes[3].core.ping_target("laptop"), Err(REVOKED.to_owned()));
}

#[test]
fn a_revoked_core_is_served_the_log_up_to_its_revocation_and_nothing_newer() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member), ("car", Role::Member)]);
    sim.partition(&[2], &[0, 1]);
    let time = sim.time;
    sim.nodes[0].core.revoke("car", time).expect("revoke");
    let later = invite(&mut sim, 0, Duration::from_secs(600));
    sim.heal();
    sim.connect(2, 1);
    sim.settle();
    let car = &sim.nodes[2];
    assert!(car.core.revoked(), "told on reconnect, it pulled the log up to its revocation");
    assert!(!car.log().contains(&later.invite), "nothing after the revocation reaches a revoked device");
    // Its Hello is answered with Revoked, not a member's answer.
    let phone = &sim.nodes[1];
    let hello_answers: Vec<_> = car.sent.iter().filter(|(_, p, r)| *p == phone.peer && matches!(r, Request::Sync { .. })).collect();
    assert_eq!(hello_answers.len(), 1, "the revocation is checked once per member that says so");
}

#[test]
fn a_revoked_device_gets_revoked_for_a_hello_and_nothing_else() {
    let (mut sim, network) = star(&[("laptop", Role::Admin), ("car", Role::Member)]);
    let time = sim.time;
    sim.nodes[0].core.revoke("car", time).expect("revoke");
    sim.settle();
    let car_key = &sim.nodes[1].key.clone();
    let imposter = peer_of(230);
    let binding = node::control::admission::sign_binding(car_key, &network.log.network(), &imposter);
    let hello = Request::Hello { binding: binding.clone(), data_port: 1, summary: vec![].into(), candidates: vec![], relay: false, listen: vec![], nat: None };
    assert_eq!(sim.ask_as(imposter, Ipv4Addr::new(198, 51, 100, 40), 0, hello), Response::Revoked);
    let paths = Request::Paths { candidates: vec!["192.0.2.99:41641".into()], listen: vec![], nat: None, summary: None, known: None };
    assert_eq!(refusal(&sim.ask_as(imposter, Ipv4Addr::new(198, 51, 100, 40), 0, paths)), "not a member of this network");
}

#[test]
fn a_device_that_loses_its_address_drops_the_dead_connections_and_reconnects_from_the_new_one() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member), ("car", Role::Member)]);
    let before: Vec<_> = [1, 2].iter().map(|n| sim.connections[&(0, *n)]).collect();
    // The laptop moves from WiFi to the cell network: the interface's address changes. The
    // peers' answers on the old connections would go to an address it no longer has.
    let old = sim.nodes[0].address();
    sim.nodes[0].ip = std::net::IpAddr::V4(Ipv4Addr::new(198, 51, 100, 77));
    let new = sim.nodes[0].address();
    let moved = sim.time.now;
    sim.nodes[0].core.handle_new_listen_addr(new);
    sim.nodes[0].core.handle_expired_listen_addr(old);
    sim.run_for(Duration::from_millis(1_500));
    for (n, was) in [1, 2].iter().zip(&before) {
        let now = sim.connections.get(&(0, *n)).copied();
        assert!(now.is_some_and(|id| id != *was), "{}: the old connection is closed and a new one made: {was:?} → {now:?}", sim.nodes[*n].name);
    }
    let redials: Vec<Duration> = sim.nodes[0].dials.iter().filter(|(at, _)| *at >= moved).map(|(at, _)| *at - moved).collect();
    assert!(redials.iter().all(|at| *at < Duration::from_millis(1_500)), "{redials:?}");
    // A change made on the laptop after the move reaches both at once.
    let time = sim.time;
    sim.nodes[0].core.invite("tablet", Role::Member, &[], Duration::from_secs(600), time).expect("invite");
    sim.settle();
    assert_eq!(sim.distinct_heads().len(), 1, "one view of the log after the move");
}

#[test]
fn cloudpal_shares_the_relay_at_the_policy_rate_and_members_never_relay() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("cloudpal", Role::CloudPal), ("phone", Role::Member)]);
    let rates = |commands: &[DataCommand]| commands.iter().filter_map(|c| if let DataCommand::SetRelayRate(rate) = c { Some(*rate) } else { None }).collect::<Vec<_>>();
    // From the start, CloudPal's data plane has the default: 1 Gbit/s in all.
    assert_eq!(rates(&sim.nodes[1].take_data()), [Some(125_000_000)]);
    assert!(rates(&sim.nodes[0].take_data()).is_empty() && rates(&sim.nodes[2].take_data()).is_empty(), "a member was given a relay rate");
    let time = sim.time;
    let set = |rate: &str| node::control_api::PolicyChange { relay_rate: Some(rate.into()), ..Default::default() };
    for bad in ["0", "fast", "1000001"] {
        let refused = sim.nodes[0].core.set_policy(&set(bad), time).expect_err(bad);
        assert!(refused.contains("Mbit/s") && !refused.contains('\n'), "{refused}");
    }
    let shown = sim.nodes[0].core.set_policy(&set("2500"), time).expect("an admin sets the rate");
    assert_eq!((shown.relay_mbit, shown.relay_default), (Some(2_500), false));
    sim.settle();
    assert_eq!(sim.elapsed(), Duration::ZERO, "no timer stood between the entry and the relay");
    assert_eq!(rates(&sim.nodes[1].take_data()), [Some(2_500 * 125_000)]);
    sim.nodes[0].core.set_policy(&set("unlimited"), time).expect("no cap");
    sim.settle();
    assert_eq!(rates(&sim.nodes[1].take_data()), [None]);
    // Another change to the policy leaves the rate alone: nothing resent.
    let other = node::control_api::PolicyChange { logging: Some(true), ..Default::default() };
    sim.nodes[0].core.set_policy(&other, time).expect("logging");
    sim.settle();
    assert!(rates(&sim.nodes[1].take_data()).is_empty());
    assert!(rates(&sim.nodes[2].take_data()).is_empty());
}

#[test]
fn a_lost_member_is_redialled_every_second_at_first_then_with_doubling_waits() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    sim.auto_dial = false;
    // The phone goes: redials every second (a restart is over in a moment), then each wait
    // twice the one before, up to five minutes (a member offline for long costs next to
    // nothing), each doubled wait shortened by up to half at random (so members cut off
    // together do not redial together for ever).
    sim.disconnect(1, 0);
    let phone = sim.nodes[1].peer;
    sim.nodes[0].dials.clear();
    sim.run_for(Duration::from_secs(30 * 60));
    let redials: Vec<u64> = sim.nodes[0].dials.iter().filter(|(_, d)| d.peer == Some(phone)).map(|(at, _)| (*at - sim.start).as_secs()).collect();
    let waits: Vec<u64> = redials.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(waits[..6], [1, 1, 1, 1, 1, 1], "{redials:?}");
    let doubled = [2u64, 4, 8, 16, 32, 64, 128, 256].into_iter().chain(std::iter::repeat(300));
    for (wait, full) in waits[6..].iter().zip(doubled) {
        assert!(*wait <= full && *wait + 1 >= full / 2, "a wait of {wait} s where the full one is {full} s: {waits:?}");
    }
    assert!(waits[6..].windows(2).any(|w| w[0] * 2 != w[1]), "no jitter: {waits:?}");
    // Back on a new network (a new address of ours): the absent are tried again at once.
    sim.nodes[0].dials.clear();
    let moved = sim.time.now;
    sim.nodes[0].core.handle_new_listen_addr("/ip4/192.0.2.77/tcp/41641".parse().expect("addr"));
    sim.run_for(Duration::from_millis(4_500));
    let again: Vec<Duration> = sim.nodes[0].dials.iter().filter(|(_, d)| d.peer == Some(phone)).map(|(at, _)| *at - moved).collect();
    assert!(again.first().is_some_and(|first| *first < Duration::from_millis(100)), "{again:?}");
    assert_eq!(again.len(), 5, "the quick redials start over: {again:?}");
    // A device just added from a request code has never been met: every second.
    let time = sim.time;
    let fresh = NewDevice {
        name: "cloudpal".into(),
        signing_key: DeviceSigningKey::from_bytes(&[0x21; 32]).public_key(),
        static_key: StaticSecret::from_bytes([0x22; 32]).public_key(),
        peer: peer_of(240),
        addresses: vec!["/ip4/203.0.113.10/tcp/41641".parse().expect("addr")],
    };
    sim.nodes[0].core.add_device(fresh, Role::CloudPal, 1, time).expect("add");
    sim.nodes[0].dials.clear();
    sim.run_for(Duration::from_millis(4_500));
    let fresh: Vec<&Dial> = sim.nodes[0].dials.iter().map(|(_, d)| d).filter(|d| d.peer == Some(peer_of(240))).collect();
    assert_eq!(fresh.iter().filter(|d| d.when == DialWhen::Always).count(), 1, "the delivery's own dial");
    assert_eq!(fresh.iter().filter(|d| d.when == DialWhen::Idle).count(), 5, "then at once and every second: {fresh:?}");
}

#[test]
fn presence_and_lookups_of_absent_members_run_at_the_busy_pace_then_the_idle_one() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member), ("car", Role::Member)]);
    sim.auto_dial = false;
    sim.disconnect(2, 0);
    let gone = sim.time.now;
    sim.nodes[0].kad_puts.clear();
    sim.nodes[0].kad_gets.clear();
    sim.run_for(Duration::from_secs(60 * 60));
    let busy_until = gone + node::control::timers::BUSY_FOR;
    // While the network settles (the car just went), lookups of the absent car every 5 s; then
    // every 5 minutes. The presence record is republished every 20 minutes once idle.
    let car_id = sim.nodes[2].key.public_key().device_id();
    let secret = sim.nodes[0].log().state().secret.clone();
    let gets = &sim.nodes[0].kad_gets;
    let car_keys: Vec<Vec<u8>> = gets.iter().map(|(at, _)| node::control::presence::key(&secret, sim.time.unix_secs() - (sim.time.now - *at).as_secs(), &car_id).to_vec()).collect();
    assert!(gets.iter().zip(&car_keys).all(|((_, key), car)| key == car), "only the absent car is looked up");
    let busy_gets: Vec<_> = gets.iter().filter(|(at, _)| *at < busy_until).map(|(at, _)| *at).collect();
    assert!(busy_gets.len() >= 5, "{} lookups in the busy spell", busy_gets.len());
    assert!(busy_gets.windows(2).all(|w| w[1] - w[0] == Duration::from_secs(5)));
    let idle_gets: Vec<_> = gets.iter().filter(|(at, _)| *at > busy_until).map(|(at, _)| *at).collect();
    assert!(idle_gets.windows(2).all(|w| w[1] - w[0] == Duration::from_secs(300)), "{idle_gets:?}");
    assert!((10..=12).contains(&idle_gets.len()), "{} lookups in the idle hour", idle_gets.len());
    let idle_puts: Vec<_> = sim.nodes[0].kad_puts.iter().filter(|at| **at > busy_until).copied().collect();
    assert!(idle_puts.windows(2).all(|w| w[1] - w[0] == Duration::from_secs(20 * 60)), "{idle_puts:?}");
    assert!((2..=3).contains(&idle_puts.len()), "{} publications in the idle hour", idle_puts.len());
}

/// Issue #15, quiet when idle: once a network has settled, an hour passes with no more than a
/// few rounds of anti-entropy and path exchange — and a change to the log still reaches every
/// member at once (pushed, not waiting for a round).
#[test]
fn an_idle_network_talks_only_at_the_idle_pace_and_news_still_spreads_at_once() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member), ("desktop", Role::Member)]);
    sim.run_for(Duration::from_secs(60));
    for node in &mut sim.nodes {
        node.sent.clear();
    }
    sim.run_for(Duration::from_secs(60 * 60));
    for node in &sim.nodes {
        // Two connected peers each: at most a path exchange and an announcement to each.
        assert!(node.sent.len() <= 2 * 2 * 2, "{} requests in an idle hour: {:?}", node.sent.len(), node.sent.iter().map(|(_, _, r)| r).collect::<Vec<_>>());
    }
    let time = sim.time;
    sim.nodes[0].core.revoke("desktop", time).expect("revoke");
    sim.settle();
    assert_eq!(sim.nodes[1].log().state().devices.get(&sim.nodes[2].key.public_key().device_id()).map(|d| d.status), Some(DeviceStatus::Revoked), "the revocation waited for a round");
}

/// Issue #17, idle at 1,000 devices: the idle round is one path exchange per connection,
/// asked by the side with the lower peer id, carrying both sides' heads — so a change whose
/// push was lost still arrives within a round — and an answer that would repeat the last one
/// lists no peers.
#[test]
fn the_idle_round_is_one_exchange_per_connection_and_catches_a_lost_push() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member), ("desktop", Role::Member)]);
    sim.run_for(Duration::from_secs(3 * 3600));
    // The laptop's pushes to the phone are lost from now on; it revokes the desktop.
    sim.drop_requests(0, 1, |r| matches!(r, Request::Announce { .. }));
    let time = sim.time;
    sim.nodes[0].core.revoke("desktop", time).expect("revoke");
    sim.settle();
    let desktop = sim.nodes[2].key.public_key().device_id();
    let status = |sim: &Sim| sim.nodes[1].log().state().devices.get(&desktop).map(|d| d.status);
    assert_eq!(status(&sim), Some(DeviceStatus::Active), "the push was not lost");
    let from = sim.time.now;
    for node in &mut sim.nodes {
        node.sent.clear();
        node.answered.clear();
    }
    sim.run_for(Duration::from_secs(2 * 3600 + 60));
    assert_eq!(status(&sim), Some(DeviceStatus::Revoked), "the idle round did not catch the lost push");
    // After the busy spell (30 s of news), the idle round: Paths with heads, one side asking.
    // Until the phone pulls (then it has news of its own, and is busy again).
    let (laptop, phone) = (sim.nodes[0].peer, sim.nodes[1].peer);
    let pulled = sim.nodes[1].sent.iter().find(|(_, _, r)| matches!(r, Request::Sync { .. })).map(|(at, _, _)| *at).expect("a pull");
    let window = |at: &Instant| *at > from + Duration::from_secs(120) && *at <= pulled;
    let idle: Vec<(usize, libp2p::PeerId, bool)> = (0..2)
        .flat_map(|i| sim.nodes[i].sent.iter().filter(|(at, _, _)| window(at)).map(move |(_, to, r)| (i, *to, r.clone())))
        .filter_map(|(i, to, r)| match r {
            Request::Paths { summary, .. } => Some((i, to, summary.is_some())),
            // The phone pulling what it missed, and then pushing its news.
            Request::Sync { .. } | Request::Announce { .. } => None,
            other => panic!("an idle request other than a path exchange: {other:?}"),
        })
        .collect();
    // Each pair's round is asked by the end with the lower peer id (whichever pair's round
    // comes first — the laptop and the phone's, or the phone and the desktop's, which has the
    // revocation too — is the one that catches the lost push).
    let peers: Vec<libp2p::PeerId> = sim.nodes.iter().map(|n| n.peer).collect();
    assert!(!idle.is_empty() && idle.iter().all(|(i, to, heads)| peers[*i] < *to && *heads && peers.contains(to)), "{idle:?} (laptop {laptop}, phone {phone})");
    // Two more idle rounds: nothing moved, so the answers list no peers. (First the busy
    // spell of whatever round is due now: the phone's own, with its news from the pull.)
    sim.run_for(Duration::from_secs(600));
    for node in &mut sim.nodes {
        node.answered.clear();
    }
    sim.run_for(Duration::from_secs(4 * 3600));
    let answers: Vec<&Response> = sim.nodes.iter().flat_map(|n| n.answered.iter().map(|(_, _, r)| r)).collect();
    assert!(answers.iter().any(|r| matches!(r, Response::Paths { .. })));
    for answer in answers {
        match answer {
            Response::Paths { peers, summary } => assert!(peers.is_empty() && summary.is_some(), "{answer:?}"),
            other => panic!("an idle answer other than a path exchange's: {other:?}"),
        }
    }
}

#[test]
fn dht01_put_records_are_stored_only_when_a_member_signed_them_and_newer() {
    let (sim, network) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let time = sim.time;
    let _ = network;
    let secret = sim.nodes[0].log().state().secret.clone();
    let phone = &sim.nodes[1];
    let addresses = vec![phone.address()];
    let (key, value) = node::control::presence::publish(&secret, &phone.key, &phone.peer, &addresses, 10, time.unix_secs(), [1; 24]);
    let laptop = &sim.nodes[0].core;
    let kept = laptop.handle_put_record(key.as_ref(), &value, None, time).expect("a member's record is kept");
    assert!(kept <= node::control::presence::RECORD_TTL && kept > Duration::from_secs(3500));
    assert!(laptop.handle_put_record(key.as_ref(), &value, Some(10), time).is_none(), "not newer than the one held");
    let outsider = DeviceSigningKey::from_bytes(&[0x33; 32]);
    let (bad_key, bad_value) = node::control::presence::publish(&secret, &outsider, &phone.peer, &addresses, 11, time.unix_secs(), [2; 24]);
    assert!(laptop.handle_put_record(bad_key.as_ref(), &bad_value, None, time).is_none(), "an outsider's record is dropped");
    assert!(laptop.handle_put_record(key.as_ref(), &bad_value, None, time).is_none(), "an outsider's value under a member's key");
}

#[test]
fn a_found_record_is_dialled_once_per_sequence_number() {
    let (mut sim, network) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    sim.auto_dial = false;
    sim.disconnect(1, 0);
    sim.nodes[0].dials.clear();
    let time = sim.time;
    let phone = &sim.nodes[1];
    let moved: libp2p::Multiaddr = "/ip4/203.0.113.77/tcp/41641".parse().expect("addr");
    let _ = network;
    let secret = sim.nodes[0].log().state().secret.clone();
    let (key, value) = node::control::presence::publish(&secret, &phone.key, &phone.peer, std::slice::from_ref(&moved), 5, time.unix_secs(), [3; 24]);
    let peer = phone.peer;
    for _ in 0..3 {
        sim.nodes[0].core.handle_found_record(key.as_ref(), &value, time);
    }
    sim.settle();
    let dials: Vec<&Dial> = sim.nodes[0].dials.iter().map(|(_, d)| d).filter(|d| d.addresses.contains(&moved)).collect();
    assert_eq!(dials.len(), 1, "{dials:?}");
    assert_eq!(dials[0].peer, Some(peer));
    assert_eq!(dials[0].when, DialWhen::Disconnected, "fresh news does not wait behind a dial to an old address");
}

#[test]
fn candidates_reach_the_data_plane_and_paths_are_exchanged_every_two_seconds() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let phone_key = key_of(&sim, 1);
    let phone_ip = sim.nodes[1].ip;
    let expected = vec![std::net::SocketAddr::new(phone_ip, sim::DATA_PORT)];
    assert!(sim.nodes[0].data.contains(&DataCommand::SetCandidates(phone_key, expected.clone())), "{:?}", sim.nodes[0].data);
    assert!(sim.nodes[0].data.contains(&DataCommand::Connect(phone_key)));
    // Overlay and loopback listen addresses are never candidates.
    let overlay = sim.nodes[1].log().state().devices[&sim.nodes[1].key.public_key().device_id()].record.overlay_ipv4;
    sim.nodes[1].core.handle_new_listen_addr(format!("/ip4/{overlay}/tcp/41641").parse().expect("addr"));
    sim.nodes[1].core.handle_new_listen_addr("/ip4/127.0.0.1/tcp/41641".parse().expect("addr"));
    // Nor the overlay's IPv6 (libp2p on `[::]` lists the TUN's ULA) or a link-local address.
    let overlay_v6 = |sim: &Sim, i: usize| sim.nodes[i].log().state().devices[&sim.nodes[i].key.public_key().device_id()].record.overlay_ipv6;
    for node in [0, 1] {
        let ula = overlay_v6(&sim, node);
        for address in [format!("/ip6/{ula}/tcp/41641"), "/ip6/fe80::1/tcp/41641".to_owned()] {
            sim.nodes[node].core.handle_new_listen_addr(address.parse().expect("addr"));
        }
    }
    assert_eq!(sim.nodes[1].core.own_candidates(), vec![format!("{phone_ip}:{}", sim::DATA_PORT)]);
    let time = sim.time;
    let made = sim.nodes[0].core.invite("tablet", Role::Member, &[], Duration::from_secs(60), time).expect("invite");
    assert!(!made.bootstrap.iter().any(|a| a.to_string().starts_with("/ip6/fd") || a.to_string().starts_with("/ip6/fe80")), "{:?}", made.bootstrap);
    let before = sim.nodes[1].sent.len();
    sim.run_for(Duration::from_millis(6_500));
    let paths = sim.nodes[1].sent[before..].iter().filter(|(_, _, r)| matches!(r, Request::Paths { .. })).count();
    assert_eq!(paths, 4, "one path exchange at once, then every 2 s");
}

/// Birthday punching rests on each member knowing the others' NATs: what the data plane found
/// of ours goes out with the path exchange (at once: it is news), and what a member says of
/// its own reaches our data plane for that member's key.
#[test]
fn a_checked_nat_reaches_the_other_members_data_planes() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let phone_key = key_of(&sim, 1);
    let reflexive: std::net::SocketAddr = "198.51.100.9:4000".parse().expect("address");
    let kind = protocol::birthday::NatKind::EndpointDependent;
    let before = sim.nodes[1].sent.len();
    let time = sim.time;
    sim.nodes[1].core.note_time(time.now);
    sim.nodes[1].core.handle_data_view(node::dataplane::DataView { nat: Some((kind, reflexive)), ..Default::default() });
    sim.run_for(Duration::from_millis(2_500));
    let told = sim.nodes[1].sent[before..].iter().find_map(|(_, _, r)| match r {
        Request::Paths { nat, .. } => nat.clone(),
        _ => None,
    });
    assert_eq!(told, Some(node::control::messages::NatInfo { symmetric: true, reflexive: reflexive.to_string() }));
    let learned = DataCommand::SetPeerNat(phone_key, Some(protocol::birthday::PeerNat { kind, reflexive }));
    assert!(sim.nodes[0].data.contains(&learned), "{:?}", sim.nodes[0].data);
    // A member that says nothing (an older node) leaves nothing to punch with.
    let laptop_key = key_of(&sim, 0);
    assert!(!sim.nodes[1].data.iter().any(|c| matches!(c, DataCommand::SetPeerNat(key, Some(_)) if *key == laptop_key)));
}

/// `pal netcheck` reads the NAT check and the path to CloudPal from the data plane's view, and
/// says nothing it does not know.
#[test]
fn netcheck_reports_what_the_node_found_and_nothing_else() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("cloudpal", Role::CloudPal)]);
    let cloudpal_key = key_of(&sim, 1);
    let empty = sim.nodes[0].core.netcheck(&node::dataplane::DataView::default());
    assert_eq!((empty.udp, empty.nat_mapping.as_deref(), empty.public_address.as_deref()), (false, None, None));
    assert_eq!(empty.cloudpal.as_deref(), Some("cloudpal"), "CloudPal is the relay once it said hello");
    let public: std::net::SocketAddr = "198.51.100.7:41641".parse().expect("address");
    let mut view = node::dataplane::DataView { nat: Some((protocol::birthday::NatKind::EndpointIndependent, public)), observed: vec![public], ..Default::default() };
    view.peers.insert(cloudpal_key, node::dataplane::PeerView { stats: Default::default(), endpoint: None, path: protocol::paths::PathKind::Direct, punches: 0 });
    sim.nodes[0].core.handle_data_view(view.clone());
    let report = sim.nodes[0].core.netcheck(&view);
    assert!(report.udp && report.behind_nat, "{report:?}");
    assert_eq!(report.nat_mapping.as_deref(), Some("endpoint-independent"));
    assert_eq!(report.public_address, Some(public.to_string()));
    assert_eq!(report.reflexive, vec![public.to_string()]);
}

/// #15: CloudPal's TCP/TLS fallback is announced beside each plain listen address — in its
/// Hello, its presence record and the invites members make — and a member that must use it
/// knows where it is.
#[test]
fn cloudpal_announces_its_tcp_fallback_and_members_find_it_for_the_data_link() {
    let (network, members) = network(7, &[("laptop", Role::Admin), ("cloudpal", Role::CloudPal)]);
    let mut sim = Sim::new();
    let listen: std::net::SocketAddr = "[::]:443".parse().expect("address");
    sim.fallback = Some((listen, [5; 32]));
    for member in &members {
        sim.add(member, &network.log, member.record.role == Role::CloudPal);
    }
    sim.connect(1, 0);
    sim.settle();
    let expected = node::relaylink::Target { address: std::net::SocketAddr::new(sim.nodes[1].ip, 443), certhash: [5; 32] };
    assert_eq!(sim.nodes[0].core.relay_fallback(), Some(expected), "the laptop knows CloudPal's fallback from its Hello");
    assert_eq!(sim.nodes[1].core.relay_fallback(), None, "CloudPal has no relay of its own");
    // In the invite, beside CloudPal's plain address.
    let code = invite(&mut sim, 0, Duration::from_secs(60));
    let fallbacks: Vec<_> = code.bootstrap.iter().filter_map(node::relaylink::target).collect();
    assert_eq!(fallbacks, vec![expected], "{:?}", code.bootstrap);
    // In the presence record CloudPal publishes (sealed; opened as any member opens it).
    sim.run_for(Duration::from_secs(5));
    let state = sim.nodes[0].log().state().clone();
    let unix = sim.time.unix_secs();
    let records: Vec<node::control::presence::Presence> =
        sim.nodes[1].kad_store.iter().filter_map(|(key, value)| node::control::presence::verify(&state, key, value, unix, None).ok()).collect();
    let cloudpal_id = sim.nodes[1].key.public_key().device_id();
    let own = records.iter().find(|r| r.device == cloudpal_id).expect("CloudPal's presence record");
    let announced: Vec<_> = own.addresses.iter().filter_map(node::relaylink::target).collect();
    assert_eq!(announced, vec![expected], "{:?}", own.addresses);
    // A plain address at another port gets no sibling; one at the data port does.
    sim.nodes[1].core.handle_new_listen_addr("/ip4/192.0.2.99/tcp/4000".parse().expect("addr"));
    sim.nodes[1].core.handle_new_listen_addr(format!("/ip4/192.0.2.98/tcp/{}", sim::DATA_PORT).parse().expect("addr"));
    let time = sim.time;
    let made = sim.nodes[1].core.invite("x", Role::Member, &[], Duration::from_secs(60), time);
    // (CloudPal is no admin: it cannot invite; its own Hello shows what it announces.)
    assert!(made.is_err());
    let hello = sim.nodes[1].core.hello_listen();
    assert!(hello.iter().any(|a| a == &node::relaylink::multiaddr("192.0.2.98:443".parse().expect("address"), &[5; 32]).to_string()), "{hello:?}");
    assert!(!hello.iter().any(|a| a.contains("192.0.2.99/tcp/443")), "{hello:?}");
}

#[test]
fn cloudpal_becomes_the_relay_and_a_circuit_is_reserved_once_and_again_when_lost() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("cloudpal", Role::CloudPal)]);
    let cloudpal_key = key_of(&sim, 1);
    let relay_endpoint = std::net::SocketAddr::new(sim.nodes[1].ip, sim::DATA_PORT);
    assert!(sim.nodes[0].data.contains(&DataCommand::SetRelay(Some((relay_endpoint, cloudpal_key)))));
    // Nobody has said how they see us yet: taken as behind a NAT, whose mapping toward the
    // relay hop keepalives hold open (no WireGuard keepalive, which would keep a session up).
    let keepalive = DataCommand::SetRelayKeepalive(Some(node::control::members::RELAY_KEEPALIVE));
    assert!(sim.nodes[0].data.contains(&keepalive), "a keepalive holds the NAT towards the relay open");
    assert!(!sim.nodes[0].data.iter().any(|c| matches!(c, DataCommand::UpsertPeer(p) if p.persistent_keepalive.is_some())));
    assert!(!sim.nodes[1].data.iter().any(|c| matches!(c, DataCommand::SetRelayKeepalive(Some(_)))), "CloudPal keeps nothing open toward itself");
    // Peers see us at our own address: no NAT, no keepalive; at another: a NAT again.
    let own = std::net::SocketAddr::new(sim.nodes[0].ip, sim::DATA_PORT);
    sim.nodes[0].data.clear();
    sim.nodes[0].core.handle_data_view(node::dataplane::commands::DataView { observed: vec![own], ..Default::default() });
    sim.settle();
    assert!(sim.nodes[0].data.contains(&DataCommand::SetRelayKeepalive(None)), "{:?}", sim.nodes[0].data);
    let mapped: std::net::SocketAddr = "198.51.100.7:61000".parse().expect("address");
    sim.nodes[0].core.handle_data_view(node::dataplane::commands::DataView { observed: vec![own, mapped], ..Default::default() });
    sim.settle();
    assert_eq!(sim.nodes[0].data.last(), Some(&keepalive));
    assert_eq!(sim.nodes[0].circuits.len(), 1);
    assert!(sim.nodes[0].circuits[0].to_string().ends_with("/p2p-circuit"));
    assert!(sim.nodes[1].circuits.is_empty(), "CloudPal does not reserve at itself");
    assert!(!sim.nodes[1].external.is_empty(), "CloudPal's listen address is its external one");
    sim.run_for(6 * SECOND);
    assert_eq!(sim.nodes[0].circuits.len(), 1, "not asked again while held");
    sim.nodes[0].core.handle_relay_listener_closed();
    sim.run_for(6 * SECOND);
    assert_eq!(sim.nodes[0].circuits.len(), 2, "asked again once lost");
}

#[test]
fn a_device_added_from_a_request_code_is_delivered_the_whole_log() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let requester = peer_of(250);
    let signing = DeviceSigningKey::from_bytes(&[0x44; 32]);
    let device = NewDevice {
        name: "cloudpal".into(),
        signing_key: signing.public_key(),
        static_key: StaticSecret::from_bytes([0x45; 32]).public_key(),
        peer: requester,
        addresses: vec!["/ip4/203.0.113.10/tcp/41641".parse().expect("addr")],
    };
    let time = sim.time;
    sim.nodes[0].core.add_device(device, Role::CloudPal, 77, time).expect("added");
    sim.settle();
    assert!(sim.nodes[0].dials.iter().any(|(_, d)| d.peer == Some(requester) && d.when == DialWhen::Always));
    assert!(sim.nodes[1].log().state().devices.contains_key(&signing.public_key().device_id()), "members learn of it at once");
    // The requester answers the dial: the log goes to it batch by batch.
    sim.ask_as(requester, Ipv4Addr::new(203, 0, 113, 10), 0, Request::Announce { summary: vec![].into() });
    let deliveries: Vec<_> = sim.nodes[0].sent.iter().filter(|(_, p, r)| *p == requester && matches!(r, Request::Deliver { .. })).collect();
    assert_eq!(deliveries.len(), 1);
    let Request::Deliver { batch, more: false } = &deliveries[0].2 else { panic!("one batch") };
    assert_eq!(batch.len(), sim.nodes[0].log().len());
    let time = sim.time;
    sim.nodes[0].core.handle_response(requester, Response::Accepted, time);
    sim.settle();
    let (reply, result) = sim.nodes[0].finished.pop().expect("answered");
    assert_eq!(reply, 77);
    let added = result.expect("delivered");
    assert_eq!((added.added.as_str(), added.role), ("cloudpal", Role::CloudPal));
}

#[test]
fn an_undeliverable_log_times_out_with_one_clear_line() {
    let (mut sim, _) = star(&[("laptop", Role::Admin)]);
    sim.auto_dial = false;
    let device = NewDevice {
        name: "far".into(),
        signing_key: DeviceSigningKey::from_bytes(&[0x46; 32]).public_key(),
        static_key: StaticSecret::from_bytes([0x47; 32]).public_key(),
        peer: peer_of(251),
        addresses: vec![],
    };
    let time = sim.time;
    sim.nodes[0].core.add_device(device, Role::Member, 5, time).expect("added");
    sim.run_for(Duration::from_secs(19));
    assert!(sim.nodes[0].finished.is_empty());
    sim.run_for(Duration::from_secs(2));
    let (reply, result) = sim.nodes[0].finished.pop().expect("given up");
    assert_eq!(reply, 5);
    let error = result.expect_err("not delivered");
    assert!(error.starts_with("far is in the log, but its log could not be delivered") && !error.contains('\n'), "{error}");
}

#[test]
fn only_an_admin_invites_adds_and_revokes() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member), ("cloudpal", Role::CloudPal)]);
    let time = sim.time;
    for index in [1, 2] {
        let core = &mut sim.nodes[index].core;
        assert_eq!(core.invite("x", Role::Member, &[], SECOND, time).map(drop), Err("only an admin device can do this".into()));
        assert_eq!(core.revoke("laptop", time).map(drop), Err("only an admin device can do this".into()));
    }
    let core = &mut sim.nodes[0].core;
    assert!(core.invite("bad name!", Role::Member, &[], SECOND, time).is_err_and(|e| e.contains("not a valid device name")));
    assert!(core.revoke("nobody", time).is_err_and(|e| e.contains("no active device named")));
    // An invite code is a secret: it cannot live forever (nor overflow the clock).
    assert!(core.invite("forever", Role::Member, &[], Duration::from_secs(u64::MAX), time).is_err_and(|e| e.contains("30 days at most")));
    let made = core.invite("month", Role::Member, &[], node::control::admin::MAX_INVITE_TTL, time).expect("30 days is fine");
    assert_eq!(made.expires, time.unix_secs() + 30 * 24 * 3600);
}

#[test]
fn the_peer_cache_is_written_only_when_it_changes() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let phone = sim.nodes[1].peer;
    sim.run_for(Duration::from_secs(30));
    let writes = &sim.nodes[0].cached;
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0], vec![format!("/ip4/192.0.2.2/tcp/41641/p2p/{phone}")]);
}

#[test]
fn bootstrap_addresses_are_dialled_at_start_and_while_nobody_is_connected() {
    let (network, members) = network(11, &[("laptop", Role::Admin), ("phone", Role::Member)]);
    let mut sim = Sim::new();
    sim.auto_dial = false;
    sim.add(&members[0], &network.log, false);
    let bootstrap: libp2p::Multiaddr = "/ip4/192.0.2.1/tcp/41641".parse().expect("addr");
    sim.add_with_bootstrap(&members[1], &network.log, false, vec![bootstrap.clone()]);
    sim.run_for(Duration::ZERO);
    let bare = |sim: &Sim| sim.nodes[1].dials.iter().filter(|(_, d)| d.peer.is_none() && d.addresses == vec![bootstrap.clone()]).count();
    assert_eq!(bare(&sim), 2, "at start and at the first candidate round");
    sim.run_for(Duration::from_millis(3_500));
    assert_eq!(bare(&sim), 3, "again while nobody answered");
    sim.connect(1, 0);
    sim.run_for(Duration::from_secs(9));
    assert_eq!(bare(&sim), 3, "not once a member is connected");
}

#[test]
fn nothing_runs_before_the_deadline_poll_timeout_names() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    sim.run_for(Duration::from_millis(100));
    let deadline = sim.nodes[0].core.poll_timeout().expect("periodic jobs");
    assert!(deadline > sim.time.now);
    let sent = sim.nodes[0].sent.len();
    let just_before = sim.time.advanced(deadline - sim.time.now - Duration::from_millis(1));
    sim.nodes[0].core.handle_timeout(just_before);
    sim.settle();
    assert_eq!(sim.nodes[0].sent.len(), sent, "an early wakeup does nothing");
    let at = sim.time.advanced(deadline - sim.time.now);
    sim.nodes[0].core.handle_timeout(at);
    sim.settle();
    assert!(sim.nodes[0].sent.len() > sent, "the due job ran");
}

#[test]
fn status_shows_each_peer_its_path_and_control_link() {
    let (sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member), ("car", Role::Member)]);
    let phone_key = key_of(&sim, 1);
    let mut views = std::collections::BTreeMap::new();
    let stats = protocol::TunnelStats { rx_bytes: 5, tx_bytes: 6, ..Default::default() };
    views.insert(phone_key, node::dataplane::PeerView { stats, endpoint: None, path: protocol::paths::PathKind::Direct, punches: 0 });
    let nat = Some((protocol::birthday::NatKind::EndpointDependent, "198.51.100.9:4000".parse().expect("address")));
    let stats = protocol::DeviceStats { punch_opened: 3, ..Default::default() };
    let status = sim.nodes[0].core.status(&node::dataplane::DataView { peers: views, nat, stats, ..Default::default() }, 2);
    assert_eq!(status.nat.as_deref(), Some("endpoint-dependent"));
    assert_eq!(status.punches.opened, 3);
    assert_eq!(status.device.name.as_deref(), Some(sim.nodes[0].name.as_str()));
    assert_eq!(status.peers.len(), 2);
    let phone = status.peers.iter().find(|p| p.name == "phone").expect("phone");
    assert_eq!((phone.path, phone.control, phone.rx_bytes), (node::control_api::PathName::Direct, ControlLink::Direct, 5));
    let car = status.peers.iter().find(|p| p.name == "car").expect("car");
    assert_eq!(car.path, node::control_api::PathName::None);
    assert_eq!(status.dht_peers, 2);
}

#[test]
fn log_entries_are_taken_from_proven_members_only() {
    let (mut sim, network) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let founder = network.founder.key.clone();
    let entry = Network::entry_on(
        sim.nodes[1].log(),
        &founder,
        membership::Operation::Invite { invite_key: DeviceSigningKey::from_bytes(&[0x61; 32]).public_key(), role: Role::Member, expires: u64::MAX, name_hint: "x".into(), shares: Vec::new() },
        sim.time.unix_secs(),
        None,
    );
    let batch = vec![entry.encoded().to_vec().into()];
    // A stranger (a revoked device, say) answers with a perfectly signed entry: dropped.
    let time = sim.time;
    sim.nodes[1].core.handle_response(peer_of(220), Response::Entries { batch: batch.clone(), more: false }, time);
    assert!(!sim.nodes[1].log().contains(&entry.hash()));
    // The same from the laptop, a proven member: taken.
    let laptop = sim.nodes[0].peer;
    sim.nodes[1].core.handle_response(laptop, Response::Entries { batch, more: false }, time);
    assert!(sim.nodes[1].log().contains(&entry.hash()));
}

#[test]
fn a_member_claiming_relay_duty_is_not_believed() {
    let (network, members) = network(12, &[("laptop", Role::Admin), ("phone", Role::Member)]);
    let mut sim = Sim::new();
    sim.add(&members[0], &network.log, false);
    sim.add(&members[1], &network.log, true); // `pal up --cloudpal` on a mere member
    sim.connect(1, 0);
    sim.run_for(6 * SECOND);
    assert!(!sim.nodes[0].data.iter().any(|c| matches!(c, DataCommand::SetRelay(Some(_)))), "only a device with the cloudpal role relays");
    assert!(sim.nodes[0].circuits.is_empty());
    assert_eq!(sim.nodes[0].core.relay(), None);
}

#[test]
fn a_revoked_device_is_cut_off_once_it_could_pull_its_revocation_and_never_redialled() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member), ("car", Role::Member)]);
    let car = sim.nodes[2].peer;
    let time = sim.time;
    sim.nodes[0].core.revoke("car", time).expect("revoke");
    sim.settle();
    assert!(sim.nodes[2].core.revoked(), "the car pulled its revocation over the still open connection");
    assert!(!sim.nodes[0].member_peers.contains(&car), "out of the relay's gate at once");
    assert!(sim.is_connected(0, 2));
    sim.run_for(Duration::from_secs(11));
    assert!(sim.nodes[0].disconnected.contains(&car), "closed after the grace");
    assert!(!sim.is_connected(0, 2));
    sim.nodes[0].dials.clear();
    sim.run_for(Duration::from_secs(30));
    assert!(sim.nodes[0].dials.iter().all(|(_, d)| d.peer != Some(car)), "a revoked device is never redialled");
}

#[test]
fn what_members_report_cannot_grow_without_bound() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    sim.auto_dial = false;
    let phone = sim.nodes[1].peer;
    // The phone (a member, perhaps a compromised one) reports more made-up peers than a
    // network may have devices.
    let made_up = membership::state::MAX_DEVICES as u32 + 100;
    let peers: Vec<node::control::messages::PeerAddresses> = (0..made_up)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            node::control::messages::PeerAddresses {
                peer_id: node::p2p::peer_id(&seed).expect("peer").to_bytes().into(),
                multiaddrs: (0..40).map(|port| format!("/ip4/203.0.113.1/tcp/{}", 1000 + port)).collect(),
                device: None,
                candidates: vec![],
            }
        })
        .collect();
    let time = sim.time;
    sim.nodes[0].core.handle_response(phone, Response::Paths { peers, summary: None }, time);
    sim.run_for(Duration::from_secs(7));
    let dials: Vec<&Dial> = sim.nodes[0].dials.iter().map(|(_, d)| d).filter(|d| d.peer.is_some_and(|p| p != phone)).collect();
    let peers: std::collections::BTreeSet<_> = dials.iter().filter_map(|d| d.peer).collect();
    assert_eq!(peers.len(), membership::state::MAX_DEVICES, "candidate peers are capped");
    assert!(dials.iter().all(|d| d.addresses.len() <= node::control::discovery::MAX_CANDIDATE_ADDRESSES));
}

#[test]
fn an_outsider_is_disconnected_unless_it_proves_membership_or_an_invite() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let code = invite(&mut sim, 0, Duration::from_secs(3600));
    let outsider = peer_of(210);
    let joiner = peer_of(211);
    let hello = Request::Announce { summary: vec![].into() };
    sim.ask_as(outsider, Ipv4Addr::new(203, 0, 113, 50), 0, hello);
    assert!(matches!(sim.ask_as(joiner, Ipv4Addr::new(198, 51, 100, 51), 0, invite_sync(&sim, &code, &joiner, &code.secret)), Response::Template { .. }));
    sim.run_for(Duration::from_secs(4));
    assert!(sim.nodes[0].disconnected.is_empty(), "not before the grace");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.nodes[0].disconnected, vec![outsider], "the outsider is closed; the joiner and the member stay");
}

#[test]
fn a_revocation_rotates_the_network_secret_beyond_the_revoked_devices_reach() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member), ("car", Role::Member)]);
    let before = sim.nodes[0].log().state().secret.clone();
    let time = sim.time;
    sim.nodes[0].core.revoke("car", time).expect("revoke");
    sim.settle();
    let laptop = sim.nodes[0].log().state().secret.clone();
    assert_ne!(laptop, before, "the secret moved on");
    assert_eq!(sim.nodes[1].log().state().secret, laptop, "every member follows");
    assert!(sim.nodes[2].core.revoked());
    assert_eq!(sim.nodes[2].log().state().secret, before, "the revoked car never sees the rotation");
    // Presence published from now on is keyed and sealed under the new secret.
    sim.run_for(Duration::from_secs(31));
    let phone_id = sim.nodes[1].key.public_key().device_id();
    let key = node::control::presence::key(&laptop, sim.time.unix_secs(), &phone_id).to_vec();
    assert!(sim.nodes[1].kad_store.contains_key(&key), "the phone publishes under the rotated key");
    let old_key = node::control::presence::key(&before, sim.time.unix_secs(), &phone_id).to_vec();
    let stored = sim.nodes[1].kad_store.get(&key).expect("record");
    assert!(node::control::presence::seq_of(&before, &old_key, stored).is_none() && node::control::presence::seq_of(&before, &key, stored).is_none());
}

#[test]
fn an_invite_holder_learns_nothing_of_the_log_until_it_has_joined() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member)]);
    let code = invite(&mut sim, 0, Duration::from_secs(3600));
    let holder = peer_of(212);
    let proof = node::control::admission::sign_invite_proof(&code.secret, &code.invite, &code.network, &holder);
    let summary = membership::sync::Summary { network: code.network, heads: Vec::new(), sample: Vec::new() };
    let sync = Request::Sync { binding: None, invite: Some(proof), summary: membership::SyncMessage::Summary(summary).encode().into() };
    assert_eq!(refusal(&sim.ask_as(holder, Ipv4Addr::new(198, 51, 100, 60), 0, sync)), "not a member of this network");
    // What enrolment tells it is what its join must say, nothing about the other devices.
    let Response::Template { parents, role, .. } = sim.ask_as(holder, Ipv4Addr::new(198, 51, 100, 60), 0, invite_sync(&sim, &code, &holder, &code.secret)) else {
        panic!("a template")
    };
    assert_eq!(role, "member");
    assert!(parents.len() <= membership::entry::MAX_PARENTS);
    // After joining it is a member, and its binding gets the log.
    let joiner = joiner_identity(42);
    assert_eq!(join_through(&mut sim, 0, &code, &joiner, "tablet"), Response::Accepted);
    let peer = node::p2p::peer_id(&joiner.libp2p).expect("peer");
    let binding = node::control::admission::sign_binding(&joiner.device, &code.network, &peer);
    let summary = membership::sync::Summary { network: code.network, heads: Vec::new(), sample: Vec::new() };
    let sync = Request::Sync { binding: Some(binding), invite: None, summary: membership::SyncMessage::Summary(summary).encode().into() };
    let Response::Entries { batch, .. } = sim.ask_as(peer, Ipv4Addr::new(198, 51, 100, 9), 0, sync) else { panic!("entries") };
    assert_eq!(batch.len(), sim.nodes[0].log().len());
}

#[test]
fn a_listen_address_that_appears_later_reaches_members_with_the_next_path_exchange() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("cloudpal", Role::CloudPal), ("desktop", Role::Member)]);
    sim.run_for(Duration::from_secs(1));
    // The desktop's circuit at CloudPal's relay comes up after its Hellos went out.
    let circuit: libp2p::Multiaddr = format!("/ip4/{}/tcp/41641/p2p/{}/p2p-circuit", sim.nodes[1].ip, sim.nodes[1].peer).parse().expect("addr");
    sim.nodes[2].core.handle_new_listen_addr(circuit.clone());
    let desktop = sim.nodes[2].key.public_key().device_id();
    sim.run_for(Duration::from_secs(3));
    assert!(sim.nodes[0].core.reach(&desktop).expect("reach").multiaddrs.contains(&circuit), "the laptop learns the desktop's circuit");
    assert!(sim.nodes[0].kad_addresses.iter().any(|(peer, address)| *peer == sim.nodes[2].peer && *address == circuit));
}

/// DHT-03: Sybils own the DHT (every lookup answers garbage, every put vanishes): members who
/// lose their connection still find each other again through what they already know — the
/// redial plan, and the addresses other members (CloudPal) report — within seconds.
#[test]
fn dht03_an_eclipsed_dht_does_not_keep_members_apart() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("cloudpal", Role::CloudPal), ("phone", Role::Member)]);
    sim.connect(2, 1);
    sim.settle();
    sim.eclipse = true;
    sim.auto_dial = false;
    sim.disconnect(2, 0);
    let cut = sim.time.now;
    sim.run_for(Duration::from_secs(6));
    assert!(sim.nodes[0].kad_gets.iter().any(|(at, _)| *at > cut), "the laptop looked the phone up (and got garbage)");
    let members: Vec<libp2p::PeerId> = sim.nodes.iter().map(|n| n.peer).collect();
    assert!(sim.nodes[0].dials.iter().all(|(_, d)| d.peer.is_none_or(|p| members.contains(&p))), "only known members were dialled");
    sim.auto_dial = true;
    sim.run_for(Duration::from_secs(4));
    assert!(sim.is_connected(0, 2), "the laptop and the phone did not find each other again without the DHT");
}

/// DHT-05 on the control plane: when the identity epoch turns, every node's PeerId changes;
/// members find each other again by the addresses they knew (dialled without the stale id),
/// prove themselves with fresh bindings, and the log keeps flowing.
#[test]
fn members_find_each_other_again_after_their_identities_rotate() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("phone", Role::Member), ("desktop", Role::Member)]);
    let old: Vec<libp2p::PeerId> = sim.nodes.iter().map(|n| n.peer).collect();
    sim.rotate_identities(100);
    assert!(sim.nodes.iter().zip(&old).all(|(n, old)| n.peer != *old), "every PeerId changed");
    sim.run_for(Duration::from_secs(4));
    for index in 1..3 {
        assert!(sim.is_connected(index, 0), "{} did not reconnect", sim.nodes[index].name);
        let laptop = sim.nodes[0].peer;
        assert!(sim.nodes[index].core.member_peers().contains_key(&laptop), "the laptop's new identity is proven to {}", sim.nodes[index].name);
    }
    let code = invite(&mut sim, 0, Duration::from_secs(600));
    assert!(sim.nodes[1].log().contains(&code.invite) && sim.nodes[2].log().contains(&code.invite), "the log flows over the new connections");
    assert!(old.iter().all(|peer| !sim.nodes[0].member_peers.contains(peer)), "stale identities are out of the relay gate");
}

#[test]
fn choosing_the_exit_routes_the_internet_to_cloudpal_and_a_policy_entry_reaches_its_exit_at_once() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("cloudpal", Role::CloudPal), ("phone", Role::Member)]);
    let cloudpal = key_of(&sim, 1);
    let phone = key_of(&sim, 2);
    // CloudPal serves the exit to every member from the start; no client uses one yet.
    let served = sim.nodes[1].exit_served.last().cloned().expect("CloudPal's exit rules");
    assert_eq!(served.sources.len(), 6, "three members, v4 and v6 each");
    assert!(!served.mesh_only && !served.logging);
    assert_eq!(sim.nodes[0].exit_client, vec![None]);
    assert!(sim.nodes[2].exit_served.is_empty(), "a member serves no exit");

    sim.nodes[0].take_data();
    sim.nodes[0].core.exit_use(None, false).expect("the CloudPal is the default exit");
    sim.settle();
    assert_eq!(sim.nodes[0].exit_client.last().copied().flatten().map(|c| c.allow_lan), Some(false));
    let internet = |commands: &[DataCommand], key| {
        commands.iter().any(|c| matches!(c, DataCommand::UpsertPeer(p) if p.static_public == key && p.allowed_ips.iter().any(|a| a.is_empty())))
    };
    let commands = sim.nodes[0].take_data();
    assert!(internet(&commands, cloudpal), "the exit peer did not take 0.0.0.0/0 and ::/0");
    assert!(!internet(&commands, phone), "the internet routed to a phone");
    assert!(sim.nodes[0].core.exit_use(Some("phone"), false).expect_err("a phone").contains("not a CloudPal"));

    // The policy is the admin's, travels in the log, and CloudPal's rules follow at once.
    let time = sim.time;
    let change = node::control_api::PolicyChange { mesh_only: Some(true), deny: vec!["192.0.2.0/24".into()], ..Default::default() };
    assert!(sim.nodes[2].core.set_policy(&change, time).is_err(), "a member set the policy");
    let bad = node::control_api::PolicyChange { allow: vec!["192.0.2.1/24".into()], ..Default::default() };
    assert!(sim.nodes[0].core.set_policy(&bad, time).expect_err("host bits").contains("did you mean 192.0.2.0/24"));
    let before = sim.nodes[1].exit_served.len();
    sim.nodes[0].core.set_policy(&change, time).expect("an admin sets the policy");
    sim.settle();
    assert_eq!(sim.elapsed(), Duration::ZERO, "no timer stood between the entry and the exit");
    let served = sim.nodes[1].exit_served.last().cloned().expect("new rules");
    assert!(sim.nodes[1].exit_served.len() > before && served.mesh_only);
    assert_eq!(served.deny.len(), 1);
    assert!(sim.nodes[2].core.exit_use(None, false).expect_err("mesh-only").contains("mesh-only"));

    // Off takes the full tunnel out and the internet off the exit peer.
    sim.nodes[0].take_data();
    sim.nodes[0].core.exit_off();
    sim.settle();
    assert_eq!(sim.nodes[0].exit_client.last().copied(), Some(None));
    let commands = sim.nodes[0].take_data();
    assert!(commands.iter().any(|c| matches!(c, DataCommand::UpsertPeer(p) if p.static_public == cloudpal && !p.allowed_ips.iter().any(|a| a.is_empty()))));
}

#[test]
fn a_revoked_device_leaves_the_exit_and_cloudpal_stops_forwarding_for_it() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("cloudpal", Role::CloudPal), ("car", Role::Member)]);
    sim.nodes[2].core.exit_use(None, true).expect("the car uses the exit");
    sim.settle();
    assert!(sim.nodes[2].exit_client.last().copied().flatten().is_some_and(|c| c.allow_lan));
    let time = sim.time;
    sim.nodes[0].core.revoke("car", time).expect("revoke");
    sim.settle();
    assert_eq!(sim.nodes[2].exit_client.last().copied(), Some(None), "a revoked device keeps no full tunnel");
    let served = sim.nodes[1].exit_served.last().cloned().expect("rules");
    assert_eq!(served.sources.len(), 4, "the car is no source any more");
}

#[test]
fn dns_on_points_at_cloudpal_while_it_is_reachable_and_at_the_systems_resolvers_while_it_is_not() {
    let (mut sim, _) = star(&[("laptop", Role::Admin), ("cloudpal", Role::CloudPal), ("phone", Role::Member)]);
    let cloudpal_v4 = sim.nodes[1].log().state().devices[&sim.nodes[1].key.public_key().device_id()].record.overlay_ipv4;
    assert!(sim.nodes[1].core.set_dns(true).expect_err("CloudPal itself").contains("is a CloudPal"));
    let status = sim.nodes[2].core.set_dns(true).expect("dns on");
    sim.settle();
    assert_eq!(sim.nodes[2].client_dns.last().copied(), Some(Some((cloudpal_v4, true))), "pointed at CloudPal, with the fallback after it");
    assert!(status.on && status.resolver.expect("a resolver").contains(&cloudpal_v4.to_string()));

    // CloudPal unreachable: the system's own resolvers, said so in the status; back with it.
    sim.disconnect(2, 1);
    sim.settle();
    assert_eq!(sim.nodes[2].client_dns.last().copied(), Some(None), "still pointed at an unreachable CloudPal");
    assert!(sim.nodes[2].core.dns_status().resolver.expect("named").contains("unreachable"));
    sim.connect(2, 1);
    sim.settle();
    assert_eq!(sim.nodes[2].client_dns.last().copied(), Some(Some((cloudpal_v4, true))), "not pointed again when CloudPal came back");

    // On the exit there is no fallback: DNS stays pointed at the exit, reachable or not.
    sim.nodes[2].core.exit_use(None, false).expect("exit");
    sim.settle();
    assert_eq!(sim.nodes[2].client_dns.last().copied(), Some(Some((cloudpal_v4, false))));
    sim.disconnect(2, 1);
    sim.settle();
    assert_eq!(sim.nodes[2].client_dns.last().copied(), Some(Some((cloudpal_v4, false))), "the exit's DNS fell back outside the tunnel");
    sim.nodes[2].core.exit_off();
    sim.nodes[2].core.set_dns(false).expect("dns off");
    sim.settle();
    assert_eq!(sim.nodes[2].client_dns.last().copied(), Some(None));
}
