//! Typed wrappers around the `registry` and `busybox-image` fixtures.

use std::path::{Path, PathBuf};

use crate::ScriptFixture;

/// A docker-registry on 127.0.0.1 holding `library/busybox:latest`; stopped on drop.
pub struct LocalRegistry {
    fixture: ScriptFixture,
}

impl LocalRegistry {
    /// Starts a registry with the plain busybox image.
    pub fn start() -> Result<LocalRegistry, String> {
        LocalRegistry::start_with_extra_mb(0)
    }

    /// Starts a registry whose busybox image has an extra layer of `size_mb` MiB of random data.
    pub fn start_with_extra_mb(size_mb: u32) -> Result<LocalRegistry, String> {
        let size = size_mb.to_string();
        let fixture = ScriptFixture::create("registry", &[&size])?;
        Ok(LocalRegistry { fixture })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.fixture.output
    }

    /// `127.0.0.1:PORT/library/busybox:latest`.
    pub fn busybox(&self) -> String {
        format!("{}/library/busybox:latest", self.addr())
    }

    /// The fixture's private directory (config, storage, log, policy.json for skopeo).
    pub fn dir(&self) -> &Path {
        self.fixture.dir()
    }

    /// `skopeo copy` arguments that work offline against this registry (our own policy).
    pub fn skopeo_base_args(&self) -> Vec<String> {
        vec![
            "--policy".to_owned(),
            self.dir().join("policy.json").display().to_string(),
        ]
    }
}

/// An OCI layout of busybox at `path()` (tag `latest`).
pub struct BusyboxImage {
    fixture: ScriptFixture,
}

impl BusyboxImage {
    pub fn create() -> Result<BusyboxImage, String> {
        Ok(BusyboxImage {
            fixture: ScriptFixture::create("busybox-image", &[])?,
        })
    }

    /// The OCI layout directory.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.fixture.output)
    }
}
