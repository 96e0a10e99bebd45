use std::fmt;
use std::path::PathBuf;

use super::sexp::Span;

/// A bad spec: `FILE:LINE:COL: error: MESSAGE` (the CLI exits 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    pub span: Span,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.span.line,
            self.span.col,
            self.message
        )
    }
}

impl std::error::Error for SpecError {}
