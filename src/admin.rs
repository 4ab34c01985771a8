//! The admin HTTP server (port 9369 by default), nine endpoints:
//!
//! - `GET /metrics`: every series in the Prometheus text format;
//! - `GET /livez`: `ok` while the process answers;
//! - `GET /readyz`: ready, or why not ([`crate::ready::Health`]);
//! - `GET /links`: the open dist links as JSON ([`crate::api::LinkView`]);
//! - `GET /nodes`: the registered nodes and the gateway's leases as JSON;
//! - `GET /bans`: the sources banned now ([`crate::api::BanView`]);
//! - `GET /refusals`: the last 256 refused or failed dist connections
//!   ([`crate::api::RefusalView`]);
//! - `DELETE /bans/ADDRESS` (an address or a prefix) and `DELETE /bans` (all): bans
//!   lifted, from loopback only;
//! - `POST /reload`: the configuration read again, from loopback only, through
//!   `Control` (the reloader).
//!
//! HTTP is hyper's; this file routes, bounds the connections (one request each, the
//! head within `[admin] header_timeout`, at most `[admin] max_connections`, the
//! oldest half-sent request evicted first) and builds at most `Views::AT_ONCE` JSON
//! answers at a time.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn};

use crate::accept::{Acceptor, Admit};
use crate::epmd::NodeType;
use crate::metrics as m;
use crate::ready::Health;

/// How long an open admin connection may take to finish once the server stops.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The admin connections open now, oldest first, and which of them are being
/// served. At the limit a new connection evicts the oldest one still sending its
/// request (slowloris clients cannot shut the kubelet's probes out).
#[derive(Debug)]
pub(crate) struct Slots {
    max: usize,
    open: Mutex<(u64, BTreeMap<u64, Slot>)>,
}

#[derive(Debug)]
struct Slot {
    /// Cancelled to evict the connection.
    evict: CancellationToken,
    /// Its request has arrived whole and is being answered.
    serving: bool,
}

/// A held admin slot; given back when dropped.
#[derive(Debug)]
pub(crate) struct SlotGuard {
    slots: Arc<Slots>,
    id: u64,
    /// Cancelled when a newer connection takes the slot.
    pub(crate) evicted: CancellationToken,
}

impl Slots {
    /// At most `max` admin connections at once.
    pub(crate) fn new(max: usize) -> Arc<Slots> {
        ::metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => "admin", "reason" => "evicted")
            .increment(0);
        Arc::new(Slots {
            max,
            open: Mutex::new((0, BTreeMap::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Slot>)> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection, evicting the oldest one still sending its request
    /// when all are taken; `None` when every one is being answered.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<SlotGuard> {
        let mut guard = self.lock();
        let (next, open) = &mut *guard;
        if open.len() >= self.max {
            let oldest = open
                .iter()
                .find(|(_, slot)| !slot.serving)
                .map(|(&id, _)| id);
            let slot = open.remove(&oldest?)?;
            slot.evict.cancel();
            ::metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => "admin", "reason" => "evicted").increment(1);
        }
        let id = *next;
        *next += 1;
        let evicted = CancellationToken::new();
        let slot = Slot {
            evict: evicted.clone(),
            serving: false,
        };
        open.insert(id, slot);
        Some(SlotGuard {
            slots: Arc::clone(self),
            id,
            evicted,
        })
    }
}

impl SlotGuard {
    /// The connection's request has arrived whole: it may no longer be evicted.
    fn serving(&self) {
        if let Some(slot) = self.slots.lock().1.get_mut(&self.id) {
            slot.serving = true;
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.lock().1.remove(&self.id);
    }
}

/// What the admin server asks of the running system beyond what it reads itself: a
/// reload (`POST /reload`) and the leases of the gateway in force (`/nodes`). The
/// reloader answers it; the admin server knows nothing of how.
pub(crate) trait Control: Send + Sync + std::fmt::Debug {
    /// Reads the configuration file again and puts it in force, or changes nothing
    /// (`by` says who asked): the HTTP status and the JSON answer.
    fn reload<'a>(
        &'a self,
        by: &'a str,
    ) -> Pin<Box<dyn Future<Output = (StatusCode, serde_json::Value)> + Send + 'a>>;
    /// The leases of the gateway in force (none without routes).
    fn leases(&self) -> Vec<crate::api::LeaseView>;
}

/// What the JSON endpoints read: the open links, the registered nodes, the leases.
#[derive(Debug, Clone)]
pub(crate) struct Views {
    pub(crate) links: Arc<crate::links::Links>,
    pub(crate) registry: Arc<crate::registry::Registry>,
    /// Reloads (`POST /reload`), and the leases of the gateway in force (`/nodes`).
    pub(crate) control: Arc<dyn Control>,
    /// The bans and the last refusals of the dist ports.
    pub(crate) gate: crate::forward::Gate,
    /// `/links`, `/nodes`, `/bans` and `/refusals` answered at once: each answer is built whole in memory
    /// (about 300 bytes a link), so a few at a time, not one per admin slot.
    pub(crate) answering: Arc<tokio::sync::Semaphore>,
}

impl Views {
    /// The JSON answers built at once.
    pub(crate) const AT_ONCE: usize = 2;

