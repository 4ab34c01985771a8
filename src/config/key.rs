//! The keys of the configuration as a reload sees them: [`Key`] names each (as the
//! file and the docs spell it), knows whether a reload may change it, and
//! [`changed`] lists the keys whose values differ between two configurations. One
//! table below says all three; a key misspelt anywhere else does not compile.

use std::fmt;

use super::Config;

/// Declares [`Key`]: each variant with its name, the field path of its value in
/// [`Config`], and `live` (a reload applies it) or `restart` (only a restart does).
macro_rules! keys {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $($path:ident).+, $when:ident; )*) => {
        /// A key (or a whole section) of the configuration.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Key {
            $( $(#[$doc])* $variant, )*
        }

        impl Key {
            /// Every key, in the order of the file's documentation.
            pub const ALL: &[Key] = &[$(Key::$variant),*];

            /// The key as the file spells it: `section.name`, or the section.
            pub fn name(self) -> &'static str {
                match self {
                    $( Key::$variant => $name, )*
                }
            }

            /// Whether only a restart applies it: the listener addresses (their
            /// sockets are bound once), and what the admin server, the byte engine
            /// and the metric series are built with.
            pub fn restart_only(self) -> bool {
                match self {
                    $( Key::$variant => keys!(@restart $when), )*
                }
            }
        }

        /// The keys whose values differ between `old` and `new`, in the order of the
        /// file's documentation (for the reload log line).
        pub fn changed(old: &Config, new: &Config) -> Vec<Key> {
            let mut keys = vec![];
            $( if old.$($path).+ != new.$($path).+ { keys.push(Key::$variant); } )*
            keys
        }
    };
    (@restart live) => { false };
    (@restart restart) => { true };
}

keys! {
    /// `[epmd] listen`.
    EpmdListen = "epmd.listen", epmd.listen, restart;
    /// `[epmd] register_from`.
    EpmdRegisterFrom = "epmd.register_from", epmd.register_from, live;
    /// `[epmd] names_from`.
    EpmdNamesFrom = "epmd.names_from", epmd.names_from, live;
    /// `[epmd] packet_timeout`.
    EpmdPacketTimeout = "epmd.packet_timeout", epmd.packet_timeout, live;
    /// `[epmd] allow_kill`.
    EpmdAllowKill = "epmd.allow_kill", epmd.allow_kill, live;
    /// `[epmd] relaxed_command_check`.
    EpmdRelaxedCommandCheck = "epmd.relaxed_command_check", epmd.relaxed_command_check, live;
    /// `[epmd] max_connections`.
    EpmdMaxConnections = "epmd.max_connections", epmd.max_connections, live;
    /// `[dist] listen`.
    DistListen = "dist.listen", dist.listen, restart;
    /// `[dist] ports`.
    DistPorts = "dist.ports", dist.ports, live;
    /// `[dist.pins]`.
    DistPins = "dist.pins", dist.pins, live;
    /// `[dist] client_names`.
    DistClientNames = "dist.client_names", dist.client_names, live;
    /// `[dist] connect_timeout`.
    DistConnectTimeout = "dist.connect_timeout", dist.connect_timeout, live;
    /// `[dist] first_frame_timeout`.
    DistFirstFrameTimeout = "dist.first_frame_timeout", dist.first_frame_timeout, live;
    /// `[dist] handshake_timeout`.
    DistHandshakeTimeout = "dist.handshake_timeout", dist.handshake_timeout, live;
    /// `[dist] linger`.
    DistLinger = "dist.linger", dist.linger, live;
    /// `[dist] silent_after`.
    DistSilentAfter = "dist.silent_after", dist.silent_after, live;
    /// `[dist] max_connections`.
    DistMaxConnections = "dist.max_connections", dist.max_connections, live;
    /// `[dist] max_per_source`.
    DistMaxPerSource = "dist.max_per_source", dist.max_per_source, live;
    /// `[dist] ipv6_prefix`.
    DistIpv6Prefix = "dist.ipv6_prefix", dist.ipv6_prefix, restart;
    /// `[dist] allow_peers`.
    DistAllowPeers = "dist.allow_peers", dist.allow_peers, live;
    /// `[dist] tls`.
    DistTls = "dist.tls", dist.tls, live;
    /// `[dist] trusted`.
    DistTrusted = "dist.trusted", dist.trusted, live;
    /// `[dist.ban]`.
    DistBan = "dist.ban", dist.ban, live;
    /// `[forward]`.
    Forward = "forward", forward, restart;
    /// `[admin] listen`.
    AdminListen = "admin.listen", admin.listen, restart;
    /// `[admin] ready_when`.
    AdminReadyWhen = "admin.ready_when", admin.ready_when, live;
    /// `[admin] header_timeout`.
    AdminHeaderTimeout = "admin.header_timeout", admin.header_timeout, restart;
    /// `[admin] max_connections`.
    AdminMaxConnections = "admin.max_connections", admin.max_connections, restart;
    /// `[shutdown] grace`.
    ShutdownGrace = "shutdown.grace", shutdown.grace, live;
    /// The `[[route]]` tables.
    Route = "route", routes, live;
    /// `[dns]`.
    Dns = "dns", dns, live;
    /// `[metrics]`.
    Metrics = "metrics", metrics, restart;
    /// `[log] level`.
    LogLevel = "log.level", log.level, live;
    /// `[federation] listen`.
    FederationListen = "federation.listen", federation.listen, restart;
    /// `[federation] cert`.
    FederationCert = "federation.cert", federation.cert, live;
    /// `[federation] key`.
    FederationKey = "federation.key", federation.key, live;
    /// `[federation] ca`.
    FederationCa = "federation.ca", federation.ca, live;
    /// `[federation] peers`.
    FederationPeers = "federation.peers", federation.peers, live;
    /// `[federation] handshake_timeout`.
    FederationHandshakeTimeout = "federation.handshake_timeout", federation.handshake_timeout, live;
    /// `[federation] max_connections`.
    FederationMaxConnections = "federation.max_connections", federation.max_connections, restart;
    /// `[federation] watch_every`.
    FederationWatchEvery = "federation.watch_every", federation.watch_every, live;
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}
