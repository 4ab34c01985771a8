//! distgate's integration tests, one binary: `tests/README.md` says what each group
//! proves and what it needs (root, Erlang, dnsmasq, Prometheus, kubectl).
//!
//! Run them with `cargo nextest run` (as `scripts/test` does): nextest gives every test
//! its own process, which the tests that read process-wide metrics exactly rely on.

// A test may panic on what it did not expect; the helpers are `pub` for the groups.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

mod beam;
mod pods;
mod process;
mod wire;
