//! `oci:PATH[:TAG]`: an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/...`), as written by `skopeo copy ... oci:PATH:TAG` or `umoci`.
//!
//! The tag is looked up in `index.json` by its `org.opencontainers.image.ref.name`
//! annotation; without a tag the layout must hold exactly one image. Every blob (index,
//! manifest, config, layer) is verified against its digest as it is read.
//!
//! The layout was opened by [`super::local::open_allowed`] (below a directory the operator
//! allowed); its files are opened from that descriptor, never by path, and must be regular
//! files below it.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use oci_client::manifest::{ImageIndexEntry, OciImageIndex, OciImageManifest};
use strata_sandbox::{Cancel, LogSink};

use super::digest::{sha256_hex_of, verify_bytes};
use super::image::{check_layer_media_type, json_problem, offered_platforms, parse_config, select_platform};
use super::layers::{unpack_local_layers, LocalLayer};
use super::local::open_in_layout;
use super::progress::line;
use super::{unavailable, FetchError, FetchOptions, ImageConfig};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const MAX_METADATA_BYTES: u64 = 16 << 20;
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

struct Layout<'a> {
    dir: OwnedFd,
    root: &'a Path,
    image: &'a str,
}

impl Layout<'_> {
    /// The blob's path relative to the layout.
    fn blob_path(&self, digest: &str) -> Result<String, FetchError> {
        let hex = sha256_hex_of(digest).map_err(|e| unavailable(self.image, e))?;
        Ok(format!("blobs/sha256/{hex}"))
    }

    fn shown(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }

    fn open(&self, rel: &str) -> Result<File, FetchError> {
        open_in_layout(self.dir.as_fd(), rel, self.image, &self.shown(rel))
    }

    fn read_small(&self, rel: &str) -> Result<Vec<u8>, FetchError> {
        let file = self.open(rel)?;
        let mut bytes = Vec::new();
        file.take(MAX_METADATA_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| unavailable(self.image, format!("reading {}: {e}", self.shown(rel))))?;
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(unavailable(
                self.image,
                format!("{} is larger than 16 MiB", self.shown(rel)),
            ));
        }
        Ok(bytes)
    }

    /// A small blob (index, manifest, config), verified.
    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, FetchError> {
        let bytes = self.read_small(&self.blob_path(digest)?)?;
        verify_bytes(&bytes, digest).map_err(|e| unavailable(self.image, e))?;
        Ok(bytes)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, bytes: &[u8], what: &str) -> Result<T, FetchError> {
        serde_json::from_slice(bytes)
            .map_err(|e| unavailable(self.image, format!("{what} is not valid: {}", json_problem(&e))))
    }
}

fn pick_tagged<'a>(
    index: &'a OciImageIndex,
    tag: Option<&str>,
    image: &str,
) -> Result<&'a ImageIndexEntry, FetchError> {
    let tag_of = |e: &ImageIndexEntry| e.annotations.as_ref().and_then(|a| a.get(REF_NAME)).cloned();
    match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|e| tag_of(e).as_deref() == Some(tag))
            .ok_or_else(|| {
                let tags: Vec<String> = index.manifests.iter().filter_map(tag_of).collect();
                unavailable(image, format!("no image tagged {tag:?} (tags: {})", tags.join(", ")))
            }),
        None => match index.manifests.as_slice() {
            [only] => Ok(only),
            [] => Err(unavailable(image, "the layout holds no image")),
            _ => Err(unavailable(
                image,
                "the layout holds several images: name one with oci:PATH:TAG",
            )),
        },
    }
}

/// Reads the layout open at `dir` (named `path` in messages).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fetch(
    options: &FetchOptions,
    dir: OwnedFd,
    path: &Path,
    tag: Option<&str>,
    image: &str,
    rootfs: &Path,
    log: &dyn LogSink,
    cancel: &Cancel,
) -> Result<ImageConfig, FetchError> {
    let platform = &options.platform;
    let layout = Layout { dir, root: path, image };
    line(log, &format!("reading OCI layout {}", path.display()));
    let index_bytes = layout.read_small("index.json")?;
    let index: OciImageIndex = layout.parse(&index_bytes, "index.json")?;
    let top = pick_tagged(&index, tag, image)?;
    let resolved_digest = top.digest.clone();

    // Follow nested indexes (a multi-platform image) down to one manifest.
    let mut descriptor = top.clone();
    let mut depth = 0;
    let manifest: OciImageManifest = loop {
        let bytes = layout.read_blob(&descriptor.digest)?;
        if INDEX_TYPES.contains(&descriptor.media_type.as_str()) {
            depth += 1;
            if depth > 4 {
                return Err(unavailable(image, "indexes nested more than 4 deep"));
            }
            let nested: OciImageIndex = layout.parse(&bytes, "an index")?;
            let Some(entry) = select_platform(&nested.manifests, platform) else {
                return Err(unavailable(
                    image,
                    format!(
                        "the index {} has no image for {platform} (it offers {})",
                        descriptor.digest,
                        offered_platforms(&nested.manifests)
                    ),
                ));
            };
            line(
                log,
                &format!("index {}: {platform} manifest {}", descriptor.digest, entry.digest),
            );
            descriptor = entry.clone();
            continue;
        }
        break layout.parse(&bytes, "the manifest")?;
    };
    line(log, &format!("manifest {}", descriptor.digest));
    let config_bytes = layout.read_blob(&manifest.config.digest)?;
    let config = parse_config(&config_bytes, image)?;

    unpack_local_layers(image, rootfs, log, cancel, options, manifest.layers.len(), |index| {
        let layer = &manifest.layers[index];
        check_layer_media_type(&layer.media_type).map_err(|e| unavailable(image, e))?;
        Ok(LocalLayer {
            reader: layout.open(&layout.blob_path(&layer.digest)?)?,
            label: layer.digest.clone(),
            digest: Some(layer.digest.clone()),
            size: u64::try_from(layer.size).ok(),
            diff_id: None,
        })
    })?;
    Ok(ImageConfig {
        env: config.env,
        workdir: config.workdir,
        user: config.user,
        digest: Some(resolved_digest),
        resolved: Some(image.to_owned()),
    })
}
