//! Every metric distgate records: names as constants, each described once, label
//! values bounded (node names, request kinds, results, reasons; never addresses or
//! ports). Recording goes through the `metrics` facade; [`install`] sets up the
//! Prometheus recorder the admin server renders.

use std::time::Instant;

use metrics::{
    Counter, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::BuildError;

/// The Prometheus recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The exporter refused its settings.
    #[error("cannot build the metrics recorder: {0}")]
    Build(#[from] BuildError),
    /// This process has a recorder already.
    #[error("a metrics recorder is installed already")]
    Installed,
}

impl InstallError {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        "metrics_install"
    }
}

/// Always 1, labelled with the version.
pub const BUILD_INFO: &str = "distgate_build_info";
/// EPMD requests, by `type` (request kind or `invalid`) and `result`.
pub const EPMD_REQUESTS: &str = "distgate_epmd_requests_total";
/// Registered local nodes, release clients not counted.
pub const REGISTERED_NODES: &str = "distgate_registered_nodes";
/// Release clients (`[dist] client_names`) registered now; not in `REGISTERED_NODES`.
pub const REGISTERED_CLIENTS: &str = "distgate_registered_clients";
/// ALIVE2 requests refused, by `reason` (`not_local`, `duplicate`, `invalid_name`).
pub const REGISTRATIONS_REJECTED: &str = "distgate_registrations_rejected_total";
/// Dist connections opened, by `node`, `peer` and `direction`.
pub const DIST_OPENED: &str = "distgate_dist_connections_opened_total";
/// Dist connections closed, by `node`, `peer`, `direction` and `reason`.
pub const DIST_CLOSED: &str = "distgate_dist_connections_closed_total";
/// Dist connections open now, by `node`, `peer` and `direction`.
pub const DIST_ACTIVE: &str = "distgate_dist_connections_active";
/// Bytes received from the peer, by `node`, `peer` and `direction`.
pub const DIST_RECEIVED: &str = "distgate_dist_received_bytes_total";
/// Bytes sent to the peer, by `node`, `peer` and `direction`.
pub const DIST_SENT: &str = "distgate_dist_sent_bytes_total";
/// How long dist connections lasted, by `node`, `peer` and `direction`.
pub const DIST_DURATION: &str = "distgate_dist_connection_duration_seconds";
/// Forwarded connections whose node's real port did not accept, by `node`.
pub const DIST_UPSTREAM_FAILURES: &str = "distgate_dist_upstream_connect_failures_total";
/// Connections to a public port no node holds.
pub const DIST_NO_NODE: &str = "distgate_dist_connections_no_node_total";
/// Accept errors on any listener.
pub const ACCEPT_ERRORS: &str = "distgate_accept_errors_total";
/// DNS lookups for routes, by `result` (`ok`, `not_found`, `error`, `stale`): the
/// lookups that asked DNS, one per name at a time; answers from the cache (a missing
/// name or a failure remembered for `[dns] min_ttl` included) are not counted.
pub const DNS_LOOKUPS: &str = "distgate_dns_lookups_total";
/// How long DNS lookups took.
pub const DNS_DURATION: &str = "distgate_dns_lookup_duration_seconds";
/// Dist handshakes, by `node` and `result` (`ok`, `failed`, `timeout`, `not_allowed`,
/// `banned`, `withdrawn`, `tls_denied`).
pub const DIST_HANDSHAKES: &str = "distgate_dist_handshakes_total";

/// The `result` label of [`DIST_HANDSHAKES`]: how a dist handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    /// The node acknowledged it: the link is up.
    Ok,
    /// Something against the peer: bytes no node sends, a wrong cookie, a name the
    /// node refuses. Counts towards a ban.
    Failed,
    /// No first frame, or no ack, in time. Counts towards a ban.
    Timeout,
    /// A name outside `[dist] allow_peers`. Counts towards a ban.
    NotAllowed,
    /// Called off by the peer, or a race of two nodes dialling each other.
    Withdrawn,
    /// Closed at accept: its source is banned.
    Banned,
    /// A TLS ClientHello where `[dist] tls = "deny"`: closed, not banned.
    TlsDenied,
}

