//! Prometheus metrics, off unless `pal up --metrics ADDR:PORT`: counts of peers and paths,
//! bytes, handshakes, what the data plane refused and why, relay duty and birthday punches.
//! Never an address, a name or a key: a label is a path kind or a drop reason, nothing else.
//!
//! [`render`] is pure (the text exposition format, version 0.0.4); [`serve`] is the thin HTTP
//! shell (hyper), which asks the node for a fresh view per scrape through the same queue as
//! the control socket.

use crate::control_api::socket::Incoming;
use crate::control_api::{ControlRequest, ControlResponse};
use crate::dataplane::DataView;
use protocol::paths::PathKind;
use std::fmt::Write;
use std::net::SocketAddr;
use tokio::sync::{mpsc, oneshot};

/// The exposition of one data-plane view.
pub fn render(view: &DataView) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP pal_{name} {help}\n# TYPE pal_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "pal_{name}{labels} {value}");
        }
    };
    let peers = view.peers.values();
    let count = |path: PathKind| view.peers.values().filter(|p| p.path == path).count() as u64;
    metric("peers", "gauge", "Peers the data plane knows.", &[("", view.peers.len() as u64)]);
    metric(
        "peer_paths",
        "gauge",
        "Peers by the path their traffic takes now.",
        &[("{path=\"direct\"}", count(PathKind::Direct)), ("{path=\"relay\"}", count(PathKind::Relay)), ("{path=\"relay-tcp\"}", count(PathKind::RelayTcp)), ("{path=\"none\"}", count(PathKind::None))],
    );
    let sum = |field: fn(&protocol::TunnelStats) -> u64| peers.clone().map(|p| field(&p.stats)).sum::<u64>();
    metric("rx_bytes_total", "counter", "Bytes received from peers, tunnel overhead included.", &[("", sum(|s| s.rx_bytes))]);
    metric("tx_bytes_total", "counter", "Bytes sent to peers, tunnel overhead included.", &[("", sum(|s| s.tx_bytes))]);
    metric("handshakes_total", "counter", "Handshakes completed.", &[("", sum(|s| s.handshakes_completed))]);
    metric("handshakes_given_up_total", "counter", "Handshakes abandoned without an answer.", &[("", sum(|s| s.handshakes_given_up))]);
    let d = view.stats;
    metric(
        "dropped_total",
        "counter",
        "Datagrams and packets refused, by reason.",
        &[
            ("{reason=\"malformed\"}", d.rx_malformed),
            ("{reason=\"invalid_mac1\"}", d.rx_invalid_mac1),
            ("{reason=\"rate_limited\"}", d.rx_rate_limited),
            ("{reason=\"handshake_failed\"}", d.rx_handshake_failed),
            ("{reason=\"unknown_peer\"}", d.rx_unknown_peer),
            ("{reason=\"unauthorized\"}", d.rx_unauthorized),
            ("{reason=\"unknown_index\"}", d.rx_unknown_index),
            ("{reason=\"source_not_allowed\"}", d.rx_source_not_allowed),
            ("{reason=\"guest_not_shared\"}", d.rx_guest_refused + d.tx_guest_refused),
            ("{reason=\"replay\"}", sum(|s| s.rx_replay)),
            ("{reason=\"invalid_tag\"}", sum(|s| s.rx_invalid)),
            ("{reason=\"queue_full\"}", sum(|s| s.queued_dropped)),
        ],
    );
    metric("cookie_replies_total", "counter", "Cookie replies sent under load.", &[("", d.cookie_replies_sent)]);
    metric(
        "relay_envelopes_total",
        "counter",
        "Relay duty (CloudPal): envelopes by outcome.",
        &[
            ("{outcome=\"forwarded\"}", d.relay_forwarded),
            ("{outcome=\"refused\"}", d.relay_refused),
            ("{outcome=\"over_quota\"}", d.relay_over_quota),
            ("{outcome=\"replayed\"}", d.relay_replayed),
            ("{outcome=\"keepalive\"}", d.relay_keepalives),
        ],
    );
    metric(
        "birthday_punches_total",
        "counter",
        "Birthday punches: attempts behind our symmetric NAT, sprays toward peers behind one, and their probes.",
        &[("{part=\"opened\"}", d.punch_opened), ("{part=\"sprays\"}", d.punch_sprays), ("{part=\"probes\"}", d.punch_probes)],
    );
    out
}

/// One of the exit's counters: its name in the ruleset, packets and bytes.
pub type ExitCounter = (String, u64, u64);

/// The exit's counters (`nft -j list counters table inet pal_exit`), as read from the JSON;
/// anything not a pal exit counter is skipped.
pub fn parse_exit_counters(json: &str) -> Vec<ExitCounter> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else { return Vec::new() };
    value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let counter = item.get("counter")?;
            let name = counter["name"].as_str()?;
            crate::exit::ruleset::EXIT_COUNTERS.contains(&name).then(|| (name.to_owned(), counter["packets"].as_u64().unwrap_or(0), counter["bytes"].as_u64().unwrap_or(0)))
        })
        .collect()
}

