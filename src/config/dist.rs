//! `[dist]` and `[dist.ban]`: the public dist ports and what a peer must do to be
//! forwarded (speak in time, be allowed, finish the handshake, not be banned).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::glob::wildcard_match;
use crate::ports::{ClientNames, PortPlan};

use super::{DEFAULT_DIST_PORT, Peers};

/// `[dist]`: the public dist ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistConfig {
    /// Addresses every public port is bound on.
    pub listen: Vec<IpAddr>,
    /// The pool of public ports, in the order they are handed out.
    pub ports: Vec<u16>,
    /// Node names with a fixed public port.
    pub pins: BTreeMap<String, u16>,
    /// Release clients (`rem-*`, `rpc-*`): they register but take no public port.
    pub client_names: ClientNames,
    /// How long to wait for a node's real port to accept a forwarded connection.
    pub connect_timeout: Duration,
    /// A peer that has not sent its whole first frame (its `send_name`, or a TLS
    /// ClientHello) within this long is closed.
    pub first_frame_timeout: Duration,
    /// A plain-TCP dist connection not authenticated (the node's challenge ack) within
    /// this long is closed.
    pub handshake_timeout: Duration,
    /// Once one side of a forwarded link has closed, how long the other may go on
    /// before it is closed too.
    pub linger: Duration,
    /// A link direction with no byte this long is reported silent (a live link ticks
    /// every `net_ticktime/4`, 15 s by default).
    pub silent_after: Duration,
    /// Dist connections forwarded at once (each holds two descriptors); more are
    /// closed at accept.
    pub max_connections: NonZeroUsize,
    /// Dist connections open at once from one address (the pod's own and loopback
    /// are not counted); more are closed at accept.
    pub max_per_source: NonZeroUsize,
    /// IPv6 callers count as one source per prefix of this length (one host is
    /// given a whole /64); IPv4 callers by address. Per-source limits, failures,
    /// withdrawals and bans are kept per source.
    pub ipv6_prefix: u8,
    /// Which peers (their full node names) may reach a node.
    pub allow_peers: AllowPeers,
    /// What a TLS dist connection (a whole ClientHello first) gets.
    pub tls: Tls,
    /// Sources never banned nor counted against `max_per_source`: `"local"` (the
    /// default: loopback and the pod's own address), addresses and CIDRs (the
    /// gateway's pods, in front of a sidecar), or `"any"`.
    pub trusted: Peers,
    /// `[dist.ban]`.
    pub ban: BanConfig,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            listen: vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()],
            ports: vec![DEFAULT_DIST_PORT],
            pins: BTreeMap::new(),
            client_names: ClientNames::default(),
            connect_timeout: Duration::from_secs(5),
            // OTP's net_setuptime, the longest a node itself waits for a handshake.
            first_frame_timeout: Duration::from_secs(7),
            // Above net_setuptime, so that no handshake a node would finish is cut.
            handshake_timeout: Duration::from_secs(15),
            linger: Duration::from_secs(5),
            silent_after: Duration::from_secs(30),
            max_connections: NonZeroUsize::new(8192).unwrap_or(NonZeroUsize::MIN),
            max_per_source: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            ipv6_prefix: crate::prefix::DEFAULT_IPV6_PREFIX,
            allow_peers: AllowPeers::default(),
            tls: Tls::default(),
            trusted: Peers::LOCAL,
            ban: BanConfig::default(),
        }
    }
}

impl DistConfig {
    /// The pool and pins as the registry uses them.
    pub fn port_plan(&self) -> PortPlan {
        PortPlan {
            pool: self.ports.clone(),
            pins: self.pins.clone().into_iter().collect::<HashMap<_, _>>(),
            clients: self.client_names.clone(),
        }
    }
}

/// `[dist] tls`: what a connection whose first frame is a TLS ClientHello gets. Its
/// handshake cannot be read, so neither `allow_peers` nor the ban applies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Forwarded untouched to the node, which does the TLS handshake itself (nodes
    /// running `inet_tls_dist`).
    #[default]
    Passthrough,
    /// Closed and counted (`result="tls_denied"`): for pods whose nodes do not speak
    /// TLS.
    Deny,
}

/// `[dist] allow_peers`: globs over a peer's full node name (`*` any run of
/// characters, `?` one), e.g. `"*@*.billing.svc.cluster.local"`. The default `["*"]`
/// allows every peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowPeers(Vec<String>);

impl Default for AllowPeers {
    fn default() -> Self {
        AllowPeers(vec!["*".to_owned()])
    }
}

impl AllowPeers {
    /// Whether a peer that names itself `name` may reach a node.
    pub fn allows(&self, name: &str) -> bool {
        self.0.iter().any(|pattern| wildcard_match(pattern, name))
    }
}

impl<'de> Deserialize<'de> for AllowPeers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let patterns = Vec::<String>::deserialize(deserializer)?;
        if patterns.is_empty() {
            return Err(de::Error::custom(
                "an empty list would refuse every caller; use [\"*\"] to allow all",
            ));
        }
        for pattern in &patterns {
            if pattern.is_empty() || pattern.chars().any(char::is_control) {
                return Err(de::Error::custom(format!(
                    "`{}` is not a node-name glob like \"*@*.my-namespace.svc.cluster.local\"",
                    pattern.escape_debug()
                )));
            }
        }
        Ok(AllowPeers(patterns))
    }
}

/// `[dist.ban]`: sources whose handshakes keep failing are closed at accept for a
/// while. Loopback and the pod's own addresses are never banned.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BanConfig {
    /// Failed handshakes (wrong cookie, refused name, silence, garbage) from one
    /// address within `within` that ban it; 0 turns bans off.
    pub failures: u32,
    /// Hang-ups right after the node's challenge (the node has made an atom of the
    /// claimed name, and nothing else is learnt) from one address within `within`
    /// that ban it; 0 turns this count off. Healthy nodes hang up there only in the
    /// rare races of reconnecting.
    pub withdrawals: u32,
    /// The window failures and withdrawals are counted in.
    #[serde(with = "humantime_serde")]
    pub within: Duration,
    /// How long a ban lasts.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

impl Default for BanConfig {
    fn default() -> Self {
        BanConfig {
            failures: 10,
            withdrawals: 100,
            within: Duration::from_secs(60),
            duration: Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_peers_match_whole_names() {
        let allow = AllowPeers(vec!["app@*.prod.svc".into(), "ops-?@*".into()]);
        assert!(allow.allows("app@10-0-0-1.prod.svc"));
        assert!(allow.allows("ops-1@laptop"));
        assert!(!allow.allows("app@10-0-0-1.dev.svc"));
        assert!(!allow.allows("ops-12@laptop"));
        assert!(AllowPeers::default().allows("anything@anywhere"));
    }
}
