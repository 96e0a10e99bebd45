//! The builder: the step loop, context copies, multi-stage builds, dedupe, logs, cancellation.
//!
//! [`Builder`] is generic over the three seams (store, sandbox, fetcher) through trait
//! objects and owns what is shared: the database, the id scheme, in-process dedupe of
//! concurrent builds, cross-process leases, and logs.

pub mod copy;
pub mod error;
pub mod guard;
pub mod healthcheck;
pub mod inflight;
pub mod lease;
pub mod log;
pub mod progress;
pub mod prune;
pub mod reconcile;
mod stage;
mod step;
pub mod unavailable;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use strata_sandbox::{BindMount, Cancel, Limits, Sandbox, Seccomp};
use strata_stores::{StepId, Store};

use crate::db::Db;
use crate::fetch::Fetcher;
use crate::key::IdScheme;
use crate::spec::Spec;

pub use error::{BuildError, ErrorKind};
pub use progress::{Event, Reporter, StepResult};

/// Per-invocation settings of a build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The directory `(copy (src ...))` reads from.
    pub context: PathBuf,
    /// Secret values by id (`--secret ID:FILE`).
    pub secrets: HashMap<String, Vec<u8>>,
    pub limits: Limits,
    pub step_timeout: Option<Duration>,
    /// Kill a step whose output passes this many bytes.
    pub log_limit: Option<u64>,
    pub fast_sync: bool,
    /// The steps' syscall filter (`--seccomp`).
    pub seccomp: Seccomp,
    /// Set `noNewPrivileges` in steps (`--no-new-privileges`): setuid programs stop working.
    pub no_new_privileges: bool,
    /// Refuse `(network host)` (`--no-host-network`).
    pub no_host_network: bool,
    /// Extra read-only host paths (`--sandbox-path HOST:TARGET`).
    pub extra_mounts: Vec<BindMount>,
    /// Replay a cached step's log.
    pub show_cached_logs: bool,
}

/// The shared parts of a builder; cheap to clone into worker threads.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub sandbox: Arc<dyn Sandbox>,
    pub fetcher: Arc<dyn Fetcher>,
    pub db: Mutex<Db>,
    pub scheme: IdScheme,
    pub leases: lease::Leases,
    pub inflight: Arc<inflight::InFlight>,
}

impl Shared {
    pub fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
pub struct Builder {
    shared: Arc<Shared>,
}

impl Builder {
    /// A builder over an opened store; opens the database and records or checks the id scheme.
    pub fn new(
        store: Arc<dyn Store>,
        sandbox: Arc<dyn Sandbox>,
        fetcher: Arc<dyn Fetcher>,
        scheme: Option<IdScheme>,
    ) -> Result<Builder, BuildError> {
        let state = store.state_dir();
        let db = Db::open(&state)?;
        let scheme = db.id_scheme(scheme)?;
        let leases = lease::Leases::new(&state)?;
        Ok(Builder {
            shared: Arc::new(Shared {
                store,
                sandbox,
                fetcher,
                db: Mutex::new(db),
                scheme,
                leases,
                inflight: Arc::new(inflight::InFlight::default()),
            }),
        })
    }

    pub fn scheme(&self) -> IdScheme {
        self.shared.scheme
    }

    pub fn store(&self) -> &dyn Store {
        &*self.shared.store
    }

    pub fn db(&self) -> MutexGuard<'_, Db> {
        self.shared.db()
    }

    pub fn leases(&self) -> &lease::Leases {
        &self.shared.leases
    }

    /// Builds `spec` and returns the id of its last step.
    pub fn build(
        &self,
        spec: &Spec,
        options: &BuildOptions,
        reporter: &dyn Reporter,
        cancel: &Cancel,
    ) -> Result<StepId, BuildError> {
        step::check_secrets(spec, &options.secrets)?;
        let run = stage::BuildRun::new(self.shared.clone(), options, reporter, cancel);
        run.build(spec)
    }

    /// The directory of a committed item, if present.
    pub fn result_path(&self, id: &StepId) -> Result<Option<PathBuf>, BuildError> {
        Ok(self.shared.store.result(id)?)
    }

    /// The log of a committed item.
    pub fn log_path(&self, id: &StepId) -> Result<Option<PathBuf>, BuildError> {
        Ok(self.result_path(id)?.map(|p| p.join("log")))
    }
}

/// The file in an item that records how it was made (for adoption after a crash).
pub const ITEM_META: &str = "strata.json";
/// The image config of a base item.
pub const IMAGE_CONFIG: &str = "image.json";

/// What an item says about itself (`strata.json`), written before commit.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ItemMeta {
    pub id: String,
    pub parent: Option<String>,
    pub op: String,
    pub scheme: String,
    pub base_digest: Option<String>,
    pub duration_ms: u64,
}

impl ItemMeta {
    pub fn read(item: &Path) -> Option<ItemMeta> {
        let text = std::fs::read(item.join(ITEM_META)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}
