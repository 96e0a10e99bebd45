//! Unit tests of the catalog over testkit's `FakeStore` (no root): commit with its row,
//! adoption, prune order and targets, leases, delete of a tree, caches, reconcile of each
//! inconsistency. The end-to-end tests run the same code on real stores.

use std::sync::Arc;

use strata_sandbox::Cancel;
use strata_stores::{StepId, Store};
use strata_testkit::fakes::FakeStore;

use super::prune::{KeepFree, PruneOptions};
use super::reconcile::Problem;
use super::{Catalog, CatalogError, ItemMeta, Record, Slot, ITEM_META};

fn id(n: u8) -> StepId {
    StepId::from_digest(&[n; 32])
}

struct Fixture {
    store: Arc<FakeStore>,
    catalog: Catalog,
}

impl Fixture {
    fn new() -> Fixture {
        let store = Arc::new(FakeStore::new().unwrap());
        let catalog = Catalog::open(store.clone() as Arc<dyn Store>, None).unwrap();
        Fixture { store, catalog }
    }

    /// Builds item `n` on `parent` through the catalog, as a build does; `size` bytes.
    fn add(&self, n: u8, parent: Option<u8>, size: u64) {
        let (id, parent) = (id(n), parent.map(id));
        self.store.set_item_size(&id, size);
        let Slot::Pending(pending) = self.catalog.get_or_prepare(parent.as_ref(), &id).unwrap() else {
            panic!("{id} exists already");
        };
        std::fs::create_dir_all(pending.path().join("rootfs")).unwrap();
        self.catalog
            .commit(
                pending,
                &Record {
                    id: &id,
                    parent: parent.as_ref(),
                    op: &format!("(run (shell \"step {n}\"))"),
                    duration_ms: 5,
                    base_digest: None,
                },
            )
            .unwrap();
    }

    /// Items in the database, as numbers.
    fn rows(&self) -> Vec<u8> {
        let mut rows: Vec<u8> = self
            .catalog
            .items()
            .unwrap()
            .iter()
            .map(|r| (0..=255u8).find(|n| id(*n) == r.id).unwrap())
            .collect();
        rows.sort();
        rows
    }

    fn prune(&self, options: PruneOptions) -> Vec<u8> {
        let report = self.catalog.prune(&options, &mut |_| {}).unwrap();
        report
            .removed
            .iter()
            .map(|r| (0..=255u8).find(|n| id(*n) == r.id).unwrap())
            .collect()
    }

    /// Marks items used in this order (oldest first), a millisecond apart.
    fn use_in_order(&self, order: &[u8]) {
        for n in order {
            std::thread::sleep(std::time::Duration::from_millis(2));
            self.catalog.touch(&id(*n)).unwrap();
        }
    }
}

fn everything() -> PruneOptions {
    PruneOptions {
        before_ms: i64::MAX,
        ..PruneOptions::default()
    }
}

#[test]
fn commit_writes_the_item_record_and_the_row() {
    let f = Fixture::new();
    f.add(1, None, 100);
    f.add(2, Some(1), 50);
    let row = f.catalog.item(&id(2)).unwrap();
    assert_eq!((row.parent, row.size, row.duration_ms), (Some(id(1)), 50, 5));
    assert_eq!(f.catalog.item(&id(1)).unwrap().children, 1);
    let item = f.catalog.result(&id(2)).unwrap().unwrap();
    let meta = ItemMeta::read(&item).unwrap();
    assert_eq!((meta.id, meta.parent), (id(2).to_string(), Some(id(1).to_string())));
    // Asked again: cached, with the same row.
    assert!(matches!(
        f.catalog.get_or_prepare(Some(&id(1)), &id(2)).unwrap(),
        Slot::Cached(_)
    ));
    assert_eq!(f.rows(), vec![1, 2]);
}

