//! Typed wrappers over the `zfs` command, the only way this backend touches ZFS.
//!
//! Written against the CLI common to zfs-fuse (pool v23) and OpenZFS: no `zfs list -p`,
//! no `.zfs/snapshot`, and a dataset that was just used can answer `busy` for a moment when
//! it is unmounted, renamed or destroyed, so those retry with backoff (via
//! [`crate::command::run_with_retry`]). Every failure carries the command line and its stderr.

use std::path::PathBuf;

use crate::command::{self, is_busy};
use crate::StoreError;

/// Attempts for operations that can answer `busy` (about 20 s of backoff in all).
const BUSY_ATTEMPTS: u32 = 16;

fn zfs(args: &[&str]) -> Result<String, StoreError> {
    command::run("zfs", args)
}

fn zfs_retry(args: &[&str]) -> Result<String, StoreError> {
    command::run_with_retry("zfs", args, BUSY_ATTEMPTS, is_busy)
}

/// True when a command failed because the dataset or snapshot does not exist.
pub fn is_missing(e: &StoreError) -> bool {
    matches!(e, StoreError::Command { stderr, .. } if stderr.contains("does not exist"))
}

fn is_already_exists(e: &StoreError) -> bool {
    matches!(e, StoreError::Command { stderr, .. } if stderr.contains("already exists"))
}

fn is_not_mounted(e: &StoreError) -> bool {
    matches!(e, StoreError::Command { stderr, .. } if stderr.contains("not currently mounted"))
}

/// `zfs create` made the dataset but could not mount it: another process opening the same
/// new store was mounting it at that moment ("mountpoint or dataset is busy").
fn is_created_not_mounted(e: &StoreError) -> bool {
    matches!(e, StoreError::Command { stderr, .. }
        if stderr.contains("cannot mount") || stderr.contains("created, but not mounted"))
}

/// Creates a filesystem; `Ok(false)` if it existed already. It may be left unmounted (see
/// [`ensure_mounted`]).
pub fn create(dataset: &str) -> Result<bool, StoreError> {
    match zfs(&["create", dataset]) {
        Ok(_) => Ok(true),
        Err(e) if is_already_exists(&e) => Ok(false),
        Err(e) if is_created_not_mounted(&e) && exists(dataset)? => Ok(true),
        Err(e) => Err(e),
    }
}

pub fn snapshot(snapshot: &str) -> Result<(), StoreError> {
    zfs(&["snapshot", snapshot]).map(drop)
}

pub fn clone(origin_snapshot: &str, dataset: &str) -> Result<(), StoreError> {
    zfs(&["clone", origin_snapshot, dataset]).map(drop)
}

pub fn promote(dataset: &str) -> Result<(), StoreError> {
    zfs_retry(&["promote", dataset]).map(drop)
}

pub fn set(dataset: &str, property_value: &str) -> Result<(), StoreError> {
    zfs_retry(&["set", property_value, dataset]).map(drop)
}

/// Renames a dataset or a snapshot. A filesystem is unmounted first: zfs-fuse answers
/// `busy` when asked to rename a mounted one (it stays unmounted afterwards: see [`mount`]).
pub fn rename(from: &str, to: &str) -> Result<(), StoreError> {
    if !from.contains('@') {
        unmount(from)?;
    }
    zfs_retry(&["rename", from, to]).map(drop)
}

