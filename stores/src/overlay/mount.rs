//! The mounts the overlay store makes: overlays (through the new mount API, or `mount(2)` on
//! kernels before 6.8), read-only bind mounts, unmounting, and finding mounts under a directory.
//!
//! Overlays are made with `fsopen("overlay")` and one `fsconfig(FSCONFIG_SET_STRING,
//! "lowerdir+", layer)` per layer (kernel 6.8+), so the depth of a stack is bounded by the
//! kernel's stack limit (500 layers), not by the one-page option string of `mount(2)` that
//! holds only about 40 long layer paths. Errors carry the kernel's message, read from the
//! filesystem context.
//!
//! Older kernels (Debian 12's 6.1) have no `lowerdir+`: there the overlay is mounted with
//! `mount(2)` and a classic `lowerdir=a:b:c` string. To keep it short, the layers are named
//! relative to their common directory (`result/`, so a layer is `<id>/diff`, 69 bytes), from
//! a thread that unshared its working directory (`unshare(CLONE_FS)`) and changed into it, as
//! OBuilder does from a forked helper: the process's own working directory, shared by every
//! thread, never moves. One page still holds only about 55 layers, so the store flattens
//! bases whose stack would not fit ([`overlay_fits`]). Which way is used is detected once
//! ([`method`]); `STRATA_OVERLAY_MOUNT=legacy` (or `=new`) forces it, for tests.

use std::ffi::{CString, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

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

/// How overlays are mounted on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `fsopen` and one `fsconfig("lowerdir+")` per layer (Linux 6.8+).
    New,
    /// `mount(2)` with `lowerdir=a:b:c` relative to the layers' directory (older kernels).
    Legacy,
}

/// The environment variable that forces a [`Method`]: `legacy` or `new` (anything else: detect).
pub const METHOD_ENV: &str = "STRATA_OVERLAY_MOUNT";

/// How this process mounts overlays: forced by [`METHOD_ENV`], else detected once.
pub fn method() -> Method {
    static METHOD: OnceLock<Method> = OnceLock::new();
    *METHOD.get_or_init(|| {
        let method = match std::env::var(METHOD_ENV).as_deref() {
            Ok("legacy") => Method::Legacy,
            Ok("new") => Method::New,
            _ => detect_method(),
        };
        tracing::debug!("overlay mounts: {method:?}");
        method
    })
}

/// Asks the kernel whether overlayfs takes `lowerdir+`, without mounting anything. An
/// overlayfs with its own filesystem context (6.5+) refuses keys it does not know with EINVAL:
/// `lowerdir+` from 6.8 on. Before 6.5 overlayfs has a "legacy" context that accepts any key
/// (and fails only when the superblock is made), so a made-up key is tried too: accepted, it is
/// that legacy context.
fn detect_method() -> Method {
    let Ok(name) = cstring(b"overlay", "fs name") else {
        return Method::New;
    };
    // SAFETY: fsopen with a valid C string; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        // No new mount API at all (before 5.2): mount(2) is all there is.
        return if err.raw_os_error() == Some(libc::ENOSYS) {
            Method::Legacy
        } else {
            Method::New
        };
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let accepts = |key: &[u8], value: &[u8]| -> bool {
        let (Ok(key), Ok(value)) = (cstring(key, "key"), cstring(value, "value")) else {
            return false;
        };
        // SAFETY: valid fd and C strings that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        rc == 0
    };
    if !accepts(b"lowerdir+", b"/") || accepts(b"strata-probe-no-such-option", b"1") {
        Method::Legacy
    } else {
        Method::New
    }
}

/// Mounts an overlay of `layers` on `target`: a read-only one (no upper layer) is a view,
/// mounted `ro,nosuid,nodev`; a writable one is a step's rootfs, mounted without either.
pub fn mount_overlay(target: &Path, layers: &OverlayLayers<'_>) -> Result<(), StoreError> {
    match method() {
        Method::New => mount_overlay_new(target, layers),
        Method::Legacy => mount_overlay_legacy(target, layers),
    }
}

/// Whether this process can mount an overlay of `layers`: always with the new API (the stack
/// limit is the caller's business), and with `mount(2)` when the options fit in a page.
pub fn overlay_fits(layers: &OverlayLayers<'_>) -> Result<bool, StoreError> {
    match method() {
        Method::New => Ok(true),
        Method::Legacy => Ok(legacy_options(layers)?.1.len() < page_size()),
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// `path` made absolute against the working directory (the process's, not a helper thread's).
fn absolute(path: &Path) -> Result<PathBuf, StoreError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| StoreError::io("reading the working directory", e))?;
    Ok(cwd.join(path))
}

/// `path` relative to `base` (both absolute): `../x/y` style, lexically.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let (p, b): (Vec<Component>, Vec<Component>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c.as_os_str());
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Appends `path` to a `mount(2)` option string, escaping what overlayfs splits on.
fn push_escaped(options: &mut Vec<u8>, path: &Path) {
    for &b in path.as_os_str().as_bytes() {
        if matches!(b, b'\\' | b',' | b':') {
            options.push(b'\\');
        }
        options.push(b);
    }
}