#[test]
fn a_committed_item_without_a_row_is_adopted_when_asked_for() {
    let f = Fixture::new();
    // A process killed between the store's commit and the insert.
    f.store
        .seed(None, &id(1), |item| {
            std::fs::create_dir_all(item.join("rootfs"))?;
            let meta = ItemMeta {
                id: id(1).to_string(),
                parent: None,
                op: "(from busybox)".into(),
                scheme: "v1".into(),
                base_digest: Some("sha256:abc".into()),
                duration_ms: 7,
            };
            std::fs::write(item.join(ITEM_META), serde_json::to_vec(&meta).unwrap())
        })
        .unwrap();
    assert!(matches!(
        f.catalog.get_or_prepare(None, &id(1)).unwrap(),
        Slot::Cached(_)
    ));
    let row = f.catalog.item(&id(1)).unwrap();
    assert_eq!((row.op.as_str(), row.duration_ms), ("(from busybox)", 7));
    assert_eq!(row.base_digest.as_deref(), Some("sha256:abc"));
}

#[test]
fn a_pending_clone_starts_without_its_parents_log_and_record() {
    let f = Fixture::new();
    f.add(1, None, 1);
    let parent = f.catalog.result(&id(1)).unwrap().unwrap();
    std::fs::write(parent.join("log"), "parent's output").unwrap_or(());
    let Slot::Pending(pending) = f.catalog.get_or_prepare(Some(&id(1)), &id(2)).unwrap() else {
        panic!("not pending");
    };
    assert!(!pending.path().join("log").exists());
    assert!(!pending.path().join(ITEM_META).exists());
    pending.abort().unwrap();
}

#[test]
fn prune_removes_least_recently_used_leaves_first() {
    let f = Fixture::new();
    // 1 <- 2 <- 3, 1 <- 4
    f.add(1, None, 10);
    f.add(2, Some(1), 10);
    f.add(3, Some(2), 10);
    f.add(4, Some(1), 10);
    f.use_in_order(&[1, 2, 3, 4]);
    // In batches of the current leaves, oldest first (as OBuilder does): 3 and 4; the
    // parent they leave childless is a candidate of the next batch.
    assert_eq!(
        f.prune(PruneOptions {
            limit: Some(2),
            ..everything()
        }),
        vec![3, 4]
    );
    assert_eq!(f.rows(), vec![1, 2]);
    assert!(f.store.violations().is_empty(), "{:?}", f.store.violations());
    // Everything else, children before their parent.
    assert_eq!(f.prune(everything()), vec![2, 1]);
    assert!(f.store.committed().is_empty());
}

#[test]
fn prune_respects_the_age_cutoff() {
    let f = Fixture::new();
    f.add(1, None, 10);
    f.add(2, None, 10);
    f.use_in_order(&[1]);
    let cutoff = f.catalog.item(&id(1)).unwrap().used;
    f.use_in_order(&[2]);
    let removed = f.prune(PruneOptions {
        before_ms: cutoff + 1,
        ..PruneOptions::default()
    });
    assert_eq!(removed, vec![1]);
    assert_eq!(f.rows(), vec![2]);
}

#[test]
fn prune_stops_once_enough_is_free() {
    let f = Fixture::new();
    f.store.set_disk_usage(1000, 1000);
    for n in 1..=5 {
        f.add(n, None, 100);
    }
    f.use_in_order(&[1, 2, 3, 4, 5]);
    assert_eq!(f.store.disk().free_bytes, 500);
    // 500 free; 70% wanted: two items go.
    let removed = f.prune(PruneOptions {
        keep_free: Some(KeepFree::Percent(70.0)),
        ..everything()
    });
    assert_eq!(removed, vec![1, 2]);
    // A byte target, with a cleaner that frees space late (btrfs): judged on recorded sizes.
    f.store.set_deferred_frees(true);
    let removed = f.prune(PruneOptions {
        keep_free: Some(KeepFree::Bytes(900)),
        ..everything()
    });
    assert_eq!(removed, vec![3, 4], "no more than needed while the cleaner lags");
}

#[test]
fn prune_stops_at_the_size_target() {
    let f = Fixture::new();
    for n in 1..=4 {
        f.add(n, None, 100);
    }
    f.use_in_order(&[1, 2, 3, 4]);
    let removed = f.prune(PruneOptions {
        max_used: Some(250),
        ..everything()
    });
    assert_eq!(removed, vec![1, 2]);
}

