//! RL-03 for CloudPal's libp2p relay: an outsider (not a member) cannot reserve a circuit,
//! so it can neither be reached through CloudPal nor use it to reach anyone — while a member
//! can (the control: with the relay switched off, or closed to everyone, the test fails).

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, noise, relay, tcp, yamux};
use std::time::Duration;
use tests::{LanNetwork, PalNode, wait_until};

#[derive(NetworkBehaviour)]
struct Outsider {
    relay: relay::client::Behaviour,
}

/// Asks `cloudpal` for a circuit reservation from `namespace`, as a stranger or under the
/// libp2p identity of the seed `as_member`; whether it was granted.
fn reserve(namespace: &str, cloudpal: &PalNode, as_member: Option<[u8; 32]>) -> bool {
    let seed: [u8; 32] = std::fs::read(cloudpal.state.join("libp2p.key")).expect("key").try_into().expect("32 bytes");
    let cloudpal_peer = node::p2p::peer_id(&seed).expect("peer id");
    let circuit: Multiaddr = format!("/ip4/{}/tcp/41641/p2p/{cloudpal_peer}/p2p-circuit", cloudpal.address).parse().expect("multiaddr");
    let namespace = namespace.to_owned();
    std::thread::spawn(move || {
        tests::enter_namespace(&namespace);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let identity = match as_member {
                Some(seed) => node::p2p::keypair(&seed, node::p2p::identity_epoch(node::clock::unix_secs())).expect("key"),
                None => libp2p::identity::Keypair::generate_ed25519(),
            };
            let mut swarm = libp2p::SwarmBuilder::with_existing_identity(identity)
                .with_tokio()
                .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
                .expect("tcp")
                .with_relay_client(noise::Config::new, yamux::Config::default)
                .expect("relay client")
                .with_behaviour(|_, relay| Outsider { relay })
                .expect("behaviour")
                .build();
            swarm.listen_on(circuit).expect("listen");
            loop {
                let event = tokio::time::timeout(Duration::from_secs(15), swarm.select_next_some()).await.expect("no answer from the relay");
                match event {
                    SwarmEvent::Behaviour(OutsiderEvent::Relay(relay::client::Event::ReservationReqAccepted { .. })) => return true,
                    SwarmEvent::ListenerClosed { .. } | SwarmEvent::ListenerError { .. } => return false,
                    _ => {}
                }
            }
        })
    })
    .join()
    .expect("outsider thread")
}

#[test]
fn rl03_an_outsider_cannot_reserve_a_circuit_at_cloudpals_relay() {
    let mut net = LanNetwork::form(&["laptop"]);
    let code = net.invite("laptop", "cloudpal", "cloudpal");
    net.join_with("cloudpal", &code).up_with(&["--cloudpal"]);
    assert!(net.wait_for_membership(Duration::from_secs(20)), "membership did not converge");
    let (outsider, _) = net.lan.host("outs");
    assert!(!reserve(&outsider.name, net.node("cloudpal"), None), "an outsider got a circuit reservation");
    // The control: the laptop's identity (proven to CloudPal by its Hello) is granted one.
    let laptop: [u8; 32] = std::fs::read(net.node("laptop").state.join("libp2p.key")).expect("key").try_into().expect("32 bytes");
    let (elsewhere, _) = net.lan.host("memb");
    // (Once CloudPal has verified the laptop's Hello, which the device lists do not show.)
    let granted = wait_until(Duration::from_secs(15), || reserve(&elsewhere.name, net.node("cloudpal"), Some(laptop)));
    assert!(granted, "a member was refused a circuit reservation");
}
