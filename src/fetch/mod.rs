//! Base images: `(from IMAGE)` becomes a root filesystem plus the image's config.
//!
//! Sources: an OCI registry (Docker's reference rules, mirrors, token auth), a local OCI
//! layout (`oci:PATH:TAG`) and a docker-archive tarball (`docker-archive:PATH`). Every blob
//! is verified against its digest; layers are unpacked so that nothing lands outside the
//! rootfs.

use std::path::Path;

use strata_sandbox::{Cancel, LogSink};

/// What strata keeps of an image's config (stored as `image.json` next to the rootfs).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// `Config.Env`, in order: the initial environment of the build.
    pub env: Vec<(String, String)>,
    /// For information only: strata starts in `/` as root whatever the image says.
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// The manifest digest the reference resolved to.
    pub digest: Option<String>,
    /// The fully resolved reference (`docker.io/library/busybox:latest`).
    pub resolved: Option<String>,
}

pub trait Fetcher: Send + Sync {
    /// Unpacks `image` into the empty directory `rootfs` and returns its config.
    fn fetch(&self, image: &str, rootfs: &Path, log: &dyn LogSink, cancel: &Cancel) -> Result<ImageConfig, FetchError>;
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("cannot fetch {reference}: {reason}")]
    Unavailable { reference: String, reason: String },
    #[error("refusing image {reference}: {reason}")]
    Unsafe { reference: String, reason: String },
    #[error("fetch of {0} cancelled")]
    Cancelled(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
