//! The last refused or failed dist connections, for `GET /refusals` and
//! `distgate refusals`: the answer to "why doesn't my node connect?" in one place. A
//! ring of [`Refusals::KEPT`] entries, each bounded (the claimed name cut to 255
//! characters), so a flood of refusals costs a fixed amount of memory. Repeats of one
//! source (an IPv6 /64 counts as one), node and reason are one entry with a count,
//! moved to the front: one caller retrying cannot push the others out.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::api::{RefusalView, unix_seconds};
use crate::prefix::{DEFAULT_IPV6_PREFIX, Prefix};

/// Why a dist connection was refused or failed (the `reason` of `/refusals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Its name matches no `[dist] allow_peers` glob.
    NotAllowed,
    /// Its source is banned.
    Banned,
    /// Its source holds `[dist] max_per_source` connections.
    PerSource,
    /// The dist listener holds `[dist] max_connections`.
    MaxConnections,
    /// TLS, and `[dist] tls` is "deny".
    TlsDenied,
    /// The handshake failed against the caller (its cookie, most often).
    Failed,
    /// It hung up before the node's ack.
    Withdrawn,
    /// No first frame or no whole handshake in time.
    Timeout,
    /// Its first frame is not a dist handshake.
    NotAHandshake,
    /// No node holds the port it dialled.
    NoNode,
    /// The node's real port (or the routed upstream) did not accept.
    UpstreamRefused,
    /// A peer gateway whose certificate does not chain to `[federation] ca`.
    FederationUntrusted,
    /// A peer gateway trusted, but admitted by no `[federation] peers` glob.
    FederationNotAllowed,
}

impl Reason {
    /// The `reason` text.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::NotAllowed => "not_allowed",
            Reason::Banned => "banned",
            Reason::PerSource => "per_source",
            Reason::MaxConnections => "max_connections",
            Reason::TlsDenied => "tls_denied",
            Reason::Failed => "failed",
            Reason::Withdrawn => "withdrawn",
            Reason::Timeout => "timeout",
            Reason::NotAHandshake => "not_a_handshake",
            Reason::NoNode => "no_node",
            Reason::UpstreamRefused => "upstream_refused",
            Reason::FederationUntrusted => "federation_untrusted",
            Reason::FederationNotAllowed => "federation_not_allowed",
        }
    }
}

/// Longest claimed name kept.
const MAX_CLAIMED: usize = 255;

#[derive(Debug)]
struct Refused {
    at: SystemTime,
    /// What repeats are merged by, with `node` and `reason`.
    key: Prefix,
    count: u64,
    source: IpAddr,
    node: String,
    claimed: Option<String>,
    reason: Reason,
}

/// The ring of the last refusals.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    ring: Mutex<VecDeque<Refused>>,
}

impl Refusals {
    /// Refusals kept; the oldest goes when a new one comes.
    pub(crate) const KEPT: usize = 256;

    /// Notes a refusal of a connection from `source` to `node` (`""`: none).
    pub(crate) fn note(&self, source: IpAddr, node: &str, claimed: Option<&str>, reason: Reason) {
        let key = Prefix::of(source, DEFAULT_IPV6_PREFIX);
        let claimed = claimed.map(|name| name.chars().take(MAX_CLAIMED).collect());
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let repeat =
            (ring.iter()).position(|r| r.key == key && r.reason == reason && r.node == node);
        let count = match repeat.and_then(|at| ring.remove(at)) {
            Some(earlier) => earlier.count.saturating_add(1),
            None => 1,
        };
        if ring.len() >= Self::KEPT {
            ring.pop_back();
        }
        ring.push_front(Refused {
            at: SystemTime::now(),
            key,
            count,
            source: source.to_canonical(),
            node: node.to_owned(),
            claimed,
            reason,
        });
    }

    /// The refusals kept, newest first.
    pub(crate) fn views(&self) -> Vec<RefusalView> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        (ring.iter())
            .map(|r| RefusalView {
                at: unix_seconds(r.at),
                count: r.count,
                source: r.source.to_string(),
                node: r.node.clone(),
                claimed: r.claimed.clone(),
                reason: r.reason.as_str().to_owned(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_and_cuts_names() {
        let refusals = Refusals::default();
        let long = "x".repeat(10_000);
        for n in 0..1000u32 {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            let claimed = format!("{n}{long}");
            refusals.note(source, "app", Some(&claimed), Reason::Failed);
        }
        let source: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        refusals.note(source, "app", None, Reason::NotAllowed);
        let views = refusals.views();
        assert_eq!(views.len(), Refusals::KEPT);
        assert_eq!(views[0].reason, "not_allowed");
        assert_eq!(views[0].source, "10.0.0.1");
        assert!(views[1].claimed.as_deref().unwrap().starts_with("999x"));
        assert!(
            views
                .iter()
                .all(|v| v.claimed.as_ref().is_none_or(|c| c.len() <= 255))
        );
    }

    #[test]
    fn one_caller_retrying_is_one_entry_and_pushes_nobody_out() {
        let refusals = Refusals::default();
        let other: IpAddr = "10.9.9.9".parse().unwrap();
        refusals.note(other, "app", Some("good@h"), Reason::Failed);
        for n in 0..10_000u16 {
            // One /64, any address in it.
            let source = IpAddr::from(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, n));
            refusals.note(source, "app", None, Reason::Banned);
        }
        let views = refusals.views();
        assert_eq!(views.len(), 2);
        assert_eq!(
            (views[0].reason.as_str(), views[0].count),
            ("banned", 10_000)
        );
        assert_eq!((views[1].source.as_str(), views[1].count), ("10.9.9.9", 1));
    }
}
