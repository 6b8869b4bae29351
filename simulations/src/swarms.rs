//! Real libp2p-kad swarms in one process, to calibrate [`crate::dht`]'s model (issue #17).
//!
//! Each node is a libp2p 0.57 swarm with the node's Kademlia and swarm settings
//! (`node::p2p::kad_config` and `swarm_config`: K 20, α 10, 5 s query and 2 s request
//! timeouts, record filtering, no periodic bootstrap, connections kept, `V1Lazy` streams) over
//! libp2p's in-memory transport with the node's Noise and Yamux upgrades. The links are the
//! model's own ([`Links`]): a dial waits one round trip (TCP's handshake) and every byte
//! arrives one way's latency after it was written. A node that goes off is frozen, not
//! closed: its swarm is no longer polled, so a dial or a request to it hangs as one to a
//! switched-off machine does, and never fails fast. This runs on the wall clock (libp2p-kad
//! keeps its own timers), so it is not bit-for-bit deterministic; the model is.
//!
//! How the network is built, as a DHT's nodes join it: node `i` learns the address of a few
//! earlier nodes and bootstraps (a walk towards itself); once all have joined, each
//! bootstraps once more, as libp2p's periodic bootstrap would. Records are placed at the K
//! nodes closest to their key, as the model places them.

use crate::dht::{K, Lookup, Settings};
use crate::links::{self, Links};
use futures::{AsyncRead, AsyncWrite, StreamExt as _};
use libp2p::core::transport::{MemoryTransport, Transport as _};
use libp2p::core::{ConnectedPoint, Multiaddr, multiaddr::Protocol, upgrade::Version};
use libp2p::kad::{self, store::RecordStore as _};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, identity, noise, yamux};
use rand_core::Rng as _;
use std::collections::{HashMap, VecDeque};
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Where node `index` of the network whose ports start past `base` listens (memory ports are
/// one namespace per process, and port 0 is "any"; a network's ports are not reused by the
/// next, as its swarms may still be going away).
fn address(base: u64, index: usize) -> Multiaddr {
    Multiaddr::empty().with(Protocol::Memory(base + index as u64 + 1))
}

/// The first memory port past the networks built so far.
static NEXT_BASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The node's Kademlia (`node::p2p::kad_config`) with `settings`' timeouts.
fn behaviour(peer: PeerId, settings: Settings) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut config = node::p2p::kad_config(libp2p::StreamProtocol::new("/cloudpal/kad/calibration/1.0.0"));
    config.set_query_timeout(settings.query);
    config.set_substreams_timeout(settings.request);
    config.set_parallelism(std::num::NonZeroUsize::new(settings.alpha).expect("α is not zero"));
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), config);
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

