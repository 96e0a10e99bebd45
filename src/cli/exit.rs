//! Exit codes (stable, documented in the README):
//! 0 success; 1 a build step failed; 2 bad usage or bad spec; 3 environment or store
//! failure; 130 interrupted.

use std::process::ExitCode;

pub const SUCCESS: u8 = 0;
pub const STEP_FAILED: u8 = 1;
pub const USAGE: u8 = 2;
pub const ENVIRONMENT: u8 = 3;
pub const INTERRUPTED: u8 = 130;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub error: anyhow::Error,
    /// Already reported to the user (print nothing more).
    pub silent: bool,
}

impl CliError {
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> CliError {
        CliError {
            code,
            error: error.into(),
            silent: false,
        }
    }
    pub fn usage(error: impl Into<anyhow::Error>) -> CliError {
        CliError::new(USAGE, error)
    }
    pub fn environment(error: impl Into<anyhow::Error>) -> CliError {
        CliError::new(ENVIRONMENT, error)
    }
    pub fn step_failed(error: impl Into<anyhow::Error>) -> CliError {
        CliError::new(STEP_FAILED, error)
    }
    /// A catalog failure: an unknown item or cache is the user's mistake (usage), the rest
    /// is the environment's.
    pub fn catalog(error: strata::catalog::CatalogError) -> CliError {
        match error {
            strata::catalog::CatalogError::NotFound(_) => CliError::usage(error),
            error => CliError::environment(error),
        }
    }
    /// Exit with `code` without printing anything (the command already said why).
    pub fn silent(code: u8) -> CliError {
        CliError {
            code,
            error: anyhow::anyhow!("exit {code}"),
            silent: true,
        }
    }
}

/// A command's result: the exit code on success (0, or 1 for `fmt --check`), or an error.
pub type CliResult = Result<u8, CliError>;

pub fn report(result: CliResult) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if !e.silent {
                // Spec errors already read `FILE:LINE:COL: error: ...`; others get a prefix.
                let text = message(&e.error);
                if text.contains(": error: ") {
                    eprintln!("{text}");
                } else {
                    eprintln!("strata: error: {text}");
                }
            }
            ExitCode::from(e.code)
        }
    }
}

/// The error and its causes, each cause once: library errors often repeat their source in
/// their own message, so a cause already said is not said again.
pub fn message(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("database /s/db.sqlite: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_are_said_once() {
        let e = anyhow::Error::new(Outer(std::io::Error::other("disk is full")));
        assert_eq!(message(&e), "database /s/db.sqlite: disk is full");
        let e = anyhow::Error::new(std::io::Error::other("disk is full")).context("writing log");
        assert_eq!(message(&e), "writing log: disk is full");
    }
}
