//! Test fixtures for strata's integration tests.
//!
//! Every fixture is a script under `scripts/fixtures/` with `create DIR` and `destroy DIR`
//! verbs (so benchmarks, the README's main job and tests share one implementation), wrapped
//! here in a guard whose `Drop` always runs `destroy`, even when the test panics.

pub mod fakes;
pub mod leftovers;
pub mod overlay;
pub mod registry;
pub mod sandbox;
pub mod script;
pub mod stores;
pub mod zfs;

pub use script::ScriptFixture;

use std::path::PathBuf;

/// The repository root (where `scripts/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// True when running as root (the real-component tests need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