impl HandshakeResult {
    /// The label's value.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::Failed => "failed",
            HandshakeResult::Timeout => "timeout",
            HandshakeResult::NotAllowed => "not_allowed",
            HandshakeResult::Withdrawn => "withdrawn",
            HandshakeResult::Banned => "banned",
            HandshakeResult::TlsDenied => "tls_denied",
        }
    }

    /// Counts one handshake to `node` that ended so.
    pub fn count(self, node: String) {
        ::metrics::counter!(DIST_HANDSHAKES, "node" => node, "result" => self.label()).increment(1);
    }
}
/// Sources (addresses, IPv6 prefixes) banned now for failed handshakes or
/// withdrawals.
pub const DIST_BANNED_SOURCES: &str = "distgate_dist_banned_sources";
/// Bans lifted, by `reason`: `expired`, `operator` (`distgate unban`), `trusted` (a
/// reload trusted the source), `evicted` (a table full of bans that could not fold).
pub const DIST_BANS_LIFTED: &str = "distgate_dist_bans_lifted_total";
/// Connections closed at accept, by `listener` and `reason` (`max_connections`,
/// `per_source`, `banned`; `evicted` on the admin listener).
pub const CONNECTIONS_REFUSED: &str = "distgate_connections_refused_total";
/// Connections held under a limit now, by `listener` (`epmd` counts other hosts only).
pub const CONNECTIONS_OPEN: &str = "distgate_connections_open";
/// Names a discovery route knows now, by `service`.
pub const DISCOVERED_NAMES: &str = "distgate_gateway_discovered_names";
/// Asks of a discovered member's EPMD (NAMES) that failed, by `service`.
pub const DISCOVERY_FAILURES: &str = "distgate_gateway_names_failures_total";
/// Open links silent in a direction past `[dist] silent_after`, by `way` (`from_peer`,
/// `to_peer`).
pub const DIST_SILENT_LINKS: &str = "distgate_dist_silent_links";
/// Routed names holding a public port now, by `route` (its `nodes` pattern).
pub const GATEWAY_LEASES: &str = "distgate_gateway_leases";
/// Names that found no public port (every one leased to a name in use), by `route`.
pub const GATEWAY_POOL_EXHAUSTED: &str = "distgate_gateway_pool_exhausted_total";
/// Routed PORT_PLEASE2 answers, by `route` and `result` (`ok`, `unknown`,
/// `dns_error`, `upstream_error`, `timeout`, `no_port`).
pub const GATEWAY_LOOKUPS: &str = "distgate_gateway_lookups_total";
/// Configuration reloads (SIGHUP, `POST /reload`), by `result`: `ok`, `invalid` (the
/// file cannot be read or is invalid), `refused` (keys only a restart changes, or no
/// file), `failed` (a port added could not be bound, the DNS resolver not set up).
pub const CONFIG_RELOADS: &str = "distgate_config_reloads_total";
/// 1 for the configuration in force, labelled with the `hash` of its file (the first
/// 16 hex digits of its SHA-256, or `defaults`); 0 for configurations reloaded away.
pub const CONFIG_INFO: &str = "distgate_config_info";
/// 1 when distgate runs with a configuration file, 0 on its built-in defaults.
pub const CONFIG_FILE: &str = "distgate_config_file";
/// Splice pipes held now, in use and idle (each counts against the UID's pipe quota).
pub const SPLICE_PIPES: &str = "distgate_splice_pipes";
/// Pipes that came back smaller than asked, by `result`: `smaller` (still used) or
/// `refused` (below the copy buffer, or no pipe at all: not used).
pub const SPLICE_PIPES_SHORT: &str = "distgate_splice_pipes_short_total";
/// Bursts of bulk data moved by copy because no pipe worth splicing through could be
/// had.
pub const SPLICE_COPY_FALLBACKS: &str = "distgate_splice_copy_fallbacks_total";
/// Log lines that could not be written (stderr closed or full) and were dropped.
pub const LOG_LINES_DROPPED: &str = "distgate_log_lines_dropped_total";
/// Federated links open, by peer gateway.
pub const FEDERATION_LINKS_OPEN: &str = "distgate_federation_links_open";
/// TLS handshakes with peer gateways, by peer, side and result.
pub const FEDERATION_HANDSHAKES: &str = "distgate_federation_handshakes_total";
/// Lookups across gateways, by peer, side and result.
pub const FEDERATION_LOOKUPS: &str = "distgate_federation_lookups_total";
/// Dist bytes received from peer gateways, by peer.
pub const FEDERATION_RECEIVED: &str = "distgate_federation_received_bytes_total";
/// Dist bytes sent to peer gateways, by peer.
pub const FEDERATION_SENT: &str = "distgate_federation_sent_bytes_total";
/// Whether the last dial of a peer gateway worked.
pub const FEDERATION_PEER_UP: &str = "distgate_federation_peer_up";
/// Federation certificate material read again, by result.
pub const FEDERATION_CERT_RELOADS: &str = "distgate_federation_certificate_reloads_total";
/// This gateway's certificate's not-after.
pub const FEDERATION_CERT_EXPIRY: &str = "distgate_federation_certificate_expiry_seconds";

