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
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
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

/// The attributes of every read-only view the store mounts: `ro,nosuid,nodev`.
const VIEW_ATTRS: libc::c_uint = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;

/// The same, as `mount(2)` flags.
fn view_flags() -> MsFlags {
    MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
}

/// Mounts an overlay of `layers` on `target`: a read-only one (no upper layer) is a view,
/// mounted `ro,nosuid,nodev`; a writable one is a step's rootfs, mounted without either.
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
    // A read-only overlay is a view for the host (people, tools, `copy (from ...)`): its
    // setuid binaries and device nodes must do nothing there. A writable one is a step's own
    // rootfs, where setuid (`sudo`) has to work: the step's sandbox decides about it.
    let attrs = if layers.upper.is_none() { VIEW_ATTRS } else { 0 };
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

/// Bind-mounts `source` on `target` as a view: read-only, `nosuid`, `nodev`.
pub fn bind_read_only(source: &Path, target: &Path) -> Result<(), StoreError> {
    let what = || format!("bind-mounting {} on {}", source.display(), target.display());
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| StoreError::io(what(), e.into()))?;
    if let Err(e) = restrict_view(target) {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(StoreError::io(format!("{}: read-only remount", what()), e.into()));
    }
    Ok(())
}

/// Remounts the mount at `target` (an overlay or a bind mount) `ro,nosuid,nodev`.
fn restrict_view(target: &Path) -> nix::Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | view_flags();
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
}

/// Whether the mount at `target` is `ro,nosuid,nodev`, as every view must be.
pub fn is_restricted_view(target: &Path) -> Result<bool, StoreError> {
    use nix::sys::statvfs::FsFlags;
    let st = nix::sys::statvfs::statvfs(target)
        .map_err(|e| StoreError::io(format!("statvfs {}", target.display()), e.into()))?;
    let wanted = FsFlags::ST_RDONLY | FsFlags::ST_NOSUID | FsFlags::ST_NODEV;
    Ok(st.flags().contains(wanted))
}