/// A stream whose bytes arrive `latency` after they were written.
struct Delayed<S> {
    inner: S,
    latency: Duration,
    /// What has arrived, each with when it may be read; an empty chunk is the end.
    queue: VecDeque<(Instant, Vec<u8>)>,
    read: usize,
    ended: bool,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Delayed<S> {
    fn new(inner: S, latency: Duration) -> Self {
        Delayed { inner, latency, queue: VecDeque::new(), read: 0, ended: false, timer: Box::pin(tokio::time::sleep(Duration::ZERO)) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Delayed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Take in everything that has come, stamped with when it may be read.
        while !this.ended {
            let mut chunk = [0u8; 16 * 1024];
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(n)) => {
                    this.ended = n == 0;
                    this.queue.push_back((Instant::now() + this.latency, chunk[..n].to_vec()));
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => break,
            }
        }
        loop {
            let Some((at, chunk)) = this.queue.front() else { return Poll::Pending };
            if *at > Instant::now() {
                this.timer.as_mut().reset(*at);
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                continue;
            }
            if chunk.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let n = out.len().min(chunk.len() - this.read);
            out[..n].copy_from_slice(&chunk[this.read..this.read + n]);
            this.read += n;
            if this.read == chunk.len() {
                this.queue.pop_front();
                this.read = 0;
            }
            return Poll::Ready(Ok(n));
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Delayed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

fn swarm(base: u64, index: usize, key: identity::Keypair, links: Links, settings: Settings) -> Swarm<kad::Behaviour<kad::store::MemoryStore>> {
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};
    let peer = key.public().to_peer_id();
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            // The dialer names itself in four bytes, so both ends know the link's latency.
            let timed = MemoryTransport::default().and_then(move |mut stream, endpoint: ConnectedPoint| async move {
                let other = match endpoint {
                    ConnectedPoint::Dialer { address, .. } => {
                        let Some(Protocol::Memory(port)) = address.iter().next() else {
                            return Err(io::Error::other("not a memory address"));
                        };
                        let other = (port - base - 1) as usize;
                        tokio::time::sleep(links.latency(index, other) * 2).await;
                        stream.write_all(&(index as u32).to_be_bytes()).await?;
                        other
                    }
                    ConnectedPoint::Listener { .. } => {
                        let mut name = [0u8; 4];
                        stream.read_exact(&mut name).await?;
                        u32::from_be_bytes(name) as usize
                    }
                };
                Ok(Delayed::new(stream, links.latency(index, other)))
            });
            Ok(timed.upgrade(Version::V1Lazy).authenticate(noise::Config::new(key)?).multiplex(yamux::Config::default()).outbound_timeout(settings.dial))
        })
        .expect("the memory transport")
        .with_behaviour(|_| behaviour(peer, settings))
        .expect("the Kademlia behaviour")
        .with_swarm_config(|config| {
            let config = node::p2p::swarm_config(config);
            if settings.lazy { config } else { config.with_substream_upgrade_protocol_override(Version::V1) }
        })
        .build()
}

enum Command {
    AddAddress(PeerId, Multiaddr),
    Bootstrap(oneshot::Sender<()>),
    Store(kad::Record),
    Get(kad::RecordKey, oneshot::Sender<Lookup>),
    /// Stop answering, like a machine switched off: the swarm is handed back unpolled.
    Freeze,
}

type Node = Swarm<kad::Behaviour<kad::store::MemoryStore>>;

/// Serves one node. An inbound connection's peer joins the routing table with its listening
/// address, as libp2p's identify (or the node's Hello) would tell it.
async fn serve(mut swarm: Node, base: u64, mut commands: mpsc::UnboundedReceiver<Command>, indices: std::sync::Arc<HashMap<PeerId, usize>>) -> Node {
    let mut bootstraps: HashMap<kad::QueryId, oneshot::Sender<()>> = HashMap::new();
    let mut gets: HashMap<kad::QueryId, (Instant, oneshot::Sender<Lookup>)> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None | Some(Command::Freeze) => return swarm,
                Some(Command::AddAddress(peer, address)) => {
                    swarm.behaviour_mut().add_address(&peer, address);
                }
                Some(Command::Bootstrap(done)) => match swarm.behaviour_mut().bootstrap() {
                    Ok(id) => {
                        bootstraps.insert(id, done);
                    }
                    Err(_) => {
                        let _ = done.send(());
                    }
                },
                Some(Command::Store(record)) => {
                    let _ = swarm.behaviour_mut().store_mut().put(record);
                }
                Some(Command::Get(key, done)) => {
                    let id = swarm.behaviour_mut().get_record(key);
                    gets.insert(id, (Instant::now(), done));
                }
            },
            event = swarm.select_next_some() => {
                if let SwarmEvent::ConnectionEstablished { peer_id, endpoint: ConnectedPoint::Listener { .. }, .. } = event {
                    if let Some(index) = indices.get(&peer_id) {
                        swarm.behaviour_mut().add_address(&peer_id, address(base, *index));
                    }
                    continue;
                }
                let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed { id, result, stats, step }) = event else { continue };
                match result {
                    kad::QueryResult::Bootstrap(_) if step.last => {
                        if let Some(done) = bootstraps.remove(&id) {
                            let _ = done.send(());
                        }
                    }
                    kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(_))) => {
                        if let Some((began, done)) = gets.remove(&id) {
                            let _ = done.send(Lookup { found: Some(began.elapsed()), requests: stats.num_requests() as usize });
                        }
                        if let Some(mut query) = swarm.behaviour_mut().query_mut(&id) {
                            query.finish();
                        }
                    }
                    kad::QueryResult::GetRecord(_) if step.last => {
                        if let Some((_, done)) = gets.remove(&id) {
                            let _ = done.send(Lookup { found: None, requests: stats.num_requests() as usize });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Each of `started`'s answers, in order; the iterator starts the next (sends its command)
/// only while fewer than `at_once` are unanswered. `None` for one whose node went away.
async fn at_most<T>(at_once: usize, started: impl Iterator<Item = oneshot::Receiver<T>>) -> Vec<Option<T>> {
    let mut running = VecDeque::new();
    let mut answers = Vec::new();
    for answer in started {
        running.push_back(answer);
        if running.len() >= at_once {
            answers.push(running.pop_front().expect("one running").await.ok());
        }
    }
    for answer in running {
        answers.push(answer.await.ok());
    }
    answers
}

/// A network of `nodes` real swarms over `links`, built and bootstrapped.
struct Network {
    peers: Vec<PeerId>,
    commands: Vec<mpsc::UnboundedSender<Command>>,
    tasks: Vec<Option<tokio::task::JoinHandle<Node>>>,
    /// Frozen nodes' swarms, kept so that their listeners stay open and unanswered.
    frozen: Vec<Node>,
    pub online: Vec<bool>,
}

/// At most this many joins or lookups run at once: the swarms share two cores, and a
/// crowded scheduler would add its queueing to every latency.
const AT_ONCE: usize = 8;
const JOINS_AT_ONCE: usize = 64;

impl Network {
    pub async fn build(nodes: usize, seed: u64, links: Links, settings: Settings) -> Network {
        let base = NEXT_BASE.fetch_add(nodes as u64 + 1, std::sync::atomic::Ordering::Relaxed);
        let mut rng = links::rng(seed, 41);
        let mut network = Network { peers: Vec::new(), commands: Vec::new(), tasks: Vec::new(), frozen: Vec::new(), online: vec![true; nodes] };
        let keys: Vec<identity::Keypair> = (0..nodes)
            .map(|_| {
                let mut secret = [0u8; 32];
                rng.fill_bytes(&mut secret);
                identity::Keypair::ed25519_from_bytes(secret).expect("32 bytes make a key")
            })
            .collect();
        let indices: std::sync::Arc<HashMap<PeerId, usize>> = std::sync::Arc::new(keys.iter().enumerate().map(|(i, k)| (k.public().to_peer_id(), i)).collect());
        for (index, key) in keys.into_iter().enumerate() {
            let peer = key.public().to_peer_id();
            let mut swarm = swarm(base, index, key, links, settings);
            swarm.listen_on(address(base, index)).expect("a free memory port");
            let (send, receive) = mpsc::unbounded_channel();
            network.peers.push(peer);
            network.commands.push(send);
            network.tasks.push(Some(tokio::spawn(serve(swarm, base, receive, indices.clone()))));
        }
        // Join one after another, each through up to three earlier nodes.
        at_most(
            JOINS_AT_ONCE,
            (1..nodes).map(|index| {
                for _ in 0..3.min(index) {
                    let other = (rng.next_u64() % index as u64) as usize;
                    let _ = network.commands[index].send(Command::AddAddress(network.peers[other], address(base, other)));
                }
                network.bootstrap(index)
            }),
        )
        .await;
        // Once more for everyone, now that the network is whole.
        at_most(JOINS_AT_ONCE, (0..nodes).map(|index| network.bootstrap(index))).await;
        network
    }

    fn bootstrap(&self, index: usize) -> oneshot::Receiver<()> {
        let (send, receive) = oneshot::channel();
        let _ = self.commands[index].send(Command::Bootstrap(send));
        receive
    }

    /// The K nodes closest to `key`.
    pub fn holders(&self, key: &kad::RecordKey) -> Vec<usize> {
        let target = kad::KBucketKey::new(key.clone());
        let mut all: Vec<usize> = (0..self.peers.len()).collect();
        all.sort_by_key(|i| kad::KBucketKey::from(self.peers[*i]).distance(&target));
        all.truncate(K);
        all
    }

    /// Freezes nodes at random from `seed` (node 0 stays on) until about `share` are off; a
    /// larger share later freezes more of the same draw.
    pub async fn take_offline(&mut self, share: f64, seed: u64) {
        let mut rng = links::rng(seed, 43);
        for index in 1..self.peers.len() {
            if links::unit(&mut rng) < share && self.online[index] {
                self.online[index] = false;
                let _ = self.commands[index].send(Command::Freeze);
                if let Some(task) = self.tasks[index].take() {
                    self.frozen.push(task.await.expect("a swarm task"));
                }
            }
        }
    }

    /// Stores `count` fresh records at their K closest (all on), for later lookups.
    pub fn store(&self, count: usize, seed: u64) -> Vec<(kad::RecordKey, Vec<usize>)> {
        let mut rng = links::rng(seed, 45);
        (0..count)
            .map(|_| {
                let mut name = [0u8; 16];
                rng.fill_bytes(&mut name);
                let key = kad::RecordKey::new(&name);
                let holders = self.holders(&key);
                for holder in &holders {
                    let _ = self.commands[*holder].send(Command::Store(kad::Record::new(key.clone(), b"presence".to_vec())));
                }
                (key, holders)
            })
            .collect()
    }

    /// Looks each record up from a random online node that does not hold it, [`AT_ONCE`]
    /// at a time.
    pub async fn lookups(&mut self, records: Vec<(kad::RecordKey, Vec<usize>)>, seed: u64) -> Vec<Lookup> {
        let mut rng = links::rng(seed, 47);
        let online: Vec<usize> = (0..self.peers.len()).filter(|i| self.online[*i]).collect();
        let started = records.into_iter().map(|(key, holders)| {
            let asker = crate::dht::asker(&mut rng, &online, &holders);
            let (send, receive) = oneshot::channel();
            let _ = self.commands[asker].send(Command::Get(key, send));
            receive
        });
        at_most(AT_ONCE, started).await.into_iter().map(|lookup| lookup.unwrap_or(Lookup { found: None, requests: 0 })).collect()
    }
}

/// What one calibration measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// How long the network took to build (wall clock).
    pub build: Duration,
    /// The lookups at each share of nodes off.
    pub runs: Vec<Vec<Lookup>>,
}

/// Builds a network of `nodes` swarms and, for each share in `offline` (ascending), takes
/// that share of nodes off and runs `count` lookups of records stored while all were on.
pub fn calibrate(nodes: usize, offline: &[f64], count: usize, seed: u64, links: Links, settings: Settings) -> Measured {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let began = std::time::Instant::now();
        let mut network = Network::build(nodes, seed, links, settings).await;
        let build = began.elapsed();
        let mut stored: Vec<Vec<(kad::RecordKey, Vec<usize>)>> = offline.iter().enumerate().map(|(i, _)| network.store(count, seed + i as u64)).collect();
        let mut runs = Vec::new();
        for (i, share) in offline.iter().enumerate() {
            network.take_offline(*share, seed).await;
            runs.push(network.lookups(std::mem::take(&mut stored[i]), seed + i as u64).await);
        }
        Measured { build, runs }
    })
}
