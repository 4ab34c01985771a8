//! distgate side by side with direct loopback, haproxy (tcp mode, without and with
//! splice), nginx (stream module), socat and a blocking relay of the bench's own (the
//! floor of one more hop), interleaved in one run on one machine; and two distgate
//! gateways federated (mutual TLS 1.3 between them) side by side with two haproxy
//! processes bridging the same two hops with TLS (`federated.rs`):
//!
//! ```sh
//! cargo bench --bench proxies             # the full run recorded in BENCHMARKS.md
//! cargo bench --bench proxies -- --quick  # smaller sizes, for a first look
//! cargo bench --bench proxies -- --round-trips-only  # the 64 B round trips alone
//! # before and after a change, in one run: another commit's release binary beside this one
//! DISTGATE_BENCH_BASELINE=/tmp/distgate-before cargo bench --bench proxies -- \
//!     --paths direct,distgate-auto,distgate-baseline,haproxy-splice
//! # two gateways federated against haproxy with TLS on the same two hops
//! cargo bench --bench proxies -- --paths direct,federated,haproxy-tls
//! ```
//!
//! Uses `haproxy` and `nginx` with `libnginx-mod-stream` (Debian packages; a path whose
//! program is not installed is skipped with a note), optionally `socat`, `taskset`,
//! and `erl` for the Erlang part. Runs as root or not; as root it raises the
//! descriptor limit for the 10,000-connection memory figure and also runs the proxies
//! as the unprivileged UID 65532 with `setpriv` (`quota`: the pipe quota root is
//! exempt from; `-- --uid-only` runs that part alone). Prints a Markdown report and
//! writes it to `target/bench/report.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)] // a benchmark panics on what it did not expect; its modules are its own

mod erlang;
mod federated;
mod measure;
mod paths;
mod quota;
mod roles;
mod variants;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use measure::Stats;
use paths::Paths;
use variants::{Kind, Setup, Variant};

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rounds: usize,
    pub bulk_bytes: u64,
    pub round_trips: usize,
    /// Dist connections set up (connect and handshake) one after another.
    pub setups: usize,
    pub idle_counts: &'static [usize],
    pub erl_round_trips: usize,
    pub erl_binaries: usize,
}

const FULL: Plan = Plan {
    rounds: 5,
    bulk_bytes: 2 << 30,
    round_trips: 20_000,
    setups: 2_000,
    idle_counts: &[1_000, 9_000],
    erl_round_trips: 5_000,
    erl_binaries: 256,
};

/// The Erlang part alone, with enough data per round to compare settings.
const ERLANG: Plan = Plan {
    rounds: 5,
    bulk_bytes: 0,
    round_trips: 0,
    setups: 0,
    idle_counts: &[],
    erl_round_trips: 5_000,
    erl_binaries: 512,
};

const QUICK: Plan = Plan {
    rounds: 5,
    bulk_bytes: 256 << 20,
    round_trips: 5_000,
    setups: 500,
    idle_counts: &[1_000],
    erl_round_trips: 1_000,
    erl_binaries: 32,
};

/// Results: metric → variant → one value per round.
pub type Results = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

