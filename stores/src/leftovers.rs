//! Start-up reconcile of temporaries: remove what no live process owns, keep the rest.

use std::path::Path;

use crate::layout::Layout;
use crate::owner::{is_orphan, ProcessOwner};
use crate::StoreError;

/// Removes every entry of `dir` whose owner process is dead (or that carries no owner tag),
/// with the backend's `remove` (a subvolume delete, a dataset destroy, a tree removal).
/// Entries of live processes, this one included, are kept. Returns the removed names.
/// A failing removal is logged and skipped, so one stubborn leftover does not stop a store
/// from opening; the next open tries again.
pub fn remove_orphans(
    owners_dir: &Path,
    dir: &Path,
    mut remove: impl FnMut(&Path) -> Result<(), StoreError>,
) -> Result<Vec<String>, StoreError> {
    let mut removed = Vec::new();
    for name in Layout::entries(dir)? {
        if !is_orphan(owners_dir, &name)? {
            continue;
        }
        let path = dir.join(&name);
        match remove(&path) {
            Ok(()) => removed.push(name),
            Err(e) => tracing::warn!("cannot remove leftover {}: {e}", path.display()),
        }
    }
    Ok(removed)
}

/// The directories of temporaries, by the name the stores report them under.
fn temporary_dirs(layout: &Layout) -> [(&'static str, std::path::PathBuf); 2] {
    [
        ("result-tmp", layout.result_tmp_dir()),
        ("cache-tmp", layout.cache_tmp_dir()),
    ]
}

/// The entries of `result-tmp/` and `cache-tmp/` that no live process owns, as
/// `result-tmp/<name>` and `cache-tmp/<name>`.
pub fn stale_temporaries(layout: &Layout) -> Result<Vec<String>, StoreError> {
    let owners = layout.owners_dir();
    let mut stale = Vec::new();
    for (group, dir) in temporary_dirs(layout) {
        for name in Layout::entries(&dir)? {
            if is_orphan(&owners, &name)? {
                stale.push(format!("{group}/{name}"));
            }
        }
    }
    Ok(stale)
}

/// [`remove_orphans`] on `result-tmp/` and `cache-tmp/`, then forgets dead owners' lock files.
/// Returns the removed entries, named as [`stale_temporaries`] names them.
pub fn reconcile_temporaries(
    layout: &Layout,
    mut remove: impl FnMut(&Path) -> Result<(), StoreError>,
) -> Result<Vec<String>, StoreError> {
    let owners = layout.owners_dir();
    let mut removed = Vec::new();
    for (group, dir) in temporary_dirs(layout) {
        for name in remove_orphans(&owners, &dir, &mut remove)? {
            removed.push(format!("{group}/{name}"));
        }
    }
    ProcessOwner::forget_dead(&owners)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_live_work_and_removes_dead() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create_dirs().unwrap();
        std::fs::create_dir_all(layout.result_tmp_dir()).unwrap();
        let live = ProcessOwner::register(&layout.owners_dir()).unwrap();
        let live_name = live.temp_name("x");
        std::fs::create_dir(layout.result_tmp_dir().join(&live_name)).unwrap();
        std::fs::create_dir(layout.result_tmp_dir().join("1.dead--0-x")).unwrap();
        assert_eq!(
            stale_temporaries(&layout).unwrap(),
            vec!["result-tmp/1.dead--0-x".to_owned()]
        );
        let removed = reconcile_temporaries(&layout, crate::tree_copy::remove_tree).unwrap();
        assert_eq!(removed, vec!["result-tmp/1.dead--0-x".to_owned()]);
        assert!(stale_temporaries(&layout).unwrap().is_empty());
        assert!(layout.result_tmp_dir().join(&live_name).exists());
    }
}
