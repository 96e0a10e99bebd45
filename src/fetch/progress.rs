//! Pull progress as plain lines in the step log: one line when a layer starts, one every
//! second or so while its bytes arrive, one when it is done.

use std::time::{Duration, Instant};

use strata_sandbox::LogSink;

use super::unpack::UnpackStats;

const INTERVAL: Duration = Duration::from_secs(1);

/// `1.5 MB`-style sizes (decimal units, as registries and Docker show them).
pub fn human_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Short form of a digest for log lines (`sha256:0123456789ab`).
pub fn short_digest(digest: &str) -> &str {
    let end = digest.find(':').map(|i| i + 13).unwrap_or(12).min(digest.len());
    &digest[..end]
}

pub fn line(log: &dyn LogSink, text: &str) {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    log.write(&bytes);
}

/// Progress of one layer.
pub struct LayerProgress<'a> {
    log: &'a dyn LogSink,
    prefix: String,
    size: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
}

impl<'a> LayerProgress<'a> {
    pub fn start(log: &'a dyn LogSink, index: usize, total: usize, digest: &str, size: Option<u64>) -> Self {
        let prefix = format!("layer {}/{} {}", index + 1, total, short_digest(digest));
        let size_text = size.map(human_size).unwrap_or_else(|| "unknown size".to_owned());
        line(log, &format!("{prefix}: {size_text}"));
        let now = Instant::now();
        LayerProgress {
            log,
            prefix,
            size,
            done: 0,
            started: now,
            last: now,
        }
    }

    pub fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if self.last.elapsed() >= INTERVAL {
            self.last = Instant::now();
            let total = self.size.map(|s| format!(" of {}", human_size(s))).unwrap_or_default();
            line(self.log, &format!("{}: {}{total}", self.prefix, human_size(self.done)));
        }
    }

    pub fn finish(&self, stats: &UnpackStats) {
        for note in &stats.notes {
            line(self.log, &format!("{}: note: {note}", self.prefix));
        }
        let secs = self.started.elapsed().as_secs_f64();
        line(
            self.log,
            &format!(
                "{}: done, {} entries, {} written in {secs:.2}s",
                self.prefix,
                stats.entries,
                human_size(stats.bytes)
            ),
        );
    }
}

/// Counts bytes into a [`LayerProgress`] as a local blob is read.
pub struct CountingReader<'p, 'a, R> {
    inner: R,
    progress: &'p mut LayerProgress<'a>,
}

impl<'p, 'a, R: std::io::Read> CountingReader<'p, 'a, R> {
    pub fn new(inner: R, progress: &'p mut LayerProgress<'a>) -> Self {
        CountingReader { inner, progress }
    }
}

impl<R: std::io::Read> std::io::Read for CountingReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_digests() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500_000), "1.5 MB");
        assert_eq!(short_digest("sha256:0123456789abcdef"), "sha256:0123456789ab");
        assert_eq!(short_digest("abc"), "abc");
    }
}
