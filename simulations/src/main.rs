//! `cargo run --release -p simulations -- all` (or one scenario by name): each scenario's
//! table with its seed. Exits non-zero when a goal is missed.

use simulations::scenarios::{self, Life};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: simulations [all|idle|revocation|partition|nat|lookup] [--seed N] [--small] [--plots DIR]\n       simulations calibrate [--seed N] [--sizes 250,500] [--lookups 200] [--out simulations/calibration.tsv]";
const SCENARIOS: [&str; 5] = ["idle", "revocation", "partition", "nat", "lookup"];
/// The control-plane scenarios, which share one settled network.
const CONTROL: [&str; 3] = ["idle", "revocation", "partition"];

/// `simulations calibrate`: real libp2p-kad swarms at each size, written where the lookup
/// scenario reads them (minutes and about 10 MB per node).
fn calibrate(mut args: impl Iterator<Item = String>) -> ExitCode {
    let mut seed = 1u64;
    let mut sizes = vec![250, 500];
    let mut lookups = 200;
    let mut out = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/calibration.tsv"));
    while let Some(arg) = args.next() {
        let value = args.next();
        let parsed = match (arg.as_str(), value) {
            ("--seed", Some(v)) => v.parse().map(|v| seed = v).is_ok(),
            ("--sizes", Some(v)) => v.split(',').map(str::parse).collect::<Result<Vec<usize>, _>>().map(|v| sizes = v).is_ok(),
            ("--lookups", Some(v)) => v.parse().map(|v| lookups = v).is_ok(),
            ("--out", Some(v)) => {
                out = v.into();
                true
            }
            _ => false,
        };
        if !parsed {
            eprintln!("bad argument {arg:?}; {USAGE}");
            return ExitCode::from(2);
        }
    }
    sizes.sort_unstable();
    let started = Instant::now();
    let calibration = scenarios::lookup::calibrate(seed, &sizes, lookups, |row| {
        println!(
            "{} nodes, {:.0} % off: found {}/{}, p50 {:?}, p95 {:?}, {:.1} requests (built in {:.0} s, peak RSS {:.0} MB; {:.0} s so far)",
            row.nodes, row.offline * 100.0, row.found, row.lookups, row.p50, row.p95, row.requests, row.build_s, row.peak_rss_mb, started.elapsed().as_secs_f64()
        );
    });
    if let Err(error) = std::fs::write(&out, calibration.render()) {
        eprintln!("cannot write {}: {error}", out.display());
        return ExitCode::FAILURE;
    }
    println!("wrote {}", out.display());
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("calibrate") {
        return calibrate(std::env::args().skip(2));
    }
    let mut which = None;
    let mut seed = 1u64;
    let mut small = false;
    let mut plots: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(value) => seed = value,
                None => {
                    eprintln!("--seed needs a number; {USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--small" => small = true,
            "--plots" => match args.next() {
                Some(dir) => plots = Some(dir.into()),
                None => {
                    eprintln!("--plots needs a directory; {USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            name if which.is_none() && !name.starts_with('-') => which = Some(name.to_owned()),
            other => {
                eprintln!("unknown argument {other:?}; {USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let which = which.unwrap_or_else(|| "all".into());
    if which != "all" && !SCENARIOS.contains(&which.as_str()) {
        eprintln!("no scenario named {which:?}; {USAGE}");
        return ExitCode::from(2);
    }
    let runs = |name: &str| which == "all" || which == name;
    let started = Instant::now();
    println!("seed {seed}\n");
    // The NAT mixes and the DHT share nothing with the control network: they run on a thread
    // of their own beside it (each simulation is still one thread, on its own virtual time),
    // and print after it.
    let (nat, lookup) = (runs("nat"), runs("lookup"));
    let plots_for_side = plots.clone();
    let side = std::thread::spawn(move || side_scenarios(nat, lookup, small, seed, plots_for_side.as_deref()));
    let mut missed = false;
    if !CONTROL.iter().any(|name| runs(name)) {
        let (text, side_missed) = side.join().expect("the NAT and DHT scenarios' thread");
        print!("{text}");
        println!("all in {:.1} s", started.elapsed().as_secs_f64());
        return if side_missed { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    let life = if small { Life::small(seed) } else { Life::full(seed) };
    let settling = Instant::now();
    let mut sim = life.settled();
    println!("(the network built and settled in {:.1} s)\n", settling.elapsed().as_secs_f64());
    let mut timed = |name: &str, body: &mut dyn FnMut() -> (String, bool)| {
        let began = Instant::now();
        let (table, met) = body();
        println!("{table}({name}: {:.1} s)\n", began.elapsed().as_secs_f64());
        missed |= !met;
    };
    if runs("idle") {
        timed("idle", &mut || {
            let report = scenarios::idle::measure(&mut sim, Duration::from_secs(2 * 3600));
            (report.table().render(), report.met())
        });
    }
    if runs("revocation") {
        timed("revocation", &mut || {
            let report = scenarios::revocation::spread(&mut sim, scenarios::REVOKED);
            if let Some(dir) = &plots {
                let title = format!("revocation spread to {} online devices of {} (seed {seed})", report.online, sim.nodes.len());
                let goal = Some((scenarios::revocation::GOAL_P99, "goal: p99 ≤ 2 s"));
                if let Err(error) = simulations::plot::write_cdf(dir, "revocation-cdf.svg", &title, "devices that know", &report.arrivals, goal) {
                    eprintln!("{error}");
                }
            }
            (report.table().render(), report.met())
        });
    }
    if runs("partition") {
        timed("partition", &mut || {
            let report = scenarios::partition::run(&mut sim, Duration::from_secs(3600));
            (report.table().render(), report.met())
        });
    }
    let (text, side_missed) = side.join().expect("the NAT and DHT scenarios' thread");
    print!("{text}");
    println!("all in {:.1} s", started.elapsed().as_secs_f64());
    if missed || side_missed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The NAT mixes and the DHT lookups, if asked for: what they print, and whether a goal was
/// missed.
fn side_scenarios(nat: bool, lookup: bool, small: bool, seed: u64, plots: Option<&std::path::Path>) -> (String, bool) {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut missed = false;
    if nat {
        let began = Instant::now();
        let devices = if small { 16 } else { 40 };
        for mix in [simulations::nat::HOME_BROADBAND, simulations::nat::MOBILE_HEAVY] {
            let report = simulations::nat::run(&mix, devices, seed, Duration::from_secs(120));
            let _ = writeln!(out, "{}", report.table().render());
            missed |= !report.met();
        }
        let _ = writeln!(out, "(nat: {:.1} s)\n", began.elapsed().as_secs_f64());
    }
    if lookup {
        let began = Instant::now();
        let (nodes, lookups) = if small { (1000, 200) } else { (10_000, 1000) };
        let report = scenarios::lookup::run(seed, nodes, lookups);
        let _ = writeln!(out, "{}", report.table().render());
        let _ = writeln!(out, "{}", report.calibration_table().render());
        if let Some(dir) = plots {
            let all = &report.runs[0];
            let title = format!("rendezvous lookups in {} CloudPals, all on — the model (seed {seed})", all.nodes);
            let goal = Some((scenarios::lookup::GOAL_P95, "goal: p95 ≤ 1 s"));
            if let Err(error) = simulations::plot::write_cdf(dir, "lookup-cdf.svg", &title, "lookups", &all.found(), goal) {
                let _ = writeln!(out, "{error}");
            }
        }
        missed |= !report.met();
        let _ = writeln!(out, "(lookup: {:.1} s)\n", began.elapsed().as_secs_f64());
    }
    (out, missed)
}
