//! A job's build context, as OCluster's worker makes it: no commits → an empty directory;
//! otherwise the repository is fetched into a cache under the state directory (one per URL,
//! reused across jobs), the first commit checked out, each further commit merged, and the
//! top-level entries (all but `.git`) moved into a fresh temporary directory. git's stdout
//! goes to the job log; a failing command ends it with `<label> failed with exit-code N`.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::job_log::JobLog;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("Unsupported repository URL {0:?} (only git, http and https)")]
    Scheme(String),
    #[error("Invalid commit hash {0:?} (expected 40 hex digits)")]
    Commit(String),
    #[error("{label} failed with exit-code {code}")]
    Git { label: String, code: i32 },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContextError {
    let what = what.into();
    move |e| ContextError::Io(what, e)
}

/// Per-URL locks: one fetch or checkout of a repository cache at a time.
#[derive(Default)]
pub struct RepoLocks {
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl RepoLocks {
    fn get(&self, url: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(url.to_owned()).or_default().clone()
    }
}

/// A build context directory, removed when dropped.
pub struct Context {
    dir: tempfile::TempDir,
}

impl Context {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn check_inputs(repository: &str, commits: &[String]) -> Result<(), ContextError> {
    let scheme = repository.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("git" | "http" | "https")) {
        return Err(ContextError::Scheme(repository.to_owned()));
    }
    for c in commits {
        if c.len() != 40 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ContextError::Commit(c.clone()));
        }
    }
    Ok(())
}

/// `<basename of the URL path>-<hash of the URL>`.
fn cache_name(repository: &str) -> String {
    let path = repository.split_once("://").map_or(repository, |(_, rest)| rest);
    let base = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("repo")
        .trim_end_matches(".git");
    let base: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = Sha256::digest(repository.as_bytes());
    let hex: String = digest[..20].iter().map(|b| format!("{b:02x}")).collect();
    format!("{base}-{hex}")
}

/// Runs git in `dir`, its stdout into the log.
fn git(log: &JobLog, dir: &Path, label: &str, args: &[&str]) -> Result<(), ContextError> {
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "ocluster")
        .env("GIT_COMMITTER_NAME", "ocluster")
        .env("EMAIL", "ocluster@ocurrent.org")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(io(format!("running git {label}")))?;
    if let Some(mut out) = child.stdout.take() {
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => log.write(&buf[..n]),
            }
        }
    }
    let status = child.wait().map_err(io(format!("waiting for git {label}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(ContextError::Git {
            label: label.to_owned(),
            code: status.code().unwrap_or(-1),
        })
    }
}

