//! Native tree copy for the copy stores (and anyone else who needs a faithful duplicate).
//!
//! Keeps, within the tree: hard links (two names of one source inode stay two names of one
//! destination inode), symlinks (copied as links, never followed), file types (fifos,
//! devices, sockets via mknod), permission bits including setuid/setgid/sticky, ownership,
//! extended attributes where the filesystem has them, holes in sparse files (SEEK_DATA /
//! SEEK_HOLE) and access/modification times. Regular files are cloned with FICLONE when
//! asked and the filesystem agrees; otherwise their data is copied.
//!
//! Order per entry, because each step can undo an earlier one: content, then `lchown`
//! (which clears setuid bits and file capabilities), then xattrs (so `security.capability`
//! survives), then the mode, then the times (which every other step would bump).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::StoreError;

/// How to duplicate regular files' data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataCopy {
    /// Read and write the bytes (holes are kept).
    Plain,
    /// Share extents with FICLONE; where the filesystem refuses, copy the bytes instead.
    ReflinkOrPlain,
}

/// What a copy did, for callers that report it (e.g. a one-time warning on reflink refusal).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyReport {
    pub files: u64,
    /// Bytes of regular-file data, counting each inode once.
    pub bytes: u64,
    /// Files that were cloned with FICLONE.
    pub reflinked: u64,
    /// True when the filesystem refused a reflink (so data was copied instead).
    pub reflink_refused: bool,
}

/// Copies the tree at `src` to `dst`, which must not exist yet (its parent must).
pub fn copy_tree(src: &Path, dst: &Path, data: DataCopy) -> Result<CopyReport, StoreError> {
    let mut copier = Copier {
        data,
        report: CopyReport::default(),
        links: HashMap::new(),
    };
    let meta = fs::symlink_metadata(src).context(|| format!("reading {}", src.display()))?;
    if !meta.is_dir() {
        return Err(StoreError::io(
            format!("copying {}", src.display()),
            io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
        ));
    }
    copier.copy_entry(src, dst, &meta)?;
    Ok(copier.report)
}

/// Removes a tree without following symlinks; a missing tree is not an error.
pub fn remove_tree(path: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("removing {}", path.display()), e)),
        Ok(m) if m.is_dir() => match fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.context(|| format!("removing {}", path.display())),
        },
        Ok(_) => fs::remove_file(path).context(|| format!("removing {}", path.display())),
    }
}

struct Copier {
    data: DataCopy,
    report: CopyReport,
    /// Source (device, inode) of multiply-linked files -> the first destination path made.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Copier {
    fn copy_entry(&mut self, src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<(), StoreError> {
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(dst).context(|| format!("creating {}", dst.display()))?;
            let entries = fs::read_dir(src).context(|| format!("listing {}", src.display()))?;
            for entry in entries {
                let entry = entry.context(|| format!("listing {}", src.display()))?;
                let child_meta = entry
                    .metadata()
                    .context(|| format!("reading {}", entry.path().display()))?;
                self.copy_entry(&entry.path(), &dst.join(entry.file_name()), &child_meta)?;
            }
        } else if kind.is_symlink() {
            let target = fs::read_link(src).context(|| format!("reading link {}", src.display()))?;
            std::os::unix::fs::symlink(&target, dst).context(|| format!("creating link {}", dst.display()))?;
        } else {
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                    // Metadata lives in the shared inode: nothing more to set.
                    return fs::hard_link(first, dst).context(|| format!("linking {}", dst.display()));
                }
                self.links.insert((meta.dev(), meta.ino()), dst.to_owned());
            }
            if kind.is_file() {
                self.copy_file(src, dst, meta)?;
            } else {
                make_node(dst, meta)?;
            }
        }
        set_metadata(src, dst, meta)
    }

    fn copy_file(&mut self, src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<(), StoreError> {
        let input = File::open(src).context(|| format!("opening {}", src.display()))?;
        let output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dst)
            .context(|| format!("creating {}", dst.display()))?;
        self.report.files += 1;
        self.report.bytes += meta.len();
        if self.data == DataCopy::ReflinkOrPlain && !self.report.reflink_refused {
            match reflink(&input, &output) {
                Ok(()) => {
                    self.report.reflinked += 1;
                    return Ok(());
                }
                Err(e) if reflink_unsupported(&e) => self.report.reflink_refused = true,
                Err(e) => {
                    return Err(StoreError::io(
                        format!("cloning {} to {}", src.display(), dst.display()),
                        e,
                    ))
                }
            }
        }
        copy_sparse(&input, &output, meta.len()).context(|| format!("copying {} to {}", src.display(), dst.display()))
    }
}

