//! `tar:FILE` and `-`: the item's whole rootfs as one uncompressed tar (no image around it).

use std::io::{BufWriter, Write};
use std::path::Path;

use super::layer::LayerWriter;
use super::{parent_dir, ExportError, Exported, Plan};

fn write_to(plan: &Plan<'_>, out: impl Write) -> Result<(), ExportError> {
    let mut writer = LayerWriter::new(BufWriter::with_capacity(1 << 20, out), plan.times);
    plan.whole(|source| source.fill(&mut writer, plan.times.keep))?;
    writer
        .finish()?
        .flush()
        .map_err(ExportError::write("writing the rootfs tar"))
}

/// Writes the rootfs tar to `file` (whole or not at all), or to `stdout`.
pub fn write(plan: &Plan<'_>, file: Option<&Path>, stdout: &mut dyn Write) -> Result<Exported, ExportError> {
    let exported = Exported {
        manifest_digest: None,
        image_id: None,
        layers: 1,
    };
    let Some(file) = file else {
        write_to(plan, stdout)?;
        return Ok(exported);
    };
    let shown = file.display().to_string();
    let tmp = tempfile::Builder::new()
        .prefix(".strata-export-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(parent_dir(file)?)
        .map_err(ExportError::write(format!("creating a temporary file for {shown}")))?;
    write_to(plan, tmp.as_file())?;
    tmp.as_file()
        .sync_all()
        .map_err(ExportError::write(format!("writing {shown}")))?;
    tmp.persist(file)
        .map_err(|e| ExportError::write(format!("renaming into {shown}"))(e.error))?;
    Ok(exported)
}
