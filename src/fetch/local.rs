//! Local image sources (`oci:PATH`, `docker-archive:PATH`) are the operator's choice: a spec
//! may only name a path below a directory the operator allowed (`--allow-local-images DIR`,
//! repeatable), and never one below `/proc`, `/sys` or `/dev`.
//!
//! Invariants:
//! - Allowed directories are canonicalised once, when the options are made; one that is (or is
//!   below) `/proc`, `/sys` or `/dev` is refused there.
//! - A spec's path is canonicalised (symlinks resolved) before it is compared with the allowed
//!   directories, component by component; then it is opened from a descriptor of the allowed
//!   directory with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so what was checked is
//!   what is read even if someone swaps a component for a symlink in between.
//! - Files inside an OCI layout are opened from the layout's descriptor with
//!   `RESOLVE_BENEATH`; every file read must be a regular file (never a FIFO or a device).
//! - A refusal says the same whether the path exists or not, and no error ever quotes the
//!   content of what was read (see `docker_archive` and `image::json_problem`).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::fsat;
use super::FetchError;

/// Directories never allowed, and never read below, whatever the operator allows.
pub const FORBIDDEN_ROOTS: &[&str] = &["/proc", "/sys", "/dev"];

/// The flag that allows a directory (for messages).
pub const FLAG: &str = "--allow-local-images";

fn under_forbidden(path: &Path) -> Option<&'static str> {
    FORBIDDEN_ROOTS.iter().copied().find(|root| path.starts_with(root))
}

/// Canonicalises a directory given to `--allow-local-images`; refuses one that does not
/// exist, is not a directory, or is (or is below) `/proc`, `/sys` or `/dev`.
pub fn allowed_dir(dir: &Path) -> Result<PathBuf, String> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| format!("{FLAG} {}: {e}", dir.display()))?;
    if !canonical.is_dir() {
        return Err(format!("{FLAG} {}: not a directory", dir.display()));
    }
    if let Some(root) = under_forbidden(&canonical) {
        return Err(format!("{FLAG} {}: images are never read below {root}", dir.display()));
    }
    Ok(canonical)
}

/// Lexically absolute (relative to the working directory) and cleaned of `.` and `..`.
fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for comp in joined.components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn refuse(image: &str, reason: impl Into<String>) -> FetchError {
    FetchError::Unsafe {
        reference: image.to_owned(),
        reason: reason.into(),
    }
}

fn cstring(path: &Path) -> CString {
    // Paths from `canonicalize` hold no NUL.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// Opens the local image at `path` named by `image`, if it lies below one of `allowed`
/// (canonical directories): a directory (`want_dir`, an OCI layout) or a regular file.
pub fn open_allowed(allowed: &[PathBuf], path: &Path, image: &str, want_dir: bool) -> Result<OwnedFd, FetchError> {
    let not_allowed = || {
        let hint = if allowed.is_empty() {
            format!("local images are off: the operator allows directories with {FLAG} DIR")
        } else {
            format!("it is not below a directory allowed with {FLAG}")
        };
        refuse(image, format!("{}: {hint}", path.display()))
    };
    let lexical = absolute(path);
    if let Some(root) = under_forbidden(&lexical) {
        return Err(refuse(image, format!("images are never read below {root}")));
    }
    let canonical = match std::fs::canonicalize(&lexical) {
        Ok(c) => c,
        // Say why only inside an allowed directory: elsewhere, a missing path and an existing
        // one are refused alike.
        Err(e) if allowed.iter().any(|a| lexical.starts_with(a)) => {
            return Err(FetchError::Unavailable {
                reference: image.to_owned(),
                reason: format!("{}: {e}", path.display()),
            })
        }
        Err(_) => return Err(not_allowed()),
    };
    if let Some(root) = under_forbidden(&canonical) {
        return Err(refuse(image, format!("images are never read below {root}")));
    }
    let Some(base) = allowed.iter().find(|a| canonical.starts_with(a)) else {
        return Err(not_allowed());
    };
    let rel = canonical.strip_prefix(base).unwrap_or(Path::new(""));
    let io = |what: &str, e: std::io::Error| FetchError::Unavailable {
        reference: image.to_owned(),
        reason: format!("{what} {}: {e}", path.display()),
    };
    let base_fd = fsat::open_root(base).map_err(|e| io("opening the allowed directory of", e))?;
    let flags = if want_dir {
        libc::O_RDONLY | libc::O_DIRECTORY
    } else {
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY
    };
    let fd =
        fsat::open_beneath_no_symlinks(base_fd.as_fd(), &cstring(rel), flags).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) => {
                refuse(image, format!("{} changed while being opened", path.display()))
            }
            Some(libc::ENOTDIR) if want_dir => {
                refuse(image, format!("{} is not a directory (an OCI layout)", path.display()))
            }
            _ => io("opening", e),
        })?;
    if !want_dir {
        check_regular(fd.as_fd(), image, &path.display().to_string())?;
    }
    Ok(fd)
}

