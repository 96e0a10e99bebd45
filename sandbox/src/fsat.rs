//! Directory-fd-relative filesystem calls for work inside an untrusted tree: the layer
//! unpacker (`strata::fetch`), the removal of secret mount placeholders after a step
//! ([`crate::secrets`]), and the opening of local images below the directories an operator
//! allowed.
//!
//! Invariant: every path handed to the kernel here is either resolved with `openat2` and
//! `RESOLVE_IN_ROOT` (so `..`, absolute symlinks and symlinked parents stay inside the
//! root), with `RESOLVE_BENEATH` (never above the directory, and with
//! `RESOLVE_NO_SYMLINKS` not through any symlink at all), or is a single name component
//! created or removed relative to a directory fd without following a symlink in that last
//! component. No path string is ever joined onto the rootfs path and opened with plain
//! `open`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `struct open_how` from `<linux/openat2.h>`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `RESOLVE_*` flags of `openat2(2)`.
pub const RESOLVE_NO_XDEV: u64 = 0x01;
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub const RESOLVE_BENEATH: u64 = 0x08;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens the rootfs directory itself (the caller's trusted path) as an `O_PATH` descriptor.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let c = path_cstring(path)?;
    // SAFETY: `c` is a valid NUL-terminated string; the returned fd is owned below.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn path_cstring(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {path:?} contains a NUL byte"),
        )
    })
}

/// Opens `rel` (relative, may be empty for the root itself) with every component resolved
/// as if `root` were `/`: `..` stops at the root and absolute symlinks start at it.
pub fn open_in_root(root: BorrowedFd<'_>, rel: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    openat2(root, rel, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
}

/// Opens `rel` below `dir` without crossing any symlink (`ELOOP` when a component is one)
/// and without climbing above `dir` (`EXDEV`): what was checked is what is opened.
pub fn open_beneath_no_symlinks(dir: BorrowedFd<'_>, rel: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    openat2(
        dir,
        rel,
        flags,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )
}

/// Opens `rel` below `dir`: relative symlinks are followed as long as they stay below it;
/// absolute ones, `..` above `dir` and magic links fail.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    openat2(dir, rel, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
}

/// `openat2(2)` with `O_CLOEXEC` added; `rel` empty means `dir` itself.
pub fn openat2(dir: BorrowedFd<'_>, rel: &CStr, flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    let dot = c".";
    let path = if rel.is_empty() { dot } else { rel };
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // openat2 answers EAGAIN when a concurrent rename could have let a lookup escape;
    // a few retries settle it.
    for _ in 0..16 {
        // SAFETY: `path` and `how` outlive the call; the size matches the struct.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if ret >= 0 {
            // SAFETY: a fresh descriptor returned by the kernel.
            return Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// `fstat` of an open descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: zeroed `stat` is a valid value for the kernel to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Removes the non-directory `name` of `dir` (a symlink itself, never what it points to).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(|_| ())
}

/// Removes the empty directory `name` of `dir` (`ENOTEMPTY` otherwise; a symlink is refused
/// with `ENOTDIR`).
pub fn rmdir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) }).map(|_| ())
}

/// `lstat` of one name inside `dir`; `None` when it does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    // SAFETY: zeroed `stat` is a valid value for the kernel to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name, valid out pointer.
    let ret = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(err);
    }
    Ok(Some(st))
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn is_regular(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(|_| ())
}

/// Opens a directory entry of `dir` without following a symlink in `name`.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid fd and NUL-terminated name; the fd is owned below.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates a new regular file (fails if anything exists under `name`).
pub fn create_file_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<std::fs::File> {
    // SAFETY: valid fd and NUL-terminated name; the fd is owned below.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    })?;
    // SAFETY: a fresh descriptor.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings and a valid fd.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(|_| ())
}

/// Hard link without following a symlink in the target's last component.
pub fn link_at(from_dir: BorrowedFd<'_>, from: &CStr, to_dir: BorrowedFd<'_>, to: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings and valid fds.
    cvt(unsafe { libc::linkat(from_dir.as_raw_fd(), from.as_ptr(), to_dir.as_raw_fd(), to.as_ptr(), 0) }).map(|_| ())
}

pub fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) }).map(|_| ())
}

/// chmod of a node this unpacker has just created with `mknod_at` (so not a symlink:
/// Linux's fchmodat cannot refuse to follow one, and an O_PATH fd cannot be chmod-ed).
pub fn chmod_new_node_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, 0) }).map(|_| ())
}

pub fn chown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(|_| ())
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(|_| ())
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(|_| ())
}

fn timespec(secs: i64, nanos: u32) -> libc::timespec {
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    }
}

/// Sets atime and mtime of an open file or directory.
pub fn futimes(fd: BorrowedFd<'_>, secs: i64, nanos: u32) -> io::Result<()> {
    let times = [timespec(secs, nanos), timespec(secs, nanos)];
    // SAFETY: valid fd and a two-element array.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(|_| ())
}

/// Sets atime and mtime of `name` in `dir` without following a symlink.
pub fn utimes_at(dir: BorrowedFd<'_>, name: &CStr, secs: i64, nanos: u32) -> io::Result<()> {
    let times = [timespec(secs, nanos), timespec(secs, nanos)];
    // SAFETY: valid fd, NUL-terminated name and a two-element array.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(|_| ())
}

pub fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: valid fd, NUL-terminated name, and a value pointer/length pair.
    cvt(unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) }).map(|_| ())
}

