//! strata's step sandbox: runs one command in a root filesystem under an OCI runtime.
//!
//! Contract: [`Sandbox::run`] runs `config.argv` in `rootfs` with the config's user, cwd,
//! env, network, mounts, secrets and limits; stdout and stderr are merged in order and
//! handed to the [`LogSink`]; stdin is at end-of-file. It returns how the process ended.
//! It returns only after the container is gone (killed, waited for and deleted), whether
//! the step finished, timed out, hit the log cap or was cancelled. Secrets are never
//! written into the rootfs.

pub mod cancel;
pub mod cgroups;
pub mod cleanup;
pub mod config;
pub mod error;
pub mod fsat;
pub mod host;
pub mod names;
pub mod oci_config;
pub mod output;
pub mod runtime;
pub mod runtime_cli;
pub mod seccomp;
pub mod secrets;
pub mod shim;

use std::path::Path;

pub use cancel::Cancel;
pub use config::{BindMount, Limits, Network, RunConfig, Seccomp, SecretMount, DEFAULT_PIDS_LIMIT};
pub use error::SandboxError;
pub use runtime::{OciSandbox, OciSandboxOptions, RuntimeVersion};

/// Where a step's merged output goes (the builder writes it to the step's log file and
/// streams it to every client watching the step).
pub trait LogSink: Send + Sync {
    fn write(&self, bytes: &[u8]);
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited with this status (0 is success).
    Exited(i32),
    /// The command was killed by this signal.
    Signaled(i32),
    /// `config.timeout` passed; the container was killed.
    TimedOut,
    /// The output passed `config.log_limit`; the container was killed.
    LogLimitExceeded,
    /// The cancel token fired; the container was killed.
    Cancelled,
}

impl Outcome {
    pub fn success(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }
}

pub trait Sandbox: Send + Sync {
    fn run(
        &self,
        config: &RunConfig,
        rootfs: &Path,
        log: &dyn LogSink,
        cancel: &Cancel,
    ) -> Result<Outcome, SandboxError>;
}
