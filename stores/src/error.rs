use std::path::PathBuf;

/// Errors from a store. Messages are lowercase and name the offending path or value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store spec {spec:?}: {reason}")]
    InvalidSpec { spec: String, reason: String },
    #[error("invalid step id {0:?}: expected 64 lowercase hex digits")]
    InvalidId(String),
    #[error("{path}: {reason}")]
    Unsuitable { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("invalid cache name {name:?}: {reason}")]
    InvalidCacheName { name: String, reason: String },
    #[error("cache {0:?} is in use")]
    Busy(String),
    #[error("no such item {0}")]
    NotFound(String),
    #[error("btrfs: {0}")]
    Btrfs(String),
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds a context string to an `io::Result`, the store's usual way to name the path involved.
pub trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::io(context(), source))
    }
}
