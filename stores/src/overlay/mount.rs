//! The mounts the overlay store makes: overlays through the new mount API, read-only bind
//! mounts, unmounting, and finding mounts under a directory.
//!
//! Overlays are made with `fsopen("overlay")` and one `fsconfig(FSCONFIG_SET_STRING,
//! "lowerdir+", layer)` per layer (kernel 6.8+), so the depth of a stack is bounded by the
//! kernel's stack limit (500 layers), not by the one-page option string of `mount(2)` that
//! holds only about 40 long layer paths. Errors carry the kernel's message, read from the
//! filesystem context.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::StoreError;

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const STATX_ATTR_MOUNT_ROOT: u64 = 0x2000;

fn cstring(value: &[u8], what: &str) -> Result<CString, StoreError> {
    CString::new(value).map_err(|_| {
        StoreError::io(
            format!("{what} contains a NUL byte"),
            io::ErrorKind::InvalidInput.into(),
        )
    })
}

fn path_cstring(path: &Path) -> Result<CString, StoreError> {
    cstring(path.as_os_str().as_bytes(), &path.display().to_string())
}

/// What the kernel logged into a filesystem context (lines like `e overlayfs: ...`).
fn context_messages(fs: &OwnedFd) -> String {
    let mut messages = Vec::new();
    let mut file = fs::File::from(match fs.try_clone() {
        Ok(fd) => fd,
        Err(_) => return String::new(),
    });
    let mut buf = [0u8; 1024];
    // Each read returns one message; the context fd is not blocking: ENODATA ends it.
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        messages.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
        if messages.len() > 16 {
            break;
        }
    }
    messages.join("; ")
}

fn syscall_error(what: String, fs: Option<&OwnedFd>) -> StoreError {
    let err = io::Error::last_os_error();
    let messages = fs.map(context_messages).unwrap_or_default();
    if messages.is_empty() {
        StoreError::io(what, err)
    } else {
        StoreError::io(format!("{what} ({messages})"), err)
    }
}

/// The layers of an overlay, upper first.
pub struct OverlayLayers<'a> {
    /// Read-only layers, the topmost first (at least one).
    pub lower: &'a [PathBuf],
    /// `(upperdir, workdir)` for a writable overlay; `None` for a read-only one (which needs
    /// at least two lower layers).
    pub upper: Option<(&'a Path, &'a Path)>,
}

/// Mounts an overlay of `layers` on `target`.
pub fn mount_overlay(target: &Path, layers: &OverlayLayers<'_>) -> Result<(), StoreError> {
    let what = || {
        format!(
            "mounting an overlay of {} layers on {}",
            layers.lower.len(),
            target.display()
        )
    };
    let name = cstring(b"overlay", "fs name")?;
    // SAFETY: fsopen with a valid C string; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(syscall_error(format!("{}: fsopen", what()), None));
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let set = |key: &str, value: &Path| -> Result<(), StoreError> {
        let key_c = cstring(key.as_bytes(), key)?;
        let value_c = path_cstring(value)?;
        // SAFETY: valid fd and C strings that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key_c.as_ptr(),
                value_c.as_ptr(),
                0,
            )
        };
        if rc < 0 {
            return Err(syscall_error(
                format!("{}: {key}={}", what(), value.display()),
                Some(&fs),
            ));
        }
        Ok(())
    };
    for layer in layers.lower {
        set("lowerdir+", layer)?;
    }
    if let Some((upper, work)) = layers.upper {
        set("upperdir", upper)?;
        set("workdir", work)?;
    }
    // SAFETY: valid fd; CMD_CREATE takes no key or value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if rc < 0 {
        return Err(syscall_error(format!("{}: creating the superblock", what()), Some(&fs)));
    }
    let attrs = if layers.upper.is_none() { MOUNT_ATTR_RDONLY } else { 0 };
    // SAFETY: valid fd.
    let mfd = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if mfd < 0 {
        return Err(syscall_error(format!("{}: fsmount", what()), Some(&fs)));
    }
    // SAFETY: mfd is a fresh descriptor that nothing else owns.
    let mnt = unsafe { OwnedFd::from_raw_fd(mfd as i32) };
    let empty = cstring(b"", "empty path")?;
    let target_c = path_cstring(target)?;
    // SAFETY: valid fds and C strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(syscall_error(format!("{}: move_mount", what()), None));
    }
    Ok(())
}

/// Bind-mounts `source` on `target`, read-only.
pub fn bind_read_only(source: &Path, target: &Path) -> Result<(), StoreError> {
    let what = || format!("bind-mounting {} on {}", source.display(), target.display());
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| StoreError::io(what(), e.into()))?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(StoreError::io(format!("{}: read-only remount", what()), e.into()));
    }
    Ok(())
}

/// Whether `path` is the root of a mount.
pub fn is_mount_point(path: &Path) -> Result<bool, StoreError> {
    let c = path_cstring(path)?;
    // SAFETY: statx fills a zeroed struct we own.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(StoreError::io(format!("statx {}", path.display()), err));
    }
    Ok(stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT != 0 && stx.stx_attributes & STATX_ATTR_MOUNT_ROOT != 0)
}

/// Unmounts `target`, retrying briefly while it is busy and detaching it lazily as a last
/// resort (a process still inside keeps its view; the mount point is free at once).
pub fn unmount(target: &Path) -> Result<(), StoreError> {
    let mut delay = std::time::Duration::from_millis(10);
    for _ in 0..6 {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => return Err(StoreError::io(format!("unmounting {}", target.display()), e.into())),
        }
    }
    tracing::warn!("{} stays busy; detaching it", target.display());
    umount2(target, MntFlags::MNT_DETACH)
        .map_err(|e| StoreError::io(format!("detaching {}", target.display()), e.into()))
}

/// Decodes the octal escapes (`\040` for a space) of a mountinfo path.
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// Mount points at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").map_err(|e| StoreError::io("reading /proc/self/mountinfo", e))?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Unmounts everything at or below `dir`.
pub fn unmount_all_under(dir: &Path) -> Result<(), StoreError> {
    for target in mounts_under(dir)? {
        unmount(&target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mount_path("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape_mount_path("/x\\134y"), PathBuf::from("/x\\y"));
    }
}
