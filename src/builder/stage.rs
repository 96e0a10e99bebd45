//! One build invocation: walks a spec's stages (concurrently), hands each stage's ops to
//! [`step::build_ops`], and gets each step it asks for ([`Steps::get_step`]) through the
//! lease, the in-process dedupe and [`execute`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use strata_sandbox::Cancel;
use strata_stores::StepId;

use super::error::{BuildError, ErrorKind};
use super::execute::{execute, Work};
use super::inflight::Watcher;
use super::log::StepLog;
use super::progress::{Event, Reporter, StepResult};
use super::scope::{Scope, StageSlot};
use super::step::{self, Steps};
use super::{BuildOptions, Shared};
use crate::catalog::{Catalog, Lease};
use crate::key::IdScheme;
use crate::spec::Spec;

pub(crate) struct BuildRun<'a> {
    pub shared: Arc<Shared>,
    pub options: &'a BuildOptions,
    reporter: &'a dyn Reporter,
    /// This run's own token: a child of the caller's, also cancelled when one stage fails so
    /// that the others stop (their steps killed) instead of running on for nothing.
    pub cancel: Cancel,
    /// The first failure of any stage: what the build reports, rather than the `Cancelled`
    /// that the other stages then end with.
    failure: Mutex<Option<BuildError>>,
    /// Shared leases on every id this build used; released when the build ends.
    leases: Mutex<Vec<Lease>>,
}

struct StageWatcher<'a> {
    reporter: &'a dyn Reporter,
    stage: &'a [String],
}

impl Watcher for StageWatcher<'_> {
    fn note(&self, text: &str) {
        self.reporter.event(Event::Note {
            stage: self.stage,
            text,
        });
    }
    fn output(&self, bytes: &[u8]) {
        self.reporter.event(Event::Output {
            stage: self.stage,
            bytes,
        });
    }
}

impl<'a> BuildRun<'a> {
    pub fn new(
        shared: Arc<Shared>,
        options: &'a BuildOptions,
        reporter: &'a dyn Reporter,
        cancel: &'a Cancel,
    ) -> BuildRun<'a> {
        BuildRun {
            shared,
            options,
            reporter,
            cancel: cancel.child(),
            failure: Mutex::new(None),
            leases: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, stage: &[String], text: &str) {
        self.reporter.event(Event::Note { stage, text });
    }

    /// Holds a shared lease on `id` until the build ends. The wait for it (a prune deleting
    /// the id) ends when the build is cancelled.
    fn lease(&self, id: &StepId) -> Result<(), BuildError> {
        let lease: Lease = self.shared.catalog.lease(id, &self.cancel)?;
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).push(lease);
        Ok(())
    }

    /// Records a stage's failure (the first one wins) and stops the rest of the build.
    fn fail(&self, error: &BuildError) {
        if error.kind() == ErrorKind::Cancelled {
            return;
        }
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| error.share());
        self.cancel.cancel();
    }

    /// Builds the whole spec. Returns only once every step it started has ended. When one
    /// stage fails the others are stopped, and the build reports that first failure.
    pub fn build(&self, spec: &Spec) -> Result<StepId, BuildError> {
        self.admit_bases(spec)?;
        let result = self.build_spec(spec, &[], &Scope::default());
        if let Err(e) = &result {
            self.fail(e);
        }
        let first = self.failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        // A failed stage fails the build even when nothing copies from it (as in OBuilder,
        // which builds every stage first); its failure is the one to report.
        match (result, first) {
            (_, Some(first)) => Err(first),
            (result, None) => result,
        }
    }

    /// Refuses the build before anything runs when a base image (of any stage) is one this
    /// invocation may not use, cached or not.
    fn admit_bases(&self, spec: &Spec) -> Result<(), BuildError> {
        for stage in &spec.stages {
            self.admit_bases(&stage.spec)?;
        }
        Ok(self.shared.fetcher.admit(&spec.from)?)
    }

    /// Builds a spec's stages concurrently and then its own steps; returns its last id.
    fn build_spec(&self, spec: &Spec, stage: &[String], outer: &Scope) -> Result<StepId, BuildError> {
        let mut scope = outer.clone();
        std::thread::scope(|threads| {
            for child in &spec.stages {
                let slot = Arc::new(StageSlot::default());
                let child_scope = scope.clone();
                scope.insert(child.name.clone(), slot.clone());
                let mut child_stage = stage.to_vec();
                child_stage.push(child.name.clone());
                threads.spawn(move || {
                    self.heading(&child_stage, &format!("(build {:?} …)", child.name));
                    let result = self.build_spec(&child.spec, &child_stage, &child_scope);
                    match &result {
                        Ok(_) => self.note(&child_stage, &format!("--> finished {:?}", child.name)),
                        Err(e) => self.fail(e),
                    }
                    slot.set(result.map_err(|e| format!("stage {:?} failed: {e}", child.name)));
                });
            }
            let result = step::build_ops(self, spec, stage, &scope);
            if let Err(e) = &result {
                // Stop the stages still running before waiting for them.
                self.fail(e);
            }
            result
        })
    }

    fn replay_log(&self, stage: &[String], id: &StepId) {
        let Ok(Some(path)) = self.shared.catalog.log_path(id) else {
            return;
        };
        if let Ok(log) = StepLog::open_finished(&path) {
            log.tail(&Cancel::new(), &mut |bytes| {
                self.reporter.event(Event::Output { stage, bytes })
            });
        }
    }
}

impl Steps for BuildRun<'_> {
    fn options(&self) -> &BuildOptions {
        self.options
    }

    fn scheme(&self) -> IdScheme {
        self.shared.catalog.scheme()
    }

    fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn heading(&self, stage: &[String], text: &str) {
        self.reporter.event(Event::Heading { stage, text });
    }

    /// Gets step `id` (child of `parent`): cached, joined, or built by `work`.
    fn get_step(
        &self,
        stage: &[String],
        id: StepId,
        parent: Option<StepId>,
        op: String,
        work: Work,
    ) -> Result<StepId, BuildError> {
        if self.cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        self.lease(&id)?;
        let started = Instant::now();
        let watcher = StageWatcher {
            reporter: self.reporter,
            stage,
        };
        let shared = self.shared.clone();
        let worker_id = id.clone();
        let result = self
            .shared
            .inflight
            .clone()
            .get(&id, &self.cancel, &watcher, move |flight| {
                execute(&shared, flight, &worker_id, parent.as_ref(), &op, work)
            })?;
        self.shared.catalog.touch(&id)?;
        match result {
            StepResult::Saved => self.note(stage, &format!("---> saved as {id}")),
            StepResult::Cached => {
                if self.options.show_cached_logs {
                    self.replay_log(stage, &id);
                }
                self.note(stage, &format!("---> using {id} from cache"))
            }
        }
        self.reporter.event(Event::StepDone {
            stage,
            id: id.as_str(),
            result,
            duration: started.elapsed(),
        });
        Ok(id)
    }
}
