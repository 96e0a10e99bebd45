//! Issue 15: a spec, a step or another host user gets nothing it was not given. One test per
//! attack, each tried through the real `strata` binary against real stores and runtimes
//! (root). `docs/security.md` names the test behind each defence; each test's comment says how
//! it failed on the code before its fix.
//!
//! - `store`: other host users (as `nobody`) against every store backend.
//! - `sandbox`: what a step may do to the host, under runc and crun.
//! - `fetch`: what a spec's base image names, a step's rootfs after it ran, and `exclude`.

mod common;

#[path = "security/fetch.rs"]
mod fetch;
#[path = "security/sandbox.rs"]
mod sandbox;
#[path = "security/store.rs"]
mod store;
