use crate::catalog::CatalogError;
use crate::db::DbError;
use crate::fetch::FetchError;
use strata_sandbox::SandboxError;
use strata_stores::StoreError;

/// Why a build did not produce an id. [`BuildError::kind`] maps it to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The step's command ran and failed (or timed out, or hit the log cap).
    #[error("{step}: {reason}{}", tail_suffix(.tail))]
    StepFailed { step: String, reason: String, tail: String },
    /// A copy could not be done (missing source, unsafe path...): the step failed.
    #[error("{step}: {reason}")]
    CopyFailed { step: String, reason: String },
    /// The spec asks for something the invocation does not provide (a secret).
    #[error("{0}")]
    Usage(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Catalog(CatalogError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cancelled")]
    Cancelled,
    /// A step shared by several builds failed: every client gets the same message and kind.
    #[error("{message}")]
    Shared { kind: ErrorKind, message: String },
}

impl From<CatalogError> for BuildError {
    fn from(e: CatalogError) -> BuildError {
        match e {
            CatalogError::Cancelled => BuildError::Cancelled,
            CatalogError::Store(e) => BuildError::Store(e),
            CatalogError::Db(e) => BuildError::Db(e),
            e => BuildError::Catalog(e),
        }
    }
}

fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("\nlast output:\n{tail}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    StepFailed,
    Usage,
    Environment,
    Cancelled,
}

impl BuildError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> BuildError {
        BuildError::Io {
            context: context.into(),
            source,
        }
    }

    /// The same failure, for another client of a shared step.
    pub fn share(&self) -> BuildError {
        BuildError::Shared {
            kind: self.kind(),
            message: self.to_string(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            BuildError::StepFailed { .. } | BuildError::CopyFailed { .. } => ErrorKind::StepFailed,
            BuildError::Shared { kind, .. } => *kind,
            BuildError::Usage(_) => ErrorKind::Usage,
            BuildError::Cancelled => ErrorKind::Cancelled,
            BuildError::Fetch(FetchError::Cancelled(_)) => ErrorKind::Cancelled,
            BuildError::Catalog(_) => ErrorKind::Environment,
            BuildError::Store(_)
            | BuildError::Sandbox(_)
            | BuildError::Fetch(_)
            | BuildError::Db(_)
            | BuildError::Io { .. } => ErrorKind::Environment,
        }
    }
}
