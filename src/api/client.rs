//! The admin API's client: `distgate links`, `nodes`, `bans` and `refusals` fetch
//! `/links`, `/nodes`, `/bans` and `/refusals` and print them as tables, for an
//! operator with `kubectl exec` or a port-forward; `distgate reload` is its
//! `POST /reload`, `distgate unban` its `DELETE /bans`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use super::{BanView, LeaseView, LinkView, NodeView, RefusalView, unix_now};

/// Why the admin port could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No connection, or no answer in time.
    #[error("cannot reach the admin port at {addr}: {reason}")]
    Unreachable {
        /// The admin address asked.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// An answer that is not what distgate serves.
    #[error("unexpected answer from {addr}{path}: {reason}")]
    Unexpected {
        /// The admin address asked.
        addr: SocketAddr,
        /// The endpoint.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// The most a `/links` or `/nodes` answer may take (a table of 8,192 links is about
/// 3 MiB of JSON).
const MAX_ANSWER: usize = 64 << 20;

/// `method` `path` of the admin port at `addr` within `timeout`: the status and body.
async fn ask(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    timeout: Duration,
) -> Result<(hyper::StatusCode, Bytes), ApiError> {
    let unreachable = |reason: String| ApiError::Unreachable { addr, reason };
    let unexpected = |reason: String| ApiError::Unexpected {
        addr,
        path: path.to_owned(),
        reason,
    };
    let fetch = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "distgate")
            .body(Empty::<Bytes>::new())
            .map_err(|e| unexpected(e.to_string()))?;
        let response =
            (sender.send_request(request).await).map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| unexpected(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
}

/// GET `path` from the admin port at `addr` within `timeout`, as JSON.
async fn get<T: for<'de> Deserialize<'de>>(
    addr: SocketAddr,
    path: &'static str,
    timeout: Duration,
) -> Result<T, ApiError> {
    let unexpected = |reason: String| ApiError::Unexpected {
        addr,
        path: path.to_owned(),
        reason,
    };
    let (status, body) = ask(addr, hyper::Method::GET, path, timeout).await?;
    if !status.is_success() {
        return Err(unexpected(format!("status {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| unexpected(e.to_string()))
}

#[derive(Debug, Deserialize)]
struct ReloadAnswer {
    result: String,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    changed: Vec<String>,
    #[serde(default)]
    error: Option<String>,
}

/// `distgate reload`: `POST /reload` to the distgate at `admin` (served to loopback
/// only). Whether the new configuration is in force, and the line that says so.
pub async fn reload(admin: SocketAddr, timeout: Duration) -> Result<(bool, String), ApiError> {
    let (status, body) = ask(admin, hyper::Method::POST, "/reload", timeout).await?;
    let Ok(answer) = serde_json::from_slice::<ReloadAnswer>(&body) else {
        let text = String::from_utf8_lossy(&body);
        return Ok((false, format!("not reloaded ({status}): {}", text.trim())));
    };
    let hash = answer.hash.unwrap_or_default();
    let line = match (answer.result.as_str(), answer.changed.is_empty()) {
        ("ok", true) => format!("reloaded: nothing changed (configuration {hash})"),
        ("ok", false) => format!(
            "reloaded: configuration {hash} in force; changed: {}",
            answer.changed.join(", ")
        ),
        (result, _) => format!(
            "not reloaded ({result}), the running configuration stays: {}",
            answer.error.unwrap_or_default()
        ),
    };
    Ok((answer.result == "ok", line))
}

#[derive(Debug, Deserialize)]
struct LinksAnswer {
    links: Vec<LinkView>,
}

#[derive(Debug, Deserialize)]
struct NodesAnswer {
    nodes: Vec<NodeView>,
    leases: Vec<LeaseView>,
}

/// `/links` of the distgate at `admin`, as a table.
pub async fn links(admin: SocketAddr, timeout: Duration) -> Result<String, ApiError> {
    let answer: LinksAnswer = get(admin, "/links", timeout).await?;
    let now = unix_now();
    let rows: Vec<Vec<String>> = (answer.links.iter())
        .map(|l| {
            vec![
                l.node.clone(),
                l.peer.clone(),
                l.direction.clone(),
                l.source.clone(),
                l.public_port.to_string(),
                l.handshake.clone(),
                seconds(now - l.opened_at),
                l.bytes_from_peer.to_string(),
                l.bytes_to_peer.to_string(),
                seconds(l.idle_from_peer),
                seconds(l.idle_to_peer),
                l.peer_gateway.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let head = [
        "NODE",
        "PEER",
        "DIRECTION",
        "SOURCE",
        "PORT",
        "HANDSHAKE",
        "AGE",
        "BYTES_IN",
        "BYTES_OUT",
        "IDLE_IN",
        "IDLE_OUT",
        "GATEWAY",
    ];
    Ok(table(&head, &rows, "no open links"))
}

/// `/nodes` of the distgate at `admin`, as tables: the registered nodes, then leases.
pub async fn nodes(admin: SocketAddr, timeout: Duration) -> Result<String, ApiError> {
    let answer: NodesAnswer = get(admin, "/nodes", timeout).await?;
    let now = unix_now();
    let rows: Vec<Vec<String>> = (answer.nodes.iter())
        .map(|n| {
            vec![
                n.name.clone(),
                n.real_port.to_string(),
                n.public_port.map_or("-".into(), |p| p.to_string()),
                n.creation.to_string(),
                match (n.client, n.hidden) {
                    (true, _) => "client",
                    (false, true) => "hidden",
                    (false, false) => "normal",
                }
                .into(),
                seconds(now - n.registered_at),
            ]
        })
        .collect();
    let head = [
        "NODE",
        "REAL_PORT",
        "PUBLIC_PORT",
        "CREATION",
        "TYPE",
        "SINCE",
    ];
    let mut out = table(&head, &rows, "no registered nodes");
    if !answer.leases.is_empty() {
        let rows: Vec<Vec<String>> = (answer.leases.iter())
            .map(|l| {
                vec![
                    l.name.clone(),
                    l.public_port.to_string(),
                    l.upstream.clone(),
                    l.route.clone(),
                    l.links.to_string(),
                    seconds(l.last_used_s),
                ]
            })
            .collect();
        let head = [
            "LEASE",
            "PUBLIC_PORT",
            "UPSTREAM",
            "ROUTE",
            "LINKS",
            "LAST_USED",
        ];
        out.push('\n');
        out.push_str(&table(&head, &rows, ""));
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct BansAnswer {
    bans: Vec<BanView>,
}

#[derive(Debug, Deserialize)]
struct RefusalsAnswer {
    refusals: Vec<RefusalView>,
}

#[derive(Debug, Deserialize)]
struct UnbanAnswer {
    lifted: Vec<String>,
}

/// `/bans` of the distgate at `admin`, as a table.
pub async fn bans(admin: SocketAddr, timeout: Duration) -> Result<String, ApiError> {
    let answer: BansAnswer = get(admin, "/bans", timeout).await?;
    let now = unix_now();
    let rows: Vec<Vec<String>> = (answer.bans.iter())
        .map(|b| {
            vec![
                b.source.clone(),
                b.failures.to_string(),
                b.withdrawals.to_string(),
                b.sources.to_string(),
                seconds(now - b.since),
                seconds(b.until - now),
            ]
        })
        .collect();
    let head = [
        "SOURCE",
        "FAILURES",
        "WITHDRAWALS",
        "SOURCES",
        "SINCE",
        "LIFTED_IN",
    ];
    let mut out = table(&head, &rows, "no bans");
    if !rows.is_empty() {
        out.push_str("lift one with `distgate unban SOURCE`, all with `distgate unban all`\n");
    }
    Ok(out)
}

/// `distgate unban ADDRESS|all`: `DELETE /bans/ADDRESS` or `DELETE /bans` to the
/// distgate at `admin` (served to loopback only). Whether a ban was lifted, and the
/// line that says so.
pub async fn unban(
    admin: SocketAddr,
    which: &str,
    timeout: Duration,
) -> Result<(bool, String), ApiError> {
    let path = match which {
        "all" => "/bans".to_owned(),
        // Checked here: an empty or stray argument must never become "every ban".
        one => match one.parse::<crate::prefix::Prefix>() {
            Ok(prefix) => format!("/bans/{}", prefix.to_string().replace('/', "%2F")),
            Err(e) => return Ok((false, format!("{e}; or `all`"))),
        },
    };
    let (status, body) = ask(admin, hyper::Method::DELETE, &path, timeout).await?;
    let Ok(answer) = serde_json::from_slice::<UnbanAnswer>(&body) else {
        let text = String::from_utf8_lossy(&body);
        return Ok((false, format!("nothing lifted ({status}): {}", text.trim())));
    };
    Ok(match answer.lifted.is_empty() {
        true if which == "all" => (true, "no bans to lift".to_owned()),
        true => (false, format!("no ban holds {which} (see `distgate bans`)")),
        false => (true, format!("lifted: {}", answer.lifted.join(", "))),
    })
}

/// `/refusals` of the distgate at `admin`, as a table, newest first.
pub async fn refusals(admin: SocketAddr, timeout: Duration) -> Result<String, ApiError> {
    let answer: RefusalsAnswer = get(admin, "/refusals", timeout).await?;
    let now = unix_now();
    let rows: Vec<Vec<String>> = (answer.refusals.iter())
        .map(|r| {
            vec![
                seconds(now - r.at),
                r.count.to_string(),
                r.source.clone(),
                or_dash(&r.node),
                r.claimed.as_deref().map_or("-".into(), shortened),
                r.reason.clone(),
            ]
        })
        .collect();
    let head = ["AGO", "COUNT", "SOURCE", "NODE", "CLAIMED", "REASON"];
    let mut out = table(&head, &rows, "no refused or failed dist connections");
    if !rows.is_empty() {
        out.push_str(REASONS);
    }
    Ok(out)
}

/// What each reason of `distgate refusals` means, and what to do about it.
const REASONS: &str = "\
reasons: not_allowed = the claimed name matches no [dist] allow_peers glob; \
failed = the node refused the handshake (wrong cookie, most often); \
withdrawn = the caller hung up on the node's challenge (it dialled another name than the node's own, or a race of reconnecting); \
banned / per_source = its source is banned (distgate bans) or over [dist] max_per_source; \
max_connections = [dist] max_connections reached; \
timeout, not_a_handshake = no dist handshake in time, or not one; \
tls_denied = TLS while [dist] tls = \"deny\"; \
no_node = nothing holds the port it dialled; upstream_refused = the node's real port did not accept\n";

/// A claimed name as a table cell: at most 64 characters (a hostile caller's name is
/// up to 255), `-` when empty.
fn shortened(name: &str) -> String {
    match name.chars().count() {
        0 => "-".into(),
        1..=64 => name.to_owned(),
        _ => name.chars().take(63).chain(['…']).collect(),
    }
}

fn or_dash(s: &str) -> String {
    match s.is_empty() {
        true => "-".into(),
        false => s.to_owned(),
    }
}

/// A duration in seconds as people read it: `4.2s`, `3m07s`, `2h05m`, `3d04h`.
fn seconds(s: f64) -> String {
    let s = s.max(0.0);
    let whole = s as u64;
    match whole {
        0..60 => format!("{s:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        3600..86400 => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d{:02}h", whole / 86400, whole % 86400 / 3600),
    }
}

/// Left-aligned columns two spaces apart; `empty` when there are no rows.
fn table(head: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("{empty}\n");
    }
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = (cells.iter().zip(&widths))
            .map(|(cell, &width)| format!("{cell:width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(head.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(seconds(4.24), "4.2s");
        assert_eq!(seconds(187.0), "3m07s");
        assert_eq!(seconds(7500.0), "2h05m");
        assert_eq!(seconds(273_600.0), "3d04h");
        assert_eq!(seconds(-1.0), "0.0s");
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["app".into(), "1".into()],
            vec!["a".into(), "22".into()],
        ];
        assert_eq!(
            table(&["NODE", "N"], &rows, "none"),
            "NODE  N\napp   1\na     22\n"
        );
        assert_eq!(table(&["NODE"], &[], "none"), "none\n");
    }
}
