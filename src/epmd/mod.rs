//! EPMD: the wire format ([`message`], pure), the server that answers it
//! ([`server`]) and the client side ([`client`]).

pub mod client;
pub mod message;
pub mod server;

pub use server::Server;
