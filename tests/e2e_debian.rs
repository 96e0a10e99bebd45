//! A real distribution through the real binary: Debian bookworm (mmdebstrap minbase, from
//! `scripts/fixtures/debian-image`) installs gcc with apt into a cache, compiles and runs a
//! C program, on every store kind. The image config has no Env: steps get strata's default
//! PATH (before that, `make` failed with `cc: No such file or directory`).
//!
//! Each store kind: a cold build; a build from an empty store (`strata clean`) with the apt
//! cache kept, where apt downloads nothing; a changed source file, which rebuilds only the
//! copy and the steps after it. The apt step needs Debian's mirror (`(network host)`).
//! Timings of each phase are printed (`cargo test --test e2e_debian -- --nocapture`).

mod common;

use std::path::Path;
use std::time::Instant;

use common::debian::{json_steps, DebianImage, JsonStep};
use common::{final_id, stderr, stdout, Backend, Env};

const HELLO_C: &str = r#"#include <stdio.h>

int main(void) {
    puts("hello from debian");
    return 0;
}
"#;

const MAKEFILE: &str = "hello: hello.c\n\t$(CC) -O2 -Wall -o $@ hello.c\n";

/// The spec of issue 16, unchanged but for the archive's path (no `env PATH`).
fn workload_spec(image: &DebianImage) -> String {
    format!(
        r#"((from {})
 (run (network host) (cache (apt-archives (target /var/cache/apt/archives)))
      (shell "rm -f /etc/apt/apt.conf.d/docker-clean && apt-get update -q && apt-get install -y -q --no-install-recommends gcc libc6-dev make"))
 (workdir /src)
 (copy (src hello.c Makefile) (dst ./))
 (run (shell "make"))
 (run (shell "./hello")))"#,
        image.docker_archive_ref()
    )
}

fn skip_unless_root() -> bool {
    if strata_testkit::is_root() {
        return false;
    }
    eprintln!("skipped: end-to-end tests need root (real mounts, runc)");
    true
}

/// Builds with `--progress json`, asserts success, returns the final id and the steps.
fn build_json(env: &Env, spec: &Path, ctx: &Path, image: &DebianImage) -> (String, Vec<JsonStep>) {
    let allow = image.dir().to_str().expect("utf-8 path");
    let out = env.build(spec, ctx, &["--progress", "json", "--allow-local-images", allow]);
    assert!(
        out.status.success(),
        "build failed ({}) on {}:\n{}",
        out.status,
        env.store,
        stderr(&out)
    );
    let steps = json_steps(&stderr(&out));
    (final_id(&out), steps)
}

fn cached(steps: &[JsonStep]) -> Vec<bool> {
    steps.iter().map(|s| s.cached).collect()
}

