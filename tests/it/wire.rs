//! The library in this process on loopback sockets: EPMD, forwarding, admin, DNS
//! against a real dnsmasq, properties and soaks. Needs nothing but `dnsmasq` (dns).

mod admin;
mod dashboard;
mod dns;
mod engine;
mod epmd;
mod federation;
mod forward;
mod gate;
mod properties;
mod soak;
