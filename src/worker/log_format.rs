//! Build events rendered into a job's log the way OCluster's worker writes OBuilder's:
//! headings `\n` + bold blue text + reset + `\n`; notes dim magenta with a UTC timestamp
//! (`YYYY-MM-DD HH:MM.SS`); step output raw. Step counts and durations feed the metrics.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::builder::{Event, Reporter, StepResult};

use super::job_log::JobLog;
use super::metrics::Metrics;

pub struct LogReporter {
    log: Arc<super::job::JobState>,
    metrics: Arc<Metrics>,
}

impl LogReporter {
    pub fn new(log: Arc<super::job::JobState>, metrics: Arc<Metrics>) -> LogReporter {
        LogReporter { log, metrics }
    }
}

fn prefixed(stage: &[String], text: &str) -> String {
    if stage.is_empty() {
        text.to_owned()
    } else {
        format!("[{}] {text}", stage.join("/"))
    }
}

pub fn heading(log: &JobLog, text: &str) {
    log.write_str(&format!("\n\x1b[01;34m{text}\x1b[0m\n"));
}

pub fn note(log: &JobLog, text: &str) {
    log.write_str(&format!(
        "\x1b[01;2m\x1b[01;35m{} {text}\x1b[0m\n",
        timestamp(SystemTime::now())
    ));
}

impl Reporter for LogReporter {
    fn event(&self, event: Event<'_>) {
        let log = &self.log.log;
        match event {
            Event::Heading { stage, text } => heading(log, &prefixed(stage, text)),
            Event::Note { stage, text } => note(log, &prefixed(stage, text)),
            Event::Output { bytes, .. } => log.write(bytes),
            Event::StepDone { result, duration, .. } => self.metrics.step(result == StepResult::Cached, duration),
        }
    }
}

/// `YYYY-MM-DD HH:MM.SS` in UTC.
pub fn timestamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}.{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00.00");
        // 2024-02-29T13:05:09Z
        let t = UNIX_EPOCH + Duration::from_secs(1_709_211_909);
        assert_eq!(timestamp(t), "2024-02-29 13:05.09");
    }

    #[test]
    fn heading_and_note_shapes() {
        let log = JobLog::default();
        heading(&log, "/: (run (shell \"true\"))");
        assert_eq!(log.contents(), b"\n\x1b[01;34m/: (run (shell \"true\"))\x1b[0m\n");
        let log = JobLog::default();
        note(&log, "---> saved as x");
        let text = String::from_utf8(log.contents()).unwrap();
        assert!(text.starts_with("\x1b[01;2m\x1b[01;35m"), "{text:?}");
        assert!(text.ends_with(" ---> saved as x\x1b[0m\n"), "{text:?}");
    }
}