/// Unmounts a filesystem; not being mounted is fine.
pub fn unmount(dataset: &str) -> Result<(), StoreError> {
    match zfs_retry(&["unmount", dataset]) {
        Ok(_) => Ok(()),
        Err(e) if is_not_mounted(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Mounts a filesystem unless it is mounted already, and returns its mount point.
///
/// Several processes may mount the same dataset at once (a new store, an item just
/// committed). The losers see "already mounted", "busy" or "failed to create mountpoint"
/// (zfs-fuse's mkdir met the winner's): a dataset mounted after all is success, and the
/// last two are retried a few times.
pub fn ensure_mounted(dataset: &str) -> Result<PathBuf, StoreError> {
    const ATTEMPTS: u32 = 6;
    let (mounted, mountpoint) = mount_state(dataset)?;
    if mounted {
        return Ok(mountpoint);
    }
    let mut delay = std::time::Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        let err = match zfs_retry(&["mount", dataset]) {
            Ok(_) => return Ok(mountpoint),
            Err(e) => e,
        };
        if mount_state(dataset)?.0 {
            return Ok(mountpoint);
        }
        let racing = matches!(&err, StoreError::Command { stderr, .. }
            if stderr.contains("already mounted") || stderr.contains("failed to create mountpoint"));
        if !racing || attempt == ATTEMPTS {
            return Err(err);
        }
        std::thread::sleep(delay);
        delay *= 2;
        attempt += 1;
    }
}

/// `(mounted, mountpoint)` of a filesystem, read from its properties.
pub fn mount_state(dataset: &str) -> Result<(bool, PathBuf), StoreError> {
    let out = zfs(&["get", "-H", "-o", "value", "mounted,mountpoint", dataset])?;
    let mut lines = out.lines();
    let mounted = lines.next().map(str::trim) == Some("yes");
    let mountpoint = lines.next().map(str::trim).unwrap_or_default();
    if !mountpoint.starts_with('/') {
        return Err(StoreError::Command {
            command: format!("zfs get mountpoint {dataset}"),
            status: "unusable value".to_owned(),
            stderr: format!("dataset {dataset} has mountpoint {mountpoint:?}; strata needs a path"),
        });
    }
    Ok((mounted, PathBuf::from(mountpoint)))
}

/// The direct children of `parent` (last component) and whether each is mounted, in one
/// `zfs list`.
pub fn mounted_children(parent: &str) -> Result<std::collections::BTreeMap<String, bool>, StoreError> {
    let out = zfs(&[
        "list",
        "-H",
        "-o",
        "name,mounted",
        "-t",
        "filesystem",
        "-r",
        "-d",
        "1",
        parent,
    ])?;
    let prefix = format!("{parent}/");
    Ok(out
        .lines()
        .filter_map(|l| {
            let (name, mounted) = l.split_once('\t')?;
            let child = name.trim().strip_prefix(&prefix)?;
            (!child.contains('/')).then(|| (child.to_owned(), mounted.trim() == "yes"))
        })
        .collect())
}

/// The mount points of `parent` and its direct children (filesystems), in one `zfs list`.
pub fn mountpoints(parent: &str) -> Result<Vec<PathBuf>, StoreError> {
    let out = zfs(&[
        "list",
        "-H",
        "-o",
        "mountpoint",
        "-t",
        "filesystem",
        "-r",
        "-d",
        "1",
        parent,
    ])?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|m| m.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// Whether a dataset or snapshot exists.
pub fn exists(name: &str) -> Result<bool, StoreError> {
    match zfs(&["list", "-H", "-o", "name", "-t", "all", name]) {
        Ok(_) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The last components of the direct children of `parent` (filesystems only).
pub fn children(parent: &str) -> Result<Vec<String>, StoreError> {
    let out = zfs(&["list", "-H", "-o", "name", "-t", "filesystem", "-r", "-d", "1", parent])?;
    let prefix = format!("{parent}/");
    Ok(out
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .filter(|c| !c.contains('/'))
        .map(str::to_owned)
        .collect())
}

/// The snapshots of `dataset`, as the part after `@`.
pub fn snapshots(dataset: &str) -> Result<Vec<String>, StoreError> {
    let out = zfs(&["list", "-H", "-o", "name", "-t", "snapshot", "-r", "-d", "1", dataset])?;
    let prefix = format!("{dataset}@");
    Ok(out
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .map(str::to_owned)
        .collect())
}

/// Every snapshot at or below `dataset`, by full name.
pub fn list_snapshots_recursive(dataset: &str) -> Result<Vec<String>, StoreError> {
    let out = zfs(&["list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset])?;
    Ok(out
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The snapshot a clone was made from, if it is a clone.
pub fn origin(dataset: &str) -> Result<Option<String>, StoreError> {
    let out = zfs(&["get", "-H", "-o", "value", "origin", dataset])?;
    let origin = out.trim();
    Ok((!origin.is_empty() && origin != "-").then(|| origin.to_owned()))
}

/// A numeric property in bytes (`zfs get -Hp` prints raw numbers where `list -p` is missing).
pub fn bytes_property(dataset: &str, property: &str) -> Result<u64, StoreError> {
    let out = zfs(&["get", "-H", "-p", "-o", "value", property, dataset])?;
    parse_size(out.trim()).ok_or_else(|| StoreError::Command {
        command: format!("zfs get -H -p -o value {property} {dataset}"),
        status: "unparsable output".to_owned(),
        stderr: format!("{property} of {dataset} is {:?}", out.trim()),
    })
}

/// Parses a size as zfs prints it: raw bytes (`-p`) or human units (`1.5G`, `680K`).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let shift = match unit.trim_end_matches(['B', 'b']).to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        "E" => 60,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    (value >= 0.0).then(|| (value * (1u64 << shift) as f64) as u64)
}

/// Destroys a dataset with its snapshots (`-r`), unmounting it first and retrying while it
/// is busy. A dataset that is already gone is fine. `recursive_clones` adds `-R` (clones of
/// its snapshots too).
pub fn destroy(dataset: &str, recursive_clones: bool) -> Result<(), StoreError> {
    if !dataset.contains('@') {
        match unmount(dataset) {
            Err(e) if is_missing(&e) => return Ok(()),
            _ => {}
        }
    }
    let flag = if recursive_clones { "-R" } else { "-r" };
    match zfs_retry(&["destroy", flag, dataset]) {
        Ok(_) => Ok(()),
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Destroys a snapshot now, or when its last clone goes (`destroy -d`).
pub fn destroy_deferred(snapshot: &str) -> Result<(), StoreError> {
    match zfs_retry(&["destroy", "-d", snapshot]) {
        Ok(_) => Ok(()),
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("696320"), Some(696320));
        assert_eq!(parse_size("680K"), Some(680 * 1024));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("-"), None);
        assert_eq!(parse_size("12Q"), None);
    }

    #[test]
    fn classifies_errors() {
        let missing = StoreError::Command {
            command: "zfs get".into(),
            status: "exit status: 1".into(),
            stderr: "cannot open 'p/x': dataset does not exist".into(),
        };
        assert!(is_missing(&missing));
        assert!(!is_already_exists(&missing));
        assert!(!is_created_not_mounted(&missing));
        // What zfs-fuse said when ten processes opened one new store at once.
        let racing = StoreError::Command {
            command: "zfs create p/state".into(),
            status: "exit status: 1".into(),
            stderr: "cannot mount 'p/state': mountpoint or dataset is busy".into(),
        };
        assert!(is_created_not_mounted(&racing) && !is_missing(&racing));
    }

    #[test]
    fn a_missing_zfs_binary_is_an_error_not_a_panic() {
        // With PATH pointing nowhere the command cannot start; it must come back as an error.
        let err = command::run("/nonexistent/zfs", &["list"]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/zfs"));
    }
}