fn has_commit(dir: &Path, commit: &str) -> bool {
    Command::new("git")
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Puts the working tree of an existing cache back to a clean state.
fn tidy(log: &JobLog, dir: &Path) -> Result<(), ContextError> {
    git(log, dir, "git-submodule-update", &["submodule", "update"])?;
    git(log, dir, "git-reset", &["reset", "--hard", "-q"])?;
    git(log, dir, "git-submodule-sync", &["submodule", "sync"])?;
    git(
        log,
        dir,
        "git-submodule-deinit",
        &["submodule", "deinit", "--all", "-f"],
    )
}

fn fetch(log: &JobLog, dir: &Path, repository: &str, fresh: bool) -> Result<(), ContextError> {
    if fresh {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        git(log, dir, "git-init", &["init", "-q"])?;
        git(log, dir, "git-remote-add", &["remote", "add", "origin", repository])?;
        let extra = if repository.contains("github.com") {
            "+refs/pull/*:refs/remotes/pull/*"
        } else {
            "+refs/merge-requests/*/head:refs/remotes/origin/merge-requests/*"
        };
        git(
            log,
            dir,
            "git-config",
            &["config", "--add", "remote.origin.fetch", extra],
        )?;
    } else {
        tidy(log, dir)?;
    }
    git(
        log,
        dir,
        "git-fetch",
        &["fetch", "-q", "--update-head-ok", "--recurse-submodules=no", "origin"],
    )
}

fn checkout(log: &JobLog, dir: &Path, commits: &[String]) -> Result<(), ContextError> {
    let (first, rest) = commits
        .split_first()
        .ok_or_else(|| ContextError::Commit(String::new()))?;
    git(log, dir, "git-submodule-update", &["submodule", "update"])?;
    git(log, dir, "git-reset", &["reset", "--hard", "-q", first])?;
    git(log, dir, "git-submodule-sync", &["submodule", "sync"])?;
    git(
        log,
        dir,
        "git-submodule-deinit",
        &["submodule", "deinit", "--all", "-f"],
    )?;
    git(log, dir, "git-clean", &["clean", "-fdx"])?;
    for commit in rest {
        git(log, dir, "git-merge", &["merge", "-q", "--no-edit", commit])?;
    }
    git(
        log,
        dir,
        "git-submodule-update",
        &["submodule", "update", "--init", "--recursive"],
    )
}

/// Makes the context for a job under `state_dir` (`git/` holds the caches, `tmp/` the
/// contexts).
pub fn prepare(
    state_dir: &Path,
    locks: &RepoLocks,
    repository: &str,
    commits: &[String],
    log: &JobLog,
) -> Result<Context, ContextError> {
    let tmp = state_dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let dir = tempfile::Builder::new()
        .prefix("build-context-")
        .tempdir_in(&tmp)
        .map_err(io(format!("creating a directory in {}", tmp.display())))?;
    let context = Context { dir };
    if commits.is_empty() {
        return Ok(context);
    }
    check_inputs(repository, commits)?;
    let cache: PathBuf = state_dir.join("git").join(cache_name(repository));
    let lock = locks.get(repository);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    if cache.join(".git/index.lock").exists() {
        log.write_str(&format!(
            "Removing corrupted repository {:?}\n",
            cache.display().to_string()
        ));
        std::fs::remove_dir_all(&cache).map_err(io(format!("removing {}", cache.display())))?;
    }
    let fresh = !cache.join(".git").exists();
    if !fresh && commits.iter().all(|c| has_commit(&cache, c)) {
        log.write_str("All commits already cached\n");
    } else {
        fetch(log, &cache, repository, fresh)?;
    }
    checkout(log, &cache, commits)?;
    for entry in std::fs::read_dir(&cache).map_err(io(format!("reading {}", cache.display())))? {
        let entry = entry.map_err(io(format!("reading {}", cache.display())))?;
        if entry.file_name() == ".git" {
            continue;
        }
        let to = context.path().join(entry.file_name());
        std::fs::rename(entry.path(), &to).map_err(io(format!("moving {}", entry.path().display())))?;
    }
    Ok(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs() {
        let c = "0123456789abcdef0123456789abcdef01234567".to_owned();
        assert!(check_inputs("https://github.com/a/b.git", std::slice::from_ref(&c)).is_ok());
        assert!(check_inputs("git://127.0.0.1/r", std::slice::from_ref(&c)).is_ok());
        assert!(matches!(
            check_inputs("file:///etc", std::slice::from_ref(&c)),
            Err(ContextError::Scheme(_))
        ));
        assert!(matches!(check_inputs("/etc", &[c]), Err(ContextError::Scheme(_))));
        assert!(matches!(
            check_inputs("https://x/y", &["HEAD".into()]),
            Err(ContextError::Commit(_))
        ));
    }

    #[test]
    fn cache_names() {
        let name = cache_name("https://github.com/ocurrent/obuilder.git");
        assert!(name.starts_with("obuilder-"), "{name}");
        assert_ne!(name, cache_name("https://gitlab.com/ocurrent/obuilder.git"));
        assert!(!cache_name("git://h/../../x").contains('/'));
    }

    #[test]
    fn no_commits_is_an_empty_directory() {
        let state = tempfile::tempdir().unwrap();
        let log = JobLog::default();
        let ctx = prepare(state.path(), &RepoLocks::default(), "", &[], &log).unwrap();
        assert_eq!(std::fs::read_dir(ctx.path()).unwrap().count(), 0);
        let path = ctx.path().to_owned();
        drop(ctx);
        assert!(!path.exists());
    }
}