/// The directory the layers are named from (the lowest layer's grandparent: `result/`), and
/// the `mount(2)` options naming every layer relative to it.
fn legacy_options(layers: &OverlayLayers<'_>) -> Result<(PathBuf, Vec<u8>), StoreError> {
    let first = layers
        .lower
        .first()
        .ok_or_else(|| StoreError::io("mounting an overlay without layers", io::ErrorKind::InvalidInput.into()))?;
    let first = absolute(first)?;
    let dir = first
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let mut options = b"lowerdir=".to_vec();
    for (n, layer) in layers.lower.iter().enumerate() {
        if n > 0 {
            options.push(b':');
        }
        push_escaped(&mut options, &relative_to(&absolute(layer)?, &dir));
    }
    if let Some((upper, work)) = layers.upper {
        options.extend_from_slice(b",upperdir=");
        push_escaped(&mut options, &relative_to(&absolute(upper)?, &dir));
        options.extend_from_slice(b",workdir=");
        push_escaped(&mut options, &relative_to(&absolute(work)?, &dir));
    }
    Ok((dir, options))
}

/// [`mount_overlay`] with `mount(2)`, from a helper thread whose working directory is the
/// layers' directory (see the module documentation).
fn mount_overlay_legacy(target: &Path, layers: &OverlayLayers<'_>) -> Result<(), StoreError> {
    let what = || {
        format!(
            "mounting an overlay of {} layers on {} with mount(2)",
            layers.lower.len(),
            target.display()
        )
    };
    let (dir, options) = legacy_options(layers)?;
    if options.len() >= page_size() {
        return Err(StoreError::io(
            format!(
                "{}: the options take {} bytes, more than a page (this depth needs Linux 6.8's lowerdir+)",
                what(),
                options.len()
            ),
            io::ErrorKind::InvalidInput.into(),
        ));
    }
    let target = absolute(target)?;
    let options = OsString::from_vec(options);
    let flags = if layers.upper.is_none() {
        view_flags()
    } else {
        MsFlags::empty()
    };
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<(), (&'static str, nix::Error)> {
                // This thread's working directory only; it ends with the thread.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(|e| ("unshare(CLONE_FS)", e))?;
                nix::unistd::chdir(&dir).map_err(|e| ("chdir", e))?;
                mount(
                    Some("overlay"),
                    &target,
                    Some("overlay"),
                    flags,
                    Some(options.as_os_str()),
                )
                .map_err(|e| ("mount", e))
            })
            .join()
    });
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err((step, e))) => Err(StoreError::io(
            format!("{}: {step} (in {})", what(), dir.display()),
            e.into(),
        )),
        Err(_) => Err(StoreError::io(
            format!("{}: the helper thread panicked", what()),
            io::Error::other("panic"),
        )),
    }
}

/// [`mount_overlay`] with the new mount API.
fn mount_overlay_new(target: &Path, layers: &OverlayLayers<'_>) -> Result<(), StoreError> {
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

    #[test]
    fn relative_layer_paths() {
        let rel = |p: &str, b: &str| relative_to(Path::new(p), Path::new(b));
        assert_eq!(rel("/s/result/x/diff", "/s/result"), PathBuf::from("x/diff"));
        assert_eq!(
            rel("/s/result-tmp/t/diff", "/s/result"),
            PathBuf::from("../result-tmp/t/diff")
        );
        assert_eq!(rel("/s/result", "/s/result"), PathBuf::from("."));
        assert_eq!(rel("/a", "/s/result"), PathBuf::from("../../a"));
    }

    #[test]
    fn legacy_options_are_short_and_escaped() {
        let lower = [PathBuf::from("/s/result/aa/diff"), PathBuf::from("/s/result/bb/diff")];
        let (upper, work) = (Path::new("/s/result-tmp/a,b:c/diff"), Path::new("/s/result-tmp/w"));
        let (dir, options) = legacy_options(&OverlayLayers {
            lower: &lower,
            upper: Some((upper, work)),
        })
        .unwrap();
        assert_eq!(dir, PathBuf::from("/s/result"));
        assert_eq!(
            String::from_utf8(options).unwrap(),
            "lowerdir=aa/diff:bb/diff,upperdir=../result-tmp/a\\,b\\:c/diff,workdir=../result-tmp/w"
        );
        // 64-hex ids: about 55 read-only layers fit in a 4 KiB page.
        let id = "f".repeat(64);
        let many: Vec<PathBuf> = (0..55).map(|_| PathBuf::from(format!("/s/result/{id}/diff"))).collect();
        let (_, options) = legacy_options(&OverlayLayers {
            lower: &many,
            upper: None,
        })
        .unwrap();
        assert!(options.len() < 4096, "{}", options.len());
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