// FICLONE = _IOW(0x94, 9, int)
nix::ioctl_write_int!(ficlone_ioctl, 0x94, 9);

fn reflink(input: &File, output: &File) -> io::Result<()> {
    // SAFETY: both descriptors are open for the duration of the call.
    unsafe { ficlone_ioctl(output.as_raw_fd(), input.as_raw_fd() as libc::c_ulong) }
        .map(|_| ())
        .map_err(io::Error::from)
}

/// Errors by which a filesystem (or a pair of them) says it cannot share extents.
fn reflink_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EXDEV) | Some(libc::EINVAL) | Some(libc::ENOSYS)
    )
}

/// Copies the data regions of `input` and leaves its holes as holes.
fn copy_sparse(input: &File, output: &File, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset: u64 = 0;
    while offset < len {
        let data = match seek(input, offset, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // only a hole remains
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => offset, // no SEEK_DATA: copy all
            Err(e) => return Err(e),
        };
        let hole = seek(input, data, libc::SEEK_HOLE).unwrap_or(len).min(len);
        let mut pos = data;
        while pos < hole {
            let want = ((hole - pos) as usize).min(buf.len());
            let n = input.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                break; // the file shrank under us; the final set_len fixes the length
            }
            output.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
        }
        offset = hole.max(pos);
    }
    output.set_len(len)
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: lseek on an owned descriptor; it only moves the file offset.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as u64)
    }
}

fn c_path(path: &Path) -> Result<CString, StoreError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        StoreError::io(
            format!("using {}", path.display()),
            io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
        )
    })
}

fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> Result<(), StoreError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(StoreError::io(what(), io::Error::last_os_error()))
    }
}

fn make_node(dst: &Path, meta: &fs::Metadata) -> Result<(), StoreError> {
    let path = c_path(dst)?;
    // SAFETY: mknod with a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(path.as_ptr(), meta.mode() as libc::mode_t, meta.rdev() as libc::dev_t) };
    check(rc, || format!("creating node {}", dst.display()))
}

fn set_metadata(src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<(), StoreError> {
    let path = c_path(dst)?;
    let is_link = meta.file_type().is_symlink();
    // SAFETY: lchown with a valid path; never follows a symlink.
    let rc = unsafe { libc::lchown(path.as_ptr(), meta.uid(), meta.gid()) };
    check(rc, || format!("changing owner of {}", dst.display()))?;
    copy_xattrs(src, dst)?;
    if !is_link {
        // SAFETY: chmod with a valid path that is not a symlink.
        let rc = unsafe { libc::chmod(path.as_ptr(), (meta.mode() & 0o7777) as libc::mode_t) };
        check(rc, || format!("changing mode of {}", dst.display()))?;
    }
    let times = [
        libc::timespec {
            tv_sec: meta.atime() as libc::time_t,
            tv_nsec: meta.atime_nsec() as _,
        },
        libc::timespec {
            tv_sec: meta.mtime() as libc::time_t,
            tv_nsec: meta.mtime_nsec() as _,
        },
    ];
    // SAFETY: utimensat with a valid path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    check(rc, || format!("setting times of {}", dst.display()))
}

fn copy_xattrs(src: &Path, dst: &Path) -> Result<(), StoreError> {
    let src_c = c_path(src)?;
    let dst_c = c_path(dst)?;
    let names = match list_xattrs(&src_c) {
        Ok(n) => n,
        Err(e) if xattrs_unsupported(&e) => return Ok(()),
        Err(e) => return Err(StoreError::io(format!("listing xattrs of {}", src.display()), e)),
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name_c) = CString::new(name) else { continue };
        let value = match get_xattr(&src_c, &name_c) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => {
                let shown = OsStr::from_bytes(name).to_string_lossy();
                return Err(StoreError::io(format!("reading xattr {shown} of {}", src.display()), e));
            }
        };
        // SAFETY: valid path, name and buffer of the given length.
        let rc = unsafe { libc::lsetxattr(dst_c.as_ptr(), name_c.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // A destination that cannot hold this attribute (e.g. a namespace the
            // filesystem lacks) loses it rather than failing the whole copy.
            if !xattrs_unsupported(&e) {
                let shown = OsStr::from_bytes(name).to_string_lossy();
                return Err(StoreError::io(format!("setting xattr {shown} on {}", dst.display()), e));
            }
        }
    }
    Ok(())
}

