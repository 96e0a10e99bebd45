//! A busybox root filesystem for sandbox tests (`scripts/fixtures/busybox-rootfs`).

use std::path::{Path, PathBuf};

use crate::ScriptFixture;

/// `DIR/rootfs` with a static busybox and its applets, `/etc/passwd` with root and user 1000,
/// `/tmp` mode 1777. Removed on drop.
pub struct BusyboxRootfs {
    fixture: ScriptFixture,
    rootfs: PathBuf,
}

impl BusyboxRootfs {
    pub fn create() -> Result<BusyboxRootfs, String> {
        let fixture = ScriptFixture::create("busybox-rootfs", &[])?;
        let rootfs = PathBuf::from(&fixture.output);
        if !rootfs.join("bin/busybox").exists() {
            return Err(format!(
                "busybox-rootfs printed {:?}, which has no bin/busybox",
                fixture.output
            ));
        }
        Ok(BusyboxRootfs { fixture, rootfs })
    }

    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// The fixture's private directory (a good place for state and bundle directories).
    pub fn dir(&self) -> &Path {
        self.fixture.dir()
    }
}