/// Every metric name, for documentation and for checking dashboards.
pub const ALL: &[&str] = &[
    BUILD_INFO,
    EPMD_REQUESTS,
    REGISTERED_NODES,
    REGISTERED_CLIENTS,
    REGISTRATIONS_REJECTED,
    DIST_OPENED,
    DIST_CLOSED,
    DIST_ACTIVE,
    DIST_RECEIVED,
    DIST_SENT,
    DIST_DURATION,
    DIST_UPSTREAM_FAILURES,
    DIST_NO_NODE,
    ACCEPT_ERRORS,
    DNS_LOOKUPS,
    DNS_DURATION,
    DISCOVERED_NAMES,
    DISCOVERY_FAILURES,
    GATEWAY_LEASES,
    GATEWAY_POOL_EXHAUSTED,
    DIST_SILENT_LINKS,
    GATEWAY_LOOKUPS,
    CONNECTIONS_REFUSED,
    CONNECTIONS_OPEN,
    DIST_HANDSHAKES,
    DIST_BANNED_SOURCES,
    DIST_BANS_LIFTED,
    CONFIG_RELOADS,
    CONFIG_INFO,
    CONFIG_FILE,
    SPLICE_PIPES,
    SPLICE_PIPES_SHORT,
    SPLICE_COPY_FALLBACKS,
    LOG_LINES_DROPPED,
    FEDERATION_LINKS_OPEN,
    FEDERATION_HANDSHAKES,
    FEDERATION_LOOKUPS,
    FEDERATION_RECEIVED,
    FEDERATION_SENT,
    FEDERATION_PEER_UP,
    FEDERATION_CERT_RELOADS,
    FEDERATION_CERT_EXPIRY,
];

/// Dist link durations: from a failed handshake to links that live for days.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 21600.0, 86400.0, 604800.0,
];

