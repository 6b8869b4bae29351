//! Measures membership in a running network (issue #6), not part of the test suite: with five
//! devices on one LAN (four that stay, one that comes and goes), over `RUNS` runs (default
//! 20), the time from `pal join` to the new device's first `pal ping` reply, and the time from
//! `pal device revoke` until each online member lists the device as revoked, and until the
//! revoked device itself reports it. As root: `bash tests/measure-membership.sh`.

use std::time::{Duration, Instant};
use tests::{LanNetwork, PalNode, poll_until, wait_until};

/// Polling grain of the measured waits.
const GRAIN: Duration = Duration::from_millis(2);

fn listed_as(node: &PalNode, name: &str, status: &str) -> bool {
    let output = node.pal(&["device", "list", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&output.stdout)
        .ok()
        .and_then(|list| list.as_array()?.iter().find(|d| d["name"] == name).map(|d| d["status"] == status))
        .unwrap_or(false)
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = samples[samples.len() / 2];
    let max = *samples.last().expect("samples");
    println!("{label:<44} median {:>7.1} ms   max {:>7.1} ms   (n = {})", ms(median), ms(max), samples.len());
}

fn main() {
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(20);
    let stay = ["laptop", "phone", "desktop", "tablet"];
    let mut net = LanNetwork::form(&stay);
    assert!(net.wait_for_membership(Duration::from_secs(30)), "membership did not converge");
    let (mut join_to_ping, mut everywhere, mut told) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let name = format!("guest{run}");
        let code = net.invite("laptop", &name, "member");
        let started = Instant::now();
        net.join_with(&name, &code).up();
        let mut attempts = 0;
        let reached = poll_until(Duration::from_secs(20), GRAIN, || {
            let ok = net.node(&name).pal(&["ping", "phone", "-c", "1"]).status.success();
            attempts += 1;
            if !ok && attempts == 1 && std::env::var_os("DEBUG_FIRST_PING").is_some() {
                eprintln!("first ping failed after {:?}; {name}: {}\nphone: {}", started.elapsed(), net.node(&name).pal_ok(&["status", "--json"]), net.node("phone").pal_ok(&["status", "--json"]));
            }
            ok
        });
        assert!(reached, "{name} never reached the phone");
        join_to_ping.push(started.elapsed());
        if started.elapsed() > Duration::from_secs(1) {
            eprintln!("slow first ping; {name}'s log:\n{}", net.node(&name).log());
        }
        let known = wait_until(Duration::from_secs(10), || stay.iter().all(|n| listed_as(net.node(n), &name, "active")));
        assert!(known, "{name} never became known to everyone");

        let started = Instant::now();
        net.node("laptop").pal_ok(&["device", "revoke", &name]);
        let times: Vec<Duration> = std::thread::scope(|scope| {
            let pollers: Vec<_> = stay
                .iter()
                .map(|member| {
                    let node = net.node(member);
                    let name = name.as_str();
                    scope.spawn(move || poll_until(Duration::from_secs(10), GRAIN, || listed_as(node, name, "revoked")).then(|| started.elapsed()))
                })
                .collect();
            pollers.into_iter().map(|p| p.join().expect("poller").expect("a member never applied the revocation")).collect()
        });
        let learned = poll_until(Duration::from_secs(10), GRAIN, || {
            String::from_utf8_lossy(&net.node(&name).pal(&["status"]).stderr).contains("has been revoked")
        });
        assert!(learned, "{name} never learned it was revoked");
        told.push(started.elapsed());
        let slowest = times.iter().max().copied().unwrap_or_default();
        println!("run {run:>2}: join -> first ping {:>7.1} ms; revocation on all 4 members {:>6.1} ms", join_to_ping[run].as_secs_f64() * 1000.0, slowest.as_secs_f64() * 1000.0);
        everywhere.push(slowest);
        net.nodes.retain(|n| n.name != name);
    }
    println!();
    summary("pal join -> first ping reply", join_to_ping);
    summary("revoke -> applied by all 4 online members", everywhere);
    summary("revoke -> the revoked device says so", told);
    println!("(times include starting each pal command, ~5 ms; members polled in parallel every 2 ms)");
}