fn describe(steps: &[JsonStep]) -> String {
    steps
        .iter()
        .map(|s| {
            format!(
                "{} {:.1}s {}",
                if s.cached { "cached" } else { "saved " },
                s.seconds,
                s.heading
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The five steps in order: base, apt, copy, make, ./hello (the workdir is no step).
fn assert_shape(steps: &[JsonStep]) {
    let expect = [
        "(from docker-archive:",
        "apt-get install",
        "(copy",
        "(shell make)",
        "(shell ./hello)",
    ];
    assert_eq!(steps.len(), expect.len(), "steps:\n{}", describe(steps));
    for (step, want) in steps.iter().zip(expect) {
        assert!(
            step.heading.contains(want),
            "expected a step {want:?}, got:\n{}",
            describe(steps)
        );
    }
}

fn debian_workload(backend: Backend) {
    if skip_unless_root() {
        return;
    }
    let total = Instant::now();
    // btrfs: room for the base (160 MiB), gcc (360 MiB) and the apt cache, twice over.
    let fixture_args: &[&str] = if backend == Backend::Btrfs { &["4G"] } else { &[] };
    let env = Env::with_options(backend, None, fixture_args);
    let started = Instant::now();
    let image = DebianImage::local();
    let fixture_time = started.elapsed();
    let ctx = env.context("ctx");
    std::fs::write(ctx.join("hello.c"), HELLO_C).unwrap();
    std::fs::write(ctx.join("Makefile"), MAKEFILE).unwrap();
    let spec = env.spec("debian.spec", &workload_spec(&image));

    // 1. Cold: every step runs; apt downloads gcc into the cache; make finds cc on the
    // default PATH.
    let started = Instant::now();
    let (first, steps) = build_json(&env, &spec, &ctx, &image);
    let cold = started.elapsed();
    assert_shape(&steps);
    assert_eq!(
        cached(&steps),
        [false; 5],
        "a cold build runs every step:\n{}",
        describe(&steps)
    );
    assert!(
        steps[3].output.contains("cc "),
        "make ran no compiler:\n{}",
        steps[3].output
    );
    assert_eq!(steps[4].output.trim(), "hello from debian", "./hello printed");
    let cold_steps = describe(&steps);

    // 2. An empty store that keeps its caches: every step runs again, with the same ids, but
    // apt finds every package in the cache.
    let out = env.strata(&["clean"]);
    assert!(out.status.success(), "clean: {}", stderr(&out));
    let out = env.strata(&["ls", "--json"]);
    assert!(out.status.success(), "ls: {}", stderr(&out));
    let items: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("ls --json");
    assert!(items.is_empty(), "clean left items: {}", stdout(&out));
    let out = env.strata(&["cache", "ls", "--json"]);
    assert!(
        stdout(&out).contains(r#""name":"apt-archives""#),
        "clean must keep the caches: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let started = Instant::now();
    let (second, steps) = build_json(&env, &spec, &ctx, &image);
    let warm = started.elapsed();
    assert_shape(&steps);
    assert_eq!(
        cached(&steps),
        [false; 5],
        "the store was empty: every step runs:\n{}",
        describe(&steps)
    );
    assert_eq!(first, second, "the same spec and context give the same id");
    let apt = &steps[1].output;
    assert!(
        apt.contains("Need to get 0 B/"),
        "apt downloaded packages although they were in the cache:\n{apt}"
    );
    // apt-get update fetches the indexes again (`Get:N URI SUITE InRelease [SIZE]`, `Get:N URI
    // SUITE/main ARCH Packages [SIZE]`: at most 7 words), but no package (`Get:N URI
    // SUITE/main ARCH PACKAGE ARCH VERSION [SIZE]`: 9 words).
    let debs: Vec<&str> = apt
        .lines()
        .filter(|l| l.starts_with("Get:") && l.split_whitespace().count() >= 8)
        .collect();
    assert!(debs.is_empty(), "apt downloaded packages: {debs:#?}");
    assert_eq!(steps[4].output.trim(), "hello from debian");

    // 3. A changed source file: the base and the apt step come from the cache; the copy and
    // the steps after it run.
    std::fs::write(ctx.join("hello.c"), HELLO_C.replace("hello from debian", "hello again")).unwrap();
    let started = Instant::now();
    let (third, steps) = build_json(&env, &spec, &ctx, &image);
    let changed = started.elapsed();
    assert_shape(&steps);
    assert_eq!(
        cached(&steps),
        [true, true, false, false, false],
        "only the copy and later steps run:\n{}",
        describe(&steps)
    );
    assert_ne!(third, first);
    assert_eq!(steps[4].output.trim(), "hello again");

    env.verify_clean();
    env.assert_no_leftovers();
    eprintln!(
        "e2e_debian {backend:?}: fixture {:.1}s, cold build {:.1}s, from an empty store with the apt cache {:.1}s, \
         after a change {:.1}s, total {:.1}s\ncold build steps:\n{cold_steps}",
        fixture_time.as_secs_f64(),
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        changed.as_secs_f64(),
        total.elapsed().as_secs_f64()
    );
}

#[test]
fn debian_gcc_on_btrfs() {
    debian_workload(Backend::Btrfs);
}

#[test]
fn debian_gcc_on_zfs() {
    debian_workload(Backend::Zfs);
}

#[test]
fn debian_gcc_on_overlayfs() {
    debian_workload(Backend::Overlayfs);
}

#[test]
fn debian_gcc_on_rsync() {
    debian_workload(Backend::Rsync);
}

/// The fixture's other two forms (the docker-archive is the workload's) are the same image,
/// with no Env: from each, a step sees Debian bookworm and strata's default PATH. The registry
/// form is pulled through the mirror as `debian:bookworm`.
#[test]
fn debian_image_as_oci_layout_and_in_registry() {
    if skip_unless_root() {
        return;
    }
    let env = Env::new(Backend::Overlayfs);
    let image = DebianImage::pushed_to(&env.registry);
    assert!(image.registry_image.is_some(), "the image was pushed");
    let ctx = env.context("ctx");
    let allow = image.dir().to_str().expect("utf-8 path");
    for from in [image.oci_ref(), "debian:bookworm".to_owned()] {
        let spec = env.spec(
            "os.spec",
            &format!(
                r#"((from {from})
 (run (shell ". /etc/os-release && echo \"codename=$VERSION_CODENAME\" && echo \"path=$PATH\" && test -x /usr/bin/apt-get")))"#
            ),
        );
        let (_, log) = env.build_ok(&spec, &ctx, &["--allow-local-images", allow]);
        assert!(log.contains("codename=bookworm"), "{from}:\n{log}");
        assert!(
            log.contains("path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
            "{from}: not the default PATH:\n{log}"
        );
    }
    env.verify_clean();
    env.assert_no_leftovers();
}
