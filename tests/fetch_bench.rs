//! The fetcher as a command for `scripts/bench-fetch` (ignored in normal test runs):
//! `STRATA_BENCH_IMAGE=REF STRATA_BENCH_DEST=DIR fetch_bench --ignored --exact pull_once`
//! pulls REF into DIR/rootfs (DIR must not exist yet).

use strata::fetch::{FetchOptions, Fetcher, ImageFetcher};
use strata::sandbox::{Cancel, LogSink};

struct Quiet;

impl LogSink for Quiet {
    fn write(&self, _bytes: &[u8]) {}
}

#[test]
#[ignore = "benchmark helper, run by scripts/bench-fetch"]
fn pull_once() {
    let image = std::env::var("STRATA_BENCH_IMAGE").expect("STRATA_BENCH_IMAGE");
    let dest = std::path::PathBuf::from(std::env::var("STRATA_BENCH_DEST").expect("STRATA_BENCH_DEST"));
    let rootfs = dest.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    // The benchmark names its own local layout: allow it.
    let options = FetchOptions::default()
        .allow_local_images(&[std::path::PathBuf::from("/")])
        .unwrap();
    let fetcher = ImageFetcher::new(options);
    let config = fetcher.fetch(&image, &rootfs, &Quiet, &Cancel::new()).unwrap();
    assert!(config.digest.is_some());
}
