//! One popped job: its state shared with the thread that runs it, and the `Job` capability
//! the scheduler calls (`log`, `result`, `cancel`). The capability answers from the moment
//! it exists (the scheduler calls `result` before `pop` returns), and releasing it cancels
//! the build, as a dropped connection does.

use std::sync::Arc;

use capnp::capability::Rc;
use strata_sandbox::Cancel;
use tokio::sync::watch;

use super::job_log::JobLog;
use super::ocluster_capnp::job;

/// How a job ended, as `result` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The final snapshot id.
    Succeeded(String),
    Failed,
    Cancelled,
    /// The worker itself went wrong (logged as `Uncaught exception: ...`).
    Internal,
}

impl Outcome {
    /// The exception reason OCluster's clients expect.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Outcome::Succeeded(_) => None,
            Outcome::Failed => Some("Build failed"),
            Outcome::Cancelled => Some("Build cancelled"),
            Outcome::Internal => Some("Internal error"),
        }
    }
}

/// What the RPC side and the build's thread share.
pub struct JobState {
    pub log: JobLog,
    pub cancel: Cancel,
    outcome: watch::Sender<Option<Outcome>>,
    /// The scheduler has the outcome (or dropped the job): only then is the slot free, as
    /// the scheduler counts a job as running until its `result` call ends.
    reported: watch::Sender<bool>,
}

impl JobState {
    pub fn new(cancel: Cancel) -> Arc<JobState> {
        Arc::new(JobState {
            log: JobLog::default(),
            cancel,
            outcome: watch::Sender::new(None),
            reported: watch::Sender::new(false),
        })
    }

    /// Records the end (the first call wins) and closes the log.
    pub fn finish(&self, outcome: Outcome) {
        self.outcome.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(outcome);
                true
            } else {
                false
            }
        });
        self.log.close();
    }

    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome.borrow().clone()
    }

    pub fn mark_reported(&self) {
        self.reported.send_replace(true);
    }

    /// Waits until the scheduler has the outcome or released the job.
    pub async fn wait_reported(&self) {
        let mut rx = self.reported.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Waits for the end.
    pub async fn wait(&self) -> Outcome {
        let mut rx = self.outcome.subscribe();
        loop {
            if let Some(outcome) = rx.borrow_and_update().clone() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return Outcome::Internal;
            }
        }
    }
}

/// The `Job` capability handed to the scheduler with `pop`.
pub struct JobServer {
    state: Arc<JobState>,
}

impl JobServer {
    pub fn new(state: Arc<JobState>) -> JobServer {
        JobServer { state }
    }
}

impl Drop for JobServer {
    /// The scheduler released the job (or the connection went): stop the build.
    fn drop(&mut self) {
        if self.state.outcome().is_none() {
            self.state.cancel.cancel();
        }
        self.state.mark_reported();
    }
}

impl job::Server for JobServer {
    async fn log(self: Rc<Self>, params: job::LogParams, mut results: job::LogResults) -> Result<(), capnp::Error> {
        let start = params.get()?.get_start();
        let (data, next) = self
            .state
            .log
            .read(start)
            .await
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        let mut out = results.get();
        out.set_log(&data);
        out.set_next(next);
        Ok(())
    }

    async fn result(self: Rc<Self>, _: job::ResultParams, mut results: job::ResultResults) -> Result<(), capnp::Error> {
        let outcome = self.state.wait().await;
        // The answer goes out as this returns, before any later pop.
        self.state.mark_reported();
        match outcome {
            Outcome::Succeeded(id) => {
                results.get().set_output(&id[..]);
                Ok(())
            }
            other => Err(capnp::Error::failed(
                other.reason().unwrap_or("Internal error").to_owned(),
            )),
        }
    }

    async fn cancel(self: Rc<Self>, _: job::CancelParams, _: job::CancelResults) -> Result<(), capnp::Error> {
        self.state.cancel.cancel();
        Ok(())
    }
}
