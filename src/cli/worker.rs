//! `strata worker --connect POOL.cap --name NAME --capacity N`: join an OCluster pool as a
//! worker (flag names follow `ocluster-worker` where they apply), taking the build
//! command's operator flags for the steps it runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::backend::{self, BackendArgs, StoreArgs};
use super::step_args::StepArgs;
use super::{exit, units, CliError, CliResult, GlobalArgs};
use strata::worker::cap_uri::CapUri;
use strata::worker::run::Runner;
use strata::worker::session::{self, Stop};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The pool's .cap file (capnp://sha-256:FINGERPRINT@HOST:PORT/ID), from the scheduler's admin
    #[arg(long = "connect", value_name = "POOL.cap")]
    pub connect: PathBuf,
    /// This worker's name in the pool (unique per pool)
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// How many jobs to run at once
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    pub capacity: u32,
    /// Go inactive and prune the store when its free space falls under PERCENT
    #[arg(long = "prune-threshold", value_name = "PERCENT", value_parser = parse_percent)]
    pub prune_threshold: Option<f64>,
    /// Where to keep git caches and build contexts
    #[arg(long = "state-dir", default_value = "/var/lib/strata-worker", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// A node exporter whose metrics `metrics host` returns (e.g. http://127.0.0.1:9100/metrics)
    #[arg(long = "node-exporter", value_name = "URL")]
    pub node_exporter: Option<String>,
    /// On SIGTERM let running jobs finish (default: cancel them)
    #[arg(long)]
    pub drain: bool,
    /// At most one connection attempt per interval
    #[arg(long = "reconnect-interval", default_value = "10s", value_parser = units::parse_duration, hide = true)]
    pub reconnect_interval: Duration,
    #[command(flatten)]
    pub steps: StepArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{text:?} is not between 0 and 100"))
    }
}

pub fn run(global: &GlobalArgs, args: WorkerArgs) -> CliResult {
    let uri = CapUri::read(&args.connect).map_err(CliError::usage)?;
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| CliError::environment(anyhow::anyhow!("creating {}: {e}", args.state_dir.display())))?;
    let options = args.steps.options();
    let builder = backend::open_builder(global, &args.store, &args.backend)?;
    let runner = Arc::new(Runner {
        name: args.name,
        state_dir: args.state_dir,
        builder,
        options,
        metrics: Arc::default(),
        repo_locks: Default::default(),
        prune_gate: Default::default(),
    });
    let config = session::Config {
        uri,
        capacity: args.capacity,
        prune_threshold: args.prune_threshold,
        node_exporter: args.node_exporter,
        reconnect_interval: args.reconnect_interval,
        drain: args.drain,
    };
    match session::run(config, runner) {
        Ok(Stop::Signal) => Ok(exit::SUCCESS),
        // A supervisor restarts the worker (OCluster's worker exits 1 too).
        Ok(Stop::SelfUpdate) => Err(CliError::new(1, anyhow::anyhow!("exiting for selfUpdate"))),
        Err(e) => Err(CliError::environment(anyhow::anyhow!("worker: {e}"))),
    }
}