pub fn record(results: &mut Results, metric: &str, variant: &str, value: f64) {
    results
        .entry(metric.to_owned())
        .or_default()
        .entry(variant.to_owned())
        .or_default()
        .push(value);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--role") {
        if let Err(e) = roles::run(&args) {
            eprintln!("role failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo bench` passes --bench; test runners that list or run every target do not.
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("the proxies benchmark runs only under `cargo bench --bench proxies`");
        return;
    }
    let plan = if args.iter().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };
    let paths = Paths::from_args(&args).unwrap_or_else(|message| {
        eprintln!("proxies benchmark: {message}");
        std::process::exit(2);
    });
    measure::raise_fd_limit(1 << 18);
    let mut results = Results::new();
    let only = ONLY
        .into_iter()
        .find(|&flag| args.iter().any(|a| a == flag));
    if only == Some("--erlang-only") {
        erlang::run(&ERLANG, &paths, &mut results);
        println!("{}", report(&plan, &paths, only, &results));
        return;
    }
    let setup = Setup::start(paths.baseline.clone());
    if only == Some("--uid-only") {
        quota::run(&setup, &plan, &paths, &mut results);
        println!("{}", report(&plan, &paths, only, &results));
        return;
    }
    let kinds = [
        Kind::Direct,
        Kind::DistgateAuto,
        Kind::DistgateBaseline,
        Kind::DistgateSplice,
        Kind::DistgateCopy,
        Kind::Haproxy,
        Kind::HaproxySplice,
        Kind::Nginx,
        Kind::Gateway,
        Kind::Federated,
        Kind::HaproxyTls,
        Kind::Socat,
        Kind::Relay,
    ];
    let variants: Vec<Variant> = kinds
        .into_iter()
        .filter(|k| paths.wants(k.name()))
        .filter(|k| match k.missing() {
            Some(why) => {
                eprintln!("{why}: the path {} is skipped", k.name());
                false
            }
            None => true,
        })
        .map(|k| Variant::start(k, &setup))
        .collect();
    let bulk_only = only == Some("--bulk-only");
    let round_trips_only = only == Some("--round-trips-only");
    for round in 0..plan.rounds {
        eprintln!("round {} of {}", round + 1, plan.rounds);
        for variant in &variants {
            // Each step's figures as it goes: a round unlike the others shows here.
            let round_trips = |results: &mut Results| {
                for pinned in [false, true] {
                    let [p50, p99, p999, max] = variant.round_trips(&setup, &plan, pinned, results);
                    eprintln!(
                        "  {} {}: p50 {p50:.1} p99 {p99:.1} p99.9 {p999:.1} max {max:.1} µs",
                        variant.kind.name(),
                        if pinned { "pinned" } else { "unpinned" }
                    );
                }
            };
            if round_trips_only {
                round_trips(&mut results);
                continue;
            }
            variant.bulk(&setup, &plan, &mut results);
            if bulk_only {
                continue;
            }
            round_trips(&mut results);
            variant.setups(&plan, &mut results);
            // The relay holds two threads per connection: not a design whose idle
            // memory says anything.
            for &count in plan.idle_counts {
                if variant.kind == Kind::Relay || (variant.kind == Kind::Socat && count > 1_000) {
                    continue;
                }
                // A fresh proxy, so freed memory its allocator kept does not hide the cost.
                Variant::start(variant.kind, &setup).idle_memory(&setup, count, &mut results);
            }
        }
    }
    drop(variants);
    if round_trips_only {
        publish(&report(&plan, &paths, only, &results));
        return;
    }
    quota::run(&setup, &plan, &paths, &mut results);
    if bulk_only {
        println!("{}", report(&plan, &paths, only, &results));
        return;
    }
    if measure::have("erl") {
        erlang::run(&plan, &paths, &mut results);
    } else {
        eprintln!("erl not installed: the Erlang part is skipped");
    }
    publish(&report(&plan, &paths, only, &results));
}

/// The flags that run one part alone (of several given, the first here): the Erlang
/// part; the unprivileged-UID part; the round trips (unpinned and pinned, of the paths
/// selected, for the plan's rounds; each step's figures also on standard error); bulk.
const ONLY: [&str; 4] = [
    "--erlang-only",
    "--uid-only",
    "--round-trips-only",
    "--bulk-only",
];

/// Prints the report and writes it to `target/bench/report.md`.
fn publish(report: &str) {
    println!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.md"), report).unwrap();
}

