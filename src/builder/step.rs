//! The ops of one spec, in order: the build context they update and the steps they make.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use strata_sandbox::{BindMount, Network, Outcome, RunConfig, SecretMount};
use strata_stores::StepId;

use super::copy;
use super::error::BuildError;
use super::execute::{StepEnv, Work, WorkOutput};
use super::scope::Scope;
use super::BuildOptions;
use crate::catalog::export_view::{StepContext, STEP_CONTEXT};
use crate::catalog::{Catalog, IMAGE_CONFIG};
use crate::fetch::ImageConfig;
use crate::key::{self, IdScheme};
use crate::spec::{self, CopyFrom, Op, Spec, User};

/// What the ops of a stage need from the build that runs them: its settings, and a way to
/// get a step (cached, joined, or built by `work`). The build run implements it; the walk
/// from spec to stored item goes stage -> ops -> step, each once.
pub(crate) trait Steps: Sync {
    fn options(&self) -> &BuildOptions;
    fn scheme(&self) -> IdScheme;
    fn catalog(&self) -> &Catalog;
    fn is_cancelled(&self) -> bool;
    /// Reports what the stage does next.
    fn heading(&self, stage: &[String], text: &str);
    /// Gets step `id`, child of `parent`, made by `op`: returns `id` once it is in the store.
    fn get_step(
        &self,
        stage: &[String],
        id: StepId,
        parent: Option<StepId>,
        op: String,
        work: Work,
    ) -> Result<StepId, BuildError>;
}

/// The build context: what `workdir`, `user`, `env` and `shell` set for later steps.
#[derive(Debug, Clone)]
struct Context {
    workdir: String,
    user: User,
    env: Vec<(String, String)>,
    shell: Vec<String>,
    parent: StepId,
}

/// `(env K V)`: drop the first existing binding of K, put the new one first.
fn set_env(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    if let Some(i) = env.iter().position(|(k, _)| k == name) {
        env.remove(i);
    }
    env.insert(0, (name.to_owned(), value.to_owned()));
}

