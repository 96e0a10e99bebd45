//! The btrfs store: a subvolume per item, results as read-only snapshots.

use crate::{Store, StoreError, StoreSpec};

pub fn open(spec: &StoreSpec) -> Result<Box<dyn Store>, StoreError> {
    Err(StoreError::Unsuitable {
        path: spec.path(),
        reason: "the btrfs backend is not implemented yet".to_owned(),
    })
}
