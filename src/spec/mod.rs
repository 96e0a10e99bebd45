//! The spec language: OBuilder's S-expression build specs.
//!
//! `sexp` is the value and machine printer, `reader` turns text into spanned S-expressions
//! (with comments kept for `fmt`), `parse` turns those into the typed [`ast::Spec`] and
//! validates it, `print` writes specs back (canonical machine form and a readable layout),
//! `format` is `strata fmt` (the readable layout with the source's comments kept),
//! `dockerfile` converts a spec to a Dockerfile.

pub mod ast;
pub mod dockerfile;
pub mod error;
pub mod format;
pub mod lint;
pub mod parse;
pub mod print;
pub mod reader;
pub mod sexp;

pub use ast::{Copy, CopyFrom, Mount, Op, OpItem, Run, Spec, Stage, User};
pub use error::SpecError;
pub use format::format_source;
pub use parse::{load_spec, parse_spec};
pub use sexp::{Sexp, Span};

#[cfg(test)]
mod tests;
