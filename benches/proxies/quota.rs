//! As Kubernetes runs it: the proxy as an unprivileged UID (65532, the image's), whose
//! pipe quota (`fs.pipe-user-pages-soft`) every process of that UID on the node shares.
//! Root is exempt from the quota, so the rest of the benchmark never meets it.
//!
//! - one bulk stream through distgate (and, as the reference, through distgate as
//!   root) and haproxy (splice) as the UID, with the quota free and with another
//!   process of the UID holding it (a `hog` role that takes
//!   1 MiB pipes until refused), each proxy started fresh after the hog;
//! - eight distgates side by side, eight bulk streams through each at once, all as
//!   root and all as the UID.
//!
//! Needs root (to change UID) and `setpriv` (util-linux); skipped otherwise.

use std::net::SocketAddr;
use std::time::Instant;

use crate::measure::{self, Proc};
use crate::paths::Paths;
use crate::variants::{Setup, TempDir, distgate_named, free_ports, haproxy_as, register};
use crate::{Plan, Results, record};

/// The UID of distgate's image, and of `runAsUser` in deploy/kubernetes.
pub const UID: u32 = 65532;

/// A proxy in front of the sink: its public address and what keeps it running.
struct Front {
    addr: SocketAddr,
    proc: Proc,
    _registration: Option<std::net::TcpStream>,
    _dir: TempDir,
}

/// distgate (`auto`) as `uid`, with the sink registered and pinned to its one port.
fn distgate(setup: &Setup, uid: Option<u32>, label: &str) -> Front {
    let dir = TempDir::new(label);
    let [epmd, public] = free_ports();
    let config = format!(
        "[epmd]\nlisten = [\"127.0.0.1:{epmd}\"]\n\
         [dist]\nlisten = [\"127.0.0.1\"]\nports = [{public}]\n[dist.pins]\nsink = {public}\n"
    );
    let mut proc = distgate_named(&dir, "distgate", &config, uid);
    proc.wait_listening(epmd);
    let registration = register(epmd, "sink", setup.sink);
    Front {
        addr: SocketAddr::from(([127, 0, 0, 1], public)),
        proc,
        _registration: Some(registration),
        _dir: dir,
    }
}

/// haproxy (splice both ways) as `uid`.
fn haproxy(setup: &Setup, uid: Option<u32>, label: &str) -> Front {
    let dir = TempDir::new(label);
    let [listen] = free_ports();
    let proc = haproxy_as(&dir, &[(listen, setup.sink)], uid);
    Front {
        addr: SocketAddr::from(([127, 0, 0, 1], listen)),
        proc,
        _registration: None,
        _dir: dir,
    }
}

/// Another process of `UID` holding the pipe quota until dropped.
fn hog() -> Proc {
    let me = std::env::current_exe().unwrap();
    let mut command = crate::variants::as_user(Some(UID), &me);
    let proc = Proc::spawn(command.args(["--role", "hog"]));
    let held: usize = proc.expect("HELD ").parse().unwrap();
    assert!(
        held >= 16,
        "the hog got only {held} pipes: is the quota off?"
    );
    proc
}

/// GB/s of `bytes` over `streams` streams to `addr`.
fn bulk(addr: SocketAddr, streams: usize, bytes: u64) -> f64 {
    let client = Proc::role(
        &[
            "throughput",
            "--addr",
            &addr.to_string(),
            "--streams",
            &streams.to_string(),
            "--bytes",
            &bytes.to_string(),
        ],
        None,
    );
    let seconds: f64 = client.expect("SECONDS ").parse().unwrap();
    client.finish();
    bytes as f64 / 1e9 / seconds
}

/// Aggregate GB/s of eight distgates as `uid`, eight streams through each at once,
/// `total` bytes in all.
fn eight(setup: &Setup, uid: Option<u32>, total: u64) -> f64 {
    let fronts: Vec<Front> = (0..8)
        .map(|i| distgate(setup, uid, &format!("x8-{i}")))
        .collect();
    let each = total / 8;
    let start = Instant::now();
    let clients: Vec<Proc> = fronts
        .iter()
        .map(|front| {
            Proc::role(
                &[
                    "throughput",
                    "--addr",
                    &front.addr.to_string(),
                    "--streams",
                    "8",
                    "--bytes",
                    &each.to_string(),
                ],
                None,
            )
        })
        .collect();
    for client in clients {
        client.expect("SECONDS ");
        client.finish();
    }
    (each * 8) as f64 / 1e9 / start.elapsed().as_secs_f64()
}

