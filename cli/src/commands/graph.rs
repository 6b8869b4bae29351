//! `pal status --graph FILE`: the network as this device sees it, as an SVG picture. This
//! device in the middle, CloudPal above it, the other devices around; a line to each peer drawn
//! as its traffic goes — straight and solid when direct, dashed through CloudPal when relayed,
//! dotted through CloudPal when relayed over its TCP 443 fallback, faint when there is no path
//! yet — with the round trip on it. Pure: a status reply in, the picture's text out.

use node::control_api::{PathName, PeerStatus, StatusReply};
use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 520.0;
const CENTRE: (f64, f64) = (WIDTH / 2.0, 290.0);
const CLOUDPAL_AT: (f64, f64) = (WIDTH / 2.0, 70.0);
const RADIUS: f64 = 180.0;

/// How a path is drawn: colour and dash pattern.
fn stroke(path: PathName) -> (&'static str, &'static str) {
    match path {
        PathName::Direct => ("#1a7f37", ""),
        PathName::Relay => ("#0969da", " stroke-dasharray=\"10 6\""),
        PathName::RelayTcp => ("#bf8700", " stroke-dasharray=\"2 5\""),
        PathName::None => ("#afb8c1", " stroke-dasharray=\"1 8\""),
    }
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&apos;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// Where each peer sits: CloudPal above the middle, the others on a circle around it, leaving
/// the top to CloudPal.
fn places(peers: &[PeerStatus]) -> Vec<(f64, f64)> {
    let others = peers.iter().filter(|p| p.role != "cloudpal").count().max(1) as f64;
    let mut next = 0.0;
    peers
        .iter()
        .map(|peer| {
            if peer.role == "cloudpal" {
                return CLOUDPAL_AT;
            }
            // Angles from 40° to 320°, clockwise from the top.
            let angle = (40.0 + 280.0 * (next + 0.5) / others).to_radians();
            next += 1.0;
            (CENTRE.0 + RADIUS * angle.sin(), CENTRE.1 - RADIUS * angle.cos())
        })
        .collect()
}

fn node(out: &mut String, at: (f64, f64), name: &str, caption: &str, fill: &str) {
    let _ = writeln!(out, "  <g><circle cx=\"{:.0}\" cy=\"{:.0}\" r=\"30\" fill=\"{fill}\" stroke=\"#24292f\" stroke-width=\"1.5\"/>", at.0, at.1);
    let _ = writeln!(out, "    <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>", at.0, at.1 + 4.0, escape(name));
    let _ = writeln!(out, "    <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#57606a\">{}</text></g>", at.0, at.1 + 46.0, escape(caption));
}

pub fn svg(status: &StatusReply) -> String {
    let mut out = String::with_capacity(4096);
    let _ = writeln!(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"13\">");
    let _ = writeln!(out, "  <rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>");
    let me = status.device.name.as_deref().unwrap_or("this device");
    let _ = writeln!(out, "  <text x=\"16\" y=\"24\" font-size=\"15\">CloudPal network {} as {} sees it</text>", escape(&status.device.network), escape(me));
    let at = places(&status.peers);
    let cloudpal = status.peers.iter().position(|p| p.role == "cloudpal").map(|i| at[i]);
    // Paths first, so that the devices sit on top of them.
    for (peer, place) in status.peers.iter().zip(&at) {
        let (colour, dash) = stroke(peer.path);
        let through = match (peer.path, cloudpal) {
            (PathName::Relay | PathName::RelayTcp, Some(relay)) if peer.role != "cloudpal" => Some(relay),
            _ => None,
        };
        let points = match through {
            Some(relay) => format!("{:.0},{:.0} {:.0},{:.0} {:.0},{:.0}", CENTRE.0, CENTRE.1, relay.0, relay.1, place.0, place.1),
            None => format!("{:.0},{:.0} {:.0},{:.0}", CENTRE.0, CENTRE.1, place.0, place.1),
        };
        let _ = writeln!(out, "  <polyline class=\"path {}\" points=\"{points}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2.5\"{dash}/>", peer.path);
        let mid = match through {
            Some(relay) => ((relay.0 + place.0) / 2.0, (relay.1 + place.1) / 2.0),
            None => ((CENTRE.0 + place.0) / 2.0, (CENTRE.1 + place.1) / 2.0),
        };
        let rtt = peer.rtt_ms.map(|ms| format!(" {ms:.1} ms")).unwrap_or_default();
        let _ = writeln!(out, "  <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{colour}\">{}{rtt}</text>", mid.0, mid.1 - 6.0, peer.path);
    }
    node(&mut out, CENTRE, me, status.device.overlay_ipv4.as_deref().unwrap_or(""), "#ddf4ff");
    for (peer, place) in status.peers.iter().zip(&at) {
        let fill = if peer.role == "cloudpal" { "#fff8c5" } else { "#f6f8fa" };
        node(&mut out, *place, &peer.name, &peer.overlay_ipv4, fill);
    }
    // The legend.
    let legend = [(PathName::Direct, "direct"), (PathName::Relay, "through CloudPal (UDP)"), (PathName::RelayTcp, "through CloudPal (TCP 443)"), (PathName::None, "no path yet")];
    for (row, (path, label)) in legend.iter().enumerate() {
        let y = HEIGHT - 80.0 + 18.0 * row as f64;
        let (colour, dash) = stroke(*path);
        let _ = writeln!(out, "  <line x1=\"16\" y1=\"{y:.0}\" x2=\"56\" y2=\"{y:.0}\" stroke=\"{colour}\" stroke-width=\"2.5\"{dash}/><text x=\"64\" y=\"{:.0}\" font-size=\"11\">{label}</text>", y + 4.0);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::control_api::{ControlLink, DeviceStatusName, DeviceSummary, PunchCounts};

    fn peer(name: &str, role: &str, path: PathName, rtt: Option<f64>) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            id: "00".into(),
            overlay_ipv4: "100.64.0.2".into(),
            overlay_ipv6: "fd00::2".into(),
            path,
            endpoint: None,
            rtt_ms: rtt,
            control: ControlLink::Direct,
            rx_bytes: 0,
            tx_bytes: 0,
            role: role.into(),
            punches: 0,
        }
    }

    fn status(peers: Vec<PeerStatus>) -> StatusReply {
        StatusReply {
            device: DeviceSummary { name: Some("laptop".into()), id: "00".into(), network: "abcd-efgh".into(), overlay_ipv4: Some("100.64.0.1".into()), overlay_ipv6: None, status: DeviceStatusName::Active },
            peers,
            dht_peers: 0,
            nat: None,
            punches: PunchCounts::default(),
        }
    }

    #[test]
    fn every_device_and_path_is_drawn_as_its_traffic_goes() {
        let picture = svg(&status(vec![
            peer("cloudpal", "cloudpal", PathName::Direct, Some(12.34)),
            peer("desktop", "member", PathName::Direct, Some(3.0)),
            peer("car", "member", PathName::Relay, None),
            peer("tablet", "member", PathName::RelayTcp, Some(40.0)),
            peer("phone", "member", PathName::None, None),
        ]));
        assert!(picture.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"") && picture.trim_end().ends_with("</svg>"));
        for name in ["laptop", "cloudpal", "desktop", "car", "tablet", "phone"] {
            assert_eq!(picture.matches(&format!(">{name}</text>")).count(), 1, "{name} drawn once");
        }
        assert_eq!(picture.matches("<polyline").count(), 5, "one path per peer");
        // Relayed paths bend through CloudPal (three points), direct ones do not (two).
        let points = |class: &str| picture.lines().find(|l| l.contains(&format!("class=\"path {class}\""))).map(|l| l.split("points=\"").nth(1).map(|p| p.split('"').next().map(|p| p.split(' ').count())));
        assert_eq!(points("relay"), Some(Some(Some(3))));
        assert_eq!(points("relay-tcp"), Some(Some(Some(3))));
        assert!(picture.contains("12.3 ms") && picture.contains("40.0 ms"), "round trips shown");
        assert!(picture.contains("stroke-dasharray=\"2 5\""), "relay-tcp dotted");
        // Balanced: every element that opens closes.
        assert_eq!(picture.matches("<text").count(), picture.matches("</text>").count());
        assert_eq!(picture.matches("<g>").count(), picture.matches("</g>").count());
    }

    #[test]
    fn names_are_escaped() {
        let picture = svg(&status(vec![peer("a<b>&\"c'", "member", PathName::Direct, None)]));
        assert!(picture.contains("a&lt;b&gt;&amp;&quot;c&apos;") && !picture.contains("a<b>"), "{picture}");
    }
}
