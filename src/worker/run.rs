//! Running one job on its own thread: the context from git, the spec through the builder,
//! the outcome and log as OCluster's worker leaves them ("Building on NAME" first, then
//! `Job succeeded`, `Job cancelled` or the error as the last line).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::builder::{guard, BuildOptions, Builder, ErrorKind};

use super::git_context::{self, RepoLocks};
use super::job::{JobState, Outcome};
use super::log_format::LogReporter;
use super::metrics::Metrics;
use super::ocluster_capnp::job_descr;

/// What a job asks for, copied out of the RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    OBuilder { spec: String },
    DockerBuild,
    Custom { kind: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDescr {
    pub action: Action,
    pub cache_hint: String,
    pub repository: String,
    pub commits: Vec<String>,
    pub secrets: Vec<(String, String)>,
}

impl JobDescr {
    pub fn read(r: job_descr::Reader<'_>) -> capnp::Result<JobDescr> {
        let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> capnp::Result<String> {
            Ok(t?.to_str().map_err(|e| capnp::Error::failed(e.to_string()))?.to_owned())
        };
        let action = match r.get_action().which()? {
            job_descr::action::Obuilder(o) => Action::OBuilder {
                spec: text(o?.get_spec())?,
            },
            job_descr::action::DockerBuild(_) => Action::DockerBuild,
            job_descr::action::Custom(c) => Action::Custom {
                kind: text(c?.get_kind())?,
            },
        };
        let mut commits = Vec::new();
        for c in r.get_commits()?.iter() {
            commits.push(text(c)?);
        }
        let mut secrets = Vec::new();
        for s in r.get_secrets()?.iter() {
            secrets.push((text(s.get_id())?, text(s.get_value())?));
        }
        Ok(JobDescr {
            action,
            cache_hint: text(r.get_cache_hint())?,
            repository: text(r.get_repository())?,
            commits,
            secrets,
        })
    }
}

/// What every job of a worker shares.
pub struct Runner {
    pub name: String,
    pub state_dir: PathBuf,
    pub builder: Builder,
    /// Limits, seccomp, network policy...; context and secrets are set per job.
    pub options: BuildOptions,
    pub metrics: Arc<Metrics>,
    pub repo_locks: RepoLocks,
    /// Builds hold it shared; a prune holds it alone (a running prune delays builds).
    pub prune_gate: RwLock<()>,
}

/// Why a job did not succeed, for the log's last line.
enum Failure {
    Failed(String),
    Cancelled,
}

impl Runner {
    /// Runs `descr` to the end (blocking) and records the outcome in `state`.
    pub fn run(&self, descr: &JobDescr, state: &Arc<JobState>) {
        self.metrics.job_started();
        let log = &state.log;
        log.write_str(&format!("Building on {}\n", self.name));
        let outcome = match self.build(descr, state) {
            Ok(id) => {
                log.write_str("Job succeeded\n");
                Outcome::Succeeded(id)
            }
            Err(Failure::Cancelled) => {
                log.write_str("Job cancelled\n");
                Outcome::Cancelled
            }
            Err(Failure::Failed(message)) => {
                log.write_str(&format!("{message}\n"));
                Outcome::Failed
            }
        };
        self.metrics.job_finished(&outcome);
        state.finish(outcome);
    }

    fn build(&self, descr: &JobDescr, state: &Arc<JobState>) -> Result<String, Failure> {
        let spec_text = match &descr.action {
            Action::OBuilder { spec } => spec,
            Action::DockerBuild => {
                return Err(Failure::Failed(
                    "This worker (strata) only runs OBuilder jobs, not Docker builds".into(),
                ))
            }
            Action::Custom { kind } => {
                return Err(Failure::Failed(format!(
                    "This worker (strata) only runs OBuilder jobs, not custom jobs of kind {kind:?}"
                )))
            }
        };
        if !descr.cache_hint.is_empty() {
            state.log.write_str(&format!("Cache hint: {}\n", descr.cache_hint));
        }
        let file = std::path::Path::new("spec");
        let spec = crate::spec::parse_spec(file, spec_text).map_err(|e| Failure::Failed(e.to_string()))?;
        if let Some(problem) = crate::spec::lint::exclude_problems(file, spec_text).into_iter().next() {
            return Err(Failure::Failed(problem.to_string()));
        }
        let policy = guard::Policy {
            no_host_network: self.options.no_host_network,
        };
        if let Some(finding) = guard::build_findings(&spec, &policy).first() {
            return Err(Failure::Failed(finding.error(file).to_string()));
        }
        let context = git_context::prepare(
            &self.state_dir,
            &self.repo_locks,
            &descr.repository,
            &descr.commits,
            &state.log,
        )
        .map_err(|e| Failure::Failed(e.to_string()))?;
        if state.cancel.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        let mut options = self.options.clone();
        options.context = context.path().to_owned();
        options.secrets = descr
            .secrets
            .iter()
            .map(|(id, value)| (id.clone(), value.as_bytes().to_vec()))
            .collect();
        let _gate = self.prune_gate.read().unwrap_or_else(|p| p.into_inner());
        let reporter = LogReporter::new(state.clone(), self.metrics.clone());
        match self.builder.build(&spec, &options, &reporter, &state.cancel) {
            Ok(id) => Ok(id.to_string()),
            Err(e) if e.kind() == ErrorKind::Cancelled || state.cancel.is_cancelled() => Err(Failure::Cancelled),
            Err(e) => Err(Failure::Failed(e.to_string())),
        }
    }
}
