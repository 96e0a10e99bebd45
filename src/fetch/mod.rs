//! Base images: `(from IMAGE)` becomes a root filesystem plus the image's config.
//!
//! Sources: an OCI registry (Docker's reference rules, mirrors, token auth), a local OCI
//! layout (`oci:PATH:TAG`) and a docker-archive tarball (`docker-archive:PATH`). Every blob
//! is verified against its digest; layers are unpacked so that nothing lands outside the
//! rootfs.
//!
//! Security: the spec author is not trusted. Local sources are read only below directories
//! the operator allowed (see [`local`]); an image's unpacked size is capped
//! ([`FetchOptions::max_image_bytes`]); `trusted.*` xattrs of layers are dropped (see
//! [`unpack`]); no error quotes the bytes of what was read.

pub mod auth;
pub mod digest;
pub mod docker_archive;
mod fsat;
pub mod image;
mod layers;
pub mod local;
pub mod mirror;
pub mod oci_layout;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::path::{Path, PathBuf};

use strata_sandbox::{Cancel, LogSink};

pub use image::Platform;
pub use reference::{parse_source, ImageSource};
pub use unpack::{unpack_layer, UnpackStats};

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

    /// Whether this invocation may use `image` at all, fetched or already cached: a local
    /// image (`oci:`, `docker-archive:`) imported by one build with `--allow-local-images`
    /// must not serve a later build without it.
    fn admit(&self, _image: &str) -> Result<(), FetchError> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("cannot fetch {reference}: {reason}")]
    Unavailable { reference: String, reason: String },
    #[error("refusing image {reference}: {reason}")]
    Unsafe { reference: String, reason: String },
    #[error("refusing image {reference}: it unpacks to more than {cap}, the cap on one image's unpacked size (--max-image-size)")]
    TooLarge { reference: String, cap: String },
    #[error("fetch of {0} cancelled")]
    Cancelled(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The image cannot be fetched, and why (a missing file, a bad manifest, a failed check).
pub(crate) fn unavailable(image: &str, reason: impl Into<String>) -> FetchError {
    FetchError::Unavailable {
        reference: image.to_owned(),
        reason: reason.into(),
    }
}

/// The default cap on the unpacked bytes of one image (`--max-image-size`).
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 50 << 30;

/// How images are fetched. Offline sources (`oci:`, `docker-archive:`) ignore the registry
/// settings.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// `(registry, url)` pairs: pulls from `registry` (normalised, `docker.io` for Docker
    /// Hub) go to `url` (`http://HOST[:PORT]` or `https://HOST[:PORT]`). First match wins.
    pub mirrors: Vec<(String, String)>,
    /// Hosts (`host[:port]`) that may be reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Docker's `config.json` for credentials; `None` means `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json` (a missing file means anonymous pulls).
    pub docker_config: Option<PathBuf>,
    /// The platform picked from multi-platform indexes (default: this host).
    pub platform: Platform,
    /// Canonical directories below which `oci:` and `docker-archive:` paths may be read
    /// (`--allow-local-images`); empty means local images are refused. Make entries with
    /// [`local::allowed_dir`].
    pub local_image_dirs: Vec<PathBuf>,
    /// The most bytes one image may unpack to, all layers together: file contents plus 512
    /// bytes per entry. 0 means no cap.
    pub max_image_bytes: u64,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            mirrors: Vec::new(),
            insecure_registries: Vec::new(),
            docker_config: None,
            platform: Platform::host(),
            local_image_dirs: Vec::new(),
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
        }
    }
}

impl FetchOptions {
    /// Options from the command line: every `--registry-mirror REGISTRY=URL` (`mirror_args`),
    /// then those in `STRATA_REGISTRY_MIRROR` (comma-separated), and every
    /// `--insecure-registry HOST`. A plain-HTTP mirror that is neither loopback nor listed
    /// as insecure is refused here, before any build starts.
    pub fn from_cli(mirror_args: &[String], insecure_registries: &[String]) -> Result<FetchOptions, FetchError> {
        let env = std::env::var(mirror::MIRROR_ENV).ok();
        let mirrors = mirror::parse_mirrors(mirror_args, env.as_deref())?;
        for (_, url) in &mirrors {
            if let Some(host) = url.strip_prefix("http://") {
                if !mirror::http_allowed(host, insecure_registries) {
                    return Err(FetchError::InvalidReference {
                        reference: url.clone(),
                        reason: format!("mirror {host} is plain HTTP but neither loopback nor an --insecure-registry"),
                    });
                }
            }
        }
        Ok(FetchOptions {
            mirrors,
            insecure_registries: insecure_registries.to_vec(),
            ..FetchOptions::default()
        })
    }

    /// Allows local images below each of `dirs` (`--allow-local-images`), canonicalised;
    /// a directory that is missing or below `/proc`, `/sys` or `/dev` is an error.
    pub fn allow_local_images(mut self, dirs: &[PathBuf]) -> Result<FetchOptions, String> {
        for dir in dirs {
            let canonical = local::allowed_dir(dir)?;
            if !self.local_image_dirs.contains(&canonical) {
                self.local_image_dirs.push(canonical);
            }
        }
        Ok(self)
    }
}

/// The fetcher for every image source, chosen by the reference's form (see
/// [`reference::parse_source`]).
#[derive(Debug, Clone, Default)]
pub struct ImageFetcher {
    options: FetchOptions,
}

impl ImageFetcher {
    pub fn new(options: FetchOptions) -> ImageFetcher {
        ImageFetcher { options }
    }

    pub fn options(&self) -> &FetchOptions {
        &self.options
    }
}

impl Fetcher for ImageFetcher {
    fn admit(&self, image: &str) -> Result<(), FetchError> {
        match parse_source(image)? {
            ImageSource::Registry(_) => Ok(()),
            ImageSource::OciLayout { path, .. } => {
                local::open_allowed(&self.options.local_image_dirs, &path, image, true).map(drop)
            }
            ImageSource::DockerArchive { path, .. } => {
                local::open_allowed(&self.options.local_image_dirs, &path, image, false).map(drop)
            }
        }
    }

    fn fetch(&self, image: &str, rootfs: &Path, log: &dyn LogSink, cancel: &Cancel) -> Result<ImageConfig, FetchError> {
        if cancel.is_cancelled() {
            return Err(FetchError::Cancelled(image.to_owned()));
        }
        match parse_source(image)? {
            ImageSource::Registry(reference) => registry::fetch(&self.options, &reference, image, rootfs, log, cancel),
            ImageSource::OciLayout { path, tag } => {
                let dir = local::open_allowed(&self.options.local_image_dirs, &path, image, true)?;
                oci_layout::fetch(&self.options, dir, &path, tag.as_deref(), image, rootfs, log, cancel)
            }
            ImageSource::DockerArchive { path, image: name } => {
                let file = local::open_allowed(&self.options.local_image_dirs, &path, image, false)?;
                docker_archive::fetch(
                    &self.options,
                    std::fs::File::from(file),
                    &path,
                    name.as_deref(),
                    image,
                    rootfs,
                    log,
                    cancel,
                )
            }
        }
    }
}