/// Fails before anything runs when the spec needs a secret the invocation lacks.
pub fn check_secrets(spec: &Spec, secrets: &HashMap<String, Vec<u8>>) -> Result<(), BuildError> {
    for stage in &spec.stages {
        check_secrets(&stage.spec, secrets)?;
    }
    for item in &spec.ops {
        if let Op::Run(run) = &item.op {
            for s in &run.secrets {
                if !secrets.contains_key(&s.id) {
                    return Err(BuildError::Usage(format!(
                        "couldn't find value for requested secret '{}' (pass --secret {}:FILE)",
                        s.id, s.id
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The `PATH` Docker, podman and OBuilder's users get when the image config sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A step's environment: the build context's (image `Env` in order, `(env ...)` ops on top),
/// plus the default `PATH` when neither set one. The default is added here, at run time, and
/// never hashed: ids stay those of the spec (byte-identical to OBuilder's under its scheme).
/// `HOME` is left to the runtime, which sets it from the user's `/etc/passwd` entry.
fn step_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    env
}

fn unix_user(user: &User) -> Result<(u32, u32), BuildError> {
    match user {
        User::Unix { uid, gid } => Ok((*uid, *gid)),
        User::Name(name) => Err(BuildError::Usage(format!(
            "(user (name {name})) is for Windows and FreeBSD; on Linux use (user (uid N) (gid M))"
        ))),
    }
}

fn quoted_argv(argv: &[String]) -> String {
    argv.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" ")
}

pub(crate) fn build_ops(run: &dyn Steps, spec: &Spec, stage: &[String], scope: &Scope) -> Result<StepId, BuildError> {
    let scheme = run.scheme();
    let base_text = format!("(from {})", spec::sexp::Sexp::atom(spec.from.clone()).to_machine());
    run.heading(stage, &base_text);
    let base = key::base_id(scheme, &spec.from);
    let image = spec.from.clone();
    let work = Box::new(move |env: &StepEnv<'_>| fetch_base(env, &image));
    let base = run.get_step(stage, base, None, base_text, work)?;
    let image_config = read_image_config(run, &base)?;
    let mut ctx = Context {
        workdir: "/".to_owned(),
        user: User::ROOT,
        env: image_config.env,
        shell: scheme.default_shell(),
        parent: base,
    };
    for item in &spec.ops {
        if run.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        let op_text = spec::print::one_line(&spec::print::op_to_sexp(&item.op));
        run.heading(stage, &format!("{}: {op_text}", ctx.workdir));
        match &item.op {
            Op::Comment(_) => {}
            Op::Workdir(path) => ctx.workdir = copy::join_workdir(&ctx.workdir, path),
            Op::Shell(shell) => ctx.shell = shell.clone(),
            Op::User(user) => ctx.user = user.clone(),
            Op::Env(name, value) => set_env(&mut ctx.env, name, value),
            Op::Run(r) => ctx.parent = run_step(run, stage, &ctx, r, op_text)?,
            Op::Copy(c) => ctx.parent = copy_step(run, stage, &ctx, c, scope, op_text)?,
        }
    }
    Ok(ctx.parent)
}

fn read_image_config(run: &dyn Steps, base: &StepId) -> Result<ImageConfig, BuildError> {
    let Some(item) = run.catalog().result(base)? else {
        return Err(BuildError::Store(strata_stores::StoreError::NotFound(base.to_string())));
    };
    let path = item.join(IMAGE_CONFIG);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        // A base image OBuilder fetched (an adopted store): its `env` file says the same.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match crate::catalog::obuilder::image_config(&item) {
            Ok(Some(config)) => return Ok(config),
            Ok(None) => return Err(BuildError::io(format!("reading {}", path.display()), e)),
            Err(reason) => {
                return Err(BuildError::io(
                    format!("reading the image config of {}", item.display()),
                    std::io::Error::other(reason),
                ))
            }
        },
        Err(e) => return Err(BuildError::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| BuildError::io(format!("parsing {}", path.display()), std::io::Error::other(e)))
}

fn fetch_base(env: &StepEnv<'_>, image: &str) -> Result<WorkOutput, BuildError> {
    let rootfs = env.item.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| BuildError::io(format!("creating {}", rootfs.display()), e))?;
    let config = env.shared.fetcher.fetch(image, &rootfs, &*env.log, env.cancel)?;
    let path = env.item.join(IMAGE_CONFIG);
    let json = serde_json::to_vec_pretty(&config).unwrap_or_default();
    std::fs::write(&path, json).map_err(|e| BuildError::io(format!("writing {}", path.display()), e))?;
    Ok(WorkOutput {
        base_digest: config.digest,
    })
}

fn run_step(
    run: &dyn Steps,
    stage: &[String],
    ctx: &Context,
    r: &spec::Run,
    op_text: String,
) -> Result<StepId, BuildError> {
    let (uid, gid) = unix_user(&ctx.user)?;
    if let Some(dir) = super::guard::forbidden_workdir(&ctx.workdir) {
        return Err(BuildError::Usage(format!(
            "workdir {:?} is under {dir}: a step's working directory may not be in /proc, /sys or /dev",
            ctx.workdir
        )));
    }
    let network = match r.network.as_slice() {
        [] => Network::None,
        [one] if one == "host" && run.options().no_host_network => {
            return Err(BuildError::Usage(
                "(network host) is refused: the operator passed --no-host-network".to_owned(),
            ))
        }
        [one] if one == "host" => Network::Host,
        other => {
            return Err(BuildError::Usage(format!(
                "unsupported network {other:?}: only (network host) or none"
            )))
        }
    };
    let mut secrets = Vec::new();
    for s in &r.secrets {
        let value = run
            .options()
            .secrets
            .get(&s.id)
            .cloned()
            .ok_or_else(|| BuildError::Usage(format!("couldn't find value for requested secret '{}'", s.id)))?;
        secrets.push(SecretMount {
            id: s.id.clone(),
            value,
            target: s.target.clone(),
        });
    }
    let id = key::run_id(
        run.scheme(),
        &key::RunKey {
            parent: &ctx.parent,
            workdir: &ctx.workdir,
            user: &ctx.user,
            env: &ctx.env,
            cmd: &r.shell,
            shell: &ctx.shell,
            network: &r.network,
            secrets: &secrets
                .iter()
                .map(|s| key::SecretKey {
                    id: &s.id,
                    target: &s.target,
                    value: &s.value,
                })
                .collect::<Vec<_>>(),
        },
    );
    let mut argv = ctx.shell.clone();
    argv.push(r.shell.clone());
    let mut config = RunConfig::new(argv);
    config.cwd = ctx.workdir.clone();
    config.env = step_env(&ctx.env);
    config.uid = uid;
    config.gid = gid;
    config.network = network;
    config.secrets = secrets;
    config.mounts = run.options().extra_mounts.clone();
    config.limits = run.options().limits;
    config.timeout = run.options().step_timeout;
    if let Some(limit) = run.options().log_limit {
        config.log_limit = limit;
    }
    config.fast_sync = run.options().fast_sync;
    config.seccomp = run.options().seccomp;
    config.no_new_privileges = run.options().no_new_privileges;
    let caches: Vec<(String, String)> = r.cache.iter().map(|c| (c.id.clone(), c.target.clone())).collect();
    let step_name = op_text.clone();
    let context = StepContext {
        env: config.env.clone(),
        workdir: ctx.workdir.clone(),
        uid,
        gid,
    };
    let work = Box::new(move |env: &StepEnv<'_>| {
        record_context(env, &context)?;
        run_in_sandbox(env, config, &caches, &step_name)
    });
    run.get_step(stage, id, Some(ctx.parent.clone()), op_text, work)
}

/// Writes the step's context into its item, for `strata export` (the image config).
fn record_context(env: &StepEnv<'_>, context: &StepContext) -> Result<(), BuildError> {
    context
        .write(&env.item)
        .map_err(|e| BuildError::io(format!("writing {}", env.item.join(STEP_CONTEXT).display()), e))
}

fn run_in_sandbox(
    env: &StepEnv<'_>,
    mut config: RunConfig,
    caches: &[(String, String)],
    step_name: &str,
) -> Result<WorkOutput, BuildError> {
    let rootfs = env.item.join("rootfs");
    // The workdir as the runtime will resolve it, through symlinks earlier steps made.
    if let Err(refusal) = super::workdir::check(&rootfs, &config.cwd) {
        return Err(BuildError::Usage(format!(
            "{step_name}: workdir {:?} {refusal}",
            config.cwd
        )));
    }
    let mut leases = Vec::new();
    for (name, target) in caches {
        let lease = env.shared.catalog.cache(name, config.uid, config.gid)?;
        config.mounts.push(BindMount {
            source: lease.path().to_owned(),
            target: target.clone(),
            readonly: false,
        });
        leases.push(lease);
    }
    let outcome = env.shared.sandbox.run(&config, &rootfs, &*env.log, env.cancel);
    // Caches are released whatever happened (OBuilder: failed steps still update caches),
    // last acquired first.
    let mut release_error = None;
    while let Some(lease) = leases.pop() {
        if let Err(e) = lease.release() {
            release_error.get_or_insert(e);
        }
    }
    let outcome = outcome?;
    if let Some(e) = release_error {
        return Err(e.into());
    }
    let argv = quoted_argv(&config.argv);
    let reason = match outcome {
        Outcome::Exited(0) => return Ok(WorkOutput::default()),
        Outcome::Cancelled => return Err(BuildError::Cancelled),
        Outcome::Exited(code) => format!("{argv} failed with exit status {code}"),
        Outcome::Signaled(signal) => format!("{argv} failed with signal {signal}"),
        Outcome::TimedOut => format!(
            "{argv} timed out after {}s",
            config.timeout.map(|t| t.as_secs_f64()).unwrap_or_default()
        ),
        Outcome::LogLimitExceeded => format!("{argv} was killed: its output passed {} bytes", config.log_limit),
    };
    Err(BuildError::StepFailed {
        step: step_name.to_owned(),
        reason,
        tail: env.log.last_lines(10),
    })
}

/// Where a copy reads from: the context directory, or a stage's result.
enum Source {
    Context(PathBuf),
    Stage(StepId),
}

fn copy_step(
    run: &dyn Steps,
    stage: &[String],
    ctx: &Context,
    c: &spec::Copy,
    scope: &Scope,
    op_text: String,
) -> Result<StepId, BuildError> {
    let (uid, gid) = unix_user(&ctx.user)?;
    let source = match &c.from {
        CopyFrom::Context => Source::Context(run.options().context.clone()),
        CopyFrom::Build(name) => {
            let slot = scope
                .get(name)
                .ok_or_else(|| BuildError::Usage(format!("unknown build {name:?}")))?;
            let id = slot.wait().map_err(|e| BuildError::Shared {
                kind: super::ErrorKind::StepFailed,
                message: e,
            })?;
            Source::Stage(id)
        }
    };
    let failed = |reason: String| BuildError::CopyFailed {
        step: op_text.clone(),
        reason,
    };
    let plan = match &source {
        Source::Context(dir) => copy::plan_copy(dir, c, &ctx.workdir).map_err(|e| failed(e.to_string()))?,
        Source::Stage(id) => {
            let view = run.catalog().rootfs(id)?;
            copy::plan_copy(view.path(), c, &ctx.workdir).map_err(|e| failed(e.to_string()))?
        }
    };
    let id = key::copy_id(run.scheme(), &ctx.parent, &ctx.user, &plan.op);
    let step_name = op_text.clone();
    let plan = Arc::new(plan);
    let context = StepContext {
        env: step_env(&ctx.env),
        workdir: ctx.workdir.clone(),
        uid,
        gid,
    };
    let work = Box::new(move |env: &StepEnv<'_>| {
        record_context(env, &context)?;
        let failed = |reason: String| BuildError::CopyFailed {
            step: step_name.clone(),
            reason,
        };
        let rootfs = env.item.join("rootfs");
        match &source {
            Source::Context(dir) => copy::execute_copy_until(&plan, dir, &rootfs, uid, gid, env.cancel),
            Source::Stage(id) => {
                let view = env.shared.catalog.rootfs(id)?;
                copy::execute_copy_until(&plan, view.path(), &rootfs, uid, gid, env.cancel)
            }
        }
        .map_err(|e| match e {
            copy::CopyError::Cancelled => BuildError::Cancelled,
            e => failed(e.to_string()),
        })?;
        Ok(WorkOutput::default())
    });
    run.get_step(stage, id, Some(ctx.parent.clone()), op_text, work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_without_path_gets_the_default_path() {
        let env = step_env(&[("A".into(), "1".into())]);
        assert_eq!(
            env,
            vec![("A".into(), "1".into()), ("PATH".into(), DEFAULT_PATH.into())]
        );
    }

    #[test]
    fn a_path_from_the_image_or_spec_is_kept_in_order() {
        let given = vec![
            ("PATH".to_owned(), "/opt/bin".to_owned()),
            ("A".to_owned(), "1".to_owned()),
        ];
        assert_eq!(step_env(&given), given);
    }

    #[test]
    fn env_prepends_and_replaces_first() {
        let mut env = vec![("A".into(), "1".into()), ("B".into(), "2".into())];
        set_env(&mut env, "B", "3");
        assert_eq!(env, vec![("B".into(), "3".into()), ("A".into(), "1".into())]);
    }
}