/// Refuses anything but a regular file (a FIFO would hang the build, a device never ends).
pub fn check_regular(fd: BorrowedFd<'_>, image: &str, shown: &str) -> Result<(), FetchError> {
    let st = fsat::fstat(fd).map_err(|e| FetchError::Unavailable {
        reference: image.to_owned(),
        reason: format!("inspecting {shown}: {e}"),
    })?;
    if fsat::is_regular(&st) {
        Ok(())
    } else {
        Err(refuse(image, format!("{shown} is not a regular file")))
    }
}

/// Opens `rel` (a relative path, no NUL) below the layout directory `dir` as a regular file.
pub fn open_in_layout(dir: BorrowedFd<'_>, rel: &str, image: &str, shown: &str) -> Result<File, FetchError> {
    let c = CString::new(rel).map_err(|_| refuse(image, format!("{shown}: a NUL in the path")))?;
    let fd = fsat::open_beneath(dir, &c, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) => refuse(image, format!("{shown} leads out of the layout")),
            _ => FetchError::Unavailable {
                reference: image.to_owned(),
                reason: format!("reading {shown}: {e}"),
            },
        }
    })?;
    check_regular(fd.as_fd(), image, shown)?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_dirs_are_canonical_and_never_proc_sys_dev() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let canonical = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(allowed_dir(&link).unwrap(), canonical);
        for bad in ["/proc", "/proc/self", "/sys", "/dev", "/dev/shm"] {
            assert!(allowed_dir(Path::new(bad)).is_err(), "{bad}");
        }
        assert!(allowed_dir(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn paths_outside_or_through_symlinks_out_are_refused() {
        let allowed = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let a = std::fs::canonicalize(allowed.path()).unwrap();
        std::fs::write(a.join("ok.tar"), "x").unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), a.join("escape")).unwrap();
        let list = vec![a.clone()];
        assert!(open_allowed(&list, &a.join("ok.tar"), "i", false).is_ok());
        let is_refusal = |r: Result<OwnedFd, FetchError>| matches!(r, Err(FetchError::Unsafe { .. }));
        assert!(is_refusal(open_allowed(&list, &a.join("escape"), "i", false)));
        assert!(is_refusal(open_allowed(
            &list,
            &outside.path().join("secret"),
            "i",
            false
        )));
        assert!(is_refusal(open_allowed(&list, &a.join("../nope"), "i", false)));
        assert!(is_refusal(open_allowed(&[], &a.join("ok.tar"), "i", false)));
        assert!(is_refusal(open_allowed(
            &[PathBuf::from("/")],
            Path::new("/proc/self/environ"),
            "i",
            false
        )));
        assert!(is_refusal(open_allowed(
            &[PathBuf::from("/")],
            Path::new("/dev/zero"),
            "i",
            false
        )));
        // A directory where a file is wanted, and the other way round.
        assert!(open_allowed(&list, &a, "i", false).is_err());
        assert!(is_refusal(open_allowed(&list, &a.join("ok.tar"), "i", true)));
    }
}
