//! The DHT rows with real nodes: records nobody in the network signed are never stored and
//! never dialled (DHT-01); a signed record that points at an attacker's address costs a
//! failed dial and nothing else — no session with anyone but the expected key, and the device
//! is reached where it really is (DHT-02).

use futures::StreamExt;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use protocol::DeviceSigningKey;
use std::net::TcpListener;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tests::{LanNetwork, PalNode, wait_until};

fn seed(node: &PalNode, file: &str) -> [u8; 32] {
    std::fs::read(node.state.join(file)).expect(file).try_into().expect("32 bytes")
}

fn peer_of(node: &PalNode) -> PeerId {
    node::p2p::peer_id(&seed(node, "libp2p.key")).expect("peer id")
}

fn signer_of(node: &PalNode) -> DeviceSigningKey {
    DeviceSigningKey::from_bytes(&seed(node, "device.key"))
}

fn network_of(node: &PalNode) -> membership::NetworkId {
    let log: serde_json::Value = serde_json::from_str(&node.pal_ok(&["log", "--json"])).expect("log");
    let hex = log[0]["hash"].as_str().expect("genesis").to_owned();
    membership::NetworkId((0..64).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect::<Vec<u8>>().try_into().expect("32"))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

enum Step {
    /// Put these records to these nodes.
    Put(Vec<kad::Record>),
    /// Look a key up; the values found.
    Get(kad::RecordKey),
}

/// A Kademlia client that knows the network id (so it can name the DHT's protocol; an outsider
/// cannot) speaking it from `namespace`, talking only to
/// `nodes`; runs `steps` in order, returning what each `Get` found.
fn rogue_dht(namespace: &str, network: membership::NetworkId, nodes: Vec<(PeerId, Multiaddr)>, steps: Vec<Step>) -> Vec<Vec<Vec<u8>>> {
    let namespace = namespace.to_owned();
    std::thread::spawn(move || {
        tests::enter_namespace(&namespace);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let mut swarm = node::p2p::build(&[0x77; 32], |key, _relay| {
                let peer = key.public().to_peer_id();
                let mut config = kad::Config::new(node::p2p::kad_protocol(&network));
                config.set_query_timeout(Duration::from_secs(5));
                let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), config);
                kad.set_mode(Some(kad::Mode::Client));
                kad
            })
            .expect("swarm");
            for (peer, address) in &nodes {
                swarm.behaviour_mut().add_address(peer, address.clone());
            }
            let mut found = Vec::new();
            for step in steps {
                let (query, gets) = match step {
                    Step::Put(records) => {
                        let ids: Vec<_> = records
                            .into_iter()
                            .map(|r| swarm.behaviour_mut().put_record_to(r, nodes.iter().map(|(p, _)| *p).collect::<Vec<_>>().into_iter(), kad::Quorum::All))
                            .collect();
                        (ids, false)
                    }
                    Step::Get(key) => (vec![swarm.behaviour_mut().get_record(key)], true),
                };
                let mut pending: std::collections::HashSet<_> = query.into_iter().collect();
                let mut values = Vec::new();
                while !pending.is_empty() {
                    let event = tokio::time::timeout(Duration::from_secs(20), swarm.select_next_some()).await.expect("the rogue DHT client stalled");
                    if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed { id, result, step, .. }) = event {
                        if let kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(record))) = &result {
                            values.push(record.record.value.clone());
                        }
                        if step.last {
                            pending.remove(&id);
                        }
                    }
                }
                if gets {
                    found.push(values);
                }
            }
            found
        })
    })
    .join()
    .expect("rogue thread")
}

fn record(key: kad::RecordKey, value: Vec<u8>) -> kad::Record {
    kad::Record { key, value, publisher: None, expires: None }
}

