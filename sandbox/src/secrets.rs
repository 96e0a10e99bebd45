//! Secrets: their values live only on a private tmpfs in the bundle, are bound read-only at
//! their targets, and leave nothing in the rootfs.
//!
//! Invariants: a secret's value is written only to the tmpfs (never to the bundle's disk, the
//! rootfs or config.json). The runtime creates missing mount points (an empty file, empty
//! directories) inside the rootfs; [`Placeholders`] records which of those did not exist before
//! the step and removes them afterwards when they are still empty, so the snapshot keeps no
//! trace of the secret beyond directories the step itself filled.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::config::SecretMount;
use crate::SandboxError;

/// The private tmpfs holding this step's secret files; unmounted by [`SecretDir::release`] or
/// on drop.
#[derive(Debug)]
pub struct SecretDir {
    dir: PathBuf,
    mounted: bool,
    files: Vec<PathBuf>,
}

impl SecretDir {
    /// Mounts a tmpfs at `bundle/secrets` (mode 0700) and writes each secret there as
    /// `secret-<i>`, owned by the step's user and readable only by it. With no secrets nothing
    /// is mounted.
    pub fn create(bundle: &Path, secrets: &[SecretMount], uid: u32, gid: u32) -> Result<SecretDir, SandboxError> {
        let dir = bundle.join("secrets");
        let mut this = SecretDir {
            dir: dir.clone(),
            mounted: false,
            files: Vec::new(),
        };
        if secrets.is_empty() {
            return Ok(this);
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error(format!("creating {}", dir.display()), e))?;
        let total: usize = secrets.iter().map(|s| s.value.len() + 4096).sum();
        let size = total.max(64 * 1024);
        let options = format!("mode=0700,size={size},nr_inodes={}", secrets.len() + 16);
        mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(options.as_str()),
        )
        .map_err(|e| io_error(format!("mounting a tmpfs for secrets at {}", dir.display()), e.into()))?;
        this.mounted = true;
        for (i, secret) in secrets.iter().enumerate() {
            let path = dir.join(format!("secret-{i}"));
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)
                .map_err(|e| io_error(format!("creating {}", path.display()), e))?;
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| io_error(format!("chown {}", path.display()), e))?;
            file.write_all(&secret.value)
                .map_err(|e| io_error(format!("writing secret {:?}", secret.id), e))?;
            this.files.push(path);
        }
        Ok(this)
    }

    /// The files to bind, in the order of the secrets given to [`SecretDir::create`].
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Unmounts the tmpfs (its contents vanish with it).
    pub fn release(&mut self) -> Result<(), SandboxError> {
        if self.mounted {
            // Detach: a runtime still holding the file open must not keep the secret mounted.
            umount2(&self.dir, MntFlags::MNT_DETACH)
                .map_err(|e| io_error(format!("unmounting {}", self.dir.display()), e.into()))?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("{e}");
        }
    }
}

fn io_error(context: String, source: std::io::Error) -> SandboxError {
    SandboxError::Io { context, source }
}

/// Entries the runtime will create in the rootfs for mount targets, deepest last.
#[derive(Debug, Default)]
pub struct Placeholders {
    paths: Vec<PathBuf>,
}

impl Placeholders {
    /// Records, before the step, the host paths inside `rootfs` that are missing for each of
    /// `targets` (the first missing component and everything below it).
    pub fn record<'a>(rootfs: &Path, targets: impl IntoIterator<Item = &'a str>) -> Placeholders {
        let mut paths = Vec::new();
        for target in targets {
            for p in missing_in_root(rootfs, target) {
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
        Placeholders { paths }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Removes the recorded entries that are still empty (an empty file, an empty directory),
    /// deepest first. Entries the step filled are left alone.
    pub fn remove(&mut self) {
        let mut paths = std::mem::take(&mut self.paths);
        // Deepest first, so a directory is empty once its placeholder children are gone.
        paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in paths {
            let Ok(meta) = fs::symlink_metadata(&p) else { continue };
            let result = if meta.is_dir() {
                fs::remove_dir(&p)
            } else if meta.is_file() && meta.len() == 0 {
                fs::remove_file(&p)
            } else {
                Ok(())
            };
            if let Err(e) = result {
                if e.raw_os_error() != Some(libc::ENOTEMPTY) {
                    tracing::warn!("removing mount placeholder {}: {e}", p.display());
                }
            }
        }
    }
}

/// Symlinks followed before giving up (as the kernel's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// Resolves `target` (a container path) inside `root` the way the runtime does (symlinks are
/// followed with `root` as `/`, `..` never climbs above it) and returns the host paths of the
/// components that do not exist, outermost first. Empty when everything exists or the path
/// cannot be resolved (then nothing will be removed, which is the safe side).
pub fn missing_in_root(root: &Path, target: &str) -> Vec<PathBuf> {
    let mut current = PathBuf::new();
    let mut pending: Vec<OsString> = components(Path::new(target));
    pending.reverse(); // a stack: next component last
    let mut links = 0;
    while let Some(comp) = pending.pop() {
        if comp == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&comp);
        let host = root.join(&candidate);
        match fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Vec::new();
                }
                let Ok(dest) = fs::read_link(&host) else {
                    return Vec::new();
                };
                if dest.is_absolute() {
                    current = PathBuf::new();
                }
                let mut dest_parts = components(&dest);
                dest_parts.reverse();
                pending.extend(dest_parts);
            }
            Ok(_) => current = candidate,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut missing = vec![host];
                let mut path = candidate;
                while let Some(rest) = pending.pop() {
                    if rest == ".." {
                        // Cannot tell what the runtime creates past a `..` below a missing
                        // directory; stop at what is certain.
                        break;
                    }
                    path = path.join(rest);
                    missing.push(root.join(&path));
                }
                return missing;
            }
            Err(_) => return Vec::new(),
        }
    }
    Vec::new()
}

/// The normal and `..` components of a path (root and `.` dropped).
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn missing_components_are_listed_outermost_first() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("run")).unwrap();
        assert_eq!(
            missing_in_root(r, "/run/secrets/tok"),
            vec![r.join("run/secrets"), r.join("run/secrets/tok")]
        );
        fs::write(r.join("run/x"), "").unwrap();
        assert!(missing_in_root(r, "/run/x").is_empty());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("real")).unwrap();
        // An absolute link is relative to the rootfs, never the host.
        symlink("/real", r.join("abs")).unwrap();
        symlink("../../../real", r.join("rel")).unwrap();
        assert_eq!(missing_in_root(r, "/abs/s"), vec![r.join("real/s")]);
        assert_eq!(missing_in_root(r, "/rel/s"), vec![r.join("real/s")]);
        symlink("loop", r.join("loop")).unwrap();
        assert!(missing_in_root(r, "/loop/s").is_empty());
    }

    #[test]
    fn placeholders_removed_only_when_empty() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        let mut p = Placeholders::record(r, ["/run/s/a", "/run/s/b", "/etc/c"]);
        assert_eq!(p.paths().len(), 5);
        // What the runtime would create.
        fs::create_dir_all(r.join("run/s")).unwrap();
        fs::write(r.join("run/s/a"), "").unwrap();
        fs::write(r.join("run/s/b"), "").unwrap();
        fs::write(r.join("etc/c"), "").unwrap();
        fs::write(r.join("run/kept"), "step output").unwrap();
        p.remove();
        assert!(!r.join("run/s").exists());
        assert!(!r.join("etc/c").exists());
        assert!(r.join("run/kept").exists(), "the step's own files stay");
        assert!(r.join("run").exists(), "a non-empty directory stays");
    }
}
