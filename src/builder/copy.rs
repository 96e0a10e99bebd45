//! Context copies: `(copy (src …) (dst …))` performed on the host into a step's new rootfs.
//!
//! strata copies by itself (no `tar` inside the image). [`plan_copy`] computes the manifests the
//! step id is made of; [`execute_copy`] writes exactly that tree:
//! - file content is read once and hashed while it is written; a file whose hash no longer
//!   matches the manifest (the context changed during the build) fails the copy, so a step's id
//!   always describes its content; symlink targets and modes are taken from the manifest;
//! - missing parent directories of the destination are created 0755 owned by `uid:gid`; existing
//!   directories (parents, or directories merged into) are never changed; an existing symlink
//!   where a directory goes is followed (inside the rootfs) when it leads to a directory, so
//!   copying `lib` onto a merged-`/usr` image's `/lib -> usr/lib` fills `/usr/lib`;
//! - new files, directories and symlinks get the manifest's permission bits and `uid:gid`;
//!   an existing non-directory in the way is replaced (unlinked first, never written through);
//!   a source symlink is copied as a symlink and its target is never read.
//!
//! Security: the rootfs is untrusted (an earlier step may have made `/usr` a symlink to `/` or
//! to a host path). Every path inside it is resolved with `openat2(RESOLVE_IN_ROOT)` from a
//! descriptor of the rootfs, so symlinks are followed as they would be inside the container and
//! can never lead out of it; entries are then created with `*at()` calls relative to a resolved
//! directory descriptor, with `O_NOFOLLOW`/`O_EXCL` on the final component. Sources are opened
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` below the source directory. All of these calls
//! go through [`strata_sandbox::fsat`], the rootfs-relative primitive the layer unpacker and the
//! sandbox's cleanup use too (it also retries `openat2`'s `EAGAIN`).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use strata_sandbox::fsat;
use strata_sandbox::Cancel;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::key::manifest::{compute_manifest, sha256_hex, CopyOp, Manifest, ManifestError};
use crate::spec::ast;

/// Files are copied through a buffer of this size (each byte read once, hashed, written).
const COPY_CHUNK: usize = 1024 * 1024;

/// The bits a mode from the manifest may set: permissions, set-id and sticky.
const MODE_BITS: u32 = 0o7777;

/// A copy ready to execute: the operation (manifests and destination) its step id hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    pub op: CopyOp,
}

/// What a copy wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    /// Bytes of file content written (= read and hashed).
    pub bytes: u64,
    /// Directories created (destination parents included; merged ones not).
    pub dirs: u64,
    pub symlinks: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The build was interrupted while the copy was writing.
    #[error("cancelled")]
    Cancelled,
    #[error("invalid copy destination {dst:?}")]
    InvalidDestination { dst: String },
    #[error("copy destination {path:?} exists and is not a directory")]
    NotADirectory { path: String },
    #[error("copy destination {path:?} is a directory and cannot be replaced")]
    IsADirectory { path: String },
    #[error(
        "source {path:?} changed during the build (it no longer matches the manifest taken when planning the copy)"
    )]
    SourceChanged { path: String },
    #[error("openat2 is not available (linux >= 5.6 is needed to copy safely into a rootfs)")]
    Openat2Unsupported,
    #[error("{action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: io::Error,
    },
}

fn io_err<'p>(action: &'static str, path: &'p str) -> impl FnOnce(io::Error) -> CopyError + 'p {
    move |error| match error.raw_os_error() {
        Some(libc::ENOSYS) => CopyError::Openat2Unsupported,
        _ => CopyError::Io {
            action,
            path: path.to_owned(),
            source: error,
        },
    }
}

/// The errno a failed call answered, if any.
fn errno(error: &io::Error) -> i32 {
    error.raw_os_error().unwrap_or(0)
}

/// A rootfs or source path (or a name, or a symlink target) for the kernel; a NUL byte in it is
/// `EINVAL`, as the kernel would have it.
fn c_path(path: &str) -> io::Result<CString> {
    CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A path inside the rootfs as the user sees it (`""` is the root).
fn shown(path: &str) -> String {
    format!("/{path}")
}

/// Joins a relative `dst` onto the workdir as OCaml's `Filename.concat` does (no normalisation):
/// ids hash this string, so it must stay exactly as OBuilder builds it.
pub fn join_workdir(workdir: &str, dst: &str) -> String {
    if dst.starts_with('/') {
        dst.to_owned()
    } else if workdir.is_empty() || workdir.ends_with('/') {
        format!("{workdir}{dst}")
    } else {
        format!("{workdir}/{dst}")
    }
}

/// Computes the manifests of a copy's sources below `source_root` (the build context, or the
/// rootfs of a stage for `(from (build NAME))`) and chooses `Copy_items` / `Copy_item`.
pub fn plan_copy(source_root: &Path, copy: &ast::Copy, workdir: &str) -> Result<CopyPlan, CopyError> {
    if copy.src.is_empty() {
        return Err(ManifestError::NoSources.into());
    }
    let dst = join_workdir(workdir, &copy.dst);
    if copy.src.len() > 1 && !dst.ends_with('/') {
        return Err(ManifestError::MultipleSourcesNeedDirectory { dst }.into());
    }
    let items = copy
        .src
        .par_iter()
        .map(|src| compute_manifest(source_root, src, &copy.exclude))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CopyPlan {
        op: CopyOp::new(items, dst)?,
    })
}

/// Writes `plan` into `rootfs` (the new snapshot), reading sources below `source_root`, with
/// every written entry owned by `uid:gid`.
pub fn execute_copy(
    plan: &CopyPlan,
    source_root: &Path,
    rootfs: &Path,
    uid: u32,
    gid: u32,
) -> Result<CopyStats, CopyError> {
    execute_copy_until(plan, source_root, rootfs, uid, gid, &Cancel::new())
}

/// [`execute_copy`] that stops with [`CopyError::Cancelled`] soon after `cancel` fires (it
/// looks between chunks of every file), leaving a partial copy for the caller to discard.
pub fn execute_copy_until(
    plan: &CopyPlan,
    source_root: &Path,
    rootfs: &Path,
    uid: u32,
    gid: u32,
    cancel: &Cancel,
) -> Result<CopyStats, CopyError> {
    let open_dir = |path: &Path| {
        fsat::open_root(path).map_err(|e| CopyError::Io {
            action: "opening",
            path: path.display().to_string(),
            source: e,
        })
    };
    let mut copier = Copier {
        root: open_dir(rootfs)?,
        source: open_dir(source_root)?,
        uid,
        gid,
        files: Vec::new(),
        new_dirs: Vec::new(),
        stats: CopyStats::default(),
        cancel,
    };
    match &plan.op {
        CopyOp::Items { items, dst_dir } => {
            let (dir_path, dir) = copier.ensure_parents(&dst_components(dst_dir))?;
            for item in items {
                match item {
                    // `src .`: the source root's contents merge into the destination directory.
                    Manifest::Dir { path, children, .. } if path.is_empty() => {
                        copier.copy_children(dir.as_fd(), &dir_path, children)?
                    }
                    _ => copier.copy_entry(dir.as_fd(), &dir_path, item.basename(), item)?,
                }
            }
        }
        CopyOp::Item { item, dst } => {
            let components = dst_components(dst);
            let Some((&name, parents)) = components.split_last() else {
                return Err(CopyError::InvalidDestination { dst: dst.clone() });
            };
            if name == ".." {
                return Err(CopyError::InvalidDestination { dst: dst.clone() });
            }
            let (parent_path, parent) = copier.ensure_parents(parents)?;
            copier.copy_entry(parent.as_fd(), &parent_path, name, item)?;
        }
    }
    copier.finish()
}

/// The components of a destination: empty and `.` segments dropped, `..` kept (resolved by the
/// kernel, clamped at the rootfs).
fn dst_components(dst: &str) -> Vec<&str> {
    dst.split('/').filter(|c| !c.is_empty() && *c != ".").collect()
}

fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// A file to copy once the directory skeleton exists.
struct FileJob<'a> {
    /// Path below the source root.
    source: &'a str,
    /// Path of the destination's parent directory inside the rootfs, and the entry name.
    parent: String,
    name: String,
    sha256: &'a str,
    mode: u32,
}

struct Copier<'a> {
    root: OwnedFd,
    source: OwnedFd,
    uid: u32,
    gid: u32,
    files: Vec<FileJob<'a>>,
    /// Directories this copy created, in creation order, with their final mode.
    new_dirs: Vec<(String, u32)>,
    stats: CopyStats,
    cancel: &'a Cancel,
}

impl<'a> Copier<'a> {
    /// Resolves `path` inside the rootfs as the container would, never leaving it (`""` is the
    /// rootfs itself).
    fn open_in_root(&self, path: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
        fsat::open_in_root(self.root.as_fd(), &c_path(path)?, flags)
    }

    /// Opens each destination parent, creating missing ones (0755, `uid:gid`). Existing ones,
    /// symlinks resolved inside the rootfs, are used as they are.
    fn ensure_parents(&mut self, components: &[&str]) -> Result<(String, OwnedFd), CopyError> {
        let mut path = String::new();
        let mut dir = self
            .open_in_root("", libc::O_PATH | libc::O_DIRECTORY)
            .map_err(io_err("opening", "/"))?;
        for component in components {
            let next = child_path(&path, component);
            dir = match self.open_in_root(&next, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(e) if errno(&e) == libc::ENOENT => {
                    let fd = self.make_dir(dir.as_fd(), component, &next, 0o755)?;
                    self.stats.dirs += 1;
                    fd
                }
                Err(e) if errno(&e) == libc::ENOTDIR => return Err(CopyError::NotADirectory { path: shown(&next) }),
                Err(e) => return Err(io_err("opening", &shown(&next))(e)),
            };
            path = next;
        }
        Ok((path, dir))
    }

    /// Creates directory `name` in `parent`, owned by `uid:gid` with `mode`; returns a descriptor
    /// of it.
    fn make_dir(&self, parent: BorrowedFd<'_>, name: &str, path: &str, mode: u32) -> Result<OwnedFd, CopyError> {
        let path = shown(path);
        let name = c_path(name).map_err(io_err("creating directory", &path))?;
        fsat::mkdir_at(parent, &name, 0o700).map_err(|e| match errno(&e) {
            libc::EEXIST => CopyError::NotADirectory { path: path.clone() },
            _ => io_err("creating directory", &path)(e),
        })?;
        // O_RDONLY | O_DIRECTORY | O_NOFOLLOW: the directory just made, never a symlink put there.
        let fd = fsat::open_dir_at(parent, &name).map_err(io_err("opening", &path))?;
        fsat::fchown(fd.as_fd(), self.uid, self.gid).map_err(io_err("changing owner of", &path))?;
        // Explicit chmod: the mode given to mkdir is filtered by the umask.
        fsat::fchmod(fd.as_fd(), mode & MODE_BITS).map_err(io_err("changing mode of", &path))?;
        Ok(fd)
    }

    /// Copies `entry` as `name` inside the directory `parent` (at `parent_path` in the rootfs).
    /// Directories and symlinks are made now; files are queued for the parallel pass.
    fn copy_entry(
        &mut self,
        parent: BorrowedFd<'_>,
        parent_path: &str,
        name: &str,
        entry: &'a Manifest,
    ) -> Result<(), CopyError> {
        let path = child_path(parent_path, name);
        match entry {
            Manifest::File {
                path: source,
                sha256,
                mode,
            } => {
                self.files.push(FileJob {
                    source,
                    parent: parent_path.to_owned(),
                    name: name.to_owned(),
                    sha256,
                    mode: *mode,
                });
            }
            Manifest::Symlink { target, .. } => {
                remove_non_dir(parent, name, &path)?;
                let shown_path = shown(&path);
                let name = c_path(name).map_err(io_err("creating symlink", &shown_path))?;
                c_path(target)
                    .and_then(|target| fsat::symlink_at(&target, parent, &name))
                    .map_err(io_err("creating symlink", &shown_path))?;
                // AT_SYMLINK_NOFOLLOW: the symlink itself is re-owned, never what it points to.
                fsat::chown_at(parent, &name, self.uid, self.gid).map_err(io_err("changing owner of", &shown_path))?;
                self.stats.symlinks += 1;
            }
            Manifest::Dir { mode, children, .. } => {
                // Created 0700 so that it stays writable while filled; its mode is set at the end.
                let dir = match self.make_dir(parent, name, &path, 0o700) {
                    Ok(fd) => {
                        self.new_dirs.push((path.clone(), *mode));
                        self.stats.dirs += 1;
                        fd
                    }
                    // Something is there: merge into it if it is (or leads, inside the rootfs,
                    // to) a directory, without changing it.
                    Err(CopyError::NotADirectory { .. }) => {
                        match self.open_in_root(&path, libc::O_PATH | libc::O_DIRECTORY) {
                            Ok(fd) => fd,
                            Err(e) if matches!(errno(&e), libc::ENOTDIR | libc::ENOENT) => {
                                return Err(CopyError::NotADirectory { path: shown(&path) })
                            }
                            Err(e) => return Err(io_err("opening", &shown(&path))(e)),
                        }
                    }
                    Err(e) => return Err(e),
                };
                self.copy_children(dir.as_fd(), &path, children)?;
            }
        }
        Ok(())
    }

    fn copy_children(
        &mut self,
        dir: BorrowedFd<'_>,
        dir_path: &str,
        children: &'a [Manifest],
    ) -> Result<(), CopyError> {
        for child in children {
            self.copy_entry(dir, dir_path, child.basename(), child)?;
        }
        Ok(())
    }

    /// Copies the queued files in parallel, then gives new directories their final modes
    /// (deepest first, so a read-only directory is filled before it is closed).
    fn finish(mut self) -> Result<CopyStats, CopyError> {
        let files = std::mem::take(&mut self.files);
        let bytes = files
            .par_iter()
            .map(|job| self.copy_file(job))
            .try_reduce(|| 0, |a, b| Ok(a + b))?;
        self.stats.files = files.len() as u64;
        self.stats.bytes = bytes;
        for (path, mode) in self.new_dirs.iter().rev() {
            let fd = self
                .open_in_root(path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .map_err(io_err("opening", &shown(path)))?;
            fsat::fchmod(fd.as_fd(), mode & MODE_BITS).map_err(io_err("changing mode of", &shown(path)))?;
        }
        Ok(self.stats)
    }

    /// Copies one file, hashing the bytes as they are written; returns the byte count.
    fn copy_file(&self, job: &FileJob<'_>) -> Result<u64, CopyError> {
        let changed = || CopyError::SourceChanged {
            path: job.source.to_owned(),
        };
        // Below the source directory, through no symlink at all, the last component included.
        let source = c_path(job.source).and_then(|source| {
            fsat::open_beneath_no_symlinks(
                self.source.as_fd(),
                &source,
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOCTTY,
            )
        });
        let source = match source {
            Ok(fd) => fd,
            Err(e) if matches!(errno(&e), libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::EXDEV) => {
                return Err(changed())
            }
            Err(e) => return Err(io_err("opening source", job.source)(e)),
        };
        let stat = fsat::fstat(source.as_fd()).map_err(io_err("reading source", job.source))?;
        if !fsat::is_regular(&stat) {
            return Err(changed());
        }
        let path = shown(&child_path(&job.parent, &job.name));
        let parent = self
            .open_in_root(&job.parent, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(io_err("opening", &path))?;
        remove_non_dir(parent.as_fd(), &job.name, &path)?;
        // O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600 until the final chmod.
        let target = c_path(&job.name)
            .and_then(|name| fsat::create_file_at(parent.as_fd(), &name))
            .map_err(io_err("creating", &path))?;
        let (mut source, mut target) = (File::from(source), target);
        let read_error = |e| CopyError::Io {
            action: "reading source",
            path: job.source.to_owned(),
            source: e,
        };
        // Double buffering: while one chunk is hashed and written, the next one is read, and
        // hashing runs beside the write (rayon::join), so a large file costs about the slowest
        // of the three rather than their sum. Every byte is still read exactly once.
        let mut hasher = Sha256::new();
        let (mut current, mut next) = (vec![0u8; COPY_CHUNK], vec![0u8; COPY_CHUNK]);
        let mut len = read_full(&mut source, &mut current).map_err(read_error)?;
        let mut total = 0u64;
        while len > 0 {
            if self.cancel.is_cancelled() {
                return Err(CopyError::Cancelled);
            }
            let chunk = &current[..len];
            let (_, (written, read)) = rayon::join(
                || hasher.update(chunk),
                || (target.write_all(chunk), read_full(&mut source, &mut next)),
            );
            written.map_err(|e| CopyError::Io {
                action: "writing",
                path: path.clone(),
                source: e,
            })?;
            total += len as u64;
            len = read.map_err(read_error)?;
            std::mem::swap(&mut current, &mut next);
        }
        if sha256_hex(hasher) != job.sha256 {
            return Err(changed());
        }
        // chown before chmod: chown clears set-id bits.
        fsat::fchown(target.as_fd(), self.uid, self.gid).map_err(io_err("changing owner of", &path))?;
        fsat::fchmod(target.as_fd(), job.mode & MODE_BITS).map_err(io_err("changing mode of", &path))?;
        Ok(total)
    }
}

/// Reads until `buf` is full or the file ends; returns the byte count (0 at the end).
fn read_full(source: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Unlinks whatever non-directory is at `name` (never following it); a directory there is an
/// error, a missing entry is fine.
fn remove_non_dir(parent: BorrowedFd<'_>, name: &str, path: &str) -> Result<(), CopyError> {
    match c_path(name).and_then(|name| fsat::unlink_at(parent, &name)) {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == libc::ENOENT => Ok(()),
        Err(e) if errno(&e) == libc::EISDIR => Err(CopyError::IsADirectory { path: shown(path) }),
        Err(e) => Err(io_err("removing", &shown(path))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_join_is_filename_concat() {
        assert_eq!(join_workdir("/", "src/./"), "/src/./");
        assert_eq!(join_workdir("/src", "a"), "/src/a");
        assert_eq!(join_workdir("/src/", "a"), "/src/a");
        assert_eq!(join_workdir("/src", "/abs"), "/abs");
        assert_eq!(join_workdir("/src", ""), "/src/");
    }

    #[test]
    fn destination_components() {
        assert_eq!(dst_components("/a//./b/"), ["a", "b"]);
        assert_eq!(dst_components("/../x"), ["..", "x"]);
        assert!(dst_components("/").is_empty());
    }
}
