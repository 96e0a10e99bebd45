//! Benchmarks of the OCI sandbox, run by `scripts/bench-sandbox` (ignored by `cargo test`).
//!
//! Prints the median wall time of a trivial step (`true`) under runc and crun, through
//! `OciSandbox::run` (bundle, config.json, shim, runtime, teardown), next to the floor: starting
//! a process in new namespaces with `unshare`. Also the cost of 1,000 fsyncs with and without
//! `fast_sync`. Ratios only; nothing is asserted about time.

use std::process::Command;
use std::time::{Duration, Instant};

use strata_sandbox::host::{hybrid_with_v2_controllers, HostFacts};
use strata_sandbox::oci_config::{build_spec, to_json, BundleFiles};
use strata_sandbox::runtime_cli::{flavour_of, resolve_program, Flavour, RuntimeCli};
use strata_sandbox::{Cancel, LogSink, OciSandbox, OciSandboxOptions, RunConfig, Sandbox};
use strata_testkit::sandbox::BusyboxRootfs;

struct Discard;
impl LogSink for Discard {
    fn write(&self, _: &[u8]) {}
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn runs() -> usize {
    std::env::var("STRATA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

fn sandbox(fixture: &BusyboxRootfs, runtime: &str) -> OciSandbox {
    let mut options = OciSandboxOptions::new(
        fixture.dir().join("state/sandbox"),
        "bench.1",
        fixture.dir().join("bundles"),
    );
    options.runtime = runtime.to_owned();
    OciSandbox::new(options).unwrap()
}

fn time_step(sandbox: &OciSandbox, fixture: &BusyboxRootfs, config: &RunConfig) -> Duration {
    let started = Instant::now();
    let outcome = sandbox.run(config, fixture.rootfs(), &Discard, &Cancel::new()).unwrap();
    let elapsed = started.elapsed();
    assert!(outcome.success(), "{outcome:?}");
    elapsed
}

/// `<runtime> run --bundle B ID` in the foreground on a bundle written beforehand: what the
/// runtime alone costs (bundle writing and teardown not included).
fn time_raw_run(fixture: &BusyboxRootfs, runtime: &str, config: &RunConfig, i: usize) -> Duration {
    let program = resolve_program(runtime).unwrap();
    let flavour = flavour_of(&program);
    let cli = RuntimeCli {
        requested: runtime.to_owned(),
        program: Some(program),
        flavour,
        root: fixture.dir().join("raw-state").join(runtime),
        hide_unified_cgroup: flavour == Flavour::Crun && hybrid_with_v2_controllers(),
    };
    let bundle = fixture.dir().join(format!("raw-bundle-{runtime}-{i}"));
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    let rootfs = fixture.rootfs().canonicalize().unwrap();
    let files = BundleFiles {
        rootfs: &rootfs,
        hosts: &bundle.join("hosts"),
        resolv_conf: std::path::Path::new("/etc/resolv.conf"),
        secrets: &[],
        cgroups_path: None,
    };
    let spec = build_spec(config, &files, &HostFacts::detect()).unwrap();
    std::fs::write(bundle.join("config.json"), to_json(&spec).unwrap()).unwrap();
    let id = format!("raw-{runtime}-{i}");
    let bundle_arg = bundle.to_string_lossy().into_owned();
    let started = Instant::now();
    cli.call(&["run", "--bundle", &bundle_arg, &id]).unwrap();
    let elapsed = started.elapsed();
    std::fs::remove_dir_all(&bundle).unwrap();
    elapsed
}

#[test]
#[ignore = "benchmark: run scripts/bench-sandbox"]
fn bench_trivial_step() {
    if !strata_testkit::is_root() {
        eprintln!("skipping: the sandbox benchmark needs root");
        return;
    }
    let n = runs();
    let fixture = BusyboxRootfs::create().unwrap();

    let floor = median(
        (0..n)
            .map(|_| {
                let started = Instant::now();
                let status = Command::new("unshare")
                    .args(["--pid", "--mount", "--net", "--ipc", "--uts", "--fork", "true"])
                    .status()
                    .unwrap();
                assert!(status.success());
                started.elapsed()
            })
            .collect(),
    );
    println!("trivial step (`true`), median of {n} runs");
    println!();
    println!("| what | median ms | vs floor |");
    println!("|---|---|---|");
    println!(
        "| floor: `unshare --pid --mount --net --ipc --uts --fork true` | {:.1} | 1.00 |",
        ms(floor)
    );
    let trivial = RunConfig::new(vec!["/bin/true".into()]);
    for runtime in ["runc", "crun"] {
        let t = median((0..n).map(|i| time_raw_run(&fixture, runtime, &trivial, i)).collect());
        println!(
            "| bare `{runtime} run` of a ready bundle (no strata) | {:.1} | {:.2} |",
            ms(t),
            t.as_secs_f64() / floor.as_secs_f64()
        );
    }
    for runtime in ["runc", "crun"] {
        let sandbox = sandbox(&fixture, runtime);
        time_step(&sandbox, &fixture, &trivial); // warm-up
        let t = median((0..n).map(|_| time_step(&sandbox, &fixture, &trivial)).collect());
        println!(
            "| strata sandbox, {runtime} | {:.1} | {:.2} |",
            ms(t),
            t.as_secs_f64() / floor.as_secs_f64()
        );
    }

    println!();
    println!("1,000 x `dd bs=4096 count=1 conv=fsync` in one step, median of 3 runs");
    println!();
    println!("| runtime | plain ms | fast_sync ms | ratio |");
    println!("|---|---|---|---|");
    let script = "i=0; while [ $i -lt 1000 ]; do dd if=/dev/zero of=/tmp/f bs=4096 count=1 conv=fsync 2>/dev/null || exit 1; i=$((i+1)); done";
    for runtime in ["runc", "crun"] {
        let sandbox = sandbox(&fixture, runtime);
        let mut plain = RunConfig::new(vec!["/bin/sh".into(), "-c".into(), script.into()]);
        plain.env = vec![("PATH".into(), "/bin".into())];
        let mut fast = plain.clone();
        fast.fast_sync = true;
        let p = median((0..3).map(|_| time_step(&sandbox, &fixture, &plain)).collect());
        let f = median((0..3).map(|_| time_step(&sandbox, &fixture, &fast)).collect());
        println!(
            "| {runtime} | {:.0} | {:.0} | {:.2} |",
            ms(p),
            ms(f),
            p.as_secs_f64() / f.as_secs_f64()
        );
    }
}
