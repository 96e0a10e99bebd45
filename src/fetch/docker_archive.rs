//! `docker-archive:PATH[:NAME:TAG]`: a `docker save` tarball (`manifest.json` listing the
//! config and the layer tars; legacy `ID/layer.tar` or `blobs/sha256/HEX` members).
//!
//! The archive is indexed once (member name to offset and size), then members are read in
//! place. The config is verified against the digest its name carries; each layer against
//! the config's `rootfs.diff_ids` (the digest of the uncompressed tar) and, for
//! `blobs/sha256/HEX` members, against HEX too.
//!
//! The file was opened by [`super::local::open_allowed`] (a regular file below a directory
//! the operator allowed). An error about a file that is not a tar archive never quotes its
//! bytes: the tar reader's messages name the header's path field, which for any other file
//! is its first 100 bytes (`/etc/shadow`'s first lines), so only the error's kind is shown.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use strata_sandbox::{Cancel, LogSink};

use super::digest::{sha256_digest, sha256_hex_of, verify_bytes};
use super::image::{json_problem, parse_config};
use super::layers::{unpack_local_layers, LocalLayer};
use super::progress::line;
use super::reference::parse_registry_reference;
use super::{unavailable, FetchError, FetchOptions, ImageConfig};

const MAX_METADATA_BYTES: u64 = 16 << 20;

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

enum Member {
    File { offset: u64, size: u64 },
    Symlink(String),
}

/// Cleans a member name: no leading `./` or `/`, no `.` components; `..` applied.
fn clean(name: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for comp in name.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

struct Archive<'a> {
    file: File,
    members: HashMap<String, Member>,
    image: &'a str,
}

impl<'a> Archive<'a> {
    fn open(file: File, path: &Path, image: &'a str) -> Result<Archive<'a>, FetchError> {
        let err = |e: std::io::Error| {
            if e.raw_os_error().is_some() {
                unavailable(image, format!("reading {}: {e}", path.display()))
            } else {
                // The tar reader's own message quotes header fields: never show it.
                let how = match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => "a truncated tar file",
                    _ => "not a valid tar file",
                };
                unavailable(image, format!("{} is not a docker archive: {how}", path.display()))
            }
        };
        let mut members = HashMap::new();
        {
            let mut archive = tar::Archive::new(&file);
            for entry in archive.entries_with_seek().map_err(err)? {
                let entry = entry.map_err(err)?;
                let name = clean(&String::from_utf8_lossy(&entry.path_bytes()));
                match entry.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        let member = Member::File {
                            offset: entry.raw_file_position(),
                            size: entry.size(),
                        };
                        members.insert(name, member);
                    }
                    tar::EntryType::Symlink => {
                        if let Some(target) = entry.link_name_bytes() {
                            let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                            let target = String::from_utf8_lossy(&target).into_owned();
                            members.insert(name.clone(), Member::Symlink(clean(&format!("{dir}/{target}"))));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Archive { file, members, image })
    }

    /// Offset and size of a member, following member symlinks (legacy archives link
    /// duplicate layers).
    fn locate(&self, name: &str) -> Result<(u64, u64), FetchError> {
        let mut name = clean(name);
        for _ in 0..8 {
            match self.members.get(&name) {
                Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Symlink(target)) => name = target.clone(),
                None => break,
            }
        }
        Err(unavailable(self.image, format!("the archive has no member {name:?}")))
    }

    fn member_reader(&self, name: &str) -> Result<(impl Read + '_, u64), FetchError> {
        let (offset, size) = self.locate(name)?;
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| unavailable(self.image, format!("seeking to {name}: {e}")))?;
        Ok((file.take(size), size))
    }

    fn read_small(&self, name: &str) -> Result<Vec<u8>, FetchError> {
        let (reader, size) = self.member_reader(name)?;
        if size > MAX_METADATA_BYTES {
            return Err(unavailable(self.image, format!("{name} is larger than 16 MiB")));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        let mut reader = reader;
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| unavailable(self.image, format!("reading {name}: {e}")))?;
        Ok(bytes)
    }
}

