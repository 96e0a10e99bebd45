//! Fakes of strata's store and sandbox, for unit tests of the builder and the catalog that
//! run without root, mounts or an OCI runtime (as travis-worker ships a "fake" provider).
//!
//! - [`FakeStore`] implements [`strata_stores::Store`]: an in-memory index over plain
//!   directories in a temporary directory, honouring the store contract (per-id lock,
//!   `Exists` for committed ids, invisible pending items, generation-checked cache leases),
//!   with scripted faults, a scripted disk and a log of calls.
//! - [`FakeSandbox`] implements [`strata_sandbox::Sandbox`]: [`Rule`]s matched on the step's
//!   command write to the log and the rootfs and decide the [`strata_sandbox::Outcome`];
//!   steps can block until a [`Gate`] opens or they are cancelled; every run is recorded and
//!   the peak of concurrent runs is counted.
//!
//! Both are `Send + Sync`, for `Arc<dyn Store>` / `Arc<dyn Sandbox>` shared by builder
//! threads.

mod sandbox;
mod store;

pub use sandbox::{FakeSandbox, Gate, MemoryLog, Rule, SandboxCall};
pub use store::{FakeStore, Outstanding, PrepareOutcome, StoreCall, StoreOp};

use strata_stores::StoreError;

/// `ENOSPC` on Linux (every architecture).
pub const ENOSPC: i32 = 28;

