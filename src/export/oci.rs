//! `oci:DIR[:TAG]`: an OCI image layout. A new layout is made in a temporary directory
//! beside `DIR` and renamed into place complete; an existing layout (or an empty directory)
//! gets its blobs first, each renamed into place, and its `index.json` last, replaced by a
//! rename: readers see the old image or the new one, never half of one. A failed export
//! removes the blobs it added.

use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};

use super::config::{self, Descriptor};
use super::layer::{Digesting, LayerWriter, Times};
use super::{parent_dir, ExportError, Exported, LayerSource, Plan};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The gzip level of layers (flate2's default, as skopeo and podman use).
pub const GZIP_LEVEL: u32 = 6;

enum Work {
    /// A new layout, built here and renamed to the target at the end.
    New(tempfile::TempDir),
    /// The target itself (a layout already, or an empty directory).
    Existing,
}

/// A layout being written.
pub struct Layout {
    target: PathBuf,
    work: Work,
    /// Blobs this export added to an existing layout (removed again if it fails).
    added: Vec<PathBuf>,
    done: bool,
}

fn bad(dir: &Path, reason: &str) -> ExportError {
    ExportError::BadDest {
        dest: format!("oci:{}", dir.display()),
        reason: reason.to_owned(),
    }
}

/// A new file in `dir`, mode 0644, for renaming into place.
pub fn temp_file_in(dir: &Path) -> Result<tempfile::NamedTempFile, ExportError> {
    tempfile::Builder::new()
        .prefix(".strata-export-")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(ExportError::write(format!("creating a file in {}", dir.display())))
}

/// Writes `bytes` to `path` by a rename.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let dir = parent_dir(path)?;
    let mut tmp = temp_file_in(dir)?;
    let shown = path.display().to_string();
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(ExportError::write(format!("writing {shown}")))?;
    tmp.persist(path)
        .map_err(|e| ExportError::write(format!("renaming into {shown}"))(e.error))?;
    Ok(())
}

/// Writes one layer (gzip) through `out`; returns the uncompressed tar's digest (the diff id)
/// and the writer with the compressed bytes' digest and size.
pub fn gzip_layer<W: Write>(
    source: &LayerSource<'_>,
    times: Times,
    out: W,
) -> Result<(String, W, String, u64), ExportError> {
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Digesting::new(out), Compression::new(GZIP_LEVEL));
    let mut writer = LayerWriter::new(Digesting::new(gz), times);
    source.fill(&mut writer, times.keep)?;
    let (gz, diff_id, _) = writer.finish()?.finish();
    let compressed = gz.finish().map_err(ExportError::write("compressing a layer"))?;
    let (out, digest, size) = compressed.finish();
    Ok((diff_id, out, digest, size))
}

impl Layout {
    /// Starts writing the layout at `dir`.
    pub fn begin(dir: &Path) -> Result<Layout, ExportError> {
        let work = match std::fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => {
                let is_layout = dir.join("oci-layout").is_file();
                let empty = std::fs::read_dir(dir)
                    .map_err(ExportError::write(format!("reading {}", dir.display())))?
                    .next()
                    .is_none();
                if !is_layout && !empty {
                    return Err(bad(dir, "the directory exists and is neither empty nor an OCI layout"));
                }
                Work::Existing
            }
            Ok(_) => return Err(bad(dir, "exists and is not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = parent_dir(dir)?;
                let tmp = tempfile::Builder::new()
                    .prefix(".strata-export-")
                    .tempdir_in(parent)
                    .map_err(ExportError::write(format!(
                        "creating a directory in {}",
                        parent.display()
                    )))?;
                Work::New(tmp)
            }
            Err(e) => return Err(ExportError::write(format!("inspecting {}", dir.display()))(e)),
        };
        let layout = Layout {
            target: dir.to_owned(),
            work,
            added: Vec::new(),
            done: false,
        };
        let blobs = layout.blobs();
        std::fs::create_dir_all(&blobs).map_err(ExportError::write(format!("creating {}", blobs.display())))?;
        Ok(layout)
    }

    fn root(&self) -> &Path {
        match &self.work {
            Work::New(tmp) => tmp.path(),
            Work::Existing => &self.target,
        }
    }

    fn blobs(&self) -> PathBuf {
        self.root().join("blobs/sha256")
    }

