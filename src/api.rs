//! The admin API's answers: what `/links` and `/nodes` show of a link, a node and a
//! lease (JSON, served by [`crate::admin`], read by [`client`]), and the clock they
//! give times by (seconds since the Unix epoch).

pub mod client;

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

pub use client::ApiError;

/// What `/links` shows of a link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    /// The local (or routed) node.
    pub node: String,
    /// The peer's node name, as its handshake gave it (`tls` for TLS links).
    pub peer: String,
    /// `inbound` (to a local node) or `gateway` (to a routed name's upstream).
    pub direction: String,
    /// The peer's address as distgate sees it.
    pub source: String,
    /// The public dist port the peer dialled.
    #[serde(default)]
    pub public_port: u16,
    /// `ok` (the node acknowledged the handshake) or `tls` (not followed).
    pub handshake: String,
    /// When the link came up, seconds since the Unix epoch.
    pub opened_at: f64,
    /// Bytes from the peer to the node.
    pub bytes_from_peer: u64,
    /// Bytes from the node to the peer.
    pub bytes_to_peer: u64,
    /// Seconds since the last byte from the peer.
    pub idle_from_peer: f64,
    /// Seconds since the last byte to the peer.
    pub idle_to_peer: f64,
    /// The peer gateway (its identity) a link across gateways goes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_gateway: Option<String>,
}

/// A registered node as `/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// The name part.
    pub name: String,
    /// The node's own dist port.
    pub real_port: u16,
    /// The port peers are told; `None` when the pool had none.
    pub public_port: Option<u16>,
    /// The creation it was given.
    pub creation: u32,
    /// Registered as a hidden node.
    pub hidden: bool,
    /// A release client (`[dist] client_names`), which takes no public port.
    #[serde(default)]
    pub client: bool,
    /// When it registered, seconds since the Unix epoch.
    pub registered_at: f64,
}

/// What `/nodes` shows of a lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseView {
    /// The routed name.
    pub name: String,
    /// The public port it holds.
    pub public_port: u16,
    /// Where its links go: the upstream host and dist port.
    pub upstream: String,
    /// The route (its `nodes`).
    pub route: String,
    /// Links open to it now.
    pub links: usize,
    /// Seconds since its last lookup or link.
    pub last_used_s: f64,
}

/// What `/bans` shows of a ban.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanView {
    /// The address, or the prefix (`2001:db8:1:2::/64`; a `10.1.2.0/24` that bans
    /// folded into when the table was full).
    pub source: String,
    /// Failed handshakes counted in the window that banned it.
    pub failures: u32,
    /// Hang-ups on the node's challenge counted in that window.
    pub withdrawals: u32,
    /// Sources folded into it (1 unless the table was full).
    pub sources: u32,
    /// When it was banned, seconds since the Unix epoch.
    pub since: f64,
    /// When it runs out, seconds since the Unix epoch.
    pub until: f64,
}

/// What `/refusals` shows of a refused or failed dist connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusalView {
    /// When (the last time, for repeats), seconds since the Unix epoch.
    pub at: f64,
    /// How many times this source was refused so, for this node (repeats are one
    /// entry).
    #[serde(default)]
    pub count: u64,
    /// The caller's address.
    pub source: String,
    /// The node it asked for (by the public port it dialled); empty when no node
    /// holds that port.
    pub node: String,
    /// The name it claimed in its handshake, cut to 255 characters; `None` when it
    /// sent none.
    pub claimed: Option<String>,
    /// Why: `not_allowed`, `banned`, `per_source`, `max_connections`, `tls_denied`,
    /// `failed` (the node refused its cookie), `withdrawn`, `timeout`,
    /// `not_a_handshake`, `no_node`, `upstream_refused`.
    pub reason: String,
}

/// The wall-clock time of `instant`, from one anchor taken once: the same instant
/// always gives the same time (a link's `opened_at` does not wobble between answers).
pub(crate) fn wall_clock(instant: Instant) -> SystemTime {
    static ANCHOR: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    let &(at, wall) = ANCHOR.get_or_init(|| (Instant::now(), SystemTime::now()));
    match instant.checked_duration_since(at) {
        Some(after) => wall + after,
        None => wall - at.duration_since(instant),
    }
}

/// `time` as the admin answers give times: seconds since the Unix epoch.
pub(crate) fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Now, as the admin answers give times.
pub(crate) fn unix_now() -> f64 {
    unix_seconds(SystemTime::now())
}