/// A "no space left on device" store error (ENOSPC), for scripted faults:
/// `store.fail_next_commits(1, fakes::no_space)`.
pub fn no_space() -> StoreError {
    StoreError::io("fake store", std::io::Error::from_raw_os_error(ENOSPC))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use strata_sandbox::{BindMount, Cancel, Outcome, RunConfig, Sandbox, SandboxError};
    use strata_stores::{PendingItem, Prepared, StepId, Store, StoreError};

    const WAIT: Duration = Duration::from_secs(10);

    fn id(n: u64) -> StepId {
        format!("{n:064x}").parse().unwrap()
    }

    fn pending<'a>(store: &'a dyn Store, base: Option<&StepId>, id: &StepId) -> Box<dyn PendingItem + 'a> {
        match store.prepare(base, id).unwrap() {
            Prepared::Pending(p) => p,
            Prepared::Exists(p) => panic!("{id} exists at {}", p.display()),
        }
    }

    fn write(dir: &Path, rel: &str, content: &str) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn read(dir: &Path, rel: &str) -> Option<String> {
        fs::read_to_string(dir.join(rel)).ok()
    }

    fn build(store: &dyn Store, base: Option<&StepId>, id: &StepId, rel: &str, content: &str) -> PathBuf {
        let p = pending(store, base, id);
        write(p.path(), rel, content);
        p.commit().unwrap().path
    }

    fn shell(command: &str) -> RunConfig {
        RunConfig::new(vec!["/bin/sh".into(), "-c".into(), command.into()])
    }

    #[test]
    fn fakes_are_shareable_trait_objects() {
        let store: Arc<dyn Store> = Arc::new(FakeStore::new().unwrap());
        let sandbox: Arc<dyn Sandbox> = Arc::new(FakeSandbox::new());
        assert!(store.root().is_dir());
        assert!(store.state_dir().is_dir());
        assert!(store.state_dir().starts_with(store.root()));
        drop(sandbox);
    }

    #[test]
    fn store_prepare_commit_result_exists_roundtrip() {
        let store = FakeStore::new().unwrap();
        assert!(store.result(&id(1)).unwrap().is_none());
        assert!(store.list_results().unwrap().is_empty());
        assert!(matches!(store.rootfs(&id(1)), Err(StoreError::NotFound(_))));

        let p = pending(&store, None, &id(1));
        let tmp = p.path().to_path_buf();
        assert!(
            tmp.is_dir() && fs::read_dir(&tmp).unwrap().next().is_none(),
            "an empty item"
        );
        write(&tmp, "rootfs/etc/hello", "hello");
        write(&tmp, "log", "a log\n");
        assert!(store.result(&id(1)).unwrap().is_none(), "invisible until commit");
        assert_eq!(store.outstanding().pending, 1);
        let committed = p.commit().unwrap();
        assert!(!tmp.exists());
        assert_eq!(committed.size_bytes, 11, "apparent size of rootfs/etc/hello and log");
        assert_eq!(store.result(&id(1)).unwrap(), Some(committed.path.clone()));
        assert_eq!(committed.path, store.root().join("result").join(id(1).as_str()));
        assert_eq!(read(&committed.path, "log").as_deref(), Some("a log\n"));
        assert_eq!(store.list_results().unwrap(), vec![id(1)]);
        {
            let view = store.rootfs(&id(1)).unwrap();
            assert_eq!(read(view.path(), "etc/hello").as_deref(), Some("hello"));
            assert_eq!(store.outstanding().views, 1);
        }
        match store.prepare(None, &id(1)).unwrap() {
            Prepared::Exists(path) => assert_eq!(path, committed.path),
            Prepared::Pending(_) => panic!("a committed id must give Exists"),
        }
        assert_eq!(store.prepares(&id(1)), 2);
        assert_eq!(store.builds(&id(1)), 1);
        assert_eq!(store.commits(&id(1)), 1);
        assert_eq!(store.outstanding(), Outstanding::default());
        assert_eq!(store.disk().free_bytes, (1 << 40) - 11);
        assert!(store.incomplete_items().unwrap().is_empty());
        assert!(store.violations().is_empty());
    }

    #[test]
    fn store_clone_copies_the_parent_and_leaves_it_alone() {
        let store = FakeStore::new().unwrap();
        store
            .seed(None, &id(1), |dir| {
                fs::create_dir_all(dir.join("rootfs/bin"))?;
                fs::write(dir.join("rootfs/keep"), "original")?;
                fs::write(dir.join("rootfs/gone"), "original")?;
                fs::write(dir.join("rootfs/bin/tool"), "#!/bin/sh\n")?;
                fs::set_permissions(dir.join("rootfs/bin/tool"), fs::Permissions::from_mode(0o755))?;
                std::os::unix::fs::symlink("bin/tool", dir.join("rootfs/link"))?;
                fs::create_dir(dir.join("rootfs/ro"))?;
                fs::write(dir.join("rootfs/ro/f"), "x")?;
                fs::set_permissions(dir.join("rootfs/ro"), fs::Permissions::from_mode(0o555))
            })
            .unwrap();
        assert!(store.calls().is_empty(), "seeding is not logged");
        let p = pending(&store, Some(&id(1)), &id(2));
        let dir = p.path().to_path_buf();
        assert_eq!(read(&dir, "rootfs/keep").as_deref(), Some("original"));
        let tool = fs::metadata(dir.join("rootfs/bin/tool")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o7777, 0o755);
        assert_eq!(fs::read_link(dir.join("rootfs/link")).unwrap(), Path::new("bin/tool"));
        assert_eq!(read(&dir, "rootfs/ro/f").as_deref(), Some("x"));
        fs::write(dir.join("rootfs/keep"), "changed").unwrap();
        fs::remove_file(dir.join("rootfs/gone")).unwrap();
        let child = p.commit().unwrap().path;
        let base = store.result(&id(1)).unwrap().unwrap();
        assert_eq!(read(&base, "rootfs/keep").as_deref(), Some("original"));
        assert_eq!(read(&base, "rootfs/gone").as_deref(), Some("original"));
        assert_eq!(read(&child, "rootfs/keep").as_deref(), Some("changed"));
        assert_eq!(read(&child, "rootfs/gone"), None);
        assert_eq!(store.parent_of(&id(2)), Some(id(1)));
        assert!(matches!(
            store.prepare(Some(&id(9)), &id(3)),
            Err(StoreError::NotFound(_))
        ));
        // Deleting read-only directories needs no root.
        store.delete(&id(2)).unwrap();
        store.delete(&id(1)).unwrap();
        assert!(store.violations().is_empty(), "{:?}", store.violations());
    }

    #[test]
    fn store_scripted_commit_failure_discards_the_item() {
        let store = FakeStore::new().unwrap();
        store.fail_next_commits(1, no_space);
        let p = pending(&store, None, &id(1));
        let tmp = p.path().to_path_buf();
        write(&tmp, "rootfs/a", "a");
        let err = p.commit().unwrap_err();
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.raw_os_error() == Some(ENOSPC)),
            "{err}"
        );
        assert!(!tmp.exists(), "the failed item is discarded");
        assert!(store.result(&id(1)).unwrap().is_none());
        assert_eq!(store.outstanding(), Outstanding::default());
        // The fault is used up and the per-id lock released: the retry builds.
        build(&store, None, &id(1), "rootfs/a", "b");
        assert_eq!(store.builds(&id(1)), 2);
        assert_eq!(store.commits(&id(1)), 1);
        assert_eq!(
            store.calls(),
            vec![
                StoreCall::Prepare {
                    base: None,
                    id: id(1),
                    outcome: PrepareOutcome::Pending
                },
                StoreCall::Commit { id: id(1), ok: false },
                StoreCall::Discard(id(1)),
                StoreCall::Prepare {
                    base: None,
                    id: id(1),
                    outcome: PrepareOutcome::Pending
                },
                StoreCall::Commit { id: id(1), ok: true },
            ]
        );
    }

    #[test]
    fn store_faults_target_ids_and_run_out() {
        let store = FakeStore::new().unwrap();
        store.fail_for(StoreOp::Prepare, id(2), 2, || StoreError::Btrfs("scripted".into()));
        store.fail_next_deletes(1, || StoreError::Busy("x".into()));
        build(&store, None, &id(1), "rootfs/a", "a");
        for _ in 0..2 {
            assert!(matches!(store.prepare(None, &id(2)), Err(StoreError::Btrfs(_))));
        }
        build(&store, None, &id(2), "rootfs/a", "a");
        assert!(store.delete(&id(1)).is_err());
        assert!(
            store.result(&id(1)).unwrap().is_some(),
            "a failed delete keeps the item"
        );
        store.delete(&id(1)).unwrap();
        assert_eq!(store.deletes(&id(1)), 1);
        store.fail(StoreOp::DiskUsage, 1, no_space);
        assert!(store.disk_usage().is_err());
        store.fail(StoreOp::Result, 3, no_space);
        store.clear_faults();
        assert!(store.result(&id(2)).unwrap().is_some());
    }

    #[test]
    fn store_abort_and_drop_leave_nothing_and_stale_temporaries_are_reported() {
        let store = FakeStore::new().unwrap();
        let p = pending(&store, None, &id(1));
        let tmp = p.path().to_path_buf();
        p.abort().unwrap();
        assert!(!tmp.exists());
        let p = pending(&store, None, &id(1));
        let tmp = p.path().to_path_buf();
        drop(p);
        assert!(!tmp.exists());
        assert!(store.result(&id(1)).unwrap().is_none());

        let live = pending(&store, None, &id(2));
        let lease = store.cache("c", 0, 0).unwrap();
        fs::create_dir(store.root().join("result-tmp/crashed")).unwrap();
        assert_eq!(
            store.stale_temporaries().unwrap(),
            vec!["result-tmp/crashed".to_owned()]
        );
        assert_eq!(
            store.remove_stale_temporaries().unwrap(),
            vec!["result-tmp/crashed".to_owned()]
        );
        assert!(store.stale_temporaries().unwrap().is_empty());
        assert!(live.path().is_dir() && lease.path().is_dir(), "live work survives");
        live.commit().unwrap();
        lease.release().unwrap();
        assert!(
            store.incomplete_items().unwrap().iter().any(|(i, _)| *i == id(2)),
            "an item without rootfs/ is incomplete"
        );
    }

    #[test]
    fn store_second_prepare_waits_for_the_first_and_finds_its_result() {
        let store = FakeStore::new().unwrap();
        let p = pending(&store, None, &id(1));
        write(p.path(), "rootfs/a", "first");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| match store.prepare(None, &id(1)).unwrap() {
                Prepared::Exists(path) => read(&path, "rootfs/a"),
                Prepared::Pending(_) => panic!("must wait and find the result"),
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(!waiter.is_finished(), "the per-id lock is held");
            p.commit().unwrap();
            assert_eq!(waiter.join().unwrap().as_deref(), Some("first"));
        });
        assert_eq!(store.builds(&id(1)), 1);
    }

    #[test]
    fn store_disk_usage_follows_commits_and_deletes() {
        let store = FakeStore::new().unwrap();
        store.set_disk_usage(1000, 600);
        store.set_item_size(&id(1), 100);
        store.set_item_size(&id(2), 50);
        assert_eq!(
            build(&store, None, &id(1), "rootfs/a", "a"),
            store.result(&id(1)).unwrap().unwrap()
        );
        build(&store, Some(&id(1)), &id(2), "rootfs/b", "b");
        assert_eq!(store.disk_usage().unwrap().free_bytes, 450);
        store.delete(&id(3)).unwrap();
        store.delete(&id(2)).unwrap();
        assert_eq!(store.disk_usage().unwrap().free_bytes, 500);
        store.set_deferred_frees(true);
        store.delete(&id(1)).unwrap();
        assert_eq!(store.disk_usage().unwrap().free_bytes, 500, "not yet freed");
        store.complete_deletes().unwrap();
        assert_eq!(store.disk_usage().unwrap().free_bytes, 600);
        assert!(store.violations().is_empty());
    }

    #[test]
    fn store_reports_contract_breaches() {
        let store = FakeStore::new().unwrap();
        let base = build(&store, None, &id(1), "rootfs/a", "a");
        build(&store, Some(&id(1)), &id(2), "rootfs/b", "b");
        fs::write(base.join("rootfs/a"), "changed after commit").unwrap();
        store.delete(&id(1)).unwrap();
        let found = store.violations();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("children"), "{found:?}");
        let child = store.result(&id(2)).unwrap().unwrap();
        fs::write(child.join("rootfs/b"), "tampered").unwrap();
        assert!(store.violations().iter().any(|v| v.contains("modified")));

        let p = pending(&store, None, &id(3));
        write(p.path(), "log", "");
        let log = fs::File::open(p.path().join("log")).unwrap();
        p.commit().unwrap();
        drop(log);
        assert!(
            store
                .violations()
                .iter()
                .any(|v| v.contains("open") && v.contains("log")),
            "{:?}",
            store.violations()
        );
    }

    #[test]
    fn store_cache_leases_follow_generations() {
        let store = FakeStore::new().unwrap();
        let lease = store.cache("c", 1000, 1000).unwrap();
        assert!(
            fs::read_dir(lease.path()).unwrap().next().is_none(),
            "a new cache is empty"
        );
        write(lease.path(), "data", "v1");
        lease.release().unwrap();
        assert_eq!(store.list_caches().unwrap(), vec!["c".to_owned()]);

        let a = store.cache("c", 0, 0).unwrap();
        let b = store.cache("c", 0, 0).unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(read(a.path(), "data").as_deref(), Some("v1"));
        write(a.path(), "data", "a");
        write(b.path(), "data", "b");
        assert_eq!(store.outstanding().leases, 2);
        b.release().unwrap();
        a.release().unwrap();
        let lease = store.cache("c", 0, 0).unwrap();
        assert_eq!(
            read(lease.path(), "data").as_deref(),
            Some("b"),
            "the first release wins"
        );
        drop(lease);
        assert!(store.calls().contains(&StoreCall::Release {
            name: "c".into(),
            published: false
        }));

        let old = store.cache("c", 0, 0).unwrap();
        store.delete_cache("c").unwrap();
        assert!(store.list_caches().unwrap().is_empty());
        old.release().unwrap();
        let fresh = store.cache("c", 0, 0).unwrap();
        assert!(
            read(fresh.path(), "data").is_none(),
            "a lease from before the delete is discarded"
        );

        store.set_delete_cache_needs_idle(true);
        assert!(matches!(store.delete_cache("c"), Err(StoreError::Busy(name)) if name == "c"));
        fresh.release().unwrap();
        store.delete_cache("c").unwrap();
        store.delete_cache("never-existed").unwrap();

        for name in ["../x", "a/b", "", "é"] {
            let lease = store.cache(name, 0, 0).unwrap();
            assert!(lease.path().starts_with(store.root()));
            lease.release().unwrap();
        }
        assert!(matches!(
            store.cache(&"x/".repeat(200), 0, 0),
            Err(StoreError::InvalidCacheName { .. })
        ));
        assert_eq!(store.list_caches().unwrap().len(), 4);
        assert!(store.stale_temporaries().unwrap().is_empty());
        assert_eq!(store.outstanding(), Outstanding::default());
        assert!(store.calls().contains(&StoreCall::Cache {
            name: "c".into(),
            uid: 1000,
            gid: 1000
        }));
    }

    #[test]
    fn store_builds_concurrently_from_several_threads() {
        let store = FakeStore::new().unwrap();
        store
            .seed(None, &id(100), |dir| fs::create_dir(dir.join("rootfs")))
            .unwrap();
        std::thread::scope(|s| {
            for n in 0..8u64 {
                let store = &store;
                s.spawn(move || {
                    for _ in 0..3 {
                        if let Prepared::Pending(p) = store.prepare(Some(&id(100)), &id(n % 4)).unwrap() {
                            write(p.path(), "rootfs/n", &n.to_string());
                            p.commit().unwrap();
                        }
                    }
                });
            }
        });
        for n in 0..4 {
            assert_eq!(store.builds(&id(n)), 1, "{n} built once");
        }
        assert_eq!(store.outstanding(), Outstanding::default());
    }

    // ------------------------------------------------------------ sandbox

    #[test]
    fn sandbox_default_is_success_and_calls_are_recorded() {
        let sandbox = FakeSandbox::new();
        let rootfs = tempfile::tempdir().unwrap();
        let log = MemoryLog::new();
        let mut config = shell("true");
        config.cwd = "/src".into();
        config.env = vec![("A".into(), "1".into()), ("A".into(), "2".into())];
        config.uid = 1000;
        config.gid = 1001;
        config.mounts = vec![BindMount {
            source: "/host/cache".into(),
            target: "/cache".into(),
            readonly: false,
        }];
        let outcome = sandbox.run(&config, rootfs.path(), &log, &Cancel::new()).unwrap();
        assert_eq!(outcome, Outcome::Exited(0));
        let calls = sandbox.calls();
        assert_eq!(calls.len(), 1);
        let call = &calls[0];
        assert_eq!(call.command(), "true");
        assert_eq!(call.config.argv, vec!["/bin/sh", "-c", "true"]);
        assert_eq!(call.config.cwd, "/src");
        assert_eq!(call.env("A"), Some("2"));
        assert_eq!((call.config.uid, call.config.gid), (1000, 1001));
        assert_eq!(call.config.mounts[0].target, "/cache");
        assert_eq!(call.rootfs, rootfs.path());
        assert_eq!(call.result, Some(Ok(Outcome::Exited(0))));
        assert!(log.text().is_empty());
    }

    #[test]
    fn sandbox_rules_match_newest_first_and_run_their_actions() {
        let sandbox = FakeSandbox::new();
        sandbox
            .add(Rule::any().exit(7))
            .add(
                Rule::command("make")
                    .log("building\n")
                    .write("/out/app", "binary")
                    .append("notes", "one\n")
                    .append("notes", "two\n")
                    .mkdir("/var/empty")
                    .symlink("app", "/out/link")
                    .remove("/etc/gone"),
            )
            .add(Rule::contains("apt-get").log("E: no network\n").exit(100).times(1));
        let rootfs = tempfile::tempdir().unwrap();
        write(rootfs.path(), "etc/gone", "x");
        let cancel = Cancel::new();
        let run = |command: &str, log: &MemoryLog| {
            let mut config = shell(command);
            config.cwd = "/src".into();
            sandbox.run(&config, rootfs.path(), log, &cancel).unwrap()
        };
        let log = MemoryLog::new();
        assert_eq!(run("make", &log), Outcome::Exited(0));
        assert_eq!(log.text(), "building\n");
        assert_eq!(read(rootfs.path(), "out/app").as_deref(), Some("binary"));
        assert_eq!(read(rootfs.path(), "src/notes").as_deref(), Some("one\ntwo\n"));
        assert!(rootfs.path().join("var/empty").is_dir());
        assert_eq!(fs::read_link(rootfs.path().join("out/link")).unwrap(), Path::new("app"));
        assert!(!rootfs.path().join("etc/gone").exists());

        let log = MemoryLog::new();
        assert_eq!(run("apt-get install -y x", &log), Outcome::Exited(100));
        assert_eq!(log.text(), "E: no network\n");
        assert_eq!(run("apt-get install -y x", &log), Outcome::Exited(7), "used up");
        assert_eq!(run("make all", &log), Outcome::Exited(7), "exact match only");
        assert_eq!(sandbox.runs_of("make"), 1);
        assert_eq!(
            sandbox.commands(),
            vec!["make", "apt-get install -y x", "apt-get install -y x", "make all"]
        );
        sandbox.clear_rules();
        assert_eq!(run("anything", &log), Outcome::Exited(0));
    }

    #[test]
    fn sandbox_writes_go_through_mounts_and_fail_on_read_only_ones() {
        let sandbox = FakeSandbox::new();
        sandbox.add(
            Rule::command("fill")
                .write("/cache/sub/data", "cached")
                .write("/etc/x", "y"),
        );
        sandbox.add(Rule::command("ro").write("/ro/f", "x").exit(0));
        sandbox.add(Rule::command("escape").write("../../x", "x"));
        let rootfs = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut config = shell("fill");
        config.mounts = vec![
            BindMount {
                source: cache.path().into(),
                target: "/cache".into(),
                readonly: false,
            },
            BindMount {
                source: "/nonexistent".into(),
                target: "/ro".into(),
                readonly: true,
            },
        ];
        let log = MemoryLog::new();
        let cancel = Cancel::new();
        assert_eq!(
            sandbox.run(&config, rootfs.path(), &log, &cancel).unwrap(),
            Outcome::Exited(0)
        );
        assert_eq!(read(cache.path(), "sub/data").as_deref(), Some("cached"));
        assert!(!rootfs.path().join("cache").exists());
        assert_eq!(read(rootfs.path(), "etc/x").as_deref(), Some("y"));
        config.argv[2] = "ro".into();
        assert_eq!(
            sandbox.run(&config, rootfs.path(), &log, &cancel).unwrap(),
            Outcome::Exited(1)
        );
        assert!(log.text().contains("read-only file system"), "{}", log.text());
        config.argv[2] = "escape".into();
        assert_eq!(
            sandbox.run(&config, rootfs.path(), &log, &cancel).unwrap(),
            Outcome::Exited(1)
        );
    }

    #[test]
    fn sandbox_blocked_step_ends_when_cancelled() {
        let sandbox = FakeSandbox::new();
        sandbox.add(Rule::command("sleep 1000").log("started\n").block());
        let rootfs = tempfile::tempdir().unwrap();
        let cancel = Cancel::new();
        let log = MemoryLog::new();
        std::thread::scope(|s| {
            let step = s.spawn(|| sandbox.run(&shell("sleep 1000"), rootfs.path(), &log, &cancel));
            assert!(sandbox.wait_for_command("sleep 1000", WAIT));
            assert_eq!(sandbox.running(), 1);
            std::thread::sleep(Duration::from_millis(20));
            assert!(!step.is_finished());
            cancel.cancel();
            assert_eq!(step.join().unwrap().unwrap(), Outcome::Cancelled);
        });
        assert_eq!(log.text(), "started\n\nstrata: step cancelled, killed\n");
        assert!(sandbox.wait_idle(WAIT));
        assert_eq!(sandbox.calls()[0].result, Some(Ok(Outcome::Cancelled)));
        // A token cancelled beforehand: nothing starts.
        assert_eq!(
            sandbox.run(&shell("x"), rootfs.path(), &log, &cancel).unwrap(),
            Outcome::Cancelled
        );
        assert_eq!(sandbox.calls().len(), 1);
    }

    #[test]
    fn sandbox_gate_releases_steps_and_concurrency_is_counted() {
        let sandbox = FakeSandbox::new();
        let gate = Gate::new();
        sandbox.add(Rule::contains("step").wait(&gate).write("/done", "yes").exit(3));
        let rootfs = tempfile::tempdir().unwrap();
        let cancel = Cancel::new();
        let log = MemoryLog::new();
        std::thread::scope(|s| {
            let steps: Vec<_> = (0..3)
                .map(|n| {
                    let (sandbox, rootfs, log, cancel) = (&sandbox, rootfs.path(), &log, &cancel);
                    s.spawn(move || sandbox.run(&shell(&format!("step {n}")), rootfs, log, cancel))
                })
                .collect();
            assert!(sandbox.wait_for_running(3, WAIT));
            assert!(sandbox.wait_for_calls(3, WAIT));
            assert!(!rootfs.path().join("done").exists(), "still blocked");
            gate.open();
            for step in steps {
                assert_eq!(step.join().unwrap().unwrap(), Outcome::Exited(3));
            }
        });
        assert!(gate.is_open());
        assert_eq!(sandbox.max_running(), 3);
        assert_eq!(sandbox.running(), 0);
        assert_eq!(read(rootfs.path(), "done").as_deref(), Some("yes"));
        sandbox.clear_calls();
        assert!(sandbox.calls().is_empty());
        assert_eq!(sandbox.max_running(), 0);
    }

    #[test]
    fn sandbox_honours_timeout_and_log_limit() {
        let sandbox = FakeSandbox::new();
        sandbox.add(Rule::command("hang").block());
        sandbox.add(Rule::command("nap").sleep(Duration::from_millis(10)).exit(0));
        sandbox.add(Rule::command("chatty").log("0123456789").log("more").exit(0));
        let rootfs = tempfile::tempdir().unwrap();
        let cancel = Cancel::new();

        let mut config = shell("hang");
        config.timeout = Some(Duration::from_millis(50));
        let log = MemoryLog::new();
        let started = Instant::now();
        assert_eq!(
            sandbox.run(&config, rootfs.path(), &log, &cancel).unwrap(),
            Outcome::TimedOut
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(log.text().contains("timed out"), "{}", log.text());

        config.argv[2] = "nap".into();
        assert_eq!(
            sandbox.run(&config, rootfs.path(), &log, &cancel).unwrap(),
            Outcome::Exited(0)
        );

        let mut config = shell("chatty");
        config.log_limit = 4;
        let log = MemoryLog::new();
        assert_eq!(
            sandbox.run(&config, rootfs.path(), &log, &cancel).unwrap(),
            Outcome::LogLimitExceeded
        );
        assert_eq!(log.text(), format!("0123{}", strata_sandbox::output::limit_message(4)));
        config.log_limit = 14;
        assert_eq!(
            sandbox.run(&config, rootfs.path(), &log, &cancel).unwrap(),
            Outcome::Exited(0)
        );
    }

    #[test]
    fn sandbox_custom_actions_and_errors() {
        let sandbox = FakeSandbox::new();
        sandbox.add(Rule::command("check").run(|config, rootfs, log| {
            log.write(format!("uid {}\n", config.uid).as_bytes());
            if rootfs.join("needed").exists() {
                Ok(())
            } else {
                Err(std::io::Error::new(std::io::ErrorKind::NotFound, "needed is missing"))
            }
        }));
        sandbox.add(Rule::command("broken").error(|| SandboxError::Config("scripted".into())));
        sandbox.add(Rule::command("killed").outcome(Outcome::Signaled(9)));
        let rootfs = tempfile::tempdir().unwrap();
        let cancel = Cancel::new();
        let log = MemoryLog::new();
        let run = |command: &str| sandbox.run(&shell(command), rootfs.path(), &log, &cancel);
        assert_eq!(run("check").unwrap(), Outcome::Exited(1));
        assert!(log.text().contains("needed is missing"), "{}", log.text());
        fs::write(rootfs.path().join("needed"), "").unwrap();
        assert_eq!(run("check").unwrap(), Outcome::Exited(0));
        assert!(matches!(run("broken"), Err(SandboxError::Config(_))));
        assert_eq!(run("killed").unwrap(), Outcome::Signaled(9));
        let results: Vec<_> = sandbox.calls().into_iter().map(|c| c.result).collect();
        assert!(matches!(&results[2], Some(Err(message)) if message.contains("scripted")));
    }
}
