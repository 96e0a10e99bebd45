//! Directory-fd-relative filesystem calls used by the layer unpacker: the primitive lives in
//! the sandbox crate ([`strata_sandbox::fsat`]), shared with the removal of secret mount
//! placeholders after a step.

pub use strata_sandbox::fsat::*;