/// DNS lookups: a cached answer on the node's resolver to a server that times out.
const DNS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every histogram with its buckets: exported as Prometheus histograms (`_bucket`,
/// `_sum`, `_count`), never as summaries, so they aggregate across pods.
const HISTOGRAMS: [(&str, &[f64]); 2] = [
    (DIST_DURATION, DURATION_BUCKETS),
    (DNS_DURATION, DNS_BUCKETS),
];

/// What every process starts with, so dashboards and alerts see zeros, not gaps.
fn start() {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(REGISTERED_NODES).set(0.0);
    gauge!(REGISTERED_CLIENTS).set(0.0);
    counter!(DIST_NO_NODE).increment(0);
    counter!(ACCEPT_ERRORS).increment(0);
    gauge!(SPLICE_PIPES).set(0.0);
    counter!(LOG_LINES_DROPPED).increment(0);
    for reason in ["not_local", "duplicate", "invalid_name"] {
        counter!(REGISTRATIONS_REJECTED, "reason" => reason).increment(0);
    }
    // The requests every node and peer makes, so `not_found` can be graphed from 0.
    for (kind, result) in [
        ("alive2", "ok"),
        ("port_please2", "found"),
        ("port_please2", "not_found"),
        ("names", "ok"),
    ] {
        counter!(EPMD_REQUESTS, "type" => kind, "result" => result).increment(0);
    }
}

fn describe() {
    describe_gauge!(
        FEDERATION_LINKS_OPEN,
        "Federated dist links open now, by peer gateway"
    );
    describe_counter!(
        FEDERATION_HANDSHAKES,
        "TLS handshakes with peer gateways, by peer, side (client: dialled, server: accepted) and result (ok, untrusted, not_allowed, timeout, protocol)"
    );
    describe_counter!(
        FEDERATION_LOOKUPS,
        "Name lookups across gateways, by peer, side and result"
    );
    describe_counter!(
        FEDERATION_RECEIVED,
        "Dist bytes received from peer gateways, by peer"
    );
    describe_counter!(FEDERATION_SENT, "Dist bytes sent to peer gateways, by peer");
    describe_gauge!(
        FEDERATION_PEER_UP,
        "1 when the last dial of the peer gateway (TLS and its answer) worked, 0 when it failed"
    );
    describe_counter!(
        FEDERATION_CERT_RELOADS,
        "Federation certificate, key and trust anchors read again after a change, by result (ok, error: the old material stays)"
    );
    describe_gauge!(
        FEDERATION_CERT_EXPIRY,
        "When this gateway's federation certificate expires, seconds since the Unix epoch"
    );
    describe_gauge!(BUILD_INFO, "distgate's version, as a label; always 1");
    describe_counter!(EPMD_REQUESTS, "EPMD requests served, by type and result");
    describe_gauge!(
        REGISTERED_NODES,
        "Nodes registered with distgate's EPMD, release clients not counted"
    );
    describe_gauge!(
        REGISTERED_CLIENTS,
        "Release clients (dist.client_names) registered with distgate's EPMD"
    );
    describe_counter!(
        REGISTRATIONS_REJECTED,
        "ALIVE2 registrations refused, by reason"
    );
    describe_counter!(
        DIST_OPENED,
        "Dist connections opened, by local node, peer and direction"
    );
    describe_counter!(
        DIST_CLOSED,
        "Dist connections closed, by local node, peer, direction, reason and who closed them"
    );
    describe_gauge!(DIST_ACTIVE, "Dist connections open now");
    describe_counter!(DIST_RECEIVED, Unit::Bytes, "Bytes received from the peer");
    describe_counter!(DIST_SENT, Unit::Bytes, "Bytes sent to the peer");
    describe_histogram!(
        DIST_DURATION,
        Unit::Seconds,
        "How long dist connections lasted"
    );
    describe_histogram!(
        DNS_DURATION,
        Unit::Seconds,
        "How long DNS lookups of routed names' upstreams took"
    );
    describe_counter!(
        DIST_UPSTREAM_FAILURES,
        "Forwarded connections whose node did not accept"
    );
    describe_counter!(
        DIST_NO_NODE,
        "Connections to a public dist port held by no node"
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Errors accepting connections on any listener"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at accept, by listener and reason"
    );
    describe_counter!(
        DIST_HANDSHAKES,
        "Dist handshakes followed, by local node and result"
    );
    describe_gauge!(
        DIST_BANNED_SOURCES,
        "Sources (addresses, IPv6 prefixes) banned now for failed dist handshakes or withdrawals"
    );
    describe_counter!(
        DIST_BANS_LIFTED,
        "Bans lifted, by reason (expired, operator, trusted, evicted)"
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Connections held under max_connections now, by listener"
    );
    describe_gauge!(
        DISCOVERED_NAMES,
        "Names a gateway discovery route knows now, by service"
    );
    describe_counter!(
        DISCOVERY_FAILURES,
        "NAMES asks of discovered members that failed, by service"
    );
    describe_gauge!(
        DIST_SILENT_LINKS,
        "Open dist links with no byte in a direction for dist.silent_after, by way"
    );
    describe_gauge!(
        GATEWAY_LEASES,
        "Routed names holding a public port now, by route"
    );
    describe_counter!(
        GATEWAY_POOL_EXHAUSTED,
        "Routed names that found no public port left, by route"
    );
    describe_counter!(
        GATEWAY_LOOKUPS,
        "Routed PORT_PLEASE2 answers, by route and result"
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads (SIGHUP, POST /reload), by result"
    );
    describe_gauge!(
        CONFIG_INFO,
        "1 for the configuration in force, labelled with the hash of its file"
    );
    describe_gauge!(
        CONFIG_FILE,
        "1 when distgate runs with a configuration file (--config), 0 on its built-in defaults"
    );
    describe_gauge!(SPLICE_PIPES, "Splice pipes held now, in use and idle");
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because standard error could not be written"
    );
    describe_counter!(
        SPLICE_PIPES_SHORT,
        "Pipes that came back smaller than asked (the pipe quota), by result"
    );
    describe_counter!(
        SPLICE_COPY_FALLBACKS,
        "Bursts of bulk data moved by copy because no pipe worth splicing through could be had"
    );
}

