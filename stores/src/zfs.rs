//! The ZFS store, driven through the `zfs`/`zpool` commands (OpenZFS and zfs-fuse).

use crate::{Store, StoreError, StoreSpec};

pub fn open(spec: &StoreSpec) -> Result<Box<dyn Store>, StoreError> {
    Err(StoreError::Unsuitable {
        path: spec.path(),
        reason: "the zfs backend is not implemented yet".to_owned(),
    })
}
