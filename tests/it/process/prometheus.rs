//! distgate as a real Prometheus sees it (Debian's `prometheus` package, installed by
//! scripts/test): `promtool` checks the alert rules and runs their unit tests, and
//! lints a live `/metrics`; a Prometheus server scrapes the binary while it forwards
//! links, with the labels the PodMonitor gives (`namespace`, `pod`, job
//! `<namespace>/distgate`), evaluates every query of the Grafana dashboard through its
//! HTTP API, and evaluates the alert rules: each healthy, the one the test provokes
//! firing, the others quiet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::binary::Running;
use crate::support::*;
use ::bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn every_alert_rule_is_valid_and_its_tests_fire_and_stay_quiet() {
    if !require(&["promtool"]) {
        return;
    }
    let dir = repo("deploy/prometheus");
    let (ok, text) = promtool(&["check", "rules", "distgate-rules.yaml"], &dir);
    assert!(ok, "{text}");
    let (ok, text) = promtool(&["test", "rules", "distgate-rules.test.yaml"], &dir);
    assert!(ok, "{text}");
    // Every alert is tested both ways: firing (exp_alerts with labels) and quiet.
    let rules = std::fs::read_to_string(dir.join("distgate-rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("distgate-rules.test.yaml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    for alert in alerts {
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|case| case.contains(&format!("alertname: {alert}\n")))
            .collect();
        let firing = cases.iter().filter(|c| c.contains("exp_labels")).count();
        let quiet = cases
            .iter()
            .filter(|c| c.contains("exp_alerts: []"))
            .count();
        assert!(
            firing >= 1 && quiet >= 1,
            "{alert}: {firing} firing and {quiet} quiet test cases"
        );
    }
}

/// The PrometheusRule of the monitoring kustomization: this header, then the rule
/// file's `groups` under `spec`.
const RULE_HEADER: &str = "# The alert rules of deploy/prometheus/distgate-rules.yaml as a prometheus-operator\n\
# PrometheusRule (needs the operator's CRDs). Kept identical by tests/it/process/prometheus.rs:\n\
# edit the rule file, then run that test with DISTGATE_BLESS=1 to write this one.\n\
apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: distgate\nspec:\n";

fn prometheus_rule() -> String {
    let rules = std::fs::read_to_string(repo("deploy/prometheus/distgate-rules.yaml")).unwrap();
    let groups = &rules[rules.find("groups:").expect("a groups: key")..];
    let indented: String = groups
        .lines()
        .map(|l| match l.is_empty() {
            true => "\n".to_owned(),
            false => format!("  {l}\n"),
        })
        .collect();
    format!("{RULE_HEADER}{indented}")
}

#[test]
fn the_prometheus_rule_carries_the_same_rules() {
    let path = repo("deploy/kubernetes/monitoring/prometheusrule.yaml");
    let want = prometheus_rule();
    if std::env::var_os("DISTGATE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} differs from deploy/prometheus/distgate-rules.yaml: run this test with DISTGATE_BLESS=1",
        path.display()
    );
}

/// GET `path_and_query` from the HTTP server at `addr`: status and body.
async fn get(addr: SocketAddr, path_and_query: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get(path_and_query)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `s` for a URL query.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The instant query `expr` at Prometheus `prom`: its result vector.
async fn query(prom: SocketAddr, expr: &str) -> Vec<serde_json::Value> {
    let (status, body) = get(prom, &format!("/api/v1/query?query={}", encode(expr))).await;
    assert_eq!(status, 200, "{expr}: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "success", "{expr}: {body}");
    answer["data"]["result"].as_array().unwrap().clone()
}

/// Every label a dashboard query may return: distgate's own, and the scrape's.
const LABELS: &[&str] = &[
    "node",
    "peer",
    "direction",
    "reason",
    "type",
    "result",
    "listener",
    "version",
    "le",
    "way",
    "route",
    "side",
    "__name__",
    "namespace",
    "pod",
    "job",
    "instance",
];

/// The dashboard's queries, with its variables as Grafana fills them for "All".
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("deploy/grafana/distgate.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = vec![];
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$namespace", ".*")
                .replace("$pod", ".*")
                .replace("$__rate_interval", "30s");
            queries.push((panel["title"].as_str().unwrap_or("").to_owned(), expr));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = variable["query"]
            .as_str()
            .filter(|q| q.starts_with("label_values("))
        {
            // label_values(METRIC, LABEL): the series it reads must be there.
            let inner = &q["label_values(".len()..q.len() - 1];
            let metric = inner.rsplit_once(',').map_or(inner, |(m, _)| m).trim();
            let metric = metric.replace("$namespace", ".*");
            queries.push((format!("variable {}", variable["name"]), metric));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_links_and_answers_every_dashboard_query_and_alert() {
    if !require(&["prometheus", "promtool"]) {
        return;
    }
    // distgate with two public ports: one for a node, one for a node that is gone.
    let spare = free_port();
    let running = Running::start_with("", "");
    let port = running.public.port();
    // And a route (to an EPMD port nobody answers), for the gateway panels.
    let route = format!(
        "[[route]]\nnodes = \"far*\"\nupstream = \"127.0.0.1\"\nepmd_port = {}\n",
        free_port()
    );
    running.rewrite("", &format!("{port}, {spare}"), "", &route);
    running.signal("HUP");
    eventually("the second port", || async move {
        tokio::net::TcpStream::connect(loopback(spare)).await.ok()
    })
    .await;

    // Traffic: a link that closes, one that stays open, a rejected duplicate
    // registration, a node whose real port refuses, a port nobody holds.
    let (node, _registration) = fake_node(running.epmd, "app").await;
    let (mut client, upstream) = dist::link(running.public, &node, "peer@127.0.0.1").await;
    client.write_all(&[7u8; 100_000]).await.unwrap();
    drop((client, upstream));
    let (mut open, mut open_up) = dist::link(running.public, &node, "other@127.0.0.1").await;
    open.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    open_up.read_exact(&mut got).await.unwrap();
    let (_dup, reply) = register(running.epmd, &alive2("app", 1)).await;
    assert_ne!(&reply[..2], &[b'v', 0], "a duplicate registered");
    let _names = names(running.epmd).await;
    assert_eq!(
        port_please(running.epmd, "far1").await,
        None,
        "the upstream is down"
    );
    // A node whose real port nobody listens on: a caller there is an upstream failure.
    let (_gone, reply) = register(running.epmd, &alive2("gone", free_port())).await;
    assert_eq!(&reply[..2], &[b'v', 0]);
    assert_eq!(port_please(running.epmd, "gone").await, Some(spare));
    let mut caller = tokio::net::TcpStream::connect(loopback(spare))
        .await
        .unwrap();
    let send_name = distgate::handshake::encode_send_name(
        "peer@127.0.0.1",
        distgate::handshake::OTP25_FLAGS,
        1,
    );
    caller.write_all(&send_name).await.unwrap();
    read_to_close(&mut caller).await;

    // Prometheus, scraping every second with the PodMonitor's labels, the rules loaded.
    let dir = std::env::temp_dir().join(unique("distgate-prometheus-"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        repo("deploy/prometheus/distgate-rules.yaml"),
        dir.join("rules.yaml"),
    )
    .unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files: [rules.yaml]\n\
         scrape_configs:\n  - job_name: test/distgate\n    static_configs:\n\
         \x20     - targets: [\"{}\"]\n        labels: {{namespace: test, pod: distgate-0}}\n",
        running.admin
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let prom = loopback(free_port());
    let mut server = Process::spawn(
        "prometheus",
        Command::new("prometheus")
            .current_dir(&dir)
            .arg("--config.file=prometheus.yml")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    eventually("prometheus ready", || async move {
        let ready = tokio::net::TcpStream::connect(prom).await.is_ok()
            && get(prom, "/-/ready").await.0 == 200;
        ready.then_some(())
    })
    .await;
    assert!(server.exited().is_none(), "prometheus exited");
    // Enough scrapes for rates over 30 s to see the traffic above.
    eventually_within(
        Duration::from_secs(60),
        "five scrapes of distgate",
        || async move {
            let up = query(prom, "count_over_time(up{job=\"test/distgate\"}[1m])").await;
            let scrapes = up.first()?["value"][1].as_str()?.parse::<f64>().ok()?;
            (scrapes >= 5.0).then_some(())
        },
    )
    .await;

    // An invalid reload, for the one alert provoked (after scrapes that saw 0).
    running.rewrite(
        "",
        &format!("{port}, {spare}"),
        "max_connections = 0",
        &route,
    );
    running.signal("HUP");

    let mut checked = vec![];
    for (title, expr) in dashboard_queries() {
        let result = query(prom, &expr).await;
        // The Federation row's series need a peer gateway: its queries must evaluate,
        // and may be empty here.
        if expr.contains("distgate_federation_") {
            checked.push(format!("{title}: {} series (federation)", result.len()));
            continue;
        }
        assert!(!result.is_empty(), "{title}: `{expr}` returned nothing");
        for series in &result {
            let labels = series["metric"].as_object().unwrap();
            for label in labels.keys() {
                assert!(
                    LABELS.contains(&label.as_str()),
                    "{title}: unexpected label {label} in {series}"
                );
            }
        }
        checked.push(format!("{title}: {} series", result.len()));
    }
    // The panels by node and peer see the open link's names.
    let by_peer = query(
        prom,
        "sum by (node, peer) (distgate_dist_connections_active{namespace=~\".*\"})",
    )
    .await;
    assert!(
        by_peer
            .iter()
            .any(|s| s["metric"]["node"] == "app" && s["metric"]["peer"] == "other@127.0.0.1"),
        "{by_peer:?}"
    );
    eprintln!("dashboard queries:\n  {}", checked.join("\n  "));

    // Every rule evaluates cleanly; the provoked one fires, the rest are quiet.
    let state = eventually_within(
        Duration::from_secs(60),
        "the reload alert to fire",
        || async move {
            let (_, body) = get(prom, "/api/v1/rules").await;
            let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
            let rules = answer["data"]["groups"][0]["rules"].as_array()?.clone();
            let firing = rules
                .iter()
                .any(|r| r["name"] == "DistgateConfigReloadFailed" && r["state"] == "firing");
            firing.then_some(rules)
        },
    )
    .await;
    assert!(state.len() >= 9);
    for rule in &state {
        assert_eq!(rule["health"], "ok", "{rule}");
        let name = rule["name"].as_str().unwrap();
        if name != "DistgateConfigReloadFailed" {
            assert_eq!(rule["state"], "inactive", "{name} is not quiet: {rule}");
        }
    }

    // And promtool's lint passes on the /metrics it scraped.
    let (status, metrics) = http_get(running.admin, "/metrics").await;
    assert_eq!(status, 200);
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    lint.stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
