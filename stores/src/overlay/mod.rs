//! The overlayfs store: each item is a layer directory stacked on its parent's.

use crate::{Store, StoreError, StoreSpec};

pub fn open(spec: &StoreSpec) -> Result<Box<dyn Store>, StoreError> {
    Err(StoreError::Unsuitable {
        path: spec.path(),
        reason: "the overlay backend is not implemented yet".to_owned(),
    })
}