/// The metrics of one dist connection: opened on creation, closed by [`Link::close`].
#[derive(Debug)]
pub(crate) struct LinkMeters {
    node: String,
    /// The `peer` label, holding the peer's place among the labelled names.
    peer: PeerLabel,
    direction: &'static str,
    /// Bytes from the peer (towards the node).
    pub(crate) from_peer: Counter,
    /// Bytes to the peer.
    pub(crate) to_peer: Counter,
    started: Instant,
}

impl LinkMeters {
    /// Counts the link open, labelled with its node, peer and direction.
    pub(crate) fn open(node: String, peer: PeerLabel, direction: &'static str) -> LinkMeters {
        let labels = link_labels(&node, &peer, direction);
        let opened = counter!(DIST_OPENED, &labels);
        let active = gauge!(DIST_ACTIVE, &labels);
        opened.increment(1);
        active.increment(1.0);
        let (from_peer, to_peer) = (
            counter!(DIST_RECEIVED, &labels),
            counter!(DIST_SENT, &labels),
        );
        export::remember(labels, || export::Live {
            opened,
            active,
            received: from_peer.clone(),
            sent: to_peer.clone(),
        });
        // The labels are made again at close rather than kept: an idle link holds as
        // little as it can.
        LinkMeters {
            node,
            peer,
            direction,
            from_peer,
            to_peer,
            started: Instant::now(),
        }
    }

    /// When the link opened.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The local node's name.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// The `peer` label.
    pub(crate) fn peer(&self) -> &str {
        self.peer.as_str()
    }

    /// `inbound` or `gateway`.
    pub(crate) fn direction(&self) -> &'static str {
        self.direction
    }

    /// How long it has been open.
    pub(crate) fn age(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Records the close with a bounded `reason`; returns how long the link lived.
    pub(crate) fn close(
        &self,
        reason: &'static str,
        closed_by: &'static str,
    ) -> std::time::Duration {
        let lived = self.started.elapsed();
        let labels = link_labels(&self.node, &self.peer, self.direction);
        gauge!(DIST_ACTIVE, &labels).decrement(1.0);
        histogram!(DIST_DURATION, &labels).record(lived.as_secs_f64());
        export::forget(&labels);
        let [node, peer, direction] = labels;
        let closed = [
            node,
            peer,
            direction,
            ("reason", reason.to_owned()),
            ("closed_by", closed_by.to_owned()),
        ];
        counter!(DIST_CLOSED, &closed).increment(1);
        lived
    }
}

fn link_labels(node: &str, peer: &PeerLabel, direction: &'static str) -> export::LinkLabels {
    [
        ("node", node.to_owned()),
        ("peer", peer.as_str().to_owned()),
        ("direction", direction.to_owned()),
    ]
}

mod export;
mod peers;

pub use export::{Exporter, PER_LINK, install, touch_live_links};
pub use peers::{PEER_CLIENT, PEER_OTHER, PEER_TLS};
pub(crate) use peers::{PeerLabel, PeerLabels};
