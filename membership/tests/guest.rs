//! Guests (issue #16 item 1): shares in the log, and the view a guest is served — enough to
//! prove what it may reach and nothing more (SECURITY-TESTS GUEST-02).

use membership::guest::{self, ViewError};
use membership::testkit::Network;
use membership::{DeviceStatus, Operation, PortRange, Role, RuleError, Share};
use protocol::DeviceId;

fn ports(list: &[u16]) -> Vec<PortRange> {
    list.iter().map(|p| PortRange { first: *p, last: *p }).collect()
}

fn id(member: &membership::testkit::Member) -> DeviceId {
    member.record.signing_key.device_id()
}

#[test]
fn a_guest_reaches_only_what_is_shared_and_nobody_else_reaches_it() {
    let mut net = Network::new(1);
    let nas = net.add("nas", Role::Member);
    let laptop = net.add("laptop", Role::Member);
    let cloudpal = net.add("cloudpal", Role::CloudPal);
    let friend = net.join_guest("friend", vec![Share { device: id(&nas), ports: ports(&[22, 8080]) }]);
    let state = net.log.state();
    assert_eq!(state.shared_ports(&id(&friend), &id(&nas)), Some(&ports(&[22, 8080])[..]));
    assert_eq!(state.shared_ports(&id(&friend), &id(&laptop)), None);
    assert!(state.may_talk(&id(&friend), &id(&nas)) && state.may_talk(&id(&nas), &id(&friend)));
    assert!(!state.may_talk(&id(&friend), &id(&laptop)) && !state.may_talk(&id(&laptop), &id(&friend)));
    assert!(!state.may_talk(&id(&friend), &id(&cloudpal)), "CloudPal relays for a guest but is not shared with it");
    assert!(state.may_talk(&id(&laptop), &id(&nas)), "members still talk to each other");
}