/// The report: machine, then each metric as median (min–max) per variant with ratios;
/// `only` is the flag that ran one part alone, if any.
fn report(plan: &Plan, paths: &Paths, only: Option<&str>, results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Run of {}\n", measure::now());
    let _ = writeln!(out, "{}\n", measure::machine());
    let mut flags = vec![];
    if plan.bulk_bytes != FULL.bulk_bytes {
        flags.push("--quick".to_owned());
    }
    flags.extend(only.map(str::to_owned));
    flags.extend(paths.flag());
    let _ = writeln!(
        out,
        "Command: `{}{}cargo bench --bench proxies{}`; {} rounds, variants interleaved in each \
         round; median (min–max).\n",
        variants::proxy_uid().map_or(String::new(), |uid| format!("BENCH_PROXY_UID={uid} ")),
        paths.baseline.as_ref().map_or(String::new(), |b| format!(
            "{}={} ",
            paths::BASELINE_VAR,
            b.display()
        )),
        if flags.is_empty() {
            String::new()
        } else {
            format!(" -- {}", flags.join(" "))
        },
        plan.rounds
    );
    if paths.baseline.is_some() {
        let _ = writeln!(
            out,
            "{} is the binary {} names, started as distgate-auto is (same configuration, \
             `auto`).\n",
            paths::BASELINE,
            paths::BASELINE_VAR
        );
    }
    if let Some(summary) = quota::summary(results) {
        let _ = writeln!(out, "{summary}");
    }
    let tls = federated::notes();
    if !tls.is_empty() {
        let _ = writeln!(out, "TLS negotiated between the two hops:\n");
        for line in &tls {
            let _ = writeln!(out, "- {line}");
        }
        let _ = writeln!(out);
    }
    if let Some(summary) = tls_summary(results) {
        let _ = writeln!(out, "{summary}");
    }
    // The two-hop TLS paths are compared with haproxy doing the same; other runs'
    // tables are as they were.
    let vs_tls = results.values().any(|by| by.contains_key("haproxy-tls"));
    for (metric, by_variant) in results {
        let (title, higher_is_better) = measure::describe(metric);
        let _ = writeln!(out, "### {title}\n");
        let _ = writeln!(
            out,
            "| variant | median | min | max | vs direct | vs haproxy-splice |{}",
            if vs_tls { " vs haproxy-tls |" } else { "" }
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | ---: | ---: |{}",
            if vs_tls { " ---: |" } else { "" }
        );
        let median_of = |v: &str| by_variant.get(v).map(|x| Stats::of(x).median);
        for name in paths::NAMES {
            let Some(values) = by_variant.get(name) else {
                continue;
            };
            let s = Stats::of(values);
            let ratio = |base: Option<f64>| match base {
                Some(b) if b > 0.0 => format!("{:.2}×", s.median / b),
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} |{}",
                measure::fmt(s.median),
                measure::fmt(s.min),
                measure::fmt(s.max),
                ratio(median_of("direct")),
                ratio(median_of("haproxy-splice")),
                if vs_tls {
                    format!(" {} |", ratio(median_of("haproxy-tls")))
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(
            out,
            "\n{}\n",
            if higher_is_better {
                "Higher is better."
            } else {
                "Lower is better."
            }
        );
    }
    out
}

/// Federated gateways against haproxy bridging the same two hops with TLS, from the
/// medians, with issue 28's targets: throughput at least haproxy's, CPU per GB at
/// most 0.8× haproxy's.
fn tls_summary(results: &Results) -> Option<String> {
    let median = |metric: &str, variant: &str| {
        let values = results.get(metric)?.get(variant)?;
        Some(Stats::of(values).median)
    };
    let ratio = |metric: &str| Some(median(metric, "federated")? / median(metric, "haproxy-tls")?);
    let shown = |r: Option<f64>| r.map_or("–".to_owned(), |r| format!("{r:.2}×"));
    let one = ratio("a_bulk_1_stream");
    let eight = ratio("b_bulk_8_streams");
    let cpu = ratio("c_cpu_per_gb");
    let rtt = ratio("d_rtt_p50");
    if [one, eight, cpu, rtt].iter().all(Option::is_none) {
        return None;
    }
    Some(format!(
        "federated / haproxy-tls: bulk 1 stream {} (target ≥ 1×), 8 streams {} (target ≥ \
         1×), CPU per GB {} (target ≤ 0.8×), 64 B round trip p50 {}.\n",
        shown(one),
        shown(eight),
        shown(cpu),
        shown(rtt)
    ))
}
