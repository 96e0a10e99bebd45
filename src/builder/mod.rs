//! The builder: the step loop, context copies, multi-stage builds, dedupe, logs, cancellation.
//!
//! [`Builder`] is generic over the three seams (store, sandbox, fetcher) through trait
//! objects and owns what is shared: the database, the id scheme, in-process dedupe of
//! concurrent builds, cross-process leases, and logs.

pub mod copy;
pub mod error;
mod execute;
pub mod guard;
pub mod healthcheck;
pub mod inflight;
pub mod log;
pub mod progress;
mod scope;
mod stage;
mod step;
#[cfg(test)]
pub(crate) mod tests;
pub mod workdir;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_sandbox::{BindMount, Cancel, Limits, Sandbox, Seccomp};
use strata_stores::StepId;

use crate::catalog::Catalog;
use crate::fetch::Fetcher;
use crate::key::IdScheme;
use crate::spec::Spec;

pub use error::{BuildError, ErrorKind};
pub use progress::{Event, Reporter, StepResult};
pub use step::DEFAULT_PATH;

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
    pub catalog: Arc<Catalog>,
    pub sandbox: Arc<dyn Sandbox>,
    pub fetcher: Arc<dyn Fetcher>,
    pub inflight: Arc<inflight::InFlight>,
}

/// Builds specs: runs each uncached step in the sandbox, in an item the catalog gives it.
/// Everything else (listing, prune, delete, verify) is the catalog's.
#[derive(Clone)]
pub struct Builder {
    shared: Arc<Shared>,
}

impl Builder {
    pub fn new(catalog: Arc<Catalog>, sandbox: Arc<dyn Sandbox>, fetcher: Arc<dyn Fetcher>) -> Builder {
        Builder {
            shared: Arc::new(Shared {
                catalog,
                sandbox,
                fetcher,
                inflight: Arc::new(inflight::InFlight::default()),
            }),
        }
    }

    pub fn scheme(&self) -> IdScheme {
        self.shared.catalog.scheme()
    }

    /// The catalog this builder stores its steps in.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.shared.catalog
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
}