/// The bug: `--dry-run` planned one leaf at a time (a parent left childless went next when
/// older), while prune removes the current leaves in batches: on this tree the dry run named
/// [3, 2] and prune removed [3, 4]. Seen failing before `plan_prune` batched the same way.
#[test]
fn prune_dry_run_named_other_items_than_prune_removed() {
    let f = Fixture::new();
    f.add(1, None, 10);
    f.add(2, Some(1), 10);
    f.add(3, Some(2), 10);
    f.add(4, Some(1), 10);
    f.use_in_order(&[1, 2, 3, 4]);
    let limit = |dry_run| PruneOptions {
        dry_run,
        limit: Some(2),
        ..everything()
    };
    let planned = f.prune(limit(true));
    assert_eq!(f.rows(), vec![1, 2, 3, 4], "a dry run changes nothing");
    assert_eq!(planned, f.prune(limit(false)));
}

#[test]
fn prune_dry_run_changes_nothing_and_names_the_same_items() {
    let f = Fixture::new();
    f.add(1, None, 10);
    f.add(2, Some(1), 10);
    f.add(3, None, 10);
    f.use_in_order(&[3, 1, 2]);
    let planned = f.prune(PruneOptions {
        dry_run: true,
        limit: Some(2),
        ..everything()
    });
    assert_eq!(f.rows(), vec![1, 2, 3]);
    let done = f.prune(PruneOptions {
        limit: Some(2),
        ..everything()
    });
    assert_eq!(planned, done);
    assert_eq!(done, vec![3, 2]);
}

#[test]
fn prune_and_delete_skip_what_a_build_holds() {
    let f = Fixture::new();
    f.add(1, None, 10);
    f.add(2, Some(1), 10);
    let lease = f.catalog.lease(&id(2), &Cancel::new()).unwrap();
    let report = f.catalog.prune(&everything(), &mut |_| {}).unwrap();
    assert!(report.removed.is_empty());
    assert_eq!(report.skipped_in_use, 1);
    let removed = f.catalog.delete_tree(&id(1), &mut |_| {}).unwrap();
    assert!(removed.is_empty(), "the held child keeps its parent");
    drop(lease);
    let removed = f.catalog.delete_tree(&id(1), &mut |_| {}).unwrap();
    assert_eq!(removed, vec![id(2), id(1)], "children first");
    assert!(f.rows().is_empty());
}

#[test]
fn a_lease_wait_ends_when_cancelled() {
    let f = Fixture::new();
    f.add(1, None, 10);
    let exclusive = f.catalog.leases.try_exclusive(&id(1)).unwrap().unwrap();
    let cancel = Cancel::new();
    cancel.cancel();
    assert!(matches!(f.catalog.lease(&id(1), &cancel), Err(CatalogError::Cancelled)));
    drop(exclusive);
}

#[test]
fn caches_join_the_store_and_the_database() {
    let f = Fixture::new();
    let lease = f.catalog.cache("apt", 0, 0).unwrap();
    lease.release().unwrap();
    let caches = f.catalog.caches().unwrap();
    assert_eq!(caches.len(), 1);
    assert!(caches[0].on_disk && caches[0].used.is_some());
    f.catalog.remove_cache("apt").unwrap();
    assert!(f.catalog.caches().unwrap().is_empty());
    assert!(f.store.list_caches().unwrap().is_empty());
    assert!(matches!(f.catalog.remove_cache("apt"), Err(CatalogError::NotFound(_))));
}

