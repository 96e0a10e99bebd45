//! The one place that runs external commands (`zfs`, `zpool`, `mount`, ...): the command line
//! and its stderr always end up in the error, and a failure is an error, never a panic.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::StoreError;

/// Runs `program args...`, returning its stdout. A non-zero exit becomes
/// [`StoreError::Command`] carrying the command line and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, StoreError> {
    let line = command_line(program, args);
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| StoreError::io(format!("running `{line}`"), e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(StoreError::Command {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Like [`run`], retrying with exponential backoff (from 50 ms, doubling, capped at 2 s)
/// while `retryable` says the failure is transient (for example a dataset that is `busy`).
pub fn run_with_retry(
    program: &str,
    args: &[&str],
    attempts: u32,
    retryable: impl Fn(&StoreError) -> bool,
) -> Result<String, StoreError> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match run(program, args) {
            Err(e) if attempt < attempts && retryable(&e) => {
                tracing::debug!("retrying after transient failure: {e}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// True when a command failed because its target was busy.
pub fn is_busy(e: &StoreError) -> bool {
    matches!(e, StoreError::Command { stderr, .. } if stderr.contains("busy") || stderr.contains("Busy"))
}

fn command_line(program: &str, args: &[&str]) -> String {
    let mut line = program.to_owned();
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_stderr() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("oops"), "{text}");
    }

    #[test]
    fn missing_program_is_an_error() {
        assert!(run("/nonexistent/strata-test", &[]).is_err());
    }

    #[test]
    fn retries_transient_failures() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("n");
        let script = format!(
            "echo x >> {0}; [ $(wc -l < {0}) -ge 3 ] || {{ echo busy >&2; exit 1; }}",
            marker.display()
        );
        run_with_retry("sh", &["-c", &script], 5, is_busy).unwrap();
    }
}
