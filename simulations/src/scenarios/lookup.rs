//! Rendezvous lookups in a DHT of 10,000 CloudPals ([`crate::dht`]'s model of libp2p-kad):
//! all on, 30 % off, 50 % off; and the model beside real libp2p-kad swarms
//! ([`crate::swarms`]) at 250–1,000 nodes, as measured by `simulations calibrate` into
//! `simulations/calibration.tsv` (real swarms take minutes and gigabytes, so the measurement
//! is checked in and the model is run beside it every time).

use crate::control::percentile;
use crate::dht::{self, Dht, Lookup};
use crate::links::Links;
use crate::table::{Table, human, verdict};
use std::time::Duration;

pub const GOAL_P50: Duration = Duration::from_millis(400);
pub const GOAL_P95: Duration = Duration::from_secs(1);
pub const GOAL_P95_30: Duration = Duration::from_millis(1500);
pub const GOAL_SUCCESS_50: f64 = 0.999;

#[derive(Debug, Clone)]
pub struct Run {
    pub nodes: usize,
    pub offline: f64,
    pub lookups: Vec<Lookup>,
}

impl Run {
    /// Latencies of the lookups that found the record, sorted.
    pub fn found(&self) -> Vec<Duration> {
        let mut found: Vec<Duration> = self.lookups.iter().filter_map(|l| l.found).collect();
        found.sort_unstable();
        found
    }

    pub fn success(&self) -> f64 {
        self.found().len() as f64 / self.lookups.len().max(1) as f64
    }

    /// The p-th percentile over all lookups, a failed one counting as never.
    pub fn latency(&self, p: f64) -> Option<Duration> {
        let mut all: Vec<Option<Duration>> = self.lookups.iter().map(|l| l.found).collect();
        all.sort_unstable_by_key(|l| l.unwrap_or(Duration::MAX));
        percentile(&all, p)
    }

    pub fn requests(&self) -> f64 {
        self.lookups.iter().map(|l| l.requests).sum::<usize>() as f64 / self.lookups.len().max(1) as f64
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub runs: Vec<Run>,
    /// The checked-in measurement of real swarms.
    pub real: Calibration,
    /// The model at each size and share of `real`'s rows, in their order.
    pub calibration: Vec<Run>,
}

/// The real swarms' measurement, as `simulations calibrate` writes it.
pub const CALIBRATION: &str = include_str!("../../calibration.tsv");
/// The shares of nodes off a calibration measures.
pub const SHARES: [f64; 3] = [0.0, 0.3, 0.5];

/// One row of a calibration: real swarms of `nodes`, `offline` of them off.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub nodes: usize,
    pub offline: f64,
    pub lookups: usize,
    pub found: usize,
    pub p50: Option<Duration>,
    pub p95: Option<Duration>,
    pub requests: f64,
    /// The network's build (wall clock, seconds) and the process's peak RSS (MB) after it.
    pub build_s: f64,
    pub peak_rss_mb: f64,
}

/// A calibration file: `key<TAB>value` lines (seed, settings, when, where), then one row per
/// measurement under a header line starting `nodes`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calibration {
    pub seed: u64,
    /// `dht::Settings`' `Debug` form when it was measured.
    pub settings: String,
    pub about: Vec<(String, String)>,
    pub rows: Vec<Row>,
}

