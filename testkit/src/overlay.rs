//! A directory for an overlayfs store (`scripts/fixtures/overlay-dir`): on drop, every mount
//! the store left under it is unmounted before the directory is removed.

use std::path::{Path, PathBuf};

use crate::ScriptFixture;

pub struct OverlayDir {
    path: PathBuf,
    _fixture: ScriptFixture,
}

impl OverlayDir {
    /// A plain directory on the host filesystem (ext4 here).
    pub fn plain() -> Result<OverlayDir, String> {
        Self::create(&[])
    }

    /// A fresh tmpfs (OBuilder's usual setup for its overlay store).
    pub fn tmpfs() -> Result<OverlayDir, String> {
        Self::create(&["tmpfs"])
    }

    fn create(args: &[&str]) -> Result<OverlayDir, String> {
        let fixture = ScriptFixture::create("overlay-dir", args)?;
        if fixture.output.is_empty() {
            return Err("overlay-dir printed no directory".to_owned());
        }
        Ok(OverlayDir {
            path: PathBuf::from(&fixture.output),
            _fixture: fixture,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
