//! The `distgate` binary as a process: the command line, signals, logs, a real
//! Prometheus, the manifests, an unprivileged UID's pipe quota.

mod cli;
mod federation_reload;
mod gate;
mod helm;
mod lifecycle;
mod log_budget;
mod logging;
mod manifests;
mod observability;
mod pipe_quota;
mod prometheus;
mod workflows;
