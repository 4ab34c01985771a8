//! Every metric distgate records: names as constants, each described once, label
//! values bounded (request kinds, results, reasons; never addresses or ports).
//!
//! Recording goes through the `metrics` facade; without an installed recorder it costs
//! next to nothing. The exporter and the admin endpoints are not this file's concern.

use metrics::{Unit, describe_counter, describe_gauge};

/// EPMD requests, by `type` (request kind or `invalid`) and `result`.
pub const EPMD_REQUESTS: &str = "distgate_epmd_requests_total";
/// Registered local nodes.
pub const REGISTERED_NODES: &str = "distgate_registered_nodes";
/// ALIVE2 requests refused, by `reason` (`not_local`, `duplicate`, `invalid_name`).
pub const REGISTRATIONS_REJECTED: &str = "distgate_registrations_rejected_total";
/// Local-only EPMD requests (registration aside) refused to a non-local peer, by `type`.
pub const EPMD_NOT_LOCAL: &str = "distgate_epmd_not_local_total";
/// Dist connections to a public port no node holds.
pub const DIST_NO_NODE: &str = "distgate_dist_connections_no_node_total";
/// Dist connections whose node's real port did not accept.
pub const DIST_UPSTREAM_FAILURES: &str = "distgate_dist_upstream_connect_failures_total";
/// Dist connections forwarded to a node.
pub const DIST_CONNECTIONS: &str = "distgate_dist_connections_opened_total";
/// Dist connections open now.
pub const DIST_ACTIVE: &str = "distgate_dist_connections_active";
/// Accept errors on any listener.
pub const ACCEPT_ERRORS: &str = "distgate_accept_errors_total";

/// Describes every metric to the installed recorder; call once after installing one.
pub fn describe() {
    describe_counter!(EPMD_REQUESTS, "EPMD requests served, by type and result");
    describe_gauge!(REGISTERED_NODES, "Nodes registered with distgate's EPMD");
    describe_counter!(
        REGISTRATIONS_REJECTED,
        "ALIVE2 registrations refused, by reason"
    );
    describe_counter!(
        EPMD_NOT_LOCAL,
        "Local-only EPMD requests refused to remote peers"
    );
    describe_counter!(
        DIST_NO_NODE,
        "Connections to a public dist port held by no node"
    );
    describe_counter!(
        DIST_UPSTREAM_FAILURES,
        "Forwarded connections whose node did not accept"
    );
    describe_counter!(DIST_CONNECTIONS, "Dist connections forwarded to a node");
    describe_gauge!(DIST_ACTIVE, Unit::Count, "Dist connections open now");
    describe_counter!(
        ACCEPT_ERRORS,
        "Errors accepting connections on any listener"
    );
}
