//! EPMD: the wire format ([`message`], pure), the server that answers it
//! ([`server`]) and the client side ([`client`]).

pub mod client;
pub mod message;
pub(crate) mod server;

pub(crate) use server::Server;
