//! Finding and removing the cgroups of one store's containers.
//!
//! Every step's container gets the relative cgroup path `strata/<store id>/<container>`
//! (see [`crate::runtime::store_id`]), which the runtime places below the cgroup strata itself
//! runs in, in every hierarchy. So the store's container cgroups are the subdirectories of
//! `<hierarchy mount>/<our cgroup>/strata/<store id>` for each mounted hierarchy: found without
//! the runtime's state, which a crash may have lost while the step's processes live on.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cleanup::unescape_mountinfo;
use crate::runtime::CGROUP_PARENT;

/// One mounted cgroup hierarchy and this process's cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    mount_point: PathBuf,
    /// This process's cgroup in the hierarchy, relative (`/` becomes empty).
    own: PathBuf,
}

/// The hierarchies in `mountinfo` joined with the lines of `/proc/self/cgroup`.
fn hierarchies(mountinfo: &str, own_cgroups: &str) -> Vec<Hierarchy> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        let (Some(fstype), Some(_source), Some(options)) = (right.next(), right.next(), right.next()) else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4).map(unescape_mountinfo) else {
            continue;
        };
        let options: Vec<&str> = options.split(',').collect();
        let v2 = match fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        // `N:controllers:/path`; v2 is `0::/path`; a v1 named hierarchy shows `name=...`.
        // A v1 hierarchy is ours when all of a line's controllers are among its options.
        let own = own_cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let ours = if v2 {
                controllers.is_empty()
            } else {
                !controllers.is_empty() && controllers.split(',').all(|c| options.contains(&c))
            };
            ours.then(|| PathBuf::from(path.trim_start_matches('/')))
        });
        if let Some(own) = own {
            found.push(Hierarchy {
                mount_point: PathBuf::from(mount_point),
                own,
            });
        }
    }
    found
}

/// `<mount>/<our cgroup>/strata/<store id>` in every hierarchy (existing or not).
pub fn store_parents(store_id: &str) -> Vec<PathBuf> {
    let (Ok(mountinfo), Ok(own)) = (
        fs::read_to_string("/proc/self/mountinfo"),
        fs::read_to_string("/proc/self/cgroup"),
    ) else {
        return Vec::new();
    };
    let mut parents: Vec<PathBuf> = hierarchies(&mountinfo, &own)
        .into_iter()
        .map(|h| h.mount_point.join(h.own).join(CGROUP_PARENT).join(store_id))
        .collect();
    parents.sort();
    parents.dedup();
    parents
}

/// The container cgroups of a store: `(container name, directory)` in every hierarchy.
pub fn containers(store_id: &str) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for parent in store_parents(store_id) {
        let Ok(entries) = fs::read_dir(&parent) else { continue };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if let Some(name) = entry.file_name().to_str() {
                    found.push((name.to_owned(), entry.path()));
                }
            }
        }
    }
    found.sort();
    found
}

/// The processes in a cgroup directory.
pub fn processes(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process in `cgroup` (SIGKILL, repeated while new ones appear) and removes the
/// directory. Gives up after a few seconds with the error that stopped it.
pub fn remove(cgroup: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = processes(cgroup);
        for pid in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
        }
        match fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // EBUSY while the killed processes are still exiting.
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("removing cgroup {}: {e}; retrying", cgroup.display());
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_are_joined_with_our_cgroups() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
40 20 0:31 / /mnt/with\\040space rw - ext4 /dev/sda1 rw
";
        let own = "\
4:memory:/process_api/abc
3:cpu,cpuacct:/
2:name=systemd:/user.slice
0::/
";
        let found = hierarchies(mountinfo, own);
        let pairs: Vec<(String, String)> = found
            .iter()
            .map(|h| (h.mount_point.display().to_string(), h.own.display().to_string()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("/sys/fs/cgroup/memory".to_owned(), "process_api/abc".to_owned()),
                ("/sys/fs/cgroup/cpu,cpuacct".to_owned(), String::new()),
                ("/sys/fs/cgroup/systemd".to_owned(), "user.slice".to_owned()),
                ("/sys/fs/cgroup/unified".to_owned(), String::new()),
            ]
        );
    }
}
