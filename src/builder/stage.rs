//! One build invocation: walks a spec's stages (concurrently) and ops (in order), and gets
//! each step through the in-process dedupe, the per-id store lock and the store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use strata_sandbox::Cancel;
use strata_stores::{Prepared, StepId, Store};

use super::error::{BuildError, ErrorKind};
use super::inflight::{Flight, Watcher};
use super::lease::Lease;
use super::log::StepLog;
use super::progress::{Event, Reporter, StepResult};
use super::{BuildOptions, ItemMeta, Shared, ITEM_META};
use crate::db::NewBuild;
use crate::spec::Spec;

/// The result of a `(build NAME ...)` stage, awaited by the steps that copy from it.
#[derive(Default)]
pub(crate) struct StageSlot {
    result: Mutex<Option<Result<StepId, String>>>,
    ready: Condvar,
}

impl StageSlot {
    fn set(&self, result: Result<StepId, String>) {
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        self.ready.notify_all();
    }

    pub fn wait(&self) -> Result<StepId, String> {
        let mut guard = self.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = &*guard {
                return r.clone();
            }
            guard = self.ready.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The stages visible at a point of a spec: earlier siblings and the enclosing scope.
#[derive(Clone, Default)]
pub(crate) struct Scope {
    stages: HashMap<String, Arc<StageSlot>>,
}

impl Scope {
    pub fn get(&self, name: &str) -> Option<Arc<StageSlot>> {
        self.stages.get(name).cloned()
    }
}

/// What a step's work gets: the item being filled, its log, and the cancel token.
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

pub(crate) type Work = Box<dyn FnOnce(&StepEnv<'_>) -> Result<WorkOutput, BuildError> + Send>;

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

    pub fn heading(&self, stage: &[String], text: &str) {
        self.reporter.event(Event::Heading { stage, text });
    }

    pub fn note(&self, stage: &[String], text: &str) {
        self.reporter.event(Event::Note { stage, text });
    }

    /// Holds a shared lease on `id` until the build ends.
    pub fn lease(&self, id: &StepId) -> Result<(), BuildError> {
        // A lease held exclusively (a prune deleting the id, or another user of the host before
        // the store was private) must not make the build deaf to an interrupt.
        let lease = match self.shared.leases.share_until(id, &self.cancel) {
            Ok(lease) => lease,
            Err(_) if self.cancel.is_cancelled() => return Err(BuildError::Cancelled),
            Err(e) => return Err(e.into()),
        };
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
        match (result, first) {
            (Err(e), Some(first)) if e.kind() == ErrorKind::Cancelled => Err(first),
            (result, _) => result,
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
                scope.stages.insert(child.name.clone(), slot.clone());
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
            let result = super::step::build_ops(self, spec, stage, &scope);
            if let Err(e) = &result {
                // Stop the stages still running before waiting for them.
                self.fail(e);
            }
            result
        })
    }

    /// Gets step `id` (child of `parent`): cached, joined, or built by `work`.
    pub fn get_step(
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
        self.shared.db().touch(&id)?;
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

    fn replay_log(&self, stage: &[String], id: &StepId) {
        let Ok(Some(path)) = self.shared.store.result(id) else {
            return;
        };
        if let Ok(log) = StepLog::open_finished(&path.join("log")) {
            log.tail(&Cancel::new(), &mut |bytes| {
                self.reporter.event(Event::Output { stage, bytes })
            });
        }
    }
}

/// Makes sure a committed item has its database row (adopting one committed by another
/// process, or by a process killed between commit and insert).
pub(crate) fn ensure_row(
    shared: &Shared,
    id: &StepId,
    parent: Option<&StepId>,
    item: &std::path::Path,
) -> Result<(), BuildError> {
    let db = shared.db();
    if db.exists(id)? {
        return Ok(());
    }
    let meta = ItemMeta::read(item);
    db.insert_build(&NewBuild {
        id,
        parent,
        size: 0,
        duration_ms: meta.as_ref().map(|m| m.duration_ms).unwrap_or(0),
        op: meta.as_ref().map(|m| m.op.as_str()).unwrap_or(""),
        base_digest: meta.as_ref().and_then(|m| m.base_digest.as_deref()),
    })?;
    Ok(())
}

/// The worker side of a step: runs once per id per process, under the store's per-id lock.
fn execute(
    shared: &Shared,
    flight: &Flight,
    id: &StepId,
    parent: Option<&StepId>,
    op: &str,
    work: Work,
) -> Result<StepResult, BuildError> {
    let store: &dyn Store = &*shared.store;
    if let Some(path) = store.result(id)? {
        ensure_row(shared, id, parent, &path)?;
        return Ok(StepResult::Cached);
    }
    let pending = match store.prepare(parent, id)? {
        Prepared::Exists(path) => {
            ensure_row(shared, id, parent, &path)?;
            return Ok(StepResult::Cached);
        }
        Prepared::Pending(pending) => pending,
    };
    let item = pending.path().to_owned();
    // A clone inherits its parent's log and metadata: start afresh.
    for inherited in ["log", ITEM_META] {
        match std::fs::remove_file(item.join(inherited)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(BuildError::io(
                    format!("removing {}", item.join(inherited).display()),
                    e,
                ))
            }
            _ => {}
        }
    }
    let log = Arc::new(
        StepLog::create(&item.join("log"))
            .map_err(|e| BuildError::io(format!("creating {}", item.join("log").display()), e))?,
    );
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
                    format!(
                        "{e}\nthe step's log {} could not be written",
                        item.join("log").display()
                    ),
                    std::io::Error::other(log_error),
                ),
                _ => e,
            });
        }
    };
    if let Some(e) = log_error {
        let _ = pending.abort();
        return Err(BuildError::io(
            format!("writing {}", item.join("log").display()),
            std::io::Error::other(e),
        ));
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    let meta = ItemMeta {
        id: id.to_string(),
        parent: parent.map(|p| p.to_string()),
        op: op.to_owned(),
        scheme: shared.scheme.to_string(),
        base_digest: output.base_digest.clone(),
        duration_ms,
    };
    let meta_json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    if let Err(e) = std::fs::write(item.join(ITEM_META), meta_json) {
        let _ = pending.abort();
        return Err(BuildError::io(format!("writing {}", item.join(ITEM_META).display()), e));
    }
    let committed = pending.commit()?;
    shared.db().insert_build(&NewBuild {
        id,
        parent,
        size: committed.size_bytes,
        duration_ms,
        op,
        base_digest: output.base_digest.as_deref(),
    })?;
    Ok(StepResult::Saved)
}
