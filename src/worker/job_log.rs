//! A job's log as the scheduler reads it through `Job.log(start)`: chunks of at most
//! [`MAX_CHUNK`] bytes; a negative start counts from the end; a start past the end is an
//! error; with nothing new to read it waits while the job runs, and answers empty data only
//! once the log is closed (clients take empty as the end).

use std::sync::Mutex;

use tokio::sync::watch;

/// The most `log` returns at once (as OCluster's worker).
pub const MAX_CHUNK: usize = 10240;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("Start value out of range!")]
    OutOfRange,
}

#[derive(Default)]
struct State {
    data: Vec<u8>,
    closed: bool,
}

/// Written by the build's thread, read by RPC calls.
pub struct JobLog {
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

impl Default for JobLog {
    fn default() -> Self {
        JobLog {
            state: Mutex::default(),
            changed: watch::Sender::new(()),
        }
    }
}

impl JobLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends bytes (ignored once closed).
    pub fn write(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.data.extend_from_slice(bytes);
        }
        self.changed.send_replace(());
    }

    pub fn write_str(&self, text: &str) {
        self.write(text.as_bytes());
    }

    /// No more writes: readers at the end now get empty data.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.send_replace(());
    }

    pub fn contents(&self) -> Vec<u8> {
        self.lock().data.clone()
    }

    /// What is available from `start` now: `None` when the reader must wait.
    fn try_read(&self, start: i64) -> Result<Option<(Vec<u8>, i64)>, LogError> {
        let state = self.lock();
        let len = i64::try_from(state.data.len()).unwrap_or(i64::MAX);
        let start = if start < 0 { (len + start).max(0) } else { start };
        if start > len {
            return Err(LogError::OutOfRange);
        }
        if start == len && !state.closed {
            return Ok(None);
        }
        let from = usize::try_from(start).unwrap_or(usize::MAX).min(state.data.len());
        let to = state.data.len().min(from + MAX_CHUNK);
        let chunk = state.data[from..to].to_vec();
        let next = start + i64::try_from(chunk.len()).unwrap_or(0);
        Ok(Some((chunk, next)))
    }

    /// `(data, next)` from `start`, waiting while there is nothing new and the log is open.
    pub async fn read(&self, start: i64) -> Result<(Vec<u8>, i64), LogError> {
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(answer) = self.try_read(start)? {
                return Ok(answer);
            }
            // The sender lives as long as `self`, so this only returns after a change.
            if changed.changed().await.is_err() {
                return Ok((Vec::new(), start));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn chunks_next_and_negative_start() {
        let log = JobLog::default();
        log.write(&vec![b'x'; MAX_CHUNK + 10]);
        log.close();
        let rt = rt();
        let (data, next) = rt.block_on(log.read(0)).unwrap();
        assert_eq!((data.len(), next), (MAX_CHUNK, MAX_CHUNK as i64));
        let (data, next) = rt.block_on(log.read(next)).unwrap();
        assert_eq!((data.len(), next), (10, MAX_CHUNK as i64 + 10));
        // At the end of a closed log: empty, next = start.
        assert_eq!(rt.block_on(log.read(next)).unwrap(), (vec![], next));
        // Negative: from the end, clamped to 0.
        assert_eq!(rt.block_on(log.read(-4)).unwrap(), (b"xxxx".to_vec(), next));
        let (data, _) = rt.block_on(log.read(-1_000_000)).unwrap();
        assert_eq!(data.len(), MAX_CHUNK);
        assert_eq!(rt.block_on(log.read(next + 1)), Err(LogError::OutOfRange));
    }

    #[test]
    fn waits_while_open_and_never_answers_empty_before_close() {
        let log = Arc::new(JobLog::default());
        let rt = rt();
        let writer = log.clone();
        let (data, next) = rt.block_on(async move {
            let read = tokio::spawn({
                let log = log.clone();
                async move { log.read(0).await }
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!read.is_finished(), "read returned while the log was empty and open");
            std::thread::spawn(move || writer.write(b"hello")).join().unwrap();
            read.await.unwrap().unwrap()
        });
        assert_eq!((data.as_slice(), next), (&b"hello"[..], 5));
    }

    #[test]
    fn close_wakes_a_waiting_reader() {
        let log = Arc::new(JobLog::default());
        let rt = rt();
        let answer = rt.block_on(async {
            let read = tokio::spawn({
                let log = log.clone();
                async move { log.read(0).await }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            log.close();
            read.await.unwrap()
        });
        assert_eq!(answer, Ok((vec![], 0)));
    }
}