    /// The JSON of a listing; `None` when [`Views::AT_ONCE`] are being built.
    fn answer(&self, listing: Listing) -> Option<String> {
        let _permit = self.answering.try_acquire().ok()?;
        let value = match listing {
            Listing::Nodes => self.nodes(),
            Listing::Links => self.links(),
            Listing::Bans => serde_json::json!({ "bans": self.gate.bans() }),
            Listing::Refusals => serde_json::json!({ "refusals": self.gate.refusals() }),
        };
        Some(format!("{value}\n"))
    }

    fn nodes(&self) -> serde_json::Value {
        let nodes: Vec<crate::api::NodeView> = (self.registry.nodes().into_iter())
            .map(|n| crate::api::NodeView {
                hidden: n.info.node_type == NodeType::Hidden,
                client: n.client,
                registered_at: crate::api::unix_seconds(n.registered_at),
                name: n.name,
                real_port: n.real_port,
                public_port: n.public_port,
                creation: n.creation,
            })
            .collect();
        let leases = self.control.leases();
        serde_json::json!({ "nodes": nodes, "leases": leases })
    }

    fn links(&self) -> serde_json::Value {
        serde_json::json!({ "links": self.links.views() })
    }
}

/// The JSON listings, each built whole in memory.
#[derive(Debug, Clone, Copy)]
enum Listing {
    Nodes,
    Links,
    Bans,
    Refusals,
}

/// Serves the admin endpoints on `listener` until `acceptor.shutdown`; connections
/// still open then get [`CLOSE_GRACE`] to finish. Each connection serves one request,
/// whose head must arrive within `header_timeout`; `slots` bounds how many are open.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: m::Exporter,
    health: Arc<Health>,
    views: Views,
    acceptor: Acceptor,
    slots: Arc<Slots>,
    header_timeout: Duration,
) {
    let stop = acceptor.shutdown.clone();
    let span = |peer: SocketAddr| info_span!("admin", %peer);
    let handle = |stream, peer: SocketAddr| {
        let slot = slots.enter().map(Arc::new);
        let (metrics, health, stop) = (metrics.clone(), Arc::clone(&health), stop.clone());
        let views = views.clone();
        let marker = slot.clone();
        let service = service_fn(move |req| {
            if let Some(slot) = &marker {
                slot.serving();
            }
            let (metrics, health, views) = (metrics.clone(), Arc::clone(&health), views.clone());
            async move { Ok::<_, Infallible>(route(req, &metrics, &health, &views, peer).await) }
        });
        async move {
            let Some(slot) = slot else {
                debug!("admin connection closed: every slot is being answered");
                return;
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = slot.evicted.cancelled() => {
                    debug!("admin connection evicted: its request was not sent in time for a newer one");
                    Ok(())
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(CLOSE_GRACE, conn).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                debug!("admin connection: {e}");
            }
        }
    };
    acceptor
        .run(listener, |_, _| Admit::Exempt, span, handle)
        .await;
}

async fn route(
    req: Request<Incoming>,
    metrics: &m::Exporter,
    health: &Health,
    views: &Views,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/reload" {
        return reload(&req, views, peer).await;
    }
    if req.method() == Method::DELETE {
        return unban(req.uri().path(), views, peer);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics.render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/livez" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match health.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/nodes" => json(views.answer(Listing::Nodes)),
        "/links" => json(views.answer(Listing::Links)),
        "/bans" => json(views.answer(Listing::Bans)),
        "/refusals" => json(views.answer(Listing::Refusals)),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /livez, /readyz, /nodes, /links, /bans, /refusals, \
             DELETE /bans or POST /reload\n"
                .into(),
        ),
    }
}

/// Whether a request from `peer` may change anything: from loopback only (an IPv4
/// peer on an IPv6 socket included).
fn may_change(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// Anyone who reaches the admin port can ask for a change (`POST /reload`,
/// `DELETE /bans`): the refusals logged are budgeted.
static REFUSED: crate::log_budget::SharedBudget = crate::log_budget::SharedBudget::new(
    "more changes (POST /reload, DELETE /bans) from other hosts refused than logged",
);

/// `POST /reload`, from loopback only: reads the configuration file again (as SIGHUP
/// does) and answers what happened as JSON, `200` when it is in force, `422` when the
/// file is invalid, `409` when it needs a restart (or there is no file), `500` when a
/// port could not be bound or DNS set up.
async fn reload(req: &Request<Incoming>, views: &Views, peer: SocketAddr) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n".into());
    }
    if !may_change(peer) {
        if REFUSED.allow() {
            warn!(%peer, "POST /reload refused: not from loopback");
        }
        return text(
            StatusCode::FORBIDDEN,
            "forbidden: POST /reload is served to loopback only (run `distgate reload` inside the pod)\n".into(),
        );
    }
    let (status, body) = views.control.reload("POST /reload").await;
    let mut response = text(status, format!("{body}\n"));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// `DELETE /bans/ADDRESS` (an address or prefix: the bans on it, within it or
