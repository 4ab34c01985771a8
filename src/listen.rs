//! Binding listeners: at start (the binary) and for public ports a reload adds. An
//! address whose family the host lacks (IPv6 disabled in the pod, say) is skipped
//! while another address serves the same purpose; any other failure is an error that
//! names the address and the key it came from.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tracing::warn;

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Something else listens there.
    #[error("cannot listen on {addr} (`{key}`): the address is in use{hint}")]
    InUse {
        /// The address.
        addr: SocketAddr,
        /// The configuration key it came from.
        key: String,
        /// What usually holds it, and the fix.
        hint: &'static str,
    },
    /// Any other failure.
    #[error("cannot listen on {addr} (`{key}`): {source}")]
    Other {
        /// The address.
        addr: SocketAddr,
        /// The configuration key it came from.
        key: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A listener on `addr` (from configuration key `key`); `None` when `addr` is IPv6 and
/// the host has no IPv6.
pub fn bind(addr: SocketAddr, key: &str) -> Result<Option<TcpListener>, BindError> {
    match try_bind(addr) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if addr.is_ipv6() && family_missing(&e) => {
            warn!(%addr, "IPv6 unavailable, not listening there: {e}");
            Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(BindError::InUse {
            addr,
            key: key.to_owned(),
            hint: in_use_hint(key),
        }),
        Err(source) => Err(BindError::Other {
            addr,
            key: key.to_owned(),
            source,
        }),
    }
}

/// What usually holds an address of `key`, and the fix.
fn in_use_hint(key: &str) -> &'static str {
    if key.starts_with("epmd") {
        ": an epmd is running, most often one that a node or a release command \
         (`bin/app rpc`, `remote`, `eval`) started while distgate was down, lacking \
         `-start_epmd false` (set ERL_AFLAGS=\"-start_epmd false\" in the app container: \
         every erl reads it). Stop it with `epmd -kill`; where that answers `Killing not \
         allowed - living nodes in database.`, end that epmd by its PID (`pkill -x epmd` in \
         the app container) or restart the app container; then start distgate again"
    } else {
        ": another distgate, or another program, holds the port"
    }
}

fn family_missing(e: &io::Error) -> bool {
    // EAFNOSUPPORT (97) and EADDRNOTAVAIL (99) on Linux.
    matches!(e.raw_os_error(), Some(97 | 99))
        || e.kind() == io::ErrorKind::AddrNotAvailable
        || e.kind() == io::ErrorKind::Unsupported
}

fn try_bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // Lets "0.0.0.0" and "[::]" hold the same port side by side.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Binds public port `port` on every address of `ips` (`[dist] listen`). Fails when
/// an address fails for another reason than a missing family, or none could be bound.
pub fn bind_public_port(
    ips: &[std::net::IpAddr],
    port: u16,
) -> Result<Vec<TcpListener>, BindError> {
    let mut bound = vec![];
    for &ip in ips {
        if let Some(listener) = bind(SocketAddr::new(ip, port), "dist.ports")? {
            bound.push(listener);
        }
    }
    match bound.is_empty() {
        false => Ok(bound),
        true => Err(BindError::Other {
            addr: SocketAddr::new(ips.first().copied().unwrap_or([0, 0, 0, 0].into()), port),
            key: "dist.listen".to_owned(),
            source: io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no address of `dist.listen` could be bound",
            ),
        }),
    }
}