/// Makes the view mounted at `target` `ro,nosuid,nodev` if it is not (views mounted by an
/// older strata, still mounted after an upgrade, lack `nosuid,nodev`).
pub fn ensure_restricted_view(target: &Path) -> Result<(), StoreError> {
    if is_restricted_view(target)? {
        return Ok(());
    }
    tracing::info!("remounting the view {} nosuid,nodev", target.display());
    restrict_view(target).map_err(|e| StoreError::io(format!("remounting {} nosuid,nodev", target.display()), e.into()))
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

/// Unmounts every mount stacked at `target` (none is fine).
pub fn unmount_stack(target: &Path) -> Result<(), StoreError> {
    const MOST: usize = 16;
    for _ in 0..MOST {
        if !is_mount_point(target)? {
            return Ok(());
        }
        unmount(target)?;
    }
    Err(StoreError::io(
        format!("unmounting {}", target.display()),
        io::Error::other(format!("still a mount point after {MOST} unmounts")),
    ))
}

/// Removes the tree at `path`, which should hold no mount any more. The walk checks each
/// directory and never descends into a mount: if it meets one (a view mounted again meanwhile,
/// something mounted by hand), it unmounts everything under `path` first. That fallback reads
/// every mount of the host from `/proc/self/mountinfo`, which with a thousand overlay views is
/// megabytes of text per call: the reason it is not done on every removal.
pub fn remove_tree_without_crossing_mounts(path: &Path) -> Result<(), StoreError> {
    match remove_within_one_mount(path)? {
        None => Ok(()),
        Some(mount_point) => {
            tracing::debug!(
                "{} is mounted; unmounting all under {}",
                mount_point.display(),
                path.display()
            );
            unmount_all_under(path)?;
            crate::tree_copy::remove_tree(path)
        }
    }
}

/// Removes `path` bottom-up; stops at the first mount point met and returns it.
fn remove_within_one_mount(path: &Path) -> Result<Option<PathBuf>, StoreError> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let io_err = |what: &str, p: &Path, e: io::Error| StoreError::io(format!("{what} {}", p.display()), e);
    // (directory, its entries have been removed or queued)
    let mut stack = vec![(path.to_path_buf(), false)];
    while let Some((dir, emptied)) = stack.pop() {
        if emptied {
            match fs::remove_dir(&dir) {
                Err(e) if !gone(&e) => return Err(io_err("removing", &dir, e)),
                _ => continue,
            }
        }
        match fs::symlink_metadata(&dir) {
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(io_err("reading", &dir, e)),
            Ok(meta) if !meta.is_dir() => {
                match fs::remove_file(&dir) {
                    Err(e) if !gone(&e) => return Err(io_err("removing", &dir, e)),
                    _ => continue,
                };
            }
            Ok(_) => {}
        }
        if is_mount_point(&dir)? {
            return Ok(Some(dir));
        }
        stack.push((dir.clone(), true));
        let entries = fs::read_dir(&dir).map_err(|e| io_err("listing", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("listing", &dir, e))?;
            let kind = entry.file_type().map_err(|e| io_err("reading", &entry.path(), e))?;
            if kind.is_dir() {
                stack.push((entry.path(), false));
            } else if let Err(e) = fs::remove_file(entry.path()) {
                if !gone(&e) {
                    return Err(io_err("removing", &entry.path(), e));
                }
            }
        }
    }
    Ok(None)
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

    /// Unmounts whatever a test left mounted under its directory, even when it fails.
    struct UnmountOnDrop(PathBuf);

    impl Drop for UnmountOnDrop {
        fn drop(&mut self) {
            let _ = unmount_all_under(&self.0);
        }
    }

    /// A temporary directory whose mounts are undone even when the test fails; `None` (with a
    /// notice) unless running as root.
    fn mount_scratch() -> Option<(tempfile::TempDir, UnmountOnDrop)> {
        if !strata_testkit::is_root() {
            eprintln!("skipping: needs root to mount");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let guard = UnmountOnDrop(dir.path().to_path_buf());
        Some((dir, guard))
    }

    fn bind(source: &Path, target: &Path) {
        mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
    }

    #[test]
    fn removal_never_deletes_through_a_mount() {
        let Some((dir, _guard)) = mount_scratch() else { return };
        let keep = dir.path().join("keep");
        fs::create_dir(&keep).unwrap();
        fs::write(keep.join("precious"), "x").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("a/b/deep")).unwrap();
        fs::write(tree.join("a/b/file"), "f").unwrap();
        std::os::unix::fs::symlink(&keep, tree.join("a/link-out")).unwrap();
        fs::create_dir(tree.join("a/b/deep/mnt")).unwrap();
        // A writable mount deep in the tree, found by the walk, not by name.
        bind(&keep, &tree.join("a/b/deep/mnt"));
        remove_tree_without_crossing_mounts(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(fs::read_to_string(keep.join("precious")).unwrap(), "x");
        assert!(mounts_under(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn removal_of_a_plain_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("x/y/z")).unwrap();
        for n in 0..50 {
            fs::write(tree.join(format!("x/y/f{n}")), "f").unwrap();
        }
        std::os::unix::fs::symlink("/nonexistent", tree.join("x/dangling")).unwrap();
        remove_tree_without_crossing_mounts(&tree).unwrap();
        assert!(!tree.exists());
        remove_tree_without_crossing_mounts(&tree).unwrap();
    }

    #[test]
    fn stacked_mounts_all_come_off() {
        let Some((dir, _guard)) = mount_scratch() else { return };
        let (source, target) = (dir.path().join("s"), dir.path().join("t"));
        fs::create_dir(&source).unwrap();
        fs::create_dir(&target).unwrap();
        for _ in 0..3 {
            bind(&source, &target);
        }
        umount2(&target, MntFlags::empty()).unwrap();
        assert!(is_mount_point(&target).unwrap(), "mounts are stacked");
        unmount_stack(&target).unwrap();
        assert!(!is_mount_point(&target).unwrap());
        assert!(mounts_under(dir.path()).unwrap().is_empty());
        unmount_stack(&target).unwrap();
    }
}
