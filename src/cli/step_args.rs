//! The operator's flags for the steps a command runs (`build`, `worker`): limits, timeouts,
//! the syscall filter and what the spec may ask for.

use std::time::Duration;

use clap::Args;
use strata::builder::BuildOptions;
use strata_sandbox::{Limits, Seccomp, DEFAULT_PIDS_LIMIT};

use super::units;

/// `--seccomp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompArg {
    /// Docker's default profile (namespaces, mounts, kernel keyrings, bpf... refused)
    Default,
    /// No filter
    Unconfined,
}

#[derive(Debug, Clone, Args)]
pub struct StepArgs {
    /// Memory limit per step (e.g. 2G; at least 6M)
    #[arg(long, value_parser = units::parse_memory, value_name = "SIZE")]
    pub memory: Option<u64>,
    /// CPU limit per step (e.g. 1.5; at least 0.01)
    #[arg(long, value_parser = units::parse_cpus, value_name = "CPUS")]
    pub cpus: Option<f64>,
    /// Process limit per step (0: no limit)
    #[arg(long = "pids-limit", value_name = "N", default_value_t = DEFAULT_PIDS_LIMIT)]
    pub pids_limit: u64,
    /// Kill a step that runs longer (e.g. 30m)
    #[arg(long = "step-timeout", value_parser = units::parse_positive_duration, value_name = "DURATION")]
    pub step_timeout: Option<Duration>,
    /// Kill a step whose output passes this size
    #[arg(long = "log-limit", value_parser = units::parse_positive_size, default_value = "100M", value_name = "SIZE")]
    pub log_limit: u64,
    /// Make sync/fsync no-ops inside steps (faster; a crash may lose the step's writes)
    #[arg(long = "fast-sync")]
    pub fast_sync: bool,
    /// The steps' syscall filter: Docker's default profile, or none
    #[arg(long, value_enum, default_value_t = SeccompArg::Default, value_name = "PROFILE")]
    pub seccomp: SeccompArg,
    /// Set no_new_privs in steps: setuid programs (sudo, su) no longer gain privileges
    #[arg(long = "no-new-privileges")]
    pub no_new_privileges: bool,
    /// Refuse specs that use (network host)
    #[arg(long = "no-host-network")]
    pub no_host_network: bool,
}

impl StepArgs {
    /// The build options these flags set (the rest at their defaults).
    pub fn options(&self) -> BuildOptions {
        BuildOptions {
            limits: Limits {
                memory_bytes: self.memory,
                cpus: self.cpus,
                // 0: no limit.
                pids: Some(self.pids_limit).filter(|&n| n > 0),
            },
            step_timeout: self.step_timeout,
            log_limit: Some(self.log_limit),
            fast_sync: self.fast_sync,
            seccomp: match self.seccomp {
                SeccompArg::Default => Seccomp::Default,
                SeccompArg::Unconfined => Seccomp::Unconfined,
            },
            no_new_privileges: self.no_new_privileges,
            no_host_network: self.no_host_network,
            ..BuildOptions::default()
        }
    }
}
