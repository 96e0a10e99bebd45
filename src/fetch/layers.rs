//! The layer loop of the local sources (`docker-archive:`, `oci:`): each layer checked
//! (digest, size, diff id), unpacked in order with progress, and all of them charged to one
//! budget (`--max-image-size`); the loop stops between layers when the build is cancelled.
//! (The registry's loop streams each layer from a download thread and has its own.)

use std::io::Read;
use std::path::Path;

use strata_sandbox::{Cancel, LogSink};

use super::progress::{CountingReader, LayerProgress};
use super::unpack::{unpack_layer_with, ByteBudget, LayerCheck};
use super::{FetchError, FetchOptions};

/// One layer of a local image, opened.
pub(super) struct LocalLayer<R> {
    pub reader: R,
    /// What progress lines call it (its digest, or its diff id).
    pub label: String,
    /// The digest of its compressed bytes, when known.
    pub digest: Option<String>,
    pub size: Option<u64>,
    /// The digest of its uncompressed tar, when known.
    pub diff_id: Option<String>,
}

/// Unpacks `count` layers into `rootfs`, in order; `open(index)` opens each in turn.
pub(super) fn unpack_local_layers<R: Read>(
    image: &str,
    rootfs: &Path,
    log: &dyn LogSink,
    cancel: &Cancel,
    options: &FetchOptions,
    count: usize,
    mut open: impl FnMut(usize) -> Result<LocalLayer<R>, FetchError>,
) -> Result<(), FetchError> {
    let mut used = 0u64;
    for index in 0..count {
        if cancel.is_cancelled() {
            return Err(FetchError::Cancelled(image.to_owned()));
        }
        let layer = open(index)?;
        let mut progress = LayerProgress::start(log, index, count, &layer.label, layer.size);
        let check = LayerCheck {
            digest: layer.digest,
            size: layer.size,
            diff_id: layer.diff_id,
            budget: ByteBudget::new(options.max_image_bytes, used),
        };
        let reader = CountingReader::new(std::io::BufReader::with_capacity(1 << 20, layer.reader), &mut progress);
        let stats = unpack_layer_with(reader, rootfs, &check, image, Some(cancel))?;
        used = used.saturating_add(stats.charged);
        progress.finish(&stats);
    }
    Ok(())
}
