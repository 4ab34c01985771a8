//! Real Erlang/OTP nodes and the real `epmd` on loopback: conformance, admission, a
//! gateway before real nodes, probes, releases, reloads.

mod admission;
mod conformance;
mod faults;
mod gate;
mod gateway;
mod openshift;
mod otp;
mod probe;
mod quickstart;
mod release;
mod reload;