#[test]
fn shares_change_by_admin_only_and_name_only_members() {
    let mut net = Network::new(2);
    let nas = net.add("nas", Role::Member);
    let laptop = net.add("laptop", Role::Member);
    let friend = net.join_guest("friend", vec![Share { device: id(&nas), ports: vec![] }]);
    let other = net.join_guest("other", vec![]);
    // Widen: the laptop too; then take the nas away.
    let founder = net.founder.key.clone();
    net.append(&founder, Operation::Share { guest: id(&friend), shares: membership::share::canonical(vec![Share { device: id(&laptop), ports: ports(&[443]) }]) });
    let state = net.log.state();
    assert_eq!(state.shared_ports(&id(&friend), &id(&nas)), None);
    assert_eq!(state.shared_ports(&id(&friend), &id(&laptop)), Some(&ports(&[443])[..]));
    let refuse = |net: &mut Network, author: &protocol::DeviceSigningKey, operation: Operation| {
        let entry = Network::entry_on(&net.log, author, operation, net.now + 1, None);
        match net.log.ingest(vec![entry]) {
            Err(membership::LogError::InBatch { error, .. }) => match *error {
                membership::LogError::Rule(rule) => rule,
                other => panic!("{other:?}"),
            },
            Err(membership::LogError::Rule(rule)) => rule,
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    let share = |guest: DeviceId, shares: Vec<Share>| Operation::Share { guest, shares };
    // A member that is not an admin, a guest sharing onward, a share of a guest, a share
    // given to a member rather than a guest.
    assert_eq!(refuse(&mut net, &nas.key, share(id(&friend), vec![])), RuleError::NotAdmin);
    assert_eq!(refuse(&mut net, &friend.key, share(id(&friend), vec![])), RuleError::NotAdmin);
    assert_eq!(refuse(&mut net, &founder, share(id(&friend), vec![Share { device: id(&other), ports: vec![] }])), RuleError::BadShare);
    assert_eq!(refuse(&mut net, &founder, share(id(&laptop), vec![])), RuleError::NotAGuest);
    // A guest is never added by hand: it comes in through an invite, which carries its shares.
    let by_hand = net.member("by-hand", Role::Guest);
    assert_eq!(refuse(&mut net, &founder, Operation::AddDevice { device: by_hand.record }), RuleError::NotAGuest);
}

#[test]
fn guest02_the_view_proves_the_shared_devices_and_names_no_other() {
    let mut net = Network::new(3);
    let nas = net.add("nas", Role::Member);
    let secret_laptop = net.add("secret-laptop", Role::Member);
    let cloudpal = net.add("cloudpal", Role::CloudPal);
    let friend = net.join_guest("friend", vec![Share { device: id(&nas), ports: ports(&[22]) }]);
    let _other_guest = net.join_guest("other-guest", vec![Share { device: id(&secret_laptop), ports: vec![] }]);
    let view = guest::view_for(&net.log, &id(&friend)).expect("a guest is served");
    assert!(view.len() < net.log.len(), "only part of the log");
    let state = guest::verify(&net.log.network(), &id(&friend), &view).expect("the view verifies");
    let names: Vec<&str> = state.devices.values().map(|d| d.record.name.as_str()).collect();
    assert!(names.contains(&"nas") && names.contains(&"cloudpal") && names.contains(&"friend"));
    assert!(!names.contains(&"secret-laptop") && !names.contains(&"other-guest"), "{names:?}");
    assert_eq!(state.shared_ports(&id(&friend), &id(&nas)), Some(&ports(&[22])[..]));
    assert!(state.invites.is_empty() && state.policy == membership::Policy::default());
    assert_eq!(state.secret, membership::state::NetworkSecret::default(), "a guest never learns the network secret");
    // Not a byte of the other devices: neither their names nor their keys.
    let bytes: Vec<u8> = view.concat();
    for hidden in [secret_laptop.record.static_key.as_bytes().as_slice(), b"secret-laptop", b"other-guest"] {
        assert!(!bytes.windows(hidden.len()).any(|w| w == hidden));
    }
    assert!(guest::view_for(&net.log, &id(&nas)).is_none(), "a member is no guest");
    let _ = cloudpal;
}

#[test]
fn a_view_cannot_make_a_device_up_or_move_networks() {
    let mut net = Network::new(4);
    let nas = net.add("nas", Role::Member);
    let friend = net.join_guest("friend", vec![Share { device: id(&nas), ports: vec![] }]);
    let view = guest::view_for(&net.log, &id(&friend)).unwrap();
    // A device added by someone the view does not prove an admin (here: an outsider's log).
    let mut outsider = Network::new(5);
    let fake = outsider.add("fake", Role::Member);
    let mut forged = view.clone();
    forged.push(outsider.log.entries().last().unwrap().encoded().to_vec());
    assert_eq!(guest::verify(&net.log.network(), &id(&friend), &forged), Err(ViewError::WrongNetwork));
    // Without the guest's own join there is nothing to trust.
    let without_me: Vec<Vec<u8>> = view.iter().filter(|b| !matches!(membership::Entry::decode(b).unwrap().operation(), Operation::Join { .. })).cloned().collect();
    assert_eq!(guest::verify(&net.log.network(), &id(&friend), &without_me), Err(ViewError::NotListed));
    // Without the admission chain, the nas is not proven (its entry alone is not enough).
    let genesis_less: Vec<Vec<u8>> = view[1..].to_vec();
    assert!(guest::verify(&net.log.network(), &id(&friend), &genesis_less).is_err());
    // A flipped byte breaks a signature.
    let mut flipped = view.clone();
    let last = flipped[1].len() - 1;
    flipped[1][last] ^= 1;
    assert!(matches!(guest::verify(&net.log.network(), &id(&friend), &flipped), Err(ViewError::Entry(_))));
    let _ = fake;
}

#[test]
fn revocations_and_unshares_survive_a_stale_view() {
    let mut net = Network::new(6);
    let nas = net.add("nas", Role::Member);
    let laptop = net.add("laptop", Role::Member);
    let friend = net.join_guest("friend", vec![Share { device: id(&nas), ports: vec![] }, Share { device: id(&laptop), ports: vec![] }]);
    let stale = guest::view_for(&net.log, &id(&friend)).unwrap();
    let founder = net.founder.key.clone();
    net.append(&founder, Operation::Share { guest: id(&friend), shares: vec![Share { device: id(&nas), ports: vec![] }] });
    net.append(&founder, Operation::RevokeDevice { device: id(&nas) });
    let fresh = guest::view_for(&net.log, &id(&friend)).unwrap();
    let state = guest::verify(&net.log.network(), &id(&friend), &fresh).unwrap();
    assert_eq!(state.devices[&id(&nas)].status, DeviceStatus::Revoked);
    assert_eq!(state.shared_ports(&id(&friend), &id(&laptop)), None, "unshared");
    // A slow member serves the old view afterwards: what only grows is kept.
    let kept = guest::merge(&id(&friend), &fresh, stale);
    let state = guest::verify(&net.log.network(), &id(&friend), &kept).unwrap();
    assert_eq!(state.devices[&id(&nas)].status, DeviceStatus::Revoked, "a revocation is never forgotten");
    assert_eq!(state.shared_ports(&id(&friend), &id(&laptop)), None, "an unshare is not undone");
    // Revoking the guest itself reaches it through its view.
    net.append(&founder, Operation::RevokeDevice { device: id(&friend) });
    let last = guest::view_for(&net.log, &id(&friend)).unwrap();
    let state = guest::verify(&net.log.network(), &id(&friend), &last).unwrap();
    assert_eq!(state.devices[&id(&friend)].status, DeviceStatus::Revoked);
}