/// holding it) and `DELETE /bans` (every ban), from loopback only: `200` with the
/// sources lifted, `404` when no ban matched, `400` for a bad address.
fn unban(path: &str, views: &Views, peer: SocketAddr) -> Response<Full<Bytes>> {
    let which = match path.strip_prefix("/bans") {
        Some("") => None,
        Some("/") => {
            return text(
                StatusCode::BAD_REQUEST,
                "DELETE /bans/ADDRESS needs an address or a prefix; DELETE /bans lifts all\n"
                    .into(),
            );
        }
        Some(rest) => match rest.strip_prefix('/').map(unescape) {
            Some(which) => match which.parse::<crate::prefix::Prefix>() {
                Ok(prefix) => Some(prefix),
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
            None => {
                return text(
                    StatusCode::NOT_FOUND,
                    "not found: DELETE /bans/ADDRESS\n".into(),
                );
            }
        },
        None => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "DELETE is for /bans and /bans/ADDRESS only\n".into(),
            );
        }
    };
    if !may_change(peer) {
        if REFUSED.allow() {
            warn!(%peer, "DELETE /bans refused: not from loopback");
        }
        return text(
            StatusCode::FORBIDDEN,
            "forbidden: DELETE /bans is served to loopback only (run `distgate unban` inside the pod)\n".into(),
        );
    }
    let lifted: Vec<String> = (views.gate.lift(which).iter())
        .map(ToString::to_string)
        .collect();
    let status = match (lifted.is_empty(), which) {
        (true, Some(_)) => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    };
    if !lifted.is_empty() {
        let first: Vec<&str> = lifted.iter().take(5).map(String::as_str).collect();
        tracing::info!(
            count = lifted.len(),
            first = first.join(", "),
            "bans lifted by an operator (DELETE /bans)"
        );
    }
    let mut response = text(
        status,
        format!("{}\n", serde_json::json!({ "lifted": lifted })),
    );
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// `%2F` and `%3A` (any case) as `/` and `:`: an address in a path, as a client may
/// have escaped it.
fn unescape(s: &str) -> String {
    s.replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%3A", ":")
        .replace("%3a", ":")
}

fn json(answer: Option<String>) -> Response<Full<Bytes>> {
    let Some(body) = answer else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: other /links, /nodes, /bans or /refusals answers are being built; try again\n"
                .into(),
        );
    };
    let mut response = text(StatusCode::OK, body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_change_anything() {
        for peer in [
            "127.0.0.1:1",
            "127.8.9.1:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(may_change(peer.parse().unwrap()), "{peer}");
        }
        for peer in [
            "10.0.0.1:1",
            "[::ffff:10.0.0.1]:1",
            "[fd00::1]:1",
            "0.0.0.0:1",
        ] {
            assert!(!may_change(peer.parse().unwrap()), "{peer}");
        }
    }

    #[test]
    fn only_a_few_json_answers_are_built_at_once() {
        let distgate = crate::Distgate::new(
            &crate::Config::default(),
            Default::default(),
            CancellationToken::new(),
        )
        .unwrap();
        let views = Views {
            links: crate::links::Links::new(Duration::from_secs(30)),
            registry: Arc::clone(distgate.registry()),
            control: Arc::clone(distgate.reloader()) as Arc<dyn Control>,
            gate: crate::forward::Gate::detached(),
            answering: Arc::new(tokio::sync::Semaphore::new(Views::AT_ONCE)),
        };
        assert_eq!(
            views.answer(Listing::Links).as_deref(),
            Some("{\"links\":[]}\n")
        );
        assert_eq!(
            views.answer(Listing::Bans).as_deref(),
            Some("{\"bans\":[]}\n")
        );
        let held: Vec<_> = (0..Views::AT_ONCE)
            .map(|_| views.answering.try_acquire().unwrap())
            .collect();
        assert_eq!(
            views.answer(Listing::Nodes),
            None,
            "answered past the bound"
        );
        assert_eq!(
            views.answer(Listing::Refusals),
            None,
            "answered past the bound"
        );
        drop(held);
        assert!(
            views
                .answer(Listing::Nodes)
                .unwrap()
                .contains("\"nodes\":[]")
        );
    }
}
