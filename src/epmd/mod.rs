//! EPMD: the wire format ([`message`], pure) and the server that answers it
//! ([`server`]).

pub mod message;
pub mod server;

pub use server::Server;
