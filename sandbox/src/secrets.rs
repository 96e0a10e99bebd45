//! Secrets: their values live only on a private tmpfs in the bundle, are bound read-only at
//! their targets, and leave nothing in the rootfs.
//!
//! Invariants: a secret's value is written only to the tmpfs (never to the bundle's disk, the
//! rootfs or config.json). The runtime creates missing mount points (an empty file, empty
//! directories) inside the rootfs; [`Placeholders`] records which of those did not exist before
//! the step and removes them afterwards when they are still empty, so the snapshot keeps no
//! trace of the secret beyond directories the step itself filled.
//!
//! Security: after the step the rootfs is the step's work, and the step may have replaced any
//! component of a placeholder's path with a symlink (to `/etc` of the host, say). The removal
//! therefore never uses a host path: each placeholder's parent is opened from a descriptor of
//! the rootfs with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (a symlink anywhere on the
//! way makes it skip the entry), and the entry itself is inspected with `fstatat(NOFOLLOW)` and
//! removed with `unlinkat` relative to that parent (see [`crate::fsat`]).

use std::ffi::{CString, OsString};
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::config::SecretMount;
use crate::fsat;
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
    rootfs: PathBuf,
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
        Placeholders {
            rootfs: rootfs.to_path_buf(),
            paths,
        }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Removes the recorded entries that are still empty (an empty file, an empty directory),
    /// deepest first. Entries the step filled are left alone, and so is every entry whose path
    /// the step redirected through a symlink: nothing outside the rootfs is ever touched.
    pub fn remove(&mut self) {
        let mut paths = std::mem::take(&mut self.paths);
        if paths.is_empty() {
            return;
        }
        let root = match fsat::open_root(&self.rootfs) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("opening {} to remove mount placeholders: {e}", self.rootfs.display());
                return;
            }
        };
        // Deepest first, so a directory is empty once its placeholder children are gone.
        paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in paths {
            let Ok(rel) = p.strip_prefix(&self.rootfs) else {
                continue;
            };
            if let Err(e) = remove_placeholder(root.as_fd(), rel) {
                if !matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::ENOENT)) {
                    tracing::warn!("removing mount placeholder {}: {e}", p.display());
                }
            }
        }
    }
}

/// Removes `rel` (a path below the rootfs `root`) if it is an empty directory or an empty
/// regular file, resolving every component from `root` without following any symlink.
fn remove_placeholder(root: std::os::fd::BorrowedFd<'_>, rel: &Path) -> std::io::Result<()> {
    let invalid = || std::io::Error::from_raw_os_error(libc::EINVAL);
    let name = rel.file_name().ok_or_else(invalid)?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    let parent = CString::new(parent.as_os_str().as_bytes()).map_err(|_| invalid())?;
    let name = CString::new(name.as_bytes()).map_err(|_| invalid())?;
    let dir = match fsat::open_beneath_no_symlinks(root, &parent, libc::O_PATH | libc::O_DIRECTORY) {
        Ok(dir) => dir,
        // A symlink on the way (ELOOP), a file where a directory was (ENOTDIR), gone (ENOENT):
        // the step changed the path, and nothing of it is ours to remove any more.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::ENOENT) | Some(libc::EXDEV)
            ) =>
        {
            tracing::debug!("mount placeholder {} skipped: {e}", rel.display());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let Some(st) = fsat::lstat_at(dir.as_fd(), &name)? else {
        return Ok(());
    };
    if fsat::is_dir(&st) {
        fsat::rmdir_at(dir.as_fd(), &name)
    } else if fsat::is_regular(&st) && st.st_size == 0 {
        fsat::unlink_at(dir.as_fd(), &name)
    } else {
        Ok(())
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

    #[test]
    fn placeholders_never_followed_through_a_symlink_the_step_made() {
        let root = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let r = root.path();
        let h = host.path();
        let mut p = Placeholders::record(r, ["/run/s/d/tok"]);
        // The step replaced the placeholder's parent with a link to a host directory holding
        // an empty directory and an empty file of the same names.
        fs::create_dir_all(r.join("run")).unwrap();
        fs::create_dir_all(h.join("d")).unwrap();
        fs::write(h.join("d/tok"), "").unwrap();
        symlink(h, r.join("run/s")).unwrap();
        p.remove();
        assert!(h.join("d/tok").exists(), "a host file was deleted");
        assert!(h.join("d").exists(), "a host directory was deleted");
        assert!(fs::symlink_metadata(r.join("run/s")).unwrap().file_type().is_symlink());
    }
}