/// The names in an open directory, without `.` and `..`.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    // fdopendir takes ownership of its fd: hand it a duplicate.
    // SAFETY: valid fd; F_DUPFD_CLOEXEC returns a fresh descriptor.
    let dup = cvt(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is ours; on success the DIR stream owns it.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(err);
    }
    // The duplicate shares the offset with `dir`: start from the beginning.
    // SAFETY: `stream` is a valid DIR pointer.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    loop {
        // SAFETY: `stream` is valid; errno is reset to tell end-of-stream from errors.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is valid.
        let entry = unsafe { libc::readdir64(stream) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: `stream` is valid and closed exactly once.
            unsafe { libc::closedir(stream) };
            if err.raw_os_error().unwrap_or(0) != 0 {
                return Err(err);
            }
            return Ok(names);
        }
        // SAFETY: `d_name` is a NUL-terminated array inside the entry just returned.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(name.to_owned());
        }
    }
}

/// Removes `name` from `dir`, recursively if it is a directory; never follows symlinks.
/// A missing entry is not an error.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let child = open_dir_at(dir, name)?;
        for entry in list_dir(std::os::fd::AsFd::as_fd(&child))? {
            remove_all_at(std::os::fd::AsFd::as_fd(&child), &entry)?;
        }
        // SAFETY: valid fd and NUL-terminated name.
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })?;
    } else {
        // SAFETY: valid fd and NUL-terminated name.
        let ret = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(err);
            }
        }
    }
    Ok(())
}

pub fn is_root_user() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    /// A temporary tree: directories, files (holding "keep") and `(target, link)` symlinks.
    fn tree(dirs: &[&str], files: &[&str], symlinks: &[(&str, &str)]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for dir in dirs {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        }
        for file in files {
            std::fs::write(tmp.path().join(file), "keep").unwrap();
        }
        for (target, link) in symlinks {
            symlink(target, tmp.path().join(link)).unwrap();
        }
        tmp
    }

    fn ino(fd: BorrowedFd<'_>) -> u64 {
        fstat(fd).unwrap().st_ino
    }

    fn errno(result: io::Result<impl Sized>) -> i32 {
        result.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
    }

    /// `..` and absolute symlinks inside the root are clamped at it, as in a container.
    #[test]
    fn open_in_root_never_leaves_the_root() {
        let tmp = tree(&["root/etc", "etc"], &["root/etc/x", "etc/x"], &[("/", "root/up")]);
        let root = open_root(&tmp.path().join("root")).unwrap();
        let inside = open_in_root(root.as_fd(), c"etc/x", libc::O_RDONLY).unwrap();
        let via_up = open_in_root(root.as_fd(), c"up/../../etc/x", libc::O_RDONLY).unwrap();
        assert_eq!(ino(inside.as_fd()), ino(via_up.as_fd()));
        let top = open_in_root(root.as_fd(), c"", libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let above = open_in_root(root.as_fd(), c"..", libc::O_PATH | libc::O_DIRECTORY).unwrap();
        assert_eq!(ino(top.as_fd()), ino(above.as_fd()));
        assert_eq!(ino(root.as_fd()), ino(above.as_fd()));
    }

    /// Sources are opened through no symlink and never above their directory.
    #[test]
    fn open_beneath_no_symlinks_refuses_symlinks_and_climbing() {
        let tmp = tree(
            &["ctx/sub"],
            &["ctx/sub/f", "outside"],
            &[("sub", "ctx/link"), ("f", "ctx/sub/flink")],
        );
        let dir = open_root(&tmp.path().join("ctx")).unwrap();
        assert!(open_beneath_no_symlinks(dir.as_fd(), c"sub/f", libc::O_RDONLY).is_ok());
        let open = |rel: &CStr| open_beneath_no_symlinks(dir.as_fd(), rel, libc::O_RDONLY | libc::O_NOFOLLOW);
        assert_eq!(errno(open(c"link/f")), libc::ELOOP);
        assert_eq!(errno(open(c"sub/flink")), libc::ELOOP);
        assert_eq!(errno(open(c"../outside")), libc::EXDEV);
    }

    /// The single-component calls never write or open through a symlink in the last component.
    #[test]
    fn last_component_symlinks_are_never_followed() {
        let tmp = tree(
            &["target", "dir"],
            &["target/f"],
            &[("../target/f", "dir/file"), ("../target", "dir/sub")],
        );
        let target = tmp.path().join("target");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = open_root(&tmp.path().join("dir")).unwrap();

        assert_eq!(errno(create_file_at(dir.as_fd(), c"file")), libc::EEXIST);
        // O_DIRECTORY | O_NOFOLLOW on a symlink: ENOTDIR.
        assert_eq!(errno(open_dir_at(dir.as_fd(), c"sub")), libc::ENOTDIR);
        assert_eq!(errno(mkdir_at(dir.as_fd(), c"sub", 0o700)), libc::EEXIST);
        let owner = std::fs::metadata(tmp.path()).unwrap();
        chown_at(dir.as_fd(), c"sub", owner.uid(), owner.gid()).unwrap();
        unlink_at(dir.as_fd(), c"file").unwrap();
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "keep");
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o755);

        // A new file and directory: created without following, then chmod-ed exactly (no umask).
        let file = create_file_at(dir.as_fd(), c"file").unwrap();
        fchmod(file.as_fd(), 0o4750).unwrap();
        assert!(is_regular(&fstat(file.as_fd()).unwrap()));
        assert_eq!(fstat(file.as_fd()).unwrap().st_mode & 0o7777, 0o4750);
        mkdir_at(dir.as_fd(), c"new", 0o700).unwrap();
        let new = open_dir_at(dir.as_fd(), c"new").unwrap();
        fchmod(new.as_fd(), 0o1777).unwrap();
        assert!(is_dir(&lstat_at(dir.as_fd(), c"new").unwrap().unwrap()));
        assert_eq!(fstat(new.as_fd()).unwrap().st_mode & 0o7777, 0o1777);
        assert!(lstat_at(dir.as_fd(), c"missing").unwrap().is_none());
    }
}