#[test]
fn prune_with_caches_removes_idle_caches() {
    let f = Fixture::new();
    f.catalog.cache("a", 0, 0).unwrap().release().unwrap();
    let report = f
        .catalog
        .prune(
            &PruneOptions {
                caches: true,
                ..PruneOptions::default()
            },
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(report.caches_removed, vec!["a".to_owned()]);
    assert!(f.catalog.caches().unwrap().is_empty());
}

fn problems(f: &Fixture) -> Vec<Problem> {
    f.catalog.reconcile(false).unwrap().problems
}

#[test]
fn reconcile_finds_and_repairs_a_row_without_its_item() {
    let f = Fixture::new();
    f.add(1, None, 10);
    f.add(2, Some(1), 10);
    f.add(3, Some(2), 10);
    // Item 2 deleted behind strata's back: its row goes, with its descendants.
    f.store.delete(&id(3)).unwrap();
    f.store.delete(&id(2)).unwrap();
    let found = problems(&f);
    assert!(
        found.contains(&Problem::RowWithoutResult { id: id(2).to_string() }),
        "{found:?}"
    );
    let report = f.catalog.reconcile(true).unwrap();
    assert!(!report.repairs.is_empty());
    assert_eq!(f.rows(), vec![1]);
    assert!(problems(&f).is_empty());
}

#[test]
fn reconcile_adopts_an_item_without_a_row_and_removes_one_it_cannot_adopt() {
    let f = Fixture::new();
    f.add(1, None, 10);
    let meta = |n: u8, parent: Option<u8>| ItemMeta {
        id: id(n).to_string(),
        parent: parent.map(|p| id(p).to_string()),
        op: format!("step {n}"),
        scheme: "v1".into(),
        base_digest: None,
        duration_ms: 1,
    };
    let seed = |n: u8, parent: Option<u8>, meta: Option<ItemMeta>| {
        f.store
            .seed(parent.map(id).as_ref(), &id(n), |item| {
                std::fs::create_dir_all(item.join("rootfs"))?;
                match meta {
                    Some(m) => std::fs::write(item.join(ITEM_META), serde_json::to_vec(&m).unwrap()),
                    None => std::fs::remove_file(item.join(ITEM_META)).or(Ok(())),
                }
            })
            .unwrap();
    };
    seed(2, Some(1), Some(meta(2, Some(1))));
    seed(3, Some(2), Some(meta(3, Some(2))));
    seed(4, None, None);
    let found = problems(&f);
    for n in [2, 3, 4] {
        assert!(
            found.contains(&Problem::ResultWithoutRow { id: id(n).to_string() }),
            "{found:?}"
        );
    }
    f.catalog.reconcile(true).unwrap();
    assert_eq!(
        f.rows(),
        vec![1, 2, 3],
        "2 and 3 adopted (3's parent adopted in the same pass)"
    );
    assert_eq!(f.catalog.item(&id(3)).unwrap().parent, Some(id(2)));
    assert!(
        !f.store.committed().contains(&id(4)),
        "no record of how 4 was made: removed"
    );
    assert!(problems(&f).is_empty());
}

#[test]
fn reconcile_removes_an_incomplete_item_and_its_descendants() {
    let f = Fixture::new();
    f.add(1, None, 10);
    f.add(2, Some(1), 10);
    f.add(3, Some(2), 10);
    let item = f.catalog.result(&id(2)).unwrap().unwrap();
    std::fs::remove_dir_all(item.join("rootfs")).unwrap();
    let found = problems(&f);
    assert!(
        found
            .iter()
            .any(|p| matches!(p, Problem::IncompleteItem { id: i, .. } if *i == id(2).to_string())),
        "{found:?}"
    );
    f.catalog.reconcile(true).unwrap();
    assert_eq!(f.rows(), vec![1]);
    assert!(problems(&f).is_empty());
}

#[test]
fn reconcile_reports_and_removes_rows_that_are_not_step_ids() {
    let f = Fixture::new();
    f.add(1, None, 10);
    f.catalog.db().insert_raw_for_tests("../../etc", None).unwrap();
    assert_eq!(problems(&f), vec![Problem::InvalidRow { id: "../../etc".into() }]);
    f.catalog.reconcile(true).unwrap();
    assert!(problems(&f).is_empty());
    assert_eq!(f.rows(), vec![1]);
}

#[test]
fn reconcile_reports_a_stale_temporary() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.store.root().join("result-tmp/dead-build")).unwrap();
    let found = problems(&f);
    assert!(
        found.contains(&Problem::StaleTemporary {
            name: "result-tmp/dead-build".into()
        }),
        "{found:?}"
    );
    f.catalog.reconcile(true).unwrap();
    assert!(problems(&f).is_empty());
}
