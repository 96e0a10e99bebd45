//! `strata build -f SPEC [CONTEXT]`: build a spec; print the final id on stdout.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::backend::{self, BackendArgs, StoreArgs};
use super::progress::{ProgressMode, StderrReporter};
use super::step_args::StepArgs;
use super::{exit, units, CliError, CliResult, GlobalArgs};
use strata::builder::{guard, BuildOptions, ErrorKind};
use strata_sandbox::{BindMount, Cancel};

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The spec file
    #[arg(short = 'f', long = "file", value_name = "SPEC")]
    pub file: PathBuf,
    /// The build context: the directory `(copy (src ...))` reads from
    #[arg(value_name = "CONTEXT", default_value = ".")]
    pub context: PathBuf,
    /// A secret's value, read from FILE (repeatable)
    #[arg(long = "secret", value_name = "ID:FILE")]
    pub secret: Vec<String>,
    /// How to show progress on stderr
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, overrides_with = "progress")]
    pub progress: ProgressMode,
    /// Replay the logs of cached steps
    #[arg(long)]
    pub show_cached_logs: bool,
    /// Cancel the whole build after this long (e.g. 2h)
    #[arg(long, value_parser = units::parse_positive_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub steps: StepArgs,
    /// Bind a host path read-only into every step: HOST:TARGET (repeatable)
    #[arg(long = "sandbox-path", value_name = "HOST:TARGET")]
    pub sandbox_path: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

fn sandbox_paths(flags: &[String]) -> Result<Vec<BindMount>, CliError> {
    flags
        .iter()
        .map(|flag| {
            let (host, target) = flag
                .split_once(':')
                .filter(|(h, t)| !h.is_empty() && t.starts_with('/'))
                .ok_or_else(|| CliError::usage(anyhow::anyhow!("--sandbox-path {flag:?}: expected HOST:/TARGET")))?;
            let source = std::fs::canonicalize(host)
                .map_err(|e| CliError::usage(anyhow::anyhow!("--sandbox-path {flag:?}: {host}: {e}")))?;
            Ok(BindMount {
                source,
                target: target.to_owned(),
                readonly: true,
            })
        })
        .collect()
}

/// Cancels `cancel` on SIGINT, SIGTERM or SIGHUP (the terminal closed); returns the flag that
/// says it happened. The build then stops its steps and exits 130; a second signal changes
/// nothing (exiting early would leave the steps running).
pub fn cancel_on_signals(cancel: &Cancel) -> Arc<AtomicBool> {
    use nix::sys::signal::{SigSet, Signal};
    let interrupted = Arc::new(AtomicBool::new(false));
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    // Threads started later inherit the mask, so only the waiter below sees these signals.
    if set.thread_block().is_ok() {
        let cancel = cancel.clone();
        let flag = interrupted.clone();
        let _ = std::thread::Builder::new().name("signals".into()).spawn(move || {
            while set.wait().is_ok() {
                if !flag.swap(true, Ordering::SeqCst) {
                    let _ = writeln!(std::io::stderr(), "strata: interrupted, stopping the build");
                    cancel.cancel();
                }
            }
        });
    }
    interrupted
}

pub fn run(global: &GlobalArgs, args: BuildArgs) -> CliResult {
    let cancel = Cancel::new();
    let interrupted = cancel_on_signals(&cancel);
    let spec = strata::spec::load_spec(&args.file).map_err(CliError::usage)?;
    let policy = guard::Policy {
        no_host_network: args.steps.no_host_network,
    };
    let findings = guard::build_findings(&spec, &policy);
    if !findings.is_empty() {
        for finding in &findings {
            eprintln!("{}", finding.error(&args.file));
        }
        return Err(CliError::silent(exit::USAGE));
    }
    let context = std::fs::canonicalize(&args.context)
        .map_err(|e| CliError::usage(anyhow::anyhow!("build context {}: {e}", args.context.display())))?;
    if !context.is_dir() {
        return Err(CliError::usage(anyhow::anyhow!(
            "build context {} is not a directory",
            context.display()
        )));
    }
    let options = BuildOptions {
        context,
        secrets: backend::read_secrets(&args.secret)?,
        extra_mounts: sandbox_paths(&args.sandbox_path)?,
        show_cached_logs: args.show_cached_logs,
        ..args.steps.options()
    };
    let builder = backend::open_builder(global, &args.store, &args.backend)?;
    let timed_out = Arc::new(AtomicBool::new(false));
    if let Some(limit) = args.timeout {
        let (cancel, flag) = (cancel.clone(), timed_out.clone());
        let _ = std::thread::Builder::new().name("timeout".into()).spawn(move || {
            if !cancel.wait_timeout(limit) {
                flag.store(true, Ordering::SeqCst);
                cancel.cancel();
            }
        });
    }
    let reporter = StderrReporter::new(args.progress, global.color, global.quiet);
    match builder.build(&spec, &options, &reporter, &cancel) {
        Ok(id) => {
            println!("{id}");
            Ok(exit::SUCCESS)
        }
        Err(e) => {
            if timed_out.load(Ordering::SeqCst) {
                let limit = args.timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
                return Err(CliError::step_failed(anyhow::anyhow!("build timed out after {limit}s")));
            }
            let code = match e.kind() {
                ErrorKind::StepFailed => exit::STEP_FAILED,
                ErrorKind::Usage => exit::USAGE,
                ErrorKind::Environment => exit::ENVIRONMENT,
                ErrorKind::Cancelled => exit::INTERRUPTED,
            };
            if interrupted.load(Ordering::SeqCst) || e.kind() == ErrorKind::Cancelled {
                return Err(CliError::new(exit::INTERRUPTED, anyhow::anyhow!("build cancelled")));
            }
            Err(CliError::new(code, anyhow::anyhow!("build failed: {e}")))
        }
    }
}
