//! The worker's own metrics, in the Prometheus text exposition format (version 0.0.4, not
//! OpenMetrics) that OCluster's `metrics agent` call returns.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::job::Outcome;

/// The content type of `metrics agent` (as OCluster's worker sends it).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the step duration histogram.
const BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// What the store looks like at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreGauges {
    pub items: u64,
    pub item_bytes: u64,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Default)]
pub struct Metrics {
    running: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    internal: AtomicU64,
    steps_run: AtomicU64,
    steps_cached: AtomicU64,
    prunes: AtomicU64,
    pruned_bytes: AtomicU64,
    pruned_items: AtomicU64,
    step_seconds: Mutex<Histogram>,
}

impl Metrics {
    pub fn job_started(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
    }

    pub fn job_finished(&self, outcome: &Outcome) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        let counter = match outcome {
            Outcome::Succeeded(_) => &self.succeeded,
            Outcome::Failed => &self.failed,
            Outcome::Cancelled => &self.cancelled,
            Outcome::Internal => &self.internal,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    pub fn step(&self, cached: bool, duration: Duration) {
        if cached {
            self.steps_cached.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.steps_run.fetch_add(1, Ordering::Relaxed);
        let secs = duration.as_secs_f64();
        let mut h = self.step_seconds.lock().unwrap_or_else(|p| p.into_inner());
        for (bound, count) in BUCKETS.iter().zip(h.counts.iter_mut()) {
            if secs <= *bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn pruned(&self, items: u64, bytes: u64) {
        self.prunes.fetch_add(1, Ordering::Relaxed);
        self.pruned_items.fetch_add(items, Ordering::Relaxed);
        self.pruned_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, store: Option<StoreGauges>) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric(
            &mut out,
            "ocluster_worker_running_jobs",
            "gauge",
            "Jobs running now",
            &[("", load(&self.running))],
        );
        metric(
            &mut out,
            "strata_worker_jobs_total",
            "counter",
            "Jobs finished, by outcome",
            &[
                ("outcome=\"succeeded\"", load(&self.succeeded)),
                ("outcome=\"failed\"", load(&self.failed)),
                ("outcome=\"cancelled\"", load(&self.cancelled)),
                ("outcome=\"internal_error\"", load(&self.internal)),
            ],
        );
        metric(
            &mut out,
            "strata_worker_steps_total",
            "counter",
            "Build steps, run or found in the cache",
            &[
                ("result=\"run\"", load(&self.steps_run)),
                ("result=\"cached\"", load(&self.steps_cached)),
            ],
        );
        metric(
            &mut out,
            "strata_worker_prunes_total",
            "counter",
            "Prunes for free space",
            &[("", load(&self.prunes))],
        );
        metric(
            &mut out,
            "strata_worker_pruned_items_total",
            "counter",
            "Items deleted by prunes",
            &[("", load(&self.pruned_items))],
        );
        metric(
            &mut out,
            "strata_worker_pruned_bytes_total",
            "counter",
            "Bytes freed by prunes",
            &[("", load(&self.pruned_bytes))],
        );
        {
            let h = self.step_seconds.lock().unwrap_or_else(|p| p.into_inner());
            let name = "strata_worker_step_duration_seconds";
            let _ = writeln!(out, "# HELP {name} Duration of the steps run (not cached)");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum {}", h.sum);
            let _ = writeln!(out, "{name}_count {}", h.count);
        }
        if let Some(s) = store {
            metric(
                &mut out,
                "strata_store_items",
                "gauge",
                "Items in the store",
                &[("", s.items)],
            );
            metric(
                &mut out,
                "strata_store_item_bytes",
                "gauge",
                "Recorded size of the items",
                &[("", s.item_bytes)],
            );
            metric(
                &mut out,
                "strata_store_total_bytes",
                "gauge",
                "Size of the store's filesystem",
                &[("", s.total_bytes)],
            );
            metric(
                &mut out,
                "strata_store_free_bytes",
                "gauge",
                "Free space on the store's filesystem",
                &[("", s.free_bytes)],
            );
        }
        out
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostMetricsError {
    #[error("no node exporter configured (--node-exporter URL)")]
    NotConfigured,
    #[error("node exporter URL {0:?}: only http://HOST:PORT/PATH")]
    Url(String),
    #[error("fetching {0}: {1}")]
    Io(String, std::io::Error),
    #[error("fetching {0}: {1}")]
    Http(String, String),
}

/// Fetches a node exporter's metrics over plain HTTP: (content type, body).
pub async fn fetch_http(url: &str) -> Result<(String, String), HostMetricsError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HostMetricsError::Url(url.to_owned()))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let e = |err| HostMetricsError::Io(url.to_owned(), err);
    let mut stream = tokio::net::TcpStream::connect(authority).await.map_err(e)?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: text/plain\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(e)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(e)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| HostMetricsError::Http(url.to_owned(), "malformed response".into()))?;
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(HostMetricsError::Http(url.to_owned(), status.to_owned()));
    }
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "text/plain".to_owned());
    Ok((content_type, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.job_started();
        m.step(false, Duration::from_millis(300));
        m.step(true, Duration::ZERO);
        let text = m.render(Some(StoreGauges {
            items: 3,
            ..Default::default()
        }));
        assert!(text.contains("ocluster_worker_running_jobs 1\n"), "{text}");
        assert!(text.contains("strata_worker_steps_total{result=\"cached\"} 1\n"));
        assert!(text.contains("strata_worker_step_duration_seconds_bucket{le=\"0.1\"} 0\n"));
        assert!(text.contains("strata_worker_step_duration_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(text.contains("strata_worker_step_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("strata_store_items 3\n"));
        m.job_finished(&Outcome::Cancelled);
        assert!(m
            .render(None)
            .contains("strata_worker_jobs_total{outcome=\"cancelled\"} 1\n"));
    }
}
