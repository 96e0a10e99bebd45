//! Leaving nothing behind: the per-step guard that kills and deletes the container and
//! removes its bundle whatever happens, and the start-up sweep of containers and bundles left
//! by a crashed strata (obuilder#53, #97).

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::host::hybrid_with_v2_controllers;
use crate::names;
use crate::runtime_cli::{flavour_of, resolve_program, Flavour, RuntimeCli};
use crate::secrets::{Placeholders, SecretDir};
use crate::SandboxError;

/// Owns one step's container, bundle, secret tmpfs and mount placeholders. [`StepGuard::finish`]
/// tears them down and reports failures; dropping the guard (an early error, a panic
/// unwinding) does the same, logging failures instead.
pub struct StepGuard<'a> {
    cli: &'a RuntimeCli,
    pub id: String,
    pub bundle: PathBuf,
    pub secrets: Option<SecretDir>,
    pub placeholders: Placeholders,
    done: bool,
}

impl<'a> StepGuard<'a> {
    pub fn new(cli: &'a RuntimeCli, id: String, bundle: PathBuf) -> StepGuard<'a> {
        StepGuard {
            cli,
            id,
            bundle,
            secrets: None,
            placeholders: Placeholders::default(),
            done: false,
        }
    }

    /// Tears everything down. Order matters: the container goes first (its mount namespace
    /// holds the secret binds), then the tmpfs, then the placeholders in the rootfs, then the
    /// bundle. Every step is attempted; the first failure is returned.
    pub fn finish(mut self) -> Result<(), SandboxError> {
        self.done = true;
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), SandboxError> {
        let mut first_error = None;
        // A detached container stays (stopped) until deleted; `delete --force` also kills one
        // that still runs (an early error, a panic).
        if self.cli.has_state(&self.id) {
            if let Err(e) = self.cli.delete_force(&self.id) {
                if self.cli.has_state(&self.id) {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(mut secrets) = self.secrets.take() {
            if let Err(e) = secrets.release() {
                first_error.get_or_insert(e);
            }
        }
        self.placeholders.remove();
        if let Err(e) = remove_bundle(&self.bundle) {
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            if let Err(e) = self.teardown() {
                tracing::warn!("cleaning up container {}: {e}", self.id);
            }
        }
    }
}

/// Unmounts whatever is mounted inside `bundle` (a secret tmpfs left by a crash), then removes it.
pub fn remove_bundle(bundle: &Path) -> Result<(), SandboxError> {
    for mount_point in mounts_under(bundle) {
        if let Err(e) = umount2(&mount_point, MntFlags::MNT_DETACH) {
            return Err(SandboxError::Io {
                context: format!("unmounting {}", mount_point.display()),
                source: e.into(),
            });
        }
    }
    match fs::remove_dir_all(bundle) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SandboxError::Io {
            context: format!("removing bundle {}", bundle.display()),
            source: e,
        }),
    }
}

/// Mount points at or below `dir` in this process's mount namespace, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(value) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a strata process that died (a crash, `kill -9`) left of its steps in a store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Orphan {
    /// A container the runtime still has state for (`runtime`: its state directory's name).
    Container { runtime: String, name: String },
    /// A container's cgroup, with the processes still in it (a step that outlived strata).
    Cgroup {
        name: String,
        path: PathBuf,
        processes: usize,
    },
    /// A step's bundle directory.
    Bundle { name: String },
}

impl Orphan {
    /// The container name (also its bundle's name and its cgroup's).
    pub fn name(&self) -> &str {
        match self {
            Orphan::Container { name, .. } | Orphan::Cgroup { name, .. } | Orphan::Bundle { name } => name,
        }
    }
}

impl std::fmt::Display for Orphan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Orphan::Container { runtime, name } => write!(f, "container {name} left in {runtime}'s state"),
            Orphan::Cgroup { path, processes, .. } => {
                write!(f, "cgroup {} left with {processes} process(es)", path.display())
            }
            Orphan::Bundle { name } => write!(f, "bundle {name} left"),
        }
    }
}

/// Where a store keeps its sandbox's things: `state` (`<store>/state/sandbox`: one runtime
/// root per runtime, and the store id) and `bundles` (`<store>/state/bundles`).
#[derive(Debug, Clone)]
pub struct SandboxDirs {
    pub state: PathBuf,
    pub bundles: PathBuf,
}

