//! `strata build` end to end through the real binary, on btrfs, ZFS (zfs-fuse), overlayfs and
//! rsync stores, with runc and a local registry.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{count, final_id, stderr, Backend, Env};

fn examples() -> Vec<std::path::PathBuf> {
    let mut specs: Vec<_> = std::fs::read_dir(common::repo().join("spec-examples"))
        .expect("spec-examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "spec"))
        .collect();
    specs.sort();
    assert!(specs.len() >= 6, "expected at least six example specs");
    specs
}

/// Every example builds; a rebuild is fully cached with the same id; verify is clean.
fn examples_build_and_cache(backend: Backend) {
    let env = Env::new(backend);
    let context = common::repo().join("spec-examples/context");
    let secret = env.work.path().join("token");
    std::fs::write(&secret, "s3cr3t-value\n").unwrap();
    let secret_flag = format!("token:{}", secret.display());
    for spec in examples() {
        let (first, log) = env.build_ok(&spec, &context, &["--secret", &secret_flag]);
        assert!(log.contains("---> saved as") || log.contains("from cache"), "{log}");
        let (second, log2) = env.build_ok(&spec, &context, &["--secret", &secret_flag]);
        assert_eq!(first, second, "{}: rebuild changed the id", spec.display());
        assert_eq!(
            count(&log2, "---> saved as"),
            0,
            "{}: rebuild was not fully cached:\n{log2}",
            spec.display()
        );
    }
    env.verify_clean();
}

#[test]
fn examples_on_btrfs() {
    examples_build_and_cache(Backend::Btrfs);
}

#[test]
fn examples_on_zfs() {
    examples_build_and_cache(Backend::Zfs);
}

#[test]
fn examples_on_overlayfs() {
    examples_build_and_cache(Backend::Overlayfs);
}

#[test]
fn examples_on_rsync() {
    examples_build_and_cache(Backend::Rsync);
}

const COPY_SPEC: &str = r#"((from busybox)
 (workdir /app)
 (copy (src .) (dst ./))
 (run (shell "cat /app/a.txt /app/b.txt > /app/out.txt"))
 (run (shell "test -x /app/run.sh && /app/run.sh")))"#;

fn context_changes(backend: Backend) {
    let env = Env::new(backend);
    let ctx = env.context("ctx");
    std::fs::write(ctx.join("a.txt"), "a\n").unwrap();
    std::fs::write(ctx.join("b.txt"), "b\n").unwrap();
    std::fs::write(ctx.join("run.sh"), "#!/bin/sh\necho script ran\n").unwrap();
    std::fs::set_permissions(ctx.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = env.spec("copy.spec", COPY_SPEC);
    let (first, log) = env.build_ok(&spec, &ctx, &[]);
    assert_eq!(count(&log, "---> saved as"), 4, "{log}");
    assert!(log.contains("script ran"), "{log}");

    // One context file changes: the copy step and everything after it rebuild.
    std::fs::write(ctx.join("b.txt"), "B\n").unwrap();
    let (second, log) = env.build_ok(&spec, &ctx, &[]);
    assert_ne!(first, second);
    assert_eq!(count(&log, "from cache"), 1, "only the base is cached:\n{log}");
    assert_eq!(count(&log, "---> saved as"), 3, "{log}");

    // chmod -x changes the v1 id (and the step then fails: the script is not executable).
    std::fs::set_permissions(ctx.join("run.sh"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.build(&spec, &ctx, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let log = stderr(&out);
    assert_eq!(
        count(&log, "from cache"),
        1,
        "the copy must not be cached after chmod:\n{log}"
    );
    env.verify_clean();
}

#[test]
fn context_changes_on_btrfs() {
    context_changes(Backend::Btrfs);
}

#[test]
fn context_changes_on_overlayfs() {
    context_changes(Backend::Overlayfs);
}

#[test]
fn context_changes_on_zfs() {
    context_changes(Backend::Zfs);
}

#[test]
fn context_changes_on_rsync() {
    context_changes(Backend::Rsync);
}

/// Stage output copied into a missing directory stays executable; caches keep data; secrets
/// are used and absent from the result; a failing step exits 1 and records nothing; a context
/// symlink to /etc/passwd is copied as a symlink.
fn features(backend: Backend) {
    let env = Env::new(backend);
    let ctx = env.context("ctx");
    std::os::unix::fs::symlink("/etc/passwd", ctx.join("passwd-link")).unwrap();
    let secret = env.work.path().join("secret");
    std::fs::write(&secret, "top-secret-42").unwrap();
    let secret_flag = format!("token:{}", secret.display());

    let stage = env.spec(
        "stage.spec",
        r#"((build tools
         ((from busybox)
          (run (shell "mkdir -p /out && printf '#!/bin/sh\necho tool-ok\n' > /out/tool && chmod 755 /out/tool"))))
 (from busybox)
 (copy (from (build tools)) (src /out/tool) (dst /opt/new/dir/tool))
 (copy (src passwd-link) (dst /link))
 (run (shell "test -x /opt/new/dir/tool && /opt/new/dir/tool && test -L /link && [ \"$(readlink /link)\" = /etc/passwd ]")))"#,
    );
    let (_, log) = env.build_ok(&stage, &ctx, &[]);
    assert!(log.contains("tool-ok"), "{log}");

    let cache = env.spec(
        "cache.spec",
        r#"((from busybox)
 (run (cache (data (target /data))) (shell "echo $RANDOM$$ >> /data/runs; wc -l < /data/runs")))"#,
    );
    let cache2 = env.spec(
        "cache2.spec",
        r#"((from busybox)
 (run (cache (data (target /data))) (shell "echo again >> /data/runs; cat /data/runs; [ $(wc -l < /data/runs) -ge 2 ]")))"#,
    );
    env.build_ok(&cache, &ctx, &[]);
    let (_, log) = env.build_ok(&cache2, &ctx, &[]);
    assert!(log.contains("again"), "{log}");

    let secrets = env.spec(
        "secret.spec",
        r#"((from busybox)
 (run (secrets (token)) (shell "grep -q top-secret-42 /run/secrets/token && echo secret-seen"))
 (run (shell "[ ! -s /run/secrets/token ] && ! grep -rqs top-secret-42 /run /etc /root /tmp /bin && echo secret-absent")))"#,
    );
    let (_, log) = env.build_ok(&secrets, &ctx, &["--secret", &secret_flag]);
    assert!(log.contains("secret-seen") && log.contains("secret-absent"), "{log}");
    let out = env.build(&secrets, &ctx, &[]);
    assert_eq!(out.status.code(), Some(2), "missing secret: {}", stderr(&out));
    assert!(stderr(&out).contains("token"), "{}", stderr(&out));

    let ids = |env: &Env| {
        let out = env.strata(&["ls", "--json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        {
            let mut v: Vec<String> = rows.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
            v.sort();
            v
        }
    };
    let before = ids(&env);
    let failing = env.spec(
        "fail.spec",
        r#"((from busybox) (run (shell "echo about-to-fail; exit 3")))"#,
    );
    let out = env.build(&failing, &ctx, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("about-to-fail"), "{}", stderr(&out));
    assert!(stderr(&out).contains("exit status 3"), "{}", stderr(&out));
    assert_eq!(before, ids(&env), "a failed step recorded something");
    env.verify_clean();
}