fn xattrs_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EPERM))
}

fn list_xattrs(path: &CString) -> io::Result<Vec<u8>> {
    loop {
        // SAFETY: a null buffer of size 0 asks for the needed size.
        let size = unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buffer of the given length.
        let got = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e); // ERANGE: the list grew meanwhile; ask again
        }
    }
}

fn get_xattr(path: &CString, name: &CString) -> io::Result<Vec<u8>> {
    loop {
        // SAFETY: a null buffer of size 0 asks for the needed size.
        let size = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buffer of the given length.
        let got = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keeps_links_modes_symlinks_holes_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/a"), b"hello").unwrap();
        fs::hard_link(src.join("sub/a"), src.join("b")).unwrap();
        std::os::unix::fs::symlink("sub/a", src.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", src.join("dangling")).unwrap();
        fs::set_permissions(src.join("sub/a"), fs::Permissions::from_mode(0o4751)).unwrap();
        let sparse = File::create(src.join("sparse")).unwrap();
        sparse.write_all_at(b"end", 64 << 20).unwrap();
        drop(sparse);
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o555)).unwrap();

        let dst = dir.path().join("dst");
        let report = copy_tree(&src, &dst, DataCopy::Plain).unwrap();
        assert_eq!(report.files, 2, "the hard link is not copied twice");

        let a = fs::metadata(dst.join("sub/a")).unwrap();
        let b = fs::metadata(dst.join("b")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.mode() & 0o7777, 0o4751);
        assert_eq!(fs::read(dst.join("b")).unwrap(), b"hello");
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("sub/a"));
        assert_eq!(fs::read_link(dst.join("dangling")).unwrap(), Path::new("/nonexistent"));
        let sparse = fs::metadata(dst.join("sparse")).unwrap();
        assert_eq!(sparse.len(), (64 << 20) + 3);
        assert!(sparse.blocks() * 512 < 1 << 20, "holes stay holes");
        let sub_src = fs::metadata(src.join("sub")).unwrap();
        let sub_dst = fs::metadata(dst.join("sub")).unwrap();
        assert_eq!(sub_dst.mode() & 0o7777, 0o555);
        assert_eq!(sub_dst.mtime(), sub_src.mtime());
        assert_eq!(
            fs::metadata(dst.join("sub/a")).unwrap().mtime_nsec(),
            fs::metadata(src.join("sub/a")).unwrap().mtime_nsec()
        );

        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        remove_tree(&dst).unwrap();
        assert!(!dst.exists());
        remove_tree(&dst).unwrap();
    }

    #[test]
    fn refuses_a_non_directory_source() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"x").unwrap();
        assert!(copy_tree(&dir.path().join("f"), &dir.path().join("g"), DataCopy::Plain).is_err());
    }
}
