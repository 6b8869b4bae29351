//! The resolver, sans-IO: a query from a member comes in as bytes, answers and upstream queries
//! go out as [`Transmit`]s, answers from upstreams come back in, and [`Resolver::poll_timeout`]
//! says when to call [`Resolver::handle_timeout`] (retries, the next upstream, SERVFAIL). No
//! sockets, no clock reads, randomness from a seeded RNG. hickory-proto parses and writes
//! every message (no hand-rolled DNS wire code).
//!
//! What it decides: device names under `pal.internal` (A and AAAA from the log); blocking (a
//! listed name or parent gets `0.0.0.0` / `::`, never sent upstream; an upstream answer whose
//! CNAME chain reaches a listed name is blocked too); a TTL-honouring cache; spoofed or stray
//! upstream answers ignored (random query ids, the question checked); answers naming private
//! addresses for internet names dropped (DNS-06); the addresses of names a firewall domain rule
//! covers handed to the exit ([`Resolved`]). It keeps no record of who asked what.

use super::blocklist::BlockList;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The network's own zone.
pub const ZONE: &str = "pal.internal";
/// TTL of device names (they change only with the log).
const LOCAL_TTL: u32 = 60;
/// TTL of blocked answers.
const BLOCKED_TTL: u32 = 300;
/// How long one upstream gets before the next one is asked.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Cache bounds: entries, and the longest a positive or negative answer is kept.
const MAX_CACHE: usize = 10_000;
const MAX_TTL: u32 = 86_400;
const NEGATIVE_TTL: u32 = 60;
/// Queries waiting for upstreams at once (beyond this, SERVFAIL at once: no amplification).
const MAX_PENDING: usize = 1024;
/// A UDP answer larger than this (or the client's EDNS size) is truncated (TC set).
const UDP_DEFAULT_SIZE: usize = 512;

/// Who asked: a UDP source, or a TCP connection of the shell's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    Udp(SocketAddr),
    Tcp(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// An answer for a client.
    Answer { client: Client, bytes: Vec<u8> },
    /// A query for upstream number `upstream` (an index into the configured list).
    Upstream { upstream: usize, bytes: Vec<u8> },
}

/// Addresses a name resolved to, for a firewall domain rule at the exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The rule's domain.
    pub rule: String,
    pub addresses: Vec<IpAddr>,
    pub ttl: Duration,
}

/// What the resolver knows of the network and its policy.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Device names (lower case) and their overlay addresses.
    pub devices: BTreeMap<String, (Ipv4Addr, Ipv6Addr)>,
    /// Who may ask: members' overlay addresses.
    pub clients: HashSet<IpAddr>,
    /// The upstreams in order of preference, as the shell names them (the core only picks an
    /// index; the shell knows how to reach each).
    pub upstreams: Vec<String>,
    /// Domains of the firewall's allow and deny rules.
    pub rule_domains: Vec<String>,
    /// The owner switched logging on: keep the last [`QUERY_LOG_LEN`] queries in memory.
    pub log_queries: bool,
}

/// Queries the in-memory log keeps (logging on only; never written to disk).
pub const QUERY_LOG_LEN: usize = 1000;

/// One line of the query log: who asked what, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoggedQuery {
    pub seconds_ago: u64,
    pub client: IpAddr,
    pub name: String,
    pub kind: String,
    pub outcome: String,
}

#[derive(Debug)]
struct Pending {
    question: Query,
    waiters: Vec<(Client, u16, usize)>,
    upstream: usize,
    tried: usize,
    deadline: Instant,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Cached {
    code: ResponseCode,
    answers: Vec<Record>,
    stored: Instant,
    expires: Instant,
}

#[derive(Debug)]
pub struct Resolver {
    settings: Settings,
    blocks: BlockList,
    rng: ChaCha20Rng,
    pending: HashMap<u16, Pending>,
    /// Questions in flight, to coalesce identical ones.
    in_flight: HashMap<(Name, RecordType), u16>,
    cache: HashMap<(Name, RecordType), Cached>,
    transmits: VecDeque<Transmit>,
    resolved: VecDeque<Resolved>,
    stats: Stats,
    query_log: VecDeque<(Instant, IpAddr, String, RecordType, &'static str)>,
}

/// Counters (never names): for `pal exit status` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub queries: u64,
    pub blocked: u64,
    pub cache_hits: u64,
    pub forwarded: u64,
    pub refused: u64,
    pub malformed: u64,
    pub stray_answers: u64,
    pub failures: u64,
}

impl Resolver {
    pub fn new(settings: Settings, blocks: BlockList, rng: ChaCha20Rng) -> Self {
        Self {
            settings,
            blocks,
            rng,
            pending: HashMap::new(),
            in_flight: HashMap::new(),
            cache: HashMap::new(),
            transmits: VecDeque::new(),
            resolved: VecDeque::new(),
            stats: Stats::default(),
            query_log: VecDeque::new(),
        }
    }

