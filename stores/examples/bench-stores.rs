//! Clone, commit and delete latency per store backend, for an empty base and a big one.
//!
//! Run through `scripts/bench-stores [BACKEND...]` (as root: the fixtures mount loop
//! filesystems). Prints a Markdown table: median latency over `STRATA_BENCH_ITERATIONS`
//! (default 9) rounds of "clone the base, write one small file, commit, delete" (each
//! round starts after `sync` and `complete_deletes`, untimed; empty-base and big-base
//! rounds alternate, so load from other processes hits both alike), and the big/empty
//! ratio per operation. The big base is `STRATA_BENCH_FILES` files (default
//! 20,000) totalling `STRATA_BENCH_BYTES` (default 1 GiB).
//!
//! Adding a backend: one entry in [`BACKENDS`] returning a spec and the guard that tears
//! its fixture down.

use std::any::Any;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use strata_stores::{Prepared, StepId, Store, StoreSpec};
use strata_testkit::overlay::OverlayDir;
use strata_testkit::stores::{LoopFilesystem, PlainDirectory};
use strata_testkit::zfs::ZfsPool;

type Fixture = (StoreSpec, Box<dyn Any>);
type MakeFixture = fn() -> Result<Fixture, String>;

/// Name and fixture maker of every backend the bench knows.
const BACKENDS: &[(&str, MakeFixture)] = &[
    ("btrfs", || {
        let fs = LoopFilesystem::btrfs("4G")?;
        Ok((StoreSpec::Btrfs(fs.mount_point().join("store")), Box::new(fs)))
    }),
    ("xfs", || {
        let fs = LoopFilesystem::xfs("4G")?;
        Ok((StoreSpec::Xfs(fs.mount_point().join("store")), Box::new(fs)))
    }),
    ("rsync", || {
        let dir = PlainDirectory::create()?;
        let spec = StoreSpec::Rsync {
            path: dir.path().join("store"),
            mode: strata_stores::RsyncMode::Copy,
        };
        Ok((spec, Box::new(dir)))
    }),
    ("zfs", || {
        let pool = ZfsPool::create(Some("4G"))?;
        let spec = pool.spec().parse().map_err(|e| format!("{e}"))?;
        Ok((spec, Box::new(pool)))
    }),
    ("overlayfs", || {
        let dir = OverlayDir::plain()?;
        Ok((StoreSpec::Overlayfs(dir.path().join("store")), Box::new(dir)))
    }),
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn id(n: u64) -> StepId {
    format!("{n:064x}").parse().expect("a valid id")
}

fn commit_new(store: &dyn Store, base: Option<&StepId>, id: &StepId, fill: impl FnOnce(&Path)) {
    match store.prepare(base, id).expect("prepare") {
        Prepared::Pending(p) => {
            fill(p.path());
            p.commit().expect("commit");
        }
        Prepared::Exists(_) => panic!("{id} exists"),
    }
}

fn write_big_tree(dir: &Path, files: u64, bytes: u64) {
    let per_file = (bytes / files.max(1)) as usize;
    let chunk: Vec<u8> = (0..per_file).map(|i| (i * 31 % 251) as u8).collect();
    for n in 0..files {
        let sub = dir.join(format!("rootfs/d{:03}", n % 200));
        if n < 200 {
            fs::create_dir_all(&sub).expect("mkdir");
        }
        fs::write(sub.join(format!("f{n}")), &chunk).expect("write");
    }
}

struct Timings {
    clone: Vec<Duration>,
    commit: Vec<Duration>,
    delete: Vec<Duration>,
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// One round: clone `base` into a new id, write one small file, commit, delete.
fn round(store: &dyn Store, base: &StepId, child: &StepId, t: &mut Timings) {
    // Untimed: let the previous round's deletion and any writeback finish, so every
    // round starts from the same quiet filesystem.
    store.complete_deletes().expect("complete deletes");
    nix::unistd::sync();
    let start = Instant::now();
    let Prepared::Pending(pending) = store.prepare(Some(base), child).expect("prepare") else {
        panic!("{child} exists");
    };
    t.clone.push(start.elapsed());
    fs::write(pending.path().join("rootfs/step"), b"one small file").expect("write");
    let start = Instant::now();
    pending.commit().expect("commit");
    t.commit.push(start.elapsed());
    let start = Instant::now();
    store.delete(child).expect("delete");
    t.delete.push(start.elapsed());
}

impl Timings {
    fn new() -> Timings {
        Timings {
            clone: vec![],
            commit: vec![],
            delete: vec![],
        }
    }

    fn medians(mut self) -> [f64; 3] {
        [
            median(&mut self.clone),
            median(&mut self.commit),
            median(&mut self.delete),
        ]
    }
}

/// Alternates empty-base and big-base rounds, so load from other processes on the machine
/// hits both alike.
fn measure(store: &dyn Store, empty: &StepId, big: &StepId, rounds: u64) -> ([f64; 3], [f64; 3]) {
    let (mut on_empty, mut on_big) = (Timings::new(), Timings::new());
    for n in 0..rounds {
        round(store, empty, &id(1000 + n), &mut on_empty);
        round(store, big, &id(2000 + n), &mut on_big);
    }
    store.complete_deletes().expect("complete deletes");
    (on_empty.medians(), on_big.medians())
}

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let rounds = env_u64("STRATA_BENCH_ITERATIONS", 9).max(1);
    let files = env_u64("STRATA_BENCH_FILES", 20_000);
    let bytes = env_u64("STRATA_BENCH_BYTES", 1 << 30);
    for name in &wanted {
        if !BACKENDS.iter().any(|(n, _)| n == name) {
            eprintln!("bench-stores: unknown backend {name:?}");
            std::process::exit(2);
        }
    }
    println!(
        "big base: {files} files, {:.2} GiB; median of {rounds} rounds (clone base, write one file, commit, delete)\n",
        bytes as f64 / (1u64 << 30) as f64
    );
    let big_label = if bytes >= 1 << 30 {
        format!("{:.0} GiB / {files} files", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB / {files} files", bytes as f64 / (1u64 << 20) as f64)
    };
    println!("| backend | base | clone ms | commit ms | delete ms |");
    println!("|---|---|---:|---:|---:|");
    for (name, make) in BACKENDS {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        let (spec, guard) = match make() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("bench-stores: skipping {name}: {e}");
                continue;
            }
        };
        let store = strata_stores::open(&spec).expect("open store");
        commit_new(&*store, None, &id(1), |dir| {
            fs::create_dir(dir.join("rootfs")).expect("mkdir")
        });
        commit_new(&*store, None, &id(2), |dir| write_big_tree(dir, files, bytes));
        let (empty, big) = measure(&*store, &id(1), &id(2), rounds);
        println!(
            "| {name} | empty | {:.2} | {:.2} | {:.2} |",
            empty[0], empty[1], empty[2]
        );
        println!(
            "| {name} | {big_label} | {:.2} | {:.2} | {:.2} |",
            big[0], big[1], big[2]
        );
        println!(
            "| {name} | ratio | {:.1}x | {:.1}x | {:.1}x |",
            big[0] / empty[0],
            big[1] / empty[1],
            big[2] / empty[2]
        );
        drop(store);
        drop(guard);
    }
}