impl Calibration {
    pub fn parse(text: &str) -> Result<Calibration, String> {
        fn cell<T: std::str::FromStr<Err: std::fmt::Display>>(cell: &str) -> Result<T, String> {
            cell.parse().map_err(|e| format!("{cell:?}: {e}"))
        }
        // Milliseconds, or "-" for none.
        let ms = |text: &str| -> Result<Option<Duration>, String> { (text != "-").then(|| cell::<f64>(text).map(|v| Duration::from_secs_f64(v / 1000.0))).transpose() };
        let mut calibration = Calibration::default();
        let mut in_rows = false;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cells: Vec<&str> = line.split('\t').collect();
            let bad = |what: String| format!("calibration line {}: {what}", number + 1);
            if cells[0] == "nodes" {
                in_rows = true;
                continue;
            }
            if !in_rows {
                let [key, value] = cells[..] else { return Err(bad("want key<TAB>value".into())) };
                match key {
                    "seed" => calibration.seed = cell(value).map_err(bad)?,
                    "settings" => calibration.settings = value.to_owned(),
                    _ => calibration.about.push((key.to_owned(), value.to_owned())),
                }
                continue;
            }
            let [nodes, offline, lookups, found, p50, p95, requests, build_s, peak_rss_mb] = cells[..] else {
                return Err(bad(format!("want 9 cells, not {}", cells.len())));
            };
            calibration.rows.push(Row {
                nodes: cell(nodes).map_err(bad)?,
                offline: cell(offline).map_err(bad)?,
                lookups: cell(lookups).map_err(bad)?,
                found: cell(found).map_err(bad)?,
                p50: ms(p50).map_err(bad)?,
                p95: ms(p95).map_err(bad)?,
                requests: cell(requests).map_err(bad)?,
                build_s: cell(build_s).map_err(bad)?,
                peak_rss_mb: cell(peak_rss_mb).map_err(bad)?,
            });
        }
        Ok(calibration)
    }

    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let ms = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0));
        let mut out = String::from("# Real libp2p-kad swarms (simulations/src/swarms.rs) measured by `simulations calibrate`; the lookup scenario prints the model beside them.\n");
        let _ = writeln!(out, "seed\t{}", self.seed);
        let _ = writeln!(out, "settings\t{}", self.settings);
        for (key, value) in &self.about {
            let _ = writeln!(out, "{key}\t{value}");
        }
        out.push_str("nodes\toffline\tlookups\tfound\tp50_ms\tp95_ms\trequests\tbuild_s\tpeak_rss_mb\n");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "{}\t{:.2}\t{}\t{}\t{}\t{}\t{:.1}\t{:.0}\t{:.0}",
                row.nodes, row.offline, row.lookups, row.found, ms(row.p50), ms(row.p95), row.requests, row.build_s, row.peak_rss_mb
            );
        }
        out
    }
}

/// Today's date (UTC), as YYYY-MM-DD.
fn today() -> String {
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The process's peak resident set so far, in MB (Linux; 0 elsewhere).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1000.0)
}

/// Builds real swarms of each size (ascending) with the node's settings and runs `lookups`
/// lookups at each of [`SHARES`] off.
pub fn calibrate(seed: u64, sizes: &[usize], lookups: usize, mut progress: impl FnMut(&Row)) -> Calibration {
    let settings = dht::Settings::NODE;
    let mut calibration = Calibration { seed, settings: format!("{settings:?}"), about: Vec::new(), rows: Vec::new() };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    calibration.about.push(("machine".into(), format!("{cores} cores, tokio with 2 workers, wall clock")));
    calibration.about.push(("links".into(), "20–200 ms one way, no loss".into()));
    calibration.about.push(("measured".into(), today()));
    for nodes in sizes {
        let measured = crate::swarms::calibrate(*nodes, &SHARES, lookups, seed, links(seed), settings);
        let rss = peak_rss_mb();
        for (offline, results) in SHARES.iter().zip(&measured.runs) {
            let run = Run { nodes: *nodes, offline: *offline, lookups: results.clone() };
            let found = run.found();
            let row = Row {
                nodes: *nodes,
                offline: *offline,
                lookups: results.len(),
                found: found.len(),
                p50: run.latency(50.0),
                p95: run.latency(95.0),
                requests: run.requests(),
                build_s: measured.build.as_secs_f64(),
                peak_rss_mb: rss,
            };
            progress(&row);
            calibration.rows.push(row);
        }
    }
    calibration
}

fn links(seed: u64) -> Links {
    Links::new(seed, Duration::from_millis(20), Duration::from_millis(200), 0.0)
}

pub fn run(seed: u64, nodes: usize, lookups: usize) -> Report {
    let mut runs = Vec::new();
    for (offline, count) in [(0.0, lookups), (0.3, lookups), (0.5, lookups * 10)] {
        let mut dht = Dht::new(nodes, seed, links(seed), dht::Settings::NODE);
        let results = dht::lookups(&mut dht, count, offline, seed);
        runs.push(Run { nodes, offline, lookups: results });
    }
    let real = Calibration::parse(CALIBRATION).expect("simulations/calibration.tsv parses (the tests check it)");
    let calibration = real
        .rows
        .iter()
        .map(|row| {
            let mut dht = Dht::new(row.nodes, real.seed, links(real.seed), dht::Settings::NODE);
            Run { nodes: row.nodes, offline: row.offline, lookups: dht::lookups(&mut dht, 1000, row.offline, real.seed) }
        })
        .collect();
    Report { seed, runs, real, calibration }
}

