//! Which stages a point of a spec can copy from, and their results as they come.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use strata_stores::StepId;

/// The result of a `(build NAME ...)` stage, awaited by the steps that copy from it.
#[derive(Default)]
pub(crate) struct StageSlot {
    result: Mutex<Option<Result<StepId, String>>>,
    ready: Condvar,
}

impl StageSlot {
    pub fn set(&self, result: Result<StepId, String>) {
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        self.ready.notify_all();
    }

    /// Waits for the stage to end: its last id, or why it failed.
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

    pub fn insert(&mut self, name: String, slot: Arc<StageSlot>) {
        self.stages.insert(name, slot);
    }
}
