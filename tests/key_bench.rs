//! Micro-benchmark of manifest hashing and copy execution, against `sha256sum` and `cp` on the
//! same data in the same run. Prints ratios; asserts nothing about time.
//!
//! Run: `cargo test --release -p strata --test key_bench -- --ignored --nocapture`
//! (results are recorded in docs/benchmarks/key.md).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use strata::builder::copy::{execute_copy, plan_copy};
use strata::key::compute_manifest;
use strata::spec::ast::{Copy, CopyFrom};

const SMALL_FILES: usize = 200;
const SMALL_SIZE: usize = 512 * 1024;
const BIG_SIZE: usize = 1 << 30;
const RUNS: usize = 3;

/// Deterministic incompressible-looking data (xorshift), written in 1 MiB chunks.
fn fill(path: &Path, size: usize, seed: u64) {
    let mut file = fs::File::create(path).unwrap();
    let mut state = seed | 1;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(chunk.len());
        file.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
}

/// The best of `RUNS` timings (the page cache is warm after the first).
fn best(mut f: impl FnMut()) -> Duration {
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn shell(script: &str, dir: &Path) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

fn report(what: &str, bytes: usize, ours: Duration, baseline_name: &str, baseline: Duration) {
    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "| {what} | {:.0} MiB/s ({:.3} s) | {baseline_name}: {:.0} MiB/s ({:.3} s) | {:.2}x |",
        mib / ours.as_secs_f64(),
        ours.as_secs_f64(),
        mib / baseline.as_secs_f64(),
        baseline.as_secs_f64(),
        baseline.as_secs_f64() / ours.as_secs_f64()
    );
}

fn dot_copy() -> Copy {
    Copy {
        from: CopyFrom::Context,
        src: vec![".".into()],
        dst: "/ctx".into(),
        exclude: vec![],
    }
}

fn bench_context(name: &str, ctx: &Path, bytes: usize) {
    let hash_ours = best(|| {
        compute_manifest(ctx, ".", &[]).unwrap();
    });
    let hash_base = best(|| shell("find . -type f -print0 | xargs -0 sha256sum > /dev/null", ctx));
    report(
        &format!("{name}: manifest (hash)"),
        bytes,
        hash_ours,
        "sha256sum",
        hash_base,
    );
    let hash_par = best(|| {
        shell(
            "find . -type f -print0 | xargs -0 -n 20 -P 2 sha256sum > /dev/null",
            ctx,
        )
    });
    report(
        &format!("{name}: manifest (hash)"),
        bytes,
        hash_ours,
        "sha256sum -P2",
        hash_par,
    );

    let plan = plan_copy(ctx, &dot_copy(), "/").unwrap();
    let target = tempfile::tempdir_in("/var/tmp").unwrap();
    let copy_ours = best(|| {
        let _ = fs::remove_dir_all(target.path().join("ctx"));
        execute_copy(&plan, ctx, target.path(), 0, 0).unwrap();
    });
    let copy_base = best(|| {
        let _ = fs::remove_dir_all(target.path().join("ctx"));
        let script = format!("cp -a --reflink=never . {}/ctx", target.path().display());
        shell(&script, ctx);
    });
    report(
        &format!("{name}: execute_copy (read+hash+write)"),
        bytes,
        copy_ours,
        "cp -a",
        copy_base,
    );
    let copy_hash_base = best(|| {
        let _ = fs::remove_dir_all(target.path().join("ctx"));
        let script = format!(
            "cp -a --reflink=never . {}/ctx && find . -type f -print0 | xargs -0 sha256sum > /dev/null",
            target.path().display()
        );
        shell(&script, ctx);
    });
    report(
        &format!("{name}: execute_copy (read+hash+write)"),
        bytes,
        copy_ours,
        "cp -a + sha256sum",
        copy_hash_base,
    );
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn hash_and_copy_throughput() {
    let small = tempfile::tempdir_in("/var/tmp").unwrap();
    for i in 0..SMALL_FILES {
        let dir = small.path().join(format!("d{}", i % 10));
        fs::create_dir_all(&dir).unwrap();
        fill(&dir.join(format!("f{i}")), SMALL_SIZE, i as u64 + 1);
    }
    let big = tempfile::tempdir_in("/var/tmp").unwrap();
    fill(&big.path().join("big"), BIG_SIZE, 42);

    println!("| case | strata | baseline | baseline time / strata time |");
    println!("|---|---|---|---|");
    bench_context("200 files x 512 KiB", small.path(), SMALL_FILES * SMALL_SIZE);
    bench_context("1 file x 1 GiB", big.path(), BIG_SIZE);
}