/// CloudPal's exit counters in the exposition: packets and bytes by verdict (what members
/// sent out, what came back, and each reason the exit refused). Counts only, no address.
/// They start again from zero when a policy change replaces the exit's ruleset.
pub fn render_exit(counters: &[ExitCounter]) -> String {
    let mut out = String::new();
    for (metric, help, pick) in [
        ("exit_packets_total", "CloudPal's exit: packets by verdict.", 1usize),
        ("exit_bytes_total", "CloudPal's exit: bytes by verdict.", 2usize),
    ] {
        let _ = writeln!(out, "# HELP pal_{metric} {help}\n# TYPE pal_{metric} counter");
        // Two rules share a counter where a family needs two (v4, v6): summed by name.
        let mut sums: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for (name, packets, bytes) in counters {
            *sums.entry(name.strip_prefix("exit_").unwrap_or(name)).or_default() += if pick == 1 { *packets } else { *bytes };
        }
        for (verdict, value) in sums {
            let _ = writeln!(out, "pal_{metric}{{verdict=\"{verdict}\"}} {value}");
        }
    }
    out
}

/// Reads the exit's counters from nftables (`None` when there is no exit table yet).
pub fn read_exit_counters() -> Option<Vec<ExitCounter>> {
    let output = std::process::Command::new("nft").args(["-j", "list", "counters", "table", "inet", crate::exit::EXIT_TABLE]).output().ok()?;
    output.status.success().then(|| parse_exit_counters(&String::from_utf8_lossy(&output.stdout)))
}

/// Serves `GET /metrics` on `listener` until the node stops, asking the node (through
/// `node`, the control queue) for each scrape's text.
pub async fn serve(listener: tokio::net::TcpListener, node: mpsc::Sender<Incoming>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let node = node.clone();
                async move {
                    let response = if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
                        let (reply, answer) = oneshot::channel();
                        let text = match node.send((ControlRequest::Metrics, reply)).await {
                            Ok(()) => match answer.await {
                                Ok(ControlResponse::Ok(value)) => value.as_str().map(str::to_owned),
                                _ => None,
                            },
                            Err(_) => None,
                        };
                        match text {
                            Some(text) => hyper::Response::builder().header("content-type", "text/plain; version=0.0.4").body(Full::new(Bytes::from(text))),
                            None => hyper::Response::builder().status(503).body(Full::new(Bytes::from_static(b"the node is busy\n"))),
                        }
                    } else {
                        hyper::Response::builder().status(404).body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                    };
                    response.map_err(std::io::Error::other)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// Binds the metrics listener (an error here stops `pal up` with one line).
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await.map_err(|error| anyhow::anyhow!("cannot serve metrics on {address}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::PeerView;

    #[test]
    fn the_exposition_counts_paths_and_drops_and_names_nobody() {
        let mut view = DataView::default();
        let key = |byte: u8| protocol::StaticSecret::from_bytes([byte; 32]).public_key();
        let stats = protocol::TunnelStats { rx_bytes: 100, tx_bytes: 200, handshakes_completed: 1, rx_replay: 2, ..Default::default() };
        view.peers.insert(key(1), PeerView { stats, endpoint: Some("203.0.113.9:41641".parse().expect("address")), path: PathKind::Direct, punches: 0 });
        view.peers.insert(key(2), PeerView { stats, endpoint: None, path: PathKind::Relay, punches: 0 });
        view.observed = vec!["198.51.100.3:41641".parse().expect("address")];
        view.stats.rx_invalid_mac1 = 7;
        view.stats.relay_forwarded = 9;
        let text = render(&view);
        for line in ["pal_peers 2", "pal_peer_paths{path=\"direct\"} 1", "pal_peer_paths{path=\"relay\"} 1", "pal_rx_bytes_total 200", "pal_tx_bytes_total 400", "pal_handshakes_total 2", "pal_dropped_total{reason=\"invalid_mac1\"} 7", "pal_dropped_total{reason=\"replay\"} 4", "pal_relay_envelopes_total{outcome=\"forwarded\"} 9"] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // Every sample line is `pal_name{known labels} number`: no address, key or name.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<u64>().is_ok(), "{line}");
            assert!(name.starts_with("pal_") && !name.contains("203.0.113") && !name.contains("198.51.100"), "{line}");
            if let Some((_, labels)) = name.split_once('{') {
                let label = labels.split('=').next().unwrap_or_default();
                assert!(["path", "reason", "outcome", "part", "verdict"].contains(&label), "{line}");
            }
        }
    }

    #[test]
    fn exit_counters_come_from_nft_json_by_verdict() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", "name": "exit_out", "table": "pal_exit", "handle": 1, "packets": 12, "bytes": 5000000000}}, {"counter": {"family": "inet", "name": "exit_denied", "table": "pal_exit", "handle": 2, "packets": 3, "bytes": 180}}, {"counter": {"family": "inet", "name": "someone_elses", "table": "pal_exit", "packets": 1, "bytes": 1}}]}"#;
        let counters = parse_exit_counters(json);
        assert_eq!(counters, vec![("exit_out".to_owned(), 12, 5_000_000_000), ("exit_denied".to_owned(), 3, 180)]);
        let text = render_exit(&counters);
        for line in ["pal_exit_packets_total{verdict=\"out\"} 12", "pal_exit_bytes_total{verdict=\"out\"} 5000000000", "pal_exit_packets_total{verdict=\"denied\"} 3"] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(parse_exit_counters("not json").is_empty());
    }
}
