//! A zfs-fuse pool on a file vdev (`scripts/fixtures/zfs-pool`), destroyed on drop.

use crate::ScriptFixture;

pub struct ZfsPool {
    pub pool: String,
    pub mountpoint: String,
    // Dropped last: destroys the pool and, if this was the last pool, stops the daemon.
    _fixture: ScriptFixture,
}

impl ZfsPool {
    /// A fresh pool (2 GiB sparse vdev unless `size` says otherwise, e.g. "4G").
    pub fn create(size: Option<&str>) -> Result<ZfsPool, String> {
        let args: Vec<&str> = size.into_iter().collect();
        let fixture = ScriptFixture::create("zfs-pool", &args)?;
        let mut words = fixture.output.split_whitespace();
        let pool = words.next().ok_or("zfs-pool printed nothing")?.to_owned();
        let mountpoint = words.next().unwrap_or_default().to_owned();
        Ok(ZfsPool {
            pool,
            mountpoint,
            _fixture: fixture,
        })
    }

    /// The store spec naming this pool (`zfs:/PREFIX/POOL`, OBuilder's form with a prefix).
    pub fn spec(&self) -> String {
        match self.mountpoint.strip_suffix(&format!("/{}", self.pool)) {
            Some(prefix) if !prefix.is_empty() => format!("zfs:{prefix}/{}", self.pool),
            _ => format!("zfs:{}", self.pool),
        }
    }
}
