//! The command line: clap definitions, one file per subcommand, exit codes.

pub mod backend;
pub mod build;
pub mod cache;
pub mod check;
pub mod clean;
pub mod completions;
pub mod delete;
pub mod dockerfile;
pub mod exit;
pub mod export;
pub mod fmt;
pub mod healthcheck;
pub mod inspect;
pub mod man;
pub mod mount;
pub mod progress;
pub mod prune;
pub mod step_args;
pub mod units;
pub mod verify;
pub mod worker;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use exit::{CliError, CliResult};

#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "A snapshot-layered build executor for OBuilder-style specs",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The store: btrfs:/PATH, zfs:POOL, zfs:/PREFIX/POOL, rsync:/PATH, xfs:/PATH or overlayfs:/PATH
    #[arg(long, env = "STRATA_STORE", global = true, value_name = "SPEC")]
    pub store: Option<String>,
    /// More logging (repeat for more); logs go to stderr
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// When to colour output
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    pub color: Color,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a spec and print the id of its last step
    Build(build::BuildArgs),
    /// Check that the store, the runtime and a base image work, timing each part
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Delete least-recently-used items until a target is met (safe while builds run)
    Prune(prune::PruneArgs),
    /// Delete every item not in use by a running build
    Clean(clean::CleanArgs),
    /// Delete an item and all its descendants
    Delete(delete::DeleteArgs),
    /// List the items of a store
    Ls(inspect::LsArgs),
    /// Show an item's op and its base chain
    Info(inspect::IdArgs),
    /// Print an item's log
    Log(inspect::IdArgs),
    /// Mount an item's root filesystem read-only (nosuid, nodev) on a directory
    Mount(mount::MountArgs),
    /// Unmount a directory `strata mount` mounted
    Umount(mount::UmountArgs),
    /// Items, caches, bytes and free space of a store
    Du(inspect::DuArgs),
    /// List or delete writable caches
    Cache(cache::CacheArgs),
    /// Check the database against the store; --repair fixes what it can
    Verify(verify::VerifyArgs),
    /// Validate spec files; print `FILE: ok` for each good one
    Check(check::CheckArgs),
    /// Print a spec in canonical layout, comments kept
    Fmt(fmt::FmtArgs),
    /// Convert a spec to a Dockerfile
    Dockerfile(dockerfile::DockerfileArgs),
    /// Export an item as an OCI layout, a docker-archive, a registry push or a rootfs tar
    Export(export::ExportArgs),
    /// Print shell completions
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff)
    Man(man::ManArgs),
    /// Join an OCluster pool as a worker and run its OBuilder jobs
    Worker(worker::WorkerArgs),
}

fn init_logging(global: &GlobalArgs) {
    let level = if global.quiet {
        "error"
    } else {
        match global.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(global.color != Color::Never)
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.global);
    let result: CliResult = match cli.command {
        Command::Build(args) => build::run(&cli.global, args),
        Command::Healthcheck(args) => healthcheck::run(&cli.global, args),
        Command::Prune(args) => prune::run(&cli.global, args),
        Command::Clean(args) => clean::run(&cli.global, args),
        Command::Delete(args) => delete::run(&cli.global, args),
        Command::Ls(args) => inspect::ls(&cli.global, args),
        Command::Info(args) => inspect::info(&cli.global, args),
        Command::Log(args) => inspect::log(&cli.global, args),
        Command::Mount(args) => mount::mount(&cli.global, args),
        Command::Umount(args) => mount::umount(args),
        Command::Du(args) => inspect::du(&cli.global, args),
        Command::Cache(args) => cache::run(&cli.global, args),
        Command::Verify(args) => verify::run(&cli.global, args),
        Command::Check(args) => check::run(&args),
        Command::Fmt(args) => fmt::run(&args),
        Command::Dockerfile(args) => dockerfile::run(&args),
        Command::Export(args) => export::run(&cli.global, args),
        Command::Completions(args) => completions::run(&args),
        Command::Man(args) => man::run(&args),
        Command::Worker(args) => worker::run(&cli.global, args),
    };
    exit::report(result)
}
