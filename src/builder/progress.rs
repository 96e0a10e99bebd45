//! What the builder tells its client while it works. The CLI renders these as plain lines,
//! a live terminal view or JSON.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepResult {
    /// Built and committed now.
    Saved,
    /// Found in the store.
    Cached,
}

#[derive(Debug)]
pub enum Event<'a> {
    /// A step's heading: `(from busybox)`, `/src: (run (shell "make"))`, `(build "tools" …)`.
    Heading { stage: &'a [String], text: &'a str },
    /// A note: `---> saved as ID`, `Waiting for previous build to finish cancelling`...
    Note { stage: &'a [String], text: &'a str },
    /// Raw output of the step being built (or replayed).
    Output { stage: &'a [String], bytes: &'a [u8] },
    /// A step finished.
    StepDone {
        stage: &'a [String],
        id: &'a str,
        result: StepResult,
        duration: Duration,
    },
}

pub trait Reporter: Send + Sync {
    fn event(&self, event: Event<'_>);
}

/// Discards everything (healthcheck, tests).
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: Event<'_>) {}
}
