//! What a step needs from the sandbox.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A private network namespace with loopback only.
    #[default]
    None,
    /// The host's network namespace, with the host's resolv.conf bound read-only.
    Host,
}

/// A host path bound into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub readonly: bool,
}

/// A secret: its value is written to a private tmpfs file and bound read-only at `target`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretMount {
    pub id: String,
    pub value: Vec<u8>,
    pub target: String,
}

impl std::fmt::Debug for SecretMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretMount")
            .field("id", &self.id)
            .field("value", &"<redacted>")
            .field("target", &self.target)
            .finish()
    }
}

/// The seccomp filter of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seccomp {
    /// Docker's default profile (see [`crate::seccomp`]).
    #[default]
    Default,
    /// No filter (`--seccomp unconfined`); `fast_sync` still installs its no-op sync rule.
    Unconfined,
}

/// The process limit of a step unless the operator says otherwise (`--pids-limit`): enough for
/// a parallel compiler or test suite, not for a fork bomb to take the host's pid space.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

/// cgroup limits; `None` leaves the runtime's default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The full command: shell prefix plus the step's command.
    pub argv: Vec<String>,
    pub cwd: String,
    /// `NAME=VALUE` pairs in order (duplicates are passed through as given).
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub network: Network,
    /// Writable cache copies (rw) and extra host paths (ro).
    pub mounts: Vec<BindMount>,
    pub secrets: Vec<SecretMount>,
    pub limits: Limits,
    /// Kill the step after this long.
    pub timeout: Option<Duration>,
    /// Kill the step once its output passes this many bytes.
    pub log_limit: u64,
    /// Make sync-family syscalls succeed without syncing (seccomp).
    pub fast_sync: bool,
    /// The syscall filter.
    pub seccomp: Seccomp,
    /// Set `noNewPrivileges`: setuid binaries (`sudo`, `su`) then no longer raise privileges.
    /// Off by default, as in OBuilder and Docker.
    pub no_new_privileges: bool,
}

pub const DEFAULT_LOG_LIMIT: u64 = 100 * 1024 * 1024;

impl RunConfig {
    pub fn new(argv: Vec<String>) -> RunConfig {
        RunConfig {
            argv,
            cwd: "/".to_owned(),
            env: Vec::new(),
            uid: 0,
            gid: 0,
            hostname: "strata".to_owned(),
            network: Network::None,
            mounts: Vec::new(),
            secrets: Vec::new(),
            limits: Limits::default(),
            timeout: None,
            log_limit: DEFAULT_LOG_LIMIT,
            fast_sync: false,
            seccomp: Seccomp::Default,
            no_new_privileges: false,
        }
    }
}
