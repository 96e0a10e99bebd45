//! strata: a snapshot-layered build executor.
//!
//! A spec (`spec`) is turned into steps; each step gets a content-addressed id (`key`); the
//! builder (`build`) runs each uncached step in a sandbox (`strata-sandbox`) inside a
//! copy-on-write clone of its parent's snapshot in a store (`strata-stores`), records it in
//! SQLite (`db`) and fetches base images (`fetch`).

pub mod builder;
pub mod catalog;
pub mod db;
pub mod export;
pub mod fetch;
pub mod key;
pub mod spec;
pub mod worker;

pub use strata_sandbox as sandbox;
pub use strata_stores as stores;
