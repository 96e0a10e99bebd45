//! Typed wrappers over the filesystem fixtures the store tests and benchmarks use.

use std::path::{Path, PathBuf};

use crate::ScriptFixture;

/// A filesystem of a given kind mounted on a loop device (`scripts/fixtures/<kind>-loop`),
/// unmounted and detached on drop.
pub struct LoopFilesystem {
    fixture: ScriptFixture,
}

impl LoopFilesystem {
    /// A btrfs of `size` (as `truncate -s` reads it, e.g. `512M`).
    pub fn btrfs(size: &str) -> Result<LoopFilesystem, String> {
        Self::create("btrfs-loop", size)
    }

    /// An XFS with reflinks enabled; XFS needs at least 300 MiB.
    pub fn xfs(size: &str) -> Result<LoopFilesystem, String> {
        Self::create("xfs-loop", size)
    }

    fn create(script: &str, size: &str) -> Result<LoopFilesystem, String> {
        let fixture = ScriptFixture::create(script, &[size])?;
        if fixture.output.is_empty() {
            return Err(format!("fixture {script} printed no mount point"));
        }
        Ok(LoopFilesystem { fixture })
    }

    /// Where the filesystem is mounted.
    pub fn mount_point(&self) -> PathBuf {
        PathBuf::from(&self.fixture.output)
    }
}

/// A plain temporary directory on the host's filesystem (for the copy store), removed on drop.
pub struct PlainDirectory {
    dir: tempfile::TempDir,
}

impl PlainDirectory {
    pub fn create() -> Result<PlainDirectory, String> {
        let dir = tempfile::Builder::new()
            .prefix("strata-plain-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        Ok(PlainDirectory { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
