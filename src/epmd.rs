//! EPMD: the wire format ([`message`], pure), the server that answers it
//! ([`server`]) and the client side ([`client`]).

pub mod client;
pub mod message;
pub mod node_info;
pub(crate) mod server;

pub use node_info::{NodeInfo, NodeType};
pub(crate) use server::Server;

/// The EPMD port every BEAM node in a cluster dials (OTP's default; `ERL_EPMD_PORT`
/// changes it for a node).
pub const PORT: u16 = 4369;