#[test]
fn dht01_dht02_unsigned_or_foreign_records_are_never_stored_or_dialled() {
    let mut net = LanNetwork::form(&["laptop", "phone", "desktop"]);
    assert!(net.wait_for_membership(Duration::from_secs(20)), "membership did not converge");
    let network = network_of(net.node("laptop"));
    let (attacker_ns, attacker_address) = net.lan.host("evil");
    // The attacker's "node": a TCP listener that counts who connects.
    let listener = {
        let address = format!("{attacker_address}:4001");
        std::thread::spawn({
            let name = attacker_ns.name.clone();
            move || {
                tests::enter_namespace(&name);
                TcpListener::bind(address).expect("listener")
            }
        })
        .join()
        .expect("listener thread")
    };
    listener.set_nonblocking(true).expect("nonblocking");
    let trap: Multiaddr = format!("/ip4/{attacker_address}/tcp/4001").parse().expect("multiaddr");
    let dht_nodes: Vec<(PeerId, Multiaddr)> = ["laptop", "desktop"]
        .iter()
        .map(|n| (peer_of(net.node(n)), format!("/ip4/{}/tcp/41641", net.node(n).address).parse().expect("multiaddr")))
        .collect();

    // DHT-01: under the phone's key, garbage; a record an outsider signed claiming to be the
    // phone; and the outsider's own record — all pointing at the trap.
    let phone_device = signer_of(net.node("phone")).public_key().device_id();
    let secret = membership::state::NetworkSecret::genesis(&network);
    let phone_key = node::control::presence::key(&secret, now(), &phone_device);
    let outsider = DeviceSigningKey::from_bytes(&[0x13; 32]);
    let rogue_peer = node::p2p::peer_id(&[0x77; 32]).expect("peer id");
    let (outsider_key, outsider_value) = node::control::presence::publish(&secret, &outsider, &rogue_peer, std::slice::from_ref(&trap), u64::MAX - 1, now(), [1; 24]);
    let garbage = vec![0xa5; 300];
    let spoofed = vec![
        record(phone_key.clone(), garbage.clone()),
        record(phone_key.clone(), outsider_value.clone()),
        record(outsider_key.clone(), outsider_value.clone()),
    ];
    // Control: a record the desktop really signed is stored (so the puts do reach the nodes).
    let desktop_signer = signer_of(net.node("desktop"));
    let desktop_address: Multiaddr = format!("/ip4/{}/tcp/41641", net.node("desktop").address).parse().expect("multiaddr");
    let seq = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64 + 60_000;
    let (desktop_key, desktop_value) = node::control::presence::publish(&secret, &desktop_signer, &peer_of(net.node("desktop")), &[desktop_address], seq, now(), [2; 24]);
    let found = rogue_dht(
        &attacker_ns.name,
        network,
        dht_nodes.clone(),
        vec![
            Step::Put(spoofed),
            Step::Put(vec![record(desktop_key.clone(), desktop_value.clone())]),
            Step::Get(phone_key.clone()),
            Step::Get(outsider_key),
            Step::Get(desktop_key),
        ],
    );
    assert!(found[0].iter().all(|v| *v != garbage && *v != outsider_value), "a spoofed record for the phone was stored");
    assert!(found[1].is_empty(), "an outsider's record was stored");
    assert!(found[2].contains(&desktop_value), "control: a member's record was not stored: {:?}", found[2].len());

    // With the phone away, the laptop looks its record up every few seconds: it never dials
    // the trap, because no record pointing there verifies.
    net.node_mut("phone").down();
    std::thread::sleep(Duration::from_secs(7));
    assert!(listener.accept().is_err(), "a node dialled the address of an unsigned record");

    // DHT-02: a record the phone did sign (as a stale one would be), newer than any, puts the
    // trap first. The laptop dials it — and gets no session there, since the trap is not the
    // phone's key — and reaches the phone where it really is once it is back.
    let phone_address: Multiaddr = format!("/ip4/{}/tcp/41641", net.node("phone").address).parse().expect("multiaddr");
    let seq = seq + 60_000;
    let (key, value) = node::control::presence::publish(&membership::state::NetworkSecret::genesis(&network), &signer_of(net.node("phone")), &peer_of(net.node("phone")), &[trap, phone_address], seq, now(), [3; 24]);
    rogue_dht(&attacker_ns.name, network, dht_nodes, vec![Step::Put(vec![record(key, value)])]);
    let lured = wait_until(Duration::from_secs(12), || listener.accept().is_ok());
    assert!(lured, "the signed record was not acted on (the laptop never dialled its first address): {}", net.node("laptop").log());
    net.node_mut("phone").up();
    let reached = wait_until(Duration::from_secs(15), || net.node("laptop").pal(&["ping", "phone", "-c", "1"]).status.success());
    assert!(reached, "the laptop never reached the real phone: {}", net.node("laptop").log());
}
