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
