//! The copy store (`rsync:` and `xfs:`): items are directory trees copied natively, with reflinks where the filesystem can.

use crate::{Store, StoreError, StoreSpec};

pub fn open(spec: &StoreSpec) -> Result<Box<dyn Store>, StoreError> {
    Err(StoreError::Unsuitable {
        path: spec.path(),
        reason: "the copy backend is not implemented yet".to_owned(),
    })
}
