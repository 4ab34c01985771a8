//! The admin HTTP server (port 9369 by default): `/metrics` in the Prometheus text
//! format, `/livez`, and `/readyz`.
//!
//! HTTP is hyper's; this file only routes. Readiness is [`Health`]: every listener
//! bound, not shutting down, and, when `[admin] ready_when` asks for it, the expected
//! local nodes registered.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::ReadyWhen;
use crate::registry::Registry;

/// What `/readyz` reports.
#[derive(Debug)]
pub struct Health {
    ready_when: ReadyWhen,
    registry: Arc<Registry>,
    listening: AtomicBool,
    /// Cancelled when shutdown begins; from then on never ready.
    shutdown: CancellationToken,
}

impl Health {
    pub fn new(
        ready_when: ReadyWhen,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> Health {
        Health {
            ready_when,
            registry,
            listening: AtomicBool::new(false),
            shutdown,
        }
    }

    /// Every listener is bound and serving.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready, or why not.
    pub fn ready(&self) -> Result<(), String> {
        if self.shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        if !self.listening.load(Ordering::Relaxed) {
            return Err("listeners not serving yet".into());
        }
        match &self.ready_when {
            ReadyWhen::Always => Ok(()),
            ReadyWhen::AnyNode if self.registry.is_empty() => Err("no node registered".into()),
            ReadyWhen::AnyNode => Ok(()),
            ReadyWhen::Nodes(names) => {
                let missing: Vec<&str> = names
                    .iter()
                    .filter(|n| self.registry.get(n).is_none())
                    .map(String::as_str)
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not registered: {}", missing.join(", ")))
                }
            }
        }
    }
}

/// Serves the admin endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                crate::accept_backoff(&e, &shutdown).await;
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), Arc::clone(&health));
        let service = service_fn(move |req| {
            let response = route(&req, &metrics, &health);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!("admin connection: {e}");
            }
        });
    }
}

fn route(
    req: &Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
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
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /livez or /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
