//! ROB-01 against a running node: a peer that speaks the control protocol with an oversized
//! length prefix, truncated CBOR, garbage, or a well-formed frame of an unknown message gets
//! its stream closed (the request fails on its side), and the node keeps running and serving
//! its members.

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
use std::time::Duration;
use tests::{LanNetwork, wait_until};

/// Writes each request verbatim (no framing of its own) and reads back whatever comes.
#[derive(Clone, Default)]
struct Raw;

impl request_response::Codec for Raw {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, _: &mut T) -> std::io::Result<Vec<u8>> {
        Err(std::io::Error::other("the rogue peer serves nothing"))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>> {
        let mut answer = Vec::new();
        futures::AsyncReadExt::read_to_end(io, &mut answer).await?;
        if answer.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "stream closed without an answer"));
        }
        Ok(answer)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, request: Vec<u8>) -> std::io::Result<()> {
        io.write_all(&request).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, _: &mut T, _: Vec<u8>) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends each payload on its own control stream to `target`; for each, whether the node
/// answered anything.
fn rogue_requests(namespace: &str, target: Multiaddr, payloads: Vec<Vec<u8>>) -> Vec<bool> {
    let namespace = namespace.to_owned();
    std::thread::spawn(move || {
        tests::enter_namespace(&namespace);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let behaviour = |_: &libp2p::identity::Keypair, _relay| {
                request_response::Behaviour::<Raw>::new(
                    [(node::p2p::codec::PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
                )
            };
            let mut swarm = node::p2p::build(&[0x66; 32], behaviour).expect("swarm");
            swarm.dial(target).expect("dial");
            let mut pending = std::collections::HashMap::new();
            let mut answers = vec![false; payloads.len()];
            let mut sent = false;
            loop {
                match tokio::time::timeout(Duration::from_secs(15), swarm.select_next_some()).await.expect("the rogue peer stalled") {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if !sent => {
                        sent = true;
                        for (i, payload) in payloads.iter().enumerate() {
                            pending.insert(swarm.behaviour_mut().send_request(&peer_id, payload.clone()), i);
                        }
                    }
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { request_id, .. }, ..
                    }) => {
                        answers[pending.remove(&request_id).expect("ours")] = true;
                    }
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure { request_id, .. }) => {
                        pending.remove(&request_id);
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => panic!("cannot reach the node: {error}"),
                    _ => {}
                }
                if sent && pending.is_empty() {
                    return answers;
                }
            }
        })
    })
    .join()
    .expect("rogue thread")
}

#[test]
fn rob01_malformed_control_messages_close_the_stream_and_the_node_keeps_running() {
    let net = LanNetwork::form(&["laptop", "phone"]);
    assert!(net.wait_for_membership(Duration::from_secs(20)), "membership did not converge");
    let target: Multiaddr = format!("/ip4/{}/tcp/41641", net.node("laptop").address).parse().expect("multiaddr");
    let frame = |body: &[u8]| [(body.len() as u32).to_be_bytes().as_slice(), body].concat();
    let payloads = vec![
        [u32::MAX.to_be_bytes().as_slice(), &[0u8; 64]].concat(), // length prefix far over the cap
        frame(&[0x82, 0x00]),                                     // an array of two, one missing
        frame(&[0xff; 100]),                                      // garbage
        frame(&[0xbf, 0x00, 0x01]),                                // indefinite map, never ended
        frame(&[0x82, 0x18, 0x63, 0x80]),                          // well-formed CBOR, unknown message 99
        vec![0x00, 0x00],                                         // a truncated length prefix
        // Control: a well-formed request gets an answer (a refusal: the rogue is no member),
        // so silence above means the streams were closed, not that nothing was heard.
        frame(&node::control::messages::encode(&node::control::messages::Request::Announce { summary: vec![0].into() }).expect("encode")),
    ];
    let answered = rogue_requests(&net.node("phone").netns.name, target.clone(), payloads);
    assert_eq!(answered, [false, false, false, false, false, false, true], "answered malformed requests, or not the good one");

    // Still running, still serving its members, and still talking to the rogue's next peer.
    assert!(net.node("laptop").pal(&["status", "--json"]).status.success(), "the node died: {}", net.node("laptop").log());
    let ok = wait_until(Duration::from_secs(10), || net.node("phone").pal(&["ping", "laptop", "-c", "1"]).status.success());
    assert!(ok, "members lost the node");
    let again = rogue_requests(&net.node("phone").netns.name, target, vec![frame(&[0x82, 0x00])]);
    assert_eq!(again, [false]);
}