    /// Renames a finished blob into place under its digest.
    fn commit_blob(&mut self, tmp: tempfile::NamedTempFile, digest: &str) -> Result<(), ExportError> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let path = self.blobs().join(hex);
        if path.exists() {
            // Same digest, same bytes: keep the one there.
            return Ok(());
        }
        tmp.as_file()
            .sync_all()
            .map_err(ExportError::write(format!("writing {}", path.display())))?;
        tmp.persist(&path)
            .map_err(|e| ExportError::write(format!("renaming into {}", path.display()))(e.error))?;
        if matches!(self.work, Work::Existing) {
            self.added.push(path);
        }
        Ok(())
    }

    /// Writes a layer; returns its descriptor and diff id.
    pub fn layer(&mut self, source: &LayerSource<'_>, times: Times) -> Result<(Descriptor, String), ExportError> {
        let tmp = temp_file_in(&self.blobs())?;
        let out = BufWriter::with_capacity(1 << 20, tmp);
        let (diff_id, out, digest, size) = gzip_layer(source, times, out)?;
        let tmp = out
            .into_inner()
            .map_err(|e| ExportError::write("writing a layer")(e.into_error()))?;
        self.commit_blob(tmp, &digest)?;
        let descriptor = Descriptor {
            media_type: config::LAYER_GZIP_MEDIA_TYPE.to_owned(),
            digest,
            size,
        };
        Ok((descriptor, diff_id))
    }

    /// Writes a small blob (config, manifest).
    pub fn blob(&mut self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, ExportError> {
        let mut tmp = temp_file_in(&self.blobs())?;
        tmp.write_all(bytes).map_err(ExportError::write("writing a blob"))?;
        let digest = crate::fetch::digest::sha256_digest(bytes);
        self.commit_blob(tmp, &digest)?;
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: bytes.len() as u64,
        })
    }

    /// Points `tag` at `manifest` in `index.json` (replacing what had that tag) and puts the
    /// layout in place.
    pub fn finish(mut self, manifest: &Descriptor, tag: &str) -> Result<(), ExportError> {
        let root = self.root().to_owned();
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            replace_file(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index_path = root.join("index.json");
        let mut index = match std::fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| ExportError::Read {
                context: format!("parsing {}", index_path.display()),
                source: std::io::Error::other(e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({
                "schemaVersion": 2,
                "mediaType": config::INDEX_MEDIA_TYPE,
                "manifests": [],
            }),
            Err(source) => {
                return Err(ExportError::Read {
                    context: format!("reading {}", index_path.display()),
                    source,
                })
            }
        };
        let entry = serde_json::json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": manifest.size,
            "annotations": { REF_NAME: tag },
        });
        let Some(manifests) = index.get_mut("manifests").and_then(|m| m.as_array_mut()) else {
            return Err(bad(&self.target, "its index.json has no manifests array"));
        };
        manifests.retain(|m| m.pointer("/annotations/org.opencontainers.image.ref.name") != Some(&tag.into()));
        manifests.push(entry);
        let bytes = serde_json::to_vec(&index).unwrap_or_default();
        replace_file(&index_path, &bytes)?;
        if let Work::New(tmp) = std::mem::replace(&mut self.work, Work::Existing) {
            let path = tmp.keep();
            let renamed = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .and_then(|()| std::fs::rename(&path, &self.target));
            if let Err(e) = renamed {
                let _ = std::fs::remove_dir_all(&path);
                return Err(ExportError::write(format!("renaming into {}", self.target.display()))(
                    e,
                ));
            }
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        if !self.done {
            for blob in &self.added {
                let _ = std::fs::remove_file(blob);
            }
        }
    }
}

/// Writes the plan's image into the layout at `dir`, tagged `tag`.
pub fn write(plan: &Plan<'_>, dir: &Path, tag: &str) -> Result<Exported, ExportError> {
    let mut layout = Layout::begin(dir)?;
    let mut layers = Vec::with_capacity(plan.layer_count());
    let mut diff_ids = Vec::with_capacity(plan.layer_count());
    plan.layers(|source| {
        let (descriptor, diff_id) = layout.layer(&source, plan.times)?;
        layers.push(descriptor);
        diff_ids.push(diff_id);
        Ok(())
    })?;
    let config = layout.blob(config::CONFIG_MEDIA_TYPE, &plan.config(&diff_ids))?;
    let manifest = layout.blob(config::MANIFEST_MEDIA_TYPE, &config::manifest_json(&config, &layers))?;
    layout.finish(&manifest, tag)?;
    Ok(Exported {
        manifest_digest: Some(manifest.digest),
        image_id: Some(config.digest),
        layers: layers.len(),
    })
}
