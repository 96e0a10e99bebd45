//! The files an item carries about itself, beside its `rootfs/`: how it was made
//! (`strata.json`, for adoption after a crash) and, for a base image, its config
//! (`image.json`). Their names and formats are part of the store layout.

use std::path::Path;

/// The file in an item that records how it was made.
pub const ITEM_META: &str = "strata.json";
/// The image config of a base item.
pub const IMAGE_CONFIG: &str = "image.json";
/// The step's output.
pub const LOG: &str = "log";

/// What an item says about itself (`strata.json`), written just before commit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ItemMeta {
    pub id: String,
    pub parent: Option<String>,
    pub op: String,
    pub scheme: String,
    pub base_digest: Option<String>,
    pub duration_ms: u64,
}

impl ItemMeta {
    /// Reads `item/strata.json`; `None` when it is missing or unreadable.
    pub fn read(item: &Path) -> Option<ItemMeta> {
        let text = std::fs::read(item.join(ITEM_META)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}
