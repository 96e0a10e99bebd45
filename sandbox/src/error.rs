/// Errors from the sandbox itself (not from the step's command, whose end is an `Outcome`).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("OCI runtime {0:?} not found (install runc or crun, or pass --runtime PATH)")]
    RuntimeMissing(String),
    #[error("OCI runtime {runtime} version {version} is too old (need {minimum} or newer)")]
    RuntimeTooOld {
        runtime: String,
        version: String,
        minimum: String,
    },
    #[error("OCI runtime {runtime} version {version} refused: {reason}")]
    RuntimeVulnerable {
        runtime: String,
        version: String,
        reason: String,
    },
    #[error("OCI runtime {runtime} failed: {stderr}")]
    Runtime { runtime: String, stderr: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
}
