//! A zfs-fuse pool on a file vdev (`scripts/fixtures/zfs-pool`), destroyed on drop.
//!
//! The pools of one test process take turns: zfs-fuse (one daemon for all pools) has been
//! seen to deadlock with several busy pools at once (every daemon thread waiting, every
//! FUSE request unanswered, the tests hung), never with one. A thread may hold several pools.

use std::sync::{Condvar, Mutex};
use std::thread::{self, ThreadId};

use crate::ScriptFixture;

pub struct ZfsPool {
    pub pool: String,
    pub mountpoint: String,
    // Dropped before the turn: destroys the pool and, if this was the last pool, stops the
    // daemon.
    _fixture: ScriptFixture,
    _turn: Turn,
}

/// The thread whose pools are live, and how many it holds.
static HOLDER: Mutex<Option<(ThreadId, usize)>> = Mutex::new(None);
static FREED: Condvar = Condvar::new();

/// This thread's turn to have pools; the next thread's comes when every pool is dropped.
struct Turn;

impl Turn {
    fn take() -> Turn {
        let me = thread::current().id();
        let mut holder = HOLDER.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match *holder {
                None => {
                    *holder = Some((me, 1));
                    return Turn;
                }
                Some((owner, n)) if owner == me => {
                    *holder = Some((me, n + 1));
                    return Turn;
                }
                Some(_) => holder = FREED.wait(holder).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut holder = HOLDER.lock().unwrap_or_else(|e| e.into_inner());
        *holder = match *holder {
            Some((owner, n)) if n > 1 => Some((owner, n - 1)),
            _ => None,
        };
        FREED.notify_all();
    }
}

impl ZfsPool {
    /// A fresh pool (2 GiB sparse vdev unless `size` says otherwise, e.g. "4G").
    pub fn create(size: Option<&str>) -> Result<ZfsPool, String> {
        let turn = Turn::take();
        let args: Vec<&str> = size.into_iter().collect();
        let fixture = ScriptFixture::create("zfs-pool", &args)?;
        let mut words = fixture.output.split_whitespace();
        let pool = words.next().ok_or("zfs-pool printed nothing")?.to_owned();
        let mountpoint = words.next().unwrap_or_default().to_owned();
        Ok(ZfsPool {
            pool,
            mountpoint,
            _fixture: fixture,
            _turn: turn,
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