/// One stream of `bytes` through `front`: GB/s, and the proxy's CPU seconds per GB.
fn measured(results: &mut Results, variant: &str, front: &Front, bytes: u64) {
    let pid = front.proc.pid();
    let cpu_before = measure::cpu_ns(&[pid]);
    record(
        results,
        "o_uid_bulk_1_stream",
        variant,
        bulk(front.addr, 1, bytes),
    );
    let cpu = (measure::cpu_ns(&[pid]) - cpu_before) as f64 / 1e9;
    record(
        results,
        "o_uid_cpu_per_gb",
        variant,
        cpu / (bytes as f64 / 1e9),
    );
}

/// Whether this part can run here.
pub fn available() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective UID.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    root && measure::have("setpriv")
}

/// This part's paths with one stream, the quota free, then held.
const FREE: [&str; 3] = ["distgate-root", "distgate-uid", "haproxy-uid"];
const HELD: [&str; 2] = ["distgate-uid-held", "haproxy-uid-held"];

/// Every round: one stream as the UID (quota free, quota held; distgate and haproxy;
/// direct as the baseline), then eight distgates as root and as the UID; only the
/// paths `paths` wants, and nothing when it wants none of them.
pub fn run(setup: &Setup, plan: &Plan, paths: &Paths, results: &mut Results) {
    let eights = [("distgate-x8-root", None), ("distgate-x8-uid", Some(UID))];
    let mut mine = FREE
        .iter()
        .chain(&HELD)
        .chain(eights.iter().map(|(n, _)| n));
    if !mine.any(|name| paths.wants(name)) {
        return;
    }
    if !available() {
        eprintln!("not root or no setpriv: the unprivileged-UID part is skipped");
        return;
    }
    let start = |variant: &str| match variant {
        "distgate-root" => distgate(setup, None, "root"),
        "distgate-uid" => distgate(setup, Some(UID), "uid"),
        "haproxy-uid" => haproxy(setup, Some(UID), "haproxy-uid"),
        "distgate-uid-held" => distgate(setup, Some(UID), "uid-held"),
        "haproxy-uid-held" => haproxy(setup, Some(UID), "haproxy-held"),
        other => unreachable!("{other}"),
    };
    let started = |names: &[&'static str]| -> Vec<(&'static str, Front)> {
        names
            .iter()
            .filter(|name| paths.wants(name))
            .filter(|name| !name.starts_with("haproxy") || measure::have("haproxy"))
            .map(|&name| (name, start(name)))
            .collect()
    };
    let one = "o_uid_bulk_1_stream";
    for round in 0..plan.rounds {
        eprintln!("unprivileged UID, round {} of {}", round + 1, plan.rounds);
        let direct = SocketAddr::from(([127, 0, 0, 1], setup.sink));
        record(results, one, "direct", bulk(direct, 1, plan.bulk_bytes));
        for (variant, front) in started(&FREE) {
            measured(results, variant, &front, plan.bulk_bytes);
        }
        if HELD.iter().any(|name| paths.wants(name)) {
            let _hog = hog();
            for (variant, front) in started(&HELD) {
                measured(results, variant, &front, plan.bulk_bytes);
            }
        }
        for (variant, uid) in eights {
            if paths.wants(variant) {
                let rate = eight(setup, uid, plan.bulk_bytes);
                record(results, "p_bulk_8x8_streams", variant, rate);
            }
        }
    }
}

/// The ratios the targets are stated in, from the medians.
pub fn summary(results: &Results) -> Option<String> {
    let median = |metric: &str, variant: &str| {
        let values = results.get(metric)?.get(variant)?;
        Some(measure::Stats::of(values).median)
    };
    let one = "o_uid_bulk_1_stream";
    let free = median(one, "distgate-uid")?;
    let held = median(one, "distgate-uid-held")?;
    let haproxy_held = median(one, "haproxy-uid-held")?;
    let root8 = median("p_bulk_8x8_streams", "distgate-x8-root")?;
    let uid8 = median("p_bulk_8x8_streams", "distgate-x8-uid")?;
    Some(format!(
        "As UID {UID}: one stream with the quota held / free {:.2}× (target ≥ 0.9×); \
         distgate / haproxy, both with the quota held, {:.2}× (target ≥ 1×); eight \
         distgates × eight streams, UID / root {:.2}× (target ≥ 0.9×).\n",
        held / free,
        held / haproxy_held,
        uid8 / root8
    ))
}