impl Report {
    fn at(&self, offline: f64) -> &Run {
        self.runs.iter().find(|r| (r.offline - offline).abs() < 1e-9).expect("a run at that share")
    }

    pub fn met(&self) -> bool {
        let (all, thirty, half) = (self.at(0.0), self.at(0.3), self.at(0.5));
        all.latency(50.0).is_some_and(|p| p <= GOAL_P50)
            && all.latency(95.0).is_some_and(|p| p <= GOAL_P95)
            && thirty.latency(95.0).is_some_and(|p| p <= GOAL_P95_30)
            && half.success() >= GOAL_SUCCESS_50
    }

    pub fn table(&self) -> Table {
        let show = |d: Option<Duration>| d.map_or_else(|| "not found".to_owned(), human);
        let nodes = self.runs.first().map_or(0, |r| r.nodes);
        let mut table = Table::new(
            format!("rendezvous lookups in a DHT of {nodes} CloudPals — the model of libp2p-kad (K 20, α {}), 20–200 ms links, records stored while all were on (seed {})", dht::Settings::NODE.alpha, self.seed),
            &["nodes off", "lookups", "found", "p50", "p95", "p99", "requests each", "goal"],
        );
        for run in &self.runs {
            let goal = if run.offline == 0.0 {
                format!("p50 ≤ 400 ms, p95 ≤ 1 s: {}", verdict(run.latency(50.0).is_some_and(|p| p <= GOAL_P50) && run.latency(95.0).is_some_and(|p| p <= GOAL_P95)))
            } else if run.offline < 0.4 {
                format!("p95 ≤ 1.5 s: {}", verdict(run.latency(95.0).is_some_and(|p| p <= GOAL_P95_30)))
            } else {
                format!("found ≥ 99.9 %: {}", verdict(run.success() >= GOAL_SUCCESS_50))
            };
            table.row(vec![
                format!("{:.0} %", run.offline * 100.0),
                run.lookups.len().to_string(),
                format!("{:.2} %", run.success() * 100.0),
                show(run.latency(50.0)),
                show(run.latency(95.0)),
                show(run.latency(99.0)),
                format!("{:.1}", run.requests()),
                goal,
            ]);
        }
        table
    }

    /// The model beside the real swarms, at each size and share measured.
    pub fn calibration_table(&self) -> Table {
        let now = format!("{:?}", dht::Settings::NODE);
        let stale = if self.real.settings == now { String::new() } else { format!(" — STALE: measured with {}, the node now runs {now}; run `simulations calibrate`", self.real.settings) };
        let when = self.real.about.iter().find(|(k, _)| k == "measured").map_or("", |(_, v)| v.as_str());
        let mut table = Table::new(
            format!("calibration: the model beside real libp2p-kad 0.57 swarms (simulations/calibration.tsv, seed {}, {when}; model 1,000 lookups, swarms {} each){stale}", self.real.seed, self.real.rows.first().map_or(0, |r| r.lookups)),
            &["nodes", "nodes off", "real found", "model found", "real p50", "model p50", "real p95", "model p95", "real requests", "model requests"],
        );
        let show = |d: Option<Duration>| d.map_or_else(|| "not found".to_owned(), human);
        for (real, model) in self.real.rows.iter().zip(&self.calibration) {
            table.row(vec![
                real.nodes.to_string(),
                format!("{:.0} %", real.offline * 100.0),
                format!("{:.1} %", real.found as f64 * 100.0 / real.lookups.max(1) as f64),
                format!("{:.1} %", model.success() * 100.0),
                show(real.p50),
                show(model.latency(50.0)),
                show(real.p95),
                show(model.latency(95.0)),
                format!("{:.1}", real.requests),
                format!("{:.1}", model.requests()),
            ]);
        }
        table
    }
}
