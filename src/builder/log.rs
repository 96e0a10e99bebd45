//! A step's log: raw output, written to `<item>/log` and tailed live by every client.
//!
//! Tailers read through a retained file descriptor with positional reads, so they keep
//! working after the store moves the item at commit (OBuilder's late-joiner ENOENT bug).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Duration;

use strata_sandbox::{Cancel, LogSink};

#[derive(Debug)]
struct State {
    len: u64,
    finished: bool,
    /// The last write error (a full disk): reported once the step ends.
    error: Option<String>,
    /// The last [`RECENT`] bytes written, kept in memory so a failed step's last lines can
    /// be shown even when the log file could not be written (a full disk).
    recent: Vec<u8>,
}

/// How much of the end of the output [`StepLog::last_lines`] can show.
const RECENT: usize = 8192;

#[derive(Debug)]
pub struct StepLog {
    /// Swapped for an unnamed copy by [`StepLog::detach`] before the item is committed.
    file: RwLock<File>,
    state: Mutex<State>,
    changed: Condvar,
}

impl StepLog {
    /// Creates (truncating) the log file at `path`, 0600: a step's output may hold anything
    /// the step saw (the store's directories are private too; this does not rely on them).
    pub fn create(path: &Path) -> std::io::Result<StepLog> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(path)?;
        if file.metadata()?.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(StepLog::from_file(file, 0, false))
    }

    /// Opens a finished log (a cached step's) for replay.
    pub fn open_finished(path: &Path) -> std::io::Result<StepLog> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(StepLog::from_file(file, len, true))
    }

    /// A log with no content.
    pub fn empty() -> std::io::Result<StepLog> {
        let file = tempfile::tempfile()?;
        Ok(StepLog::from_file(file, 0, true))
    }

    fn from_file(file: File, len: u64, finished: bool) -> StepLog {
        StepLog {
            file: RwLock::new(file),
            state: Mutex::new(State {
                len,
                finished,
                error: None,
                recent: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn append(&self, bytes: &[u8]) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        let keep = &bytes[bytes.len().saturating_sub(RECENT)..];
        let overflow = (state.recent.len() + keep.len()).saturating_sub(RECENT);
        state.recent.drain(..overflow);
        state.recent.extend_from_slice(keep);
        let file = self.file.read().unwrap_or_else(|p| p.into_inner());
        match (&*file).write_all(bytes) {
            Ok(()) => state.len += bytes.len() as u64,
            Err(e) => {
                if state.error.is_none() {
                    state.error = Some(e.to_string());
                }
            }
        }
        self.changed.notify_all();
    }

    /// Marks the log complete: tailers return once they have read everything.
    pub fn finish(&self) -> Option<String> {
        let mut state = self.lock();
        state.finished = true;
        let _ = self.file.read().unwrap_or_else(|p| p.into_inner()).sync_data();
        self.changed.notify_all();
        state.error.clone()
    }

    /// Lets go of the item's log file (ZFS cannot rename or unmount a dataset with open
    /// files): tailers continue on an unnamed copy. Call after [`StepLog::finish`].
    pub fn detach(&self) -> std::io::Result<()> {
        let mut file = self.file.write().unwrap_or_else(|p| p.into_inner());
        let mut copy = tempfile::tempfile()?;
        let mut source = file.try_clone()?;
        std::io::Seek::seek(&mut source, std::io::SeekFrom::Start(0))?;
        std::io::copy(&mut source, &mut copy)?;
        *file = copy;
        Ok(())
    }

    /// Streams the log from byte 0 into `out` until it is finished (true) or `cancel`
    /// fires (false).
    pub fn tail(&self, cancel: &Cancel, out: &mut dyn FnMut(&[u8])) -> bool {
        let mut offset = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (len, finished) = {
                let mut state = self.lock();
                while state.len == offset && !state.finished {
                    if cancel.is_cancelled() {
                        return false;
                    }
                    let (s, _) = self
                        .changed
                        .wait_timeout(state, Duration::from_millis(100))
                        .unwrap_or_else(|p| p.into_inner());
                    state = s;
                }
                (state.len, state.finished)
            };
            while offset < len {
                let want = ((len - offset) as usize).min(buf.len());
                let read = self
                    .file
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .read_at(&mut buf[..want], offset);
                match read {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => {
                        out(&buf[..n]);
                        offset += n as u64;
                    }
                }
            }
            if finished && offset >= len {
                return true;
            }
            if cancel.is_cancelled() {
                return false;
            }
        }
    }

    /// The last `lines` lines of the log (for a failed step's summary).
    pub fn last_lines(&self, lines: usize) -> String {
        let (len, recent) = {
            let state = self.lock();
            (state.len, state.recent.clone())
        };
        if !recent.is_empty() {
            return last_lines_of(&recent, lines);
        }
        let start = len.saturating_sub(RECENT as u64);
        let mut buf = vec![0u8; (len - start) as usize];
        if self
            .file
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .read_at(&mut buf, start)
            .is_err()
        {
            return String::new();
        }
        last_lines_of(&buf, lines)
    }
}

fn last_lines_of(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl LogSink for StepLog {
    fn write(&self, bytes: &[u8]) {
        self.append(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn late_joiner_sees_everything_then_live() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(StepLog::create(&dir.path().join("log")).unwrap());
        log.append(b"early\n");
        let l2 = log.clone();
        let t = std::thread::spawn(move || {
            let mut got = Vec::new();
            assert!(l2.tail(&Cancel::new(), &mut |b| got.extend_from_slice(b)));
            got
        });
        std::thread::sleep(Duration::from_millis(50));
        // The item moves at commit: the retained fd keeps working.
        std::fs::rename(dir.path().join("log"), dir.path().join("moved")).unwrap();
        log.append(b"late\n");
        log.finish();
        assert_eq!(t.join().unwrap(), b"early\nlate\n");
        assert_eq!(log.last_lines(1), "late");
    }

    #[test]
    fn last_lines_survive_a_failing_log_file() {
        // A log whose file cannot be written (read-only descriptor, as a full disk would).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"").unwrap();
        let log = StepLog::from_file(File::open(&path).unwrap(), 0, false);
        log.append(b"one\ntwo\n");
        log.append(&vec![b'x'; 2 * RECENT]);
        log.append(b"\ndd: error writing '/big': No space left on device\n");
        assert!(log.finish().is_some(), "the write error is reported");
        assert_eq!(log.last_lines(1), "dd: error writing '/big': No space left on device");
        assert!(!log.last_lines(10).contains("one"), "only the recent end is kept");
    }

    #[test]
    fn log_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _log = StepLog::create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let _fresh = StepLog::create(&dir.path().join("fresh")).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("fresh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    #[test]
    fn cancelled_tail_returns() {
        let log = StepLog::empty().unwrap();
        let live = StepLog::create(&tempfile::tempdir().unwrap().path().join("l")).unwrap();
        let cancel = Cancel::new();
        cancel.cancel();
        assert!(!live.tail(&cancel, &mut |_| {}));
        assert!(log.tail(&Cancel::new(), &mut |_| {}));
    }
}