#[test]
fn features_on_btrfs() {
    features(Backend::Btrfs);
}

#[test]
fn features_on_overlayfs() {
    features(Backend::Overlayfs);
}

#[test]
fn features_on_zfs() {
    features(Backend::Zfs);
}

#[test]
fn features_on_rsync() {
    features(Backend::Rsync);
}

/// An `obuilder`-scheme store reproduces OBuilder's ids (reference Appendix A: the busybox
/// base and the healthcheck run step).
#[test]
fn obuilder_scheme_reproduces_obuilder_ids() {
    let env = Env::with_scheme(Backend::Overlayfs, Some("obuilder"));
    let ctx = env.context("ctx");
    let base = env.spec("base.spec", "((from busybox))");
    let (id, _) = env.build_ok(&base, &ctx, &[]);
    assert_eq!(id, "9d75f0d7c398df565d7ac04c6819b62d6d8f9560f5eb4672596ecd8f7e96ae91");
    let run = env.spec(
        "run.spec",
        r#"((from busybox) (shell /bin/sh -c) (run (shell "echo healthcheck")))"#,
    );
    let (id, _) = env.build_ok(&run, &ctx, &[]);
    assert_eq!(id, "849be1f0bfad511b4bb7fa02312079870a5dda1d6b57b57c90913b9482305987");
    // The scheme is fixed at creation.
    let out = env.strata(&["ls", "--id-scheme", "v1"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn final_id_only_on_stdout_and_json_progress() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let spec = env.spec("hello.spec", r#"((from busybox) (run (shell "echo hello-json")))"#);
    let out = env.build(&spec, &ctx, &["--progress", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = final_id(&out);
    let events: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    assert!(events.iter().any(|e| e["event"] == "step" && e["id"] == id.as_str()));
    assert!(events
        .iter()
        .any(|e| e["event"] == "output" && e["text"].as_str().unwrap_or("").contains("hello-json")));
}

/// The step environment users of Docker, podman and OBuilder expect from an image config: the
/// busybox test image sets `PATH` (kept, in order, under the spec's `env` ops), and `HOME`
/// comes from the step's user (the runtime reads the rootfs's `/etc/passwd`: `/root` for root,
/// `/` for a user it does not list).
#[test]
fn step_environment_follows_the_image_and_the_user() {
    let env = Env::new(Backend::Overlayfs);
    let spec = env.spec(
        "env.spec",
        r#"((from busybox)
            (env GREETING hello)
            (run (shell "echo ROOT_HOME=$HOME; echo PATH=$PATH; echo GREETING=$GREETING"))
            (user (uid 1234) (gid 1234))
            (run (shell "echo USER_HOME=$HOME")))"#,
    );
    let (_, log) = env.build_ok(&spec, &env.context("ctx"), &["--progress", "plain"]);
    let line = |key: &str| {
        log.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {key} in {log}"))
    };
    assert_eq!(line("ROOT_HOME="), "/root");
    assert_eq!(line("USER_HOME="), "/");
    assert_eq!(line("GREETING="), "hello");
    assert!(line("PATH=").contains("/bin"), "{log}");
}