    /// The query log, newest last (empty unless the policy turned logging on).
    pub fn query_log(&self, now: Instant) -> Vec<LoggedQuery> {
        self.query_log
            .iter()
            .map(|(at, client, name, kind, outcome)| LoggedQuery {
                seconds_ago: now.saturating_duration_since(*at).as_secs(),
                client: *client,
                name: name.clone(),
                kind: kind.to_string(),
                outcome: (*outcome).to_owned(),
            })
            .collect()
    }

    fn log_query(&mut self, now: Instant, client: IpAddr, name: &str, kind: RecordType, outcome: &'static str) {
        if !self.settings.log_queries {
            return;
        }
        if self.query_log.len() >= QUERY_LOG_LEN {
            self.query_log.pop_front();
        }
        self.query_log.push_back((now, client, name.to_owned(), kind, outcome));
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// New settings from the log; a change of upstreams or rules empties the cache.
    pub fn set_settings(&mut self, settings: Settings) {
        if settings.upstreams != self.settings.upstreams || settings.rule_domains != self.settings.rule_domains {
            self.cache.clear();
        }
        if !settings.log_queries {
            self.query_log.clear();
        }
        self.settings = settings;
    }

    pub fn set_block_list(&mut self, blocks: BlockList) {
        self.blocks = blocks;
        self.cache.clear();
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_resolved(&mut self) -> Option<Resolved> {
        self.resolved.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// A query from `client`. Only members' overlay addresses are answered (DNS-01).
    pub fn handle_query(&mut self, client: Client, source: IpAddr, bytes: &[u8], now: Instant) {
        if !self.settings.clients.contains(&source) {
            self.stats.refused += 1;
            return;
        }
        let Ok(query) = Message::from_vec(bytes) else {
            self.stats.malformed += 1;
            // A header we can read gets FORMERR; anything shorter, silence.
            if bytes.len() >= 2 {
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                self.answer(client, Message::error_msg(id, OpCode::Query, ResponseCode::FormErr), UDP_DEFAULT_SIZE);
            }
            return;
        };
        let id = query.metadata.id;
        if query.metadata.message_type != MessageType::Query {
            self.stats.malformed += 1;
            return;
        }
        if query.metadata.op_code != OpCode::Query || query.queries.len() != 1 {
            self.stats.malformed += 1;
            self.answer(client, Message::error_msg(id, query.metadata.op_code, ResponseCode::NotImp), UDP_DEFAULT_SIZE);
            return;
        }
        self.stats.queries += 1;
        let max = match client {
            Client::Udp(_) => query.edns.as_ref().map_or(UDP_DEFAULT_SIZE, |e| usize::from(e.max_payload()).clamp(UDP_DEFAULT_SIZE, 4096)),
            Client::Tcp(_) => usize::from(u16::MAX),
        };
        let question = query.queries[0].clone();
        let name = lower(question.name());
        if membership::policy::name_within(&name, ZONE) {
            self.log_query(now, source, &name, question.query_type(), "device name");
            let reply = self.local_answer(id, &question, &name);
            return self.answer(client, reply, max);
        }
        if self.blocks.blocks(&name) {
            self.log_query(now, source, &name, question.query_type(), "blocked");
            self.stats.blocked += 1;
            let reply = blocked_answer(id, &question);
            return self.answer(client, reply, max);
        }
        let key = (question.name().to_lowercase(), question.query_type());
        self.log_query(now, source, &name, question.query_type(), "resolved");
        if let Some(cached) = self.cache.get(&key).filter(|c| c.expires > now) {
            self.stats.cache_hits += 1;
            let age = now.saturating_duration_since(cached.stored).as_secs() as u32;
            let mut reply = response(id, &question, cached.code);
            reply.answers = cached.answers.iter().cloned().map(|mut r| {
                r.ttl = r.ttl.saturating_sub(age);
                r
            }).collect();
            return self.answer(client, reply, max);
        }
        if let Some(pending) = self.in_flight.get(&key).and_then(|upstream_id| self.pending.get_mut(upstream_id)) {
            pending.waiters.push((client, id, max));
            return;
        }
        if self.settings.upstreams.is_empty() || self.pending.len() >= MAX_PENDING {
            self.stats.failures += 1;
            return self.answer(client, response(id, &question, ResponseCode::ServFail), max);
        }
        let upstream_id = loop {
            let candidate = self.rng.next_u32() as u16;
            if !self.pending.contains_key(&candidate) {
                break candidate;
            }
        };
        let mut ask = Message::query();
        ask.metadata.id = upstream_id;
        ask.metadata.recursion_desired = true;
        ask.add_query(question.clone());
        let Ok(bytes) = ask.to_vec() else { return };
        let upstream = 0;
        self.stats.forwarded += 1;
        self.transmits.push_back(Transmit::Upstream { upstream, bytes: bytes.clone() });
        self.in_flight.insert(key, upstream_id);
        self.pending.insert(upstream_id, Pending { question, waiters: vec![(client, id, max)], upstream, tried: 1, deadline: now + UPSTREAM_TIMEOUT, bytes });
    }

    /// An answer from upstream `upstream`. Anything not matching a query in flight — wrong id,
    /// wrong upstream, another question — is dropped (DNS-02).
    pub fn handle_upstream(&mut self, upstream: usize, bytes: &[u8], now: Instant) {
        let Ok(answer) = Message::from_vec(bytes) else {
            self.stats.stray_answers += 1;
            return;
        };
        let id = answer.metadata.id;
        let matches = self.pending.get(&id).is_some_and(|p| {
            p.upstream == upstream
                && answer.metadata.message_type == MessageType::Response
                && answer.queries.len() == 1
                && answer.queries[0].query_type() == p.question.query_type()
                && lower(answer.queries[0].name()) == lower(p.question.name())
        });
        if !matches {
            self.stats.stray_answers += 1;
            return;
        }
        let Some(pending) = self.pending.remove(&id) else { return };
        let key = (pending.question.name().to_lowercase(), pending.question.query_type());
        self.in_flight.remove(&key);
        let mut code = answer.metadata.response_code;
        let mut records: Vec<Record> = answer.answers.clone();
        // A CNAME chain that reaches a listed name is blocked like the name itself (DNS-03).
        let chain_blocked = records.iter().any(|r| matches!(&r.data, RData::CNAME(target) if self.blocks.blocks(&lower(&target.0))));
        if chain_blocked {
            self.stats.blocked += 1;
            let reply_template = blocked_answer(0, &pending.question);
            for (client, client_id, max) in pending.waiters {
                let mut reply = reply_template.clone();
                reply.metadata.id = client_id;
                self.answer(client, reply, max);
            }
            return;
        }
        // Rebinding (DNS-06): an internet name never answers with a private address.
        let before = records.len();
        records.retain(|r| !address_of(r).is_some_and(is_private));
        if records.len() != before && !records.iter().any(|r| address_of(r).is_some()) {
            code = ResponseCode::NoError;
        }
        let ttl = match code {
            ResponseCode::NoError if !records.is_empty() => records.iter().map(|r| r.ttl).min().unwrap_or(0).min(MAX_TTL),
            ResponseCode::NoError | ResponseCode::NXDomain => NEGATIVE_TTL,
            _ => 0,
        };
        self.note_resolved(&pending.question, &records, ttl);
        if ttl > 0 && !answer.metadata.truncation {
            if self.cache.len() >= MAX_CACHE {
                self.cache.retain(|_, c| c.expires > now);
                if self.cache.len() >= MAX_CACHE {
                    self.cache.clear();
                }
            }
            self.cache.insert(key, Cached { code, answers: records.clone(), stored: now, expires: now + Duration::from_secs(u64::from(ttl)) });
        }
        for (client, client_id, max) in pending.waiters {
            let mut reply = response(client_id, &pending.question, code);
            reply.answers = records.clone();
            reply.metadata.truncation = answer.metadata.truncation;
            self.answer(client, reply, max);
        }
    }

    /// Retries on the next upstream; SERVFAIL when every one was tried.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u16> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            let Some(mut pending) = self.pending.remove(&id) else { continue };
            let count = self.settings.upstreams.len();
            if pending.tried < count {
                pending.upstream = (pending.upstream + 1) % count;
                pending.tried += 1;
                pending.deadline = now + UPSTREAM_TIMEOUT;
                self.transmits.push_back(Transmit::Upstream { upstream: pending.upstream, bytes: pending.bytes.clone() });
                self.pending.insert(id, pending);
                continue;
            }
            self.in_flight.remove(&(pending.question.name().to_lowercase(), pending.question.query_type()));
            self.stats.failures += 1;
            for (client, client_id, max) in pending.waiters {
                self.answer(client, response(client_id, &pending.question, ResponseCode::ServFail), max);
            }
        }
    }

    fn local_answer(&self, id: u16, question: &Query, name: &str) -> Message {
        let label = name.strip_suffix(ZONE).unwrap_or("").trim_end_matches('.');
        let Some((v4, v6)) = self.settings.devices.get(label) else {
            return response(id, question, ResponseCode::NXDomain);
        };
        let mut reply = address_answer(id, question, LOCAL_TTL, *v4, *v6);
        reply.metadata.authoritative = true;
        reply
    }

    /// Addresses of a name a firewall domain rule covers (the name itself or any name of the
    /// CNAME chain), for the exit's sets.
    fn note_resolved(&mut self, question: &Query, records: &[Record], ttl: u32) {
        if self.settings.rule_domains.is_empty() {
            return;
        }
        let mut names = vec![lower(question.name())];
        names.extend(records.iter().filter_map(|r| if let RData::CNAME(target) = &r.data { Some(lower(&target.0)) } else { None }));
        let addresses: Vec<IpAddr> = records.iter().filter_map(address_of).collect();
        if addresses.is_empty() {
            return;
        }
        for rule in &self.settings.rule_domains {
            if names.iter().any(|n| membership::policy::name_within(n, rule)) {
                self.resolved.push_back(Resolved { rule: rule.clone(), addresses: addresses.clone(), ttl: Duration::from_secs(u64::from(ttl.max(NEGATIVE_TTL))) });
            }
        }
    }

    fn answer(&mut self, client: Client, mut reply: Message, max: usize) {
        let Ok(mut bytes) = reply.to_vec() else { return };
        if bytes.len() > max {
            reply.answers.clear();
            reply.authorities.clear();
            reply.additionals.clear();
            reply.metadata.truncation = true;
            let Ok(short) = reply.to_vec() else { return };
            bytes = short;
        }
        self.transmits.push_back(Transmit::Answer { client, bytes });
    }
}

fn response(id: u16, question: &Query, code: ResponseCode) -> Message {
    let mut reply = Message::response(id, OpCode::Query);
    reply.metadata.recursion_desired = true;
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = code;
    reply.add_query(question.clone());
    reply
}

/// A blocked name's answer: `0.0.0.0` for A, `::` for AAAA, an empty NOERROR for other types
/// (Pi-hole's default "NULL" mode: apps fail at once instead of retrying).
fn blocked_answer(id: u16, question: &Query) -> Message {
    address_answer(id, question, BLOCKED_TTL, Ipv4Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED)
}

/// A NOERROR answer holding `v4` for an A question, `v6` for AAAA, nothing for other types.
fn address_answer(id: u16, question: &Query, ttl: u32, v4: Ipv4Addr, v6: Ipv6Addr) -> Message {
    let mut reply = response(id, question, ResponseCode::NoError);
    let data = match question.query_type() {
        RecordType::A => RData::A(A(v4)),
        RecordType::AAAA => RData::AAAA(AAAA(v6)),
        _ => return reply,
    };
    reply.answers.push(Record::from_rdata(question.name().clone(), ttl, data));
    reply
}

/// The address an A or AAAA record holds.
fn address_of(record: &Record) -> Option<IpAddr> {
    match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// A name as text: lower case, no trailing dot.
fn lower(name: &Name) -> String {
    let text = name.to_ascii().to_ascii_lowercase();
    text.strip_suffix('.').map(str::to_owned).unwrap_or(text)
}

/// Addresses an internet name must not resolve to (RFC 1918, CGNAT and the overlay, loopback,
/// link-local, ULA, unspecified).
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::CNAME;
    use rand_core::SeedableRng;

    const MEMBER: &str = "100.64.0.2";

    fn client() -> (Client, IpAddr) {
        (Client::Udp(SocketAddr::new(MEMBER.parse().expect("ip"), 40000)), MEMBER.parse().expect("ip"))
    }

    fn resolver(blocked: &str) -> Resolver {
        let mut blocks = BlockList::default();
        blocks.add_text(blocked);
        let settings = Settings {
            devices: BTreeMap::from([("phone".to_owned(), (Ipv4Addr::new(100, 64, 0, 3), "fd7a::3".parse().expect("v6")))]),
            clients: HashSet::from([MEMBER.parse().expect("ip")]),
            upstreams: vec!["udp://192.0.2.53:53".into(), "udp://198.51.100.53:53".into()],
            rule_domains: vec!["example.org".into()],
            log_queries: false,
        };
        Resolver::new(settings, blocks, ChaCha20Rng::seed_from_u64(1))
    }

    fn query(id: u16, name: &str, kind: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = id;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        message.to_vec().expect("encodes")
    }

    fn answers(resolver: &mut Resolver) -> Vec<Message> {
        std::iter::from_fn(|| resolver.poll_transmit())
            .filter_map(|t| if let Transmit::Answer { bytes, .. } = t { Message::from_vec(&bytes).ok() } else { None })
            .collect()
    }

    fn upstream_queries(resolver: &mut Resolver) -> Vec<(usize, Message)> {
        std::iter::from_fn(|| resolver.poll_transmit())
            .filter_map(|t| if let Transmit::Upstream { upstream, bytes } = t { Message::from_vec(&bytes).ok().map(|m| (upstream, m)) } else { None })
            .collect()
    }

    fn upstream_reply(asked: &Message, records: Vec<Record>) -> Vec<u8> {
        let mut reply = Message::response(asked.metadata.id, OpCode::Query);
        reply.add_query(asked.queries[0].clone());
        reply.answers = records;
        reply.to_vec().expect("encodes")
    }

    fn a(name: &str, ip: [u8; 4], ttl: u32) -> Record {
        Record::from_rdata(Name::from_ascii(name).expect("name"), ttl, RData::A(A(Ipv4Addr::from(ip))))
    }

    #[test]
    fn device_names_answer_from_the_log_and_unknown_ones_are_nxdomain() {
        let mut r = resolver("");
        let (c, ip) = client();
        let now = Instant::now();
        r.handle_query(c, ip, &query(7, "phone.pal.internal.", RecordType::A), now);
        r.handle_query(c, ip, &query(8, "PHONE.pal.internal.", RecordType::AAAA), now);
        r.handle_query(c, ip, &query(9, "laptop.pal.internal.", RecordType::A), now);
        let replies = answers(&mut r);
        assert_eq!(replies[0].metadata.id, 7);
        assert_eq!(replies[0].answers[0].data, RData::A(A(Ipv4Addr::new(100, 64, 0, 3))));
        assert!(matches!(replies[1].answers[0].data, RData::AAAA(_)));
        assert_eq!(replies[2].metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.stats().forwarded, 0, "the network's own names never go upstream");
    }

    #[test]
    fn dns_01_only_members_are_answered_and_garbage_gets_formerr_or_silence() {
        let mut r = resolver("");
        let stranger: IpAddr = "203.0.113.9".parse().expect("ip");
        r.handle_query(Client::Udp(SocketAddr::new(stranger, 5353)), stranger, &query(1, "example.com.", RecordType::A), Instant::now());
        assert_eq!(r.poll_transmit(), None, "a non-member got an answer (or made us ask upstream)");
        let (c, ip) = client();
        r.handle_query(c, ip, &[0x12, 0x34, 0xff], Instant::now());
        assert_eq!(answers(&mut r)[0].metadata.response_code, ResponseCode::FormErr);
        r.handle_query(c, ip, &[0x12], Instant::now());
        assert_eq!(r.poll_transmit(), None);
    }

    #[test]
    fn dns_03_listed_names_parents_and_cname_chains_are_blocked_and_never_asked_upstream() {
        let mut r = resolver("0.0.0.0 ads.example.com\ntracker.example.net\n");
        let (c, ip) = client();
        let now = Instant::now();
        r.handle_query(c, ip, &query(1, "x.ADS.example.com.", RecordType::A), now);
        r.handle_query(c, ip, &query(2, "ads.example.com", RecordType::AAAA), now);
        let replies = answers(&mut r);
        assert_eq!(replies[0].answers[0].data, RData::A(A(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(replies[1].answers[0].data, RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED)));
        assert_eq!(r.stats().forwarded, 0);

        r.handle_query(c, ip, &query(3, "innocent.example.com.", RecordType::A), now);
        let asked = upstream_queries(&mut r);
        let cname = Record::from_rdata(Name::from_ascii("innocent.example.com.").expect("n"), 300, RData::CNAME(CNAME(Name::from_ascii("cdn.tracker.example.net.").expect("n"))));
        r.handle_upstream(0, &upstream_reply(&asked[0].1, vec![cname, a("cdn.tracker.example.net.", [203, 0, 113, 7], 300)]), now);
        let reply = &answers(&mut r)[0];
        assert_eq!(reply.metadata.id, 3);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.answers[0].data, RData::A(A(Ipv4Addr::UNSPECIFIED)), "a CNAME to a listed name got through");
    }

    #[test]
    fn answers_are_cached_for_their_ttl_and_identical_questions_share_one_upstream_query() {
        let mut r = resolver("");
        let (c, ip) = client();
        let now = Instant::now();
        r.handle_query(c, ip, &query(1, "example.com.", RecordType::A), now);
        r.handle_query(c, ip, &query(2, "EXAMPLE.com.", RecordType::A), now);
        let asked = upstream_queries(&mut r);
        assert_eq!(asked.len(), 1, "two identical questions, one upstream query");
        r.handle_upstream(0, &upstream_reply(&asked[0].1, vec![a("example.com.", [192, 0, 2, 80], 30)]), now);
        let replies = answers(&mut r);
        assert_eq!(replies.iter().map(|m| m.metadata.id).collect::<Vec<_>>(), vec![1, 2]);
        r.handle_query(c, ip, &query(3, "example.com.", RecordType::A), now + Duration::from_secs(10));
        let cached = &answers(&mut r)[0];
        assert_eq!(cached.answers[0].ttl, 20, "the cache counts the TTL down");
        assert_eq!(r.stats().cache_hits, 1);
        r.handle_query(c, ip, &query(4, "example.com.", RecordType::A), now + Duration::from_secs(31));
        assert_eq!(upstream_queries(&mut r).len(), 1, "an expired answer is asked again");
    }

    #[test]
    fn dns_02_spoofed_answers_wrong_id_upstream_or_question_do_not_poison_the_cache() {
        let mut r = resolver("");
        let (c, ip) = client();
        let now = Instant::now();
        r.handle_query(c, ip, &query(1, "bank.example.", RecordType::A), now);
        let asked = upstream_queries(&mut r);
        let mut forged = asked[0].1.clone();
        forged.metadata.id = forged.metadata.id.wrapping_add(1);
        r.handle_upstream(0, &upstream_reply(&forged, vec![a("bank.example.", [198, 51, 100, 66], 3600)]), now);
        r.handle_upstream(1, &upstream_reply(&asked[0].1, vec![a("bank.example.", [198, 51, 100, 66], 3600)]), now);
        let mut other = asked[0].1.clone();
        other.queries[0] = Query::query(Name::from_ascii("evil.example.").expect("n"), RecordType::A);
        r.handle_upstream(0, &upstream_reply(&other, vec![a("bank.example.", [198, 51, 100, 66], 3600)]), now);
        assert!(answers(&mut r).is_empty(), "a forged answer reached the client");
        assert_eq!(r.stats().stray_answers, 3);
        r.handle_upstream(0, &upstream_reply(&asked[0].1, vec![a("bank.example.", [192, 0, 2, 10], 60)]), now);
        assert_eq!(answers(&mut r)[0].answers[0].data, RData::A(A(Ipv4Addr::new(192, 0, 2, 10))));
    }

    #[test]
    fn a_silent_upstream_is_replaced_by_the_next_and_then_servfail() {
        let mut r = resolver("");
        let (c, ip) = client();
        let now = Instant::now();
        r.handle_query(c, ip, &query(5, "slow.example.", RecordType::A), now);
        assert_eq!(upstream_queries(&mut r)[0].0, 0);
        let deadline = r.poll_timeout().expect("a deadline");
        assert_eq!(deadline, now + UPSTREAM_TIMEOUT);
        r.handle_timeout(deadline);
        assert_eq!(upstream_queries(&mut r)[0].0, 1, "the second upstream is asked");
        r.handle_timeout(deadline + UPSTREAM_TIMEOUT);
        assert_eq!(answers(&mut r)[0].metadata.response_code, ResponseCode::ServFail);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn dns_06_an_internet_name_never_resolves_to_a_private_address() {
        let mut r = resolver("");
        let (c, ip) = client();
        let now = Instant::now();
        r.handle_query(c, ip, &query(1, "rebind.example.", RecordType::A), now);
        let asked = upstream_queries(&mut r);
        r.handle_upstream(0, &upstream_reply(&asked[0].1, vec![a("rebind.example.", [192, 168, 1, 1], 60), a("rebind.example.", [100, 64, 0, 3], 60)]), now);
        assert!(answers(&mut r)[0].answers.is_empty());
    }

    #[test]
    fn names_a_firewall_rule_covers_hand_their_addresses_to_the_exit() {
        let mut r = resolver("");
        let (c, ip) = client();
        let now = Instant::now();
        r.handle_query(c, ip, &query(1, "www.example.org.", RecordType::A), now);
        let asked = upstream_queries(&mut r);
        r.handle_upstream(0, &upstream_reply(&asked[0].1, vec![a("www.example.org.", [198, 51, 100, 20], 120)]), now);
        let resolved = r.poll_resolved().expect("resolved");
        assert_eq!(resolved.rule, "example.org");
        assert_eq!(resolved.addresses, vec![IpAddr::from([198, 51, 100, 20])]);
        assert_eq!(resolved.ttl, Duration::from_secs(120));
        r.handle_query(c, ip, &query(2, "example.com.", RecordType::A), now);
        let asked = upstream_queries(&mut r);
        r.handle_upstream(0, &upstream_reply(&asked[0].1, vec![a("example.com.", [198, 51, 100, 21], 120)]), now);
        assert_eq!(r.poll_resolved(), None, "a name no rule covers");
    }

    #[test]
    fn priv_01_no_query_is_kept_unless_logging_is_on_and_then_only_the_last_thousand() {
        let mut r = resolver("ads.example.com\n");
        let (c, ip) = client();
        let now = Instant::now();
        r.handle_query(c, ip, &query(1, "ads.example.com.", RecordType::A), now);
        assert!(r.query_log(now).is_empty(), "a query was kept with logging off");
        let mut settings = r.settings.clone();
        settings.log_queries = true;
        r.set_settings(settings.clone());
        for i in 0..(QUERY_LOG_LEN + 5) {
            r.handle_query(c, ip, &query(i as u16, "ads.example.com.", RecordType::A), now);
        }
        let log = r.query_log(now + Duration::from_secs(3));
        assert_eq!(log.len(), QUERY_LOG_LEN);
        assert_eq!((log[0].name.as_str(), log[0].outcome.as_str(), log[0].seconds_ago), ("ads.example.com", "blocked", 3));
        settings.log_queries = false;
        r.set_settings(settings);
        assert!(r.query_log(now).is_empty(), "turning logging off must forget the log");
    }

    #[test]
    fn an_answer_too_big_for_udp_is_truncated() {
        let mut r = resolver("");
        let (c, ip) = client();
        let now = Instant::now();
        r.handle_query(c, ip, &query(1, "big.example.", RecordType::A), now);
        let asked = upstream_queries(&mut r);
        let many = (0..60).map(|i| a("big.example.", [198, 51, 100, i], 60)).collect();
        r.handle_upstream(0, &upstream_reply(&asked[0].1, many), now);
        let reply = &answers(&mut r)[0];
        assert!(reply.metadata.truncation && reply.answers.is_empty());
    }
}
