//! Reading a rootfs view without trusting it: every path is opened from a descriptor of the
//! rootfs with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so no symlink (in the last
//! component or any parent) is ever followed and nothing outside the rootfs is read; files
//! are re-checked with `fstat` after opening (same inode, a regular file). A directory is
//! listed and closed before its children are visited: depth costs no descriptors.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use strata_sandbox::fsat;

/// What an entry is. Sockets are not listed (a tar cannot carry them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Regular,
    Symlink,
    Char,
    Block,
    Fifo,
}

/// An entry's `lstat`, reduced to what a layer carries and what the diff compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub rdev: u64,
}

impl Meta {
    fn from_stat(st: &libc::stat) -> Option<Meta> {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::Regular,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR => Kind::Char,
            libc::S_IFBLK => Kind::Block,
            libc::S_IFIFO => Kind::Fifo,
            _ => return None,
        };
        Some(Meta {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size.max(0) as u64,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
        })
    }
}

/// One name in a directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    pub meta: Meta,
}

/// Extended attributes, sorted by name: `(name, value)`.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A directory's own xattrs and its entries sorted by name.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub xattrs: Xattrs,
    pub entries: Vec<Entry>,
}

/// A rootfs opened for reading.
pub struct Tree {
    root: OwnedFd,
    path: PathBuf,
}

/// `a/b` from a directory's path (empty for the root) and a name.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        path.extend_from_slice(dir);
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// `(parent, name)` of a relative path.
fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a name holds a NUL byte"))
}

/// Xattrs that never leave the store: `trusted.*` (overlayfs' own bookkeeping among them;
/// the importer drops them too) and `security.selinux` (the host's labels).
fn exported_xattr(name: &[u8]) -> bool {
    !name.starts_with(b"trusted.") && name != b"security.selinux"
}

/// The xattrs of an open file or directory.
pub fn read_xattrs(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    let raw = fd.as_raw_fd();
    let mut names = vec![0u8; 1024];
    loop {
        // SAFETY: valid fd; the buffer is writable for its length.
        let n = unsafe { libc::flistxattr(raw, names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            names.truncate(n as usize);
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(err),
        }
        if names.len() > 1 << 24 {
            return Err(io::Error::other("the list of xattrs is too long"));
        }
    }
    let mut xattrs = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !exported_xattr(name) {
            continue;
        }
        let cname = cstring(name)?;
        let mut value = vec![0u8; 256];
        loop {
            // SAFETY: valid fd, NUL-terminated name, writable buffer of its length.
            let n = unsafe { libc::fgetxattr(raw, cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
            if n >= 0 {
                value.truncate(n as usize);
                xattrs.push((name.to_vec(), value));
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ERANGE) if value.len() < 1 << 20 => value.resize(value.len() * 4, 0),
                // Removed meanwhile.
                Some(libc::ENODATA) => break,
                _ => return Err(err),
            }
        }
    }
    xattrs.sort();
    Ok(xattrs)
}

impl Tree {
    /// Opens the rootfs at `path` (a trusted path: the store's view).
    pub fn open(path: &Path) -> io::Result<Tree> {
        Ok(Tree {
            root: fsat::open_root(path)?,
            path: path.to_owned(),
        })
    }

    /// `rel` as shown in messages (inside the rootfs).
    pub fn show(&self, rel: &[u8]) -> String {
        format!("{}/{}", self.path.display(), String::from_utf8_lossy(rel))
    }

    fn open_rel(&self, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
        fsat::open_beneath_no_symlinks(self.root.as_fd(), &cstring(rel)?, flags)
    }

    /// The directory `rel` (empty for the root): its xattrs and entries, sorted by name.
    pub fn list(&self, rel: &[u8]) -> io::Result<Listing> {
        let dir = self.open_rel(rel, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
        let xattrs = if rel.is_empty() {
            Vec::new()
        } else {
            read_xattrs(dir.as_fd())?
        };
        let mut entries = Vec::new();
        for name in fsat::list_dir(dir.as_fd())? {
            let Some(st) = fsat::lstat_at(dir.as_fd(), &name)? else {
                continue;
            };
            if let Some(meta) = Meta::from_stat(&st) {
                entries.push(Entry {
                    name: name.into_bytes(),
                    meta,
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Listing { xattrs, entries })
    }

    /// Opens the regular file `rel` for reading: never through a symlink, never a FIFO or a
    /// device, and only the inode that was listed.
    pub fn open_file(&self, rel: &[u8], meta: &Meta) -> io::Result<File> {
        let fd = self.open_rel(
            rel,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK,
        )?;
        let st = fsat::fstat(fd.as_fd())?;
        if !fsat::is_regular(&st) || st.st_ino != meta.ino || st.st_dev != meta.dev {
            return Err(io::Error::other("changed while being read"));
        }
        Ok(File::from(fd))
    }

    /// The target of the symlink `rel`.
    pub fn read_link(&self, rel: &[u8]) -> io::Result<Vec<u8>> {
        let (parent, name) = split(rel);
        let dir = self.open_rel(parent, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
        let name = cstring(name)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: valid fd, NUL-terminated name, writable buffer of its length.
        let n = unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }
}

/// A relative path as a `Path` (for the tar writer).
pub fn as_path(rel: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(rel))
}
