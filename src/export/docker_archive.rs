//! `docker-archive:FILE[:NAME:TAG]`: a tarball `docker load` and `podman load` read, laid out
//! as skopeo writes one: `<diff-id>.tar` per layer (uncompressed, as `docker save` writes
//! them), `<config-digest>.json`, and `manifest.json`.
//!
//! One pass: each layer is streamed into the archive behind a placeholder header, which is
//! filled in (name from the layer's digest, size) once the layer is written. A layer equal
//! to an earlier one is cut off again (the manifest names the first copy twice). The
//! archive is a temporary file renamed to FILE at the end.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use super::layer::{Digesting, LayerWriter};
use super::oci::temp_file_in;
use super::{parent_dir, ExportError, Exported, Plan};

const BLOCK: u64 = 512;

fn header(name: &str, size: u64, epoch: u64) -> Result<tar::Header, ExportError> {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(name)
        .map_err(ExportError::write(format!("naming {name} in the archive")))?;
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(epoch);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    Ok(header)
}

fn padding(size: u64) -> usize {
    ((BLOCK - size % BLOCK) % BLOCK) as usize
}

struct Archive {
    out: BufWriter<File>,
    epoch: u64,
}

impl Archive {
    fn io(&self) -> impl FnOnce(std::io::Error) -> ExportError {
        ExportError::write("writing the archive")
    }

    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<(), ExportError> {
        let header = header(name, bytes.len() as u64, self.epoch)?;
        let io = self.io();
        self.out
            .write_all(header.as_bytes())
            .and_then(|()| self.out.write_all(bytes))
            .and_then(|()| {
                self.out
                    .write_all(&[0u8; BLOCK as usize][..padding(bytes.len() as u64)])
            })
            .map_err(io)
    }
}

/// Writes the plan's image as a docker-archive at `file`, tagged `name` (`NAME:TAG`).
pub fn write(plan: &Plan<'_>, file: &Path, name: Option<&str>) -> Result<Exported, ExportError> {
    let tmp = temp_file_in(parent_dir(file)?)?;
    let handle = tmp
        .as_file()
        .try_clone()
        .map_err(ExportError::write(format!("writing {}", file.display())))?;
    let mut archive = Archive {
        out: BufWriter::with_capacity(1 << 20, handle),
        epoch: plan.times.epoch,
    };
    let mut diff_ids: Vec<String> = Vec::with_capacity(plan.layer_count());
    let mut seen = HashSet::new();
    plan.layers(|source| {
        let io = archive.io();
        let start = archive.out.stream_position().map_err(io)?;
        let io = archive.io();
        archive.out.write_all(&[0u8; BLOCK as usize]).map_err(io)?;
        let mut writer = LayerWriter::new(Digesting::new(&mut archive.out), plan.times);
        source.fill(&mut writer, plan.times.keep)?;
        let (_, diff_id, size) = writer.finish()?.finish();
        let hex = diff_id.strip_prefix("sha256:").unwrap_or(&diff_id).to_owned();
        diff_ids.push(diff_id);
        let io = archive.io();
        if !seen.insert(hex.clone()) {
            // The same bytes are in the archive already: drop this copy.
            archive.out.flush().map_err(io)?;
            let io = archive.io();
            archive.out.get_ref().set_len(start).map_err(io)?;
            let io = archive.io();
            archive.out.seek(SeekFrom::Start(start)).map_err(io)?;
            return Ok(());
        }
        archive
            .out
            .write_all(&[0u8; BLOCK as usize][..padding(size)])
            .map_err(io)?;
        let io = archive.io();
        let end = archive.out.stream_position().map_err(io)?;
        let header = header(&format!("{hex}.tar"), size, plan.times.epoch)?;
        let io = archive.io();
        archive
            .out
            .seek(SeekFrom::Start(start))
            .and_then(|_| archive.out.write_all(header.as_bytes()))
            .and_then(|()| archive.out.seek(SeekFrom::Start(end)).map(drop))
            .map_err(io)?;
        Ok(())
    })?;
    let config = plan.config(&diff_ids);
    let config_digest = crate::fetch::digest::sha256_digest(&config);
    let config_name = format!("{}.json", config_digest.trim_start_matches("sha256:"));
    let layers: Vec<String> = diff_ids
        .iter()
        .map(|d| format!("{}.tar", d.trim_start_matches("sha256:")))
        .collect();
    let repo_tags: Option<Vec<String>> = name.map(|n| {
        let last = n.rsplit('/').next().unwrap_or(n);
        if last.contains(':') {
            vec![n.to_owned()]
        } else {
            vec![format!("{n}:latest")]
        }
    });
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": repo_tags,
        "Layers": layers,
    }]);
    archive.put(&config_name, &config)?;
    archive.put("manifest.json", &serde_json::to_vec(&manifest).unwrap_or_default())?;
    let io = archive.io();
    archive
        .out
        .write_all(&[0u8; 2 * BLOCK as usize])
        .and_then(|()| archive.out.flush())
        .map_err(io)?;
    drop(archive);
    let shown = file.display().to_string();
    tmp.as_file()
        .sync_all()
        .map_err(ExportError::write(format!("writing {shown}")))?;
    tmp.persist(file)
        .map_err(|e| ExportError::write(format!("renaming into {shown}"))(e.error))?;
    Ok(Exported {
        manifest_digest: None,
        image_id: Some(config_digest),
        layers: diff_ids.len(),
    })
}
