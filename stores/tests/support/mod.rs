//! Backend fixtures for the store conformance suite: each gives a fresh store spec on a real
//! filesystem and tears the filesystem down on drop (even when the test panics).
//!
//! Adding a backend: write a function here returning `Option<BackendFixture>` (None, with a
//! printed notice, when the machine cannot run it), then add one `backend!` line in
//! `conformance.rs`.

#![allow(dead_code)]

use std::any::Any;
use std::path::PathBuf;

use strata_stores::{Store, StoreSpec};
use strata_testkit::stores::{LoopFilesystem, PlainDirectory};

/// A store spec on a fixture that lives as long as this value.
pub struct BackendFixture {
    pub spec: StoreSpec,
    /// A directory on the same filesystem outside the store, for tests that look for
    /// anything escaping the store root.
    pub scratch: PathBuf,
    _guard: Box<dyn Any>,
}

impl BackendFixture {
    pub fn new(spec: StoreSpec, scratch: PathBuf, guard: impl Any) -> BackendFixture {
        BackendFixture {
            spec,
            scratch,
            _guard: Box::new(guard),
        }
    }

    /// Opens the store, as a new process would (each call registers a new owner).
    pub fn open(&self) -> Box<dyn Store> {
        strata_stores::open(&self.spec).unwrap_or_else(|e| panic!("opening {}: {e}", self.spec))
    }
}

fn root_or_skip(backend: &str) -> bool {
    if strata_testkit::is_root() {
        true
    } else {
        eprintln!("skipping the {backend} conformance case: needs root");
        false
    }
}

pub fn btrfs() -> Option<BackendFixture> {
    if !root_or_skip("btrfs") {
        return None;
    }
    let fs = LoopFilesystem::btrfs("512M").unwrap();
    let mount = fs.mount_point();
    Some(BackendFixture::new(StoreSpec::Btrfs(mount.join("store")), mount, fs))
}

pub fn xfs() -> Option<BackendFixture> {
    if !root_or_skip("xfs") {
        return None;
    }
    let fs = LoopFilesystem::xfs("512M").unwrap();
    let mount = fs.mount_point();
    Some(BackendFixture::new(StoreSpec::Xfs(mount.join("store")), mount, fs))
}

pub fn rsync() -> Option<BackendFixture> {
    if !root_or_skip("rsync") {
        return None;
    }
    let dir = PlainDirectory::create().unwrap();
    let path = dir.path().to_path_buf();
    Some(BackendFixture::new(
        StoreSpec::Rsync {
            path: path.join("store"),
            mode: strata_stores::RsyncMode::Copy,
        },
        path,
        dir,
    ))
}

pub fn zfs() -> Option<BackendFixture> {
    if !root_or_skip("zfs") {
        return None;
    }
    let pool = strata_testkit::zfs::ZfsPool::create(None).unwrap();
    let spec: StoreSpec = pool.spec().parse().unwrap();
    let scratch = PathBuf::from(&pool.mountpoint)
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    Some(BackendFixture::new(spec, scratch, pool))
}

pub fn overlayfs() -> Option<BackendFixture> {
    if !root_or_skip("overlayfs") {
        return None;
    }
    let dir = strata_testkit::overlay::OverlayDir::plain().unwrap();
    let path = dir.path().to_path_buf();
    Some(BackendFixture::new(StoreSpec::Overlayfs(path.join("store")), path, dir))
}
