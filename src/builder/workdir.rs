//! A step's working directory as the runtime will resolve it inside the rootfs, following
//! the symlinks earlier steps made. The static check (`guard::forbidden_workdir`) sees only
//! the spec's text: `(run (shell "ln -s /proc/self/fd /fds")) (workdir /fds/7)` passes it,
//! and the runtime would then `chdir` through `/proc` (CVE-2024-21626's way to a leaked
//! descriptor). This resolves the path the way the kernel does inside the container's root
//! (absolute links restart at the root, `..` stops there, at most 40 links) and refuses it
//! when any prefix lands under `/proc`, `/sys` or `/dev`.
//!
//! Only names are read from the rootfs (`readlinkat` on a parent opened with
//! `RESOLVE_IN_ROOT`): nothing the step made can lead this walk out of the rootfs.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use strata_sandbox::fsat;

use super::guard::forbidden_workdir;

/// Links followed at most before giving up (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Why a workdir is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It resolves to `resolved`, under `dir` (`/proc`, `/sys` or `/dev`).
    Forbidden { resolved: String, dir: &'static str },
    /// More than [`MAX_LINKS`] symlinks (a loop).
    TooManyLinks,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Forbidden { resolved, dir } => write!(
                f,
                "resolves through the rootfs's symlinks to {resolved}, under {dir}: a step's working directory may not be in /proc, /sys or /dev"
            ),
            Refusal::TooManyLinks => write!(f, "has more than {MAX_LINKS} levels of symlinks"),
        }
    }
}

fn joined(stack: &[String]) -> String {
    format!("/{}", stack.join("/"))
}

/// The target of `name` in the directory `parent` (a path inside the root), if it is a symlink.
fn link_target(root: &OwnedFd, parent: &str, name: &str) -> Option<String> {
    let rel = CString::new(parent.trim_start_matches('/')).ok()?;
    let rel = if rel.as_bytes().is_empty() {
        CString::new(".").ok()?
    } else {
        rel
    };
    let dir = fsat::open_in_root(root.as_fd(), &rel, libc::O_PATH | libc::O_DIRECTORY).ok()?;
    let target = nix::fcntl::readlinkat(&dir, name).ok()?;
    Some(target.to_string_lossy().into_owned())
}

/// Checks `workdir` (absolute) against the rootfs at `rootfs`. An unreadable rootfs or a
/// missing component is no refusal: what does not exist is created by the runtime, as plain
/// directories.
pub fn check(rootfs: &Path, workdir: &str) -> Result<(), Refusal> {
    let Ok(root) = fsat::open_root(rootfs) else {
        return Ok(());
    };
    let mut pending: Vec<String> = workdir.split('/').rev().map(str::to_owned).collect();
    let mut stack: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        let here = joined(&stack);
        stack.push(part.clone());
        let path = joined(&stack);
        if let Some(dir) = forbidden_workdir(&path) {
            return Err(Refusal::Forbidden { resolved: path, dir });
        }
        if let Some(target) = link_target(&root, &here, &part) {
            links += 1;
            if links > MAX_LINKS {
                return Err(Refusal::TooManyLinks);
            }
            stack.pop();
            if target.starts_with('/') {
                stack.clear();
            }
            pending.extend(target.split('/').rev().map(str::to_owned));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in ["proc", "sys", "dev", "usr/src", "home"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        dir
    }

    #[test]
    fn plain_and_missing_directories_pass() {
        let root = rootfs();
        assert_eq!(check(root.path(), "/usr/src"), Ok(()));
        assert_eq!(check(root.path(), "/not/yet/made"), Ok(()));
        assert_eq!(check(root.path(), "/"), Ok(()));
    }

    #[test]
    fn a_symlink_into_proc_is_refused() {
        let root = rootfs();
        symlink("/proc/self/fd", root.path().join("fds")).unwrap();
        let refusal = check(root.path(), "/fds/7").unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Forbidden {
                resolved: "/proc".into(),
                dir: "/proc"
            }
        );
        // Relative links and `..` resolve inside the root.
        symlink("../../sys/fs", root.path().join("usr/src/up")).unwrap();
        assert!(matches!(
            check(root.path(), "/usr/src/up/cgroup"),
            Err(Refusal::Forbidden { dir: "/sys", .. })
        ));
        symlink("../../../../../../dev", root.path().join("home/deep")).unwrap();
        assert!(matches!(
            check(root.path(), "/home/deep"),
            Err(Refusal::Forbidden { dir: "/dev", .. })
        ));
    }

    #[test]
    fn a_symlink_to_a_host_path_is_resolved_inside_the_root() {
        let root = rootfs();
        // On the host this would lead to the host's /usr: inside the root it is the root's.
        symlink("/usr", root.path().join("u")).unwrap();
        assert_eq!(check(root.path(), "/u/src"), Ok(()));
    }

    #[test]
    fn a_symlink_loop_is_refused() {
        let root = rootfs();
        symlink("/b", root.path().join("a")).unwrap();
        symlink("/a", root.path().join("b")).unwrap();
        assert_eq!(check(root.path(), "/a"), Err(Refusal::TooManyLinks));
    }
}
