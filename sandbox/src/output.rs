//! Copies a step's merged stdout/stderr pipe to its [`LogSink`], enforcing the log cap.

use std::io::Read;

use crate::LogSink;

/// How the pipe was drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PumpReport {
    /// Bytes handed to the sink (at most the limit, not counting the cap message).
    pub written: u64,
    /// The output went past the limit; the rest was read and discarded.
    pub limit_exceeded: bool,
}

/// The line written to the log when a step is cancelled.
pub const CANCELLED_MESSAGE: &str = "\nstrata: step cancelled, killed\n";

/// The line written to the log when a step runs past its timeout (`config.timeout`).
pub fn timeout_message(timeout: Option<std::time::Duration>) -> String {
    let secs = timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0);
    format!("\nstrata: step timed out after {secs}s, killed\n")
}

/// The line written to the log when the cap is hit.
pub fn limit_message(limit: u64) -> String {
    format!("\nstrata: log limit of {limit} bytes exceeded, step killed\n")
}

/// Reads `pipe` until end-of-file, passing the bytes to `sink` as they arrive. Past `limit`
/// bytes, writes the cap message, calls `on_limit` once and discards the rest (still reading,
/// so the step never blocks on a full pipe while it is being killed).
pub fn pump(
    mut pipe: impl Read,
    sink: &dyn LogSink,
    limit: u64,
    on_limit: impl FnOnce(),
) -> std::io::Result<PumpReport> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    let mut on_limit = Some(on_limit);
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if on_limit.is_none() {
            continue;
        }
        let room = limit - written;
        if (n as u64) <= room {
            sink.write(&buf[..n]);
            written += n as u64;
        } else {
            // `room < n <= buf.len()`, so the cast and the slice are in range.
            let keep = room as usize;
            if keep > 0 {
                sink.write(&buf[..keep]);
            }
            written += keep as u64;
            sink.write(limit_message(limit).as_bytes());
            if let Some(f) = on_limit.take() {
                f();
            }
        }
    }
    Ok(PumpReport {
        written,
        limit_exceeded: on_limit.is_none(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Buf(Mutex<Vec<u8>>);
    impl LogSink for Buf {
        fn write(&self, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
    }

    #[test]
    fn passes_everything_under_the_limit() {
        let sink = Buf::default();
        let report = pump(&b"hello\nworld\n"[..], &sink, 100, || panic!("no limit")).unwrap();
        assert_eq!(report.written, 12);
        assert!(!report.limit_exceeded);
        assert_eq!(&*sink.0.lock().unwrap(), b"hello\nworld\n");
    }

    #[test]
    fn exact_limit_is_not_exceeded() {
        let sink = Buf::default();
        let report = pump(&b"12345"[..], &sink, 5, || panic!("no limit")).unwrap();
        assert!(!report.limit_exceeded);
    }

    #[test]
    fn cuts_at_the_limit_and_says_so() {
        let sink = Buf::default();
        let mut hits = 0;
        let data = vec![b'y'; 200_000];
        let report = pump(&data[..], &sink, 1000, || hits += 1).unwrap();
        assert_eq!(hits, 1);
        assert!(report.limit_exceeded);
        assert_eq!(report.written, 1000);
        let out = sink.0.lock().unwrap();
        assert_eq!(out.len(), 1000 + limit_message(1000).len());
        assert!(String::from_utf8_lossy(&out).ends_with("strata: log limit of 1000 bytes exceeded, step killed\n"));
    }
}
