//! The worker side of one step: runs once per id per process (the in-process dedupe calls
//! it), with the id's lease held. Gets the item from the catalog (cached, or a pending clone
//! of its parent), runs the step's work into it with a fresh log, and commits it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use strata_sandbox::Cancel;
use strata_stores::StepId;

use super::error::BuildError;
use super::inflight::Flight;
use super::log::StepLog;
use super::progress::StepResult;
use super::Shared;
use crate::catalog::{Record, Slot, LOG};

/// What a step's work gets: the builder's parts, the item being filled, its log, and the
/// cancel token.
pub(crate) struct StepEnv<'a> {
    pub shared: &'a Shared,
    pub item: PathBuf,
    pub log: Arc<StepLog>,
    pub cancel: &'a Cancel,
}

/// What a step's work reports back.
#[derive(Default)]
pub(crate) struct WorkOutput {
    pub base_digest: Option<String>,
}

/// A step's work: fetch a base, run a command, copy files.
pub(crate) type Work = Box<dyn FnOnce(&StepEnv<'_>) -> Result<WorkOutput, BuildError> + Send>;

/// Gets step `id` built (or finds it cached).
pub(crate) fn execute(
    shared: &Shared,
    flight: &Flight,
    id: &StepId,
    parent: Option<&StepId>,
    op: &str,
    work: Work,
) -> Result<StepResult, BuildError> {
    let catalog = &*shared.catalog;
    let pending = match catalog.get_or_prepare(parent, id)? {
        Slot::Cached(_) => return Ok(StepResult::Cached),
        Slot::Pending(pending) => pending,
    };
    let item = pending.path().to_owned();
    let log_path = item.join(LOG);
    let log = match StepLog::create(&log_path) {
        Ok(log) => Arc::new(log),
        Err(e) => {
            let _ = pending.abort();
            return Err(BuildError::io(format!("creating {}", log_path.display()), e));
        }
    };
    flight.set_log(log.clone());
    let started = Instant::now();
    let env = StepEnv {
        shared,
        item: item.clone(),
        log: log.clone(),
        cancel: &flight.cancel,
    };
    let mut outcome = work(&env);
    if outcome.is_ok() && flight.cancel.is_cancelled() {
        // Interrupted after the work but before the commit: an interrupted build commits
        // nothing it did not finish before the interrupt.
        outcome = Err(BuildError::Cancelled);
    }
    // The log is closed before the commit: no file of the item may be open then.
    let mut log_error = log.finish();
    if let Err(e) = log.detach() {
        log_error.get_or_insert(e.to_string());
    }
    let output = match outcome {
        Ok(output) => output,
        Err(e) => {
            let _ = pending.abort();
            return Err(match (log_error, &e) {
                // The step failed while its log could not be written: most likely the disk
                // is full, which is the environment's failure and must say so.
                (Some(log_error), BuildError::StepFailed { .. }) => BuildError::io(
                    format!("{e}\nthe step's log {} could not be written", log_path.display()),
                    std::io::Error::other(log_error),
                ),
                _ => e,
            });
        }
    };
    if let Some(e) = log_error {
        let _ = pending.abort();
        return Err(BuildError::io(
            format!("writing {}", log_path.display()),
            std::io::Error::other(e),
        ));
    }
    catalog.commit(
        pending,
        &Record {
            id,
            parent,
            op,
            duration_ms: started.elapsed().as_millis() as u64,
            base_digest: output.base_digest.as_deref(),
        },
    )?;
    Ok(StepResult::Saved)
}
