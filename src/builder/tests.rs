//! Unit tests of the builder's logic over fakes (testkit's `FakeStore` and `FakeSandbox`, and
//! a scripted fetcher here, as the `Fetcher` trait lives in this crate): no root, no
//! runtime, no registry. The end-to-end tests (tests/e2e_*.rs) run the same paths for real.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_sandbox::{Cancel, LogSink};
use strata_stores::{StepId, Store, StoreError};
use strata_testkit::fakes::{FakeSandbox, FakeStore, Rule};

use super::{BuildError, BuildOptions, Builder, ErrorKind, Event, Reporter, StepResult};
use crate::catalog::Catalog;
use crate::fetch::{FetchError, Fetcher, ImageConfig};
use crate::spec::{parse_spec, Spec};

/// A fetcher that "unpacks" an image as a rootfs with one file naming it, and counts fetches.
#[derive(Default)]
pub(crate) struct FakeFetcher {
    fetches: Mutex<HashMap<String, usize>>,
    env: Vec<(String, String)>,
}

impl FakeFetcher {
    pub fn with_env(env: &[(&str, &str)]) -> FakeFetcher {
        FakeFetcher {
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..FakeFetcher::default()
        }
    }

    pub fn fetches(&self, image: &str) -> usize {
        self.fetches.lock().unwrap().get(image).copied().unwrap_or(0)
    }
}

impl Fetcher for FakeFetcher {
    fn fetch(&self, image: &str, rootfs: &Path, _: &dyn LogSink, _: &Cancel) -> Result<ImageConfig, FetchError> {
        *self.fetches.lock().unwrap().entry(image.to_owned()).or_default() += 1;
        let io = |e| FetchError::Io {
            context: format!("faking {image}"),
            source: e,
        };
        std::fs::create_dir_all(rootfs.join("etc")).map_err(io)?;
        std::fs::write(rootfs.join("etc/image"), image).map_err(io)?;
        Ok(ImageConfig {
            env: self.env.clone(),
            workdir: None,
            user: None,
            digest: Some(format!("sha256:{}", "0".repeat(64))),
            resolved: Some(image.to_owned()),
        })
    }
}

/// Records each finished step: its id and whether it was built or cached.
#[derive(Default)]
pub(crate) struct Steps {
    done: Mutex<Vec<(String, StepResult)>>,
}

impl Reporter for Steps {
    fn event(&self, event: Event<'_>) {
        if let Event::StepDone { id, result, .. } = event {
            self.done.lock().unwrap().push((id.to_owned(), result));
        }
    }
}

impl Steps {
    fn results(&self) -> Vec<StepResult> {
        self.done.lock().unwrap().iter().map(|(_, r)| *r).collect()
    }
}

pub(crate) struct Fixture {
    pub store: Arc<FakeStore>,
    pub sandbox: Arc<FakeSandbox>,
    pub fetcher: Arc<FakeFetcher>,
    pub builder: Builder,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_fetcher(FakeFetcher::default())
    }

    pub fn with_fetcher(fetcher: FakeFetcher) -> Fixture {
        let store = Arc::new(FakeStore::new().unwrap());
        let sandbox = Arc::new(FakeSandbox::new());
        let fetcher = Arc::new(fetcher);
        let catalog = Catalog::open(store.clone() as Arc<dyn Store>, None).unwrap();
        let builder = Builder::new(Arc::new(catalog), sandbox.clone(), fetcher.clone());
        Fixture {
            store,
            sandbox,
            fetcher,
            builder,
        }
    }

    pub fn build(&self, spec: &Spec, reporter: &dyn Reporter) -> Result<StepId, BuildError> {
        self.build_with(spec, &BuildOptions::default(), reporter, &Cancel::new())
    }

    pub fn build_with(
        &self,
        spec: &Spec,
        options: &BuildOptions,
        reporter: &dyn Reporter,
        cancel: &Cancel,
    ) -> Result<StepId, BuildError> {
        self.builder.build(spec, options, reporter, cancel)
    }
}

pub(crate) fn spec(text: &str) -> Spec {
    parse_spec(Path::new("test.spec"), text).unwrap()
}

