//! Rendezvous lookups in a DHT of 10,000 CloudPals ([`crate::dht`]'s model of libp2p-kad):
//! all on, 30 % off, 50 % off; and the model at the sizes a calibration against real swarms
//! would run (250–1,000), beside which the real numbers are still to be measured.

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
    pub calibration: Vec<Run>,
}

fn links(seed: u64) -> Links {
    Links::new(seed, Duration::from_millis(20), Duration::from_millis(200), 0.0)
}

pub fn run(seed: u64, nodes: usize, lookups: usize) -> Report {
    let mut runs = Vec::new();
    for (offline, count) in [(0.0, lookups), (0.3, lookups), (0.5, lookups * 10)] {
        let mut dht = Dht::new(nodes, seed, links(seed));
        let results = dht::lookups(&mut dht, count, offline, seed);
        runs.push(Run { nodes, offline, lookups: results });
    }
    let calibration = [250, 500, 1000]
        .into_iter()
        .map(|size| {
            let mut dht = Dht::new(size, seed, links(seed));
            Run { nodes: size, offline: 0.0, lookups: dht::lookups(&mut dht, lookups, 0.0, seed) }
        })
        .collect();
    Report { seed, runs, calibration }
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
            format!("rendezvous lookups in a DHT of {nodes} CloudPals — a model of libp2p-kad (K 20, α 3), 20–200 ms links, records stored while all were on (seed {})", self.seed),
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

    /// The model at the sizes of a calibration against real libp2p-kad swarms.
    pub fn calibration_table(&self) -> Table {
        let mut table = Table::new(
            "the model at calibration sizes, all on — real libp2p-kad swarms at these sizes: not yet measured (the model is uncalibrated)",
            &["nodes", "p50", "p95", "requests each", "real libp2p-kad"],
        );
        for run in &self.calibration {
            let show = |d: Option<Duration>| d.map_or_else(|| "not found".to_owned(), human);
            table.row(vec![run.nodes.to_string(), show(run.latency(50.0)), show(run.latency(95.0)), format!("{:.1}", run.requests()), "not yet".to_owned()]);
        }
        table
    }
}
