//! Stand-ins for commands that never run steps or fetch images (`ls`, `prune`, `verify`):
//! they need no runtime or registry, and say so if asked.

use std::path::Path;

use strata_sandbox::{Cancel, LogSink, Outcome, RunConfig, Sandbox, SandboxError};

use crate::fetch::{FetchError, Fetcher, ImageConfig};

pub struct NoSandbox;

impl Sandbox for NoSandbox {
    fn run(&self, _: &RunConfig, _: &Path, _: &dyn LogSink, _: &Cancel) -> Result<Outcome, SandboxError> {
        Err(SandboxError::Config("this command does not run steps".to_owned()))
    }
}

pub struct NoFetcher;

impl Fetcher for NoFetcher {
    fn fetch(&self, image: &str, _: &Path, _: &dyn LogSink, _: &Cancel) -> Result<ImageConfig, FetchError> {
        Err(FetchError::Unavailable {
            reference: image.to_owned(),
            reason: "this command does not fetch images".to_owned(),
        })
    }
}