impl SandboxDirs {
    /// The runtimes that keep state here, each with its `--root`.
    fn runtimes(&self) -> Result<Vec<RuntimeCli>, SandboxError> {
        let mut found = Vec::new();
        for name in entries(&self.state)? {
            let root = self.state.join(&name);
            if !root.is_dir() {
                continue;
            }
            let program = resolve_program(&name);
            let flavour = program.as_deref().map(flavour_of).unwrap_or(Flavour::Runc);
            found.push(RuntimeCli {
                requested: name,
                program,
                flavour,
                root,
                hide_unified_cgroup: flavour == Flavour::Crun && hybrid_with_v2_controllers(),
            });
        }
        Ok(found)
    }

    /// The store's id, if a step ever ran in it (see [`crate::runtime::store_id`]).
    fn store_id(&self) -> Option<String> {
        let text = fs::read_to_string(self.state.join(crate::runtime::STORE_ID_FILE)).ok()?;
        let id = text.trim();
        (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
    }

    /// Everything that strata processes that `is_alive` says are gone left in this store:
    /// containers in any runtime's state, container cgroups (found by path, so also those
    /// whose runtime state is lost) and bundles. Removes nothing.
    pub fn find_orphans(&self, is_alive: &dyn Fn(&str) -> bool) -> Result<Vec<Orphan>, SandboxError> {
        let dead = |name: &str| names::owner_of(name).is_some_and(|owner| !is_alive(owner));
        let mut found = Vec::new();
        for cli in self.runtimes()? {
            for name in entries(&cli.root)? {
                if dead(&name) {
                    found.push(Orphan::Container {
                        runtime: cli.requested.clone(),
                        name,
                    });
                }
            }
        }
        if let Some(store_id) = self.store_id() {
            for (name, path) in crate::cgroups::containers(&store_id) {
                if dead(&name) {
                    let processes = crate::cgroups::processes(&path).len();
                    found.push(Orphan::Cgroup { name, path, processes });
                }
            }
        }
        for name in entries(&self.bundles)? {
            if dead(&name) {
                found.push(Orphan::Bundle { name });
            }
        }
        Ok(found)
    }

    /// Removes what [`SandboxDirs::find_orphans`] finds: containers first (killed, then
    /// deleted by the runtime), then the processes and cgroups left without runtime state,
    /// then the bundles. Returns what was removed.
    pub fn remove_orphans(&self, is_alive: &dyn Fn(&str) -> bool) -> Result<Vec<Orphan>, SandboxError> {
        let orphans = self.find_orphans(is_alive)?;
        let runtimes = self.runtimes()?;
        for orphan in &orphans {
            match orphan {
                Orphan::Container { runtime, name } => {
                    let Some(cli) = runtimes.iter().find(|c| &c.requested == runtime) else {
                        continue;
                    };
                    if cli.program.is_none() {
                        // The runtime is gone from the host: its processes die with their
                        // cgroup below; its state is only files.
                        remove_dir(&cli.root.join(name))?;
                        continue;
                    }
                    // A crashed strata's step may still be running: kill it so delete cannot refuse.
                    let _ = cli.kill(name);
                    if let Err(e) = cli.delete_force(name) {
                        if cli.has_state(name) {
                            return Err(e);
                        }
                    }
                }
                Orphan::Cgroup { path, .. } => {
                    crate::cgroups::remove(path).map_err(|e| SandboxError::Io {
                        context: format!("removing cgroup {}", path.display()),
                        source: e,
                    })?;
                }
                Orphan::Bundle { name } => remove_bundle(&self.bundles.join(name))?,
            }
        }
        Ok(orphans)
    }
}

fn remove_dir(dir: &Path) -> Result<(), SandboxError> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SandboxError::Io {
            context: format!("removing {}", dir.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Names in `dir` (none when it does not exist).
fn entries(dir: &Path) -> Result<Vec<String>, SandboxError> {
    let iter = match fs::read_dir(dir) {
        Ok(iter) => iter,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(SandboxError::Io {
                context: format!("listing {}", dir.display()),
                source: e,
            })
        }
    };
    let mut names = Vec::new();
    for entry in iter {
        let entry = entry.map_err(|e| SandboxError::Io {
            context: format!("listing {}", dir.display()),
            source: e,
        })?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
        assert_eq!(unescape_mountinfo("/x\\04"), "/x\\04");
    }
}
