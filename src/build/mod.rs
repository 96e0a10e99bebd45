//! The builder: the step loop, context copies, multi-stage builds, dedupe, logs, cancellation.
pub mod copy;