/// The user the tests' copies own files as: this process's own, so no root is needed.
fn me() -> (u32, u32) {
    (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_second_build_is_all_cache_hits() {
    let f = Fixture::new();
    let s = spec(r#"((from busybox) (run (shell "echo one")) (run (shell "echo two")))"#);
    let first = Steps::default();
    let id = f.build(&s, &first).unwrap();
    assert_eq!(first.results(), vec![StepResult::Saved; 3]);
    assert_eq!(f.sandbox.commands(), vec!["echo one", "echo two"]);
    let second = Steps::default();
    assert_eq!(f.build(&s, &second).unwrap(), id);
    assert_eq!(second.results(), vec![StepResult::Cached; 3]);
    assert_eq!(f.sandbox.calls().len(), 2, "nothing ran again");
    assert_eq!(f.fetcher.fetches("busybox"), 1);
    assert_eq!(f.store.committed().len(), 3);
    // Each item has its row, its parent and its op.
    let rows = f.builder.catalog().items().unwrap();
    assert_eq!(rows.len(), 3);
    let last = f.builder.catalog().item(&id).unwrap();
    assert_eq!(last.op, r#"(run (shell "echo two"))"#);
    assert_eq!(f.builder.catalog().chain(&id).unwrap().len(), 3);
}

#[test]
fn a_changed_step_rebuilds_it_and_what_follows_only() {
    let f = Fixture::new();
    f.build(
        &spec(r#"((from busybox) (run (shell "a")) (run (shell "b")))"#),
        &Steps::default(),
    )
    .unwrap();
    let steps = Steps::default();
    f.build(&spec(r#"((from busybox) (run (shell "a")) (run (shell "c")))"#), &steps)
        .unwrap();
    assert_eq!(
        steps.results(),
        vec![StepResult::Cached, StepResult::Cached, StepResult::Saved]
    );
    assert_eq!(f.sandbox.commands(), vec!["a", "b", "c"]);
}

#[test]
fn a_step_runs_in_a_clone_of_its_parent() {
    let f = Fixture::new();
    f.sandbox.add(Rule::command("make").write("/out/app", "binary"));
    let id = f
        .build(
            &spec(r#"((from busybox) (run (shell "make")) (run (shell "test")))"#),
            &Steps::default(),
        )
        .unwrap();
    let item = f.builder.catalog().result(&id).unwrap().unwrap();
    assert_eq!(std::fs::read(item.join("rootfs/out/app")).unwrap(), b"binary");
    assert_eq!(std::fs::read(item.join("rootfs/etc/image")).unwrap(), b"busybox");
}

#[test]
fn the_step_environment_has_the_default_path_unless_the_image_sets_one() {
    let f = Fixture::new();
    f.build(
        &spec(r#"((from busybox) (env A 1) (run (shell "env")))"#),
        &Steps::default(),
    )
    .unwrap();
    let call = &f.sandbox.calls()[0];
    assert_eq!(call.env("PATH"), Some(super::DEFAULT_PATH));
    assert_eq!(call.env("A"), Some("1"));

    let f = Fixture::with_fetcher(FakeFetcher::with_env(&[("PATH", "/opt/bin"), ("B", "2")]));
    f.build(&spec(r#"((from busybox) (run (shell "env")))"#), &Steps::default())
        .unwrap();
    assert_eq!(f.sandbox.calls()[0].env("PATH"), Some("/opt/bin"));
}

#[test]
fn a_failing_step_commits_nothing_and_reports_its_output() {
    let f = Fixture::new();
    f.sandbox.add(Rule::command("false").log("it broke\n").exit(3));
    let err = f
        .build(&spec(r#"((from busybox) (run (shell "false")))"#), &Steps::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StepFailed);
    let text = err.to_string();
    assert!(text.contains("exit status 3") && text.contains("it broke"), "{text}");
    assert_eq!(f.store.committed().len(), 1, "only the base");
    assert_eq!(f.builder.catalog().items().unwrap().len(), 1);
    assert_eq!(f.store.outstanding().pending, 0, "the pending item was given back");
    // The failure is not cached: the next build runs it again.
    f.sandbox.clear_rules();
    f.build(&spec(r#"((from busybox) (run (shell "false")))"#), &Steps::default())
        .unwrap();
    assert_eq!(f.sandbox.runs_of("false"), 2);
}

#[test]
fn a_failed_commit_records_no_row() {
    let f = Fixture::new();
    f.build(&spec("((from busybox))"), &Steps::default()).unwrap();
    f.store
        .fail_next_commits(1, || StoreError::io("committing", std::io::Error::other("disk gone")));
    let err = f
        .build(&spec(r#"((from busybox) (run (shell "x")))"#), &Steps::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Environment, "{err}");
    assert_eq!(f.builder.catalog().items().unwrap().len(), 1);
    assert_eq!(f.store.committed().len(), 1);
}

#[test]
fn a_stage_is_built_before_the_copy_that_reads_it() {
    let f = Fixture::new();
    let (uid, gid) = me();
    f.sandbox.add(Rule::command("make").write("/src/app", "built"));
    let text = format!(
        r#"((build tools ((from busybox) (run (shell "make"))))
            (from busybox)
            (user (uid {uid}) (gid {gid}))
            (copy (from (build tools)) (src /src/app) (dst /bin/app)))"#
    );
    let id = f.build(&spec(&text), &Steps::default()).unwrap();
    let item = f.builder.catalog().result(&id).unwrap().unwrap();
    assert_eq!(std::fs::read(item.join("rootfs/bin/app")).unwrap(), b"built");
}

/// The bug: a build whose failing stage nothing copied from succeeded (the main stage's
/// result won over the recorded failure). Seen failing before the fix in `BuildRun::build`.
#[test]
fn a_failing_stage_nothing_copies_from_let_the_build_succeed() {
    let f = Fixture::new();
    f.sandbox.add(Rule::command("slow").block());
    f.sandbox.add(Rule::command("bad").exit(1));
    let text = r#"((build a ((from busybox) (run (shell "slow"))))
                   (build b ((from busybox) (run (shell "bad"))))
                   (from busybox) (run (shell "main")))"#;
    let err = f.build(&spec(text), &Steps::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StepFailed, "{err}");
    assert!(err.to_string().contains("bad"), "the first failure is reported: {err}");
    assert_eq!(f.sandbox.running(), 0, "the blocked stage was stopped");
}

#[test]
fn concurrent_builds_of_the_same_step_run_it_once() {
    let f = Arc::new(Fixture::new());
    let gate = strata_testkit::fakes::Gate::new();
    f.sandbox.add(Rule::command("build").wait(&gate));
    let s = spec(r#"((from busybox) (run (shell "build")))"#);
    let ids: Vec<_> = std::thread::scope(|threads| {
        let handles: Vec<_> = (0..4)
            .map(|_| threads.spawn(|| f.build(&s, &Steps::default())))
            .collect();
        assert!(f.sandbox.wait_for_running(1, WAIT));
        // Give the others time to join the running step rather than start their own.
        std::thread::sleep(Duration::from_millis(200));
        gate.open();
        handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(f.sandbox.runs_of("build"), 1);
    assert_eq!(f.sandbox.max_running(), 1);
    assert_eq!(f.store.builds(&ids[0]), 1);
}

#[test]
fn a_cancelled_build_stops_its_step_and_commits_nothing() {
    let f = Fixture::new();
    f.sandbox.add(Rule::command("forever").block());
    let s = spec(r#"((from busybox) (run (shell "forever")))"#);
    let cancel = Cancel::new();
    let err = std::thread::scope(|threads| {
        let build = threads.spawn(|| f.build_with(&s, &BuildOptions::default(), &Steps::default(), &cancel));
        assert!(f.sandbox.wait_for_running(1, WAIT));
        cancel.cancel();
        build.join().unwrap().unwrap_err()
    });
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(f.sandbox.running(), 0, "the step ended before build returned");
    assert_eq!(f.store.committed().len(), 1, "only the base");
    assert_eq!(f.store.outstanding().pending, 0);
}

#[test]
fn a_missing_secret_fails_before_anything_runs() {
    let f = Fixture::new();
    let err = f
        .build(
            &spec(r#"((from busybox) (run (secrets (token (target /t))) (shell "x")))"#),
            &Steps::default(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Usage);
    assert_eq!(f.fetcher.fetches("busybox"), 0);
}

#[test]
fn caches_are_leased_for_the_step_and_recorded() {
    let f = Fixture::new();
    f.sandbox.add(Rule::command("fill").write("/var/cache/x/file", "kept"));
    f.build(
        &spec(r#"((from busybox) (run (cache (x (target /var/cache/x))) (shell "fill")))"#),
        &Steps::default(),
    )
    .unwrap();
    let caches = f.builder.catalog().caches().unwrap();
    assert_eq!(caches.len(), 1);
    assert_eq!(caches[0].name, "x");
    assert!(caches[0].used.is_some());
    assert_eq!(f.store.outstanding().leases, 0, "the lease was released");
}