/// The digest a member's name carries (`HEX.json`, `blobs/sha256/HEX`), if any.
fn digest_in_name(name: &str) -> Option<String> {
    let name = clean(name);
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))?;
    let digest = format!("sha256:{hex}");
    let valid = sha256_hex_of(&digest).is_ok();
    valid.then_some(digest)
}

/// Does `tag` (as written after the path) name one of `repo_tags`? Compared as written
/// and after Docker's normalisation (`busybox` = `docker.io/library/busybox:latest`).
fn tag_matches(repo_tags: &[String], tag: &str) -> bool {
    let normal = |s: &str| parse_registry_reference(s).map(|r| r.whole()).ok();
    let wanted = normal(tag);
    repo_tags
        .iter()
        .any(|t| t == tag || (wanted.is_some() && normal(t) == wanted))
}

/// Reads the archive open as `file` (named `path` in messages).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fetch(
    options: &FetchOptions,
    file: File,
    path: &Path,
    wanted: Option<&str>,
    image: &str,
    rootfs: &Path,
    log: &dyn LogSink,
    cancel: &Cancel,
) -> Result<ImageConfig, FetchError> {
    line(log, &format!("reading docker archive {}", path.display()));
    let archive = Archive::open(file, path, image)?;
    let manifest_bytes = archive.read_small("manifest.json")?;
    let images: Vec<ArchiveImage> = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| unavailable(image, format!("manifest.json is not valid: {}", json_problem(&e))))?;
    let chosen = match wanted {
        Some(tag) => images
            .iter()
            .find(|i| tag_matches(i.repo_tags.as_deref().unwrap_or(&[]), tag))
            .ok_or_else(|| unavailable(image, format!("the archive has no image tagged {tag:?}")))?,
        None => match images.as_slice() {
            [only] => only,
            [] => return Err(unavailable(image, "the archive holds no image")),
            _ => {
                return Err(unavailable(
                    image,
                    "the archive holds several images: name one with docker-archive:PATH:NAME:TAG",
                ))
            }
        },
    };

    let config_bytes = archive.read_small(&chosen.config)?;
    let config_digest = sha256_digest(&config_bytes);
    match digest_in_name(&chosen.config) {
        Some(expected) => verify_bytes(&config_bytes, &expected).map_err(|e| unavailable(image, e))?,
        None => line(
            log,
            &format!("note: config {} carries no digest to check", chosen.config),
        ),
    }
    let config = parse_config(&config_bytes, image)?;
    if config.diff_ids.len() != chosen.layers.len() {
        return Err(unavailable(
            image,
            format!(
                "the config lists {} layers but manifest.json {}",
                config.diff_ids.len(),
                chosen.layers.len()
            ),
        ));
    }
    line(log, &format!("config {config_digest}"));

    unpack_local_layers(image, rootfs, log, cancel, options, chosen.layers.len(), |index| {
        let (layer, diff_id) = (&chosen.layers[index], &config.diff_ids[index]);
        sha256_hex_of(diff_id).map_err(|e| unavailable(image, e))?;
        let (reader, size) = archive.member_reader(layer)?;
        Ok(LocalLayer {
            reader,
            label: diff_id.clone(),
            digest: digest_in_name(layer).filter(|_| layer.starts_with("blobs/")),
            size: Some(size),
            diff_id: Some(diff_id.clone()),
        })
    })?;
    Ok(ImageConfig {
        env: config.env,
        workdir: config.workdir,
        user: config.user,
        digest: Some(config_digest),
        resolved: Some(image.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(clean("./a/../b/layer.tar"), "b/layer.tar");
        let hex = "ab".repeat(32);
        assert_eq!(digest_in_name(&format!("{hex}.json")), Some(format!("sha256:{hex}")));
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_in_name("config.json"), None);
        assert!(tag_matches(&["docker.io/library/busybox:latest".into()], "busybox"));
        assert!(tag_matches(&["busybox:latest".into()], "busybox:latest"));
        assert!(!tag_matches(&["alpine:latest".into()], "busybox"));
    }
}
