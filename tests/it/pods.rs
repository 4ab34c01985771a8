//! Topologies in network namespaces (root): pods, Services as nftables rules,
//! gateways and their replicas behind a switch namespace, floods.

mod admission_pods;
mod federation;
mod gateway_leases;
mod gateway_pods;
mod gateway_replicas;
mod hostile;
mod links;
mod remsh;
mod several_nodes;
mod two_pods;
