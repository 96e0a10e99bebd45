//! Leaving nothing behind: the per-step guard that kills and deletes the container and
//! removes its bundle whatever happens, and the start-up sweep of containers and bundles left
//! by a crashed strata (obuilder#53, #97).

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::names;
use crate::runtime_cli::RuntimeCli;
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
fn unescape_mountinfo(field: &str) -> String {
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

/// Removes the containers under the runtime's root and the bundles under `bundle_parent` that
/// strata made (`strata-<owner>-<n>`) for owners that `is_alive` says are gone. Returns the
/// names removed (a container and its bundle share one name, listed once).
pub fn sweep_orphans(
    cli: &RuntimeCli,
    bundle_parent: &Path,
    is_alive: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, SandboxError> {
    let mut removed = Vec::new();
    for name in entries(&cli.root)? {
        let Some(owner) = names::owner_of(&name) else { continue };
        if is_alive(owner) {
            continue;
        }
        // A crashed strata's step may still be running: kill it first so delete cannot refuse.
        let _ = cli.kill(&name);
        if let Err(e) = cli.delete_force(&name) {
            if cli.has_state(&name) {
                return Err(e);
            }
        }
        removed.push(name);
    }
    for name in entries(bundle_parent)? {
        let Some(owner) = names::owner_of(&name) else { continue };
        if is_alive(owner) {
            continue;
        }
        remove_bundle(&bundle_parent.join(&name))?;
        if !removed.contains(&name) {
            removed.push(name);
        }
    }
    Ok(removed)
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
